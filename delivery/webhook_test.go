package delivery

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"code.dny.dev/ssrf"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// sleeps records the waits of a sender instead of sleeping.
type sleeps struct {
	mu sync.Mutex
	ds []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.ds = append(s.ds, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.ds...)
}

type setup struct {
	sender *WebhookSender
	sleeps *sleeps
}

func newSetup(t *testing.T, cfg WebhookConfig) setup {
	t.Helper()
	sl := &sleeps{}
	if cfg.Sleep == nil {
		cfg.Sleep = sl.sleep
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := NewWebhookSender(cfg)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return setup{sender: s, sleeps: sl}
}

func newServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// hang reads the request body (so the server notices the client hanging
// up) and blocks until the client is gone or the test ends.
func hang(t *testing.T) func(r *http.Request) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // runs before the server's Close
	return func(r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}
}

func route(url string) routing.Route {
	return routing.Route{Type: routing.TypeHTTPS, URL: url, Timeout: 200 * time.Millisecond, Attempts: 3, Secret: testSecret}
}

var msg = WebhookMessage{
	ID: "job_123", Semaphore: "orders", Channel: "eu", Attempt: 2,
	Lease: wire.Lease{ID: "lease_1", Semaphore: "orders", Channel: "eu", Weight: 1, FencingToken: 42,
		AcquiredAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ExpiresAt: time.Date(2026, 1, 2, 3, 5, 5, 0, time.UTC)},
	Payload: json.RawMessage(`{"order":7}`),
}

type request struct {
	header http.Header
	body   []byte
}

// recorder is a handler answering with the given statuses in turn (the last
// one repeats) and recording every request.
type recorder struct {
	mu       sync.Mutex
	reqs     []request
	statuses []int
	header   http.Header // added to every answer
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, request{header: r.Header.Clone(), body: b})
	n := len(rc.reqs)
	st := rc.statuses[min(n, len(rc.statuses))-1]
	rc.mu.Unlock()
	for k, v := range rc.header {
		w.Header()[k] = v
	}
	w.WriteHeader(st)
}

func (rc *recorder) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.reqs...)
}

func TestSend_SignedBody(t *testing.T) {
	rc := &recorder{statuses: []int{http.StatusOK}}
	srv := newServer(t, rc.ServeHTTP)
	s := newSetup(t, WebhookConfig{AllowPrivate: true})

	require.NoError(t, s.sender.Send(context.Background(), route(srv.URL+"/hook"), msg))
	reqs := rc.requests()
	require.Len(t, reqs, 1)
	r := reqs[0]
	require.JSONEq(t, `{"id":"job_123","semaphore":"orders","channel":"eu","attempt":2,
		"lease":{"id":"lease_1","semaphore":"orders","channel":"eu","weight":1,"fencingToken":42,
		"acquiredAt":"2026-01-02T03:04:05Z","expiresAt":"2026-01-02T03:05:05Z"},
		"payload":{"order":7}}`, string(r.body))
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	require.Equal(t, UserAgent, r.header.Get("User-Agent"))
	require.Equal(t, "job_123", r.header.Get("webhook-id"))
	require.True(t, strings.HasPrefix(r.header.Get("webhook-signature"), "v1,"))

	wh, err := standardwebhooks.NewWebhook(testSecret)
	require.NoError(t, err)
	require.NoError(t, wh.Verify(r.body, r.header), "the receiver verifies the signature with the route secret")
	other, err := standardwebhooks.NewWebhook("whsec_" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", 32))))
	require.NoError(t, err)
	require.Error(t, other.Verify(r.body, r.header), "another secret does not verify")
	require.Error(t, wh.Verify(append(r.body, ' '), r.header), "a changed body does not verify")
	require.Empty(t, s.sleeps.get())
}

func TestSend_NullPayload(t *testing.T) {
	rc := &recorder{statuses: []int{http.StatusAccepted}}
	srv := newServer(t, rc.ServeHTTP)
	s := newSetup(t, WebhookConfig{AllowPrivate: true})
	m := msg
	m.Payload = nil
	require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), m))
	var body map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(rc.requests()[0].body, &body))
	require.Equal(t, "null", string(body["payload"]))
}

func TestSend_Retries(t *testing.T) {
	t.Run("500 then 200 succeeds after 2 attempts", func(t *testing.T) {
		rc := &recorder{statuses: []int{500, 200}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second})
		require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), msg))
		require.Len(t, rc.requests(), 2)
		ds := s.sleeps.get()
		require.Len(t, ds, 1)
		require.LessOrEqual(t, ds[0], 100*time.Millisecond, "full jitter: at most BackoffBase before retry 1")
	})

	t.Run("same webhook-id on every retry, each signed", func(t *testing.T) {
		rc := &recorder{statuses: []int{503}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true, BackoffBase: 100 * time.Millisecond, BackoffMax: 150 * time.Millisecond})
		r := route(srv.URL)
		r.Attempts = 4
		err := s.sender.Send(context.Background(), r, msg)
		var de *DeliveryError
		require.ErrorAs(t, err, &de)
		require.Equal(t, 4, de.Attempts)
		require.Equal(t, 503, de.LastStatus)
		require.ErrorContains(t, err, "HTTP status 503")
		reqs := rc.requests()
		require.Len(t, reqs, 4)
		wh, _ := standardwebhooks.NewWebhook(testSecret)
		for _, rq := range reqs {
			require.Equal(t, "job_123", rq.header.Get("webhook-id"))
			require.Equal(t, reqs[0].body, rq.body)
			require.NoError(t, wh.Verify(rq.body, rq.header))
		}
		ds := s.sleeps.get()
		require.Len(t, ds, 3)
		for i, d := range ds {
			ceil := min(100*time.Millisecond<<i, 150*time.Millisecond)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.LessOrEqual(t, d, ceil, "retry %d", i+1)
		}
	})

	t.Run("429 with Retry-After seconds", func(t *testing.T) {
		rc := &recorder{statuses: []int{429, 429, 200}, header: http.Header{"Retry-After": {"3"}}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), msg))
		require.Equal(t, []time.Duration{3 * time.Second, 3 * time.Second}, s.sleeps.get())
	})

	t.Run("Retry-After capped at BackoffMax", func(t *testing.T) {
		rc := &recorder{statuses: []int{503, 200}, header: http.Header{"Retry-After": {"3600"}}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true, BackoffMax: 20 * time.Second})
		require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), msg))
		require.Equal(t, []time.Duration{20 * time.Second}, s.sleeps.get())
	})

	t.Run("Retry-After HTTP date", func(t *testing.T) {
		date := time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)
		rc := &recorder{statuses: []int{429, 200}, header: http.Header{"Retry-After": {date}}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), msg))
		ds := s.sleeps.get()
		require.Len(t, ds, 1)
		require.Greater(t, ds[0], 7*time.Second)
		require.LessOrEqual(t, ds[0], 10*time.Second)
	})

	t.Run("one attempt, no retry", func(t *testing.T) {
		rc := &recorder{statuses: []int{400}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		r := route(srv.URL)
		r.Attempts = 1
		var de *DeliveryError
		require.ErrorAs(t, s.sender.Send(context.Background(), r, msg), &de)
		require.Equal(t, DeliveryError{Attempts: 1, LastStatus: 400, Err: de.Err}, *de)
		require.Empty(t, s.sleeps.get())
	})
}

func TestSend_Timeout(t *testing.T) {
	var hits atomic.Int32
	wait := hang(t)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		wait(r)
	})
	s := newSetup(t, WebhookConfig{AllowPrivate: true})
	start := time.Now()
	err := s.sender.Send(context.Background(), route(srv.URL), msg)
	var de *DeliveryError
	require.ErrorAs(t, err, &de)
	require.Equal(t, 3, de.Attempts)
	require.Equal(t, 0, de.LastStatus)
	require.ErrorContains(t, err, "no response within 200ms")
	require.EqualValues(t, 3, hits.Load())
	require.Less(t, time.Since(start), 5*time.Second)
}

// drip answers status and then a byte every few milliseconds until the
// client hangs up.
func drip(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(status)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
				if _, err := w.Write([]byte("x")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
	}
}

func TestSend_DrippingBody(t *testing.T) {
	t.Run("2xx accepted, body cut by the timeout", func(t *testing.T) {
		srv := newServer(t, drip(http.StatusOK))
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		start := time.Now()
		require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), msg))
		require.Less(t, time.Since(start), 3*time.Second)
	})
	t.Run("500 retried, each attempt cut by the timeout", func(t *testing.T) {
		srv := newServer(t, drip(http.StatusInternalServerError))
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		r := route(srv.URL)
		r.Attempts = 2
		start := time.Now()
		var de *DeliveryError
		require.ErrorAs(t, s.sender.Send(context.Background(), r, msg), &de)
		require.Equal(t, 2, de.Attempts)
		require.Equal(t, 500, de.LastStatus)
		require.Less(t, time.Since(start), 3*time.Second)
	})
}

func TestSend_RedirectNotFollowed(t *testing.T) {
	var followed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/hook", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { followed.Add(1) })
	srv := newServer(t, mux.ServeHTTP)

	for _, cfg := range []WebhookConfig{
		{AllowPrivate: true},
		{AllowPrivate: true, Client: &http.Client{}}, // an injected client's redirect policy is overridden
	} {
		s := newSetup(t, cfg)
		r := route(srv.URL + "/hook")
		r.Attempts = 2
		var de *DeliveryError
		require.ErrorAs(t, s.sender.Send(context.Background(), r, msg), &de)
		require.Equal(t, 302, de.LastStatus)
		require.Equal(t, 2, de.Attempts)
		require.ErrorContains(t, de, "redirects are not followed")
	}
	require.Zero(t, followed.Load())
}

// countingTransport counts the response body bytes the client reads.
type countingTransport struct {
	base http.RoundTripper
	read atomic.Int64
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		resp.Body = countingBody{resp.Body, &c.read}
	}
	return resp, err
}

func TestSend_HugeResponseCapped(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		chunk := []byte(strings.Repeat("y", 32<<10))
		for range 1024 { // 32 MiB unless the client hangs up
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	ct := &countingTransport{base: base}
	s := newSetup(t, WebhookConfig{AllowPrivate: true, MaxResponseBytes: 4 << 10, Client: &http.Client{Transport: ct}})
	require.NoError(t, s.sender.Send(context.Background(), route(srv.URL), msg))
	require.LessOrEqual(t, ct.read.Load(), int64(4<<10))
	require.Positive(t, ct.read.Load())
}

func TestSend_ContextCancel(t *testing.T) {
	t.Run("during a request", func(t *testing.T) {
		arrived := make(chan struct{}, 1)
		wait := hang(t)
		srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			wait(r)
		})
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		r := route(srv.URL)
		r.Timeout = 30 * time.Second
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- s.sender.Send(ctx, r, msg) }()
		select {
		case <-arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("request never arrived")
		}
		cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled)
			var de *DeliveryError
			require.False(t, errors.As(err, &de), "a cancelled send is not a route failure")
		case <-time.After(5 * time.Second):
			t.Fatal("Send did not return after cancel")
		}
	})
	t.Run("during the backoff", func(t *testing.T) {
		rc := &recorder{statuses: []int{500}}
		srv := newServer(t, rc.ServeHTTP)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var slept atomic.Int32
		s := newSetup(t, WebhookConfig{AllowPrivate: true, Sleep: func(sctx context.Context, d time.Duration) error {
			slept.Add(1)
			cancel() // cancelled while waiting
			<-sctx.Done()
			return sctx.Err()
		}})
		err := s.sender.Send(ctx, route(srv.URL), msg)
		require.ErrorIs(t, err, context.Canceled)
		require.Len(t, rc.requests(), 1)
		require.EqualValues(t, 1, slept.Load())
	})
	t.Run("already cancelled", func(t *testing.T) {
		rc := &recorder{statuses: []int{200}}
		srv := newServer(t, rc.ServeHTTP)
		s := newSetup(t, WebhookConfig{AllowPrivate: true})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, s.sender.Send(ctx, route(srv.URL), msg), context.Canceled)
		require.Empty(t, rc.requests())
	})
	t.Run("default sleep stops on cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, sleep(ctx, time.Hour), context.Canceled)
		require.NoError(t, sleep(context.Background(), time.Nanosecond))
	})
}

func TestSend_PrivateRefusedAtConnect(t *testing.T) {
	var hits, conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	require.True(t, strings.HasPrefix(srv.URL, "https://127.0.0.1:"), srv.URL)

	s := newSetup(t, WebhookConfig{}) // the safe production client
	err := s.sender.Send(context.Background(), route(srv.URL+"/hook"), msg)
	var de *DeliveryError
	require.ErrorAs(t, err, &de)
	require.ErrorIs(t, err, ErrRefusedAddress)
	require.ErrorIs(t, err, ssrf.ErrProhibitedIP)
	require.Equal(t, 1, de.Attempts, "a refused address is not retried")
	require.Equal(t, 0, de.LastStatus)
	require.ErrorContains(t, err, "127.0.0.1 is not a permitted destination")
	require.ErrorContains(t, err, "--webhook-allow-private")
	require.Zero(t, hits.Load(), "no request reached the server")
	require.Zero(t, conns.Load(), "no connection reached the server")
	require.Empty(t, s.sleeps.get())

	// Plain http:// is refused before any connection too.
	err = s.sender.Send(context.Background(), route("http://example.com/hook"), msg)
	require.ErrorIs(t, err, ErrRefusedAddress)
	require.ErrorContains(t, err, "http://")
}

func TestSend_AllowPrivateTLS(t *testing.T) {
	// With AllowPrivate the safe transport connects to loopback; this server's
	// self-signed certificate is then refused by TLS verification, which
	// proves the connection was made.
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake error is expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s := newSetup(t, WebhookConfig{AllowPrivate: true})
	r := route(srv.URL)
	r.Attempts, r.Timeout = 1, 10*time.Second
	err := s.sender.Send(context.Background(), r, msg)
	require.ErrorContains(t, err, "certificate")
	require.NotErrorIs(t, err, ErrRefusedAddress)
	require.EqualValues(t, 1, conns.Load())
}

func TestSend_BadRoute(t *testing.T) {
	rc := &recorder{statuses: []int{200}}
	srv := newServer(t, rc.ServeHTTP)
	s := newSetup(t, WebhookConfig{AllowPrivate: true})
	tests := []struct {
		name     string
		edit     func(r *routing.Route)
		contains string
	}{
		{"no secret", func(r *routing.Route) { r.Secret = "" }, "no webhook secret"},
		{"bad secret", func(r *routing.Route) { r.Secret = "whsec_!!" }, "base64"},
		{"not https", func(r *routing.Route) { r.Type = routing.TypeWebsocket }, "not https"},
		{"bad scheme", func(r *routing.Route) { r.URL = "ftp://example.com" }, "scheme"},
		{"no host", func(r *routing.Route) { r.URL = "https:///x" }, "no host"},
	}
	for _, tc := range tests {
		r := route(srv.URL)
		tc.edit(&r)
		err := s.sender.Send(context.Background(), r, msg)
		var de *DeliveryError
		require.ErrorAs(t, err, &de, tc.name)
		require.ErrorContains(t, err, tc.contains, tc.name)
	}
	require.Empty(t, rc.requests())

	// Zero Timeout and Attempts take the route defaults.
	r := route(srv.URL)
	r.Timeout, r.Attempts = 0, 0
	require.NoError(t, s.sender.Send(context.Background(), r, msg))
}

func TestNewWebhookSender_Invalid(t *testing.T) {
	for _, cfg := range []WebhookConfig{
		{MaxResponseBytes: -1},
		{BackoffBase: -time.Second},
		{BackoffBase: time.Minute, BackoffMax: time.Second},
	} {
		_, err := NewWebhookSender(cfg)
		require.Error(t, err, "%+v", cfg)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", -1},
		{"0", 0},
		{" 5 ", 5 * time.Second},
		{"-1", -1},
		{"abc", -1},
		{"1.5", -1},
		{"99999999999", 24 * time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, parseRetryAfter(tc.in, now), tc.in)
	}
}

func TestBackoff(t *testing.T) {
	s := newSetup(t, WebhookConfig{BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	for n := 1; n < 80; n++ {
		ceil := 50 * time.Millisecond
		if n <= 3 {
			ceil = 10 * time.Millisecond << (n - 1)
		}
		for range 20 {
			d := s.sender.backoff(n)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.LessOrEqual(t, d, ceil, "retry %d", n)
		}
	}
}
