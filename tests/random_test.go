package tests

// A randomized test of dispatch by room (README "Guarantees" 1, 3, 6 and
// 9, "Websocket workers", the fail frame in api/openapi.yaml): websocket workers with
// random prefetch, random handler durations, random failures (the fail
// frame, sdk.NoRetry) and random disconnects (Close and reopen, connections
// cut by a proxy, a proxy that goes deaf so pushes never reach the worker,
// a worker that vanishes for good) take the jobs of one semaphore with the
// default (websocket) chain, on two instances over one Redis, or on one
// instance with the memory store.
//
// The seed is logged; SEMAPHORED_RANDOM_SEED=<seed> replays a run's
// schedule (the events, the workers' shapes, the enqueues and every run's
// duration and outcome; the interleaving is the machine's).
// SEMAPHORED_RANDOM_LEASE=<duration> overrides the semaphore's
// leaseTimeout (see randomLease): with one within the ack window (2 s,
// 3 s across instances) the lease of a push that is never acked may
// expire before the push gives up, which spends an attempt.
//
// Checked all along, every step (rtStepEvery), through either instance:
//
//   - InUse ≤ maxValue, Inflight ≤ maxValue, and InUse == Inflight (the
//     test takes no sync lease: every permit is a job's), from one
//     consistent snapshot;
//   - before any worker subscribed, nothing holds a permit (InUse 0, every
//     job queued);
//   - every permit a job holds (ListJobs inflight: its lease) is
//     (a) held by a worker: a handler started on that lease and had not
//     returned, or returned at most rtSettle before (its release or fail
//     on its way), or its worker is one that may lose its connection (cut,
//     deaf, closed, vanished: its permit comes back by onSessionLost or by
//     expiry, checked next); or
//     (b) on its way: no handler has it yet, and the lease is at most
//     rtOnWay old (the push is acked within the 2 s ack timeout, a remote
//     instance's answer within 1 s more, else the job goes back to its
//     queue; plus slack for a loaded machine);
//   - a permit held by a job whose worker vanished (its proxy closed for
//     good) comes back within leaseTimeout + 1 s sweep + slack of the
//     vanishing (guarantee 4).
//
// Checked at the end:
//
//   - every job accepted ends within rtDrain, in done, error or timeout,
//     and the semaphore holds no permit and queues nothing; every
//     delivery of a job carries its id;
//   - attempts: 1 ≤ attempts ≤ maxAttempts, and attempts ≤ the number of
//     distinct deliveries (leases) a handler got: an attempt is spent only
//     by a delivery that reached a worker (guarantee 9); for a job all of
//     whose deliveries went to undisturbed workers (direct connection,
//     never reconnected, not closed while running it, the run's context
//     never ended), attempts equals
//     its deliveries and the outcome follows its handlers' returns
//     exactly;
//   - done: some handler run of the job returned nil;
//   - error: the job's error is the (unique) text a handler run of it
//     returned, and that run used sdk.NoRetry or the job used all its
//     attempts: no job ends in error except by failures that reached a
//     worker;
//   - timeout: the job used all its attempts and its last delivery was on
//     a disturbed worker (a vanished holder): no job ends in timeout
//     because the workers were busy, slow, or not connected yet;
//   - the undisturbed handler runs never overlap more than maxValue deep.

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testproxy"
	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

const (
	randomSeedEnv  = "SEMAPHORED_RANDOM_SEED"
	randomLeaseEnv = "SEMAPHORED_RANDOM_LEASE"

	rtMaxValue    = 6
	rtMaxAttempts = 4
	// rtLease is the semaphore's leaseTimeout: longer than rtOnWay, so
	// that a permit held by a job no worker has is caught by the check
	// before its lease would expire and hide it.
	rtLease = 6 * time.Second

	rtInitialJobs = 20  // enqueued before any worker subscribes
	rtJobs        = 160 // in all
	rtSlots       = 5   // workers at once (slot 3 starts late)
	rtStepEvery   = 75 * time.Millisecond

	// rtAck is the server's ack timeout, rtAckMargin how much longer an
	// instance waits for another instance's answer (hub.AckTimeout,
	// hub.ackMargin).
	rtAck       = 2 * time.Second
	rtAckMargin = time.Second
	rtSlack     = 1500 * time.Millisecond
	// rtOnWay bounds how long a job may hold a permit before a handler
	// has it.
	rtOnWay = rtAck + rtAckMargin + rtSlack
	// rtSettle bounds how long an undisturbed worker's release or fail
	// takes to free the permit after its handler returned.
	rtSettle = 2 * time.Second
	// rtDrain bounds how long the jobs take to end after the last
	// enqueue and event.
	rtDrain = 40 * time.Second
)

func TestRandomWorkers_TwoInstancesRedis(t *testing.T) {
	t.Parallel()
	a, b := clusterEnv(t, "SEMAPHORED_LOG_LEVEL=info")
	runRandomWorkers(t, []*instance{a, b})
}

func TestRandomWorkers_MemoryStore(t *testing.T) {
	t.Parallel()
	m := start(t, "M", []string{"--admin-key", adminKey}, "SEMAPHORED_LOG_LEVEL=info")
	runRandomWorkers(t, []*instance{m})
}

// clusterEnv is cluster with extra environment for both instances.
func clusterEnv(t *testing.T, env ...string) (a, b *instance) {
	t.Helper()
	url := testredis.URL(t)
	prefix := "e2e-rnd-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	args := []string{"--redis-url", url, "--redis-prefix", prefix, "--admin-key", adminKey}
	return start(t, "A", args, env...), start(t, "B", args, env...)
}

// randomSeed returns the seed of a run: SEMAPHORED_RANDOM_SEED, or a fresh
// one, mixed with the test's name so that the tests of one run differ.
func randomSeed(t *testing.T) uint64 {
	t.Helper()
	var seed uint64
	if v := os.Getenv(randomSeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "%s", randomSeedEnv)
		seed = s
	} else {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: %s=%d go test -run '^%s$' ./tests/)", seed, randomSeedEnv, seed, t.Name())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with seed %d: replay with %s=%d", seed, randomSeedEnv, seed)
		}
	})
	return seed
}

// randomLease is the semaphore's leaseTimeout: rtLease, or
// SEMAPHORED_RANDOM_LEASE.
func randomLease(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv(randomLeaseEnv)
	if v == "" {
		return rtLease
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "%s", randomLeaseEnv)
	t.Logf("leaseTimeout %v (%s)", d, randomLeaseEnv)
	return d
}

// ---- the model: jobs, their handler runs, the workers ----

type rtOutcome int

const (
	rtRunning   rtOutcome = iota
	rtOK                  // returned nil: the worker releases the job
	rtFailed              // returned a deliberate error: fail frame, retry
	rtNoRetry             // returned sdk.NoRetry: fail frame, no retry
	rtCancelled           // its context ended and it returned that as its error
)

func (o rtOutcome) String() string {
	return [...]string{"running", "ok", "failed", "noretry", "cancelled"}[o]
}

// rtRun is one handler run: one delivery (lease) of a job to a worker.
type rtRun struct {
	job     *rtJob
	worker  *rtWorker
	jobID   string // as pushed
	lease   string
	start   time.Time
	end     time.Time // zero while running
	outcome rtOutcome
	errText string // the error it returned, unique to the run
	cause   error  // its context's cause, when its context ended first
}

// rtJob is one job of the test, by its index n (its payload).
type rtJob struct {
	n     int
	id    string  // from Enqueue (a handler may run before Enqueue returns)
	failP float64 // chance that a run fails deliberately
	runs  []*rtRun
}

type rtKind int

const (
	rtDirect rtKind = iota // straight to an instance, the others as fallbacks
	rtCut                  // through a proxy that cuts each connection after a while, and goes deaf at times
	rtVanish               // through a proxy that is closed for good at some point
)

func (k rtKind) String() string { return [...]string{"direct", "cut", "vanish"}[k] }

// rtWorker is one SDK worker of the test.
type rtWorker struct {
	name     string
	kind     rtKind
	inst     int
	prefetch int
	w        *sdk.Worker
	cutter   *testproxy.Cutter

	// guarded by rtEnv.mu
	connects   []sdk.ConnectEvent
	closeStart time.Time // Close began: its handlers are cancelled
	vanished   time.Time // its proxy was closed for good
	mutes      int
}

// rtObs is a job's permit seen by a step: the job, its lease, and when.
type rtObs struct {
	n          int
	job        string
	lease      string
	acquiredAt time.Time
	t0, t1     time.Time // the step's request was sent, its reply read
}

type rtEnv struct {
	t            *testing.T
	seed         uint64
	insts        []*instance
	clients      []*sdk.Client // worker key, one per instance
	key          string
	sem          string
	leaseTimeout time.Duration

	// gate: a step holds it (read) from reading subscribed to its reply,
	// so that the first Subscribe (write) comes after the steps that saw
	// no worker.
	gate       sync.RWMutex
	mu         sync.Mutex
	jobs       []*rtJob
	byID       map[string]*rtJob
	runsBy     map[string][]*rtRun // by lease id
	workers    []*rtWorker         // every worker ever opened
	subscribed bool                // a worker subscribed
	obs        []rtObs
	stepErrs   []string
	steps      int
	maxInUse   int64
}

// rng returns a generator of its own for one purpose, from the seed.
func (e *rtEnv) rng(purpose string, n uint64) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(purpose))
	return rand.New(rand.NewPCG(e.seed^h.Sum64(), n))
}

func runRandomWorkers(t *testing.T, insts []*instance) {
	ctx := t.Context()
	e := &rtEnv{
		t: t, seed: randomSeed(t), insts: insts, sem: "rnd", leaseTimeout: randomLease(t),
		byID: map[string]*rtJob{}, runsBy: map[string][]*rtRun{},
	}
	_, err := insts[0].admin.PutSemaphore(ctx, e.sem, sdk.SemaphoreConfig{
		MaxValue: rtMaxValue, LeaseTimeout: e.leaseTimeout, MaxAttempts: rtMaxAttempts, OnSessionLost: "release",
	})
	require.NoError(t, err)
	key, err := insts[0].admin.CreateKey(ctx, sdk.RoleWorker, "random workers")
	require.NoError(t, err)
	e.key = key.Secret
	for _, inst := range insts {
		e.clients = append(e.clients, inst.client(t, e.key))
	}
	jr := e.rng("jobs", 0)
	for n := range rtJobs {
		p := 0.0
		switch r := jr.Float64(); {
		case r < 0.1:
			p = 0.8 // a bad job: it often uses all its attempts
		case r < 0.4:
			p = 0.3
		}
		e.jobs = append(e.jobs, &rtJob{n: n, failP: p})
	}

	// The steps, all along.
	stepCtx, stopSteps := context.WithCancel(ctx)
	stepsDone := make(chan struct{})
	go func() {
		defer close(stepsDone)
		e.stepLoop(stepCtx)
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopSteps()
			<-stepsDone
		}
	}
	defer stop()

	// Jobs before any worker: they wait, holding nothing. The steps check
	// it; a few of them pass before the first worker subscribes.
	require.True(t, e.enqueue(ctx, 0, rtInitialJobs, e.rng("enqueue", 0)))
	e.waitSteps(5)

	// The workers, the late one and the events, on a schedule drawn from
	// the seed; the producer meanwhile.
	sr := e.rng("schedule", 0)
	slots := make([]*rtWorker, rtSlots)
	kinds := []rtKind{rtDirect, rtDirect, rtDirect, rtCut, rtVanish}
	sr.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	late := sr.IntN(rtSlots)
	for i := range slots {
		if i != late {
			slots[i] = e.open(sr, fmt.Sprintf("w%d", i), kinds[i])
		}
	}
	type event struct {
		at   time.Duration
		what string
		slot int
	}
	events := []event{{at: time.Duration(1500+sr.IntN(3500)) * time.Millisecond, what: "late", slot: late}}
	for range 3 {
		events = append(events, event{at: time.Duration(500+sr.IntN(9000)) * time.Millisecond, what: "reopen", slot: sr.IntN(rtSlots)})
	}
	for range 2 {
		events = append(events, event{at: time.Duration(500+sr.IntN(9000)) * time.Millisecond, what: "mute"})
	}
	events = append(events, event{at: time.Duration(2000+sr.IntN(6000)) * time.Millisecond, what: "vanish"})
	slices.SortStableFunc(events, func(a, b event) int { return int(a.at - b.at) })

	prodCtx, stopProducing := context.WithCancel(ctx)
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		pr := e.rng("enqueue", 1)
		for n := rtInitialJobs; n < rtJobs && prodCtx.Err() == nil; {
			burst := min(1+pr.IntN(12), rtJobs-n)
			if !e.enqueue(prodCtx, n, n+burst, pr) {
				return
			}
			n += burst
			sleepCtx(prodCtx, time.Duration(pr.IntN(600))*time.Millisecond) // the load's pace
		}
	}()
	defer func() { stopProducing(); <-produced }() // a failed require ends it too

	began := time.Now()
	var vanished []*rtWorker
	for _, ev := range events {
		sleepCtx(ctx, time.Until(began.Add(ev.at))) // the schedule's next event
		at := time.Since(began).Round(time.Millisecond)
		switch ev.what {
		case "late":
			t.Logf("%v: late worker w%d", at, ev.slot)
			slots[ev.slot] = e.open(sr, fmt.Sprintf("w%d", ev.slot), kinds[ev.slot])
		case "reopen":
			if w := slots[ev.slot]; w != nil {
				t.Logf("%v: close %s and reopen it", at, w.name)
				e.close(w)
				sleepCtx(ctx, time.Duration(sr.IntN(300))*time.Millisecond) // the worker's restart
				slots[ev.slot] = e.open(sr, w.name+"'", w.kind)
			}
		case "mute":
			for _, w := range slots {
				if w != nil && w.kind == rtCut {
					t.Logf("%v: %s's proxy goes deaf", at, w.name)
					e.mu.Lock()
					w.mutes++
					e.mu.Unlock()
					w.cutter.MuteAll()
				}
			}
		case "vanish":
			for i, w := range slots {
				if w != nil && w.kind == rtVanish {
					t.Logf("%v: %s vanishes (its proxy closes for good)", at, w.name)
					e.mu.Lock()
					w.vanished = time.Now()
					e.mu.Unlock()
					w.cutter.Close() // the worker can no longer reach any instance
					vanished = append(vanished, w)
					slots[i] = e.open(sr, w.name+"'", rtDirect)
				}
			}
		}
	}
	<-produced
	loaded := time.Now()
	e.mu.Lock()
	accepted := len(e.byID)
	e.mu.Unlock()
	require.Equal(t, rtJobs, accepted, "jobs accepted")
	t.Logf("all %d jobs enqueued and every event done after %v", rtJobs, loaded.Sub(began).Round(time.Millisecond))

	// Every job ends.
	final := e.waitTerminal(loaded.Add(rtDrain))
	t.Logf("all jobs ended %v after the last enqueue and event", time.Since(loaded).Round(time.Millisecond))
	s, err := insts[0].admin.GetSemaphore(ctx, e.sem)
	require.NoError(t, err)
	require.Zero(t, s.State.InUse, "permits still held after every job ended: %+v", s.State)
	require.Zero(t, s.State.Inflight, "%+v", s.State)
	require.Zero(t, s.State.Queued, "%+v", s.State)
	stop()

	// Close every worker (the vanished ones too) so that every run ended.
	for _, w := range slots {
		if w != nil {
			e.close(w)
		}
	}
	for _, w := range vanished {
		e.close(w)
	}
	e.check(final)
}

// open starts a worker of kind on a random instance with a random
// prefetch and subscribes it.
func (e *rtEnv) open(r *rand.Rand, name string, kind rtKind) *rtWorker {
	t := e.t
	ww := &rtWorker{name: name, kind: kind, inst: r.IntN(len(e.insts)), prefetch: 1 + r.IntN(3)}
	closeTimeout := time.Duration(50+r.IntN(250)) * time.Millisecond
	base := e.insts[ww.inst].base
	var others []string
	for k := 1; k < len(e.insts); k++ {
		others = append(others, e.insts[(ww.inst+k)%len(e.insts)].base)
	}
	switch kind {
	case rtCut, rtVanish:
		after := time.Hour
		if kind == rtCut {
			after = time.Duration(1500+r.IntN(2500)) * time.Millisecond
		}
		c, err := testproxy.StartCutter(strings.TrimPrefix(base, "http://"), after)
		require.NoError(t, err)
		t.Cleanup(c.Close)
		ww.cutter = c
		base = c.URL
		if kind == rtVanish {
			others = nil // nowhere to go once its proxy is gone
		}
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	w, err := sdk.NewWorker(base, e.key,
		sdk.WithInstances(others...),
		sdk.WithReconnectBackoff(20*time.Millisecond, 300*time.Millisecond),
		sdk.WithCloseTimeout(closeTimeout),
		sdk.WithWorkerHTTPClient(&http.Client{Transport: tr}),
		sdk.WithConnectHook(func(ev sdk.ConnectEvent) {
			e.mu.Lock()
			ww.connects = append(ww.connects, ev)
			e.mu.Unlock()
		}))
	require.NoError(t, err)
	ww.w = w
	t.Cleanup(func() { _ = w.Close() })
	e.gate.Lock()
	e.mu.Lock()
	e.workers = append(e.workers, ww)
	e.subscribed = true
	e.mu.Unlock()
	e.gate.Unlock()
	require.NoError(t, w.Subscribe(t.Context(), e.sem, "", ww.prefetch, e.handler(ww)))
	t.Logf("%s: %s on %s, prefetch %d, close timeout %v", name, kind, e.insts[ww.inst].name, ww.prefetch, closeTimeout)
	return ww
}

// close closes a worker (once), noting when its handlers were cancelled.
func (e *rtEnv) close(w *rtWorker) {
	e.mu.Lock()
	if w.closeStart.IsZero() {
		w.closeStart = time.Now()
	}
	e.mu.Unlock()
	_ = w.w.Close()
}

// enqueue enqueues the jobs [from, to) through random instances; false
// when one failed (reported).
func (e *rtEnv) enqueue(ctx context.Context, from, to int, r *rand.Rand) bool {
	for n := from; n < to; n++ {
		c := e.clients[r.IntN(len(e.clients))]
		j, err := c.Enqueue(ctx, e.sem, map[string]int{"n": n}, sdk.EnqueueOptions{})
		if err != nil {
			if ctx.Err() == nil {
				e.t.Errorf("enqueue %d: %v", n, err)
			}
			return false
		}
		e.mu.Lock()
		e.jobs[n].id = j.ID
		e.byID[j.ID] = e.jobs[n]
		e.mu.Unlock()
	}
	return true
}

// handler is the handler of worker w: it works for a random while, then
// succeeds or fails as drawn from the seed for this job's run.
func (e *rtEnv) handler(w *rtWorker) sdk.Handler {
	return func(ctx context.Context, j sdk.Job) error {
		var p struct{ N *int }
		if err := json.Unmarshal(j.Payload, &p); err != nil || p.N == nil || *p.N < 0 || *p.N >= rtJobs {
			e.t.Errorf("%s: job %s with payload %s", w.name, j.ID, j.Payload)
			return nil
		}
		if j.Lease == nil {
			e.t.Errorf("%s: job %s pushed without its lease", w.name, j.ID)
			return nil
		}
		e.mu.Lock()
		job := e.jobs[*p.N]
		run := &rtRun{job: job, worker: w, jobID: j.ID, lease: j.Lease.ID, start: time.Now()}
		k := len(job.runs)
		job.runs = append(job.runs, run)
		e.runsBy[run.lease] = append(e.runsBy[run.lease], run)
		e.mu.Unlock()

		r := e.rng("run", uint64(job.n)<<16|uint64(k))
		work := time.Duration(10+r.IntN(291)) * time.Millisecond
		fail := r.Float64() < job.failP
		noRetry := r.IntN(25) == 0
		ignoreCancel := r.IntN(3) == 0 // a handler that finishes its work when cancelled
		outcome, err := rtOK, error(nil)
		timer := time.NewTimer(work)
		select {
		case <-timer.C:
		case <-ctx.Done():
			if !ignoreCancel {
				outcome = rtCancelled
				err = fmt.Errorf("run %d of job %d (lease %s) cancelled: %w", k, job.n, j.Lease.ID, context.Cause(ctx))
			} else {
				<-timer.C
			}
		}
		timer.Stop()
		if outcome == rtOK && noRetry {
			outcome, err = rtNoRetry, sdk.NoRetry(fmt.Errorf("run %d of job %d (lease %s) failed for good", k, job.n, j.Lease.ID))
		} else if outcome == rtOK && fail {
			outcome, err = rtFailed, fmt.Errorf("run %d of job %d (lease %s) failed", k, job.n, j.Lease.ID)
		}
		e.mu.Lock()
		run.end, run.outcome = time.Now(), outcome
		if err != nil {
			run.errText = err.Error()
		}
		if ctx.Err() != nil {
			run.cause = context.Cause(ctx)
		}
		e.mu.Unlock()
		return err
	}
}

// ---- the steps ----

func (e *rtEnv) stepLoop(ctx context.Context) {
	tick := time.NewTicker(rtStepEvery)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		e.step(ctx, e.insts[i%len(e.insts)])
	}
}

// waitSteps waits (bounded) until n more steps ran.
func (e *rtEnv) waitSteps(n int) {
	e.mu.Lock()
	want := e.steps + n
	e.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		got := e.steps
		e.mu.Unlock()
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d steps ran within 10s, want %d", got, want)
		}
		time.Sleep(rtStepEvery / 3)
	}
}

// step reads the semaphore's usage and its inflight jobs through inst and
// checks what needs no knowledge of the future; the permits held are kept
// for check, which judges them once every worker's fate is known.
func (e *rtEnv) step(ctx context.Context, inst *instance) {
	e.gate.RLock()
	defer e.gate.RUnlock()
	e.mu.Lock()
	before := e.subscribed
	enqueued := 0
	for _, j := range e.jobs {
		if j.id != "" {
			enqueued++
		}
	}
	e.mu.Unlock()
	t0 := time.Now()
	s, err := inst.admin.GetSemaphore(ctx, e.sem)
	if err != nil {
		if ctx.Err() == nil {
			e.stepError("GetSemaphore through %s: %v", inst.name, err)
		}
		return
	}
	page, err := inst.admin.ListJobs(ctx, e.sem, sdk.ListJobsOptions{Status: sdk.JobInflight, Limit: 1000})
	if err != nil {
		if ctx.Err() == nil {
			e.stepError("ListJobs through %s: %v", inst.name, err)
		}
		return
	}
	t1 := time.Now()
	st := s.State
	if st.InUse > rtMaxValue || st.Inflight > rtMaxValue {
		e.stepError("%s: maxValue %d exceeded: %+v", inst.name, rtMaxValue, st.ChannelState)
	}
	if st.InUse != st.Inflight {
		e.stepError("%s: inUse %d but %d jobs inflight (no sync lease is taken): %+v", inst.name, st.InUse, st.Inflight, st.ChannelState)
	}
	if !before && (st.InUse != 0 || st.Queued < int64(enqueued)) {
		e.stepError("%s: no worker subscribed yet, yet %d permits held, %d of at least %d jobs queued", inst.name, st.InUse, st.Queued, enqueued)
	}
	if len(page.Jobs) > rtMaxValue {
		e.stepError("%s: %d jobs inflight, maxValue %d", inst.name, len(page.Jobs), rtMaxValue)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.steps++
	e.maxInUse = max(e.maxInUse, st.InUse)
	for _, j := range page.Jobs {
		if j.Lease == nil {
			e.stepErrs = append(e.stepErrs, fmt.Sprintf("%s: inflight job %s without a lease", inst.name, j.ID))
			continue
		}
		job := e.byID[j.ID]
		n := -1
		if job != nil {
			n = job.n
		}
		e.obs = append(e.obs, rtObs{n: n, job: j.ID, lease: j.Lease.ID, acquiredAt: j.Lease.AcquiredAt, t0: t0, t1: t1})
	}
}

func (e *rtEnv) stepError(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stepErrs = append(e.stepErrs, fmt.Sprintf(format, args...))
}

// waitTerminal waits (bounded) until every job ended and returns them by
// id.
func (e *rtEnv) waitTerminal(deadline time.Time) map[string]sdk.Job {
	t := e.t
	for {
		all := map[string]sdk.Job{}
		cursor := ""
		for {
			page, err := e.insts[0].admin.ListJobs(t.Context(), e.sem, sdk.ListJobsOptions{Cursor: cursor, Limit: 1000})
			require.NoError(t, err)
			for _, j := range page.Jobs {
				all[j.ID] = j
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
		var open []string
		for _, j := range all {
			if !j.Status.Terminal() {
				open = append(open, fmt.Sprintf("%s %s attempts=%d", j.ID, j.Status, j.Attempts))
			}
		}
		if len(all) >= rtJobs && len(open) == 0 {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs listed, %d of them not ended, e.g. %v", len(all), len(open), open[:min(len(open), 5)])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- the judgement ----

// disturbed reports whether a run's worker may have lost it without the
// worker's say: not a direct, never reconnected worker, or closed while
// the run was on, or the run's context ended for another reason than the
// close (lease lost, ack refused).
func (e *rtEnv) disturbed(r *rtRun) bool {
	w := r.worker
	if w.kind != rtDirect || len(w.connects) != 1 {
		return true
	}
	if !w.closeStart.IsZero() && (r.end.IsZero() || !r.end.Before(w.closeStart)) {
		return true
	}
	return r.cause != nil
}

func (e *rtEnv) check(final map[string]sdk.Job) {
	t := e.t
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, w := range e.workers {
		resumed := 0
		for _, ev := range w.connects {
			if ev.Resumed {
				resumed++
			}
		}
		t.Logf("%s (%s, %s, prefetch %d): %d connections, %d resumed, %d mutes", w.name, w.kind, e.insts[w.inst].name, w.prefetch, len(w.connects), resumed, w.mutes)
		if w.kind == rtDirect && len(w.connects) != 1 {
			t.Logf("%s: a direct worker reconnected: its runs count as disturbed", w.name)
		}
	}
	for _, msg := range e.stepErrs {
		t.Error("step: " + msg)
	}

	// The permits seen held, judged.
	for _, o := range e.obs {
		var seen []*rtRun
		for _, r := range e.runsBy[o.lease] {
			if !r.start.After(o.t1) {
				seen = append(seen, r)
			}
		}
		if len(seen) == 0 {
			if age := o.t0.Sub(o.acquiredAt); age > rtOnWay {
				t.Errorf("job %d (%s) held a permit (lease %s) for %v with no worker having it (on its way at most %v)",
					o.n, o.job, o.lease, age.Round(time.Millisecond), rtOnWay)
			}
			continue
		}
		r := seen[len(seen)-1]
		switch {
		case r.end.IsZero() || !r.end.Before(o.t0):
			// a worker has it
		case !r.worker.vanished.IsZero() && r.end.After(r.worker.vanished.Add(-rtSettle)):
			// vanished holder: the permit returns by expiry (guarantee 4)
			if late := o.t0.Sub(r.worker.vanished); late > e.leaseTimeout+time.Second+rtSlack {
				t.Errorf("job %d (%s): its worker %s vanished %v before, yet its permit (lease %s) is held (leaseTimeout %v + 1 s sweep)",
					o.n, o.job, r.worker.name, late.Round(time.Millisecond), o.lease, e.leaseTimeout)
			}
		case e.disturbed(r):
			// its release or fail may wait for a reconnection, or
			// onSessionLost
		case o.t0.Sub(r.end) > rtSettle:
			t.Errorf("job %d (%s): its handler on %s returned (%s) %v before, yet its permit (lease %s) is held",
				o.n, o.job, r.worker.name, r.outcome, o.t0.Sub(r.end).Round(time.Millisecond), o.lease)
		}
	}

	// Every job, by its runs.
	if len(final) != len(e.jobs) {
		t.Errorf("%d jobs listed, %d accepted", len(final), len(e.jobs))
	}
	count := map[sdk.JobStatus]int{}
	deliveries, stableJobs := 0, 0
	for _, job := range e.jobs {
		j, ok := final[job.id]
		if !ok {
			t.Errorf("job %d (%s) accepted but not listed", job.n, job.id)
			continue
		}
		count[j.Status]++
		deliveries += len(job.runs)
		leases := map[string]bool{}
		stable := true
		for _, r := range job.runs {
			if r.jobID != job.id {
				t.Errorf("job %d (%s) pushed to %s as %s: every delivery carries the same id", job.n, job.id, r.worker.name, r.jobID)
			}
			leases[r.lease] = true
			if e.disturbed(r) {
				stable = false
			}
			if r.outcome == rtRunning {
				t.Errorf("job %d: a run on %s still running after every worker closed", job.n, r.worker.name)
			}
		}
		desc := func() string {
			var b strings.Builder
			fmt.Fprintf(&b, "job %d (%s) %s attempts=%d error=%q runs:", job.n, job.id, j.Status, j.Attempts, j.Error)
			for _, r := range job.runs {
				fmt.Fprintf(&b, " [%s %s lease=%s disturbed=%v cause=%v]", r.worker.name, r.outcome, r.lease, e.disturbed(r), r.cause)
			}
			return b.String()
		}
		if j.Attempts < 1 || j.Attempts > rtMaxAttempts {
			t.Errorf("attempts out of 1..%d: %s", rtMaxAttempts, desc())
		}
		if j.Attempts > len(leases) {
			t.Errorf("more attempts than deliveries that reached a worker: %s", desc())
		}
		var last *rtRun
		if len(job.runs) > 0 {
			last = job.runs[len(job.runs)-1]
		}
		switch j.Status {
		case sdk.JobDone:
			if !slices.ContainsFunc(job.runs, func(r *rtRun) bool { return r.outcome == rtOK }) {
				t.Errorf("done, but no handler returned nil: %s", desc())
			}
		case sdk.JobError:
			i := slices.IndexFunc(job.runs, func(r *rtRun) bool { return r.errText != "" && r.errText == j.Error })
			switch {
			case i < 0:
				t.Errorf("error not returned by any of its handlers: %s", desc())
			case job.runs[i].outcome != rtNoRetry && j.Attempts != rtMaxAttempts:
				t.Errorf("error after a retryable failure with attempts left: %s", desc())
			}
		case sdk.JobTimeout:
			switch {
			case j.Attempts != rtMaxAttempts:
				t.Errorf("timeout with attempts left: %s", desc())
			case last == nil || !e.disturbed(last):
				t.Errorf("timeout, yet its last delivery did not vanish: %s", desc())
			}
		default:
			t.Errorf("ended %s: %s", j.Status, desc())
		}
		if !stable || last == nil {
			continue
		}
		// Undisturbed: every delivery counted, each outcome as returned.
		stableJobs++
		if j.Attempts != len(job.runs) {
			t.Errorf("undisturbed deliveries %d, attempts %d: %s", len(job.runs), j.Attempts, desc())
		}
		// (An undisturbed run's context never ended: none was cancelled.)
		for _, r := range job.runs[:len(job.runs)-1] {
			if r.outcome != rtFailed {
				t.Errorf("delivered again after a run ended %s: %s", r.outcome, desc())
			}
		}
		fits := false
		switch last.outcome {
		case rtOK:
			fits = j.Status == sdk.JobDone
		case rtNoRetry:
			fits = j.Status == sdk.JobError
		case rtFailed:
			fits = j.Status == sdk.JobError && j.Attempts == rtMaxAttempts
		}
		if !fits {
			t.Errorf("its last undisturbed run ended %s, the job %s: %s", last.outcome, j.Status, desc())
		}
	}

	// Undisturbed runs never overlap more than maxValue deep (each holds
	// a permit from before its start to after its end).
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, job := range e.jobs {
		for _, r := range job.runs {
			if !e.disturbed(r) {
				edges = append(edges, edge{r.start, 1}, edge{r.end, -1})
			}
		}
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d // an end before a start at the same instant
	})
	depth, peak := 0, 0
	for _, ed := range edges {
		depth += ed.d
		peak = max(peak, depth)
	}
	if peak > rtMaxValue {
		t.Errorf("%d undisturbed handler runs at once, maxValue %d", peak, rtMaxValue)
	}
	t.Logf("%d steps (%d permits seen held, server peak %d, undisturbed peak %d); jobs %v; %d deliveries, %d jobs undisturbed throughout",
		e.steps, len(e.obs), e.maxInUse, peak, count, deliveries, stableJobs)
	require.NotZero(t, count[sdk.JobDone])
}
