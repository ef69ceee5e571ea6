package semaphore_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/api"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
)

// The Grafana dashboard of deploy/grafana (issue 14) queries only metrics
// that semaphored exports, with their labels, and shows each topic it is
// for. The exported metrics are gathered from a registry built as
// cmd/semaphored builds it (the service's and the API's metrics), after
// traffic that gives every metric family a series.

const dashboardPath = "../deploy/grafana/semaphored.json"

// exportedMetric is a metric family /metrics exports.
type exportedMetric struct {
	histogram bool
	labels    map[string]bool
}

// exportedMetrics returns the metric families of a service and an API
// server on one registry, by name, after one acquire, one delivery of a job
// and one HTTP request.
func exportedMetrics(t *testing.T) map[string]exportedMetric {
	t.Helper()
	ctx := t.Context()
	st := memory.New(memory.Options{})
	reg := prometheus.NewRegistry()
	svc, err := semaphore.New(semaphore.Config{Store: st, Registerer: reg})
	require.NoError(t, err)
	t.Cleanup(func() {
		svc.Stop()
		_ = st.Close()
	})
	srv, err := api.New(api.Config{Service: svc, Registerer: reg, Gatherer: reg, MetricsElsewhere: true})
	require.NoError(t, err)

	// A semaphore with a rate, so that the collector reports every
	// per-semaphore gauge; an acquire; a job, which its one route (a
	// webhook, with no sender here) fails once and for all.
	_, err = st.CreateTenant(ctx, store.Tenant{ID: "acme", Name: "acme"})
	require.NoError(t, err)
	_, _, err = svc.PutSemaphore(ctx, "acme", "orders", semaphore.ConfigInput{
		MaxValue: ptr[int64](2), MaxAttempts: ptr(1), Rate: json.RawMessage(`{"limit": 100, "period": "1m"}`),
		Routes: json.RawMessage(`[{"type": "https", "url": "https://hooks.example.com/x", "attempts": 1}]`),
	})
	require.NoError(t, err)
	_, err = svc.Acquire(ctx, "acme", "orders", semaphore.AcquireInput{})
	require.NoError(t, err)
	_, _, err = svc.Enqueue(ctx, "acme", "orders", semaphore.EnqueueInput{Payload: json.RawMessage(`{}`)})
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	require.Equal(t, http.StatusOK, rec.Code)

	gather := func() map[string]exportedMetric {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		out := map[string]exportedMetric{}
		for _, mf := range mfs {
			m := exportedMetric{histogram: mf.GetType().String() == "HISTOGRAM", labels: map[string]bool{}}
			for _, s := range mf.GetMetric() {
				for _, l := range s.GetLabel() {
					m.labels[l.GetName()] = true
				}
			}
			out[mf.GetName()] = m
		}
		return out
	}
	// The delivery runs in the background.
	var got map[string]exportedMetric
	require.Eventually(t, func() bool {
		got = gather()
		_, delivered := got["semaphored_delivery_duration_seconds"]
		_, finished := got["semaphored_jobs_finished_total"]
		return delivered && finished
	}, 10*time.Second, 5*time.Millisecond, "the job was not delivered and finished")
	// A sample of each kind, so that a change of the setup above that
	// loses a family shows here rather than as a dashboard error.
	for _, name := range []string{
		"semaphored_acquire_total", "semaphored_acquire_duration_seconds", "semaphored_permits_max",
		"semaphored_rate_used", "semaphored_delivery_attempts_total", "semaphored_http_requests_total",
		"semaphored_http_request_duration_seconds",
	} {
		require.Contains(t, got, name)
	}
	require.True(t, got["semaphored_acquire_duration_seconds"].histogram)
	require.True(t, got["semaphored_permits_max"].labels["semaphore"])
	return got
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

// query is one PromQL query of a dashboard and where it is.
type query struct {
	where  string // panel title or variable name
	expr   string
	legend string
}

// panelQueries returns the queries of the panels, rows' panels included,
// grouped by panel.
func panelQueries(ps []panel) [][]query {
	var out [][]query
	for _, p := range ps {
		var qs []query
		for i, tg := range p.Targets {
			qs = append(qs, query{where: fmt.Sprintf("panel %q target %d", p.Title, i), expr: tg.Expr, legend: tg.LegendFormat})
		}
		if len(qs) > 0 {
			out = append(out, qs)
		}
		out = append(out, panelQueries(p.Panels)...)
	}
	return out
}

// variableQueries returns the PromQL of the query variables: "query" is a
// string or, from the current query editor, {"query": "..."}.
func variableQueries(t *testing.T, d dashboard) []query {
	t.Helper()
	var out []query
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		where := fmt.Sprintf("variable %q", v.Name)
		var s string
		if err := json.Unmarshal(v.Query, &s); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			require.NoError(t, json.Unmarshal(v.Query, &obj), where)
			s = obj.Query
		}
		out = append(out, query{where: where, expr: s})
		if v.Definition != "" {
			out = append(out, query{where: where + " definition", expr: v.Definition})
		}
	}
	return out
}

// allExprs returns every string under an "expr" key anywhere in the
// dashboard's JSON (annotations, library panels, any nesting), to check
// that panelQueries misses none.
func allExprs(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, allExprs(e)...)
		}
	case []any:
		for _, e := range v {
			out = append(out, allExprs(e)...)
		}
	}
	return out
}

var (
	metricName   = regexp.MustCompile(`\bsemaphored_[a-zA-Z0-9_:]*`)
	selector     = regexp.MustCompile(`\b(semaphored_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	matcherLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	grouping     = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	legendLabel  = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

// resolve maps a series name of a query to its exported family: a
// histogram's _bucket, _sum and _count series to the histogram. ok is false
// when semaphored exports no such series; labels are the series' labels.
func resolve(exported map[string]exportedMetric, name string) (family string, labels map[string]bool, ok bool) {
	if m, ok := exported[name]; ok && !m.histogram {
		return name, m.labels, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suffix)
		if m, ok := exported[base]; found && ok && m.histogram {
			labels = m.labels
			if suffix == "_bucket" {
				labels = map[string]bool{"le": true}
				for l := range m.labels {
					labels[l] = true
				}
			}
			return base, labels, true
		}
	}
	return "", nil, false
}

// checkQuery returns what is wrong with one query: a metric semaphored does
// not export (a histogram named without _bucket, _sum or _count is one), a
// label matched, grouped by or shown in the legend that none of its metrics
// has, or no semaphored metric at all.
func checkQuery(exported map[string]exportedMetric, q query) []string {
	var problems []string
	names := metricName.FindAllString(q.expr, -1)
	if len(names) == 0 {
		return []string{fmt.Sprintf("%s: %q names no semaphored metric", q.where, q.expr)}
	}
	union := map[string]bool{}
	for _, n := range names {
		_, labels, ok := resolve(exported, n)
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: %q: semaphored exports no metric %s", q.where, q.expr, n))
			continue
		}
		for l := range labels {
			union[l] = true
		}
	}
	if len(problems) > 0 {
		return problems
	}
	for _, m := range selector.FindAllStringSubmatch(q.expr, -1) {
		_, labels, _ := resolve(exported, m[1])
		for _, l := range matcherLabel.FindAllStringSubmatch(m[2], -1) {
			if !labels[l[1]] {
				problems = append(problems, fmt.Sprintf("%s: %q: %s has no label %s", q.where, q.expr, m[1], l[1]))
			}
		}
	}
	var used []string
	for _, g := range grouping.FindAllStringSubmatch(q.expr, -1) {
		for l := range strings.SplitSeq(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				used = append(used, l)
			}
		}
	}
	for _, l := range legendLabel.FindAllStringSubmatch(q.legend, -1) {
		used = append(used, l[1])
	}
	for _, l := range used {
		if !union[l] {
			problems = append(problems, fmt.Sprintf("%s: %q: no metric of it has the label %s", q.where, q.expr, l))
		}
	}
	return problems
}

// topics are what the dashboard must show (issue 14): each is met by one
// panel, whose queries together match it.
var topics = []struct {
	name string
	ok   func(exprs string) bool
}{
	{"permits in use against maxValue", func(e string) bool {
		return strings.Contains(e, "semaphored_permits_in_use") && strings.Contains(e, "semaphored_permits_max")
	}},
	{"waiting acquires", func(e string) bool { return strings.Contains(e, "semaphored_waiters") }},
	{"queued jobs", func(e string) bool { return strings.Contains(e, "semaphored_jobs_queued") }},
	{"rate limiting", func(e string) bool { return strings.Contains(e, "semaphored_rate_limited_total") }},
	{"rate window use against the limit", func(e string) bool {
		return strings.Contains(e, "semaphored_rate_used") && strings.Contains(e, "semaphored_rate_limit{")
	}},
	{"delivery attempts by route and result", func(e string) bool {
		return strings.Contains(e, "semaphored_delivery_attempts_total") && strings.Contains(e, "by (route, result)")
	}},
	{"delivery failures by route", func(e string) bool {
		return strings.Contains(e, `semaphored_delivery_attempts_total{result="failed"}`) && strings.Contains(e, "by (route)")
	}},
	{"hand-off (acquire wait) latency", func(e string) bool {
		return strings.Contains(e, "histogram_quantile(") && strings.Contains(e, "semaphored_acquire_duration_seconds_bucket")
	}},
	{"delivery latency by route", func(e string) bool {
		return strings.Contains(e, "histogram_quantile(") && strings.Contains(e, "semaphored_delivery_duration_seconds_bucket") &&
			strings.Contains(e, "route")
	}},
}

// dashboardProblems returns everything wrong with the dashboard: its
// identity, its queries, the topics it misses.
func dashboardProblems(t *testing.T, raw []byte, exported map[string]exportedMetric) []string {
	t.Helper()
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	var generic any
	require.NoError(t, json.Unmarshal(raw, &generic))

	var problems []string
	if d.UID != "semaphored" {
		problems = append(problems, fmt.Sprintf("uid %q, want semaphored", d.UID))
	}
	if d.SchemaVersion < 36 {
		problems = append(problems, fmt.Sprintf("schemaVersion %d: too old", d.SchemaVersion))
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Type+":"+v.Name)
	}
	for _, want := range []string{"datasource:datasource", "query:tenant", "query:semaphore"} {
		if !slices.Contains(vars, want) {
			problems = append(problems, "no template variable "+want)
		}
	}

	grouped := panelQueries(d.Panels)
	var queries []query
	for _, g := range grouped {
		queries = append(queries, g...)
	}
	if n := len(allExprs(generic)); n != len(queries) {
		problems = append(problems, fmt.Sprintf("%d queries outside panels' targets (%d in all, %d in targets)", n-len(queries), n, len(queries)))
	}
	queries = append(queries, variableQueries(t, d)...)
	for _, q := range queries {
		problems = append(problems, checkQuery(exported, q)...)
	}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if len(p.Targets) > 0 && (p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}") {
				problems = append(problems, fmt.Sprintf("panel %q: datasource is not the $datasource variable", p.Title))
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	for _, topic := range topics {
		met := false
		for _, g := range grouped {
			var exprs []string
			for _, q := range g {
				exprs = append(exprs, q.expr)
			}
			if topic.ok(strings.Join(exprs, "\n")) {
				met = true
				break
			}
		}
		if !met {
			problems = append(problems, "no panel shows "+topic.name)
		}
	}
	return problems
}

func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	exported := exportedMetrics(t)
	raw, err := os.ReadFile(dashboardPath)
	require.NoError(t, err)
	require.Empty(t, dashboardProblems(t, raw, exported))

	// The check fails on a query of a metric semaphored does not export,
	// also in a collapsed row; on a histogram queried without a series
	// suffix; on a label a metric lacks; and on a missing topic.
	var d map[string]any
	require.NoError(t, json.Unmarshal(raw, &d))
	bad := func(expr string) map[string]any {
		return map[string]any{
			"type": "row", "title": "bad", "collapsed": true,
			"panels": []any{map[string]any{
				"type": "timeseries", "title": "bad", "datasource": map[string]any{"type": "prometheus", "uid": "${datasource}"},
				"targets": []any{map[string]any{"expr": expr, "refId": "A"}},
			}},
		}
	}
	for expr, want := range map[string]string{
		`sum(rate(semaphored_nonexistent_total[5m]))`:                             "semaphored exports no metric semaphored_nonexistent_total",
		`histogram_quantile(0.9, rate(semaphored_delivery_duration_seconds[5m]))`: "semaphored exports no metric semaphored_delivery_duration_seconds",
		`semaphored_permits_in_use_bucket`:                                        "semaphored exports no metric semaphored_permits_in_use_bucket",
		`semaphored_waiters{channel="x"}`:                                         "semaphored_waiters has no label channel",
		`sum by (tenant) (rate(semaphored_acquire_total[5m]))`:                    "no metric of it has the label tenant",
		`up`: "names no semaphored metric",
	} {
		c := maps.Clone(d)
		c["panels"] = append(slices.Clone(c["panels"].([]any)), bad(expr))
		b, err := json.Marshal(c)
		require.NoError(t, err)
		problems := dashboardProblems(t, b, exported)
		require.Len(t, problems, 1, expr)
		require.Contains(t, problems[0], want)
	}

	c := maps.Clone(d)
	var kept []any
	for _, p := range c["panels"].([]any) {
		if p.(map[string]any)["title"] != "Waiting acquires" {
			kept = append(kept, p)
		}
	}
	require.Len(t, kept, len(c["panels"].([]any))-1)
	c["panels"] = kept
	b, err := json.Marshal(c)
	require.NoError(t, err)
	require.Equal(t, []string{"no panel shows waiting acquires"}, dashboardProblems(t, b, exported))
}
