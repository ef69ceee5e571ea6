package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// RunShared runs the tests of two store instances sharing one state: two
// server "nodes" on one Redis, or the same memory store twice. newPair must
// return a fresh pair, isolated from other pairs, and register cleanup.
func RunShared(t *testing.T, newPair func(t *testing.T) (a, b store.Store)) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, a, b *fixture)
	}{
		{"PermitsShared", testSharedPermits},
		{"LeaseUsableOnOtherNode", testSharedLease},
		{"ReleaseOnBWakesWaiterOnA", testSharedWake},
		{"FIFOAcrossNodes", testSharedFIFO},
		{"Jobs_EnqueueOnADispatchOnB", testSharedJobDispatch},
		{"Jobs_ExpirySweptOnB", testSharedJobExpiry},
		{"Rate_NeverOverLimit", testRateSharedNeverOverLimit},
	}
	tests = append(tests, sharedSessionTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, b := newPair(t)
			tc.fn(t, newFixture(t, a), newFixture(t, b))
		})
	}
}

func testSharedPermits(t *testing.T, a, b *fixture) {
	a.put("s", 2, store.ScopeTotal)
	sem, err := b.st.GetSemaphore(b.ctx, b.tenant, "s")
	require.NoError(t, err)
	require.Equal(t, int64(2), sem.Config.MaxValue)
	la := a.acquireW("s", 1)
	lb := b.acquireW("s", 1)
	require.Greater(t, lb.FencingToken, la.FencingToken, "one fencing counter")
	_, err = a.st.Acquire(a.ctx, a.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit)
	_, err = b.st.Acquire(b.ctx, b.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit)
	b.requireUsage("s", 2, 0)
	a.requireUsage("s", 2, 0)
}

func testSharedLease(t *testing.T, a, b *fixture) {
	a.put("s", 1, store.ScopeTotal)
	l := a.acquireW("s", 1)
	ext, err := b.st.Extend(b.ctx, store.ExtendParams{Tenant: b.tenant, LeaseID: l.ID, TTL: 2 * longTTL})
	require.NoError(t, err)
	require.True(t, ext.ExpiresAt.After(l.ExpiresAt))
	b.release(l)
	_, err = a.st.Release(a.ctx, store.ReleaseParams{Tenant: a.tenant, LeaseID: l.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	a.requireUsage("s", 0, 0)
}

func testSharedWake(t *testing.T, a, b *fixture) {
	a.put("s", 1, store.ScopeTotal)
	holder := b.acquireW("s", 1)
	p := a.params("s")
	p.Wait = 30 * time.Second
	w := a.goAcquire(p)
	b.awaitWaiting("s", 1)
	released := time.Now()
	b.release(holder)
	r := recv(t, w, "waiter on a woken by release on b")
	require.NoError(t, r.err)
	require.Less(t, r.at.Sub(released), handOff, "hand-off by push across nodes")
	a.requireUsage("s", 1, 0)
}

func testSharedFIFO(t *testing.T, a, b *fixture) {
	const n = 6
	nodes := []*fixture{a, b}
	a.put("s", 1, store.ScopeTotal)
	holder := a.acquireW("s", 1)
	waiters := make([]<-chan result, n)
	for i := range n {
		node := nodes[i%2]
		p := node.params("s")
		p.Wait = 30 * time.Second
		waiters[i] = node.goAcquire(p)
		a.awaitWaiting("s", int64(i+1))
	}
	for i := range n {
		nodes[(i+1)%2].release(holder) // released on the other node
		holder = recvLease(t, waiters[i], fmt.Sprintf("waiter %d granted", i))
		for j := i + 1; j < n; j++ {
			requirePending(t, waiters[j], fmt.Sprintf("waiter %d after grant of %d", j, i))
		}
	}
	b.release(holder)
	a.requireUsage("s", 0, 0)
}

// testSharedJobDispatch: a job enqueued on a waits for a permit; the
// release on b dispatches it, and the event fires on b, the instance that
// ran the operation (a's listener is set first, so when a and b are one
// store, b's replaces it).
func testSharedJobDispatch(t *testing.T, a, b *fixture) {
	a.putConfig("s", jobConfig(1))
	recA, recB := newRecorder(a, 0), newRecorder(b, 0)
	holder := b.acquireW("s", 1)
	j := a.enqueue("s", "")
	require.Equal(t, store.JobScheduled, j.Status)
	b.release(holder)
	d := recB.requireDispatched(t, j.ID)
	require.NotNil(t, d[0].Lease)
	recA.requireDispatched(t)
	require.Equal(t, store.JobInflight, a.getJob(j.ID).Status)

	// Released on a with b's lease: the next job goes out on a.
	j2 := b.enqueue("s", "")
	_, err := a.st.TransitionJob(a.ctx, store.TransitionParams{
		Tenant: a.tenant, JobID: j.ID, Action: store.ActRelease, LeaseID: d[0].Lease.ID,
	})
	require.NoError(t, err)
	if a.st != b.st {
		recA.requireDispatched(t, j2.ID)
	}
	require.Equal(t, store.JobInflight, b.getJob(j2.ID).Status)
	b.requireJobs("s", 0, 1, 1)
}

// testSharedJobExpiry: a job dispatched on a whose lease expires is
// redispatched by b's Sweep.
func testSharedJobExpiry(t *testing.T, a, b *fixture) {
	cfg := jobConfig(1)
	cfg.LeaseTimeout = shortTTL
	a.putConfig("s", cfg)
	recB := newRecorder(b, 0)
	j := a.enqueue("s", "")
	require.Equal(t, store.JobInflight, j.Status)
	recB.take() // when a and b are one store, b also heard a's dispatch
	require.Eventually(t, func() bool {
		if _, err := b.st.Sweep(b.ctx); err != nil {
			return false
		}
		return recB.has(1)()
	}, eventually, tick, "redispatched by b's sweep")
	d, _ := recB.events()
	require.Equal(t, j.ID, d[0].ID)
	require.Equal(t, 2, d[0].Attempts)
}
