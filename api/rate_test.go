package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

// Rate limits (SPEC §2.6, §4 rate): the config, its validation, the JSON
// shapes, and the 409 no_permit with Retry-After of an acquire without
// wait that the rate refuses.

// rawSemaphore returns GET /v1/semaphores/{name}'s "semaphore" as a map,
// to see which fields are null.
func (e *env) rawSemaphore(name string) map[string]any {
	e.t.Helper()
	var out struct {
		Semaphore map[string]any `json:"semaphore"`
	}
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores/"+name, e.admin, nil).into(&out)
	return out.Semaphore
}

// counterValue is the value of an unlabelled counter of reg (0 when it
// has no sample yet).
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestRate_Config(t *testing.T) {
	t.Parallel()
	e := setup(t)

	sem := e.put("api", map[string]any{"maxValue": 10, "rate": map[string]any{"limit": 100, "period": "1m"}})
	require.Equal(t, &RateJSON{Limit: 100, Period: Duration(time.Minute)}, sem.Rate)
	raw := e.rawSemaphore("api")
	require.Equal(t, map[string]any{"limit": 100.0, "period": "1m0s"}, raw["rate"])
	st := raw["state"].(map[string]any)
	require.Contains(t, st, "rateUsed")
	require.Contains(t, st, "rateNextAt")
	require.EqualValues(t, 0, st["rateUsed"], "nothing granted yet")
	require.Nil(t, st["rateNextAt"], "an empty window: null")

	var list SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores", e.admin, nil).into(&list)
	require.Len(t, list.Semaphores, 1)
	require.Equal(t, &RateJSON{Limit: 100, Period: Duration(time.Minute)}, list.Semaphores[0].Rate)

	// The config is replaced as a whole: no rate, or rate null, removes it.
	require.Nil(t, e.put("api", map[string]any{"maxValue": 10}).Rate)
	raw = e.rawSemaphore("api")
	require.Contains(t, raw, "rate")
	require.Nil(t, raw["rate"], "no rate: null")
	e.put("api", map[string]any{"maxValue": 10, "rate": map[string]any{"limit": 5, "period": "1h"}})
	require.Equal(t, &RateJSON{Limit: 5, Period: Duration(time.Hour)}, e.get("api").Rate)
	require.Nil(t, e.put("api", map[string]any{"maxValue": 10, "rate": nil}).Rate)
	require.Nil(t, e.get("api").Rate)

	// The bounds are accepted; null fields inside count as absent.
	for _, r := range []struct {
		in   string
		want RateJSON
	}{
		{`{"limit": 1, "period": "1s"}`, RateJSON{1, Duration(time.Second)}},
		{`{"limit": 1000000, "period": "24h"}`, RateJSON{1000000, Duration(24 * time.Hour)}},
		{`{"period": "1500ms", "limit": 7}`, RateJSON{7, Duration(1500 * time.Millisecond)}},
	} {
		sem := e.put("api", map[string]any{"maxValue": 10, "rate": json.RawMessage(r.in)})
		require.Equal(t, &r.want, sem.Rate, r.in)
	}

	// Bad rates: 400 invalid_config naming the field, and nothing changes.
	e.put("api", map[string]any{"maxValue": 10, "rate": map[string]any{"limit": 100, "period": "1m"}})
	for _, c := range []struct{ rate, field, message string }{
		{`5`, "rate", `rate must be an object {"limit": n, "period": "1m"} or null, got a number`},
		{`"100/1m"`, "rate", `rate must be an object {"limit": n, "period": "1m"} or null, got a string`},
		{`[100, "1m"]`, "rate", `rate must be an object {"limit": n, "period": "1m"} or null, got an array`},
		{`true`, "rate", `rate must be an object {"limit": n, "period": "1m"} or null, got a boolean`},
		{`{"limit": 100, "period": "1m", "burst": 5}`, "rate", `rate has an unknown field "burst": its fields are limit and period`},
		{`{}`, "rate.limit", `rate.limit is required (an integer between 1 and 1000000)`},
		{`{"limit": null, "period": "1m"}`, "rate.limit", `rate.limit is required (an integer between 1 and 1000000)`},
		{`{"limit": 0, "period": "1m"}`, "rate.limit", `rate.limit must be between 1 and 1000000, got 0`},
		{`{"limit": -3, "period": "1m"}`, "rate.limit", `rate.limit must be between 1 and 1000000, got -3`},
		{`{"limit": 1000001, "period": "1m"}`, "rate.limit", `rate.limit must be between 1 and 1000000, got 1000001`},
		{`{"limit": 1.5, "period": "1m"}`, "rate.limit", `rate.limit must be an integer between 1 and 1000000, got 1.5`},
		{`{"limit": "100", "period": "1m"}`, "rate.limit", `rate.limit must be an integer between 1 and 1000000, got a string`},
		{`{"limit": 1e30, "period": "1m"}`, "rate.limit", `rate.limit must be an integer between 1 and 1000000, got 1e30`},
		{`{"limit": 100}`, "rate.period", `rate.period is required (a duration between 1s and 24h0m0s, such as "1m")`},
		{`{"limit": 100, "period": 60}`, "rate.period", `rate.period must be a duration string such as "1m", got a number`},
		{`{"limit": 100, "period": "1 minute"}`, "rate.period", `rate.period must be a duration such as "1m", got "1 minute"`},
		{`{"limit": 100, "period": "999ms"}`, "rate.period", `rate.period must be between 1s and 24h0m0s, got 999ms`},
		{`{"limit": 100, "period": "-1m"}`, "rate.period", `rate.period must be between 1s and 24h0m0s, got -1m0s`},
		{`{"limit": 100, "period": "24h0m1s"}`, "rate.period", `rate.period must be between 1s and 24h0m0s, got 24h0m1s`},
	} {
		t.Run(c.rate, func(t *testing.T) {
			e := e.with(t)
			e.unchanged("api", func() {
				body := rawBody(`{"maxValue": 10, "rate": ` + c.rate + `}`)
				r := e.expect(http.StatusBadRequest, CodeInvalidConfig, http.MethodPut, "/v1/semaphores/api", e.admin, body)
				require.Equal(t, c.message, r.message())
				require.True(t, strings.HasPrefix(r.message(), c.field+" "), "the message names %s: %s", c.field, r.message())
			})
		})
	}
	// A bad rate creates nothing either.
	e.expect(http.StatusBadRequest, CodeInvalidConfig, http.MethodPut, "/v1/semaphores/fresh", e.admin,
		rawBody(`{"maxValue": 1, "rate": {"limit": 0, "period": "1m"}}`))
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, "/v1/semaphores/fresh", e.admin, nil)
}

// rateStub is a store whose acquires on semaphores named "limited…" are
// refused for the rate, with NextAt = the store clock's now + in. Its
// other calls are the memory store's. It tests the API's side of a
// refusal whatever the stores do.
type rateStub struct {
	store.Store
	now func() time.Time

	mu sync.Mutex
	in time.Duration
}

func (s *rateStub) set(in time.Duration) {
	s.mu.Lock()
	s.in = in
	s.mu.Unlock()
}

func (s *rateStub) Acquire(ctx context.Context, p store.AcquireParams) (store.Lease, error) {
	if !strings.HasPrefix(p.Semaphore, "limited") || p.Wait > 0 {
		return s.Store.Acquire(ctx, p)
	}
	sem, err := s.Store.GetSemaphore(ctx, p.Tenant, p.Semaphore)
	if err != nil {
		return store.Lease{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &store.RateLimitedError{NextAt: s.now().Add(s.in), Wait: s.in}
	if r := sem.Config.Rate; r != nil {
		e.Limit, e.Period = r.Limit, r.Period
		if sem.Config.MaxValueScope == store.ScopeChannel {
			e.Channel = p.Channel
		}
	}
	return store.Lease{}, e
}

// TestRate_RefusalAnswer: the 409 of an acquire the store refuses for
// the rate carries Retry-After (whole seconds, rounded up, at least 1, at
// most the period) and a message naming the rate; a plain no_permit has
// neither. Every refusal is counted.
func TestRate_RefusalAnswer(t *testing.T) {
	t.Parallel()
	stub := &rateStub{in: 3200 * time.Millisecond}
	e := setupService(t, func(c *semaphore.Config) {
		stub.Store, stub.now = c.Store, time.Now
		c.Store = stub
	})
	rate := map[string]any{"limit": 100, "period": "1m"}
	e.put("limited", map[string]any{"maxValue": 5, "rate": rate})
	e.put("limited-ch", map[string]any{"maxValue": 5, "maxValueScope": "channel", "rate": rate})
	e.put("limited-norate", map[string]any{"maxValue": 5})
	e.put("full", map[string]any{"maxValue": 1, "rate": rate})

	refused := func(name string, body any, retryAfter, message string) {
		t.Helper()
		r := e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/"+name+"/acquire", e.worker, body)
		require.Equal(t, retryAfter, r.Header.Get("Retry-After"), "%s", r.Body)
		require.Equal(t, message, r.message())
	}
	refused("limited", nil, "4", "rate limit of 100 per 1m0s reached: the next unit frees in 3.2s")
	refused("limited", map[string]any{"weight": 3}, "4", "rate limit of 100 per 1m0s reached: room for weight 3 frees in 3.2s")
	refused("limited-ch", map[string]any{"channel": "cust-1"}, "4",
		`rate limit of 100 per 1m0s reached in channel "cust-1": the next unit frees in 3.2s`)
	refused("limited-norate", nil, "4", "rate limit reached: the next unit frees in 3.2s")
	stub.set(400 * time.Millisecond)
	refused("limited", nil, "1", "rate limit of 100 per 1m0s reached: the next unit frees in 400ms")
	stub.set(5 * time.Second)
	refused("limited", nil, "5", "rate limit of 100 per 1m0s reached: the next unit frees in 5s")
	stub.set(5*time.Second + time.Millisecond)
	refused("limited", nil, "6", "rate limit of 100 per 1m0s reached: the next unit frees in 5s")
	stub.set(-time.Second) // already past by this clock
	refused("limited", nil, "1", "rate limit of 100 per 1m0s reached: the next unit frees in 1ms")
	require.EqualValues(t, 8, counterValue(t, e.reg, "semaphored_rate_limited_total"))

	// A plain no_permit (no free permit) has no Retry-After.
	e.acquire("full", nil)
	r := e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/full/acquire", e.worker, nil)
	require.Empty(t, r.Header.Values("Retry-After"))
	require.Equal(t, "no permit available within the wait", r.message())
	require.EqualValues(t, 8, counterValue(t, e.reg, "semaphored_rate_limited_total"), "not a rate refusal")
	// Other errors stay what they were.
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/limited-nope/acquire", e.worker, nil)
}

// TestRate_WSRejected: over the websocket, a refusal for the rate is a
// rejected frame with the same code and message, and retryAfter.
func TestRate_WSRejected(t *testing.T) {
	stub := &rateStub{now: time.Now, in: 3200 * time.Millisecond}
	e := setupWS(t, 1, wsOptions{wrap: func(st store.Store) store.Store {
		stub.Store = st
		return stub
	}})
	e.put("limited", map[string]any{"maxValue": 5, "rate": map[string]any{"limit": 100, "period": "1m"}})
	e.put("full", map[string]any{"maxValue": 1})
	c := e.dial(0)

	r := c.request("rejected", map[string]any{"type": "acquire", "semaphore": "limited"})
	require.Equal(t, CodeNoPermit, r.Error.Code)
	require.Equal(t, "rate limit of 100 per 1m0s reached: the next unit frees in 3.2s", r.Error.Message)
	require.EqualValues(t, 4, r.Error.RetryAfter)

	c.request("acquired", map[string]any{"type": "acquire", "semaphore": "full"})
	r = c.request("rejected", map[string]any{"type": "acquire", "semaphore": "full"})
	require.Equal(t, CodeNoPermit, r.Error.Code)
	require.Equal(t, "no permit available within the wait", r.Error.Message)
	require.Zero(t, r.Error.RetryAfter, "a plain no_permit has no retryAfter")
}

// ---- with the memory store's rate (store/memory) ----

// TestRate_Memory drives a rate through the API on the memory store with
// a fake clock: the window, its state, the refusals and their
// Retry-After, removal, scopes.
func TestRate_Memory(t *testing.T) {
	t.Parallel()
	e := setup(t)
	t0 := e.clock.Now()
	e.put("api", map[string]any{"maxValue": 10, "rate": map[string]any{"limit": 2, "period": "1m"}})

	refused := func(name string, body any, retryAfter, message string) {
		t.Helper()
		r := e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/"+name+"/acquire", e.worker, body)
		require.Equal(t, retryAfter, r.Header.Get("Retry-After"), "%s", r.Body)
		require.Equal(t, message, r.message())
	}
	stateOf := func(name string) map[string]any {
		t.Helper()
		return e.rawSemaphore(name)["state"].(map[string]any)
	}

	l1 := e.acquire("api", nil)
	e.clock.Add(300 * time.Millisecond)
	l2 := e.acquire("api", nil)
	st := stateOf("api")
	require.EqualValues(t, 2, st["rateUsed"])
	require.Equal(t, t0.Add(time.Minute).UTC().Format(time.RFC3339Nano), st["rateNextAt"])
	require.EqualValues(t, 2, st["inUse"])
	def := st["channels"].(map[string]any)["default"].(map[string]any)
	require.EqualValues(t, 2, def["rateUsed"])
	require.Equal(t, st["rateNextAt"], def["rateNextAt"])

	e.clock.Add(20*time.Second - 300*time.Millisecond) // t0+20s
	refused("api", nil, "40", "rate limit of 2 per 1m0s reached: the next unit frees in 40s")
	// The rate counts grants, not holders: releasing frees no rate room.
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l1.ID+"/release", e.worker, nil)
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l2.ID+"/release", e.worker, nil)
	refused("api", nil, "40", "rate limit of 2 per 1m0s reached: the next unit frees in 40s")
	e.clock.Add(39500 * time.Millisecond) // t0+59.5s
	refused("api", nil, "1", "rate limit of 2 per 1m0s reached: the next unit frees in 500ms")
	e.clock.Add(500 * time.Millisecond) // t0+60s: the first grant left the window
	e.acquire("api", nil)
	st = stateOf("api")
	require.EqualValues(t, 2, st["rateUsed"])
	require.Equal(t, t0.Add(time.Minute+300*time.Millisecond).UTC().Format(time.RFC3339Nano), st["rateNextAt"])
	refused("api", nil, "1", "rate limit of 2 per 1m0s reached: the next unit frees in 300ms")
	require.EqualValues(t, 4, counterValue(t, e.reg, "semaphored_rate_limited_total"))
	m := string(e.expect(http.StatusOK, "", http.MethodGet, "/metrics", e.operator, nil).Body)
	require.Contains(t, m, `semaphored_rate_used{semaphore="api",tenant="acme"} 2`)
	require.Contains(t, m, `semaphored_rate_limit{semaphore="api",tenant="acme"} 2`)

	// A weight above the limit can never be granted.
	e.expect(http.StatusConflict, CodeWeightTooLarge, http.MethodPost, "/v1/semaphores/api/acquire", e.worker, map[string]any{"weight": 3})

	// rate: null removes the rate: the full window no longer matters.
	e.put("api", map[string]any{"maxValue": 10, "rate": nil})
	e.acquire("api", nil)
	e.acquire("api", nil)
	raw := e.rawSemaphore("api")
	require.Nil(t, raw["rate"])
	st = raw["state"].(map[string]any)
	require.EqualValues(t, 0, st["rateUsed"])
	require.Nil(t, st["rateNextAt"])
	require.NotContains(t, string(e.expect(http.StatusOK, "", http.MethodGet, "/metrics", e.operator, nil).Body),
		`semaphored_rate_used{semaphore="api"`, "no rate, no rate series")

	// A full semaphore whose rate has room: a plain no_permit.
	e.put("db", map[string]any{"maxValue": 1, "rate": map[string]any{"limit": 100, "period": "1m"}})
	e.acquire("db", nil)
	r := e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/db/acquire", e.worker, nil)
	require.Empty(t, r.Header.Values("Retry-After"))
	require.Equal(t, "no permit available within the wait", r.message())

	// Scope total: one window for every channel.
	e.put("shared", map[string]any{"maxValue": 5, "rate": map[string]any{"limit": 1, "period": "1m"}})
	e.acquire("shared", map[string]any{"channel": "a"})
	refused("shared", map[string]any{"channel": "b"}, "60", "rate limit of 1 per 1m0s reached: the next unit frees in 1m0s")
	st = stateOf("shared")
	require.EqualValues(t, 1, st["rateUsed"])
	chs := st["channels"].(map[string]any)
	require.EqualValues(t, 1, chs["a"].(map[string]any)["rateUsed"])

	// Scope channel: a window per channel; the top level is the default
	// channel's.
	e.put("per-cust", map[string]any{"maxValue": 5, "maxValueScope": "channel", "rate": map[string]any{"limit": 1, "period": "1m"}})
	e.acquire("per-cust", map[string]any{"channel": "cust-a"})
	refused("per-cust", map[string]any{"channel": "cust-a"}, "60",
		`rate limit of 1 per 1m0s reached in channel "cust-a": the next unit frees in 1m0s`)
	e.clock.Add(10 * time.Second)
	e.acquire("per-cust", map[string]any{"channel": "cust-b"})
	st = stateOf("per-cust")
	chs = st["channels"].(map[string]any)
	require.EqualValues(t, 1, chs["cust-a"].(map[string]any)["rateUsed"])
	require.EqualValues(t, 1, chs["cust-b"].(map[string]any)["rateUsed"])
	tb := e.clock.Now()
	require.Equal(t, tb.Add(time.Minute).UTC().Format(time.RFC3339Nano), chs["cust-b"].(map[string]any)["rateNextAt"])
	require.EqualValues(t, 0, st["rateUsed"], "the default channel's window is empty")
	require.Nil(t, st["rateNextAt"])
	e.acquire("per-cust", nil) // the default channel has its own room
}

// TestRate_MemoryWS: the memory store's refusal over the websocket, on
// the real clock.
func TestRate_MemoryWS(t *testing.T) {
	e := setupWS(t, 1, wsOptions{})
	e.put("api", map[string]any{"maxValue": 5, "rate": map[string]any{"limit": 1, "period": "1m"}})
	c := e.dial(0)
	c.request("acquired", map[string]any{"type": "acquire", "semaphore": "api"})
	r := c.request("rejected", map[string]any{"type": "acquire", "semaphore": "api"})
	require.Equal(t, CodeNoPermit, r.Error.Code)
	require.Regexp(t, `^rate limit of 1 per 1m0s reached: the next unit frees in (59\.\ds|1m0s)$`, r.Error.Message)
	require.EqualValues(t, 60, r.Error.RetryAfter)
}
