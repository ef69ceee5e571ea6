package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Delayed jobs (EnqueueParams.Delay) and the retry backoff
// (SemaphoreConfig.Retry): a scheduled job that waits for its RunAt, out of
// its queue, then queues in RunAt order, pushed by the store's timer.

var delayedTests = []struct {
	name string
	fn   func(t *testing.T, f *fixture)
}{
	{"Delayed_WaitsThenDispatchedByTimer", testDelayedByTimer},
	{"Delayed_RunAtOrder", testDelayedOrder},
	{"Delayed_CancelPurgeQueueFull", testDelayedCancelPurge},
	{"Delayed_Batch", testDelayedBatch},
	{"Retry_Backoff", testRetryBackoff},
}

// enqueueIn enqueues a job on semaphore name that waits d.
func (f *fixture) enqueueIn(name string, d time.Duration) store.Job {
	f.t.Helper()
	j, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
		Tenant: f.tenant, Semaphore: name, Payload: []byte(`1`), Delay: d,
	})
	require.NoError(f.t, err)
	require.True(f.t, created)
	return j
}

// waitDispatched waits (bounded) until the recorder saw n dispatches.
func waitDispatched(t *testing.T, r *recorder, n int) []store.Job {
	t.Helper()
	require.Eventually(t, func() bool { d, _ := r.events(); return len(d) >= n }, eventually, tick,
		"%d dispatches", n)
	d, _ := r.events()
	return d
}

func testDelayedByTimer(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(5))
	rec := newRecorder(f, 0)
	before := time.Now()
	a := f.enqueueIn("s", 300*time.Millisecond)
	require.Equal(t, store.JobScheduled, a.Status, "free permits, but not its time yet")
	require.Nil(t, a.Lease)
	requireBetween(t, before.Add(300*time.Millisecond), time.Now().Add(300*time.Millisecond), a.RunAt, "runAt")
	f.requireJobs("s", 1, 0, 0) // counted as queued
	b := f.enqueue("s", "")     // no delay: goes at once
	require.Equal(t, store.JobInflight, b.Status)
	// Nobody calls the store: its timer dispatches a at its runAt.
	d := waitDispatched(t, rec, 2)
	require.Equal(t, []string{b.ID, a.ID}, jobIDs(d))
	require.False(t, time.Now().Before(a.RunAt.Add(-clockSlack)), "not before its runAt")
	require.True(t, d[1].RunAt.IsZero(), "a dispatched job has no runAt")
	require.Equal(t, 1, d[1].Attempts)
}

func testDelayedOrder(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	hold := f.acquire(f.params("s")) // no permit: the jobs queue
	a := f.enqueueIn("s", 250*time.Millisecond)
	b := f.enqueueIn("s", 100*time.Millisecond)
	// Both due: each is queued at its runAt, b first.
	require.Eventually(t, func() bool {
		f.state("s") // any operation queues the due ones
		return f.getJob(a.ID).RunAt.IsZero() && f.getJob(b.ID).RunAt.IsZero()
	}, eventually, tick)
	c := f.enqueue("s", "") // after both runAts: behind them
	f.release(hold)
	waitDispatched(t, rec, 1)
	f.act(b.ID, store.ActRelease)
	f.act(a.ID, store.ActRelease)
	rec.requireDispatched(t, b.ID, a.ID, c.ID)
}

func testDelayedCancelPurge(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(5))
	rec := newRecorder(f, 0)
	a := f.enqueueIn("s", 200*time.Millisecond)
	c := f.act(a.ID, store.ActCancel)
	require.Equal(t, store.JobCancelled, c.Status)
	require.True(t, c.RunAt.IsZero())
	f.requireJobs("s", 0, 0, 0)
	b := f.enqueueIn("s", 200*time.Millisecond)
	_ = f.enqueueIn("s", time.Hour)
	n, err := f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobScheduled})
	require.NoError(t, err)
	require.Equal(t, 2, n, "purge takes delayed jobs too")
	f.requireJobs("s", 0, 0, 0)
	_, err = f.st.GetJob(f.ctx, f.tenant, b.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	// Past their runAt, nothing of them is dispatched.
	e := f.enqueueIn("s", 250*time.Millisecond)
	waitDispatched(t, rec, 1)
	rec.requireDispatched(t, e.ID)
	// Delayed jobs count against MaxQueued.
	_ = f.enqueueIn("s", time.Hour)
	_, _, err = f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), MaxQueued: 1})
	require.ErrorIs(t, err, store.ErrQueueFull)
}

func testDelayedBatch(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(5))
	rec := newRecorder(f, 0)
	res, err := f.st.EnqueueJobs(f.ctx, store.EnqueueBatchParams{Tenant: f.tenant, Semaphore: "s", Jobs: []store.EnqueueItem{
		{Payload: []byte(`1`), Delay: 200 * time.Millisecond},
		{Payload: []byte(`2`)},
		{Payload: []byte(`3`), Delay: 200 * time.Millisecond},
	}})
	require.NoError(t, err)
	require.Equal(t, store.JobScheduled, res[0].Job.Status)
	require.Equal(t, store.JobInflight, res[1].Job.Status)
	require.Equal(t, store.JobScheduled, res[2].Job.Status)
	waitDispatched(t, rec, 3)
	rec.requireDispatched(t, res[1].Job.ID, res[0].Job.ID, res[2].Job.ID) // same runAt: batch order
}

func testRetryBackoff(t *testing.T, f *fixture) {
	cfg := jobConfig(5)
	cfg.Retry = &store.RetryPolicy{Backoff: 200 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	f.putConfig("s", cfg)
	got, err := f.st.GetSemaphore(f.ctx, f.tenant, "s")
	require.NoError(t, err)
	require.Equal(t, cfg.Retry, got.Config.Retry)
	rec := newRecorder(f, 0)
	a := f.enqueue("s", "")
	// A fail with attempts left: scheduled within its backoff (full
	// jitter: [0, 200ms)), then dispatched by the timer.
	before := time.Now()
	j, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: a.ID, Action: store.ActFailRetry, Error: "x"})
	require.NoError(t, err)
	require.Equal(t, store.JobScheduled, j.Status)
	if !j.RunAt.IsZero() {
		requireBetween(t, before, time.Now().Add(200*time.Millisecond), j.RunAt, "runAt within the backoff")
	}
	d := waitDispatched(t, rec, 2)
	require.Equal(t, a.ID, d[1].ID)
	require.Equal(t, 2, d[1].Attempts)
	// MinDelay is a floor (a webhook's Retry-After).
	before = time.Now()
	j, err = f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: a.ID, Action: store.ActFailRetry, Error: "y", MinDelay: 500 * time.Millisecond})
	require.NoError(t, err)
	requireBetween(t, before.Add(500*time.Millisecond), time.Now().Add(500*time.Millisecond), j.RunAt, "runAt at least MinDelay")
	require.Equal(t, "y", j.Error)
	d = waitDispatched(t, rec, 3)
	require.Equal(t, 3, d[2].Attempts)
	// Without a policy, a retry queues at once.
	f.putConfig("t", jobConfig(5))
	b := f.enqueue("t", "")
	j, err = f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: b.ID, Action: store.ActRetry})
	require.NoError(t, err)
	require.True(t, j.RunAt.IsZero())
	require.Equal(t, store.JobInflight, j.Status, "dispatched again in the same operation")
}
