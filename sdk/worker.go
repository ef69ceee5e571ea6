package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the worker (SPEC §6): one live connection to a session
// over which a process takes permits and receives jobs — a websocket
// (GET /v1/ws), or, behind proxies that break websockets, an SSE stream or
// long polls (worker_link.go, worker_transport.go). The connection is kept
// up by the worker: it reconnects with exponential backoff and full
// jitter, resumes its session (leases, subscriptions and held jobs survive
// a dropped connection within the server's grace period), pings at the
// heartbeat the server announces, drops a connection it no longer hears
// the server on, and keeps its leases alive.

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
const closeResumed = 4001

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
	// Transport is the transport the connection is on.
	Transport Transport
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
	transport    Transport
	// transportRetry: how often a worker on a fallback transport probes
	// the better ones.
	transportRetry time.Duration
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

// Worker is a connection to semaphored (websocket, SSE or long-poll: see
// WithTransport) that survives reconnections. Create it with NewWorker; it connects in the background,
// and every call waits (bounded by its context) for a connection. Its
// methods are safe for concurrent use: the calls of any number of
// goroutines share the one connection, each request carrying an id that
// its reply echoes, so they are in flight together and none waits for
// another's reply. Close it when done.
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

	mu         sync.Mutex
	cur        *wsConn       // nil while disconnected
	ready      chan struct{} // closed when cur is set
	token      string        // resume token of the session
	session    string
	err        error      // why the worker stopped for good
	closing    bool       // Close began: no new jobs
	closed     bool       // Close closed the connection: no reconnect
	transports transports // auto: which transport to try (worker_transport.go)
	subs       map[subKey]*subscription
	leases     map[string]*heldLease
	running    map[string]*jobRun // by job id
}

// target is one instance: its base URL (http or https) and websocket URL.
type target struct{ base, ws string }

// NewWorker returns a worker of the server at baseURL, authenticating with
// apiKey, and starts connecting in the background.
func NewWorker(baseURL, apiKey string, opts ...WorkerOption) (*Worker, error) {
	cfg := workerConfig{
		minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff,
		closeTimeout: DefaultCloseTimeout, httpClient: http.DefaultClient,
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		userAgent: "semaphored-go-sdk/" + Version,
		transport: TransportAuto, transportRetry: DefaultTransportRetry,
	}
	for _, o := range opts {
		o(&cfg)
	}
	levels, err := transportLevels(cfg.transport)
	if err != nil {
		return nil, err
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
		targets = append(targets, target{base: httpBase(u), ws: u})
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
	w.transports.levels = levels
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

// httpBase turns the websocket URL of /v1/ws back into the instance's
// HTTP base URL.
func httpBase(ws string) string {
	u, _ := url.Parse(ws)
	u.Scheme = strings.Replace(u.Scheme, "ws", "http", 1)
	u.Path = strings.TrimSuffix(u.Path, "/v1/ws")
	return u.String()
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
			ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
			cur.link.end(ctx)
			cancel()
		}
		w.cancel(ErrWorkerClosed)
		w.loops.Wait()
	})
	return w.Err()
}
