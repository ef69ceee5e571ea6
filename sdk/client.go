// Package sdk is the Go client of semaphored, a self-hostable distributed
// semaphore service.
//
// A Client talks to the HTTP API (/v1) with one API key. Every method takes a
// context first; durations are time.Duration, times are time.Time. Errors the
// server answers are *APIError values, matched with errors.Is against the
// sentinel errors of this package (ErrNoPermit, ErrLeaseNotFound, ...) or
// with the Is* helpers:
//
//	c, err := sdk.New("http://localhost:8080", os.Getenv("SEMAPHORED_KEY"))
//	...
//	err = c.Do(ctx, "payments-api", func(ctx context.Context, l sdk.Lease) error {
//		return callThePaymentsAPI(ctx, l.FencingToken)
//	})
//
// A Worker (NewWorker) keeps a websocket to /v1/ws instead: it receives the
// jobs of the semaphores it subscribes to, takes session-bound permits, and
// survives reconnections by resuming its session.
//
// The package has no dependency on the server's packages: importing it pulls
// only the standard library and github.com/coder/websocket into a build.
package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Version is the SDK version sent in the default User-Agent.
const Version = "0.1.0"

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// Client is a semaphored API client. It is safe for concurrent use.
type Client struct {
	base      string // scheme://host[/path], no trailing slash
	apiKey    string
	http      *http.Client
	userAgent string
	auth      string // the Authorization header's value, "" without a key
}

// defaultTransport is http.DefaultTransport's settings with room to keep a
// connection per concurrent caller: a Client is meant to be shared by many
// goroutines, and the standard 2 idle connections per host would make all
// but two of them dial anew on every call.
func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 128
	return t
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the http.Client used for requests (default: a client
// without a global timeout, keeping up to 128 idle connections to the
// server; every call is bounded by its context instead, and an acquire may
// legitimately wait up to 60 s).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.http = hc
		}
	}
}

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// New returns a client of the server at baseURL (e.g.
// "http://localhost:8080") authenticating with apiKey ("sk_…"). apiKey may
// be empty for Health and Ready only.
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("sdk: invalid base URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("sdk: invalid base URL %q: scheme must be http or https", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("sdk: invalid base URL %q: no host", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("sdk: invalid base URL %q: no query or fragment allowed", baseURL)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	c := &Client{
		base:      u.String(),
		apiKey:    apiKey,
		http:      &http.Client{Transport: defaultTransport()},
		userAgent: "semaphored-go-sdk/" + Version,
	}
	for _, o := range opts {
		o(c)
	}
	if apiKey != "" {
		c.auth = "Bearer " + apiKey
	}
	return c, nil
}

// endpoint joins the base URL with path segments, escaping each one.
func (c *Client) endpoint(query url.Values, segments ...string) string {
	var b strings.Builder
	n := len(c.base)
	for _, s := range segments {
		n += 1 + len(s)
	}
	b.Grow(n) // the usual length: segments that need no escaping
	b.WriteString(c.base)
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	if len(query) > 0 {
		b.WriteByte('?')
		b.WriteString(query.Encode())
	}
	return b.String()
}

// do sends a request and decodes a 2xx JSON reply into out (nil: discard).
// The reply is read to its end in any case, so that the connection is
// reused.
func (c *Client) do(ctx context.Context, method, target string, in, out any) error {
	var body io.Reader
	if in != nil {
		buf, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("sdk: encode request: %w", err)
		}
		body = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("sdk: %w", err)
	}
	c.setHeaders(req.Header, in != nil)
	if r, ok := in.(replayable); ok && r.replayKey() != "" {
		// net/http sends a request with this header again when its
		// kept-alive connection proves closed before any reply; the key in
		// the body makes the second one return what the first did.
		req.Header["Idempotency-Key"] = []string{r.replayKey()}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("sdk: %s %s: %w", method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	buf := getBuffer()
	defer putBuffer(buf)
	if resp.ContentLength > 0 && resp.ContentLength <= maxPooledBuffer {
		buf.Grow(int(resp.ContentLength) + 1) // +1: room for the read that sees EOF
	}
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return fmt.Errorf("sdk: decode %s %s reply: %w", method, req.URL.Path, err)
	}
	if err := json.Unmarshal(buf.Bytes(), out); err != nil {
		return fmt.Errorf("sdk: decode %s %s reply: %w", method, req.URL.Path, err)
	}
	return nil
}

// replayable is a request body that names an idempotency key.
type replayable interface{ replayKey() string }

// setHeaders sets the headers of every request on h, a new request's. The
// values share one allocation.
func (c *Client) setHeaders(h http.Header, hasBody bool) {
	vals := make([]string, 0, 4)
	set := func(key, v string) {
		vals = append(vals, v)
		h[key] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if hasBody {
		set("Content-Type", "application/json")
	}
	set("Accept", "application/json")
	if c.userAgent != "" {
		set("User-Agent", c.userAgent)
	}
	if c.auth != "" {
		set("Authorization", c.auth)
	}
}

// bufferPool holds the buffers replies are read into.
var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBuffer bounds the buffers kept in bufferPool, so that a rare
// large reply does not stay in memory.
const maxPooledBuffer = 64 << 10

func getBuffer() *bytes.Buffer { return bufferPool.Get().(*bytes.Buffer) }

func putBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBuffer {
		return
	}
	b.Reset()
	bufferPool.Put(b)
}

// APIError is an error answered by the server: the HTTP status and the
// body's {"error": {"code", "message"}}.
type APIError struct {
	StatusCode int    // HTTP status
	Code       string // stable snake_case code ("no_permit"); "" when the body was not a semaphored error
	Message    string // human text
	// RetryAfter is when to try again, from the Retry-After header (or a
	// rejected websocket frame's retryAfter): on 409 no_permit when an
	// acquire without wait was refused for the semaphore's rate, on 429
	// rate_limited, and on any status that carries it. 0 when absent.
	RetryAfter time.Duration
	// Index is the place (from 0) of the job that made a batch enqueue
	// fail with 400 (EnqueueBatch), -1 otherwise.
	Index int
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("semaphored: HTTP %d: %s", e.StatusCode, e.Message)
	}
	return fmt.Sprintf("semaphored: %s (HTTP %d): %s", e.Code, e.StatusCode, e.Message)
}

// Is reports whether target is the sentinel error of e's code, so that
// errors.Is(err, sdk.ErrNoPermit) works on a returned *APIError.
func (e *APIError) Is(target error) bool {
	s, ok := sentinels[e.Code]
	return ok && s == target
}

// Sentinel errors, one per error code of the API. Match with errors.Is.
var (
	ErrUnauthorized      = errors.New("semaphored: unauthorized")           // 401: missing or unknown key
	ErrForbidden         = errors.New("semaphored: forbidden")              // 403: the key's role may not do this
	ErrInvalidJSON       = errors.New("semaphored: invalid json")           // 400
	ErrInvalidRequest    = errors.New("semaphored: invalid request")        // 400: a field is out of range
	ErrInvalidName       = errors.New("semaphored: invalid name")           // 400
	ErrInvalidConfig     = errors.New("semaphored: invalid config")         // 400
	ErrSemaphoreNotFound = errors.New("semaphored: semaphore not found")    // 404
	ErrLeaseNotFound     = errors.New("semaphored: lease not found")        // 404: unknown, released or expired
	ErrKeyNotFound       = errors.New("semaphored: key not found")          // 404
	ErrNotFound          = errors.New("semaphored: not found")              // 404: no such route
	ErrNoPermit          = errors.New("semaphored: no permit")              // 409: no permit within the wait
	ErrWeightTooLarge    = errors.New("semaphored: weight too large")       // 409: weight > maxValue
	ErrTenantExists      = errors.New("semaphored: tenant exists")          // 409
	ErrPayloadTooLarge   = errors.New("semaphored: payload too large")      // 413
	ErrRateLimited       = errors.New("semaphored: rate limited")           // 429, see APIError.RetryAfter
	ErrStoreUnavailable  = errors.New("semaphored: store unavailable")      // 503
	ErrInternal          = errors.New("semaphored: internal server error")  // 500
	ErrMethodNotAllowed  = errors.New("semaphored: method not allowed")     // 405
	ErrUnsupportedMedia  = errors.New("semaphored: unsupported media type") // 415
	ErrJobNotFound       = errors.New("semaphored: job not found")          // 404 (async jobs)
	ErrInvalidState      = errors.New("semaphored: invalid state")          // 409: wrong job transition
	ErrQueueFull         = errors.New("semaphored: queue full")             // 429: the semaphore's job queue is full
)

var sentinels = map[string]error{
	"unauthorized":           ErrUnauthorized,
	"forbidden":              ErrForbidden,
	"invalid_json":           ErrInvalidJSON,
	"invalid_request":        ErrInvalidRequest,
	"invalid_name":           ErrInvalidName,
	"invalid_config":         ErrInvalidConfig,
	"semaphore_not_found":    ErrSemaphoreNotFound,
	"lease_not_found":        ErrLeaseNotFound,
	"key_not_found":          ErrKeyNotFound,
	"not_found":              ErrNotFound,
	"no_permit":              ErrNoPermit,
	"weight_too_large":       ErrWeightTooLarge,
	"tenant_exists":          ErrTenantExists,
	"payload_too_large":      ErrPayloadTooLarge,
	"rate_limited":           ErrRateLimited,
	"store_unavailable":      ErrStoreUnavailable,
	"internal":               ErrInternal,
	"method_not_allowed":     ErrMethodNotAllowed,
	"unsupported_media_type": ErrUnsupportedMedia,
	"job_not_found":          ErrJobNotFound,
	"invalid_state":          ErrInvalidState,
	"queue_full":             ErrQueueFull,
}

// IsNoPermit reports whether err says no permit was granted within the wait.
func IsNoPermit(err error) bool { return errors.Is(err, ErrNoPermit) }

// IsLeaseNotFound reports whether err says the lease is unknown, released or
// expired.
func IsLeaseNotFound(err error) bool { return errors.Is(err, ErrLeaseNotFound) }

// IsRateLimited reports whether err is a 429 rate_limited; see
// APIError.RetryAfter for when to try again.
func IsRateLimited(err error) bool { return errors.Is(err, ErrRateLimited) }

// IsNotFound reports whether err is any 404 answer (semaphore, lease, key or
// route not found).
func IsNotFound(err error) bool { return StatusCode(err) == http.StatusNotFound }

// IsUnauthorized reports whether the key was missing, unknown or revoked.
func IsUnauthorized(err error) bool { return errors.Is(err, ErrUnauthorized) }

// IsForbidden reports whether the key's role may not make the call.
func IsForbidden(err error) bool { return errors.Is(err, ErrForbidden) }

// StatusCode returns the HTTP status of an *APIError in err's chain, 0 when
// there is none (a transport error, a cancelled context).
func StatusCode(err error) int {
	var e *APIError
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

func decodeError(resp *http.Response) error {
	e := &APIError{StatusCode: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After")), Index: -1}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Index   *int   `json:"index"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &body) == nil && body.Error != nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
		if body.Error.Index != nil {
			e.Index = *body.Error.Index
		}
		return e
	}
	msg := strings.TrimSpace(string(raw))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	e.Message = msg
	return e
}

func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// Health checks GET /healthz: nil when the process serves.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, c.endpoint(nil, "healthz"), nil, nil)
}

// Ready checks GET /readyz: nil when the server can reach its store.
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, c.endpoint(nil, "readyz"), nil, nil)
}
