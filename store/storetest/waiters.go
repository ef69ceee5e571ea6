package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// handOff bounds how long a pushed hand-off (release → waiter) may take. No
// test calls Sweep while it waits for a hand-off, so a store that only
// grants waiters from Sweep fails.
const handOff = time.Second

func testReleaseWakesWaiter(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	holder := f.acquireW("s", 1)
	p := f.params("s")
	p.Wait = 30 * time.Second
	w := f.goAcquire(p)
	f.awaitWaiting("s", 1)
	requirePending(t, w, "waiter before release")

	released := time.Now()
	f.release(holder)
	r := recv(t, w, "waiter woken by release")
	require.NoError(t, r.err)
	require.Less(t, r.at.Sub(released), handOff, "hand-off by push")
	require.Greater(t, r.lease.FencingToken, holder.FencingToken)
	require.Equal(t, int64(1), r.lease.Weight)
	require.WithinDuration(t, r.lease.AcquiredAt.Add(longTTL), r.lease.ExpiresAt, time.Millisecond,
		"the TTL runs from the grant")
	f.requireUsage("s", 1, 0)
	f.release(r.lease)
	f.requireUsage("s", 0, 0)
}

func testFIFO(t *testing.T, f *fixture) {
	const n = 6
	f.put("s", 1, store.ScopeTotal)
	holder := f.acquireW("s", 1)
	waiters := make([]<-chan result, n)
	for i := range n {
		p := f.params("s")
		p.Wait = 30 * time.Second
		p.Channel = fmt.Sprintf("c%d", i%3) // one domain across channels (scope total)
		waiters[i] = f.goAcquire(p)
		f.awaitWaiting("s", int64(i+1)) // arrival order is known
	}
	for i := range n {
		f.release(holder)
		holder = recvLease(t, waiters[i], fmt.Sprintf("waiter %d granted", i))
		require.Equal(t, fmt.Sprintf("c%d", i%3), holder.Channel)
		for j := i + 1; j < n; j++ {
			requirePending(t, waiters[j], fmt.Sprintf("waiter %d after grant of %d", j, i))
		}
		f.requireUsage("s", 1, int64(n-i-1))
	}
	f.release(holder)
	f.requireUsage("s", 0, 0)
}

func testHeavyHead(t *testing.T, f *fixture) {
	f.put("s", 3, store.ScopeTotal)
	holder := f.acquireW("s", 2) // 1 free
	heavy := f.params("s")
	heavy.Weight, heavy.Wait = 3, 30*time.Second
	hw := f.goAcquire(heavy)
	f.awaitWaiting("s", 1)
	light := f.params("s")
	light.Wait = 30 * time.Second
	lw := f.goAcquire(light)
	f.awaitWaiting("s", 2) // the light one queues although 1 permit is free

	_, err := f.st.Sweep(f.ctx)
	require.NoError(t, err)
	requirePending(t, lw, "light waiter must not overtake the heavy head")
	_, err = f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit, "no barging past the heavy head")
	f.requireUsage("s", 2, 2)

	f.release(holder)
	hl := recvLease(t, hw, "heavy head granted")
	require.Equal(t, int64(3), hl.Weight)
	requirePending(t, lw, "light waiter while heavy holds all")
	f.requireUsage("s", 3, 1)
	f.release(hl)
	ll := recvLease(t, lw, "light waiter granted")
	require.Greater(t, ll.FencingToken, hl.FencingToken)
	f.requireUsage("s", 1, 0)
}

func testHeavyHeadOtherChannel(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeChannel)
	pa := f.params("s")
	pa.Channel = "a"
	holder := f.acquire(pa)
	heavy := pa
	heavy.Weight, heavy.Wait = 2, 30*time.Second
	hw := f.goAcquire(heavy)
	f.awaitWaiting("s", 1)
	light := pa
	light.Wait = 30 * time.Second
	lw := f.goAcquire(light)
	f.awaitWaiting("s", 2)

	_, err := f.st.Acquire(f.ctx, pa)
	require.ErrorIs(t, err, store.ErrNoPermit, "no barging in channel a")
	pb := f.params("s")
	pb.Channel, pb.Weight = "b", 2
	lb := f.acquire(pb) // another domain: not blocked by a's queue
	st := f.state("s")
	require.Equal(t, int64(2), st.Channels["a"].Waiting)
	require.Equal(t, int64(0), st.Channels["b"].Waiting)

	f.release(lb) // a release in b wakes nobody in a
	requirePending(t, hw, "heavy waiter in a")
	requirePending(t, lw, "light waiter in a")
	f.release(holder)
	hl := recvLease(t, hw, "heavy head of a granted")
	f.release(hl)
	recvLease(t, lw, "light waiter of a granted")
}

func testNoBarging(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	holder := f.acquireW("s", 1)
	p := f.params("s")
	p.Wait = 30 * time.Second
	w := f.goAcquire(p)
	f.awaitWaiting("s", 1)

	f.release(holder) // the permit goes to the waiter inside the release
	_, err := f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit, "a non-waiting acquire must not take the waiter's permit")
	l := recvLease(t, w, "waiter granted")
	f.requireUsage("s", 1, 0)
	f.release(l)
}

func testWaiterTimeout(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	holder := f.acquireW("s", 1)
	p := f.params("s")
	p.Wait = shortTTL
	start := time.Now()
	_, err := f.st.Acquire(f.ctx, p)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, store.ErrNoPermit)
	require.GreaterOrEqual(t, elapsed, p.Wait-10*time.Millisecond, "waited the full wait")
	require.Less(t, elapsed, eventually)
	f.requireUsage("s", 1, 0)

	f.release(holder)
	f.requireUsage("s", 0, 0) // the gone waiter got nothing
	f.acquireW("s", 1)
}

func testWaiterCtxCancel(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	holder := f.acquireW("s", 1)
	p := f.params("s")
	p.Wait = 30 * time.Second
	ctx, cancel := context.WithCancel(f.ctx)
	w := f.goAcquireCtx(ctx, cancel, p)
	f.awaitWaiting("s", 1)
	cancel()
	r := recv(t, w, "cancelled waiter returns")
	require.ErrorIs(t, r.err, context.Canceled)
	f.requireUsage("s", 1, 0)

	f.release(holder)
	f.requireUsage("s", 0, 0)
	f.acquireW("s", 1)
}

func testLeavingHeadGrantsNext(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	f.acquireW("s", 1)
	heavy := f.params("s")
	heavy.Weight, heavy.Wait = 2, 300*time.Millisecond
	hw := f.goAcquire(heavy)
	f.awaitWaiting("s", 1)
	light := f.params("s")
	light.Wait = 30 * time.Second
	lw := f.goAcquire(light)
	f.awaitWaiting("s", 2)

	r := recv(t, hw, "heavy head times out")
	require.ErrorIs(t, r.err, store.ErrNoPermit)
	l := recv(t, lw, "light waiter granted when the head leaves")
	require.NoError(t, l.err)
	require.Less(t, l.at.Sub(r.at), handOff, "granted by the head leaving, not by a later event")
	f.requireUsage("s", 2, 0)
}

func testExpiryGrantsWaiter(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	p := f.params("s")
	p.TTL = shortTTL
	holder := f.acquire(p)
	pw := f.params("s")
	pw.Wait = 30 * time.Second
	w := f.goAcquire(pw)
	f.awaitWaiting("s", 1)

	var got result
	f.sweepUntil(func() bool {
		select {
		case got = <-w:
			return true
		default:
			return false
		}
	}, "waiter granted after the holder expired")
	require.NoError(t, got.err)
	require.Greater(t, got.lease.FencingToken, holder.FencingToken)
	require.False(t, got.at.Before(holder.ExpiresAt.Add(-50*time.Millisecond)), "not before the holder expired")
	f.requireUsage("s", 1, 0)
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: holder.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
}

// testCancelRacesGrant: a waiter whose context ends while the release that
// grants it runs either returns the lease or leaves nothing behind: after
// every round, with the lease (if any) released, nothing is in use and
// nobody waits, without any sweep.
func testCancelRacesGrant(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	got := 0
	for i := range 30 {
		holder := f.acquireW("s", 1)
		p := f.params("s")
		p.Wait = 30 * time.Second
		ctx, cancel := context.WithCancel(f.ctx)
		w := f.goAcquireCtx(ctx, cancel, p)
		f.awaitWaiting("s", 1)
		rel := make(chan error, 1)
		go func() {
			_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: holder.ID})
			rel <- err
		}()
		if i%3 != 0 { // vary who goes first
			time.Sleep(time.Duration(i%5) * 100 * time.Microsecond)
		}
		cancel()
		r := recv(t, w, "waiter returns")
		require.NoError(t, <-rel)
		if r.err == nil {
			got++
			f.release(r.lease)
		} else {
			require.ErrorIs(t, r.err, context.Canceled)
		}
		f.requireUsage("s", 0, 0)
	}
	t.Logf("%d of 30 waiters got their lease before the cancel", got)
}
