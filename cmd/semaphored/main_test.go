package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/internal/testredis"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testredis.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const testKey = "sk_test_0123456789abcdef0123456789abcdef"

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfig_Defaults(t *testing.T) {
	cfg, err := parseConfig(nil, env(nil), io.Discard)
	require.NoError(t, err)
	require.Equal(t, ":8080", cfg.Addr)
	require.Equal(t, "", cfg.RedisURL)
	require.Equal(t, "sd", cfg.RedisPrefix)
	require.Equal(t, "", cfg.AdminKey)
	require.False(t, cfg.WebhookAllowPrivate)
	require.Empty(t, cfg.AllowedOrigins)
	require.Zero(t, cfg.KeyRateLimit)
	require.Zero(t, cfg.keyRateBurst())
	require.Equal(t, slog.LevelInfo, cfg.LogLevel)
	require.Equal(t, "text", cfg.LogFormat)
	require.Equal(t, 30*time.Second, cfg.ShutdownTimeout)
	require.Equal(t, int64(1<<20), cfg.MaxBody)
}

func TestParseConfig_EnvAndFlags(t *testing.T) {
	t.Run("every flag from env", func(t *testing.T) {
		cfg, err := parseConfig(nil, env(map[string]string{
			"SEMAPHORED_ADDR":                  "127.0.0.1:9000",
			"SEMAPHORED_REDIS_URL":             "redis://localhost:6380/2",
			"SEMAPHORED_REDIS_PREFIX":          "prod",
			"SEMAPHORED_ADMIN_KEY":             testKey,
			"SEMAPHORED_WEBHOOK_ALLOW_PRIVATE": "true",
			"SEMAPHORED_ALLOWED_ORIGINS":       "https://App.example.com, http://localhost:3000/ ,",
			"SEMAPHORED_KEY_RATE_LIMIT":        "12.5",
			"SEMAPHORED_LOG_LEVEL":             "DEBUG",
			"SEMAPHORED_LOG_FORMAT":            "json",
			"SEMAPHORED_SHUTDOWN_TIMEOUT":      "5s",
			"SEMAPHORED_MAX_BODY":              "4096",
			"SEMAPHORED_MAX_QUEUE":             "500",
			"SEMAPHORED_MAX_PAYLOAD":           "1024",
		}), io.Discard)
		require.NoError(t, err)
		require.Equal(t, config{
			Addr:                "127.0.0.1:9000",
			RedisURL:            "redis://localhost:6380/2",
			RedisPrefix:         "prod",
			AdminKey:            testKey,
			WebhookAllowPrivate: true,
			AllowedOrigins:      []string{"https://app.example.com", "http://localhost:3000"},
			KeyRateLimit:        12.5,
			LogLevel:            slog.LevelDebug,
			LogFormat:           "json",
			ShutdownTimeout:     5 * time.Second,
			MaxBody:             4096,
			MaxQueue:            500,
			MaxPayload:          1024,
		}, cfg)
		require.Equal(t, 25, cfg.keyRateBurst())
	})

	t.Run("flag wins over env", func(t *testing.T) {
		cfg, err := parseConfig(
			[]string{"--addr", ":9001", "-log-level=warn", "--webhook-allow-private=false", "--key-rate-limit", "0.2"},
			env(map[string]string{
				"SEMAPHORED_ADDR":                  ":9000",
				"SEMAPHORED_LOG_LEVEL":             "debug",
				"SEMAPHORED_WEBHOOK_ALLOW_PRIVATE": "1",
				"SEMAPHORED_KEY_RATE_LIMIT":        "100",
			}), io.Discard)
		require.NoError(t, err)
		require.Equal(t, ":9001", cfg.Addr)
		require.Equal(t, slog.LevelWarn, cfg.LogLevel)
		require.False(t, cfg.WebhookAllowPrivate)
		require.Equal(t, 0.2, cfg.KeyRateLimit)
		require.Equal(t, 1, cfg.keyRateBurst())
	})

	t.Run("unrelated env ignored", func(t *testing.T) {
		cfg, err := parseConfig(nil, env(map[string]string{"ADDR": ":1", "SEMAPHORED_UNKNOWN": "x"}), io.Discard)
		require.NoError(t, err)
		require.Equal(t, ":8080", cfg.Addr)
	})
}

func TestParseConfig_Invalid(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"admin key without prefix", []string{"--admin-key", strings.Repeat("x", 40)}, nil, `--admin-key: must start with "sk_"`},
		{"admin key too short", []string{"--admin-key", "sk_short"}, nil, "--admin-key: must be at least 32 characters"},
		{"admin key from env too short", nil, map[string]string{"SEMAPHORED_ADMIN_KEY": "sk_short"}, "--admin-key"},
		{"bad log level", []string{"--log-level", "verbose"}, nil, "--log-level: must be debug, info, warn or error"},
		{"bad log format", []string{"--log-format", "xml"}, nil, "--log-format: must be text or json"},
		{"bad bool env", nil, map[string]string{"SEMAPHORED_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "SEMAPHORED_WEBHOOK_ALLOW_PRIVATE"},
		{"bad float env", nil, map[string]string{"SEMAPHORED_KEY_RATE_LIMIT": "fast"}, "SEMAPHORED_KEY_RATE_LIMIT"},
		{"negative rate", []string{"--key-rate-limit", "-1"}, nil, "--key-rate-limit"},
		{"NaN rate", []string{"--key-rate-limit", "NaN"}, nil, "--key-rate-limit"},
		{"bad duration", []string{"--shutdown-timeout", "soon"}, nil, "shutdown-timeout"},
		{"zero shutdown timeout", []string{"--shutdown-timeout", "0s"}, nil, "--shutdown-timeout: must be positive"},
		{"tiny max body", []string{"--max-body", "10"}, nil, "--max-body"},
		{"empty addr", []string{"--addr", ""}, nil, "--addr"},
		{"empty prefix", []string{"--redis-prefix", ""}, nil, "--redis-prefix"},
		{"prefix with hash tag", []string{"--redis-prefix", "a{b}"}, nil, "--redis-prefix"},
		{"bad redis url scheme", []string{"--redis-url", "http://localhost:6379"}, nil, "--redis-url"},
		{"redis host without port", []string{"--redis-url", "localhost"}, nil, "--redis-url"},
		{"bad cluster node", []string{"--redis-url", "a:1,b"}, nil, "--redis-url"},
		{"cluster with db", []string{"--redis-url", "redis://a:1/3,b:2"}, nil, "no database"},
		{"bad origin", []string{"--allowed-origins", "example.com"}, nil, "--allowed-origins"},
		{"origin with path", []string{"--allowed-origins", "https://example.com/app"}, nil, "--allowed-origins"},
		{"unknown flag", []string{"--nope"}, nil, "flag provided but not defined"},
		{"positional argument", []string{"serve"}, nil, `unexpected argument "serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(tt.args, env(tt.env), io.Discard)
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestParseConfig_Help(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"-h"}, env(nil), &out)
	require.ErrorIs(t, err, errHelp)
	require.Contains(t, out.String(), "SEMAPHORED_REDIS_URL")
	require.Contains(t, out.String(), "-redis-prefix")

	// run treats -h as success.
	require.NoError(t, runIO(t.Context(), []string{"--help"}, env(nil), io.Discard, io.Discard))
}

func TestParseRedisURL(t *testing.T) {
	tg, err := parseRedisURL("redis://user:pw@localhost:6380/1")
	require.NoError(t, err)
	require.NotNil(t, tg.single)
	require.Nil(t, tg.cluster)
	require.Equal(t, "localhost:6380", tg.single.Addr)
	require.Equal(t, 1, tg.single.DB)
	require.Equal(t, "pw", tg.single.Password)

	tg, err = parseRedisURL("rediss://r.example.com:6379")
	require.NoError(t, err)
	require.NotNil(t, tg.single.TLSConfig)

	tg, err = parseRedisURL("10.0.0.1:7000")
	require.NoError(t, err)
	require.Equal(t, "10.0.0.1:7000", tg.single.Addr)

	tg, err = parseRedisURL("10.0.0.1:7000, 10.0.0.2:7000,redis://:secret@10.0.0.3:7000")
	require.NoError(t, err)
	require.Nil(t, tg.single)
	require.Equal(t, []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"}, tg.cluster.Addrs)
	require.Equal(t, "secret", tg.cluster.Password)
	require.Equal(t, "cluster 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000", tg.describe())

	tg, err = parseRedisURL("config.example.com:6379,")
	require.NoError(t, err)
	require.Equal(t, []string{"config.example.com:6379"}, tg.cluster.Addrs)

	_, err = parseRedisURL("redis://:topsecret@bad host:1")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "topsecret")

	_, err = parseRedisURL(" , ")
	require.Error(t, err)
}

func TestEnvName(t *testing.T) {
	require.Equal(t, "SEMAPHORED_WEBHOOK_ALLOW_PRIVATE", envName("webhook-allow-private"))
	require.Equal(t, "SEMAPHORED_ADDR", envName("addr"))
}

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRun runs the server in a goroutine and waits until /healthz answers.
// It returns the base URL, stdout, and a stop function returning run's error.
func startRun(t *testing.T, args []string, getenv func(string) string) (string, *syncBuffer, func() error) {
	t.Helper()
	base, stdout, _, stop := startRunLogs(t, args, getenv)
	return base, stdout, stop
}

// startRunLogs is startRun, also returning the logs (stderr).
func startRunLogs(t *testing.T, args []string, getenv func(string) string) (string, *syncBuffer, *syncBuffer, func() error) {
	t.Helper()
	port, err := testredis.FreePort()
	require.NoError(t, err)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithCancel(t.Context())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- runIO(ctx, append([]string{"--addr", addr, "--log-level", "debug"}, args...), getenv, stdout, stderr)
	}()
	base := "http://" + addr
	client := &http.Client{Timeout: time.Second}
	if slices.Contains(args, "--tls-cert") {
		base = "https://" + addr
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // only the health poll
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("run returned early: %v\nlogs:\n%s", err, stderr.String())
		default:
		}
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("server did not become healthy: %v\nlogs:\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	client.CloseIdleConnections()
	stopped := false
	var runErr error
	stop := func() error {
		if stopped {
			return runErr
		}
		stopped = true
		cancel()
		select {
		case runErr = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("run did not return after cancel")
		}
		t.Logf("server logs:\n%s", stderr.String())
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return base, stdout, stderr, stop
}

func get(t *testing.T, url, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	require.NoError(t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestRun_MemoryStore(t *testing.T) {
	base, stdout, stop := startRun(t, nil, env(nil))

	out := stdout.String()
	require.Equal(t, 1, strings.Count(out, "admin key (shown once): sk_"), out)
	key := strings.TrimSpace(strings.TrimPrefix(out, "admin key (shown once): "))

	code, body := get(t, base+"/v1/keys", key)
	require.Equal(t, http.StatusOK, code, body)
	code, _ = get(t, base+"/v1/keys", "sk_wrong_key_0123456789abcdef0123456789")
	require.Equal(t, http.StatusUnauthorized, code)

	code, _ = get(t, base+"/metrics", "")
	require.Equal(t, http.StatusUnauthorized, code, "the series name tenants: operator keys only")
	code, body = get(t, base+"/metrics", key)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "go_goroutines")
	require.Contains(t, body, "process_")
	require.NotContains(t, body, "semaphored_redis_pool")

	require.NoError(t, stop())
}

func TestRun_FixedAdminKeyNotPrinted(t *testing.T) {
	base, stdout, stop := startRun(t, []string{"--admin-key", testKey}, env(nil))
	require.Empty(t, stdout.String())
	code, body := get(t, base+"/v1/keys", testKey)
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, stop())
}

func TestRun_Redis(t *testing.T) {
	url := testredis.URL(t)
	prefix := strings.TrimSuffix(testredis.Prefix(t), ":")
	base, stdout, stop := startRun(t, []string{"--admin-key", testKey}, env(map[string]string{
		"SEMAPHORED_REDIS_URL":    url,
		"SEMAPHORED_REDIS_PREFIX": prefix,
	}))
	require.Empty(t, stdout.String())

	code, body := get(t, base+"/readyz", "")
	require.Equal(t, http.StatusOK, code, body)
	code, body = get(t, base+"/v1/keys", testKey)
	require.Equal(t, http.StatusOK, code, body)

	code, body = get(t, base+"/metrics", testKey)
	require.Equal(t, http.StatusOK, code)
	for _, m := range []string{
		"semaphored_redis_pool_hits_total",
		"semaphored_redis_pool_misses_total",
		"semaphored_redis_pool_timeouts_total",
		`semaphored_redis_pool_connections{state="total"}`,
		`semaphored_redis_pool_connections{state="idle"}`,
		`semaphored_redis_pool_connections{state="stale"}`,
		"semaphored_redis_layout_refused_total 0",
	} {
		require.Contains(t, body, m)
	}
	require.NoError(t, stop())
}

func TestRun_Errors(t *testing.T) {
	t.Run("invalid flag", func(t *testing.T) {
		err := runIO(t.Context(), []string{"--admin-key", "nope"}, env(nil), io.Discard, io.Discard)
		require.ErrorContains(t, err, "--admin-key")
	})
	t.Run("redis unreachable", func(t *testing.T) {
		port, err := testredis.FreePort()
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		err = runIO(ctx, []string{"--redis-url", "redis://127.0.0.1:" + strconv.Itoa(port)}, env(nil), io.Discard, io.Discard)
		require.ErrorContains(t, err, "redis 127.0.0.1:")
	})
	t.Run("address in use", func(t *testing.T) {
		base, _, stop := startRun(t, nil, env(nil))
		defer stop()
		err := runIO(t.Context(), []string{"--addr", strings.TrimPrefix(base, "http://")}, env(nil), io.Discard, io.Discard)
		require.ErrorContains(t, err, "listen")
	})
	t.Run("tls flags", func(t *testing.T) {
		err := runIO(t.Context(), []string{"--tls-cert", "c.pem"}, env(nil), io.Discard, io.Discard)
		require.ErrorContains(t, err, "--tls-key")
		err = runIO(t.Context(), []string{"--tls-cert", "nope.pem", "--tls-key", "nope.pem"}, env(nil), io.Discard, io.Discard)
		require.ErrorContains(t, err, "--tls-cert")
	})
}

// TestRun_KeyPrintedOnlyOnceListening: with the address taken, nothing is
// created or printed; the next start on a free address prints the key.
func TestRun_KeyPrintedOnlyOnceListening(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	e := env(map[string]string{
		"SEMAPHORED_REDIS_URL":    testredis.URL(t),
		"SEMAPHORED_REDIS_PREFIX": strings.TrimSuffix(testredis.Prefix(t), ":"),
	})
	var out syncBuffer
	err = runIO(t.Context(), []string{"--addr", taken.Addr().String()}, e, &out, io.Discard)
	require.ErrorContains(t, err, "listen")
	require.Empty(t, out.String(), "no key printed by a start that failed")

	base, stdout, stop := startRun(t, nil, e)
	require.Equal(t, 1, strings.Count(stdout.String(), "admin key (shown once): sk_"), stdout.String())
	key := strings.TrimSpace(strings.TrimPrefix(stdout.String(), "admin key (shown once): "))
	code, body := get(t, base+"/v1/keys", key)
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, stop())
}

// TestRun_MetricsAddr: /metrics on its own address without auth, 404 on
// the API's; and --webhook-allow-private is logged as a warning.
func TestRun_MetricsAddr(t *testing.T) {
	port, err := testredis.FreePort()
	require.NoError(t, err)
	maddr := "127.0.0.1:" + strconv.Itoa(port)
	base, _, logs, stop := startRunLogs(t, []string{"--admin-key", testKey, "--metrics-addr", maddr, "--webhook-allow-private"}, env(nil))
	code, _ := get(t, base+"/metrics", testKey)
	require.Equal(t, http.StatusNotFound, code)
	code, body := get(t, "http://"+maddr+"/metrics", "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "go_goroutines")
	require.Regexp(t, `level=WARN msg="--webhook-allow-private is on`, logs.String())
	require.NoError(t, stop())

	_, _, logs, stop = startRunLogs(t, []string{"--admin-key", testKey}, env(nil))
	require.NotContains(t, logs.String(), "webhook-allow-private")
	require.NoError(t, stop())
}

// TestRun_ShutdownClosesConnectionsWithoutRequest: a connection a client
// opened and never used (a pool's spare, a load balancer's pre-connect)
// does not hold the exit: net/http alone would wait until it is 5 s old,
// past this test's --shutdown-timeout of 3s, and then report the
// requests as unfinished. Also over TLS, where the handshake is done and
// no request sent.
func TestRun_ShutdownClosesConnectionsWithoutRequest(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[tlsOn], func(t *testing.T) {
			args := []string{"--admin-key", testKey, "--shutdown-timeout", "3s"}
			if tlsOn {
				dir := t.TempDir()
				cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
				writeCert(t, cert, key, 1)
				args = append(args, "--tls-cert", cert, "--tls-key", key)
			}
			base, _, logs, stop := startRunLogs(t, args, env(nil))
			addr := strings.TrimPrefix(strings.TrimPrefix(base, "https://"), "http://")
			conn, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer conn.Close()
			waitAccepted(t, addr)
			if tlsOn {
				tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
				require.NoError(t, tc.Handshake())
				conn = tc
			}
			require.NoError(t, stop())
			require.NotContains(t, logs.String(), "did not finish in time")
			// the server closed it (over HTTP/2 after its frames): reads
			// end before the deadline
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
			_, err = io.Copy(io.Discard, conn)
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "closed by the server, not timed out: %v", err)
		})
	}
}

// waitAccepted waits (bounded) until the listener on addr has no
// connection waiting to be accepted: the rx_queue of a LISTEN socket in
// /proc/net/tcp is its accept backlog.
func waitAccepted(t *testing.T, addr string) {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	p, err := strconv.Atoi(port)
	require.NoError(t, err)
	local := fmt.Sprintf(":%04X", p)
	require.Eventually(t, func() bool {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			return true // not Linux: nothing to look at
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			// sl local_address rem_address st tx_queue:rx_queue ...
			if len(f) > 4 && strings.HasSuffix(f[1], local) && f[3] == "0A" {
				return strings.HasSuffix(f[4], ":00000000")
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "the server accepted the connection")
}
