package semaphore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/delivery"
	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// These tests run the async mode end to end: the service on the memory and
// the Redis store, the real webhook sender and httptest receivers on
// loopback. They wait by polling the store with a deadline, never by
// sleeping for an event.

// ---- environment ----

// denv is a started service with a real webhook sender.
type denv struct {
	t      *testing.T
	svc    *semaphore.Service
	st     store.Store
	reg    *prometheus.Registry
	tenant string
}

// forEachStore runs f, in parallel, on the memory store and on the Redis
// store.
func forEachStore(t *testing.T, f func(t *testing.T, e *denv)) {
	for _, kind := range []string{"memory", "redis"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			f(t, newDispatchEnv(t, kind))
		})
	}
}

// with returns a copy of e that reports to t (for subtests).
func (e *denv) with(t *testing.T) *denv {
	c := *e
	c.t = t
	return &c
}

func newDispatchEnv(t *testing.T, kind string) *denv {
	t.Helper()
	var st store.Store
	switch kind {
	case "memory":
		st = memory.New(memory.Options{})
	case "redis":
		rs, err := redisstore.New(testredis.Client(t), redisstore.Options{Prefix: testredis.Prefix(t)})
		require.NoError(t, err)
		st = rs
	default:
		t.Fatalf("unknown store %q", kind)
	}
	// BackoffMax above 1s so that a Retry-After of 1 is honoured as is.
	sender, err := delivery.NewWebhookSender(delivery.WebhookConfig{
		AllowPrivate: true, BackoffBase: 10 * time.Millisecond, BackoffMax: 2 * time.Second,
	})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	svc, err := semaphore.New(semaphore.Config{
		Store: st, Registerer: reg, SweepInterval: 20 * time.Millisecond,
		Webhooks: sender, Routing: routing.Options{AllowPrivate: true},
	})
	require.NoError(t, err)
	require.NoError(t, svc.Start(context.Background()))
	t.Cleanup(func() {
		svc.Stop()
		sender.Close()
		_ = st.Close()
	})
	return &denv{t: t, svc: svc, st: st, reg: reg, tenant: "acme"}
}

// semCfg is a semaphore config; routes and mapping are JSON.
type semCfg struct {
	MaxValue        int64
	LeaseTimeout    time.Duration
	MaxAttempts     int
	OnDeliveryError string
	Routes          string
	Mapping         string
	Retry           string // JSON
}

func (c semCfg) input() semaphore.ConfigInput {
	in := semaphore.ConfigInput{MaxValue: ptr(c.MaxValue), OnDeliveryError: c.OnDeliveryError}
	if c.LeaseTimeout > 0 {
		in.LeaseTimeout = ptr(c.LeaseTimeout)
	}
	if c.MaxAttempts > 0 {
		in.MaxAttempts = ptr(c.MaxAttempts)
	}
	if c.Routes != "" {
		in.Routes = json.RawMessage(c.Routes)
	}
	if c.Mapping != "" {
		in.Mapping = json.RawMessage(c.Mapping)
	}
	if c.Retry != "" {
		in.Retry = json.RawMessage(c.Retry)
	}
	return in
}

func (e *denv) put(name string, c semCfg) store.Semaphore {
	e.t.Helper()
	sem, _, err := e.svc.PutSemaphore(context.Background(), e.tenant, name, c.input())
	require.NoError(e.t, err, "put %s", name)
	return sem
}

func (e *denv) enqueue(name, payload string) store.Job {
	e.t.Helper()
	j, created, err := e.svc.Enqueue(context.Background(), e.tenant, name, semaphore.EnqueueInput{Payload: json.RawMessage(payload)})
	require.NoError(e.t, err)
	require.True(e.t, created)
	return j
}

func (e *denv) job(id string) store.Job {
	e.t.Helper()
	j, err := e.svc.GetJob(context.Background(), e.tenant, id)
	require.NoError(e.t, err)
	return j
}

func (e *denv) state(name string) store.SemaphoreState {
	e.t.Helper()
	_, st, err := e.svc.GetSemaphore(context.Background(), e.tenant, name)
	require.NoError(e.t, err)
	return st
}

// eventually polls cond every few milliseconds until it holds or within
// passes; then it fails with cond's last description.
func eventually(t *testing.T, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, desc)
		}
		<-tick.C
	}
}

// waitJob waits until the job has status want and returns it.
func (e *denv) waitJob(id string, want store.JobStatus, within time.Duration) store.Job {
	e.t.Helper()
	var j store.Job
	eventually(e.t, within, func() (bool, string) {
		var err error
		j, err = e.svc.GetJob(context.Background(), e.tenant, id)
		if err != nil {
			return false, err.Error()
		}
		return j.Status == want, fmt.Sprintf("job %s is %s (error %q), want %s", id, j.Status, j.Error, want)
	})
	return j
}

// waitIdle waits until the semaphore holds no permit and has no job
// scheduled or inflight.
func (e *denv) waitIdle(name string, within time.Duration) {
	e.t.Helper()
	eventually(e.t, within, func() (bool, string) {
		st := e.state(name)
		return st.InUse == 0 && st.Queued == 0 && st.Inflight == 0, fmt.Sprintf("%s state %+v", name, st.ChannelState)
	})
}

// finished sums semaphored_jobs_finished_total over its statuses.
func (e *denv) finished() map[string]float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	require.NoError(e.t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "semaphored_jobs_finished_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] += m.GetCounter().GetValue()
		}
	}
	return out
}

// routeSecret returns the secret of the semaphore's https route to url, or
// the mapping's secret when url is "".
func routeSecret(t *testing.T, sem store.Semaphore, url string) string {
	t.Helper()
	rc, err := routing.DecodeExtra(sem.Config.Extra)
	require.NoError(t, err)
	if url == "" {
		require.NotNil(t, rc.Mapping)
		return rc.Mapping.Secret
	}
	for _, r := range rc.Routes {
		if r.Type == routing.TypeHTTPS && r.URL == url {
			require.True(t, strings.HasPrefix(r.Secret, routing.SecretPrefix))
			return r.Secret
		}
	}
	t.Fatalf("no https route to %s", url)
	return ""
}

// ---- webhook receivers ----

// hit is one request a receiver got.
type hit struct {
	n      int // 1-based arrival number
	at     time.Time
	header http.Header
	raw    []byte
	body   webhookBody
}

type webhookBody struct {
	ID        string `json:"id"`
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel"`
	Attempt   int    `json:"attempt"`
	Lease     struct {
		ID           string `json:"id"`
		Semaphore    string `json:"semaphore"`
		FencingToken int64  `json:"fencingToken"`
	} `json:"lease"`
	Payload json.RawMessage `json:"payload"`
}

// receiver is an httptest webhook target on loopback that records every
// request and answers with its answer function.
type receiver struct {
	url string
	mu  sync.Mutex
	got []hit
}

func newReceiver(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, h hit)) *receiver {
	t.Helper()
	rc := &receiver{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		h := hit{at: time.Now(), header: r.Header.Clone(), raw: raw}
		_ = json.Unmarshal(raw, &h.body)
		rc.mu.Lock()
		h.n = len(rc.got) + 1
		rc.got = append(rc.got, h)
		rc.mu.Unlock()
		answer(w, r, h)
	}))
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
	})
	rc.url = ts.URL + "/hook"
	return rc
}

// status answers every request with code.
func status(code int) func(http.ResponseWriter, *http.Request, hit) {
	return func(w http.ResponseWriter, _ *http.Request, _ hit) { w.WriteHeader(code) }
}

func (rc *receiver) hits() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

// waitHits waits until the receiver got at least n requests.
func (rc *receiver) waitHits(t *testing.T, n int, within time.Duration) []hit {
	t.Helper()
	eventually(t, within, func() (bool, string) {
		got := len(rc.hits())
		return got >= n, fmt.Sprintf("%s got %d requests, want %d", rc.url, got, n)
	})
	return rc.hits()
}

// verify checks a delivery's Standard Webhooks headers with secret.
func verify(t *testing.T, secret string, h hit) {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	require.NoError(t, wh.Verify(h.raw, h.header), "signature of delivery %d", h.n)
	require.Equal(t, h.body.ID, h.header.Get("webhook-id"))
}

func httpsRoute(url string, extra string) string {
	return fmt.Sprintf(`{"type":"https","url":%q%s}`, url, extra)
}

// ---- tests ----

// TestDispatcher_Burst: 200 jobs into maxValue 5 with an https route. The
// receiver never sees more than 5 unreleased jobs at once, dispatch follows
// enqueue order (FIFO in a channel), every delivery is signed with the
// route's secret, and every job ends done.
func TestDispatcher_Burst(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		const maxValue, jobs = 5, 200
		var cur, peak atomic.Int64
		arrivals := make(chan hit, 2*jobs)
		rcv := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, h hit) {
			c := cur.Add(1)
			for p := peak.Load(); c > p && !peak.CompareAndSwap(p, c); p = peak.Load() {
			}
			arrivals <- h
			w.WriteHeader(http.StatusOK)
		})
		sem := e.put("burst", semCfg{MaxValue: maxValue, Routes: "[" + httpsRoute(rcv.url, `,"attempts":1`) + "]"})
		secret := routeSecret(t, sem, rcv.url)

		// Workers release each delivered job after a short hold.
		var (
			released atomic.Int64
			allDone  = make(chan struct{})
			stop     = make(chan struct{})
			wg       sync.WaitGroup
		)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					case h := <-arrivals:
						time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond) // the work
						cur.Add(-1)
						_, err := e.svc.ReleaseJob(context.Background(), e.tenant, h.body.ID)
						assert.NoError(t, err, "release %s", h.body.ID)
						if released.Add(1) == jobs {
							close(allDone)
						}
					}
				}
			}()
		}
		defer func() {
			close(stop)
			wg.Wait()
		}()

		ids := make([]string, jobs)
		for i := range ids {
			ids[i] = e.enqueue("burst", fmt.Sprintf(`{"n":%d}`, i)).ID
		}
		select {
		case <-allDone:
		case <-time.After(30 * time.Second):
			t.Fatalf("released %d of %d jobs within 30s", released.Load(), jobs)
		}

		require.LessOrEqual(t, peak.Load(), int64(maxValue), "more unreleased jobs at the receiver than permits")
		require.GreaterOrEqual(t, peak.Load(), int64(2), "deliveries never overlapped")

		got := rcv.hits()
		require.Len(t, got, jobs, "one delivery per job")
		pos := make(map[string]int, jobs)
		for i, id := range ids {
			pos[id] = i
		}
		for _, h := range got {
			verify(t, secret, h)
			require.Contains(t, pos, h.body.ID)
			require.Equal(t, 1, h.body.Attempt)
			require.Equal(t, "burst", h.body.Semaphore)
			require.Equal(t, store.DefaultChannel, h.body.Channel)
			require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, pos[h.body.ID]), string(h.body.Payload))
		}
		// Dispatch order (fencing tokens grow with each grant) is enqueue order.
		byToken := slices.Clone(got)
		sort.Slice(byToken, func(i, j int) bool { return byToken[i].body.Lease.FencingToken < byToken[j].body.Lease.FencingToken })
		for i, h := range byToken {
			require.Equal(t, ids[i], h.body.ID, "dispatch #%d is not the %d-th job enqueued", i, i)
		}
		// Arrival order is not strictly FIFO: up to maxValue deliveries run
		// at once, and a later one may overtake an earlier one on the wire.
		// Receivers see the dispatch order in lease.fencingToken.

		for _, id := range ids {
			j := e.job(id)
			require.Equal(t, store.JobDone, j.Status, id)
			// A worker may release a job before the dispatcher recorded
			// its delivery (the 200 is still on the wire): then the
			// route stays unrecorded.
			require.Contains(t, []string{"https", ""}, j.Route)
			require.Equal(t, 1, j.Attempts)
			require.Nil(t, j.Lease)
		}
		e.waitIdle("burst", 5*time.Second)
		require.Equal(t, map[string]float64{"done": jobs}, e.finished())
	})
}

func TestDispatcher_ReleaseOnSuccess(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		rcv := newReceiver(t, status(http.StatusNoContent))
		e.put("ros", semCfg{MaxValue: 1, Routes: "[" + httpsRoute(rcv.url, `,"releaseOnSuccess":true`) + "]"})
		a, b := e.enqueue("ros", `"a"`), e.enqueue("ros", `"b"`)
		ja := e.waitJob(a.ID, store.JobDone, 5*time.Second)
		require.Equal(t, "https", ja.Route)
		require.False(t, ja.FinishedAt.IsZero())
		e.waitJob(b.ID, store.JobDone, 5*time.Second)
		got := rcv.hits()
		require.Len(t, got, 2)
		require.Equal(t, []string{a.ID, b.ID}, []string{got[0].body.ID, got[1].body.ID})
		e.waitIdle("ros", 5*time.Second)
	})
}

// TestDispatcher_ChainToSemaphore: a failing https route passes the job on
// to a semaphore route, which enqueues a child job in its target.
func TestDispatcher_ChainToSemaphore(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		failing := newReceiver(t, status(http.StatusInternalServerError))
		ok := newReceiver(t, status(http.StatusOK))
		e.put("overflow", semCfg{MaxValue: 10, Routes: "[" + httpsRoute(ok.url, `,"attempts":1`) + "]"})
		e.put("dead", semCfg{MaxValue: 10, Routes: "[" + httpsRoute(failing.url, `,"attempts":1`) + "]"}) // its one route fails → error
		chain := func(target string, release bool) string {
			return fmt.Sprintf(`[{"type":"semaphore","target":%q,"release":%t},%s]`, target, release, httpsRoute(failing.url, `,"attempts":1`))
		}
		e.put("failover", semCfg{MaxValue: 1, Routes: chain("overflow", true)})
		e.put("multi", semCfg{MaxValue: 1, Routes: chain("overflow", false)})
		e.put("tocrash", semCfg{MaxValue: 1, Routes: chain("dead", false)})

		// child returns the child job of a parent handed off to target.
		child := func(t *testing.T, parent store.Job, target string, hold bool) store.Job {
			t.Helper()
			e := e.with(t)
			require.Equal(t, "semaphore", parent.Route)
			require.NotNil(t, parent.Child, "parent %s has no child", parent.ID)
			require.Equal(t, target, parent.Child.Semaphore)
			require.Equal(t, hold, parent.Child.Hold)
			c := e.job(parent.Child.ID)
			require.NotNil(t, c.Parent)
			require.Equal(t, store.JobRef{Semaphore: parent.Semaphore, ID: parent.ID, Hold: hold}, *c.Parent)
			require.Equal(t, target, c.Semaphore)
			require.JSONEq(t, string(parent.Payload), string(c.Payload))
			jobs, _, err := e.svc.ListJobs(context.Background(), e.tenant, target, semaphore.ListJobsInput{})
			require.NoError(t, err)
			require.True(t, slices.ContainsFunc(jobs, func(j store.Job) bool { return j.ID == c.ID }), "child not listed in %s", target)
			return c
		}

		t.Run("release true: the parent is done at hand-off", func(t *testing.T) {
			e := e.with(t)
			p := e.enqueue("failover", `{"k":"failover"}`)
			pj := e.waitJob(p.ID, store.JobDone, 5*time.Second)
			c := child(t, pj, "overflow", false)
			e.waitIdle("failover", 5*time.Second)
			ok.waitHits(t, 1, 5*time.Second)
			eventually(t, 5*time.Second, func() (bool, string) {
				j := e.job(c.ID)
				return j.Status == store.JobInflight && j.Route == "https", fmt.Sprintf("child %s via %q", j.Status, j.Route)
			})
			_, err := e.svc.ReleaseJob(context.Background(), e.tenant, c.ID)
			require.NoError(t, err)
			require.Equal(t, store.JobDone, e.job(p.ID).Status)
			require.GreaterOrEqual(t, len(failing.hits()), 1)
		})

		t.Run("release false: the parent holds its permit until the child ends", func(t *testing.T) {
			e := e.with(t)
			p := e.enqueue("multi", `{"k":"multi"}`)
			var pj store.Job
			eventually(t, 5*time.Second, func() (bool, string) {
				pj = e.job(p.ID)
				return pj.Child != nil, fmt.Sprintf("parent %s, child %v", pj.Status, pj.Child)
			})
			require.Equal(t, store.JobInflight, pj.Status)
			c := child(t, pj, "overflow", true)
			require.EqualValues(t, 1, e.state("multi").InUse, "the parent keeps its permit")
			c = e.waitJob(c.ID, store.JobInflight, 5*time.Second)
			eventually(t, 5*time.Second, func() (bool, string) {
				j := e.job(c.ID)
				return j.Route == "https", "child route " + j.Route
			})
			require.Equal(t, store.JobInflight, e.job(p.ID).Status)
			_, err := e.svc.ReleaseJob(context.Background(), e.tenant, c.ID)
			require.NoError(t, err)
			pj = e.waitJob(p.ID, store.JobDone, 5*time.Second)
			e.waitIdle("multi", 5*time.Second)
		})

		t.Run("child ending in error fails its parent", func(t *testing.T) {
			e := e.with(t)
			p := e.enqueue("tocrash", `{"k":"crash"}`)
			pj := e.waitJob(p.ID, store.JobError, 5*time.Second)
			c := child(t, pj, "dead", true)
			require.Equal(t, store.JobError, c.Status)
			require.Contains(t, c.Error, "every route failed")
			require.Contains(t, pj.Error, c.ID)
			require.Contains(t, pj.Error, "error")
			e.waitIdle("tocrash", 5*time.Second)
		})
	})
}

// TestDispatcher_Mapping: a mapping overrides routes of lower or equal
// stability, rewrites the payload, and fails the job at run time.
func TestDispatcher_Mapping(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		a := newReceiver(t, status(http.StatusOK))
		bOK := newReceiver(t, status(http.StatusOK))
		bFail := newReceiver(t, status(http.StatusServiceUnavailable))
		e.put("fallback", semCfg{MaxValue: 10})
		_, err := e.svc.SetSuspended(context.Background(), e.tenant, "fallback", true) // children stay scheduled
		require.NoError(t, err)
		routes := `[{"type":"websocket"},` + httpsRoute(a.url, `,"attempts":1`) + `,{"type":"semaphore","target":"fallback","release":true}]`
		mapping := func(url string) string {
			expr := fmt.Sprintf(`{"route": {"type": "https", "url": %q, "attempts": 1}}`, url)
			return fmt.Sprintf(`{"expr":%q,"canOverrideRouting":true}`, expr)
		}

		t.Run("override to B", func(t *testing.T) {
			e := e.with(t)
			sem := e.put("toB", semCfg{MaxValue: 2, Routes: routes, Mapping: mapping(bOK.url)})
			j := e.enqueue("toB", `{"to":"B"}`)
			got := bOK.waitHits(t, 1, 5*time.Second)
			require.Equal(t, j.ID, got[0].body.ID)
			require.JSONEq(t, `{"to":"B"}`, string(got[0].body.Payload))
			verify(t, routeSecret(t, sem, ""), got[0]) // a returned route is signed with the mapping's secret
			eventually(t, 5*time.Second, func() (bool, string) {
				j := e.job(j.ID)
				return j.Route == "https" && j.Status == store.JobInflight, fmt.Sprintf("%s via %q", j.Status, j.Route)
			})
			_, err := e.svc.ReleaseJob(context.Background(), e.tenant, j.ID)
			require.NoError(t, err)
		})

		t.Run("B fails: the configured semaphore, not A", func(t *testing.T) {
			e := e.with(t)
			e.put("toBfail", semCfg{MaxValue: 2, Routes: routes, Mapping: mapping(bFail.url)})
			j := e.enqueue("toBfail", `{"to":"Bfail"}`)
			pj := e.waitJob(j.ID, store.JobDone, 5*time.Second)
			require.Equal(t, "semaphore", pj.Route)
			require.NotNil(t, pj.Child)
			c := e.job(pj.Child.ID)
			require.Equal(t, "fallback", c.Semaphore)
			require.Equal(t, store.JobScheduled, c.Status)
			require.Equal(t, j.ID, c.Parent.ID)
			require.Len(t, bFail.hits(), 1)
		})
		require.Empty(t, a.hits(), "the configured https route is replaced by the returned one")

		t.Run("payload rewrite", func(t *testing.T) {
			e := e.with(t)
			expr := `{"payload": {"orig": payload, "job": job.id, "sem": semaphore.name, "attempt": job.attempt}}`
			e.put("rewrite", semCfg{MaxValue: 1, Routes: "[" + httpsRoute(bOK.url, `,"releaseOnSuccess":true`) + "]",
				Mapping: fmt.Sprintf(`{"expr":%q}`, expr)})
			j := e.enqueue("rewrite", `{"x":[1,2]}`)
			e.waitJob(j.ID, store.JobDone, 5*time.Second)
			var h hit
			for _, g := range bOK.hits() {
				if g.body.ID == j.ID {
					h = g
				}
			}
			require.Equal(t, j.ID, h.body.ID)
			require.JSONEq(t, fmt.Sprintf(`{"orig":{"x":[1,2]},"job":%q,"sem":"rewrite","attempt":1}`, j.ID), string(h.body.Payload))
			require.JSONEq(t, `{"x":[1,2]}`, string(e.job(j.ID).Payload), "the stored payload is the one enqueued")
		})

		t.Run("runtime error", func(t *testing.T) {
			e := e.with(t)
			e.put("maperr", semCfg{MaxValue: 1, Routes: "[" + httpsRoute(bOK.url, "") + "]",
				Mapping: `{"expr":"{\"payload\": payload.missing}"}`})
			j := e.enqueue("maperr", `{"present":1}`)
			jj := e.waitJob(j.ID, store.JobError, 5*time.Second)
			require.Contains(t, jj.Error, "mapping:")
			require.Contains(t, jj.Error, "missing")
			e.waitIdle("maperr", 5*time.Second)
		})

		t.Run("invalid CEL", func(t *testing.T) {
			e := e.with(t)
			_, _, err := e.svc.PutSemaphore(context.Background(), e.tenant, "badcel",
				semCfg{MaxValue: 1, Mapping: `{"expr":"{\"payload\": "}`}.input())
			var ve *semaphore.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, semaphore.CodeInvalidConfig, ve.Code)
			require.Equal(t, "mapping.expr", ve.Field)
			_, _, err = e.svc.GetSemaphore(context.Background(), e.tenant, "badcel")
			require.ErrorIs(t, err, store.ErrSemaphoreNotFound, "nothing was saved")
		})

		t.Run("cycle refused", func(t *testing.T) {
			e := e.with(t)
			e.put("cyc-c", semCfg{MaxValue: 1})
			e.put("cyc-b", semCfg{MaxValue: 1, Routes: `[{"type":"semaphore","target":"cyc-c"}]`})
			e.put("cyc-a", semCfg{MaxValue: 1, Routes: `[{"type":"semaphore","target":"cyc-b"}]`})
			_, _, err := e.svc.PutSemaphore(context.Background(), e.tenant, "cyc-c",
				semCfg{MaxValue: 1, Routes: `[{"type":"semaphore","target":"cyc-a"}]`}.input())
			var ve *semaphore.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, semaphore.CodeInvalidConfig, ve.Code)
			require.Equal(t, "routes[0].target", ve.Field)
			require.Contains(t, ve.Message, "cycle")
		})

		t.Run("missing target", func(t *testing.T) {
			e := e.with(t)
			_, _, err := e.svc.PutSemaphore(context.Background(), e.tenant, "to-nowhere",
				semCfg{MaxValue: 1, Routes: `[{"type":"https","url":"https://example.com/x"},{"type":"semaphore","target":"nowhere"}]`}.input())
			var ve *semaphore.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, semaphore.CodeInvalidConfig, ve.Code)
			require.Equal(t, "routes[1].target", ve.Field)
			_, _, err = e.svc.GetSemaphore(context.Background(), e.tenant, "to-nowhere")
			require.ErrorIs(t, err, store.ErrSemaphoreNotFound, "nothing was saved")

			// A target deleted after the config was saved fails the route
			// with a clear error.
			e.put("gone", semCfg{MaxValue: 1})
			e.put("to-gone", semCfg{MaxValue: 1, Routes: `[{"type":"semaphore","target":"gone"}]`})
			require.NoError(t, e.svc.DeleteSemaphore(context.Background(), e.tenant, "gone"))
			j, _, err := e.svc.Enqueue(context.Background(), e.tenant, "to-gone", semaphore.EnqueueInput{Payload: []byte(`1`)})
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				j, err = e.svc.GetJob(context.Background(), e.tenant, j.ID)
				return err == nil && j.Status == store.JobError
			}, 5*time.Second, 5*time.Millisecond)
			require.Contains(t, j.Error, `semaphore: target semaphore "gone" does not exist`)
		})
	})
}

// TestDispatcher_SuspendOnDeliveryError: with onDeliveryError suspend a job
// whose routes all fail goes back to the head of its queue and the
// semaphore is suspended; resume redelivers it first.
func TestDispatcher_SuspendOnDeliveryError(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		var healthy atomic.Bool
		rcv := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, _ hit) {
			if healthy.Load() {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.WriteHeader(http.StatusBadGateway)
		})
		e.put("susp", semCfg{MaxValue: 1, OnDeliveryError: "suspend",
			Routes: "[" + httpsRoute(rcv.url, `,"attempts":1,"releaseOnSuccess":true`) + "]"})
		first := e.enqueue("susp", `1`)
		eventually(t, 5*time.Second, func() (bool, string) {
			sem, st, err := e.svc.GetSemaphore(context.Background(), e.tenant, "susp")
			require.NoError(t, err)
			return sem.Suspended && st.Queued == 1, fmt.Sprintf("suspended %t, %+v", sem.Suspended, st.ChannelState)
		})
		j := e.job(first.ID)
		require.Equal(t, store.JobScheduled, j.Status)
		require.Equal(t, 0, j.Attempts, "a suspended delivery does not count an attempt")
		require.EqualValues(t, 0, e.state("susp").InUse)

		second := e.enqueue("susp", `2`) // accepted while suspended, queued behind the first
		require.Equal(t, store.JobScheduled, second.Status)
		require.Len(t, rcv.hits(), 1)

		healthy.Store(true)
		_, err := e.svc.SetSuspended(context.Background(), e.tenant, "susp", false)
		require.NoError(t, err)
		e.waitJob(first.ID, store.JobDone, 5*time.Second)
		e.waitJob(second.ID, store.JobDone, 5*time.Second)
		got := rcv.hits()
		require.Len(t, got, 3)
		require.Equal(t, []string{first.ID, first.ID, second.ID}, []string{got[0].body.ID, got[1].body.ID, got[2].body.ID})
		require.Equal(t, 1, got[1].body.Attempt)
		e.waitIdle("susp", 5*time.Second)
	})
}

// TestDispatcher_Faults: receivers that misbehave. Every job ends in exactly
// one terminal state and its permit comes back.
func TestDispatcher_Faults(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		trap := newReceiver(t, status(http.StatusOK))
		var dripCut atomic.Bool
		cases := []struct {
			name   string
			answer func(w http.ResponseWriter, r *http.Request, h hit)
			route  string // extra route fields
			want   store.JobStatus
			hits   int    // requests the receiver gets
			errMsg string // in the job's error
			check  func(t *testing.T, got []hit)
		}{
			{
				name: "always500", answer: status(http.StatusInternalServerError), route: `,"attempts":3`,
				want: store.JobError, hits: 3, errMsg: "HTTP status 500",
			},
			{
				name: "retryafter",
				answer: func(w http.ResponseWriter, _ *http.Request, h hit) {
					if h.n == 1 {
						w.Header().Set("Retry-After", "1")
						w.WriteHeader(http.StatusTooManyRequests)
						return
					}
					w.WriteHeader(http.StatusOK)
				},
				route: `,"attempts":3,"releaseOnSuccess":true`, want: store.JobDone, hits: 2,
				check: func(t *testing.T, got []hit) {
					require.GreaterOrEqual(t, got[1].at.Sub(got[0].at), 900*time.Millisecond, "Retry-After: 1 honoured")
					require.Equal(t, got[0].body.ID, got[1].body.ID)
				},
			},
			{
				name: "hang",
				answer: func(w http.ResponseWriter, r *http.Request, _ hit) {
					<-r.Context().Done() // until the sender gives up
				},
				route: `,"timeout":"1s","attempts":1`, want: store.JobError, hits: 1, errMsg: "no response within 1s",
			},
			{
				name: "drip",
				answer: func(w http.ResponseWriter, r *http.Request, _ hit) {
					w.WriteHeader(http.StatusOK)
					fl := w.(http.Flusher)
					fl.Flush()
					tick := time.NewTicker(50 * time.Millisecond)
					defer tick.Stop()
					for range 200 { // 10 s, far past the route's timeout
						select {
						case <-r.Context().Done():
							dripCut.Store(true)
							return
						case <-tick.C:
							if _, err := w.Write([]byte("x")); err != nil {
								dripCut.Store(true)
								return
							}
							fl.Flush()
						}
					}
				},
				// The 2xx status came: accepted. The dripping body is cut by the timeout.
				route: `,"timeout":"1s","attempts":1,"releaseOnSuccess":true`, want: store.JobDone, hits: 1,
				check: func(t *testing.T, _ []hit) {
					eventually(t, 5*time.Second, func() (bool, string) { return dripCut.Load(), "the dripping response was not cut" })
				},
			},
			{
				name: "redirect",
				answer: func(w http.ResponseWriter, r *http.Request, _ hit) {
					http.Redirect(w, r, trap.url, http.StatusFound)
				},
				route: `,"attempts":2`, want: store.JobError, hits: 2, errMsg: "redirects are not followed",
			},
		}
		type run struct {
			rcv *receiver
			job store.Job
		}
		runs := make([]run, len(cases))
		for i, c := range cases {
			rcv := newReceiver(t, c.answer)
			// one attempt: a failed chain ends the job (retries are tested below)
			e.put(c.name, semCfg{MaxValue: 1, MaxAttempts: 1, Routes: "[" + httpsRoute(rcv.url, c.route) + "]"})
			runs[i] = run{rcv: rcv, job: e.enqueue(c.name, fmt.Sprintf("%q", c.name))}
		}
		for i, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				e := e.with(t)
				j := e.waitJob(runs[i].job.ID, c.want, 15*time.Second)
				require.Contains(t, j.Error, c.errMsg)
				require.Equal(t, 1, j.Attempts)
				got := runs[i].rcv.hits()
				require.Len(t, got, c.hits)
				for _, h := range got {
					require.Equal(t, j.ID, h.header.Get("webhook-id"))
				}
				if c.check != nil {
					c.check(t, got)
				}
				e.waitIdle(c.name, 5*time.Second)
			})
		}
		require.Empty(t, trap.hits(), "a redirect was followed")
		// Exactly one terminal state per job: one finish each, and they stay.
		require.Equal(t, map[string]float64{"done": 2, "error": 3}, e.finished())
		for i, c := range cases {
			require.Equal(t, c.want, e.job(runs[i].job.ID).Status, c.name)
		}
	})
}

// TestDispatcher_LeaseExpiry: a job delivered but never released expires,
// counts an attempt, is redelivered with the same id and ends in timeout
// after maxAttempts.
func TestDispatcher_LeaseExpiry(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		rcv := newReceiver(t, status(http.StatusOK)) // accepts, never releases
		e.put("expiry", semCfg{MaxValue: 1, LeaseTimeout: time.Second, MaxAttempts: 2,
			Routes: "[" + httpsRoute(rcv.url, "") + "]"})
		j := e.enqueue("expiry", `{"slow":true}`)
		j = e.waitJob(j.ID, store.JobTimeout, 10*time.Second)
		require.Equal(t, 2, j.Attempts)
		require.NotEmpty(t, j.Error)
		got := rcv.hits()
		require.Len(t, got, 2)
		require.Equal(t, []int{1, 2}, []int{got[0].body.Attempt, got[1].body.Attempt})
		require.Equal(t, j.ID, got[0].header.Get("webhook-id"))
		require.Equal(t, j.ID, got[1].header.Get("webhook-id"))
		require.Less(t, got[0].body.Lease.FencingToken, got[1].body.Lease.FencingToken, "a new lease per delivery")
		require.GreaterOrEqual(t, got[1].at.Sub(got[0].at), 900*time.Millisecond, "redelivered after the lease expired")
		e.waitIdle("expiry", 5*time.Second)
		_, err := e.svc.ReleaseJob(context.Background(), e.tenant, j.ID)
		require.ErrorIs(t, err, store.ErrInvalidState, "a timed out job cannot be released")
		require.Equal(t, map[string]float64{"timeout": 1}, e.finished())
	})
}

// TestDispatcher_AdoptsWorkerRoute: a config saved by an earlier build does
// not tell the store that its chain begins with the websocket route; its
// first dispatched job makes the dispatcher save that, and the job waits
// for a worker with room, its attempt not counted.
func TestDispatcher_AdoptsWorkerRoute(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		ctx := context.Background()
		_, _, err := e.st.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: e.tenant, Name: "old", Config: store.SemaphoreConfig{
			MaxValue: 2, MaxValueScope: store.ScopeTotal, LeaseTimeout: time.Minute, MaxAttempts: 3,
			OnSessionLost: "redeliver", OnDeliveryError: "fail",
		}})
		require.NoError(t, err)
		j := e.enqueue("old", `1`)
		require.Equal(t, store.JobInflight, j.Status, "dispatched as the earlier build did")
		eventually(t, 5*time.Second, func() (bool, string) {
			sem, err := e.st.GetSemaphore(ctx, e.tenant, "old")
			got := e.job(j.ID)
			return err == nil && sem.Config.Workers != nil && got.Status == store.JobScheduled && got.Attempts == 0,
				fmt.Sprintf("workers %v, job %s after %d attempts", sem.Config.Workers, got.Status, got.Attempts)
		})
		require.Equal(t, &store.WorkerRoute{}, func() *store.WorkerRoute {
			sem, err := e.st.GetSemaphore(ctx, e.tenant, "old")
			require.NoError(t, err)
			return sem.Config.Workers
		}())
		require.Zero(t, e.state("old").InUse)
	})
}

// TestDispatcher_ChainRetry: a failed chain is a failed attempt: the job
// is scheduled again after its backoff (here none), but not before the
// Retry-After its webhook answered, keeps the failure's message while it
// waits, and is done at its next attempt.
func TestDispatcher_ChainRetry(t *testing.T) {
	t.Parallel()
	forEachStore(t, func(t *testing.T, e *denv) {
		rcv := newReceiver(t, func(w http.ResponseWriter, _ *http.Request, h hit) {
			if h.n == 1 {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusOK)
		})
		e.put("flaky", semCfg{MaxValue: 1, MaxAttempts: 3, Retry: `{"backoff": "0s", "maxBackoff": "0s"}`,
			Routes: "[" + httpsRoute(rcv.url, `,"attempts":1,"releaseOnSuccess":true`) + "]"})
		j := e.enqueue("flaky", `1`)
		eventually(t, 5*time.Second, func() (bool, string) {
			got := e.job(j.ID)
			return got.Status == store.JobScheduled && got.Error != "" && !got.RunAt.IsZero(), fmt.Sprintf("job %s, error %q, runAt %v", got.Status, got.Error, got.RunAt)
		})
		done := e.waitJob(j.ID, store.JobDone, 10*time.Second)
		require.Equal(t, 2, done.Attempts)
		hits := rcv.hits()
		require.Len(t, hits, 2)
		require.GreaterOrEqual(t, hits[1].at.Sub(hits[0].at), 900*time.Millisecond, "the Retry-After was honoured")
	})
}
