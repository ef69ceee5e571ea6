package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every request is counted under its route template, method and status:
// unknown routes as "unmatched", unknown methods as "OTHER".
func TestMetrics_Labels(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("orders", map[string]any{"maxValue": 1})
	l := e.acquire("orders", nil)
	e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/orders/acquire", e.worker, rawBody(`{}`))
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l.ID+"/release", e.worker, rawBody(`{}`))
	e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+l.ID+"/release", e.worker, nil)
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodPost, "/v1/semaphores/orders/acquire", "", nil)
	e.expect(http.StatusNotFound, CodeNotFound, http.MethodGet, "/nowhere", "", nil)
	e.expect(http.StatusMethodNotAllowed, CodeMethodNotAllowed, http.MethodPatch, "/v1/semaphores/orders", e.admin, rawBody(`{}`))
	req, err := http.NewRequest("BREW", e.url+"/healthz", nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	for range 2 {
		e.expect(http.StatusOK, "", http.MethodGet, "/healthz", "", nil)
	}

	m := string(e.expect(http.StatusOK, "", http.MethodGet, "/metrics", e.operator, nil).Body)
	var got []string
	for line := range strings.Lines(m) {
		if strings.HasPrefix(line, "semaphored_http_requests_total{") || strings.HasPrefix(line, "semaphored_http_request_duration_seconds_count{") {
			got = append(got, strings.TrimSpace(line))
		}
	}
	require.ElementsMatch(t, []string{
		`semaphored_http_request_duration_seconds_count{method="GET",route="/healthz"} 2`,
		`semaphored_http_request_duration_seconds_count{method="GET",route="unmatched"} 1`,
		`semaphored_http_request_duration_seconds_count{method="OTHER",route="/healthz"} 1`,
		`semaphored_http_request_duration_seconds_count{method="PATCH",route="/v1/semaphores/:name"} 1`,
		`semaphored_http_request_duration_seconds_count{method="POST",route="/v1/leases/:id/release"} 2`,
		`semaphored_http_request_duration_seconds_count{method="POST",route="/v1/semaphores/:name/acquire"} 3`,
		`semaphored_http_request_duration_seconds_count{method="PUT",route="/v1/semaphores/:name"} 1`,
		`semaphored_http_requests_total{code="200",method="GET",route="/healthz"} 2`,
		`semaphored_http_requests_total{code="200",method="POST",route="/v1/leases/:id/release"} 1`,
		`semaphored_http_requests_total{code="200",method="POST",route="/v1/semaphores/:name/acquire"} 1`,
		`semaphored_http_requests_total{code="200",method="PUT",route="/v1/semaphores/:name"} 1`,
		`semaphored_http_requests_total{code="401",method="POST",route="/v1/semaphores/:name/acquire"} 1`,
		`semaphored_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`semaphored_http_requests_total{code="404",method="POST",route="/v1/leases/:id/release"} 1`,
		`semaphored_http_requests_total{code="405",method="OTHER",route="/healthz"} 1`,
		`semaphored_http_requests_total{code="405",method="PATCH",route="/v1/semaphores/:name"} 1`,
		`semaphored_http_requests_total{code="409",method="POST",route="/v1/semaphores/:name/acquire"} 1`,
	}, got)
}

// TestMetrics_OperatorOnly: the series name tenants and semaphores, so the
// API's address serves /metrics to operator keys only; with
// MetricsElsewhere it answers 404 and MetricsHandler serves them without
// auth.
func TestMetrics_OperatorOnly(t *testing.T) {
	e := setup(t)
	e.put("orders", map[string]any{"maxValue": 2})
	r := e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/metrics", "", nil)
	require.NotContains(t, string(r.Body), "acme")
	r = e.expect(http.StatusForbidden, CodeForbidden, http.MethodGet, "/metrics", e.admin, nil)
	require.Equal(t, "an admin key may not call this route", r.message())
	require.NotContains(t, string(r.Body), "orders")
	r = e.expect(http.StatusForbidden, CodeForbidden, http.MethodGet, "/metrics", e.worker, nil)
	require.Equal(t, "a worker key may not call this route", r.message())
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/metrics", "sk_unknown_0123456789abcdef0123456789", nil)
	m := string(e.expect(http.StatusOK, "", http.MethodGet, "/metrics", e.operator, nil).Body)
	require.Contains(t, m, `semaphored_permits_max{semaphore="orders",tenant="acme"} 2`)

	sep := setup(t, func(c *Config) { c.MetricsElsewhere = true })
	sep.put("orders", map[string]any{"maxValue": 3})
	sep.expect(http.StatusNotFound, "", http.MethodGet, "/metrics", sep.operator, nil)
	sep.expect(http.StatusNotFound, "", http.MethodGet, "/metrics", "", nil)
	hs := httptest.NewServer(MetricsHandler(sep.reg, nil))
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), `semaphored_permits_max{semaphore="orders",tenant="acme"} 3`)
}
