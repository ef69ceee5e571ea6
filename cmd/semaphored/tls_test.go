package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// writeCert writes a fresh self-signed certificate for 127.0.0.1 with the
// given serial to certFile and keyFile, and returns it.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "semaphored test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(priv)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return cert
}

// TestRun_TLS: --tls-cert/--tls-key serve HTTPS (HTTP/2 included) and
// WSS; SIGHUP loads a renewed pair without a restart, and a broken pair
// keeps the one in use.
func TestRun_TLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeCert(t, certFile, keyFile, 1001)
	base, _, logs, stop := startRunLogs(t, []string{"--admin-key", testKey, "--tls-cert", certFile, "--tls-key", keyFile}, env(nil))
	require.True(t, strings.HasPrefix(base, "https://"))

	// servedSerial connects trusting only want and returns the serial of
	// the certificate served, and the protocol of the reply.
	servedSerial := func(trust *x509.Certificate) (int64, int, error) {
		pool := x509.NewCertPool()
		pool.AddCert(trust)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/v1/keys", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/keys over TLS: %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), resp.ProtoMajor, nil
	}
	serial, proto, err := servedSerial(first)
	require.NoError(t, err)
	require.Equal(t, int64(1001), serial)
	require.Equal(t, 2, proto, "HTTP/2 over TLS")

	// WSS: the websocket handshake over TLS gets the welcome frame.
	pool := x509.NewCertPool()
	pool.AddCert(first)
	wsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(base, "https")+"/v1/ws", &websocket.DialOptions{
		HTTPClient: wsClient, HTTPHeader: http.Header{"Authorization": {"Bearer " + testKey}},
	})
	require.NoError(t, err)
	_, msg, err := conn.Read(ctx)
	require.NoError(t, err)
	require.Contains(t, string(msg), `"type":"welcome"`)
	require.NoError(t, conn.Close(websocket.StatusNormalClosure, ""))
	wsClient.CloseIdleConnections()

	// A broken pair on SIGHUP: logged, the old certificate stays.
	require.NoError(t, os.WriteFile(keyFile, []byte("not a key"), 0o600))
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "TLS certificate not reloaded") }, 5*time.Second, 10*time.Millisecond)
	serial, _, err = servedSerial(first)
	require.NoError(t, err)
	require.Equal(t, int64(1001), serial)

	// A renewed pair on SIGHUP is served from then on.
	second := writeCert(t, certFile, keyFile, 1002)
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGHUP))
	require.Eventually(t, func() bool {
		serial, _, err := servedSerial(second)
		return err == nil && serial == 1002
	}, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, stop())
}
