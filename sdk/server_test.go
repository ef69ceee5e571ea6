package sdk_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/api"
	"github.com/semaphored/semaphored/delivery"
	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store/memory"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// adminKey is the operator key of every in-process test server.
const adminKey = "sk_sdk_example_0123456789abcdef0123456789"

// server is a real semaphored (memory store, service, HTTP API) served by
// httptest.
type server struct {
	URL  string
	stop func()
}

type serverOptions struct {
	keyRateLimit float64
	keyRateBurst int
	webhooks     bool  // deliver https routes, to loopback http:// receivers too
	maxQueued    int64 // 0: the default
}

// startServer starts an in-process server whose operator key is adminKey.
func startServer(opts serverOptions) (*server, error) {
	ctx := context.Background()
	st := memory.New(memory.Options{})
	cfg := semaphore.Config{Store: st, SweepInterval: 50 * time.Millisecond, MaxQueued: opts.maxQueued}
	var sender *delivery.WebhookSender
	if opts.webhooks {
		s, err := delivery.NewWebhookSender(delivery.WebhookConfig{AllowPrivate: true, BackoffBase: 10 * time.Millisecond})
		if err != nil {
			return nil, err
		}
		sender = s
		cfg.Webhooks, cfg.Routing = sender, routing.Options{AllowPrivate: true}
	}
	svc, err := semaphore.New(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := svc.Bootstrap(ctx, adminKey); err != nil {
		return nil, err
	}
	if err := svc.Start(ctx); err != nil {
		return nil, err
	}
	a, err := api.New(api.Config{Service: svc, KeyRateLimit: opts.keyRateLimit, KeyRateBurst: opts.keyRateBurst})
	if err != nil {
		svc.Stop()
		return nil, err
	}
	ts := httptest.NewServer(a.Handler())
	return &server{URL: ts.URL, stop: func() {
		ts.CloseClientConnections()
		ts.Close()
		svc.Stop()
		if sender != nil {
			sender.Close()
		}
		_ = st.Close()
		http.DefaultClient.CloseIdleConnections()
	}}, nil
}

// mustStartServer is startServer for Examples: it panics on error.
func mustStartServer() *server { return mustStartServerWith(serverOptions{}) }

// mustStartServerWith is mustStartServer with options.
func mustStartServerWith(opts serverOptions) *server {
	s, err := startServer(opts)
	if err != nil {
		panic(err)
	}
	return s
}

// Close stops the server.
func (s *server) Close() { s.stop() }

// newTestServer starts a server stopped at cleanup.
func newTestServer(t *testing.T, opts serverOptions) *server {
	t.Helper()
	s, err := startServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// fakeServer serves h, stopped at cleanup.
func fakeServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
	})
	return ts.URL
}
