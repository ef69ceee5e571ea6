package storetest

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// The async half of the suite (store.JobStore). Job events are collected
// through SetJobListener by a recorder. A store hands an operation's events
// to the listener synchronously, before the operation returns, so a test
// may assert on the recorder right after a call; events caused by other
// goroutines are awaited on the recorder's change channel with a timeout.

// recorder collects the JobEvents of a store. It is safe for concurrent use.
type recorder struct {
	mu         sync.Mutex
	dispatched []store.Job
	finished   []store.Job
	changed    chan struct{} // closed and replaced on every event
	feed       chan store.Job
	overflow   bool
	tenant     string // every reported job must carry it ("" = unchecked)
	badTenant  string // id of a reported job with another tenant
}

// newRecorder installs a recorder as f's store's job listener. With feed >
// 0, dispatched jobs are also sent on r.feed (buffered; an overflow fails
// the test at check).
func newRecorder(f *fixture, feed int) *recorder {
	r := &recorder{changed: make(chan struct{}), tenant: f.tenant}
	if feed > 0 {
		r.feed = make(chan store.Job, feed)
	}
	f.st.SetJobListener(r.listen)
	f.t.Cleanup(func() { f.st.SetJobListener(nil) })
	return r
}

// newBareRecorder returns a recorder that is not installed anywhere.
func newBareRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

// listen is the job listener; it never blocks.
func (r *recorder) listen(ev store.JobEvents) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dispatched = append(r.dispatched, ev.Dispatched...)
	r.finished = append(r.finished, ev.Finished...)
	if r.tenant != "" && r.badTenant == "" {
		for _, j := range append(ev.Dispatched[:len(ev.Dispatched):len(ev.Dispatched)], ev.Finished...) {
			if j.Tenant != r.tenant {
				r.badTenant = j.ID + " (tenant " + j.Tenant + ")"
				break
			}
		}
	}
	for _, j := range ev.Dispatched {
		if r.feed == nil {
			break
		}
		select {
		case r.feed <- j:
		default:
			r.overflow = true
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// events returns copies of everything recorded so far.
func (r *recorder) events() (dispatched, finished []store.Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dispatched), slices.Clone(r.finished)
}

// take returns and forgets everything recorded so far.
func (r *recorder) take() (dispatched, finished []store.Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, f := r.dispatched, r.finished
	r.dispatched, r.finished = nil, nil
	return d, f
}

// await waits until cond holds on the recorded events.
func (r *recorder) await(t *testing.T, msg string, cond func(dispatched, finished []store.Job) bool) {
	t.Helper()
	deadline := time.After(eventually)
	for {
		r.mu.Lock()
		ok := cond(r.dispatched, r.finished)
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			require.FailNow(t, "timed out waiting for job events: "+msg)
		}
	}
}

// has returns a condition for sweepUntil: the recorder holds at least n
// dispatched events.
func (r *recorder) has(n int) func() bool {
	return func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.dispatched) >= n
	}
}

// requireDispatched checks the IDs of the dispatched events, in order.
func (r *recorder) requireDispatched(t *testing.T, ids ...string) []store.Job {
	t.Helper()
	d, _ := r.events()
	require.Equal(t, append([]string{}, ids...), jobIDs(d), "dispatched jobs")
	r.mu.Lock()
	bad := r.badTenant
	r.mu.Unlock()
	require.Empty(t, bad, "every reported job carries its tenant")
	return d
}

// requireDispatchedInGrantOrder checks the IDs of the dispatched events of
// one semaphore in the order their leases were granted (fencing tokens):
// dispatches made by calls that ran concurrently (a rate timer's, the
// sweep's) may reach the listener in another order than the store made
// them, and FIFO is about the latter.
func (r *recorder) requireDispatchedInGrantOrder(t *testing.T, ids ...string) []store.Job {
	t.Helper()
	d, _ := r.events()
	for _, j := range d {
		require.NotNil(t, j.Lease, "dispatched job %s has its lease", j.ID)
	}
	slices.SortStableFunc(d, func(a, b store.Job) int { return cmp.Compare(a.Lease.FencingToken, b.Lease.FencingToken) })
	require.Equal(t, append([]string{}, ids...), jobIDs(d), "dispatched jobs, in grant order")
	return d
}

// jobIDs returns the IDs of jobs.
func jobIDs(jobs []store.Job) []string {
	ids := make([]string, 0, len(jobs))
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	return ids
}

// jobConfig is a semaphore config for the async tests: scope total, a long
// leaseTimeout, 3 attempts, terminal jobs kept (keep).
func jobConfig(maxValue int64) store.SemaphoreConfig {
	return store.SemaphoreConfig{MaxValue: maxValue, MaxValueScope: store.ScopeTotal, LeaseTimeout: longTTL, MaxAttempts: 3, Retention: keep}
}

// putConfig creates or replaces a semaphore with cfg.
func (f *fixture) putConfig(name string, cfg store.SemaphoreConfig) {
	f.t.Helper()
	_, _, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{Tenant: f.tenant, Name: name, Config: cfg})
	require.NoError(f.t, err)
}

// enqueue must create a job on channel ch ("" = default) of semaphore name.
func (f *fixture) enqueue(name, ch string) store.Job {
	f.t.Helper()
	j, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
		Tenant: f.tenant, Semaphore: name, Channel: ch, Payload: []byte(`{"n":1}`),
	})
	require.NoError(f.t, err)
	require.True(f.t, created)
	require.Equal(f.t, f.tenant, j.Tenant, "a returned job carries its tenant")
	return j
}

// getJob must find a job.
func (f *fixture) getJob(id string) store.Job {
	f.t.Helper()
	j, err := f.st.GetJob(f.ctx, f.tenant, id)
	require.NoError(f.t, err)
	require.Equal(f.t, f.tenant, j.Tenant, "a returned job carries its tenant")
	return j
}

// act applies an action that must succeed.
func (f *fixture) act(id string, a store.JobAction) store.Job {
	f.t.Helper()
	j, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: id, Action: a})
	require.NoError(f.t, err, "%s of job %s", a, id)
	require.Equal(f.t, f.tenant, j.Tenant, "a returned job carries its tenant")
	return j
}

// actErr applies an action and returns its error.
func (f *fixture) actErr(id string, a store.JobAction) error {
	_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: id, Action: a})
	return err
}

// suspend suspends or resumes a semaphore.
func (f *fixture) suspend(name string, suspended bool) {
	f.t.Helper()
	_, err := f.st.SetSuspended(f.ctx, f.tenant, name, suspended)
	require.NoError(f.t, err)
}

// requireJobs checks the Queued and Inflight totals and InUse of a semaphore.
func (f *fixture) requireJobs(name string, queued, inflight, inUse int64) store.SemaphoreState {
	f.t.Helper()
	st := f.state(name)
	require.Equal(f.t, queued, st.Queued, "queued")
	require.Equal(f.t, inflight, st.Inflight, "inflight")
	require.Equal(f.t, inUse, st.InUse, "inUse")
	return st
}

// statusIs returns a condition for sweepUntil: the job has status s.
func (f *fixture) statusIs(id string, s store.JobStatus) func() bool {
	return func() bool {
		j, err := f.st.GetJob(f.ctx, f.tenant, id)
		return err == nil && j.Status == s
	}
}

func testJobEnqueueDispatches(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	before := time.Now()
	j, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
		Tenant: f.tenant, Semaphore: "s", Payload: []byte(`{"hello":"world"}`),
	})
	require.NoError(t, err)
	require.True(t, created)
	name, ok := store.ParseJobID(j.ID)
	require.True(t, ok, "job id from store.NewJobID: %q", j.ID)
	require.Equal(t, "s", name)
	require.Equal(t, "s", j.Semaphore)
	require.Equal(t, store.DefaultChannel, j.Channel, "zero channel is the default channel")
	require.JSONEq(t, `{"hello":"world"}`, string(j.Payload))
	require.Equal(t, store.JobInflight, j.Status, "returned as it is after the operation: dispatched at once")
	require.WithinRange(t, j.CreatedAt, before.Add(-time.Second), time.Now().Add(time.Second))
	require.True(t, j.FinishedAt.IsZero())

	d := rec.requireDispatched(t, j.ID)[0]
	require.Equal(t, store.JobInflight, d.Status)
	require.Equal(t, 1, d.Attempts)
	require.NotNil(t, d.Lease)
	require.Equal(t, "s", d.Lease.Semaphore)
	require.Equal(t, store.DefaultChannel, d.Lease.Channel)
	require.Equal(t, int64(1), d.Lease.Weight)
	require.Equal(t, longTTL, d.Lease.TTL, "a job's lease lasts the semaphore's leaseTimeout")
	require.WithinDuration(t, d.Lease.AcquiredAt.Add(longTTL), d.Lease.ExpiresAt, time.Millisecond)
	require.Positive(t, d.Lease.FencingToken)
	require.JSONEq(t, `{"hello":"world"}`, string(d.Payload))
	require.NotNil(t, j.Lease)
	require.Equal(t, d.Lease.ID, j.Lease.ID)

	got := f.getJob(j.ID)
	require.Equal(t, store.JobInflight, got.Status)
	require.Equal(t, 1, got.Attempts)
	require.NotNil(t, got.Lease)
	require.Equal(t, d.Lease.ID, got.Lease.ID)
	require.JSONEq(t, `{"hello":"world"}`, string(got.Payload))

	st := f.requireJobs("s", 0, 1, 1)
	require.Equal(t, int64(1), st.Channels[store.DefaultChannel].Inflight)
	_, fin := rec.events()
	require.Empty(t, fin)

	// A job's lease is an ordinary lease of the semaphore: a sync acquire
	// finds no permit, and the job's fencing token is below the next one.
	_, err = f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit)
	f.act(j.ID, store.ActRelease)
	require.Greater(t, f.acquireW("s", 1).FencingToken, d.Lease.FencingToken)
}

func testJobDispatchOnFreedPermit(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)

	// release of a sync lease
	held := f.acquireW("s", 1)
	j1 := f.enqueue("s", "")
	require.Equal(t, store.JobScheduled, j1.Status)
	require.Nil(t, j1.Lease)
	require.Zero(t, j1.Attempts)
	rec.requireDispatched(t)
	f.requireJobs("s", 1, 0, 1)
	f.release(held)
	rec.requireDispatched(t, j1.ID)
	f.requireJobs("s", 0, 1, 1)
	f.act(j1.ID, store.ActRelease) // nothing queued: nothing dispatched
	rec.requireDispatched(t, j1.ID)

	// expiry of a sync lease, found by Sweep
	p := f.params("s")
	p.TTL = shortTTL
	f.acquire(p)
	j2 := f.enqueue("s", "")
	require.Equal(t, store.JobScheduled, j2.Status)
	f.sweepUntil(rec.has(2), "job dispatched once the lease expired")
	rec.requireDispatched(t, j1.ID, j2.ID)

	// a raise of maxValue
	j3 := f.enqueue("s", "")
	require.Equal(t, store.JobScheduled, j3.Status)
	cfg.MaxValue = 2
	f.putConfig("s", cfg)
	rec.requireDispatched(t, j1.ID, j2.ID, j3.ID)
	f.requireJobs("s", 0, 2, 2)

	// DispatchJobs finds nothing more to do
	jobs, err := f.st.DispatchJobs(f.ctx, store.DispatchParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Empty(t, jobs)
	_, err = f.st.DispatchJobs(f.ctx, store.DispatchParams{Tenant: f.tenant, Semaphore: "nope"})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, _, err = f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "nope", Payload: []byte(`1`)})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
}

func testJobSuspendResume(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(2))
	rec := newRecorder(f, 0)
	f.suspend("s", true)
	j1 := f.enqueue("s", "")
	j2 := f.enqueue("s", "")
	require.Equal(t, store.JobScheduled, j1.Status, "accepted while suspended, not dispatched")
	jobs, err := f.st.DispatchJobs(f.ctx, store.DispatchParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Empty(t, jobs, "DispatchJobs does not dispatch while suspended")
	_, err = f.st.Sweep(f.ctx)
	require.NoError(t, err)
	rec.requireDispatched(t)
	f.requireJobs("s", 2, 0, 0)
	f.acquireW("s", 1) // sync acquires are not suspended

	f.suspend("s", false)
	rec.requireDispatched(t, j1.ID)
	f.requireJobs("s", 1, 1, 2)
	require.Equal(t, store.JobScheduled, f.getJob(j2.ID).Status)
}

func testJobBurst(t *testing.T, f *fixture) {
	const n, maxValue = 20, 3
	f.putConfig("s", jobConfig(maxValue))
	rec := newRecorder(f, 0)
	var ids []string
	for range n {
		ids = append(ids, f.enqueue("s", "").ID)
	}
	rec.requireDispatched(t, ids[:maxValue]...)
	f.requireJobs("s", n-maxValue, maxValue, maxValue)
	for i := range n {
		f.act(ids[i], store.ActRelease)
		inflight := int64(min(maxValue, n-i-1))
		st := f.requireJobs("s", int64(max(n-i-1-maxValue, 0)), inflight, inflight)
		require.LessOrEqual(t, st.InUse, int64(maxValue))
		rec.requireDispatched(t, ids[:min(n, i+1+maxValue)]...) // FIFO
	}
	d, fin := rec.events()
	require.Equal(t, ids, jobIDs(fin), "each job finished once, in order")
	for _, j := range fin {
		require.Equal(t, store.JobDone, j.Status)
		require.Nil(t, j.Lease)
		require.False(t, j.FinishedAt.IsZero())
	}
	for _, j := range d {
		require.Equal(t, 1, j.Attempts)
	}
}

func testJobRoundRobin(t *testing.T, f *fixture) {
	const noisy = 100
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	held := f.acquireW("s", 1)
	var first string
	for i := range noisy {
		j := f.enqueue("s", "noisy")
		if i == 0 {
			first = j.ID
		}
	}
	quiet := f.enqueue("s", "quiet")
	st := f.requireJobs("s", noisy+1, 0, 1)
	require.Equal(t, int64(noisy), st.Channels["noisy"].Queued)
	require.Equal(t, int64(1), st.Channels["quiet"].Queued)

	f.release(held)
	d, _ := rec.events()
	require.Len(t, d, 1)
	f.act(d[0].ID, store.ActRelease)
	d, _ = rec.events()
	require.Len(t, d, 2)
	require.Contains(t, jobIDs(d), quiet.ID, "the quiet channel is served within the first two dispatches")
	require.Contains(t, jobIDs(d), first, "the noisy channel's head is served within the first two dispatches")

	// Round-robin goes on: while both channels have jobs, they alternate.
	for range 3 {
		f.enqueue("s", "quiet")
	}
	f.act(d[1].ID, store.ActRelease)
	for range 5 {
		d, _ = rec.events()
		f.act(d[len(d)-1].ID, store.ActRelease)
	}
	d, _ = rec.events()
	require.Len(t, d, 8)
	for i := 2; i < len(d); i++ {
		require.NotEqual(t, d[i-1].Channel, d[i].Channel, "dispatch %d: channels with queued jobs alternate", i)
	}
}

func testJobScopeChannel(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	cfg.MaxValueScope = store.ScopeChannel
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)
	a1, b1 := f.enqueue("s", "a"), f.enqueue("s", "b")
	a2, b2 := f.enqueue("s", "a"), f.enqueue("s", "b")
	rec.requireDispatched(t, a1.ID, b1.ID)
	st := f.requireJobs("s", 2, 2, 2)
	require.Equal(t, store.ChannelState{InUse: 1, Queued: 1, Inflight: 1}, st.Channels["a"])
	require.Equal(t, store.ChannelState{InUse: 1, Queued: 1, Inflight: 1}, st.Channels["b"])
	f.act(a1.ID, store.ActRelease)
	rec.requireDispatched(t, a1.ID, b1.ID, a2.ID) // a's permit goes to a's queue only
	require.Equal(t, store.JobScheduled, f.getJob(b2.ID).Status)

	// A sync lease of channel b blocks only b.
	f.act(b1.ID, store.ActRelease)
	rec.requireDispatched(t, a1.ID, b1.ID, a2.ID, b2.ID)
	f.act(b2.ID, store.ActRelease)
	p := f.params("s")
	p.Channel = "b"
	f.acquire(p)
	b3 := f.enqueue("s", "b")
	require.Equal(t, store.JobScheduled, b3.Status)
	f.act(a2.ID, store.ActRelease)
	a3 := f.enqueue("s", "a")
	require.Equal(t, store.JobInflight, a3.Status)
}

func testJobSyncWaitersFirst(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	held := f.acquireW("s", 1)
	p := f.params("s")
	p.Wait = 30 * time.Second
	waiter := f.goAcquire(p)
	f.awaitWaiting("s", 1)
	j := f.enqueue("s", "")
	require.Equal(t, store.JobScheduled, j.Status)

	f.release(held)
	l := recvLease(t, waiter, "the sync waiter goes before the queued job")
	rec.requireDispatched(t)
	require.Equal(t, store.JobScheduled, f.getJob(j.ID).Status)
	f.release(l)
	rec.requireDispatched(t, j.ID)
}

// testJobTransitionGrantsWaiters: a permit freed by a job transition goes to
// a blocked sync waiter inside the same operation (no Sweep).
func testJobTransitionGrantsWaiters(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	j := f.enqueue("s", "")
	rec.requireDispatched(t, j.ID)
	p := f.params("s")
	p.Wait = 30 * time.Second
	waiter := f.goAcquire(p)
	f.awaitWaiting("s", 1)
	f.act(j.ID, store.ActRelease)
	l := recvLease(t, waiter, "the waiter gets the permit the released job freed")
	require.Equal(t, "s", l.Semaphore)
}

func testJobLeaseExpiry(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	cfg.LeaseTimeout, cfg.MaxAttempts = shortTTL, 2
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)
	j := f.enqueue("s", "")
	other := f.enqueue("s", "")
	rec.requireDispatched(t, j.ID)

	// First expiry: j goes to the back of the queue, behind other.
	f.sweepUntil(rec.has(2), "next job dispatched after the lease expired")
	d, fin := rec.events()
	require.Equal(t, other.ID, d[1].ID, "the expired job went to the back of its queue")
	require.Empty(t, fin)
	got := f.getJob(j.ID)
	require.Equal(t, store.JobScheduled, got.Status)
	require.Equal(t, 1, got.Attempts, "the expiry counted an attempt")
	require.Nil(t, got.Lease)

	f.act(other.ID, store.ActRelease)
	d, _ = rec.events()
	require.Len(t, d, 3)
	require.Equal(t, j.ID, d[2].ID)
	require.Equal(t, 2, d[2].Attempts)
	require.NotEqual(t, d[0].Lease.ID, d[2].Lease.ID, "a new lease per delivery")
	require.Greater(t, d[2].Lease.FencingToken, d[0].Lease.FencingToken)

	// Second expiry: attempts exhausted → timeout.
	f.sweepUntil(f.statusIs(j.ID, store.JobTimeout), "job timed out after its last attempt")
	got = f.getJob(j.ID)
	require.Equal(t, 2, got.Attempts)
	require.NotEmpty(t, got.Error)
	require.Nil(t, got.Lease)
	require.False(t, got.FinishedAt.IsZero())
	f.requireJobs("s", 0, 0, 0)
	rec.await(t, "timeout reported as finished", func(_, fin []store.Job) bool {
		return slices.ContainsFunc(fin, func(x store.Job) bool { return x.ID == j.ID && x.Status == store.JobTimeout })
	})
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: d[2].Lease.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
}

func testJobReleaseLease(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	cfg.LeaseTimeout = shortTTL
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)
	j := f.enqueue("s", "")
	next := f.enqueue("s", "")
	require.NotNil(t, j.Lease)

	// Extending a job's lease keeps the job inflight past its leaseTimeout.
	ext, err := f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: j.Lease.ID, TTL: longTTL})
	require.NoError(t, err)
	got := f.getJob(j.ID)
	require.WithinDuration(t, ext.ExpiresAt, got.Lease.ExpiresAt, time.Millisecond)
	waitUntil(j.Lease.ExpiresAt.Add(2 * clockMargin))
	_, err = f.st.Sweep(f.ctx)
	require.NoError(t, err)
	got = f.getJob(j.ID)
	require.Equal(t, store.JobInflight, got.Status, "an extended job lease does not expire")
	require.Equal(t, 1, got.Attempts)
	rec.requireDispatched(t, j.ID)

	// Releasing a job's lease releases the job.
	rel, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: j.Lease.ID})
	require.NoError(t, err)
	require.Equal(t, j.Lease.ID, rel.ID)
	got = f.getJob(j.ID)
	require.Equal(t, store.JobDone, got.Status)
	require.Nil(t, got.Lease)
	_, fin := rec.events()
	require.Equal(t, []string{j.ID}, jobIDs(fin))
	rec.requireDispatched(t, j.ID, next.ID)
	require.ErrorIs(t, f.actErr(j.ID, store.ActRelease), store.ErrInvalidState)
	_, err = f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: j.Lease.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
}

func testJobIdempotency(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	f.putConfig("other", jobConfig(1))
	enq := func(sem, key string) (store.Job, bool) {
		j, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
			Tenant: f.tenant, Semaphore: sem, Payload: []byte(`{"k":"` + key + `"}`), IdempotencyKey: key,
		})
		require.NoError(t, err)
		return j, created
	}
	j1, created := enq("s", "k1")
	require.True(t, created)
	require.Equal(t, "k1", j1.IdempotencyKey)
	again, created := enq("s", "k1")
	require.False(t, created, "the same key returns the same job")
	require.Equal(t, j1.ID, again.ID)
	require.Equal(t, store.JobInflight, again.Status)
	j2, created := enq("s", "k2")
	require.True(t, created)
	require.NotEqual(t, j1.ID, j2.ID)
	o, created := enq("other", "k1")
	require.True(t, created, "keys are per semaphore")
	require.NotEqual(t, j1.ID, o.ID)
	f.requireJobs("s", 1, 1, 1)

	f.act(j1.ID, store.ActRelease) // a terminal job still exists: the key still answers
	again, created = enq("s", "k1")
	require.False(t, created)
	require.Equal(t, j1.ID, again.ID)
	require.Equal(t, store.JobDone, again.Status)
	f.requireJobs("s", 0, 1, 1)
}

func testJobQueueFull(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	f.suspend("s", true)
	enq := func(key string) (store.Job, error) {
		j, _, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
			Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), IdempotencyKey: key, MaxQueued: 2,
		})
		return j, err
	}
	j1, err := enq("a")
	require.NoError(t, err)
	_, err = enq("b")
	require.NoError(t, err)
	_, err = enq("c")
	require.ErrorIs(t, err, store.ErrQueueFull)
	again, err := enq("a")
	require.NoError(t, err, "an idempotent replay is not a new job")
	require.Equal(t, j1.ID, again.ID)
	f.requireJobs("s", 2, 0, 0)
	_, _, err = f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`)})
	require.NoError(t, err, "MaxQueued 0 is no limit")

	f.act(j1.ID, store.ActCancel)
	_, err = enq("d")
	require.ErrorIs(t, err, store.ErrQueueFull, "still 2 scheduled")
	f.suspend("s", false) // one dispatched, one left
	_, err = enq("d")
	require.NoError(t, err)
	f.requireJobs("s", 2, 1, 1)
}

func testJobList(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	f.putConfig("other", jobConfig(1))
	f.suspend("s", true)
	var all, onB []string
	for i := range 8 {
		ch := []string{"a", "b"}[i%3%2] // a b a a b a a b
		j := f.enqueue("s", ch)
		all = append(all, j.ID)
		if ch == "b" {
			onB = append(onB, j.ID)
		}
	}
	f.enqueue("other", "a")
	f.act(all[1], store.ActCancel)
	f.act(all[5], store.ActCancel)

	list := func(p store.ListJobsParams) []string {
		t.Helper()
		p.Tenant, p.Semaphore = f.tenant, "s"
		var ids []string
		for pages := 0; ; pages++ {
			require.Less(t, pages, 20, "paging does not end")
			jobs, next, err := f.st.ListJobs(f.ctx, p)
			require.NoError(t, err)
			if p.Limit > 0 {
				require.LessOrEqual(t, len(jobs), p.Limit)
			}
			for _, j := range jobs {
				require.Equal(t, "s", j.Semaphore)
				if p.Status != "" {
					require.Equal(t, p.Status, j.Status)
				}
				if p.Channel != "" {
					require.Equal(t, p.Channel, j.Channel)
				}
				ids = append(ids, j.ID)
			}
			if next == "" {
				return ids
			}
			p.Cursor = next
		}
	}
	without := func(ids []string, drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return slices.Contains(drop, id) })
	}
	require.Equal(t, all, list(store.ListJobsParams{}), "oldest first, default limit")
	for _, limit := range []int{1, 3, 8, 100} {
		require.Equal(t, all, list(store.ListJobsParams{Limit: limit}), "limit %d", limit)
	}
	require.Equal(t, []string{all[1], all[5]}, list(store.ListJobsParams{Status: store.JobCancelled, Limit: 1}))
	require.Equal(t, without(all, all[1], all[5]), list(store.ListJobsParams{Status: store.JobScheduled, Limit: 2}))
	require.Equal(t, onB, list(store.ListJobsParams{Channel: "b", Limit: 2}))
	require.Equal(t, without(onB, all[1]), list(store.ListJobsParams{Channel: "b", Status: store.JobScheduled}))
	require.Empty(t, list(store.ListJobsParams{Status: store.JobInflight}))
	require.Empty(t, list(store.ListJobsParams{Channel: "none"}))

	jobs, next, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s", Limit: 8})
	require.NoError(t, err)
	require.Len(t, jobs, 8)
	require.Empty(t, next, "no cursor after the last page")
	_, _, err = f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "nope"})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
}

func testJobPurge(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	inflight := f.enqueue("s", "")
	var sched []store.Job
	for range 4 {
		sched = append(sched, f.enqueue("s", ""))
	}
	f.act(sched[0].ID, store.ActCancel)
	n, err := f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobInflight})
	require.ErrorIs(t, err, store.ErrInvalidState, "inflight jobs hold permits")
	require.Zero(t, n)
	n, err = f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobScheduled})
	require.NoError(t, err)
	require.Equal(t, 3, n)
	f.requireJobs("s", 0, 1, 1)
	_, err = f.st.GetJob(f.ctx, f.tenant, sched[1].ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	require.ErrorIs(t, f.actErr(sched[1].ID, store.ActCancel), store.ErrJobNotFound)
	require.Equal(t, store.JobCancelled, f.getJob(sched[0].ID).Status, "other statuses stay")

	n, err = f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobCancelled})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = f.st.GetJob(f.ctx, f.tenant, sched[0].ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	n, err = f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobDone})
	require.NoError(t, err)
	require.Zero(t, n)

	f.act(inflight.ID, store.ActRelease)
	rec.requireDispatched(t, inflight.ID) // the purged jobs are never dispatched
	n, err = f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobDone})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Empty(t, jobs)
	_, err = f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "nope", Status: store.JobScheduled})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
}

func testJobDeleteSemaphore(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	inflight := f.enqueue("s", "")
	queued := f.enqueue("s", "")
	require.NoError(t, f.st.DeleteSemaphore(f.ctx, f.tenant, "s"))
	for _, id := range []string{inflight.ID, queued.ID} {
		_, err := f.st.GetJob(f.ctx, f.tenant, id)
		require.ErrorIs(t, err, store.ErrJobNotFound)
		require.ErrorIs(t, f.actErr(id, store.ActCancel), store.ErrJobNotFound)
	}
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: inflight.Lease.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)

	f.putConfig("s", jobConfig(1))
	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Empty(t, jobs, "jobs do not come back with the new semaphore")
	f.requireJobs("s", 0, 0, 0)
	_, err = f.st.GetJob(f.ctx, f.tenant, queued.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	rec.requireDispatched(t, inflight.ID)
	j := f.enqueue("s", "")
	rec.requireDispatched(t, inflight.ID, j.ID)
}

func testJobNotFound(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	for _, id := range []string{store.NewJobID("s"), store.NewJobID("nope"), "garbage", ""} {
		_, err := f.st.GetJob(f.ctx, f.tenant, id)
		require.ErrorIs(t, err, store.ErrJobNotFound, "get %q", id)
		require.ErrorIs(t, f.actErr(id, store.ActRelease), store.ErrJobNotFound, "release %q", id)
	}
}

func testJobTenantIsolation(t *testing.T, f *fixture) {
	a, b := f, f.withTenant("t2")
	a.putConfig("s", jobConfig(1))
	ja := a.enqueue("s", "")
	_, err := b.st.GetJob(b.ctx, b.tenant, ja.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	for _, act := range []store.JobAction{store.ActRelease, store.ActCancel, store.ActDelivered} {
		require.ErrorIs(t, b.actErr(ja.ID, act), store.ErrJobNotFound)
	}
	_, _, err = b.st.EnqueueJob(b.ctx, store.EnqueueParams{Tenant: b.tenant, Semaphore: "s", Payload: []byte(`1`)})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, err = b.st.Release(b.ctx, store.ReleaseParams{Tenant: b.tenant, LeaseID: ja.Lease.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)

	b.putConfig("s", jobConfig(1))
	jb := b.enqueue("s", "")
	require.Equal(t, store.JobInflight, jb.Status, "own capacity")
	a2 := a.enqueue("s", "")
	require.Equal(t, store.JobScheduled, a2.Status)
	jobs, _, err := b.st.ListJobs(b.ctx, store.ListJobsParams{Tenant: b.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Equal(t, []string{jb.ID}, jobIDs(jobs))
	n, err := b.st.PurgeJobs(b.ctx, store.PurgeJobsParams{Tenant: b.tenant, Semaphore: "s", Status: store.JobScheduled})
	require.NoError(t, err)
	require.Zero(t, n)
	require.NoError(t, b.st.DeleteSemaphore(b.ctx, b.tenant, "s"))
	require.Equal(t, store.JobScheduled, a.getJob(a2.ID).Status)
	a.requireJobs("s", 1, 1, 1)
}

// testJobConcurrent: producers enqueue while workers fed by the Dispatched
// events release the jobs. Every job ends done exactly once, and inflight
// never exceeds maxValue.
func testJobConcurrent(t *testing.T, f *fixture) {
	const maxValue, producers, perProducer = 4, 8, 25
	const total = producers * perProducer
	f.putConfig("s", jobConfig(maxValue))
	rec := newRecorder(f, total*2)
	var sink errorSink
	var mu sync.Mutex
	enqueued := map[string]bool{}
	released := map[string]int{}
	allDone := make(chan struct{})
	quit := make(chan struct{})
	var wg sync.WaitGroup
	// Workers: release what is dispatched.
	for range maxValue {
		wg.Go(func() {
			for {
				select {
				case j := <-rec.feed:
					if j.Lease == nil {
						sink.add(fmt.Errorf("dispatched job %s without a lease", j.ID))
						continue
					}
					_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
						Tenant: f.tenant, JobID: j.ID, Action: store.ActRelease, LeaseID: j.Lease.ID,
					})
					if err != nil {
						sink.add(fmt.Errorf("release %s: %w", j.ID, err))
						continue
					}
					mu.Lock()
					released[j.ID]++
					if len(released) == total {
						close(allDone)
					}
					mu.Unlock()
				case <-quit:
					return
				}
			}
		})
	}
	// A checker samples State.
	wg.Go(func() {
		for {
			select {
			case <-quit:
				return
			default:
			}
			st, err := f.st.State(f.ctx, f.tenant, "s")
			if err != nil {
				sink.add(err)
				return
			}
			if st.Inflight > maxValue || st.InUse > maxValue {
				sink.add(fmt.Errorf("oversubscribed: inflight %d inUse %d", st.Inflight, st.InUse))
			}
		}
	})
	runWorkers(t, producers, func(i int) {
		for k := range perProducer {
			j, _, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
				Tenant: f.tenant, Semaphore: "s", Channel: []string{"a", "b", "c"}[(i+k)%3],
				Payload: []byte(fmt.Sprintf(`{"p":%d,"k":%d}`, i, k)),
			})
			if err != nil {
				sink.add(fmt.Errorf("enqueue: %w", err))
				return
			}
			mu.Lock()
			enqueued[j.ID] = true
			mu.Unlock()
		}
	})
	select {
	case <-allDone:
	case <-time.After(30 * time.Second):
	}
	close(quit)
	wg.Wait()
	sink.require(t)
	rec.mu.Lock()
	require.False(t, rec.overflow)
	rec.mu.Unlock()
	require.Len(t, enqueued, total)
	require.Len(t, released, total, "every job released")
	for id := range enqueued {
		require.Equal(t, 1, released[id], "job %s released once", id)
	}
	d, fin := rec.events()
	require.Len(t, d, total, "every job dispatched exactly once")
	require.Len(t, fin, total, "every job finished exactly once")
	for _, j := range fin {
		require.True(t, enqueued[j.ID])
		require.Equal(t, store.JobDone, j.Status)
	}
	f.requireJobs("s", 0, 0, 0)
	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobDone, Limit: total + 1})
	require.NoError(t, err)
	require.Len(t, jobs, total)
}
