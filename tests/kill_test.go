package tests

// Kill tests of SPEC §2 guarantee 3 (lossless async): jobs flow from a
// semaphore through an https route to a webhook receiver that releases each
// one through the HTTP API; an instance is killed with SIGKILL while jobs are
// queued and in flight; every accepted job must still end done, and every
// accepted job id must have been delivered (at least once).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
)

// Shape of the kill tests.
const (
	killJobs        = 300
	killMaxValue    = 10
	killLease       = "2s"
	killMaxAttempts = 10
	killBeforeKill  = 40                    // deliveries seen before the kill
	killHoldMin     = 30 * time.Millisecond // the receiver's simulated work
	killHoldMax     = 90 * time.Millisecond
	killAckMax      = 40 * time.Millisecond // the receiver's delay before answering a delivery
	killDeadline    = 40 * time.Second      // for every accepted job to end
)

// TestSIGKILL_JobsSurviveInstanceRestart: A takes all the jobs and is killed
// with many queued and in flight; B starts on the same Redis afterwards and
// finishes them.
func TestSIGKILL_JobsSurviveInstanceRestart(t *testing.T) {
	t.Parallel()
	args := killArgs(t)
	a := start(t, "A", args)
	api := newAPI(t)
	recv := newReceiver(t, api)
	recv.setTargets(a.base)
	createFunnel(t, api, a.base, "funnel", recv)

	api.suspend(t, a.base, "funnel", true) // the queue builds up whatever the machine's speed
	accepted := enqueueJobs(t, api, []string{a.base}, "funnel", 0, killJobs)
	api.suspend(t, a.base, "funnel", false)
	recv.waitDeliveries(t, killBeforeKill)
	before := api.state(t, a.base, "funnel")
	t.Logf("at the kill: %d delivered, state %+v", recv.deliveryCount(), before)
	require.GreaterOrEqual(t, before.Queued, int64(killMaxValue), "the kill must find jobs queued")
	require.Positive(t, before.Inflight, "the kill must find jobs in flight")
	killed := sigkill(t, a)
	recv.setTargets() // releases wait for B (retried)

	b := start(t, "B", args)
	recv.setTargets(b.base)
	checkAllDone(t, api, b.base, "funnel", accepted, recv, killed)
}

// TestSIGKILL_OtherInstanceCarriesOn: A and B share the work (enqueues and
// the receiver's releases alternate between them); A is killed; B keeps
// taking new jobs and finishes every one.
func TestSIGKILL_OtherInstanceCarriesOn(t *testing.T) {
	t.Parallel()
	args := killArgs(t)
	a := start(t, "A", args)
	b := start(t, "B", args)
	api := newAPI(t)
	recv := newReceiver(t, api)
	recv.setTargets(a.base, b.base)
	createFunnel(t, api, a.base, "funnel", recv)

	api.suspend(t, a.base, "funnel", true)
	accepted := enqueueJobs(t, api, []string{a.base, b.base}, "funnel", 0, killJobs/2)
	api.suspend(t, b.base, "funnel", false)
	recv.waitDeliveries(t, killBeforeKill)
	before := api.state(t, b.base, "funnel")
	t.Logf("at the kill: %d delivered, state %+v", recv.deliveryCount(), before)
	require.GreaterOrEqual(t, before.Queued, int64(killMaxValue), "the kill must find jobs queued")
	require.Positive(t, before.Inflight, "the kill must find jobs in flight")
	killed := sigkill(t, a)
	recv.setTargets(b.base)

	for id := range enqueueJobs(t, api, []string{b.base}, "funnel", killJobs/2, killJobs) {
		accepted[id] = true
	}
	checkAllDone(t, api, b.base, "funnel", accepted, recv, killed)
}

// killArgs starts a dedicated redis-server that fsyncs every write (an
// acknowledged write survives) and returns the instance flags using it.
func killArgs(t *testing.T) []string {
	t.Helper()
	rs := testredis.StartServer(t, "--appendfsync", "always")
	return []string{"--redis-url", rs.URL(), "--redis-prefix", "e2e-kill", "--admin-key", adminKey, "--webhook-allow-private"}
}

// sigkill kills inst with SIGKILL, waits (bounded) for it to be gone and
// returns when it was killed.
func sigkill(t testing.TB, inst *instance) time.Time {
	t.Helper()
	killed := time.Now()
	require.NoError(t, inst.cmd.Process.Signal(syscall.SIGKILL))
	select {
	case <-inst.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not die after SIGKILL", inst.name)
	}
	return killed
}

// ---- a small JSON client of the job API (the SDK has no job calls yet) ----

type apiClient struct {
	hc *http.Client
}

func newAPI(t *testing.T) *apiClient {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &apiClient{hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// do sends a JSON request with the admin key and decodes a 2xx answer into
// out. It returns the status (0 with a transport error).
func (c *apiClient) do(ctx context.Context, method, target string, body, out any) (int, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, r)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+adminKey)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, target, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w: %s", method, target, err, data)
		}
	}
	return resp.StatusCode, nil
}

type jobJSON struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
}

type stateJSON struct {
	InUse    int64 `json:"inUse"`
	Queued   int64 `json:"queued"`
	Inflight int64 `json:"inflight"`
}

func (c *apiClient) state(t *testing.T, base, name string) stateJSON {
	t.Helper()
	var out struct {
		Semaphore struct {
			State stateJSON `json:"state"`
		} `json:"semaphore"`
	}
	_, err := c.do(t.Context(), http.MethodGet, base+"/v1/semaphores/"+name, nil, &out)
	require.NoError(t, err)
	return out.Semaphore.State
}

// suspend suspends (true) or resumes the dispatching of the semaphore.
func (c *apiClient) suspend(t *testing.T, base, name string, suspended bool) {
	t.Helper()
	action := "/resume"
	if suspended {
		action = "/suspend"
	}
	_, err := c.do(t.Context(), http.MethodPost, base+"/v1/semaphores/"+name+action, struct{}{}, nil)
	require.NoError(t, err)
}

// jobs lists every job of the semaphore, page by page.
func (c *apiClient) jobs(t *testing.T, base, name string) map[string]jobJSON {
	t.Helper()
	all := make(map[string]jobJSON)
	cursor := ""
	for range 1000 {
		var page struct {
			Jobs       []jobJSON `json:"jobs"`
			NextCursor string    `json:"nextCursor"`
		}
		q := url.Values{"limit": {"500"}, "cursor": {cursor}}
		_, err := c.do(t.Context(), http.MethodGet, base+"/v1/semaphores/"+name+"/jobs?"+q.Encode(), nil, &page)
		require.NoError(t, err)
		for _, j := range page.Jobs {
			all[j.ID] = j
		}
		if page.NextCursor == "" {
			return all
		}
		cursor = page.NextCursor
	}
	t.Fatal("job list did not end")
	return nil
}

// createFunnel creates semaphore name with an https route to recv and gives
// recv the route's secret (from GET /v1/semaphores/{name}) to verify
// signatures with.
func createFunnel(t *testing.T, c *apiClient, base, name string, recv *receiver) {
	t.Helper()
	cfg := map[string]any{
		"maxValue": killMaxValue, "leaseTimeout": killLease, "maxAttempts": killMaxAttempts,
		"routes": []any{map[string]any{"type": "https", "url": recv.srv.URL + "/hook", "timeout": "2s", "attempts": 3}},
	}
	_, err := c.do(t.Context(), http.MethodPut, base+"/v1/semaphores/"+name, cfg, nil)
	require.NoError(t, err)
	var got struct {
		Semaphore struct {
			Routes []struct {
				Secret string `json:"secret"`
			} `json:"routes"`
		} `json:"semaphore"`
	}
	_, err = c.do(t.Context(), http.MethodGet, base+"/v1/semaphores/"+name, nil, &got)
	require.NoError(t, err)
	require.Len(t, got.Semaphore.Routes, 1)
	wh, err := standardwebhooks.NewWebhook(got.Semaphore.Routes[0].Secret)
	require.NoError(t, err)
	recv.verifier.Store(wh)
}

// enqueueJobs enqueues jobs number from..to-1 with 8 concurrent clients,
// spread round-robin over bases, and returns the ids of the accepted ones
// (every enqueue must be accepted).
func enqueueJobs(t *testing.T, c *apiClient, bases []string, name string, from, to int) map[string]bool {
	t.Helper()
	var (
		mu       sync.Mutex
		accepted = make(map[string]bool)
		next     atomic.Int64
		wg       sync.WaitGroup
		errs     = make(chan error, 8)
	)
	next.Store(int64(from))
	for range 8 {
		wg.Go(func() {
			for {
				n := int(next.Add(1) - 1)
				if n >= to {
					return
				}
				var out struct {
					Job jobJSON `json:"job"`
				}
				status, err := c.do(t.Context(), http.MethodPost, bases[n%len(bases)]+"/v1/semaphores/"+name+"/jobs",
					map[string]any{"payload": map[string]any{"n": n}}, &out)
				if err == nil && status != http.StatusAccepted {
					err = fmt.Errorf("enqueue %d: status %d, want 202", n, status)
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				accepted[out.Job.ID] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, accepted, to-from, "distinct job ids")
	return accepted
}

// checkAllDone waits (bounded) until every accepted job is terminal, then
// asserts that each is done and that the delivered ids are the accepted ids.
func checkAllDone(t *testing.T, c *apiClient, base, name string, accepted map[string]bool, recv *receiver, killed time.Time) {
	t.Helper()
	deadline := time.Now().Add(killDeadline)
	var jobs map[string]jobJSON
	for {
		jobs = c.jobs(t, base, name)
		pending := 0
		for id := range accepted {
			if j, ok := jobs[id]; !ok || (j.Status == "scheduled" || j.Status == "inflight") {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d accepted jobs not terminal %v after the kill; state %+v", pending, len(accepted), killDeadline, c.state(t, base, name))
		}
		time.Sleep(100 * time.Millisecond) // a bounded poll of the job list
	}
	t.Logf("every job terminal %v after the kill", time.Since(killed).Round(time.Millisecond))

	attempts := map[int]int{}
	for id := range accepted {
		j, ok := jobs[id]
		require.True(t, ok, "accepted job %s is unknown", id)
		require.Equal(t, "done", j.Status, "job %s: %+v", id, j)
		attempts[j.Attempts]++
	}
	require.Len(t, jobs, len(accepted), "jobs that were never accepted")

	delivered, deliveries, badSigs := recv.snapshot()
	require.Zero(t, badSigs, "deliveries with a bad signature")
	var missing, extra []string
	for id := range accepted {
		if delivered[id] == 0 {
			missing = append(missing, id)
		}
	}
	for id := range delivered {
		if !accepted[id] {
			extra = append(extra, id)
		}
	}
	require.Empty(t, missing, "accepted jobs never delivered")
	require.Empty(t, extra, "delivered ids that were never accepted")
	redelivered := 0
	for _, n := range delivered {
		if n > 1 {
			redelivered++
		}
	}
	dist := ""
	for _, k := range slices.Sorted(maps.Keys(attempts)) {
		dist += fmt.Sprintf(" %d:%d", k, attempts[k])
	}
	dropped := int(recv.dropped.Load())
	t.Logf("%d jobs accepted and done; %d webhook requests = %d answered + %d dropped (sender killed before the answer); "+
		"%d redeliveries (requests beyond one per job), %d jobs answered more than once; attempts (attempts:jobs):%s; %d releases answered 409 (job had moved on)",
		len(accepted), deliveries+dropped, deliveries, dropped, deliveries+dropped-len(delivered), redelivered, dist, recv.stale.Load())
}

// ---- webhook receiver ----

// receiver is a webhook endpoint on loopback. It verifies each delivery's
// Standard Webhooks signature and waits a short random while before
// answering: a sender that vanishes meanwhile (killed) never sees an answer,
// and the receiver drops that delivery, so the job must come back by lease
// expiry. Otherwise it records the webhook-id, answers 200 and, after a
// short random hold (the "work"), releases the job through the HTTP API of
// one of its targets, retrying on another target while the instance it
// tried is down.
type receiver struct {
	srv      *httptest.Server
	api      *apiClient
	verifier atomic.Pointer[standardwebhooks.Webhook]
	ctx      context.Context
	wg       sync.WaitGroup

	mu         sync.Mutex
	targets    []string
	delivered  map[string]int
	deliveries int
	badSigs    int
	notify     chan struct{} // closed and replaced at every delivery

	stale   atomic.Int64 // releases answered 409 invalid_state
	dropped atomic.Int64 // deliveries whose sender vanished before the answer
}

func newReceiver(t *testing.T, api *apiClient) *receiver {
	ctx, cancel := context.WithCancel(context.Background())
	r := &receiver{api: api, ctx: ctx, delivered: make(map[string]int), notify: make(chan struct{})}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(func() {
		cancel()
		r.wg.Wait()
		r.srv.Close()
	})
	return r
}

func (r *receiver) setTargets(bases ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.targets = bases
}

func (r *receiver) target(n int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.targets) == 0 {
		return ""
	}
	return r.targets[n%len(r.targets)]
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
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
	id := req.Header.Get("webhook-id")
	var msg struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &msg) != nil || msg.ID != id {
		http.Error(w, "body id does not match webhook-id", http.StatusBadRequest)
		return
	}
	if !sleepCtx(req.Context(), rand.N(killAckMax)) {
		r.dropped.Add(1) // the sender is gone: it never learns of this delivery
		return
	}
	r.mu.Lock()
	r.delivered[id]++
	r.deliveries++
	close(r.notify)
	r.notify = make(chan struct{})
	r.mu.Unlock()

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.release(id)
	}()
	w.WriteHeader(http.StatusOK)
}

// release holds the job for a random while, then releases it. 200 and 409
// (the job moved on: released after an earlier delivery, or rescheduled
// by expiry and to be delivered again) end it; a transport error (the
// instance is down) is retried on the next target.
func (r *receiver) release(id string) {
	hold := killHoldMin + rand.N(killHoldMax-killHoldMin)
	if !sleepCtx(r.ctx, hold) {
		return
	}
	for n := 0; ; n++ {
		base := r.target(n)
		if base != "" {
			status, err := r.api.do(r.ctx, http.MethodPost, base+"/v1/jobs/"+url.PathEscape(id)+"/release", struct{}{}, nil)
			switch {
			case err == nil:
				return
			case status == http.StatusConflict:
				r.stale.Add(1)
				return
			case status != 0:
				return // another answer: the test sees the job not done
			}
		}
		if !sleepCtx(r.ctx, 50*time.Millisecond) { // retry pace while no instance answers
			return
		}
	}
}

// waitDeliveries waits (bounded) until n deliveries have arrived.
func (r *receiver) waitDeliveries(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		got, ch := r.deliveries, r.notify
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%d deliveries after 20s, want %d", got, n)
		}
	}
}

func (r *receiver) deliveryCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deliveries
}

func (r *receiver) snapshot() (delivered map[string]int, deliveries, badSigs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.delivered))
	for id, n := range r.delivered {
		out[id] = n
	}
	return out, r.deliveries, r.badSigs
}

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
