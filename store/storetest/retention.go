package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Retention (store.Retention) and purges by channel. The Redis store's
// clock cannot be faked, so the retentions here are short (retentionTTL)
// and a test waits for a job to go in a bounded loop; the memory store's
// own tests check the exact instants with its injected clock.

// retentionTTL is the short retention tests wait out.
const retentionTTL = time.Second

// endJob brings a fresh job of semaphore name (maxAttempts 1, one free
// permit) to terminal status s and returns it as the ending operation
// returned it, and the wall clock before that operation.
func (f *fixture) endJob(name, key string, s store.JobStatus) (store.Job, time.Time) {
	f.t.Helper()
	j, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{
		Tenant: f.tenant, Semaphore: name, Payload: []byte(`{"n":1}`), IdempotencyKey: key,
	})
	require.NoError(f.t, err)
	require.True(f.t, created)
	act := map[store.JobStatus]store.JobAction{
		store.JobDone: store.ActRelease, store.JobError: store.ActFail,
		store.JobTimeout: store.ActRetry, store.JobCancelled: store.ActCancel,
	}[s]
	if s != store.JobCancelled {
		require.Equal(f.t, store.JobInflight, j.Status, "dispatched at once")
	}
	before := time.Now()
	got := f.act(j.ID, act)
	require.Equal(f.t, s, got.Status)
	require.False(f.t, got.FinishedAt.IsZero())
	return got, before
}

// gone reports whether a job is gone for every reader: GetJob and
// TransitionJob do not find it and ListJobs does not list it.
func (f *fixture) gone(name, id string) bool {
	_, err := f.st.GetJob(f.ctx, f.tenant, id)
	if err == nil {
		return false
	}
	require.ErrorIs(f.t, err, store.ErrJobNotFound)
	require.ErrorIs(f.t, f.actErr(id, store.ActRequeue), store.ErrJobNotFound)
	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: name, Limit: 1000})
	require.NoError(f.t, err)
	require.NotContains(f.t, jobIDs(jobs), id, "a job past its retention is not listed")
	return true
}

// awaitGone waits until the job is gone (its retention ret passed) and
// checks it did not go before: not before FinishedAt + ret by the wall
// clock (the store's clock is the same machine's, at ms precision).
func (f *fixture) awaitGone(name string, j store.Job, ret time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(ret + eventually)
	for !f.gone(name, j.ID) {
		require.True(f.t, time.Now().Before(deadline), "job %s (%s) still there %v after its retention of %v", j.ID, j.Status, eventually, ret)
		<-time.After(tick)
	}
	require.False(f.t, time.Now().Before(j.FinishedAt.Add(ret-time.Millisecond)),
		"job %s (%s) gone before its retention of %v passed", j.ID, j.Status, ret)
}

// testRetentionDone: with Retention.Done short, done and cancelled jobs go
// once it passed, their idempotency keys free again; error and timeout
// jobs (Retention.Failed) stay.
func testRetentionDone(t *testing.T, f *fixture) {
	cfg := jobConfig(10)
	cfg.MaxAttempts = 1
	cfg.Retention = store.Retention{Done: retentionTTL, Failed: time.Hour}
	f.putConfig("s", cfg)
	done, before := f.endJob("s", "kd", store.JobDone)
	cancelled, _ := f.endJob("s", "kc", store.JobCancelled)
	failed, _ := f.endJob("s", "ke", store.JobError)
	timeout, _ := f.endJob("s", "kt", store.JobTimeout)
	if time.Since(before) < retentionTTL/2 { // else the machine is too slow to tell
		require.False(t, f.gone("s", done.ID), "a done job stays readable during its retention")
	}
	f.awaitGone("s", done, retentionTTL)
	f.awaitGone("s", cancelled, retentionTTL)
	for _, j := range []store.Job{failed, timeout} {
		require.Equal(t, j.Status, f.getJob(j.ID).Status, "Retention.Failed keeps %s jobs", j.Status)
	}
	again, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), IdempotencyKey: "kd"})
	require.NoError(t, err)
	require.True(t, created, "the key of a job past its retention is free again")
	require.NotEqual(t, done.ID, again.ID)
	_, created, err = f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), IdempotencyKey: "ke"})
	require.NoError(t, err)
	require.False(t, created, "the key of a kept job still names it")
}

// testRetentionFailed: with Retention.Failed short, error and timeout jobs
// go once it passed (a Sweep does not bring them back); done and
// cancelled jobs (Retention.Done) stay.
func testRetentionFailed(t *testing.T, f *fixture) {
	cfg := jobConfig(10)
	cfg.MaxAttempts = 1
	cfg.Retention = store.Retention{Done: time.Hour, Failed: retentionTTL}
	f.putConfig("s", cfg)
	failed, _ := f.endJob("s", "", store.JobError)
	timeout, _ := f.endJob("s", "", store.JobTimeout)
	done, _ := f.endJob("s", "", store.JobDone)
	cancelled, _ := f.endJob("s", "", store.JobCancelled)
	f.awaitGone("s", failed, retentionTTL)
	f.awaitGone("s", timeout, retentionTTL)
	_, err := f.st.Sweep(f.ctx)
	require.NoError(t, err)
	require.True(t, f.gone("s", failed.ID))
	for _, j := range []store.Job{done, cancelled} {
		require.Equal(t, j.Status, f.getJob(j.ID).Status, "Retention.Done keeps %s jobs", j.Status)
	}
	f.requireJobs("s", 0, 0, 0)
}

// testRetentionZero: a retention of 0 deletes a job in the operation that
// ends it, by any path (a transition, the release of its lease, the expiry
// of its last attempt's lease): the operation's result and its Finished
// event still carry the job; afterwards it is not found, not listed, and
// its idempotency key is free.
func testRetentionZero(t *testing.T, f *fixture) {
	cfg := jobConfig(10)
	cfg.MaxAttempts = 1
	cfg.Retention = store.Retention{}
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)
	for _, s := range []store.JobStatus{store.JobDone, store.JobError, store.JobTimeout, store.JobCancelled} {
		j, _ := f.endJob("s", "k-"+string(s), s)
		_, fin := rec.take()
		require.Equal(t, []string{j.ID}, jobIDs(fin), "%s: the Finished event carries the deleted job", s)
		require.Equal(t, s, fin[0].Status)
		require.True(t, f.gone("s", j.ID), "%s: deleted in the operation that ended it", s)
		again, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), IdempotencyKey: "k-" + string(s)})
		require.NoError(t, err)
		require.True(t, created, "%s: the key of a deleted job is free again", s)
		f.act(again.ID, store.ActCancel)
		rec.take()
	}

	// The release of a job's lease ends it done.
	j := f.enqueue("s", "")
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: j.Lease.ID})
	require.NoError(t, err)
	_, fin := rec.take()
	require.Equal(t, []string{j.ID}, jobIDs(fin))
	require.Equal(t, store.JobDone, fin[0].Status)
	require.True(t, f.gone("s", j.ID))

	// The expiry of its last attempt's lease ends it in timeout.
	cfg.LeaseTimeout = shortTTL
	f.putConfig("s", cfg)
	j = f.enqueue("s", "")
	require.Equal(t, store.JobInflight, j.Status)
	f.sweepUntil(func() bool {
		_, fin := rec.events()
		return slices.ContainsFunc(fin, func(x store.Job) bool { return x.ID == j.ID })
	}, "the job's lease expired")
	_, fin = rec.take()
	require.Equal(t, store.JobTimeout, fin[0].Status)
	require.True(t, f.gone("s", j.ID))
	f.requireJobs("s", 0, 0, 0)
	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Empty(t, jobs, "no job kept")
}

// testRetentionChanged: a changed retention applies to the jobs already
// terminal: raised, they stay; lowered to 0, they go at once.
func testRetentionChanged(t *testing.T, f *fixture) {
	cfg := jobConfig(10)
	cfg.Retention = store.Retention{Done: time.Hour, Failed: time.Hour}
	f.putConfig("s", cfg)
	done, _ := f.endJob("s", "k", store.JobDone)
	failed, _ := f.endJob("s", "", store.JobError)
	cfg.Retention.Done = store.MaxRetention
	f.putConfig("s", cfg)
	f.getJob(done.ID)
	cfg.Retention.Done = 0
	f.putConfig("s", cfg)
	require.True(t, f.gone("s", done.ID), "a retention lowered to 0 deletes the done jobs")
	require.Equal(t, store.JobError, f.getJob(failed.ID).Status, "and keeps the others")
	j, created, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), IdempotencyKey: "k"})
	require.NoError(t, err)
	require.True(t, created)
	require.NotEqual(t, done.ID, j.ID)
}

// testJobPurgeChannel: a purge naming a channel deletes only that
// channel's jobs in the status (scheduled: the others stay queued and are
// dispatched in turn; terminal: the others stay readable).
func testJobPurgeChannel(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	f.suspend("s", true)
	var a, b []store.Job
	for range 3 {
		a = append(a, f.enqueue("s", "a"))
		b = append(b, f.enqueue("s", "b"))
	}
	purge := func(s store.JobStatus, ch string) int {
		t.Helper()
		n, err := f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: s, Channel: ch})
		require.NoError(t, err)
		return n
	}
	require.Zero(t, purge(store.JobScheduled, "c"), "a channel without jobs")
	require.Equal(t, 3, purge(store.JobScheduled, "a"))
	st := f.requireJobs("s", 3, 0, 0)
	require.Zero(t, st.Channels["a"].Queued)
	require.Equal(t, int64(3), st.Channels["b"].Queued)
	for _, j := range a {
		_, err := f.st.GetJob(f.ctx, f.tenant, j.ID)
		require.ErrorIs(t, err, store.ErrJobNotFound)
	}
	f.suspend("s", false)
	rec.requireDispatched(t, b[0].ID)
	f.act(b[0].ID, store.ActRelease)
	rec.requireDispatched(t, b[0].ID, b[1].ID)

	// Terminal jobs: cancelled on a and b, purged on b only.
	c := f.enqueue("s", "a")
	f.act(c.ID, store.ActCancel)
	f.act(b[2].ID, store.ActCancel)
	require.Equal(t, 1, purge(store.JobCancelled, "b"))
	require.Equal(t, store.JobCancelled, f.getJob(c.ID).Status, "the other channel's cancelled job stays")
	_, err := f.st.GetJob(f.ctx, f.tenant, b[2].ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	require.Equal(t, 1, purge(store.JobDone, "b"))
	require.Zero(t, purge(store.JobDone, "b"))
	f.requireJobs("s", 0, 1, 1)
	require.Equal(t, 1, purge(store.JobCancelled, ""), "no channel: every channel")
	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Equal(t, []string{b[1].ID}, jobIDs(jobs))
}
