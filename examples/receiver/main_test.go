package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
)

const (
	testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	testKey    = "sk_receiver_test_0123456789abcdef0123"
	testBody   = `{"id":"job-1","semaphore":"orders","channel":"default","attempt":1,` +
		`"lease":{"id":"lease-1","fencingToken":42,"expiresAt":"2030-01-01T00:00:00Z"},"payload":{"orderId":1234}}`
)

// releaseCall is one request the fake semaphored received.
type releaseCall struct {
	method, path, auth string
}

// setup starts a fake semaphored that records every call and answers 200,
// and returns a receiver releasing jobs there, with no pretend work.
func setup(t *testing.T) (*receiver, <-chan releaseCall) {
	t.Helper()
	calls := make(chan releaseCall, 10)
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls <- releaseCall{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization")}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"job":{"id":"job-1","status":"done"}}`))
	}))
	t.Cleanup(fake.Close)

	cfg, err := parseConfig([]string{"--server", fake.URL, "--work", "0s"}, func(name string) string {
		return map[string]string{"WEBHOOK_SECRET": testSecret, "SEMAPHORED_KEY": testKey}[name]
	})
	require.NoError(t, err)
	rc, err := newReceiver(cfg, slog.New(slog.NewTextHandler(t.Output(), nil)))
	require.NoError(t, err)
	t.Cleanup(rc.client.CloseIdleConnections)
	return rc, calls
}

// signed returns Standard Webhooks headers for body, signed by secret as
// message id at ts.
func signed(t *testing.T, secret, id string, ts time.Time, body string) http.Header {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	sig, err := wh.Sign(id, ts, []byte(body))
	require.NoError(t, err)
	h := http.Header{}
	h.Set(standardwebhooks.HeaderWebhookID, id)
	h.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(standardwebhooks.HeaderWebhookSignature, sig)
	return h
}

// post sends body with header h to the receiver's handler and returns the
// status.
func post(rc *receiver, h http.Header, body string) int {
	req := httptest.NewRequest(http.MethodPost, "/hooks/orders", strings.NewReader(body))
	req.Header = h
	rec := httptest.NewRecorder()
	rc.handler().ServeHTTP(rec, req)
	return rec.Code
}

func TestReceiver_SignedDeliveryIsReleased(t *testing.T) {
	rc, calls := setup(t)

	require.Equal(t, http.StatusAccepted, post(rc, signed(t, testSecret, "job-1", time.Now(), testBody), testBody))

	select {
	case c := <-calls:
		require.Equal(t, releaseCall{http.MethodPost, "/v1/jobs/job-1/release", "Bearer " + testKey}, c)
	case <-time.After(5 * time.Second):
		t.Fatal("no release call within 5s")
	}
	rc.wait()
	require.Empty(t, calls, "exactly one release")
}

func TestReceiver_BadSignatureIsRefused(t *testing.T) {
	const otherSecret = "whsec_c2VjcmV0LW9mLWFub3RoZXItcm91dGUtMDEyMzQ1Njc="
	now := time.Now()
	for name, tc := range map[string]struct {
		header http.Header
		body   string
	}{
		"wrong secret":               {signed(t, otherSecret, "job-1", now, testBody), testBody},
		"no signature headers":       {http.Header{}, testBody},
		"body changed after signing": {signed(t, testSecret, "job-1", now, testBody), testBody + " "},
		"replayed: 10 minutes old":   {signed(t, testSecret, "job-1", now.Add(-10*time.Minute), testBody), testBody},
		"webhook-id changed": {func() http.Header {
			h := signed(t, testSecret, "job-2", now, testBody)
			h.Set(standardwebhooks.HeaderWebhookID, "job-1")
			return h
		}(), testBody},
	} {
		t.Run(name, func(t *testing.T) {
			rc, calls := setup(t)
			require.Equal(t, http.StatusUnauthorized, post(rc, tc.header, tc.body))
			rc.wait() // no work may have started
			require.Empty(t, calls, "no release after a refused delivery")
		})
	}
}

func TestReceiver_DuplicateWhileWorkingIsNotWorkedTwice(t *testing.T) {
	rc, calls := setup(t)
	rc.cfg.work = 200 * time.Millisecond

	h := signed(t, testSecret, "job-1", time.Now(), testBody)
	require.Equal(t, http.StatusAccepted, post(rc, h, testBody))
	require.Equal(t, http.StatusAccepted, post(rc, h, testBody))
	rc.wait()
	require.Len(t, calls, 1, "one release for two deliveries of the same job in hand")
}

func TestParseConfig(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}

	c, err := parseConfig(nil, env("WEBHOOK_SECRET", testSecret, "SEMAPHORED_KEY", testKey, "SEMAPHORED_URL", "http://127.0.0.1:18080/"))
	require.NoError(t, err)
	require.Equal(t, config{addr: "127.0.0.1:9090", secret: testSecret, server: "http://127.0.0.1:18080", key: testKey, work: time.Second}, c)

	c, err = parseConfig([]string{"--secret", testSecret, "--key", "sk_flag"}, env("WEBHOOK_SECRET", "whsec_env", "SEMAPHORED_KEY", "sk_env"))
	require.NoError(t, err)
	require.Equal(t, testSecret, c.secret, "a flag wins over the environment")
	require.Equal(t, "sk_flag", c.key)
	require.Equal(t, "http://127.0.0.1:8080", c.server)

	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no secret":          {[]string{"--key", testKey}, "--secret"},
		"secret sans prefix": {[]string{"--key", testKey, "--secret", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "--secret"},
		"bare prefix":        {[]string{"--key", testKey, "--secret", "whsec_"}, "--secret"},
		"no key":             {[]string{"--secret", testSecret}, "--key"},
		"bad server":         {[]string{"--secret", testSecret, "--key", testKey, "--server", "127.0.0.1:8080"}, "--server"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseConfig(tc.args, env())
			require.ErrorContains(t, err, tc.want)
		})
	}
}
