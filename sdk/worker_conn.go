package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The worker's connection: connecting, resuming the session, reconnecting,
// reading and writing frames, and the request/reply multiplexer (frames
// carry an id the reply echoes).

// wsConn is one connection (over any transport: its link) and the
// requests waiting for its replies.
type wsConn struct {
	link      link
	target    target          // the instance it is connected to
	ctx       context.Context // ends with the connection
	cancel    context.CancelFunc
	heartbeat time.Duration
	upgrade   atomic.Bool // a better transport answered: reconnect on it

	mu      sync.Mutex
	pending map[string]chan inFrame
}

func (c *wsConn) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("sdk: encode frame: %w", err)
	}
	if err := c.link.send(c.ctx, b, false); err != nil {
		return ErrConnectionLost
	}
	return nil
}

// run connects, serves the connection until it ends, and reconnects, until
// the worker closes or stops for good.
func (w *Worker) run() {
	idx, attempt, early, connected := 0, 0, 0, false
	for w.ctx.Err() == nil {
		tg := w.targets[idx]
		tr := w.transports.current()
		c, ev, err := w.connect(tg, tr, connected)
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			if isPermanent(err) {
				w.stop(err)
				return
			}
			w.cfg.log.Info("semaphored worker: connect failed", "url", tg.base, "transport", tr, "err", err)
			if w.transports.fallBack(true) {
				continue // the next transport, at once
			}
			idx = (idx + 1) % len(w.targets)
			w.sleep(attempt)
			attempt++
			continue
		}
		attempt, connected = 0, true
		if w.cfg.onConnect != nil {
			w.cfg.onConnect(ev)
		}
		began := time.Now()
		err = w.serve(c)
		w.mu.Lock()
		closed := w.closed
		w.mu.Unlock()
		if closed || w.ctx.Err() != nil {
			return
		}
		switch closeCode(err) {
		case closeResumed:
			w.stop(ErrSessionDisplaced)
			return
		case int(websocket.StatusGoingAway):
			idx = (idx + 1) % len(w.targets) // that instance shuts down: try another
		}
		if c.upgrade.Load() {
			w.cfg.log.Info("semaphored worker: a better transport answers, moving the session to it", "from", tr)
			continue
		}
		// A connection that keeps dying within its first heartbeat (a
		// proxy that cuts it) counts as one that cannot be opened.
		if time.Since(began) < c.heartbeat {
			early++
			if early >= 2 && w.transports.fallBack(false) {
				early = 0
			}
		} else {
			early = 0
		}
		w.cfg.log.Info("semaphored worker: connection lost, reconnecting", "url", tg.base, "transport", tr, "err", err)
		w.sleep(early)
	}
}

// stop ends the worker for good on err.
func (w *Worker) stop(err error) {
	w.mu.Lock()
	if w.err == nil && !w.closing {
		w.err = err
	}
	w.mu.Unlock()
	w.cfg.log.Error("semaphored worker: stopped", "err", err)
	w.cancel(err)
	w.jobCancel()
}

// sleep waits a random time in [0, min(max, min·2^attempt)], or until the
// worker closes.
func (w *Worker) sleep(attempt int) {
	d := w.cfg.minBackoff << min(attempt, 30)
	if d <= 0 || d > w.cfg.maxBackoff {
		d = w.cfg.maxBackoff
	}
	t := time.NewTimer(rand.N(d + 1))
	defer t.Stop()
	select {
	case <-t.C:
	case <-w.ctx.Done():
	}
}

func isPermanent(err error) bool {
	var e *APIError
	return errors.As(err, &e) && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden)
}

// dial opens a link of transport tr to tg and returns it with the
// server's first frame: resumed when token resumed the session, else
// welcome (a fresh session).
func (w *Worker) dial(ctx context.Context, tg target, tr Transport, token string) (link, inFrame, error) {
	var (
		l   link
		err error
	)
	switch tr {
	case TransportSSE, TransportLongPoll:
		// these resume as they open; a token the server no longer knows
		// opens a fresh session instead
		l, err = w.dialHTTP(ctx, tg, tr, token)
		if token != "" && errors.Is(err, ErrSessionNotFound) {
			w.cfg.log.Info("semaphored worker: session not resumed, starting a fresh one")
			l, err = w.dialHTTP(ctx, tg, tr, "")
		}
		if err != nil {
			return nil, inFrame{}, err
		}
		first, err := readFrame(ctx, l)
		if err == nil && first.Type != "welcome" && first.Type != "resumed" {
			err = fmt.Errorf("sdk: %s: want welcome, got %q", tr, first.Type)
		}
		if err != nil {
			l.closeNow()
			return nil, inFrame{}, err
		}
		l.setSession(first.Session)
		return l, first, nil
	}
	l, err = dialWebsocket(ctx, w, tg)
	if err != nil {
		return nil, inFrame{}, err
	}
	fail := func(err error) (link, inFrame, error) {
		l.closeNow()
		return nil, inFrame{}, err
	}
	welcome, err := readFrame(ctx, l)
	if err != nil {
		return fail(err)
	}
	if welcome.Type != "welcome" {
		return fail(fmt.Errorf("sdk: websocket: want welcome, got %q", welcome.Type))
	}
	if token == "" {
		return l, welcome, nil
	}
	id := "resume-" + strconv.FormatUint(w.seq.Add(1), 10)
	b, _ := json.Marshal(map[string]string{"type": "resume", "id": id, "token": token})
	if err := l.send(ctx, b, false); err != nil {
		return fail(err)
	}
	for {
		f, err := readFrame(ctx, l)
		if err != nil {
			return fail(err)
		}
		if f.ID != id {
			continue
		}
		if f.Type != "resumed" {
			w.cfg.log.Info("semaphored worker: session not resumed, starting a fresh one", "code", f.Code)
			return l, welcome, nil
		}
		if f.Heartbeat == nil {
			f.Heartbeat = welcome.Heartbeat
		}
		return l, f, nil
	}
}

func (w *Worker) dialHTTP(ctx context.Context, tg target, tr Transport, token string) (link, error) {
	if tr == TransportSSE {
		return dialSSE(ctx, w, tg, token)
	}
	return dialLongPoll(ctx, w, tg, token)
}

// connect dials tg on transport tr, resuming the worker's session if it
// has one. On return without error the connection is the worker's
// current one.
func (w *Worker) connect(tg target, tr Transport, reconnect bool) (*wsConn, ConnectEvent, error) {
	ctx, cancel := context.WithTimeout(w.ctx, dialTimeout)
	defer cancel()
	w.mu.Lock()
	token := w.token
	w.mu.Unlock()
	l, first, err := w.dial(ctx, tg, tr, token)
	if err != nil {
		return nil, ConnectEvent{}, err
	}
	heartbeat := defaultHeartbeat
	if first.Heartbeat != nil && *first.Heartbeat > 0 {
		heartbeat = time.Duration(*first.Heartbeat)
	}
	session, resumed := first.Session, first.Type == "resumed"
	var restored inFrame
	if resumed {
		restored = first
	} else {
		token = first.ResumeToken
	}

	cctx, ccancel := context.WithCancel(w.ctx)
	c := &wsConn{link: l, target: tg, ctx: cctx, cancel: ccancel, heartbeat: heartbeat, pending: make(map[string]chan inFrame)}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		ccancel()
		l.closeNow()
		return nil, ConnectEvent{}, ErrWorkerClosed
	}
	w.token, w.session = token, session
	// what to restore is fixed before calls can use the connection
	subs, orphans := w.diffLocked(restored)
	w.cur = c
	close(w.ready)
	w.mu.Unlock()

	w.loops.Add(2)
	go func() {
		defer w.loops.Done()
		w.ping(c, heartbeat)
	}()
	go func() {
		defer w.loops.Done()
		w.restore(c, subs, orphans)
	}()
	return c, ConnectEvent{URL: tg.base, Session: session, Resumed: resumed, Reconnect: reconnect, Transport: tr}, nil
}

func readFrame(ctx context.Context, l link) (inFrame, error) {
	data, err := l.recv(ctx)
	if err != nil {
		return inFrame{}, err
	}
	var f inFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return inFrame{}, fmt.Errorf("sdk: malformed frame from the server: %w", err)
	}
	return f, nil
}

// serve reads the connection until it ends and returns the read error.
func (w *Worker) serve(c *wsConn) error {
	var err error
	for {
		var data []byte
		data, err = c.link.recv(c.ctx)
		if err != nil {
			break
		}
		var f inFrame
		if jerr := json.Unmarshal(data, &f); jerr != nil {
			w.cfg.log.Warn("semaphored worker: malformed frame from the server", "err", jerr)
			continue
		}
		w.handle(c, f)
	}
	c.cancel()
	c.link.closeNow()
	w.mu.Lock()
	if w.cur == c {
		w.cur = nil
		w.ready = make(chan struct{})
	}
	w.mu.Unlock()
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, ch := range pending {
		close(ch)
	}
	return err
}

// handle routes one frame from the server.
func (w *Worker) handle(c *wsConn, f inFrame) {
	if f.Type == "job" {
		w.onJob(c, f)
		return
	}
	if f.ID != "" {
		c.mu.Lock()
		ch, ok := c.pending[f.ID]
		delete(c.pending, f.ID)
		c.mu.Unlock()
		if ok {
			ch <- f
			return
		}
	}
	switch f.Type {
	case "pong":
	case "acquired":
		// its caller gave up waiting: give the permit back
		if f.Lease != nil {
			id := f.Lease.ID
			w.loops.Add(1)
			go func() {
				defer w.loops.Done()
				_, _ = w.call(w.ctx, map[string]string{"type": "release", "lease": id})
			}()
		}
	case "error":
		if strings.HasPrefix(f.ID, ackPrefix) {
			w.onAckRefused(f.ID)
		}
		w.cfg.log.Warn("semaphored worker: error frame", "code", f.Code, "message", f.Message)
	}
}

// ping keeps the connection alive: it sends a ping every heartbeat/2
// (long-poll: its polls are the heartbeat), drops a connection the server
// has not been heard on for 3 heartbeats (deaf: a proxy may have cut the
// stream without closing it), and, on a fallback transport, probes the
// better ones now and then (transports.probe).
func (w *Worker) ping(c *wsConn, heartbeat time.Duration) {
	t := time.NewTicker(heartbeat / 2)
	defer t.Stop()
	since := time.Now()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(c.link.heard()) > 3*heartbeat {
			w.cfg.log.Warn("semaphored worker: the server was not heard for 3 heartbeats, reconnecting", "transport", c.link.kind())
			c.link.closeNow()
			// the pooled connections went the same way: do not reuse them
			w.cfg.httpClient.CloseIdleConnections()
			return
		}
		if c.link.kind() != TransportLongPoll {
			_ = c.write(map[string]string{"type": "ping", "id": "ping-" + strconv.FormatUint(w.seq.Add(1), 10)})
		}
		if time.Since(since) >= w.cfg.transportRetry {
			since = time.Now()
			if w.probeBetter(c) {
				c.upgrade.Store(true)
				c.link.closeNow()
				return
			}
		}
	}
}

// diffLocked compares the worker's state with the session a connection
// carries (r: the resumed frame; zero for a fresh session). It returns the
// subscriptions the session lacks (all of them on a fresh session) and the
// leases the worker does not know of (granted while a reply was lost), and
// marks lost the leases the session no longer has (its grace period ran
// out: the server released them).
func (w *Worker) diffLocked(r inFrame) (subs []*subscription, orphans []string) {
	known := map[subKey]bool{}
	for _, s := range r.Subscriptions {
		known[subKey{s.Semaphore, s.Channel}] = true
	}
	for k, s := range w.subs {
		if !known[k] {
			subs = append(subs, s)
		}
	}
	held := map[string]bool{}
	for _, id := range r.Leases {
		held[id] = true
		if w.leases[id] == nil {
			orphans = append(orphans, id)
		}
	}
	for id, l := range w.leases {
		if !held[id] {
			l.markLost()
			l.markStopped()
			delete(w.leases, id)
		}
	}
	return subs, orphans
}

// restore subscribes again and releases orphaned leases on a new
// connection.
func (w *Worker) restore(c *wsConn, subs []*subscription, orphans []string) {
	for _, id := range orphans {
		_, _ = w.callOn(c, map[string]string{"type": "release", "lease": id})
	}
	for _, s := range subs {
		_, err := w.callOn(c, subscribeFrame{Type: "subscribe", Semaphore: s.semaphore, Channel: s.channel, Prefetch: s.prefetch})
		if err != nil && !errors.Is(err, ErrConnectionLost) && c.ctx.Err() == nil {
			w.cfg.log.Error("semaphored worker: subscribing again failed", "semaphore", s.semaphore, "channel", s.channel, "err", err)
		}
	}
}

// conn waits for a connection.
func (w *Worker) conn(ctx context.Context) (*wsConn, error) {
	for {
		w.mu.Lock()
		c, ready := w.cur, w.ready
		w.mu.Unlock()
		if c != nil && c.ctx.Err() == nil {
			return c, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w.ctx.Done():
			return nil, ErrWorkerClosed
		}
	}
}

// call sends a request on the current connection (waiting for one) and
// returns its reply; an error or rejected reply as an *APIError.
func (w *Worker) call(ctx context.Context, req any) (inFrame, error) {
	c, err := w.conn(ctx)
	if err != nil {
		return inFrame{}, err
	}
	return w.callCtx(ctx, c, req)
}

// callOn sends a request on connection c (used right after it connected).
func (w *Worker) callOn(c *wsConn, req any) (inFrame, error) {
	return w.callCtx(c.ctx, c, req)
}

func (w *Worker) callCtx(ctx context.Context, c *wsConn, req any) (inFrame, error) {
	id := strconv.FormatUint(w.seq.Add(1), 10)
	b, err := json.Marshal(req)
	if err != nil {
		return inFrame{}, fmt.Errorf("sdk: encode frame: %w", err)
	}
	// add the id to the frame's JSON object
	b = append([]byte(`{"id":"`+id+`",`), b[1:]...)
	ch := make(chan inFrame, 1)
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return inFrame{}, ErrConnectionLost
	}
	c.pending[id] = ch
	c.mu.Unlock()
	// forget withdraws the request; false when the read loop has taken
	// its reply (or the connection ended) already: ch is about to get the
	// reply (or be closed).
	forget := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.pending[id]; !ok {
			return false
		}
		delete(c.pending, id)
		return true
	}
	_, alone := req.(acquireFrame)
	if alone {
		a := req.(acquireFrame)
		alone = a.Wait != nil && *a.Wait > 0
	}
	if err = c.link.send(c.ctx, b, alone); err != nil {
		forget()
		return inFrame{}, ErrConnectionLost
	}
	select {
	case f, ok := <-ch:
		return reply(f, ok)
	case <-ctx.Done():
		if !forget() {
			// The reply came as ctx ended: return it rather than drop it
			// (a lease it carries would be held until it expires).
			if f, ok := <-ch; ok {
				return reply(f, ok)
			}
		}
		return inFrame{}, ctx.Err()
	case <-w.ctx.Done():
		forget()
		return inFrame{}, ErrWorkerClosed
	}
}

// reply turns a reply frame into callCtx's result: an error or rejected
// frame as an *APIError; ok false (the connection ended) as
// ErrConnectionLost.
func reply(f inFrame, ok bool) (inFrame, error) {
	if !ok {
		return inFrame{}, ErrConnectionLost
	}
	switch {
	case f.Type == "error":
		return f, &APIError{Code: f.Code, Message: f.Message, Index: -1}
	case f.Type == "rejected" && f.Error != nil:
		return f, &APIError{Code: f.Error.Code, Message: f.Error.Message, RetryAfter: time.Duration(max(f.Error.RetryAfter, 0)) * time.Second, Index: -1}
	}
	return f, nil
}

// retry runs call again after ErrConnectionLost, for idempotent requests.
func (w *Worker) retry(ctx context.Context, req any) (f inFrame, retried bool, err error) {
	for {
		f, err = w.call(ctx, req)
		if !errors.Is(err, ErrConnectionLost) {
			return f, retried, err
		}
		retried = true
	}
}
