package sdk_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/api"
	"github.com/semaphored/semaphored/delivery"
	"github.com/semaphored/semaphored/hub"
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

// server is a real semaphored (memory store, service, websocket hub, HTTP
// API) served by httptest.
type server struct {
	URL  string
	opts serverOptions
	st   *memory.Store

	mu   sync.Mutex
	node *node // nil while Down
	addr string
	// shared: the store is another server's (second), not closed here
	shared bool
}

// nodeSeq numbers the hubs' node ids.
var nodeSeq atomic.Int64

type serverOptions struct {
	keyRateLimit float64
	keyRateBurst int
	webhooks     bool  // deliver https routes, to loopback http:// receivers too
	maxQueued    int64 // 0: the default
	heartbeat    time.Duration
	grace        time.Duration
}

// node is the part of a server that restarts: service, hub, HTTP server.
type node struct {
	hs     *httptest.Server
	hub    *hub.Hub
	svc    *semaphore.Service
	sender *delivery.WebhookSender
}

// startServer starts an in-process server whose operator key is adminKey.
func startServer(opts serverOptions) (*server, error) {
	s := &server{opts: opts, st: memory.New(memory.Options{})}
	n, err := s.startNode("127.0.0.1:0")
	if err != nil {
		_ = s.st.Close()
		return nil, err
	}
	s.node, s.URL = n, n.hs.URL
	return s, nil
}

// startNode starts a service, a hub and an HTTP server on addr, on the
// server's store.
func (s *server) startNode(addr string) (*node, error) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("SDK_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := semaphore.Config{Logger: log, Store: s.st, SweepInterval: 50 * time.Millisecond, SessionInterval: 50 * time.Millisecond, MaxQueued: s.opts.maxQueued}
	n := &node{}
	if s.opts.webhooks {
		sender, err := delivery.NewWebhookSender(delivery.WebhookConfig{AllowPrivate: true, BackoffBase: 10 * time.Millisecond})
		if err != nil {
			return nil, err
		}
		n.sender = sender
		cfg.Webhooks, cfg.Routing = sender, routing.Options{AllowPrivate: true}
	}
	heartbeat := s.opts.heartbeat
	if heartbeat == 0 {
		heartbeat = time.Second // the hub notices expired jobs of its sessions within one
	}
	wsHub, err := hub.New(hub.Config{
		Store: s.st, Heartbeat: heartbeat, Logger: log, Node: fmt.Sprintf("sdk-node-%d", nodeSeq.Add(1)), Grace: s.opts.grace,
	})
	if err != nil {
		return nil, err
	}
	n.hub = wsHub
	cfg.Websocket = wsHub
	svc, err := semaphore.New(cfg)
	if err != nil {
		return nil, err
	}
	n.svc = svc
	if _, err := svc.Bootstrap(ctx, adminKey); err != nil {
		return nil, err
	}
	if err := svc.Start(ctx); err != nil {
		return nil, err
	}
	if err := wsHub.Start(ctx); err != nil {
		svc.Stop()
		return nil, err
	}
	a, err := api.New(api.Config{Service: svc, Hub: wsHub, KeyRateLimit: s.opts.keyRateLimit, KeyRateBurst: s.opts.keyRateBurst})
	if err != nil {
		wsHub.Stop()
		svc.Stop()
		return nil, err
	}
	var l net.Listener
	for range 50 { // the old listener's port may take a moment to be free
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		wsHub.Stop()
		svc.Stop()
		return nil, err
	}
	n.hs = httptest.NewUnstartedServer(a.Handler())
	_ = n.hs.Listener.Close()
	n.hs.Listener = l
	n.hs.Start()
	return n, nil
}

func (n *node) stop() {
	n.hub.Stop() // closes the websockets (1001), which httptest does not track
	n.hs.CloseClientConnections()
	n.hs.Close()
	n.svc.Stop()
	if n.sender != nil {
		n.sender.Close()
	}
}

// second starts another instance on the same store (its own service, hub
// and address), as a second process sharing one Redis would be.
func (s *server) second(t *testing.T) *server {
	t.Helper()
	b := &server{opts: s.opts, st: s.st, shared: true}
	n, err := b.startNode("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.node, b.URL = n, n.hs.URL
	t.Cleanup(b.Close)
	return b
}

// Restart stops the service, hub and HTTP server and starts new ones on
// the same address and store, as a restarted process on a shared store.
func (s *server) Restart() error {
	s.Down()
	return s.Up()
}

// Down stops the service, hub and HTTP server; the store lives on.
func (s *server) Down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node != nil {
		s.addr = s.node.hs.Listener.Addr().String()
		s.node.stop()
		s.node = nil
	}
}

// Up starts them again on the same address after Down.
func (s *server) Up() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.startNode(s.addr)
	if err != nil {
		return err
	}
	s.node = n
	return nil
}

// Close stops the server.
func (s *server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node != nil {
		s.node.stop()
	}
	if !s.shared {
		_ = s.st.Close()
	}
	http.DefaultClient.CloseIdleConnections()
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
