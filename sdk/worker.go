package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// This file is the websocket worker (SPEC §6): one live connection to
// GET /v1/ws over which a process takes permits and receives jobs. The
// connection is kept up by the worker: it reconnects with exponential
// backoff and full jitter, resumes its session (leases, subscriptions and
// held jobs survive a dropped connection within the server's grace
// period), pings at the heartbeat the server announces, and keeps its
// leases alive.

// Errors of the websocket worker.
var (
	// ErrWorkerClosed: the worker was closed (or stopped for good, see
	// Worker.Err) before or while the call ran.
	ErrWorkerClosed = errors.New("semaphored: websocket worker closed")
	// ErrConnectionLost: the connection dropped before the server answered.
	// The request may or may not have taken effect; Acquire's lease, if it
	// was granted, is released by the worker after it reconnects.
	ErrConnectionLost = errors.New("semaphored: websocket connection lost before the reply")
	// ErrSessionDisplaced: another connection resumed this worker's session
	// (close code 4001); the worker does not reconnect.
	ErrSessionDisplaced = errors.New("semaphored: websocket session resumed by another connection")
	// ErrAckRefused is the cause of a handler's context when the server
	// refused the worker's ack (it came too late: the job was offered to
	// another worker). The worker does not release such a job.
	ErrAckRefused = errors.New("semaphored: ack refused: the job went to another worker")
	// Error codes only the websocket answers.
	ErrSessionNotFound = errors.New("semaphored: session not found") // resume: unknown token or grace period over
	ErrNotSubscribed   = errors.New("semaphored: not subscribed")
	ErrUnknownFrame    = errors.New("semaphored: unknown frame")
)

func init() {
	sentinels["session_not_found"] = ErrSessionNotFound
	sentinels["not_subscribed"] = ErrNotSubscribed
	sentinels["unknown_frame"] = ErrUnknownFrame
}

// closeResumed is the close code of a connection whose session another
// connection resumed.
const closeResumed websocket.StatusCode = 4001

// Defaults of the worker's options.
const (
	DefaultMinBackoff   = 100 * time.Millisecond
	DefaultMaxBackoff   = 10 * time.Second
	DefaultCloseTimeout = 10 * time.Second
	defaultHeartbeat    = 10 * time.Second
	dialTimeout         = 10 * time.Second
	writeTimeout        = 10 * time.Second
	maxFrameBytes       = 8 << 20 // a job frame carries a payload of up to the server's limit
)

// Handler works on one job pushed to a subscription. Its context ends when
// the worker closes, or with cause ErrLeaseLost when the job's lease could
// not be kept alive (another worker may get the job).
//
// Returning nil releases the job: it ends done and its permit frees.
// Returning an error (or panicking) does not release it: the worker stops
// extending its lease, the lease expires after the semaphore's
// leaseTimeout, and the job is scheduled again (attempts permitting; after
// maxAttempts it ends in timeout). There is no fail frame: a job is retried
// or it times out.
type Handler func(ctx context.Context, job Job) error

// ConnectEvent describes a connection the worker established, for
// WithConnectHook.
type ConnectEvent struct {
	URL     string // base URL of the instance
	Session string // the session the connection carries
	// Resumed: the previous session came back with its leases, jobs and
	// subscriptions. false on the first connection and when the grace
	// period was over (a fresh session: the worker subscribed again).
	Resumed bool
	// Reconnect: not the worker's first connection.
	Reconnect bool
}

// WorkerOption configures a Worker.
type WorkerOption func(*workerConfig)

type workerConfig struct {
	fallback     []string
	minBackoff   time.Duration
	maxBackoff   time.Duration
	httpClient   *http.Client
	log          *slog.Logger
	onConnect    func(ConnectEvent)
	closeTimeout time.Duration
	userAgent    string
}

// WithInstances adds the base URLs of other semaphored instances sharing
// the same store. The worker connects to baseURL first and, when a
// connection fails or an instance goes away, tries the next one in turn;
// its session can be resumed through any of them.
func WithInstances(baseURLs ...string) WorkerOption {
	return func(c *workerConfig) { c.fallback = append(c.fallback, baseURLs...) }
}

// WithReconnectBackoff sets the backoff between connection attempts:
// a random wait between 0 and min·2^attempt, capped at max (full
// jitter). Defaults DefaultMinBackoff and DefaultMaxBackoff.
func WithReconnectBackoff(min, max time.Duration) WorkerOption {
	return func(c *workerConfig) {
		if min > 0 {
			c.minBackoff = min
		}
		if max > 0 {
			c.maxBackoff = max
		}
	}
}

// WithWorkerHTTPClient sets the http.Client the websocket is dialled with.
func WithWorkerHTTPClient(hc *http.Client) WorkerOption {
	return func(c *workerConfig) { c.httpClient = hc }
}

// WithWorkerLogger logs connection changes and handler failures (default:
// discarded).
func WithWorkerLogger(l *slog.Logger) WorkerOption {
	return func(c *workerConfig) {
		if l != nil {
			c.log = l
		}
	}
}

// WithConnectHook calls f after every connection is established (after
// the resume, before the worker subscribes again). f must not block.
func WithConnectHook(f func(ConnectEvent)) WorkerOption {
	return func(c *workerConfig) { c.onConnect = f }
}

// WithCloseTimeout bounds how long Close waits for running handlers to
// return and their jobs to be released (default DefaultCloseTimeout).
func WithCloseTimeout(d time.Duration) WorkerOption {
	return func(c *workerConfig) {
		if d > 0 {
			c.closeTimeout = d
		}
	}
}

// Worker is a websocket connection to semaphored that survives
// reconnections. Create it with NewWorker; it connects in the background,
// and every call waits (bounded by its context) for a connection. Its
// methods are safe for concurrent use. Close it when done.
type Worker struct {
	cfg     workerConfig
	targets []target // the main instance first
	header  http.Header

	ctx       context.Context // ends at Close or a stop for good
	cancel    context.CancelCauseFunc
	jobCtx    context.Context // parent of handler contexts, ends at Close
	jobCancel context.CancelFunc
	loops     sync.WaitGroup // run loop, keep-alives, restores
	jobs      sync.WaitGroup // job goroutines
	runDone   chan struct{}
	seq       atomic.Uint64
	closeOnce sync.Once

	mu      sync.Mutex
	cur     *wsConn       // nil while disconnected
	ready   chan struct{} // closed when cur is set
	token   string        // resume token of the session
	session string
	err     error // why the worker stopped for good
	closing bool  // Close began: no new jobs
	closed  bool  // Close closed the connection: no reconnect
	subs    map[subKey]*subscription
	leases  map[string]*heldLease
	running map[string]*jobRun // by job id
}

type subKey struct{ semaphore, channel string }

// target is one instance: its base URL and websocket URL.
type target struct{ base, ws string }

type subscription struct {
	semaphore, channel string
	prefetch           int
	handler            Handler
}

// heldLease is a session-bound lease the worker keeps alive.
type heldLease struct {
	id       string
	ttl      time.Duration
	stop     chan struct{} // closed at release
	lost     chan struct{} // closed when the lease is gone
	stopOnce sync.Once
	lostOnce sync.Once
}

func (l *heldLease) markLost()    { l.lostOnce.Do(func() { close(l.lost) }) }
func (l *heldLease) markStopped() { l.stopOnce.Do(func() { close(l.stop) }) }

// NewWorker returns a worker of the server at baseURL, authenticating with
// apiKey, and starts connecting in the background.
func NewWorker(baseURL, apiKey string, opts ...WorkerOption) (*Worker, error) {
	cfg := workerConfig{
		minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff,
		closeTimeout: DefaultCloseTimeout, httpClient: http.DefaultClient,
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		userAgent: "semaphored-go-sdk/" + Version,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if apiKey == "" {
		return nil, errors.New("sdk: NewWorker needs an API key")
	}
	if cfg.maxBackoff < cfg.minBackoff {
		cfg.maxBackoff = cfg.minBackoff
	}
	var targets []target
	for _, b := range append([]string{baseURL}, cfg.fallback...) {
		u, err := wsEndpoint(b)
		if err != nil {
			return nil, err
		}
		targets = append(targets, target{base: strings.TrimRight(b, "/"), ws: u})
	}
	w := &Worker{
		cfg: cfg, targets: targets,
		header:  http.Header{"Authorization": {"Bearer " + apiKey}, "User-Agent": {cfg.userAgent}},
		runDone: make(chan struct{}),
		ready:   make(chan struct{}),
		subs:    make(map[subKey]*subscription),
		leases:  make(map[string]*heldLease),
		running: make(map[string]*jobRun),
	}
	w.ctx, w.cancel = context.WithCancelCause(context.Background())
	w.jobCtx, w.jobCancel = context.WithCancel(context.Background())
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		defer close(w.runDone)
		w.run()
	}()
	return w, nil
}

// wsEndpoint turns a base URL into the websocket URL of /v1/ws.
func wsEndpoint(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("sdk: invalid base URL %q: %w", base, err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	case "ws", "wss":
	default:
		return "", fmt.Errorf("sdk: invalid base URL %q: scheme must be http or https", base)
	}
	if u.Host == "" {
		return "", fmt.Errorf("sdk: invalid base URL %q: no host", base)
	}
	u.Path = strings.TrimRight(u.Path, "/") + "/v1/ws"
	u.RawPath, u.RawQuery, u.Fragment = "", "", ""
	return u.String(), nil
}

// Session is the id of the session the worker carries ("" before the first
// connection).
func (w *Worker) Session() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.session
}

// Done is closed when the worker stopped: after Close, or for good on an
// error (see Err).
func (w *Worker) Done() <-chan struct{} { return w.runDone }

// Err is why the worker stopped for good without Close: ErrSessionDisplaced,
// or an *APIError for a key the server refused (401, 403). nil while it runs
// or after Close.
func (w *Worker) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops taking jobs, cancels the contexts of running handlers and
// waits for them to return (at most the close timeout), releases the jobs
// whose handler returned nil, and closes the connection with status 1000:
// the session is given up, its leases are released by the server and its
// unreleased jobs get their semaphore's onSessionLost at once. Close returns
// Err(); it is safe to call more than once.
func (w *Worker) Close() error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closing = true
		w.mu.Unlock()
		w.jobCancel()
		done := make(chan struct{})
		go func() { w.jobs.Wait(); close(done) }()
		t := time.NewTimer(w.cfg.closeTimeout)
		select {
		case <-done:
		case <-t.C:
			w.cfg.log.Warn("semaphored worker: handlers still running at close")
		}
		t.Stop()
		w.mu.Lock()
		w.closed = true
		cur := w.cur
		w.mu.Unlock()
		if cur != nil {
			_ = cur.conn.Close(websocket.StatusNormalClosure, "worker closed")
		}
		w.cancel(ErrWorkerClosed)
		w.loops.Wait()
	})
	return w.Err()
}

// ---- the connection ----

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

// ---- requests ----

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
	forget := func() {
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, id)
		}
		c.mu.Unlock()
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
		if !ok {
			return inFrame{}, ErrConnectionLost
		}
		switch {
		case f.Type == "error":
			return f, &APIError{Code: f.Code, Message: f.Message}
		case f.Type == "rejected" && f.Error != nil:
			return f, &APIError{Code: f.Error.Code, Message: f.Error.Message}
		}
		return f, nil
	case <-ctx.Done():
		forget()
		return inFrame{}, ctx.Err()
	case <-w.ctx.Done():
		forget()
		return inFrame{}, ErrWorkerClosed
	}
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

// ---- leases ----

// Acquire takes a permit over the websocket. The lease is bound to the
// session: the worker extends it every ttl/3 until Release (or until the
// worker closes), and if the worker's process dies, the server releases it
// once the session's grace period is over. AcquireOptions.IdempotencyKey is
// not used on the websocket. When the connection drops before the reply
// the error is ErrConnectionLost; a lease granted meanwhile is released by
// the worker.
func (w *Worker) Acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, error) {
	l, _, err := w.acquire(ctx, semaphore, opts)
	return l, err
}

func (w *Worker) acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, *heldLease, error) {
	req := acquireFrame{Type: "acquire", Semaphore: semaphore, Channel: opts.Channel, TTL: durPtr(opts.TTL), Wait: durPtr(opts.Wait)}
	if opts.Weight != 0 {
		req.Weight = &opts.Weight
	}
	f, err := w.call(ctx, req)
	if err != nil {
		return Lease{}, nil, err
	}
	if f.Lease == nil {
		return Lease{}, nil, fmt.Errorf("sdk: websocket: %q reply without lease", f.Type)
	}
	l := Lease(*f.Lease)
	ttl := opts.TTL
	if ttl <= 0 {
		ttl = l.TTL()
	}
	hl := &heldLease{id: l.ID, ttl: max(ttl, time.Second), stop: make(chan struct{}), lost: make(chan struct{})}
	w.mu.Lock()
	w.leases[l.ID] = hl
	w.mu.Unlock()
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		w.keepAlive(w.ctx, hl.id, hl.ttl, hl.stop, func() {
			hl.markLost()
			w.mu.Lock()
			if w.leases[hl.id] == hl {
				delete(w.leases, hl.id)
			}
			w.mu.Unlock()
		})
	}()
	return l, hl, nil
}

// Extend sets a lease's time to live to ttl from now (also a job's lease).
// The worker's keep-alive of a lease it acquired goes on with the new ttl.
func (w *Worker) Extend(ctx context.Context, leaseID string, ttl time.Duration) (Lease, error) {
	f, _, err := w.retry(ctx, extendFrame{Type: "extend", Lease: leaseID, TTL: duration(ttl)})
	if err != nil {
		return Lease{}, err
	}
	w.mu.Lock()
	if hl := w.leases[leaseID]; hl != nil {
		hl.ttl = max(ttl, time.Second)
	}
	w.mu.Unlock()
	if f.Lease == nil {
		return Lease{}, nil
	}
	return Lease(*f.Lease), nil
}

// Release ends a lease acquired over the websocket (or any lease of the
// tenant) and stops its keep-alive. It is retried across a reconnection; a
// lease found gone on the retry counts as released.
func (w *Worker) Release(ctx context.Context, leaseID string) (Lease, error) {
	w.mu.Lock()
	hl := w.leases[leaseID]
	delete(w.leases, leaseID)
	w.mu.Unlock()
	if hl != nil {
		hl.markStopped()
	}
	f, retried, err := w.retry(ctx, map[string]string{"type": "release", "lease": leaseID})
	if err != nil {
		if retried && IsLeaseNotFound(err) {
			return Lease{ID: leaseID}, nil
		}
		return Lease{}, err
	}
	if f.Lease == nil {
		return Lease{ID: leaseID}, nil
	}
	return Lease(*f.Lease), nil
}

// keepAlive extends a lease every ttl/3 until stop is closed or ctx ends,
// and calls onLost (then returns) when the server says the lease is gone
// or no extend succeeded for a whole ttl.
func (w *Worker) keepAlive(ctx context.Context, leaseID string, ttl time.Duration, stop <-chan struct{}, onLost func()) {
	deadline := time.Now().Add(ttl)
	for {
		interval := ttl / 3
		w.mu.Lock()
		if hl := w.leases[leaseID]; hl != nil {
			ttl, interval = hl.ttl, hl.ttl/3
		}
		w.mu.Unlock()
		t := time.NewTimer(interval)
		select {
		case <-stop:
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		sent := time.Now()
		ectx, cancel := context.WithTimeout(ctx, interval)
		_, err := w.call(ectx, extendFrame{Type: "extend", Lease: leaseID, TTL: duration(ttl)})
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(ttl)
		case IsLeaseNotFound(err), time.Now().After(deadline):
			select {
			case <-stop:
				return // released meanwhile
			default:
			}
			onLost()
			return
		}
	}
}

// Do runs fn while holding a permit taken over the websocket, like
// Client.Do: it acquires (waiting up to DefaultDoWait, see WithWait), keeps
// the lease alive, cancels fn's context with cause ErrLeaseLost if the lease
// is lost, and releases it when fn returns, also when fn panics.
func (w *Worker) Do(ctx context.Context, semaphore string, fn func(ctx context.Context, lease Lease) error, opts ...DoOption) (err error) {
	cfg := doConfig{acquire: AcquireOptions{Wait: DefaultDoWait}}
	for _, o := range opts {
		o(&cfg)
	}
	lease, hl, err := w.acquire(ctx, semaphore, cfg.acquire)
	if err != nil {
		return err
	}
	fnCtx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(w.jobCtx, func() { cancel(ErrWorkerClosed) })
	watch := make(chan struct{})
	go func() {
		select {
		case <-hl.lost:
			cancel(fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID))
		case <-watch:
		}
	}()
	defer func() {
		close(watch)
		stop()
		cancel(context.Canceled)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		_, rerr := w.Release(rctx, lease.ID)
		rcancel()
		isLost := IsLeaseNotFound(rerr)
		select {
		case <-hl.lost:
			isLost = true
		default:
		}
		if isLost {
			err = errors.Join(fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID), err)
		}
	}()
	return fn(fnCtx, lease)
}

// ---- jobs ----

// Enqueue hands a job to semaphore over the websocket, like Client.Enqueue.
// When the connection drops before the reply the error is
// ErrConnectionLost and the job may have been accepted: give an
// IdempotencyKey to retry safely.
func (w *Worker) Enqueue(ctx context.Context, semaphore string, payload any, opts EnqueueOptions) (Job, error) {
	raw, err := encodePayload(payload)
	if err != nil {
		return Job{}, err
	}
	f, err := w.call(ctx, enqueueFrame{Type: "enqueue", Semaphore: semaphore, Channel: opts.Channel, Payload: raw, IdempotencyKey: opts.IdempotencyKey})
	if err != nil {
		return Job{}, err
	}
	if f.Job == nil {
		return Job{}, fmt.Errorf("sdk: websocket: %q reply without job", f.Type)
	}
	return f.Job.toSDK(), nil
}

// Subscribe asks for the jobs of semaphore (channel "" = every channel) and
// runs handler on each, at most prefetch (1..1000; 0 = 1) at a time. For
// each job the worker acks at once, runs handler, keeps the job's lease
// alive while it runs, and releases the job when handler returns nil (see
// Handler for errors). Subscribing again replaces the prefetch and handler.
// The subscription survives reconnections: a resumed session keeps it, a
// fresh one gets it again.
func (w *Worker) Subscribe(ctx context.Context, semaphore, channel string, prefetch int, handler Handler) error {
	if handler == nil {
		return errors.New("sdk: Subscribe needs a handler")
	}
	if prefetch == 0 {
		prefetch = 1
	}
	k := subKey{semaphore, channel}
	s := &subscription{semaphore: semaphore, channel: channel, prefetch: prefetch, handler: handler}
	// registered first: the server may push a job before its reply
	w.mu.Lock()
	prev := w.subs[k]
	w.subs[k] = s
	w.mu.Unlock()
	_, _, err := w.retry(ctx, subscribeFrame{Type: "subscribe", Semaphore: semaphore, Channel: channel, Prefetch: prefetch})
	if err != nil {
		w.mu.Lock()
		if w.subs[k] == s {
			if prev != nil {
				w.subs[k] = prev
			} else {
				delete(w.subs, k)
			}
		}
		w.mu.Unlock()
	}
	return err
}

// Unsubscribe stops the jobs of semaphore and channel. Jobs already pushed
// run to their end.
func (w *Worker) Unsubscribe(ctx context.Context, semaphore, channel string) error {
	k := subKey{semaphore, channel}
	w.mu.Lock()
	s, ok := w.subs[k]
	delete(w.subs, k)
	w.mu.Unlock()
	_, retried, err := w.retry(ctx, map[string]string{"type": "unsubscribe", "semaphore": semaphore, "channel": channel})
	if err != nil && !(retried && errors.Is(err, ErrNotSubscribed)) {
		if ok && !errors.Is(err, ErrNotSubscribed) {
			w.mu.Lock()
			if _, again := w.subs[k]; !again {
				w.subs[k] = s
			}
			w.mu.Unlock()
		}
		return err
	}
	return nil
}

// jobRun is one delivery of a job the worker runs.
type jobRun struct {
	job     Job
	ctx     context.Context
	cancel  context.CancelCauseFunc
	refused atomic.Bool // the server refused the ack
}

// ackPrefix starts the id of an ack frame: "ack:<job>:<lease>", so that an
// error reply names the delivery it refuses.
const ackPrefix = "ack:"

// onJob acks a pushed job and runs it.
func (w *Worker) onJob(c *wsConn, f inFrame) {
	if f.Job == nil || f.Job.Lease == nil {
		return
	}
	j := f.Job.toSDK()
	w.mu.Lock()
	s := w.subs[subKey{j.Semaphore, j.Channel}]
	if s == nil {
		s = w.subs[subKey{j.Semaphore, ""}]
	}
	if s == nil || w.closing {
		w.mu.Unlock()
		return // no ack: the server offers it elsewhere
	}
	var run *jobRun
	if prev := w.running[j.ID]; prev == nil || prev.job.Lease.ID != j.Lease.ID {
		run = &jobRun{job: j}
		run.ctx, run.cancel = context.WithCancelCause(w.jobCtx)
		w.running[j.ID] = run
		w.jobs.Add(1)
	}
	w.mu.Unlock()
	err := c.write(map[string]string{"type": "ack", "id": ackPrefix + j.ID + ":" + j.Lease.ID, "job": j.ID})
	if run == nil {
		return // pushed again while it runs: acked again
	}
	if err != nil {
		// not acked: the server offers it elsewhere
		w.forget(run)
		run.cancel(context.Canceled)
		w.jobs.Done()
		return
	}
	go w.runJob(s.handler, run)
}

// onAckRefused stops the run of a delivery whose ack the server refused.
func (w *Worker) onAckRefused(id string) {
	jobID, leaseID, ok := strings.Cut(strings.TrimPrefix(id, ackPrefix), ":")
	if !ok {
		return
	}
	w.mu.Lock()
	run := w.running[jobID]
	w.mu.Unlock()
	if run != nil && run.job.Lease.ID == leaseID {
		run.refused.Store(true)
		run.cancel(ErrAckRefused)
	}
}

func (w *Worker) forget(run *jobRun) {
	w.mu.Lock()
	if w.running[run.job.ID] == run {
		delete(w.running, run.job.ID)
	}
	w.mu.Unlock()
}

// runJob runs the handler of a job, keeping its lease alive, and releases
// the job when the handler returns nil.
func (w *Worker) runJob(h Handler, run *jobRun) {
	defer w.jobs.Done()
	defer w.forget(run)
	j := run.job
	ttl := max(j.Lease.TTL(), time.Second)
	defer run.cancel(context.Canceled)
	stop := make(chan struct{})
	lost := make(chan struct{})
	keeper := make(chan struct{})
	go func() {
		defer close(keeper)
		w.keepAlive(w.ctx, j.Lease.ID, ttl, stop, func() {
			close(lost)
			run.cancel(fmt.Errorf("%w: %s", ErrLeaseLost, j.Lease.ID))
		})
	}()
	err := runHandler(run.ctx, h, j)
	isLost := func() bool {
		select {
		case <-lost:
			return true
		default:
			return false
		}
	}
	if err == nil && !isLost() && !run.refused.Load() {
		// keep the lease alive until the release went through
		err = w.releaseJob(j, ttl)
		close(stop)
		<-keeper
		if err != nil {
			w.cfg.log.Warn("semaphored worker: releasing a job failed; its lease expires", "job", j.ID, "err", err)
		}
		return
	}
	close(stop)
	<-keeper
	switch {
	case run.refused.Load():
		w.cfg.log.Warn("semaphored worker: the server refused the ack of a job; not released", "job", j.ID)
	case isLost():
		w.cfg.log.Warn("semaphored worker: job lease lost while its handler ran", "job", j.ID, "err", err)
	default:
		w.cfg.log.Warn("semaphored worker: handler failed; the job is retried after its lease expires", "job", j.ID, "err", err)
	}
}

func runHandler(ctx context.Context, h Handler, j Job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sdk: handler panicked: %v", r)
		}
	}()
	return h(ctx, j)
}

// releaseJob releases a job whose handler succeeded. After a lost
// connection it first checks, by extending the job's lease, that the job
// still has the lease of this delivery, so that a late release never ends
// a delivery to another worker.
func (w *Worker) releaseJob(j Job, ttl time.Duration) error {
	check := false
	for {
		if check {
			_, err := w.call(w.ctx, extendFrame{Type: "extend", Lease: j.Lease.ID, TTL: duration(ttl)})
			switch {
			case errors.Is(err, ErrConnectionLost):
				continue
			case IsLeaseNotFound(err):
				return nil // it moved on: retried, or ended by onSessionLost
			case err != nil:
				return err
			}
		}
		_, err := w.call(w.ctx, map[string]string{"type": "release", "job": j.ID})
		switch {
		case err == nil, IsJobNotFound(err), IsInvalidState(err):
			return nil
		case errors.Is(err, ErrConnectionLost):
			check = true
		default:
			return err
		}
	}
}

func encodePayload(payload any) (json.RawMessage, error) {
	var raw json.RawMessage
	switch p := payload.(type) {
	case json.RawMessage:
		raw = p
	case []byte:
		raw = p
	default:
		b, err := json.Marshal(payload)
		if err != nil {
			return nil, fmt.Errorf("sdk: encode payload: %w", err)
		}
		raw = b
	}
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	if !json.Valid(raw) {
		return nil, errors.New("sdk: payload is not valid JSON")
	}
	return raw, nil
}

// ---- wire format of the websocket (mirrors api/ws_wire.go) ----

type acquireFrame struct {
	Type      string    `json:"type"`
	Semaphore string    `json:"semaphore"`
	Channel   string    `json:"channel,omitempty"`
	Weight    *int64    `json:"weight,omitempty"`
	TTL       *duration `json:"ttl,omitempty"`
	Wait      *duration `json:"wait,omitempty"`
}

type extendFrame struct {
	Type  string   `json:"type"`
	Lease string   `json:"lease"`
	TTL   duration `json:"ttl"`
}

type subscribeFrame struct {
	Type      string `json:"type"`
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel,omitempty"`
	Prefetch  int    `json:"prefetch"`
}

type enqueueFrame struct {
	Type           string          `json:"type"`
	Semaphore      string          `json:"semaphore"`
	Channel        string          `json:"channel,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotencyKey,omitempty"`
}

type subscriptionWire struct {
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel"`
	Prefetch  int    `json:"prefetch"`
}

// inFrame is every frame the server sends.
type inFrame struct {
	Type          string             `json:"type"`
	ID            string             `json:"id"`
	Session       string             `json:"session"`
	ResumeToken   string             `json:"resumeToken"`
	Heartbeat     *duration          `json:"heartbeat"`
	Protocol      int                `json:"protocol"`
	Leases        []string           `json:"leases"`
	Jobs          []string           `json:"jobs"`
	Subscriptions []subscriptionWire `json:"subscriptions"`
	Lease         *leaseWire         `json:"lease"`
	Job           *jobWire           `json:"job"`
	Error         *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Code    string `json:"code"`
	Message string `json:"message"`
}
