package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics are the HTTP metrics. route is echo's path template (or
// "unmatched"), method one of the standard methods (or "OTHER"): bounded.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	routes   map[string]bool // registered path templates; written only before serving
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
		routes: map[string]bool{},
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
func (m *httpMetrics) addRoute(path string) { m.routes[path] = true }

var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
}

// observe records a finished request.
func (m *httpMetrics) observe(method, route string, status int, d time.Duration) {
	if !knownMethods[method] {
		method = "OTHER"
	}
	if !m.routes[route] {
		route = "unmatched"
	}
	m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(method, route).Observe(d.Seconds())
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
