//go:build soak

package tests

// A bounded soak of three semaphored instances sharing one Redis, not in
// the default test run:
//
//	SOAK_DURATION=2m go test -tags soak -run Soak -v ./tests/ -timeout 20m
//
// Mixed traffic for SOAK_DURATION (default 3m) after a warm-up:
//
//   - sync over HTTP: acquire (with wait), extend, hold a few ms, release,
//     through rotating instances;
//   - sync over the SDK's websocket worker: the same on session-bound leases;
//   - async: enqueue (HTTP, rotating instances) → https route → a webhook
//     receiver → release of the job through the HTTP API.
//
// Both sync kinds share one semaphore. Checked all along: the holders the
// clients see at once never exceed maxValue (sync leases; async deliveries
// of the funnel), and fencing follows real time (a grant asked for after
// another was answered carries a larger token). At the end every accepted
// job must be done. Each instance's RSS is read after the warm-up and at the
// end. The test fails on any violation, any lost job, or an RSS that grew
// by more than 50 % and more than 20 MiB.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// Shape of the soak.
const (
	soakInstances      = 3
	soakSyncMax        = 4 // "soak-sync", shared by HTTP and websocket leases
	soakHTTPWorkers    = 2 // per instance
	soakWSWorkers      = 1 // per instance
	soakFunnelMax      = 8 // "soak-funnel"
	soakEnqueuers      = 1 // per instance
	soakEnqueuePace    = 25 * time.Millisecond
	soakWarmup         = 15 * time.Second
	soakJobsDeadline   = 60 * time.Second
	soakDefaultRunTime = 3 * time.Minute
)

// soakStats counts operations and violations.
type soakStats struct {
	ops sync.Map // kind → *atomic.Int64

	oversub      atomic.Int64 // a holder count above maxValue
	fencing      atomic.Int64 // a token not above one answered before its request
	heldExpired  atomic.Int64 // a hold that outlived its lease (not counted as holders)
	peakSync     atomic.Int64
	peakFunnel   atomic.Int64
	unexpected   atomic.Int64 // answers no kind of traffic should get
	unexpectedMu sync.Mutex
	unexpectedEx []string
}

func (s *soakStats) op(kind string) {
	v, _ := s.ops.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (s *soakStats) opsString() string {
	var parts []string
	s.ops.Range(func(k, v any) bool {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func (s *soakStats) bad(format string, args ...any) {
	s.unexpected.Add(1)
	s.unexpectedMu.Lock()
	defer s.unexpectedMu.Unlock()
	if len(s.unexpectedEx) < 10 {
		s.unexpectedEx = append(s.unexpectedEx, fmt.Sprintf(format, args...))
	}
}

// soakHolders counts the holders clients see at once; every change is
// checked against maxValue.
type soakHolders struct {
	max  int64
	cur  atomic.Int64
	peak *atomic.Int64
	bad  *atomic.Int64
}

func (h *soakHolders) enter() {
	n := h.cur.Add(1)
	if n > h.max {
		h.bad.Add(1)
	}
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (h *soakHolders) leave() { h.cur.Add(-1) }

// soakFence checks real-time order of fencing tokens on one semaphore: a
// request's token must exceed every token answered before it was sent.
type soakFence struct {
	mu  sync.Mutex
	top int64
	bad *atomic.Int64
}

// before returns the largest token answered so far (take it before sending).
func (f *soakFence) before() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.top
}

// answered records a granted token; floor is before()'s value for its request.
func (f *soakFence) answered(floor, token int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	ok := token > floor
	if !ok {
		f.bad.Add(1)
	}
	f.top = max(f.top, token)
	return ok
}

func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("SOAK_DURATION")
	if v == "" {
		return soakDefaultRunTime
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "SOAK_DURATION")
	require.Positive(t, d, "SOAK_DURATION")
	return d
}

func TestSoak(t *testing.T) {
	runFor := soakDuration(t)
	prefix := "soak-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	args := []string{"--redis-url", testredis.URL(t), "--redis-prefix", prefix, "--admin-key", adminKey,
		"--webhook-allow-private", "--log-level", "warn"}
	var insts []*instance
	var bases []string
	for i := range soakInstances {
		inst := start(t, fmt.Sprintf("S%d", i), args, "SEMAPHORED_LOG_LEVEL=warn")
		insts = append(insts, inst)
		bases = append(bases, inst.base)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var clients []*sdk.Client
	for _, b := range bases {
		c, err := sdk.New(b, adminKey, sdk.WithHTTPClient(hc))
		require.NoError(t, err)
		clients = append(clients, c)
	}
	api := &apiClient{hc: hc}
	ctx := t.Context()
	_, err := clients[0].PutSemaphore(ctx, "soak-sync", sdk.SemaphoreConfig{MaxValue: soakSyncMax, LeaseTimeout: 5 * time.Second})
	require.NoError(t, err)

	stats := &soakStats{}
	syncHolders := &soakHolders{max: soakSyncMax, peak: &stats.peakSync, bad: &stats.oversub}
	syncFence := &soakFence{bad: &stats.fencing}
	recv := newSoakReceiver(t, api, bases, stats)
	recv.createFunnel(t, bases[0])

	stopping := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stopping:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	bg := context.Background()

	// sync over HTTP
	for i := range soakInstances * soakHTTPWorkers {
		wg.Go(func() {
			for n := i; !stopped(); n++ {
				c := clients[n%len(clients)]
				floor := syncFence.before()
				l, err := c.Acquire(bg, "soak-sync", sdk.AcquireOptions{Wait: 2 * time.Second, TTL: 3 * time.Second})
				if err != nil {
					if sdk.IsNoPermit(err) {
						stats.op("http-acquire-409")
						continue
					}
					stats.bad("http acquire: %v", err)
					sleepCtx(bg, 100*time.Millisecond)
					continue
				}
				stats.op("http-acquire")
				syncFence.answered(floor, l.FencingToken)
				syncHolders.enter()
				soakHold(bg, 2, 8)
				l2, err := clients[(n+1)%len(clients)].Extend(bg, l.ID, 3*time.Second)
				if err != nil {
					stats.bad("http extend %s: %v", l.ID, err)
				} else {
					stats.op("http-extend")
					l = l2
				}
				soakHold(bg, 2, 8)
				syncHolders.leave()
				if time.Now().After(l.ExpiresAt) {
					stats.heldExpired.Add(1)
				}
				if _, err := clients[(n+2)%len(clients)].Release(bg, l.ID); err != nil {
					stats.bad("http release %s: %v", l.ID, err)
				} else {
					stats.op("http-release")
				}
			}
		})
	}

	// sync over the websocket worker
	for i := range soakInstances * soakWSWorkers {
		w, err := sdk.NewWorker(bases[i%len(bases)], adminKey, sdk.WithWorkerHTTPClient(hc))
		require.NoError(t, err)
		t.Cleanup(func() { _ = w.Close() })
		wg.Go(func() {
			for !stopped() {
				floor := syncFence.before()
				l, err := w.Acquire(bg, "soak-sync", sdk.AcquireOptions{Wait: 2 * time.Second, TTL: 3 * time.Second})
				if err != nil {
					if sdk.IsNoPermit(err) {
						stats.op("ws-acquire-409")
						continue
					}
					stats.bad("ws acquire: %v", err)
					sleepCtx(bg, 100*time.Millisecond)
					continue
				}
				stats.op("ws-acquire")
				syncFence.answered(floor, l.FencingToken)
				syncHolders.enter()
				soakHold(bg, 2, 8)
				l2, err := w.Extend(bg, l.ID, 3*time.Second)
				if err != nil {
					stats.bad("ws extend %s: %v", l.ID, err)
				} else {
					stats.op("ws-extend")
					if !l2.ExpiresAt.IsZero() {
						l = l2
					}
				}
				soakHold(bg, 2, 8)
				syncHolders.leave()
				if time.Now().After(l.ExpiresAt) {
					stats.heldExpired.Add(1)
				}
				if _, err := w.Release(bg, l.ID); err != nil {
					stats.bad("ws release %s: %v", l.ID, err)
				} else {
					stats.op("ws-release")
				}
			}
		})
	}

	// async: enqueue through every instance
	var (
		accMu    sync.Mutex
		accepted = map[string]bool{}
	)
	for i := range soakInstances * soakEnqueuers {
		wg.Go(func() {
			for n := 0; !stopped(); n++ {
				var out struct {
					Job jobJSON `json:"job"`
				}
				status, err := api.do(bg, http.MethodPost, bases[(i+n)%len(bases)]+"/v1/semaphores/soak-funnel/jobs",
					map[string]any{"payload": map[string]any{"enqueuer": i, "n": n}}, &out)
				if status == http.StatusAccepted && err == nil {
					stats.op("enqueue")
					accMu.Lock()
					accepted[out.Job.ID] = true
					accMu.Unlock()
				} else {
					stats.bad("enqueue: %d %v", status, err)
				}
				sleepCtx(bg, soakEnqueuePace)
			}
		})
	}

	// Warm-up, then the measured run.
	sleepCtx(ctx, soakWarmup) // the warm-up's length, not a wait for an event
	rssStart := make([]int64, len(insts))
	for i, inst := range insts {
		rssStart[i] = readRSS(t, inst.cmd.Process.Pid)
	}
	t.Logf("after a %v warm-up: RSS %s; ops %s", soakWarmup, soakRSS(rssStart), stats.opsString())
	runStart := time.Now()
	ticker := time.NewTicker(30 * time.Second)
	for time.Since(runStart) < runFor {
		select {
		case <-ticker.C:
			cur := make([]int64, len(insts))
			for i, inst := range insts {
				cur[i] = readRSS(t, inst.cmd.Process.Pid)
			}
			t.Logf("+%v: RSS %s; peaks sync %d funnel %d; violations %d; ops %s", time.Since(runStart).Round(time.Second),
				soakRSS(cur), stats.peakSync.Load(), stats.peakFunnel.Load(), stats.oversub.Load()+stats.fencing.Load(), stats.opsString())
		case <-time.After(time.Until(runStart.Add(runFor))):
		}
	}
	ticker.Stop()
	rssEnd := make([]int64, len(insts))
	for i, inst := range insts {
		rssEnd[i] = readRSS(t, inst.cmd.Process.Pid)
	}
	close(stopping)
	wg.Wait()

	// Every accepted job ends done.
	deadline := time.Now().Add(soakJobsDeadline)
	var jobs map[string]jobJSON
	for {
		jobs = api.jobs(t, bases[1], "soak-funnel")
		pending := 0
		for id := range accepted {
			if j, ok := jobs[id]; !ok || j.Status == "scheduled" || j.Status == "inflight" {
				pending++
			}
		}
		if pending == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond) // a bounded poll of the job list
	}
	lost, notDone := 0, 0
	statuses := map[string]int{}
	for id := range accepted {
		j, ok := jobs[id]
		if !ok {
			lost++
			continue
		}
		statuses[j.Status]++
		if j.Status != "done" {
			notDone++
		}
	}
	extra := len(jobs) - (len(accepted) - lost)
	recv.stop()
	_, deliveries, badSigs := recv.snapshot()

	violations := stats.oversub.Load() + stats.fencing.Load()
	t.Logf("ops: %s; webhook deliveries %d (%d distinct jobs), bad signatures %d", stats.opsString(), deliveries, recv.distinct(), badSigs)
	t.Logf("violations: oversubscription %d (peak holders: sync %d of %d, funnel %d of %d), fencing %d; holds that outlived their lease %d; unexpected answers %d %v",
		stats.oversub.Load(), stats.peakSync.Load(), soakSyncMax, stats.peakFunnel.Load(), soakFunnelMax, stats.fencing.Load(),
		stats.heldExpired.Load(), stats.unexpected.Load(), stats.unexpectedEx)
	t.Logf("jobs: %d accepted → %v; %d lost; %d not done; %d jobs never accepted", len(accepted), statuses, lost, notDone, extra)
	var rssLines []string
	grew := false
	for i, inst := range insts {
		d := rssEnd[i] - rssStart[i]
		rssLines = append(rssLines, fmt.Sprintf("%s %.1f→%.1f MiB", inst.name, float64(rssStart[i])/(1<<20), float64(rssEnd[i])/(1<<20)))
		if d > 20<<20 && float64(d) > 0.5*float64(rssStart[i]) {
			grew = true
		}
	}
	t.Logf("SOAK SUMMARY: %v on %d instances: ops %s, deliveries=%d; violations=%d (oversubscription %d, fencing %d); jobs lost=%d, not done=%d of %d; RSS %s",
		runFor, len(insts), stats.opsString(), deliveries, violations, stats.oversub.Load(), stats.fencing.Load(), lost, notDone, len(accepted), strings.Join(rssLines, ", "))

	require.Zero(t, violations, "violations")
	require.Zero(t, lost, "jobs lost")
	require.Zero(t, notDone, "accepted jobs not done %v after the run", soakJobsDeadline)
	require.Zero(t, badSigs, "webhook deliveries with a bad signature")
	require.Zero(t, stats.unexpected.Load(), "unexpected answers: %v", stats.unexpectedEx)
	require.False(t, grew, "RSS grew beyond noise: %s", strings.Join(rssLines, ", "))
}

func soakHold(ctx context.Context, minMs, maxMs int) {
	sleepCtx(ctx, time.Duration(minMs+rand.IntN(maxMs-minMs+1))*time.Millisecond) // the simulated work
}

func soakRSS(v []int64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.1f MiB", float64(x)/(1<<20)))
	}
	return strings.Join(parts, ", ")
}

// ---- webhook receiver of the soak ----

// soakReceiver takes the funnel's deliveries: it verifies the signature,
// counts the deliveries held at once (a lease held twice counts once),
// answers 200, and after a short hold releases the job through a rotating
// instance (retried on a transport error).
type soakReceiver struct {
	srv      *httptest.Server
	api      *apiClient
	bases    []string
	stats    *soakStats
	holders  *soakHolders
	verifier atomic.Pointer[standardwebhooks.Webhook]
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	next     atomic.Int64

	mu         sync.Mutex
	delivered  map[string]int
	deliveries int
	badSigs    int
	held       map[string]bool // lease ids held now
}

func newSoakReceiver(t *testing.T, api *apiClient, bases []string, stats *soakStats) *soakReceiver {
	ctx, cancel := context.WithCancel(context.Background())
	r := &soakReceiver{api: api, bases: bases, stats: stats, ctx: ctx, cancel: cancel,
		delivered: map[string]int{}, held: map[string]bool{},
		holders: &soakHolders{max: soakFunnelMax, peak: &stats.peakFunnel, bad: &stats.oversub}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(func() {
		r.stop()
		r.srv.Close()
	})
	return r
}

func (r *soakReceiver) stop() {
	r.cancel()
	r.wg.Wait()
}

func (r *soakReceiver) createFunnel(t *testing.T, base string) {
	cfg := map[string]any{
		"maxValue": soakFunnelMax, "leaseTimeout": "5s", "maxAttempts": 10,
		"routes": []any{map[string]any{"type": "https", "url": r.srv.URL + "/hook", "timeout": "2s", "attempts": 3}},
	}
	_, err := r.api.do(t.Context(), http.MethodPut, base+"/v1/semaphores/soak-funnel", cfg, nil)
	require.NoError(t, err)
	var got struct {
		Semaphore struct {
			Routes []struct {
				Secret string `json:"secret"`
			} `json:"routes"`
		} `json:"semaphore"`
	}
	_, err = r.api.do(t.Context(), http.MethodGet, base+"/v1/semaphores/soak-funnel", nil, &got)
	require.NoError(t, err)
	require.Len(t, got.Semaphore.Routes, 1)
	wh, err := standardwebhooks.NewWebhook(got.Semaphore.Routes[0].Secret)
	require.NoError(t, err)
	r.verifier.Store(wh)
}

func (r *soakReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	wh := r.verifier.Load()
	if wh == nil || wh.Verify(body, req.Header) != nil {
		r.mu.Lock()
		r.badSigs++
		r.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var msg struct {
		ID    string `json:"id"`
		Lease struct {
			ID        string    `json:"id"`
			ExpiresAt time.Time `json:"expiresAt"`
		} `json:"lease"`
	}
	if json.Unmarshal(body, &msg) != nil || msg.ID != req.Header.Get("webhook-id") || msg.Lease.ID == "" {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.delivered[msg.ID]++
	r.deliveries++
	first := !r.held[msg.Lease.ID]
	r.held[msg.Lease.ID] = true
	r.mu.Unlock()
	if first {
		r.holders.enter()
	}
	r.stats.op("delivery")
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.release(msg.ID, msg.Lease.ID, msg.Lease.ExpiresAt, first)
	}()
	w.WriteHeader(http.StatusOK)
}

func (r *soakReceiver) release(id, lease string, expires time.Time, counted bool) {
	sleepCtx(r.ctx, time.Duration(20+rand.IntN(40))*time.Millisecond) // the work
	if counted {
		r.mu.Lock()
		delete(r.held, lease)
		r.mu.Unlock()
		r.holders.leave()
		if time.Now().After(expires) {
			r.stats.heldExpired.Add(1)
		}
	}
	for attempt := 0; attempt < 20 && r.ctx.Err() == nil; attempt++ {
		base := r.bases[int(r.next.Add(1))%len(r.bases)]
		status, err := r.api.do(r.ctx, http.MethodPost, base+"/v1/jobs/"+url.PathEscape(id)+"/release", struct{}{}, nil)
		switch {
		case err == nil:
			r.stats.op("job-release")
			return
		case status == http.StatusConflict:
			r.stats.op("job-release-409") // the job moved on (released after an earlier delivery)
			return
		case status != 0:
			r.stats.bad("job release %s: %v", id, err)
			return
		}
		sleepCtx(r.ctx, 50*time.Millisecond)
	}
}

func (r *soakReceiver) snapshot() (map[string]int, int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.delivered))
	for k, v := range r.delivered {
		out[k] = v
	}
	return out, r.deliveries, r.badSigs
}

func (r *soakReceiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.delivered)
}
