package sdk

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Which transport the worker connects with (SPEC §6 "Fallback
// transports"), and the worker's health.

// DefaultTransportRetry is how often a worker in TransportAuto that fell
// back probes the better transports.
const DefaultTransportRetry = time.Minute

// WithTransport chooses how the worker connects: TransportWebsocket,
// TransportSSE (server frames on an event stream, client frames posted)
// or TransportLongPoll (polls and posts: plain request/response, which
// any proxy passes). TransportAuto, the default, starts with the
// websocket and falls back to SSE, then long-poll, when a transport
// cannot be opened or keeps dying within its first heartbeat (a proxy
// that refuses or cuts it); on a fallback it probes the better ones every
// WithTransportRetry and moves its session back to the first that
// answers. The session, its leases, subscriptions and jobs are the same on
// every transport.
func WithTransport(t Transport) WorkerOption {
	return func(c *workerConfig) { c.transport = t }
}

// WithTransportRetry sets how often a worker in TransportAuto that fell
// back probes the better transports (default DefaultTransportRetry).
func WithTransportRetry(d time.Duration) WorkerOption {
	return func(c *workerConfig) {
		if d > 0 {
			c.transportRetry = d
		}
	}
}

func transportLevels(t Transport) ([]Transport, error) {
	switch t {
	case TransportAuto, "":
		return []Transport{TransportWebsocket, TransportSSE, TransportLongPoll}, nil
	case TransportWebsocket, TransportSSE, TransportLongPoll:
		return []Transport{t}, nil
	}
	return nil, fmt.Errorf("sdk: unknown transport %q (want auto, websocket, sse or longpoll)", t)
}

// transports is the worker's place in its list of transports, best
// first (one for a fixed transport).
type transports struct {
	mu     sync.Mutex
	levels []Transport
	level  int
}

// current is the transport to connect with now.
func (t *transports) current() Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.levels[t.level]
}

// fallBack moves to the next transport: false when there is none; then,
// with wrap, the list starts over with the best one at the next try (a
// failed connect: the instance may be down), else it stays at the last.
func (t *transports) fallBack(wrap bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.level+1 < len(t.levels) {
		t.level++
		return true
	}
	if wrap {
		t.level = 0
	}
	return false
}

// better lists the transports above the current one.
func (t *transports) better() []Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Transport(nil), t.levels[:t.level]...)
}

// use makes tr the current transport.
func (t *transports) use(tr Transport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, l := range t.levels {
		if l == tr {
			t.level = i
		}
	}
}

// probeBetter tries the transports better than c's on its instance: the
// first that opens (a fresh session, given up at once) becomes the
// current one, and true tells the caller to move the session to it.
func (w *Worker) probeBetter(c *wsConn) bool {
	tg := c.target
	for _, tr := range w.transports.better() {
		ctx, cancel := context.WithTimeout(c.ctx, dialTimeout)
		l, _, err := w.dial(ctx, tg, tr, "")
		if err == nil {
			l.end(ctx)
			cancel()
			w.transports.use(tr)
			return true
		}
		cancel()
		w.cfg.log.Debug("semaphored worker: a better transport still fails", "transport", tr, "err", err)
	}
	return false
}

// Health is the state of a worker's connection.
type Health struct {
	// Connected: a connection is up. Transport is the one it is on ("" when
	// not connected).
	Connected bool
	Transport Transport
	// Session is the worker's session ("" before the first connection).
	Session string
	// LastFrame is when the server was last heard on the connection: a
	// frame, a ping, the answer to a poll (zero when not connected). A
	// connection the server is not heard on for 3 heartbeats is dropped
	// and the session resumed on a new one.
	LastFrame time.Time
}

// Health reports the worker's connection.
func (w *Worker) Health() Health {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := Health{Session: w.session}
	if c := w.cur; c != nil && c.ctx.Err() == nil {
		h.Connected, h.Transport, h.LastFrame = true, c.link.kind(), c.link.heard()
	}
	return h
}
