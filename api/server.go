// Package api serves the HTTP API of semaphored (SPEC §3) with echo: the
// handlers, authentication by API key, per-key rate limiting, strict JSON
// decoding, one error table, HTTP metrics and the embedded OpenAPI document.
package api

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/semaphored/semaphored/console"
	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Service    *semaphore.Service    // required
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // HTTP metrics; nil: not registered
	Gatherer   prometheus.Gatherer   // served at /metrics; nil: an empty registry
	// KeyRateLimit is the sustained number of requests per second allowed
	// per API key, 0 = off. The limit is kept per server instance: with N
	// instances behind a load balancer a key may make up to N times as many.
	KeyRateLimit float64
	KeyRateBurst int   // default max(1, ceil(KeyRateLimit))
	MaxBodyBytes int64 // default 1 MiB
	// Hub serves the websocket (GET /v1/ws, POST /v1/ws/tickets); nil:
	// those routes are not served.
	Hub *hub.Hub
	// MetricsElsewhere: /metrics is served on its own listener
	// (--metrics-addr, see MetricsHandler), so the API's address answers
	// 404 there. Otherwise the API serves it to operator keys only (its
	// series name tenants and semaphores).
	MetricsElsewhere bool
	// AllowedOrigins are the browser origins allowed on the websocket
	// besides the server's own (--allowed-origins): "*",
	// "scheme://host[:port]", or a path.Match pattern of one.
	AllowedOrigins []string
}

// DefaultMaxBodyBytes is the default limit of a request body.
const DefaultMaxBodyBytes = 1 << 20

// Server is the HTTP API.
type Server struct {
	svc     *semaphore.Service
	log     *slog.Logger
	e       *echo.Echo
	maxBody int64
	limiter *keyLimiter // nil when rate limiting is off
	metrics *httpMetrics
	hub     *hub.Hub // nil: no websocket
	origins []string // lower case
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Service == nil {
		return nil, errors.New("api: Config.Service is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.NewRegistry()
	}
	if cfg.MaxBodyBytes < 0 || cfg.KeyRateLimit < 0 || math.IsNaN(cfg.KeyRateLimit) || math.IsInf(cfg.KeyRateLimit, 0) || cfg.KeyRateBurst < 0 {
		return nil, fmt.Errorf("api: MaxBodyBytes, KeyRateLimit and KeyRateBurst must be finite and not negative")
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	m, err := newHTTPMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		svc:     cfg.Service,
		log:     cfg.Logger,
		e:       echo.New(),
		maxBody: cfg.MaxBodyBytes,
		metrics: m,
		hub:     cfg.Hub,
	}
	for _, o := range cfg.AllowedOrigins {
		s.origins = append(s.origins, strings.ToLower(o))
	}
	if cfg.KeyRateLimit > 0 {
		burst := cfg.KeyRateBurst
		if burst == 0 {
			burst = max(1, int(math.Ceil(cfg.KeyRateLimit)))
		}
		s.limiter = newKeyLimiter(cfg.KeyRateLimit, burst, defaultMaxLimiters, time.Now)
	}
	s.e.HideBanner = true
	s.e.HidePort = true
	s.e.HTTPErrorHandler = s.errorHandler
	s.e.JSONSerializer = jsonSerializer{}
	// One middleware around every request, matched or not: echo wraps it
	// around the route's handler anew on each request.
	s.e.Use(s.observe)
	s.registerRoutes(cfg.Gatherer, !cfg.MetricsElsewhere)
	return s, nil
}

// Handler returns the http.Handler serving the API.
func (s *Server) Handler() http.Handler { return s.e }

type role int

const (
	worker role = iota
	admin
	operator
)

// MetricsHandler serves the Prometheus metrics of g without auth, for a
// listener on a private scrape network (--metrics-addr).
func MetricsHandler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slogErrorLog{log}}))
	return mux
}

func (s *Server) registerRoutes(g prometheus.Gatherer, serveMetrics bool) {
	add := func(method, path string, h echo.HandlerFunc, mw ...echo.MiddlewareFunc) {
		s.e.Add(method, path, h, mw...)
		s.metrics.addRoute(path)
	}
	// auth is the middleware of an authenticated route: the check of the
	// key, then the per-key rate limit when it is on.
	auth := func(check echo.MiddlewareFunc) []echo.MiddlewareFunc {
		if s.limiter == nil {
			return []echo.MiddlewareFunc{check}
		}
		return []echo.MiddlewareFunc{check, s.rateLimit}
	}
	v1 := func(method, path string, r role, h echo.HandlerFunc) {
		// Auth is per route, not group middleware, so an unknown /v1 route is
		// a clean 404 for everyone.
		add(method, "/v1"+path, h, auth(s.authenticate(r))...)
	}

	v1(http.MethodGet, "/semaphores", admin, s.listSemaphores)
	v1(http.MethodPut, "/semaphores/:name", admin, s.putSemaphore)
	v1(http.MethodGet, "/semaphores/:name", admin, s.getSemaphore)
	v1(http.MethodDelete, "/semaphores/:name", admin, s.deleteSemaphore)
	v1(http.MethodPost, "/semaphores/:name/suspend", admin, s.suspend(true))
	v1(http.MethodPost, "/semaphores/:name/resume", admin, s.suspend(false))

	v1(http.MethodPost, "/semaphores/:name/acquire", worker, s.acquire)
	v1(http.MethodGet, "/semaphores/:name/leases", worker, s.listLeases)
	v1(http.MethodPost, "/leases/:id/extend", worker, s.extend)
	v1(http.MethodPost, "/leases/:id/release", worker, s.release)

	v1(http.MethodPost, "/semaphores/:name/jobs", worker, s.enqueue)
	v1(http.MethodGet, "/semaphores/:name/jobs", worker, s.listJobs)
	v1(http.MethodDelete, "/semaphores/:name/jobs", worker, s.purgeJobs)
	v1(http.MethodGet, "/jobs/:id", worker, s.getJob)
	v1(http.MethodPost, "/jobs/:id/release", worker, s.jobAction((*semaphore.Service).ReleaseJob))
	v1(http.MethodPost, "/jobs/:id/cancel", worker, s.jobAction((*semaphore.Service).CancelJob))
	v1(http.MethodPost, "/jobs/:id/requeue", worker, s.jobAction((*semaphore.Service).RequeueJob))

	v1(http.MethodPost, "/tenants", operator, s.createTenant)
	v1(http.MethodGet, "/tenants", operator, s.listTenants)

	v1(http.MethodGet, "/whoami", worker, s.whoami)
	v1(http.MethodPost, "/keys", admin, s.createKey)
	v1(http.MethodGet, "/keys", admin, s.listKeys)
	v1(http.MethodDelete, "/keys/:id", admin, s.deleteKey)

	if s.hub != nil {
		v1(http.MethodPost, "/ws/tickets", worker, s.createTicket)
		add(http.MethodGet, "/v1/ws", s.serveWS, auth(s.authenticateWS)...)
		// The fallback transports (sessions.go) authenticate as /v1/ws
		// does: a key, or a ticket for a browser's EventSource.
		add(http.MethodGet, "/v1/sse", s.serveSSE, auth(s.authenticateWS)...)
		add(http.MethodPost, "/v1/sessions", s.openSession, auth(s.authenticateWS)...)
		add(http.MethodGet, "/v1/sessions/:id/frames", s.pollFrames, auth(s.authenticateWS)...)
		add(http.MethodPost, "/v1/sessions/:id/frames", s.postFrames, auth(s.authenticateWS)...)
		add(http.MethodDelete, "/v1/sessions/:id", s.endSession, auth(s.authenticateWS)...)
	}

	if serveMetrics {
		metrics := promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slogErrorLog{s.log}})
		add(http.MethodGet, "/metrics", echo.WrapHandler(metrics), auth(s.authenticate(operator))...)
	}
	add(http.MethodGet, "/healthz", s.healthz)
	add(http.MethodGet, "/readyz", s.readyz)
	add(http.MethodGet, "/openapi.yaml", s.openapi)
	// The console's files; the page calls the API above with the user's key.
	// Paths it has no file for are the API's 404, as any unknown path.
	ui := console.New()
	serveUI := func(c echo.Context) error {
		if !ui.Has(c.Request().URL.Path) {
			return echo.ErrNotFound
		}
		ui.ServeHTTP(c.Response(), c.Request())
		return nil
	}
	for _, p := range []string{"/console", "/console/", "/console/:file"} {
		add(http.MethodGet, p, serveUI)
	}
}

// keyContext is the context of an authenticated request: the request's
// echo.Context and the caller's key. Passing the key this way costs one small
// allocation per request, where echo's c.Set builds a map.
type keyContext struct {
	echo.Context
	key store.APIKey
}

// callerKey is the authenticated key of the request (the zero key before
// authentication).
func callerKey(c echo.Context) store.APIKey {
	if kc, ok := c.(*keyContext); ok {
		return kc.key
	}
	return store.APIKey{}
}

// authenticate checks the bearer key and that its role may call the route.
func (s *Server) authenticate(need role) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			h := c.Request().Header.Get(echo.HeaderAuthorization)
			secret, ok := cutBearer(h)
			if !ok {
				return errorf(CodeUnauthorized, "missing API key: send Authorization: Bearer sk_…")
			}
			k, err := s.svc.Authenticate(c.Request().Context(), secret)
			if errors.Is(err, store.ErrKeyNotFound) {
				return errorf(CodeUnauthorized, "unknown or revoked API key")
			}
			if err != nil {
				return err
			}
			var have role
			switch k.Role {
			case store.RoleOperator:
				have = operator
			case store.RoleAdmin:
				have = admin
			default:
				have = worker
			}
			if have < need {
				return errorf(CodeForbidden, "%s %s key may not call this route", article(string(k.Role)), k.Role)
			}
			return next(&keyContext{Context: c, key: k})
		}
	}
}

// article is "a" or "an" before word.
func article(word string) string {
	if word != "" && strings.ContainsRune("aeiouAEIOU", rune(word[0])) {
		return "an"
	}
	return "a"
}

func cutBearer(h string) (string, bool) {
	const p = "bearer "
	if len(h) <= len(p) || !equalFoldASCII(h[:len(p)], p) {
		return "", false
	}
	secret := h[len(p):]
	for len(secret) > 0 && secret[0] == ' ' {
		secret = secret[1:]
	}
	return secret, secret != ""
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// rateLimit applies the per-key limit (after authenticate). Routes have it
// only when the limit is on.
func (s *Server) rateLimit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if wait, ok := s.limiter.allow(callerKey(c).ID); !ok {
			secs := max(1, int(math.Ceil(wait.Seconds())))
			c.Response().Header().Set("Retry-After", fmt.Sprint(secs))
			return errorf(CodeRateLimited, "rate limit of this API key exceeded, retry in %ds", secs)
		}
		return next(c)
	}
}

// callRecovering calls next, turning a panic in it into a logged 500
// internal.
func (s *Server) callRecovering(next echo.HandlerFunc, c echo.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if r == http.ErrAbortHandler {
				panic(r)
			}
			s.log.Error("panic in handler", "method", c.Request().Method, "route", c.Path(),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = errorf(CodeInternal, "internal error")
		}
	}()
	return next(c)
}

// slogErrorLog adapts slog to promhttp's error logger.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) { l.log.Error("metrics", "err", fmt.Sprint(v...)) }
