package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// jobIn returns a job of a fresh semaphore name (maxValue 10, maxAttempts 1)
// brought into status. A scheduled job's semaphore is suspended.
func (f *fixture) jobIn(name string, status store.JobStatus) store.Job {
	f.t.Helper()
	cfg := jobConfig(10)
	cfg.MaxAttempts = 1
	f.putConfig(name, cfg)
	if status == store.JobScheduled {
		f.suspend(name, true)
		return f.enqueue(name, "")
	}
	j := f.enqueue(name, "")
	require.Equal(f.t, store.JobInflight, j.Status)
	switch status {
	case store.JobInflight:
		return j
	case store.JobDone:
		j = f.act(j.ID, store.ActRelease)
	case store.JobError:
		j = f.act(j.ID, store.ActFail)
	case store.JobTimeout:
		j = f.act(j.ID, store.ActRetry) // attempts exhausted
	case store.JobCancelled:
		j = f.act(j.ID, store.ActCancel)
	}
	require.Equal(f.t, status, j.Status)
	return j
}

// testJobTransitionTable applies every action to a job in every status:
// where it applies, the job ends in the expected status; elsewhere the
// answer is ErrInvalidState and nothing changes.
func testJobTransitionTable(t *testing.T, f *fixture) {
	statuses := []store.JobStatus{
		store.JobScheduled, store.JobInflight, store.JobDone, store.JobError, store.JobTimeout, store.JobCancelled,
	}
	terminal := statuses[2:]
	inflightOnly := []store.JobStatus{store.JobInflight}
	for _, tc := range []struct {
		action store.JobAction
		from   []store.JobStatus
		to     store.JobStatus // when applied (maxValue free, maxAttempts 1)
	}{
		{store.ActDelivered, inflightOnly, store.JobInflight},
		{store.ActRelease, inflightOnly, store.JobDone},
		{store.ActFail, inflightOnly, store.JobError},
		{store.ActRetry, inflightOnly, store.JobTimeout},
		{store.ActSuspend, inflightOnly, store.JobScheduled},
		{store.ActHandOff, inflightOnly, store.JobDone},
		{store.ActCancel, []store.JobStatus{store.JobScheduled, store.JobInflight}, store.JobCancelled},
		{store.ActRequeue, terminal, store.JobInflight}, // requeued and dispatched at once
	} {
		for _, from := range statuses {
			name := fmt.Sprintf("%s-%s", tc.action, from)
			j := f.jobIn(name, from)
			got, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
				Tenant: f.tenant, JobID: j.ID, Action: tc.action, Route: "https",
				Child: &store.JobRef{Semaphore: "child", ID: store.NewJobID("child")},
			})
			if !slices.Contains(tc.from, from) {
				require.ErrorIs(t, err, store.ErrInvalidState, "%s of a %s job", tc.action, from)
				after := f.getJob(j.ID)
				require.Equal(t, from, after.Status, "%s of a %s job changes nothing", tc.action, from)
				require.Equal(t, j.Attempts, after.Attempts)
				continue
			}
			require.NoError(t, err, "%s of a %s job", tc.action, from)
			require.Equal(t, tc.to, got.Status, "%s of a %s job", tc.action, from)
			require.Equal(t, tc.to, f.getJob(j.ID).Status)
			require.Equal(t, tc.to == store.JobInflight, got.Lease != nil, "a lease exactly while inflight")
			require.Equal(t, tc.to.Terminal(), !got.FinishedAt.IsZero(), "FinishedAt exactly while terminal")
			st := f.state(name)
			var want int64
			if tc.to == store.JobInflight {
				want = 1
			}
			require.Equal(t, want, st.Inflight, "%s of a %s job", tc.action, from)
			require.Equal(t, want, st.InUse, "a terminal or scheduled job holds no permit")
		}
	}
	require.ErrorIs(t, f.actErr(f.jobIn("bogus", store.JobInflight).ID, "bogus"), store.ErrInvalidState, "an unknown action")
}

func testJobFailRetrySuspend(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)
	j1, j2 := f.enqueue("s", ""), f.enqueue("s", "")

	// fail: error with the message; the permit goes to j2.
	failed, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j1.ID, Action: store.ActFail, Error: "every route failed",
	})
	require.NoError(t, err)
	require.Equal(t, store.JobError, failed.Status)
	require.Equal(t, "every route failed", failed.Error)
	require.Nil(t, failed.Lease)
	_, fin := rec.events()
	require.Equal(t, []string{j1.ID}, jobIDs(fin), "a transition to a terminal state is reported as finished")
	rec.requireDispatched(t, j1.ID, j2.ID)

	// retry: back of the queue with the attempt counted.
	j3 := f.enqueue("s", "")
	r := f.act(j2.ID, store.ActRetry)
	require.Equal(t, store.JobScheduled, r.Status)
	require.Equal(t, 1, r.Attempts)
	require.Nil(t, r.Lease)
	d := rec.requireDispatched(t, j1.ID, j2.ID, j3.ID) // j3 was ahead of the retried j2
	f.act(j3.ID, store.ActRelease)
	d = rec.requireDispatched(t, j1.ID, j2.ID, j3.ID, j2.ID)
	require.Equal(t, 2, d[3].Attempts)

	// suspend: head of the queue, the attempt not counted, the semaphore suspended.
	j4 := f.enqueue("s", "")
	s := f.act(j2.ID, store.ActSuspend)
	require.Equal(t, store.JobScheduled, s.Status)
	require.Equal(t, 1, s.Attempts, "the suspended attempt is not counted")
	sem, err := f.st.GetSemaphore(f.ctx, f.tenant, "s")
	require.NoError(t, err)
	require.True(t, sem.Suspended)
	rec.requireDispatched(t, j1.ID, j2.ID, j3.ID, j2.ID)
	f.requireJobs("s", 2, 0, 0)
	f.suspend("s", false)
	d = rec.requireDispatched(t, j1.ID, j2.ID, j3.ID, j2.ID, j2.ID) // ahead of j4
	require.Equal(t, 2, d[4].Attempts)

	// retry with attempts exhausted: timeout with the message.
	r = f.act(j2.ID, store.ActRelease)
	require.Equal(t, store.JobDone, r.Status)
	rec.requireDispatched(t, j1.ID, j2.ID, j3.ID, j2.ID, j2.ID, j4.ID)
	cfg.MaxAttempts = 1
	f.putConfig("s", cfg)
	to, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j4.ID, Action: store.ActRetry, Error: "session lost",
	})
	require.NoError(t, err)
	require.Equal(t, store.JobTimeout, to.Status)
	require.Equal(t, "session lost", to.Error)
	f.requireJobs("s", 0, 0, 0)
}

func testJobRequeue(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	rec := newRecorder(f, 0)
	j := f.enqueue("s", "")
	_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: store.ActFail, Error: "boom"})
	require.NoError(t, err)
	other := f.enqueue("s", "") // dispatched: the permit is taken
	require.Equal(t, store.JobInflight, other.Status)
	queued := f.enqueue("s", "")

	r := f.act(j.ID, store.ActRequeue)
	require.Equal(t, store.JobScheduled, r.Status)
	require.Zero(t, r.Attempts, "attempts reset")
	require.Empty(t, r.Error, "error cleared")
	require.True(t, r.FinishedAt.IsZero())
	require.Nil(t, r.Lease)
	f.requireJobs("s", 2, 1, 1)

	f.act(other.ID, store.ActRelease)
	f.act(queued.ID, store.ActRelease)
	d := rec.requireDispatched(t, j.ID, other.ID, queued.ID, j.ID) // back of the queue
	require.Equal(t, 1, d[3].Attempts)
	require.Equal(t, j.ID, f.getJob(j.ID).ID)
}

func testJobDeliveredAndHandOff(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(2))
	rec := newRecorder(f, 0)
	j := f.enqueue("s", "")

	before := time.Now()
	del, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j.ID, Action: store.ActDelivered, Route: "https", LeaseID: j.Lease.ID,
	})
	require.NoError(t, err)
	require.Equal(t, store.JobInflight, del.Status)
	require.Equal(t, "https", del.Route)
	require.WithinDuration(t, j.Lease.ExpiresAt, del.Lease.ExpiresAt, time.Millisecond, "no HoldTTL: the lease is unchanged")
	del, err = f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j.ID, Action: store.ActDelivered, Route: "websocket", HoldTTL: 3 * longTTL,
	})
	require.NoError(t, err)
	require.Equal(t, "websocket", del.Route)
	require.Equal(t, j.Lease.ID, del.Lease.ID, "the same lease")
	require.WithinRange(t, del.Lease.ExpiresAt, before.Add(3*longTTL-time.Second), time.Now().Add(3*longTTL+time.Second))
	require.WithinDuration(t, del.Lease.ExpiresAt, f.getJob(j.ID).Lease.ExpiresAt, time.Millisecond)
	f.act(j.ID, store.ActRelease)
	got := f.getJob(j.ID)
	require.Equal(t, store.JobDone, got.Status)
	require.Equal(t, "websocket", got.Route, "the route is kept")

	// Hand-off with release: done at once, the permit freed.
	p := f.enqueue("s", "")
	child := &store.JobRef{Semaphore: "target", ID: store.NewJobID("target")}
	h, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: p.ID, Action: store.ActHandOff, Route: "semaphore", Child: child,
	})
	require.NoError(t, err)
	require.Equal(t, store.JobDone, h.Status)
	require.Equal(t, "semaphore", h.Route)
	require.Equal(t, child, h.Child)
	require.Nil(t, h.Lease)
	f.requireJobs("s", 0, 0, 0)

	// Hand-off with hold: inflight, its lease held for HoldTTL, until released.
	q := f.enqueue("s", "")
	hold := &store.JobRef{Semaphore: "target", ID: store.NewJobID("target"), Hold: true}
	before = time.Now()
	h, err = f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: q.ID, Action: store.ActHandOff, Route: "semaphore", Child: hold, HoldTTL: 2 * longTTL,
	})
	require.NoError(t, err)
	require.Equal(t, store.JobInflight, h.Status)
	require.Equal(t, hold, h.Child)
	require.Equal(t, "semaphore", h.Route)
	require.Equal(t, q.Lease.ID, h.Lease.ID)
	require.WithinRange(t, h.Lease.ExpiresAt, before.Add(2*longTTL-time.Second), time.Now().Add(2*longTTL+time.Second))
	f.requireJobs("s", 0, 1, 1)
	got = f.getJob(q.ID)
	require.Equal(t, hold, got.Child)
	f.act(q.ID, store.ActRelease)
	f.requireJobs("s", 0, 0, 0)
	_, fin := rec.events()
	require.Equal(t, []string{j.ID, p.ID, q.ID}, jobIDs(fin))

	// A child job records its parent.
	parent := &store.JobRef{Semaphore: "s", ID: q.ID, Hold: true}
	c, _, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`1`), Parent: parent})
	require.NoError(t, err)
	require.Equal(t, parent, c.Parent)
	require.Equal(t, parent, f.getJob(c.ID).Parent)

	// Accepted and released at once (an https route with releaseOnSuccess):
	// the release records the route.
	f.act(c.ID, store.ActCancel)
	r := f.enqueue("s", "")
	rel, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: r.ID, Action: store.ActRelease, Route: "https", LeaseID: r.Lease.ID,
	})
	require.NoError(t, err)
	require.Equal(t, store.JobDone, rel.Status)
	require.Equal(t, "https", rel.Route)
	require.Equal(t, "https", f.getJob(r.ID).Route)
}

func testJobStaleLease(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	cfg.LeaseTimeout = shortTTL
	f.putConfig("s", cfg)
	rec := newRecorder(f, 0)
	j := f.enqueue("s", "")
	old := j.Lease.ID
	f.sweepUntil(rec.has(2), "job redispatched after its lease expired")
	d, _ := rec.events()
	require.Equal(t, j.ID, d[1].ID)
	current := d[1].Lease.ID
	require.NotEqual(t, old, current)
	for _, a := range []store.JobAction{store.ActRelease, store.ActFail, store.ActDelivered, store.ActRetry, store.ActCancel} {
		_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: a, LeaseID: old})
		require.ErrorIs(t, err, store.ErrStaleLease, "%s with the lease of an earlier delivery", a)
	}
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: old})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	got, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: store.ActRelease, LeaseID: current})
	if err != nil { // the second lease may have expired too on a slow machine
		require.ErrorIs(t, err, store.ErrStaleLease)
		return
	}
	require.Equal(t, store.JobDone, got.Status)
	_, err = f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: store.ActRelease, LeaseID: current})
	require.ErrorIs(t, err, store.ErrStaleLease, "the lease of a released job is stale")
	require.ErrorIs(t, f.actErr(j.ID, store.ActRelease), store.ErrInvalidState, "without a lease id: a wrong transition")
}

// testJobFailRetry: a worker's fail (ActFailRetry) frees the permit at once
// and keeps the message; the job goes back to its queue while attempts
// remain, and ends in error (not timeout) once they are spent.
func testJobFailRetry(t *testing.T, f *fixture) {
	cfg := jobConfig(1)
	cfg.MaxAttempts = 2
	f.putConfig("s", cfg)
	a, b := f.enqueue("s", ""), f.enqueue("s", "")
	fail := func(id, msg string) store.Job {
		t.Helper()
		j, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: id, Action: store.ActFailRetry, Error: msg})
		require.NoError(t, err)
		return j
	}
	j := fail(a.ID, "disk full")
	require.Equal(t, store.JobScheduled, j.Status, "one attempt of two spent: scheduled again")
	require.Equal(t, "disk full", j.Error, "the message stays while it waits")
	require.Equal(t, 1, j.Attempts)
	require.Nil(t, j.Lease)
	require.Equal(t, store.JobInflight, f.getJob(b.ID).Status, "the permit went to the next job at once")
	f.act(b.ID, store.ActRelease)
	require.Equal(t, store.JobInflight, f.getJob(a.ID).Status)
	j = fail(a.ID, "disk still full")
	require.Equal(t, store.JobError, j.Status, "attempts spent: error, not timeout")
	require.Equal(t, "disk still full", j.Error)
	require.Equal(t, 2, j.Attempts)
	require.False(t, j.FinishedAt.IsZero())
	f.requireJobs("s", 0, 0, 0)
	require.ErrorIs(t, f.actErr(a.ID, store.ActFailRetry), store.ErrInvalidState)
}
