// Package hub is the session hub of one semaphored instance (a node):
// the sessions whose connections it holds — websockets (ws.go), SSE
// streams (sse.go) and long polls (poll.go), each a transport under one
// session core (session.go, transport.go) — the node's heartbeat in the
// store, the websocket route of the dispatcher (semaphore.WebsocketRoute),
// and the node bus over which other instances hand it jobs for its
// sessions (deliver.go) and the calls made on them through other
// instances (post.go). What a session was pushed and holds is its ledger
// (ledger.go), a plain type tested without a socket. The request/reply
// protocol on top is the API's (api/ws.go, api/sessions.go).
package hub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

// Defaults of Config (README "Websocket workers").
const (
	DefaultHeartbeat       = 10 * time.Second
	DefaultGrace           = 30 * time.Second
	DefaultAckTimeout      = 2 * time.Second
	DefaultSendQueue       = 64
	DefaultWriteTimeout    = 5 * time.Second
	DefaultMaxMessageBytes = 1 << 20
)

// Close codes the server uses, besides 1009 (a frame over MaxMessageBytes,
// sent by the websocket library) and 1011 (the session could not be
// created). Documented in api/openapi.yaml.
const (
	CloseGoingAway = 1001 // the server is shutting down: resume on another instance
	ClosePolicy    = 1008 // no frame for 3 heartbeats, or the client stopped reading (send queue full for WriteTimeout)
	CloseResumed   = 4001 // the session was resumed by another connection
	// CloseKeyRevoked: the API key the connection opened with was revoked;
	// the session ends (close reason "key_revoked").
	CloseKeyRevoked = 4003
)

// ErrNoSubscriber is the failure of a websocket route with no session to
// take the job: none subscribed, or none acked it within AckTimeout. The
// dispatcher moves the job on to its next route. It is the domain's
// (semaphore.ErrNoSubscriber), which the hub implements the route for.
var ErrNoSubscriber = semaphore.ErrNoSubscriber

// ErrStopped is returned by Serve after Stop.
var ErrStopped = errors.New("hub: websocket hub stopped")

// errStopped is the cause of the hub's context after Stop.
var errStopped = errors.New("hub: hub stopped")

// Config configures a Hub. Zero values take the defaults above.
type Config struct {
	Store  store.Store  // required
	Node   string       // required: this instance's id, unique among those sharing the store
	Logger *slog.Logger // nil: discard

	// Heartbeat is announced to clients in welcome: a connection without a
	// frame for 3 heartbeats is dropped. The node's own heartbeat in the
	// store is refreshed every Heartbeat/3 and lives Heartbeat.
	Heartbeat time.Duration
	// Grace is how long a lost session can be resumed.
	Grace time.Duration
	// AckTimeout is how long a pushed job waits for the session's ack.
	AckTimeout time.Duration
	// SendQueue bounds the frames waiting to be written to one connection;
	// when it is full, senders wait for room (the connection's reader
	// stops: backpressure), and a client that lets it stay full for
	// WriteTimeout is closed (it stopped reading).
	SendQueue int
	// WriteTimeout bounds every write to a connection.
	WriteTimeout time.Duration
	// MaxMessageBytes bounds a frame from a client (larger: closed, 1009).
	MaxMessageBytes int64
}

func (c *Config) validate() error {
	if c.Store == nil {
		return errors.New("hub: Config.Store is required")
	}
	if c.Node == "" {
		return errors.New("hub: Config.Node is required")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Heartbeat", &c.Heartbeat, DefaultHeartbeat},
		{"Grace", &c.Grace, DefaultGrace},
		{"AckTimeout", &c.AckTimeout, DefaultAckTimeout},
		{"WriteTimeout", &c.WriteTimeout, DefaultWriteTimeout},
	} {
		if *d.v < 0 {
			return fmt.Errorf("hub: Config.%s must not be negative, got %s", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.SendQueue < 0 || c.MaxMessageBytes < 0 {
		return fmt.Errorf("hub: Config.SendQueue and MaxMessageBytes must not be negative")
	}
	if c.SendQueue == 0 {
		c.SendQueue = DefaultSendQueue
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Hub holds the websocket sessions of one instance and delivers jobs to
// the sessions of every instance (it implements the dispatcher's
// WebsocketRoute). Create it with New, run it with Start, end it with
// Stop.
type Hub struct {
	cfg   Config
	store store.Store
	log   *slog.Logger
	node  string

	ctx    context.Context // ends at Stop
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // loops, bus handlers, closing connections
	serves sync.WaitGroup // running Serve calls

	// moving serialises a session changing hands on this node (a resume)
	// with a connection of this node marking its session lost, so the loss
	// of a connection never hits the session a newer connection resumed.
	moving sync.Mutex

	mu        sync.Mutex
	started   bool
	stopped   bool
	sessions  map[string]*Session              // by session id
	waiters   map[string]chan nodeReply        // remote deliveries waiting for ack/nack, by request id
	opWaiters map[string]chan sessionReplyBody // session calls handed to other nodes (post.go), by request id
	capacity  chan struct{}                    // closed (and replaced) when a local session frees room
	order     map[orderKey][]int64             // deliveries not yet placed, by key, their tokens sorted (deliver.go)
}

// New returns a hub; it does nothing until Start.
func New(cfg Config) (*Hub, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Hub{
		cfg: cfg, store: cfg.Store, log: cfg.Logger, node: cfg.Node,
		ctx: ctx, cancel: cancel,
		sessions:  make(map[string]*Session),
		waiters:   make(map[string]chan nodeReply),
		opWaiters: make(map[string]chan sessionReplyBody),
		capacity:  make(chan struct{}),
		order:     make(map[orderKey][]int64),
	}, nil
}

// Node is the hub's node id.
func (h *Hub) Node() string { return h.node }

// Heartbeat is the heartbeat announced to clients.
func (h *Hub) Heartbeat() time.Duration { return h.cfg.Heartbeat }

// Grace is how long a lost session can be resumed.
func (h *Hub) Grace() time.Duration { return h.cfg.Grace }

// MaxMessageBytes bounds a client frame.
func (h *Hub) MaxMessageBytes() int64 { return h.cfg.MaxMessageBytes }

// Start records the node's heartbeat in the store (once before it
// returns, then every Heartbeat/3), subscribes the node bus (before it
// returns: store.SessionStore.SubscribeNode returns once subscribed and
// delivers from its own goroutine until the hub stops), and checks the
// jobs held by local sessions every Heartbeat. It stops when ctx ends or
// at Stop.
func (h *Hub) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started || h.stopped {
		return errors.New("hub: hub already started or stopped")
	}
	h.started = true
	if err := h.store.Heartbeat(ctx, h.node, h.nodeTTL()); err != nil {
		return fmt.Errorf("hub: node heartbeat: %w", err)
	}
	// The store delivers the bus from its own goroutine until h.ctx ends.
	if err := h.store.SubscribeNode(h.ctx, h.node, h.onMessage); err != nil {
		return fmt.Errorf("hub: node bus: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { h.cancel(context.Cause(ctx)) })
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer stop()
		h.heartbeatLoop()
	}()
	return nil
}

// nodeTTL is how long a node heartbeat lives: three refresh intervals.
func (h *Hub) nodeTTL() time.Duration { return h.cfg.Heartbeat }

// Stop closes every local connection with 1001 (going away); their
// sessions are lost and can be resumed on another instance within the
// grace period. It waits for the connections and the hub's goroutines to
// end. Safe to call more than once, and without Start.
func (h *Hub) Stop() {
	h.mu.Lock()
	h.stopped = true
	sessions := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		sessions = append(sessions, s)
	}
	h.mu.Unlock()
	for _, s := range sessions {
		s.close(reasonShutdown, CloseGoingAway, "server shutting down")
	}
	h.serves.Wait()
	h.mu.Lock()
	h.cancel(errStopped) // under mu: goTracked adds nothing after this
	h.mu.Unlock()
	h.wg.Wait()
}

// stopping reports whether Stop began.
func (h *Hub) stopping() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stopped
}

// goTracked runs f in a goroutine that Stop waits for; false after Stop began
// waiting (f is not run).
func (h *Hub) goTracked(f func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx.Err() != nil {
		return false
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
	return true
}

func (h *Hub) heartbeatLoop() {
	every := max(h.cfg.Heartbeat/3, time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	lastCheck := time.Now()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(h.ctx, every)
		if err := h.store.Heartbeat(ctx, h.node, h.nodeTTL()); err != nil && h.ctx.Err() == nil {
			h.log.Warn("node heartbeat failed", "node", h.node, "err", err)
		}
		cancel()
		h.checkKeys()
		if time.Since(lastCheck) >= h.cfg.Heartbeat {
			lastCheck = time.Now()
			h.checkHeldJobs()
		}
	}
}

// checkHeldJobs forgets the jobs local sessions hold that moved on without
// a release over the websocket (released over HTTP, cancelled, expired and
// retried), so they count no more against the session's prefetch.
func (h *Hub) checkHeldJobs() {
	for _, s := range h.localSessions() {
		for id, lease := range s.heldJobs() {
			ctx, cancel := context.WithTimeout(h.ctx, h.cfg.Heartbeat)
			j, err := h.store.GetJob(ctx, s.tenant, id)
			cancel()
			switch {
			case errors.Is(err, store.ErrJobNotFound):
			case err != nil:
				continue
			case j.Status == store.JobInflight && j.Lease != nil && (lease == "" || j.Lease.ID == lease):
				s.setHeldLease(id, j.Lease.ID)
				continue
			}
			h.jobLeft(s, id)
		}
	}
}

// RevokeKey closes every session opened with the API key, on every
// instance (code 4003, reason key_revoked): at once on this one, through
// the node bus on the others. Every instance also checks the keys of its
// sessions every Heartbeat/3 (checkKeys), which covers a lost bus message.
func (h *Hub) RevokeKey(ctx context.Context, tenant, keyID string) error {
	h.closeKey(tenant, keyID)
	body, err := json.Marshal(keyRevokedBody{Tenant: tenant, Key: keyID})
	if err != nil {
		return err
	}
	return h.store.Publish(ctx, store.NodeMessage{Version: busVersion, From: h.node, Type: msgKeyRevoked, Body: body})
}

// closeKey closes the local sessions opened with the key.
func (h *Hub) closeKey(tenant, keyID string) {
	for _, s := range h.localSessions() {
		if s.tenant == tenant && s.keyID == keyID && keyID != "" {
			s.close(reasonRevoked, CloseKeyRevoked, "key_revoked")
		}
	}
}

// checkKeys closes the local sessions whose API key no longer exists.
func (h *Hub) checkKeys() {
	byTenant := map[string][]*Session{}
	for _, s := range h.localSessions() {
		if s.keyID != "" {
			byTenant[s.tenant] = append(byTenant[s.tenant], s)
		}
	}
	for tenant, sessions := range byTenant {
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.Heartbeat)
		keys, err := h.store.ListKeys(ctx, tenant)
		cancel()
		if err != nil {
			continue
		}
		live := make(map[string]bool, len(keys))
		for _, k := range keys {
			live[k.ID] = true
		}
		for _, s := range sessions {
			if !live[s.keyID] {
				s.close(reasonRevoked, CloseKeyRevoked, "key_revoked")
			}
		}
	}
}

func (h *Hub) localSessions() []*Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		out = append(out, s)
	}
	return out
}

// session returns the local session with this id, nil if none.
func (h *Hub) session(id string) *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[id]
}

// Held is a job a session of this instance holds, under a lease ("" for
// one restored by resume).
type Held struct {
	s          *Session
	job, lease string
}

// Holding lists the sessions of this instance that hold the job, before
// a change made to it over HTTP (see JobLeft).
func (h *Hub) Holding(tenant, jobID string) []Held {
	var out []Held
	for _, s := range h.localSessions() {
		if s.tenant != tenant {
			continue
		}
		if lease, ok := s.heldJobs()[jobID]; ok {
			out = append(out, Held{s: s, job: jobID, lease: lease})
		}
	}
	return out
}

// JobLeft tells the sessions Holding found that the job moved on without
// them (released, cancelled or requeued over HTTP): each forgets it, so
// its room frees at once instead of at the next check of held jobs
// (every Heartbeat). A session that took the job again meanwhile, under a
// new lease, keeps it.
func (h *Hub) JobLeft(held []Held) {
	for _, x := range held {
		if lease, ok := x.s.heldJobs()[x.job]; ok && lease == x.lease {
			h.jobLeft(x.s, x.job)
		}
	}
}

// freed wakes deliveries waiting for a subscriber with room.
func (h *Hub) freed() {
	h.mu.Lock()
	close(h.capacity)
	h.capacity = make(chan struct{})
	h.mu.Unlock()
}

func (h *Hub) capacityChanged() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.capacity
}

// cleanupCtx is the context of store calls that must run even when the
// connection or the hub is ending.
func cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// randomID returns n random bytes in hex.
func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
