package storetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// The worker route (store.WorkerRoute): jobs are dispatched by the room of
// the sessions subscribed to the semaphore, bound to one at dispatch, and
// never hold a permit while no worker can take them.

var workerTests = []struct {
	name string
	fn   func(t *testing.T, f *fixture)
}{
	{"Workers_WaitForSubscriber", testWorkersWaitForSubscriber},
	{"Workers_Prefetch", testWorkersPrefetch},
	{"Workers_LeastLoaded", testWorkersLeastLoaded},
	{"Workers_LostAndResumed", testWorkersLostResumed},
	{"Workers_Return", testWorkersReturn},
	{"Workers_RouteChannel", testWorkersRouteChannel},
	{"Workers_Fallback", testWorkersFallback},
	{"Workers_ConfigKept", testWorkersConfigKept},
}

// workerConfig is jobConfig with a worker route.
func workerConfig(maxValue int64, wr store.WorkerRoute) store.SemaphoreConfig {
	c := jobConfig(maxValue)
	c.Workers = &wr
	return c
}

// connect puts a connected session on node n1.
func (f *fixture) connect(id string) {
	f.t.Helper()
	f.heartbeat("n1", longTTL)
	f.putSession(f.newSession(id, "n1"))
}

// requireWorker checks that the job is inflight, bound to session on its
// subscription to channel, on the websocket route, with attempts.
func (f *fixture) requireWorker(id, session, channel string, attempts int) store.Job {
	f.t.Helper()
	j := f.getJob(id)
	require.Equal(f.t, store.JobInflight, j.Status, "job %s", id)
	require.NotNil(f.t, j.Worker, "job %s is bound to a worker", id)
	require.Equal(f.t, session, j.Worker.Session, "job %s's session", id)
	require.Equal(f.t, channel, j.Worker.Channel, "job %s's subscription channel", id)
	require.Equal(f.t, "n1", j.Worker.Node, "job %s's node", id)
	require.Equal(f.t, store.RouteWebsocket, j.Route)
	require.Equal(f.t, attempts, j.Attempts)
	require.NotNil(f.t, j.Lease)
	return j
}

// requireWaiting checks that the job is scheduled with no attempt spent.
func (f *fixture) requireWaiting(id string) {
	f.t.Helper()
	j := f.getJob(id)
	require.Equal(f.t, store.JobScheduled, j.Status, "job %s waits", id)
	require.Zero(f.t, j.Attempts, "job %s spent no attempt", id)
	require.Nil(f.t, j.Lease)
	require.Nil(f.t, j.Worker)
}

// returnJob returns an inflight job under its lease (ActReturn).
func (f *fixture) returnJob(id, lease string) error {
	_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: id, Action: store.ActReturn, LeaseID: lease})
	return err
}

func testWorkersWaitForSubscriber(t *testing.T, f *fixture) {
	f.putConfig("w", workerConfig(5, store.WorkerRoute{}))
	a := f.enqueue("w", "")
	f.requireWaiting(a.ID)
	f.requireJobs("w", 1, 0, 0) // no permit taken
	// A session that subscribes takes it, in the same operation.
	f.connect("s1")
	f.subscribe("s1", "n1", "w", "", 1)
	f.requireWorker(a.ID, "s1", "", 1)
	f.requireJobs("w", 0, 1, 1)
	require.Equal(t, []string{a.ID}, f.getSession("s1").Jobs)
}

func testWorkersPrefetch(t *testing.T, f *fixture) {
	f.putConfig("w", workerConfig(5, store.WorkerRoute{}))
	f.connect("s1")
	f.subscribe("s1", "n1", "w", "", 2)
	a, b, c := f.enqueue("w", ""), f.enqueue("w", ""), f.enqueue("w", "")
	f.requireWorker(a.ID, "s1", "", 1)
	f.requireWorker(b.ID, "s1", "", 1)
	f.requireWaiting(c.ID) // room 2, permits 5: the worker is the limit
	f.requireJobs("w", 1, 2, 2)
	require.Equal(t, 2, f.subscribers("w", store.DefaultChannel)[0].Inflight)
	// A release frees room: the next job goes in the same operation.
	f.act(a.ID, store.ActRelease)
	f.requireWorker(c.ID, "s1", "", 1)
	// So does a failure, and an expiry of a bound job's lease.
	d := f.enqueue("w", "")
	f.requireWaiting(d.ID)
	f.act(b.ID, store.ActFail)
	f.requireWorker(d.ID, "s1", "", 1)
	// A replaced subscription with more room takes more at once.
	e := f.enqueue("w", "")
	f.requireWaiting(e.ID)
	f.subscribe("s1", "n1", "w", "", 3)
	f.requireWorker(e.ID, "s1", "", 1)
}

func testWorkersLeastLoaded(t *testing.T, f *fixture) {
	f.putConfig("w", workerConfig(10, store.WorkerRoute{}))
	f.connect("s1")
	f.connect("s2")
	f.subscribe("s1", "n1", "w", "", 1)
	f.subscribe("s2", "n1", "w", "", 3)
	jobs := []store.Job{f.enqueue("w", ""), f.enqueue("w", ""), f.enqueue("w", ""), f.enqueue("w", "")}
	// Least loaded first, ties by session id: s1, s2, s2, s2.
	for i, want := range []string{"s1", "s2", "s2", "s2"} {
		f.requireWorker(jobs[i].ID, want, "", 1)
	}
	last := f.enqueue("w", "")
	f.requireWaiting(last.ID)
}

func testWorkersLostResumed(t *testing.T, f *fixture) {
	f.putConfig("w", workerConfig(10, store.WorkerRoute{}))
	f.connect("s1")
	f.subscribe("s1", "n1", "w", "", 2)
	require.NoError(t, f.st.LoseSession(f.ctx, f.sp("s1"), longTTL))
	a := f.enqueue("w", "")
	f.requireWaiting(a.ID) // a lost session offers no room
	_, err := f.st.ResumeSession(f.ctx, f.tenant, "tok-s1", "n1")
	require.NoError(t, err)
	f.requireWorker(a.ID, "s1", "", 1)
	// An ended session's subscription offers nothing either.
	_, err = f.st.EndSession(f.ctx, f.sp("s1"))
	require.NoError(t, err)
	b := f.enqueue("w", "")
	f.requireWaiting(b.ID)
}

func testWorkersReturn(t *testing.T, f *fixture) {
	f.putConfig("w", workerConfig(10, store.WorkerRoute{}))
	f.connect("s1")
	f.subscribe("s1", "n1", "w", "", 1)
	a := f.enqueue("w", "")
	b := f.enqueue("w", "")
	ja := f.requireWorker(a.ID, "s1", "", 1)
	f.requireWaiting(b.ID)
	// The push never reached the worker: the job goes back to the head of
	// its queue, its attempt not counted, its permit and room freed (so it
	// is dispatched again at once, before b).
	require.NoError(t, f.returnJob(a.ID, ja.Lease.ID))
	again := f.requireWorker(a.ID, "s1", "", 1)
	require.NotEqual(t, ja.Lease.ID, again.Lease.ID, "a new lease")
	f.requireWaiting(b.ID)
	// With the session lost meanwhile it waits, first in line.
	require.NoError(t, f.st.LoseSession(f.ctx, f.sp("s1"), longTTL))
	require.NoError(t, f.returnJob(a.ID, again.Lease.ID))
	f.requireWaiting(a.ID)
	f.requireJobs("w", 2, 0, 0)
	f.connect("s2")
	f.subscribe("s2", "n1", "w", "", 1)
	f.requireWorker(a.ID, "s2", "", 1)
	f.requireWaiting(b.ID)
	// Only an inflight job returns, and only under its lease.
	require.ErrorIs(t, f.actErr(b.ID, store.ActReturn), store.ErrInvalidState)
	require.ErrorIs(t, f.returnJob(a.ID, ja.Lease.ID), store.ErrStaleLease)
}

func testWorkersRouteChannel(t *testing.T, f *fixture) {
	// The route names the subscription channel: jobs of every channel go
	// to the workers of "gpu".
	f.putConfig("w", workerConfig(10, store.WorkerRoute{Channel: "gpu"}))
	f.connect("s1")
	f.subscribe("s1", "n1", "w", "a", 5) // the job's own channel: not the route's
	a := f.enqueue("w", "a")
	f.requireWaiting(a.ID)
	f.connect("s2")
	f.subscribe("s2", "n1", "w", "gpu", 1)
	f.requireWorker(a.ID, "s2", "gpu", 1)
	// Without a route channel, a job goes to its own channel's workers or
	// to those of every channel, the exact one preferred.
	f.putConfig("x", workerConfig(10, store.WorkerRoute{}))
	f.subscribe("s1", "n1", "x", "b", 1)
	f.subscribe("s1", "n1", "x", "", 5)
	b1, b2 := f.enqueue("x", "b"), f.enqueue("x", "b")
	f.requireWorker(b1.ID, "s1", "b", 1)
	f.requireWaiting(b2.ID) // s1's "b" subscription is full; its "" one is not used for b
	c := f.enqueue("x", "c")
	f.requireWorker(c.ID, "s1", "", 1)
}

func testWorkersFallback(t *testing.T, f *fixture) {
	f.putConfig("w", workerConfig(2, store.WorkerRoute{Fallback: true}))
	a := f.enqueue("w", "")
	j := f.getJob(a.ID)
	require.Equal(t, store.JobInflight, j.Status, "no worker: dispatched for the routes that follow")
	require.Nil(t, j.Worker)
	f.connect("s1")
	f.subscribe("s1", "n1", "w", "", 1)
	b := f.enqueue("w", "")
	f.requireWorker(b.ID, "s1", "", 1)
}

func testWorkersConfigKept(t *testing.T, f *fixture) {
	for _, wr := range []*store.WorkerRoute{{}, {Channel: "gpu", Fallback: true}, nil} {
		cfg := jobConfig(3)
		cfg.Workers = wr
		f.putConfig("w", cfg)
		sem, err := f.st.GetSemaphore(f.ctx, f.tenant, "w")
		require.NoError(t, err)
		require.Equal(t, wr, sem.Config.Workers)
	}
}
