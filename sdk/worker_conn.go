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

// wsConn is one connection and the requests waiting for its replies.
type wsConn struct {
	conn     *websocket.Conn
	ctx      context.Context // ends with the connection
	cancel   context.CancelFunc
	lastRead atomic.Int64 // unix nanos of the last frame read

	mu      sync.Mutex
	pending map[string]chan inFrame
}

func (c *wsConn) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("sdk: encode frame: %w", err)
	}
	ctx, cancel := context.WithTimeout(c.ctx, writeTimeout)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		return ErrConnectionLost
	}
	return nil
}

// run connects, serves the connection until it ends, and reconnects, until
// the worker closes or stops for good.
func (w *Worker) run() {
	idx, attempt, connected := 0, 0, false
	for w.ctx.Err() == nil {
		tg := w.targets[idx]
		c, ev, err := w.connect(tg, connected)
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			if isPermanent(err) {
				w.stop(err)
				return
			}
			w.cfg.log.Info("semaphored worker: connect failed", "url", tg.base, "err", err)
			idx = (idx + 1) % len(w.targets)
			w.sleep(attempt)
			attempt++
			continue
		}
		attempt, connected = 0, true
		if w.cfg.onConnect != nil {
			w.cfg.onConnect(ev)
		}
		err = w.serve(c)
		w.mu.Lock()
		closed := w.closed
		w.mu.Unlock()
		if closed || w.ctx.Err() != nil {
			return
		}
		switch websocket.CloseStatus(err) {
		case closeResumed:
			w.stop(ErrSessionDisplaced)
			return
		case websocket.StatusGoingAway:
			idx = (idx + 1) % len(w.targets) // that instance shuts down: try another
		}
		w.cfg.log.Info("semaphored worker: connection lost, reconnecting", "url", tg.base, "err", err)
		w.sleep(0)
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

// connect dials base, reads welcome and, when the worker had a session,
// resumes it. On return without error the connection is the worker's
// current one.
func (w *Worker) connect(tg target, reconnect bool) (*wsConn, ConnectEvent, error) {
	ctx, cancel := context.WithTimeout(w.ctx, dialTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, tg.ws, &websocket.DialOptions{HTTPClient: w.cfg.httpClient, HTTPHeader: w.header})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode >= 400 {
			err = decodeError(resp)
		}
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		return nil, ConnectEvent{}, err
	}
	conn.SetReadLimit(maxFrameBytes)
	fail := func(err error) (*wsConn, ConnectEvent, error) {
		_ = conn.CloseNow()
		return nil, ConnectEvent{}, err
	}
	welcome, err := readFrame(ctx, conn)
	if err != nil {
		return fail(err)
	}
	if welcome.Type != "welcome" {
		return fail(fmt.Errorf("sdk: websocket: want welcome, got %q", welcome.Type))
	}
	heartbeat := defaultHeartbeat
	if welcome.Heartbeat != nil && *welcome.Heartbeat > 0 {
		heartbeat = time.Duration(*welcome.Heartbeat)
	}
	w.mu.Lock()
	token := w.token
	w.mu.Unlock()
	session, resumed := welcome.Session, false
	var restored inFrame
	if token != "" {
		id := "resume-" + strconv.FormatUint(w.seq.Add(1), 10)
		b, _ := json.Marshal(map[string]string{"type": "resume", "id": id, "token": token})
		if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
			return fail(err)
		}
		for {
			f, err := readFrame(ctx, conn)
			if err != nil {
				return fail(err)
			}
			if f.ID != id {
				continue
			}
			if f.Type == "resumed" {
				session, resumed, restored = f.Session, true, f
			} else {
				w.cfg.log.Info("semaphored worker: session not resumed, starting a fresh one", "code", f.Code)
			}
			break
		}
	}
	if !resumed {
		token = welcome.ResumeToken
	}

	cctx, ccancel := context.WithCancel(w.ctx)
	c := &wsConn{conn: conn, ctx: cctx, cancel: ccancel, pending: make(map[string]chan inFrame)}
	c.lastRead.Store(time.Now().UnixNano())
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		ccancel()
		return fail(ErrWorkerClosed)
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
	return c, ConnectEvent{URL: tg.base, Session: session, Resumed: resumed, Reconnect: reconnect}, nil
}

func readFrame(ctx context.Context, conn *websocket.Conn) (inFrame, error) {
	_, data, err := conn.Read(ctx)
	if err != nil {
		return inFrame{}, err
	}
	var f inFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return inFrame{}, fmt.Errorf("sdk: websocket: malformed frame from the server: %w", err)
	}
	return f, nil
}

// serve reads the connection until it ends and returns the read error.
func (w *Worker) serve(c *wsConn) error {
	var err error
	for {
		var data []byte
		_, data, err = c.conn.Read(c.ctx)
		if err != nil {
			break
		}
		c.lastRead.Store(time.Now().UnixNano())
		var f inFrame
		if jerr := json.Unmarshal(data, &f); jerr != nil {
			w.cfg.log.Warn("semaphored worker: malformed frame from the server", "err", jerr)
			continue
		}
		w.handle(c, f)
	}
	c.cancel()
	_ = c.conn.CloseNow()
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

// ping sends a ping every heartbeat/2 and drops a connection that has been
// silent for 3 heartbeats (the server is gone without closing).
func (w *Worker) ping(c *wsConn, heartbeat time.Duration) {
	t := time.NewTicker(heartbeat / 2)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, c.lastRead.Load())) > 3*heartbeat {
			w.cfg.log.Warn("semaphored worker: no frame from the server for 3 heartbeats, reconnecting")
			_ = c.conn.CloseNow()
			return
		}
		_ = c.write(map[string]string{"type": "ping", "id": "ping-" + strconv.FormatUint(w.seq.Add(1), 10)})
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
	wctx, cancel := context.WithTimeout(c.ctx, writeTimeout)
	err = c.conn.Write(wctx, websocket.MessageText, b)
	cancel()
	if err != nil {
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
