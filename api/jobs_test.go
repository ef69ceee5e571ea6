package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
)

// failingRoute is a route that fails at once here (no webhook sender).
var failingRoute = map[string]any{"type": "https", "url": "https://hooks.example.com/x"}

// The service of these tests has no webhook sender and no websocket hub:
// a job of the default chain (one websocket route) waits for a worker that
// never comes, and one of failingRoute ends in error at once. Jobs are kept scheduled by suspending their semaphore, and
// inflight by a semaphore route with release: false into a suspended
// target (the parent holds its permit while the child waits).

// ---- helpers ----

func jobsPath(name string) string { return "/v1/semaphores/" + name + "/jobs" }

// enqueue enqueues a job into a semaphore of tenant acme as the worker.
func (e *env) enqueue(name string, body any) JobJSON {
	e.t.Helper()
	var out JobResponse
	e.expect(http.StatusAccepted, "", http.MethodPost, jobsPath(name), e.worker, body).into(&out)
	return out.Job
}

// job returns a job of tenant acme.
func (e *env) job(id string) JobJSON {
	e.t.Helper()
	var out JobResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/jobs/"+id, e.worker, nil).into(&out)
	return out.Job
}

// listJobs lists a semaphore's jobs with a query ("status=done&limit=2").
func (e *env) listJobs(name, query string) JobListResponse {
	e.t.Helper()
	var out JobListResponse
	e.expect(http.StatusOK, "", http.MethodGet, jobsPath(name)+"?"+query, e.worker, nil).into(&out)
	return out
}

// allJobs lists every job of a semaphore, following the cursor.
func (e *env) allJobs(name string) []JobJSON {
	e.t.Helper()
	var all []JobJSON
	cursor := ""
	for {
		page := e.listJobs(name, "limit=1000&cursor="+cursor)
		all = append(all, page.Jobs...)
		if page.NextCursor == "" {
			return all
		}
		cursor = page.NextCursor
	}
}

// jobAction posts release, cancel or requeue and returns the job.
func (e *env) jobAction(id, action string) JobJSON {
	e.t.Helper()
	var out JobResponse
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/jobs/"+id+"/"+action, e.worker, nil).into(&out)
	return out.Job
}

// waitJob polls a job until cond holds (the dispatcher works in the
// background).
func (e *env) waitJob(id string, cond func(JobJSON) bool) JobJSON {
	e.t.Helper()
	var j JobJSON
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if j = e.job(id); cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s stays %s (route %v, child %v)", id, j.Status, j.Route, j.Child)
		}
		<-tick.C
	}
}

// suspend suspends a semaphore of tenant acme: its jobs stay scheduled.
func (e *env) suspend(name string) {
	e.t.Helper()
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/"+name+"/suspend", e.admin, nil)
}

// holding creates semaphore name whose jobs stay inflight: they are handed
// to a suspended sink with release: false and hold their permit.
func (e *env) holding(name string) {
	e.t.Helper()
	e.put(name+"-sink", map[string]any{"maxValue": 100})
	e.suspend(name + "-sink")
	e.put(name, map[string]any{"maxValue": 10, "routes": []any{
		map[string]any{"type": "semaphore", "target": name + "-sink", "release": false},
	}})
}

// inflight enqueues into a holding semaphore and waits for the hand-off.
func (e *env) inflight(name string, payload any) JobJSON {
	e.t.Helper()
	j := e.enqueue(name, map[string]any{"payload": payload})
	return e.waitJob(j.ID, func(j JobJSON) bool { return j.Child != nil })
}

// unchangedJobs runs f and requires the semaphore (config and state) and
// every one of its jobs to be the same afterwards.
func (e *env) unchangedJobs(name string, f func()) {
	e.t.Helper()
	before := e.allJobs(name)
	e.unchanged(name, f)
	require.Equal(e.t, before, e.allJobs(name), "a rejected request changed the jobs of %s", name)
}

func ids(jobs []JobJSON) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

// ---- tests ----

func TestJobs_Enqueue(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("orders", map[string]any{"maxValue": 1})
	e.suspend("orders")

	j := e.enqueue("orders", map[string]any{"payload": map[string]any{"a": 1}})
	require.Equal(t, "orders", j.Semaphore)
	require.Equal(t, "default", j.Channel)
	require.JSONEq(t, `{"a":1}`, string(j.Payload))
	require.Equal(t, "scheduled", j.Status)
	require.Zero(t, j.Attempts)
	require.Nil(t, j.Lease)
	require.Nil(t, j.Route)
	require.Nil(t, j.Error)
	require.Nil(t, j.Parent)
	require.Nil(t, j.Child)
	require.Nil(t, j.FinishedAt)
	require.Equal(t, e.clock.Now(), j.CreatedAt)
	require.Equal(t, j, e.job(j.ID))

	eu := e.enqueue("orders", map[string]any{"channel": "eu", "payload": "text"})
	require.Equal(t, "eu", eu.Channel)
	require.JSONEq(t, `"text"`, string(eu.Payload))
	null := e.enqueue("orders", rawBody(`{"payload": null}`))
	require.JSONEq(t, `null`, string(null.Payload), "null is a payload")

	// The same idempotency key returns the same job, and queues nothing more.
	k1 := e.enqueue("orders", map[string]any{"payload": 1, "idempotencyKey": "k1"})
	e.unchangedJobs("orders", func() {
		again := e.enqueue("orders", map[string]any{"payload": 2, "idempotencyKey": "k1"})
		require.Equal(t, k1.ID, again.ID)
		require.JSONEq(t, `1`, string(again.Payload))
	})
	st := e.get("orders").State
	require.EqualValues(t, 4, st.Queued)
	require.EqualValues(t, 1, st.Channels["eu"].Queued)

	// An admin key may enqueue too (admin includes worker).
	var out JobResponse
	e.expect(http.StatusAccepted, "", http.MethodPost, jobsPath("orders"), e.admin, map[string]any{"payload": true}).into(&out)
	require.Equal(t, "scheduled", out.Job.Status)

	big := strings.Repeat("x", semaphore.DefaultMaxPayloadBytes) // + 2 quotes: over the limit
	huge := strings.Repeat("x", DefaultMaxBodyBytes)
	e.unchangedJobs("orders", func() {
		for _, tc := range []struct {
			status int
			code   string
			body   any
		}{
			{http.StatusBadRequest, CodeInvalidRequest, map[string]any{}},
			{http.StatusBadRequest, CodeInvalidRequest, map[string]any{"channel": "eu"}},
			{http.StatusBadRequest, CodeInvalidJSON, nil},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`{"payload": 1, "priority": 2}`)},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`{"payload": 1, "payload": 2}`)},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`{"payload": }`)},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`{"payload": 1, "channel": 5}`)},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`[]`)},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`{"payload": 1e999}`)},
			{http.StatusBadRequest, CodeInvalidJSON, rawBody(`{"payload": {"n": [1, -2E+400]}}`)},
			{http.StatusBadRequest, CodeInvalidRequest, map[string]any{"payload": 1, "channel": "-eu"}},
			{http.StatusBadRequest, CodeInvalidRequest, map[string]any{"payload": 1, "idempotencyKey": strings.Repeat("k", 257)}},
			{http.StatusRequestEntityTooLarge, CodePayloadTooLarge, map[string]any{"payload": big}},
			{http.StatusRequestEntityTooLarge, CodePayloadTooLarge, map[string]any{"payload": huge}},
		} {
			r := e.do(http.MethodPost, jobsPath("orders"), e.worker, tc.body)
			require.Equal(t, tc.status, r.Status, "%.200v: %s", tc.body, r.Body)
			require.Equal(t, tc.code, r.code(), "%.200v", tc.body)
		}
		// Within the payload limit, with room for the JSON around it: accepted
		// by the decoder but not by the payload check.
		require.Less(t, len(big)+20, DefaultMaxBodyBytes)

		r := e.do(http.MethodPost, jobsPath("orders"), e.worker, rawBody(`{"payload":1}`), "Content-Type", "text/plain")
		require.Equal(t, http.StatusUnsupportedMediaType, r.Status)
		e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodPost, jobsPath("orders"), "", map[string]any{"payload": 1})
		e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodPost, jobsPath("orders"), "sk_"+strings.Repeat("0", 43), map[string]any{"payload": 1})
		e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, jobsPath("nope"), e.worker, map[string]any{"payload": 1})
	})
	e.expect(http.StatusBadRequest, CodeInvalidName, http.MethodPost, jobsPath("-bad"), e.worker, map[string]any{"payload": 1})

	// A payload right at the limit is accepted.
	atLimit := `"` + strings.Repeat("y", semaphore.DefaultMaxPayloadBytes-2) + `"`
	j = e.enqueue("orders", rawBody(`{"payload":`+atLimit+`}`))
	require.Len(t, j.Payload, semaphore.DefaultMaxPayloadBytes)
}

func TestJobs_EnqueueDispatched(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.holding("h")
	j := e.enqueue("h", map[string]any{"payload": 1})
	require.Contains(t, []string{"scheduled", "inflight"}, j.Status)
	j = e.waitJob(j.ID, func(j JobJSON) bool { return j.Child != nil })
	require.Equal(t, "inflight", j.Status)
	require.Equal(t, 1, j.Attempts)
	require.NotNil(t, j.Lease)
	require.Equal(t, "h", j.Lease.Semaphore)
	require.Equal(t, "semaphore", *j.Route)
	require.Equal(t, JobRefJSON{ID: j.Child.ID, Semaphore: "h-sink", Hold: true}, *j.Child)
	child := e.job(j.Child.ID)
	require.Equal(t, "scheduled", child.Status)
	require.Equal(t, JobRefJSON{ID: j.ID, Semaphore: "h", Hold: true}, *child.Parent)
	require.EqualValues(t, 1, e.get("h").State.InUse)
	require.EqualValues(t, 1, e.get("h").State.Inflight)

	// With no worker subscribed, a job of the websocket route waits: no
	// permit, no attempt (decided in the enqueue's own operation).
	e.put("noworker", map[string]any{"maxValue": 1})
	j = e.enqueue("noworker", map[string]any{"payload": 1})
	require.Equal(t, "scheduled", j.Status)
	require.Equal(t, 0, j.Attempts)
	require.Nil(t, j.Lease)
	require.EqualValues(t, 0, e.get("noworker").State.InUse)
	require.EqualValues(t, 1, e.get("noworker").State.Queued)

	// With no route that can take it, a job ends in error.
	e.put("nowhere", map[string]any{"maxValue": 1, "maxAttempts": 1, "routes": []any{failingRoute}})
	j = e.enqueue("nowhere", map[string]any{"payload": 1})
	j = e.waitJob(j.ID, func(j JobJSON) bool { return j.Status == "error" })
	require.Equal(t, "every route failed: https: webhook delivery is not configured", *j.Error)
	require.NotNil(t, j.FinishedAt)
	require.Nil(t, j.Lease)
}

func TestJobs_QueueFull(t *testing.T) {
	t.Parallel()
	e := setupService(t, func(c *semaphore.Config) { c.MaxQueued = 2 })
	e.put("q", map[string]any{"maxValue": 1})
	e.suspend("q")
	first := e.enqueue("q", map[string]any{"payload": 1, "idempotencyKey": "one"})
	e.enqueue("q", map[string]any{"payload": 2})
	e.unchangedJobs("q", func() {
		e.expect(http.StatusTooManyRequests, CodeQueueFull, http.MethodPost, jobsPath("q"), e.worker, map[string]any{"payload": 3})
		// An idempotent replay is never refused.
		require.Equal(t, first.ID, e.enqueue("q", map[string]any{"payload": 1, "idempotencyKey": "one"}).ID)
	})
	// Room again once a job leaves the queue.
	e.jobAction(first.ID, "cancel")
	e.enqueue("q", map[string]any{"payload": 3})
}

func TestJobs_GetList(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("list", map[string]any{"maxValue": 1})
	e.suspend("list")
	var all []JobJSON
	for i := range 5 {
		ch := "default"
		if i%2 == 1 {
			ch = "eu"
		}
		all = append(all, e.enqueue("list", map[string]any{"payload": i, "channel": ch}))
		e.clock.Add(time.Millisecond)
	}
	for _, j := range all {
		require.Equal(t, j, e.job(j.ID))
	}

	page := e.listJobs("list", "")
	require.Equal(t, all, page.Jobs, "oldest first")
	require.Empty(t, page.NextCursor)

	// Cursor paging.
	var paged []JobJSON
	cursor, pages := "", 0
	for {
		p := e.listJobs("list", "limit=2&cursor="+cursor)
		require.LessOrEqual(t, len(p.Jobs), 2)
		paged = append(paged, p.Jobs...)
		pages++
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
		require.Less(t, pages, 5)
	}
	require.Equal(t, ids(all), ids(paged))
	require.Equal(t, 3, pages)

	// Filters.
	require.Equal(t, []string{all[1].ID, all[3].ID}, ids(e.listJobs("list", "channel=eu").Jobs))
	require.Len(t, e.listJobs("list", "status=scheduled").Jobs, 5)
	require.Empty(t, e.listJobs("list", "status=done").Jobs)
	e.jobAction(all[3].ID, "cancel")
	require.Equal(t, []string{all[3].ID}, ids(e.listJobs("list", "status=cancelled").Jobs))
	require.Equal(t, []string{all[1].ID}, ids(e.listJobs("list", "status=scheduled&channel=eu").Jobs))
	require.Empty(t, e.listJobs("list", "channel=us").Jobs)

	e.unchangedJobs("list", func() {
		for _, q := range []string{"status=bogus", "status=DONE", "channel=-x", "limit=x", "limit=0", "limit=-1", "limit=1001",
			"cursor=12", "cursor=x", "cursor=czph" /* a semaphores cursor ("s:a") */, "cursor=ajot"} {
			r := e.do(http.MethodGet, jobsPath("list")+"?"+q, e.worker, nil)
			require.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", q, r.Body)
			require.Equal(t, CodeInvalidRequest, r.code(), q)
			name, _, _ := strings.Cut(q, "=")
			require.Contains(t, r.message(), name, "%s: the message names the parameter", q)
		}
		e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, jobsPath("nope"), e.worker, nil)
		e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, jobsPath("list"), "", nil)
		e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/v1/jobs/"+all[0].ID, "", nil)
	})
	// The admin key reads jobs too.
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/jobs/"+all[0].ID, e.admin, nil)
	e.expect(http.StatusOK, "", http.MethodGet, jobsPath("list"), e.admin, nil)
}

func TestJobs_Transitions(t *testing.T) {
	t.Parallel()
	e := setup(t)
	conflict := func(name, id string, actions ...string) {
		t.Helper()
		e.unchangedJobs(name, func() {
			before := e.job(id)
			for _, a := range actions {
				e.expect(http.StatusConflict, CodeInvalidState, http.MethodPost, "/v1/jobs/"+id+"/"+a, e.worker, nil)
			}
			require.Equal(t, before, e.job(id))
		})
	}

	t.Run("scheduled", func(t *testing.T) {
		e := e.with(t)
		e.put("tr", map[string]any{"maxValue": 1})
		e.suspend("tr")
		j := e.enqueue("tr", map[string]any{"payload": 1})
		conflict("tr", j.ID, "release", "requeue")
		e.unchangedJobs("tr", func() {
			e.expect(http.StatusBadRequest, CodeInvalidJSON, http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", e.worker, rawBody(`{"x":1}`))
			r := e.do(http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", e.worker, rawBody(`{}`), "Content-Type", "text/plain")
			require.Equal(t, http.StatusUnsupportedMediaType, r.Status)
		})

		c := e.jobAction(j.ID, "cancel")
		require.Equal(t, "cancelled", c.Status)
		require.NotNil(t, c.FinishedAt)
		require.EqualValues(t, 0, e.get("tr").State.Queued)
		conflict("tr", j.ID, "release", "cancel")

		r := e.jobAction(j.ID, "requeue")
		require.Equal(t, "scheduled", r.Status)
		require.Zero(t, r.Attempts)
		require.Nil(t, r.FinishedAt)
		require.EqualValues(t, 1, e.get("tr").State.Queued)
		// A body of {} is allowed on an action.
		var out JobResponse
		e.expect(http.StatusOK, "", http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", e.worker, map[string]any{}).into(&out)
		require.Equal(t, "cancelled", out.Job.Status)
	})

	t.Run("inflight", func(t *testing.T) {
		e := e.with(t)
		e.holding("hold")
		j := e.inflight("hold", "a")
		conflict("hold", j.ID, "requeue")
		done := e.jobAction(j.ID, "release")
		require.Equal(t, "done", done.Status)
		require.Nil(t, done.Lease)
		require.NotNil(t, done.FinishedAt)
		require.EqualValues(t, 0, e.get("hold").State.InUse)
		conflict("hold", j.ID, "release", "cancel")

		k := e.inflight("hold", "b")
		require.EqualValues(t, 1, e.get("hold").State.InUse)
		c := e.jobAction(k.ID, "cancel")
		require.Equal(t, "cancelled", c.Status)
		require.EqualValues(t, 0, e.get("hold").State.InUse, "a cancelled job frees its permit")
		conflict("hold", k.ID, "release", "cancel")
	})

	t.Run("error", func(t *testing.T) {
		e := e.with(t)
		e.put("fails", map[string]any{"maxValue": 1, "maxAttempts": 1, "routes": []any{failingRoute}})
		j := e.enqueue("fails", map[string]any{"payload": 1})
		j = e.waitJob(j.ID, func(j JobJSON) bool { return j.Status == "error" })
		conflict("fails", j.ID, "release", "cancel")
		r := e.jobAction(j.ID, "requeue")
		require.Contains(t, []string{"scheduled", "inflight", "error"}, r.Status)
		r = e.waitJob(j.ID, func(j JobJSON) bool { return j.Status == "error" })
		require.Equal(t, 1, r.Attempts, "requeue resets the attempts")
	})
}

func TestJobs_Purge(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("pg", map[string]any{"maxValue": 1})
	e.suspend("pg")
	var jobs []JobJSON
	for i := range 4 {
		jobs = append(jobs, e.enqueue("pg", map[string]any{"payload": i}))
	}
	e.jobAction(jobs[0].ID, "cancel")
	e.holding("ph")
	e.inflight("ph", 1)

	e.unchangedJobs("pg", func() {
		e.expect(http.StatusBadRequest, CodeInvalidRequest, http.MethodDelete, jobsPath("pg"), e.worker, nil)
		e.expect(http.StatusBadRequest, CodeInvalidRequest, http.MethodDelete, jobsPath("pg")+"?status=bogus", e.worker, nil)
		e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodDelete, jobsPath("nope")+"?status=scheduled", e.worker, nil)
		e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodDelete, jobsPath("pg")+"?status=scheduled", "", nil)
	})
	e.unchangedJobs("ph", func() {
		e.expect(http.StatusConflict, CodeInvalidState, http.MethodDelete, jobsPath("ph")+"?status=inflight", e.worker, nil)
	})

	var out PurgeResponse
	e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("pg")+"?status=scheduled", e.worker, nil).into(&out)
	require.Equal(t, PurgeResponse{Purged: 3}, out)
	require.Equal(t, []string{jobs[0].ID}, ids(e.allJobs("pg")))
	require.EqualValues(t, 0, e.get("pg").State.Queued)
	e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+jobs[1].ID, e.worker, nil)

	e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("pg")+"?status=done", e.admin, nil).into(&out)
	require.Equal(t, 0, out.Purged)
	e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("pg")+"?status=cancelled", e.worker, nil).into(&out)
	require.Equal(t, 1, out.Purged)
	require.Empty(t, e.allJobs("pg"))
}

func TestJobs_NotFoundAndTenants(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("orders", map[string]any{"maxValue": 1})
	e.suspend("orders")
	j := e.enqueue("orders", map[string]any{"payload": "acme's"})

	// Another tenant with a semaphore of the same name.
	var tc TenantCreatedResponse
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": "other"}).into(&tc)
	other := tc.Key.Secret
	e.expect(http.StatusOK, "", http.MethodPut, "/v1/semaphores/orders", other, map[string]any{"maxValue": 1})
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/orders/suspend", other, nil)

	// An id of the right shape that was never issued.
	unknown := store.NewJobID("orders")
	e.unchangedJobs("orders", func() {
		for _, id := range []string{"nope", unknown, j.ID + "x", strings.Repeat("a", 300)} {
			e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+id, e.worker, nil)
			for _, a := range []string{"release", "cancel", "requeue"} {
				e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodPost, "/v1/jobs/"+id+"/"+a, e.worker, nil)
			}
		}
		// Acme's job is invisible to the other tenant and to the operator
		// of the default tenant.
		for _, key := range []string{other, e.operator} {
			e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+j.ID, key, nil)
			for _, a := range []string{"release", "cancel", "requeue"} {
				e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodPost, "/v1/jobs/"+j.ID+"/"+a, key, nil)
			}
		}
		var page JobListResponse
		e.expect(http.StatusOK, "", http.MethodGet, jobsPath("orders"), other, nil).into(&page)
		require.Empty(t, page.Jobs)
		var out PurgeResponse
		e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("orders")+"?status=scheduled", other, nil).into(&out)
		require.Zero(t, out.Purged)
		e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, jobsPath("orders"), e.operator, nil)
	})

	// The other tenant's own job is its own.
	var oj JobResponse
	e.expect(http.StatusAccepted, "", http.MethodPost, jobsPath("orders"), other, map[string]any{"payload": "other's"}).into(&oj)
	e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+oj.Job.ID, e.worker, nil)
	require.Equal(t, []string{j.ID}, ids(e.allJobs("orders")))
}

// FuzzDecodeEnqueue feeds arbitrary bodies to the enqueue decoding and
// validation: nothing panics, and whatever is accepted is within the limits.
func FuzzDecodeEnqueue(f *testing.F) {
	for _, s := range []string{
		`{"payload":1}`, `{}`, `null`, `{"payload":null}`, `{"payload":{"a":[1,2,{"b":null}]}}`,
		`{"channel":"eu","payload":"x","idempotencyKey":"k"}`, `{"channel":"-eu","payload":1}`, `{"channel":"","payload":1}`,
		`{"payload":1,"payload":2}`, `{"Payload":1}`, `{"payload":1,"x":1}`, `[]`, `{"payload":}`, `{"payload":1} {}`,
		`{"idempotencyKey":5,"payload":1}`, "{\"payload\":\"\xff\"}", `{"payload":1e999}`, `{"payload":  true  }`,
	} {
		f.Add([]byte(s))
	}
	// The service's checks on a store without semaphores: input that passes
	// them reaches the store and is answered ErrSemaphoreNotFound.
	svc, err := semaphore.New(semaphore.Config{Store: memory.New(memory.Options{})})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req EnqueueRequest
		if err := decodeJSON(data, &req); err != nil {
			var ae *apiError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, CodeInvalidJSON, ae.Code)
			return
		}
		if req.Payload == nil {
			return // the handler answers 400 invalid_request
		}
		_, _, err := svc.Enqueue(t.Context(), "t", "s", semaphore.EnqueueInput{
			Channel: req.Channel, Payload: req.Payload, IdempotencyKey: req.IdempotencyKey,
		})
		var ve *semaphore.ValidationError
		switch {
		case err == nil:
			t.Fatal("the store refuses every enqueue")
		case errors.As(err, &ve):
			require.Contains(t, []string{semaphore.CodeInvalidRequest, semaphore.CodePayloadTooLarge, semaphore.CodeInvalidJSON}, ve.Code, ve.Message)
			require.Contains(t, ve.Message, ve.Field)
		default:
			require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
			// Accepted input is within the limits.
			require.True(t, json.Valid(req.Payload))
			require.LessOrEqual(t, len(req.Payload), len(data))
			require.LessOrEqual(t, len(req.IdempotencyKey), semaphore.MaxIdempotencyKeyBytes)
			require.True(t, req.Channel == "" || semaphore.ValidName(req.Channel), "channel %q", req.Channel)
		}
	})
}
