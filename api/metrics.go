package api

import (
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics are the HTTP metrics. route is echo's path template (or
// "unmatched"), method one of the standard methods (or "OTHER"): bounded.
//
// A request finds its series without hashing label values: routes maps a
// route template to one slot per method, and a slot keeps the histogram and
// the counters by status it has used. A series is created on first use, as
// WithLabelValues would, so /metrics lists the same series as before.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec

	routes    map[string]*routeMetrics // written only while routes are registered
	unmatched *routeMetrics
}

// methodLabels are the method labels; a request's method is looked up here, the
// last slot is "OTHER".
var methodLabels = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions, "OTHER",
}

// methodIndex is the slot of a request method in methodLabels.
func methodIndex(m string) int {
	for i, k := range methodLabels[:len(methodLabels)-1] {
		if m == k {
			return i
		}
	}
	return len(methodLabels) - 1
}

// routeMetrics are the series of one route label.
type routeMetrics struct {
	route string
	slots [len(methodLabels)]methodMetrics
}

// methodMetrics are the series of one (method, route) pair.
type methodMetrics struct {
	duration atomic.Pointer[prometheus.Observer]
	codes    atomic.Pointer[map[int]prometheus.Counter] // copied on write
	mu       sync.Mutex                                 // serialises writers of codes
}

func newHTTPMetrics(reg prometheus.Registerer) (*httpMetrics, error) {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "semaphored",
			Name:      "http_requests_total",
			Help:      "HTTP requests by method, route template and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "semaphored",
			Name:      "http_request_duration_seconds",
			Help:      "Duration of HTTP requests by method and route template.",
			Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method", "route"}),
		routes:    map[string]*routeMetrics{},
		unmatched: &routeMetrics{route: "unmatched"},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// addRoute makes path a route label. Called while routes are registered,
// before the server serves.
func (m *httpMetrics) addRoute(path string) {
	if m.routes[path] == nil {
		m.routes[path] = &routeMetrics{route: path}
	}
}

// observe records a finished request.
func (m *httpMetrics) observe(method, route string, status int, d time.Duration) {
	r := m.routes[route]
	if r == nil {
		r = m.unmatched
	}
	i := methodIndex(method)
	s := &r.slots[i]
	obs := s.duration.Load()
	if obs == nil {
		o := m.duration.WithLabelValues(methodLabels[i], r.route)
		s.duration.Store(&o)
		obs = &o
	}
	(*obs).Observe(d.Seconds())
	s.counter(m, methodLabels[i], r.route, status).Inc()
}

// counter is the requests counter of this pair with status code.
func (s *methodMetrics) counter(m *httpMetrics, method, route string, code int) prometheus.Counter {
	if p := s.codes.Load(); p != nil {
		if c, ok := (*p)[code]; ok {
			return c
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var old map[int]prometheus.Counter
	if p := s.codes.Load(); p != nil {
		old = *p
	}
	if c, ok := old[code]; ok {
		return c
	}
	c := m.requests.WithLabelValues(method, route, strconv.Itoa(code))
	next := make(map[int]prometheus.Counter, len(old)+1)
	maps.Copy(next, old)
	next[code] = c
	s.codes.Store(&next)
	return c
}

// observe is the outermost middleware: it renders a returned error itself
// (so the status is known), turns a panic of the handler into a 500, and
// records the request.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		if err := s.callRecovering(next, c); err != nil {
			c.Error(err)
		}
		s.metrics.observe(c.Request().Method, c.Path(), c.Response().Status, time.Since(start))
		return nil
	}
}
