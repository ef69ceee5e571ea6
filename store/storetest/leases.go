package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

func testAcquireRelease(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	before := time.Now()
	p := f.params("s")
	p.Channel, p.TTL = "c1", 10*time.Second
	l := f.acquire(p)
	after := time.Now()

	name, ok := store.ParseLeaseID(l.ID)
	require.True(t, ok, "lease id from store.NewLeaseID: %q", l.ID)
	require.Equal(t, "s", name)
	require.Equal(t, "s", l.Semaphore)
	require.Equal(t, "c1", l.Channel)
	require.Equal(t, int64(1), l.Weight)
	require.Equal(t, 10*time.Second, l.TTL)
	require.Positive(t, l.FencingToken)
	require.WithinRange(t, l.AcquiredAt, before.Add(-time.Second), after.Add(time.Second))
	require.WithinDuration(t, l.AcquiredAt.Add(10*time.Second), l.ExpiresAt, time.Millisecond)

	st := f.state("s")
	require.Equal(t, int64(1), st.InUse)
	require.Equal(t, int64(1), st.Available)
	require.Equal(t, int64(1), st.Channels["c1"].InUse)

	rel, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: l.ID})
	require.NoError(t, err)
	require.Equal(t, l.ID, rel.ID)
	require.Equal(t, l.FencingToken, rel.FencingToken)
	st = f.state("s")
	require.Equal(t, int64(0), st.InUse)
	require.Equal(t, int64(2), st.Available)
	require.Zero(t, st.Channels["c1"].InUse)
}

func testAcquireDefaults(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	l := f.acquire(store.AcquireParams{Tenant: f.tenant, Semaphore: "s", TTL: longTTL})
	require.Equal(t, store.DefaultChannel, l.Channel, "zero channel is the default channel")
	require.Equal(t, int64(1), l.Weight, "zero weight is 1")
	require.Equal(t, int64(1), f.state("s").Channels[store.DefaultChannel].InUse)

	// Zero TTL: the semaphore's leaseTimeout, read inside the acquire.
	sem, _, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{
		Tenant: f.tenant, Name: "lt",
		Config: store.SemaphoreConfig{MaxValue: 1, MaxValueScope: store.ScopeTotal, LeaseTimeout: 3 * time.Second},
	})
	require.NoError(t, err)
	l = f.acquire(store.AcquireParams{Tenant: f.tenant, Semaphore: sem.Name})
	require.Equal(t, 3*time.Second, l.ExpiresAt.Sub(l.AcquiredAt), "zero ttl is the semaphore's leaseTimeout")
}

func testNoPermit(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	l1 := f.acquireW("s", 1)
	f.acquireW("s", 1)
	_, err := f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit)
	st := f.state("s")
	require.Equal(t, int64(2), st.InUse)
	require.Equal(t, int64(0), st.Available)
	require.Equal(t, int64(0), st.Waiting, "a failed acquire without wait leaves no waiter")
	f.release(l1)
	f.acquireW("s", 1)
}

func testWeights(t *testing.T, f *fixture) {
	f.put("s", 5, store.ScopeTotal)
	l3 := f.acquireW("s", 3)
	require.Equal(t, int64(3), l3.Weight)
	p := f.params("s")
	p.Weight = 3
	_, err := f.st.Acquire(f.ctx, p)
	require.ErrorIs(t, err, store.ErrNoPermit, "3+3 > 5")
	f.acquireW("s", 2)
	f.requireUsage("s", 5, 0)
	f.release(l3)
	f.requireUsage("s", 2, 0)
	f.acquireW("s", 3)
}

func testWeightTooLarge(t *testing.T, f *fixture) {
	f.put("tot", 2, store.ScopeTotal)
	f.put("chn", 2, store.ScopeChannel)
	for _, name := range []string{"tot", "chn"} {
		p := f.params(name)
		p.Weight = 3
		_, err := f.st.Acquire(f.ctx, p)
		require.ErrorIs(t, err, store.ErrWeightTooLarge, name)
		p.Wait = 10 * time.Second
		_, err = f.st.Acquire(f.ctx, p)
		require.ErrorIs(t, err, store.ErrWeightTooLarge, "%s: fails at once, even with a wait", name)
		f.requireUsage(name, 0, 0)
		f.acquireW(name, 2) // maxValue itself is fine
	}
}

func testScopeTotal(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	pa, pb, pc := f.params("s"), f.params("s"), f.params("s")
	pa.Channel, pb.Channel, pc.Channel = "a", "b", "c"
	f.acquire(pa)
	f.acquire(pb)
	_, err := f.st.Acquire(f.ctx, pc)
	require.ErrorIs(t, err, store.ErrNoPermit, "maxValue is shared across channels")
	st := f.state("s")
	require.Equal(t, int64(2), st.InUse)
	require.Equal(t, int64(0), st.Available)
	require.Equal(t, int64(1), st.Channels["a"].InUse)
	require.Equal(t, int64(1), st.Channels["b"].InUse)
	require.Equal(t, int64(0), st.Channels["a"].Available, "a channel's available is the shared remainder")
}

func testScopeChannel(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeChannel)
	pa, pb := f.params("s"), f.params("s")
	pa.Channel, pb.Channel = "a", "b"
	pa.Weight, pb.Weight = 2, 1
	la := f.acquire(pa)
	f.acquire(pb)
	pa.Weight = 1
	_, err := f.st.Acquire(f.ctx, pa)
	require.ErrorIs(t, err, store.ErrNoPermit, "channel a is full")
	f.acquire(pb) // channel b has its own maxValue
	_, err = f.st.Acquire(f.ctx, pb)
	require.ErrorIs(t, err, store.ErrNoPermit, "channel b is full")
	pc := f.params("s")
	pc.Channel, pc.Weight = "c", 2
	f.acquire(pc)

	st := f.state("s")
	require.Equal(t, int64(6), st.InUse)
	require.Equal(t, store.ChannelState{InUse: 2, Available: 0}, st.Channels["a"])
	require.Equal(t, store.ChannelState{InUse: 2, Available: 0}, st.Channels["b"])
	f.release(la)
	st = f.state("s")
	require.Equal(t, int64(0), st.Channels["a"].InUse)
	pa.Weight = 2
	f.acquire(pa)
}

func testIdempotency(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	f.put("other", 2, store.ScopeTotal)
	p := f.params("s")
	p.IdempotencyKey = "req-1"
	l1 := f.acquire(p)
	l2 := f.acquire(p)
	require.Equal(t, l1.ID, l2.ID, "same key, same lease")
	require.Equal(t, l1.FencingToken, l2.FencingToken, "no new grant")
	f.requireUsage("s", 1, 0)

	po := f.params("other")
	po.IdempotencyKey = "req-1"
	lo := f.acquire(po)
	require.NotEqual(t, l1.ID, lo.ID, "keys are per semaphore")

	p2 := p
	p2.IdempotencyKey = "req-2"
	l3 := f.acquire(p2)
	require.NotEqual(t, l1.ID, l3.ID)
	f.requireUsage("s", 2, 0)
	l4 := f.acquire(p) // full, but the key's lease is live
	require.Equal(t, l1.ID, l4.ID)

	f.release(l1)
	l5 := f.acquire(p)
	require.NotEqual(t, l1.ID, l5.ID, "after its lease ends, a key grants anew")
	require.Greater(t, l5.FencingToken, l1.FencingToken)
}

func testLeaseNotFound(t *testing.T, f *fixture) {
	f.put("s", 3, store.ScopeTotal)
	keep := f.acquireW("s", 1)
	released := f.acquireW("s", 1)
	f.release(released)
	p := f.params("s")
	p.TTL = 50 * time.Millisecond
	short := f.acquire(p)
	waitUntil(short.ExpiresAt.Add(50 * time.Millisecond))
	f.sweepUntil(f.inUseIs("s", 1), "short lease expired")

	ids := map[string]string{
		"released":     released.ID,
		"expired":      short.ID,
		"unknown":      store.NewLeaseID("s"),
		"other sem":    store.NewLeaseID("other"),
		"garbage":      "not-a-lease-id",
		"empty":        "",
		"truncated id": keep.ID[:20],
	}
	for what, id := range ids {
		_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: id})
		require.ErrorIs(t, err, store.ErrLeaseNotFound, "release %s", what)
		_, err = f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: id, TTL: time.Hour})
		require.ErrorIs(t, err, store.ErrLeaseNotFound, "extend %s", what)
	}
	st := f.state("s")
	require.Equal(t, int64(1), st.InUse, "nothing changed")
	require.Equal(t, int64(2), st.Available)
	f.release(keep)
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: keep.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "a second release")
	f.requireUsage("s", 0, 0)
}

func testExtend(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	p := f.params("s")
	p.TTL = shortTTL
	l := f.acquire(p)
	ext, err := f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: l.ID, TTL: longTTL})
	require.NoError(t, err)
	require.Equal(t, l.ID, ext.ID)
	require.Equal(t, l.FencingToken, ext.FencingToken, "extend keeps the token")
	require.True(t, ext.ExpiresAt.After(l.ExpiresAt.Add(longTTL/2)), "expiresAt moved: %v -> %v", l.ExpiresAt, ext.ExpiresAt)

	waitUntil(l.ExpiresAt.Add(100 * time.Millisecond)) // past the original expiry
	_, err = f.st.Sweep(f.ctx)
	require.NoError(t, err)
	f.requireUsage("s", 1, 0)
	_, err = f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit, "the extended lease still holds its permit")

	// shortening works too
	ext2, err := f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: l.ID, TTL: 50 * time.Millisecond})
	require.NoError(t, err)
	require.True(t, ext2.ExpiresAt.Before(ext.ExpiresAt))
	f.sweepUntil(f.inUseIs("s", 0), "shortened lease expires")
	_, err = f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: l.ID, TTL: longTTL})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "an expired lease cannot be extended")
}

func testExpiryReturnsPermits(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	p := f.params("s")
	p.TTL, p.Weight = shortTTL, 2
	l := f.acquire(p)
	_, err := f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit)
	f.sweepUntil(f.inUseIs("s", 0), "permits return by expiry")
	require.False(t, time.Now().Before(l.ExpiresAt.Add(-50*time.Millisecond)), "not before expiresAt")
	st := f.state("s")
	require.Equal(t, int64(2), st.Available)
	f.acquireW("s", 2)
	_, err = f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: l.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	f.requireUsage("s", 2, 0)
}

func testSweepCounts(t *testing.T, f *fixture) {
	f.put("s1", 5, store.ScopeTotal)
	f.put("s2", 5, store.ScopeChannel)
	f.acquireW("s1", 1) // long, stays
	p1, p2 := f.params("s1"), f.params("s2")
	p1.TTL, p2.TTL = 50*time.Millisecond, 50*time.Millisecond
	p2.Channel = "x"
	// No other call touches the semaphores until Sweep, so only Sweep can
	// find these expired.
	f.acquire(p1)
	f.acquire(p1)
	last := f.acquire(p2)
	waitUntil(last.ExpiresAt.Add(50 * time.Millisecond))
	total := 0
	require.Eventually(t, func() bool {
		n, err := f.st.Sweep(f.ctx)
		total += n
		return err == nil && total >= 3
	}, eventually, tick, "Sweep reports the expired leases")
	require.Equal(t, 3, total)
	f.requireUsage("s1", 1, 0)
	f.requireUsage("s2", 0, 0)
}

func testMaxValueLowered(t *testing.T, f *fixture) {
	f.put("s", 3, store.ScopeTotal)
	ls := []store.Lease{f.acquireW("s", 1), f.acquireW("s", 1), f.acquireW("s", 1)}
	f.put("s", 1, store.ScopeTotal)
	st := f.state("s")
	require.Equal(t, int64(3), st.InUse, "live leases are not revoked")
	require.Equal(t, int64(0), st.Available, "available floors at 0")
	for _, l := range ls {
		_, err := f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: l.ID, TTL: longTTL})
		require.NoError(t, err, "still live")
	}
	f.release(ls[0])
	_, err := f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit, "2 in use >= 1")
	f.release(ls[1])
	_, err = f.st.Acquire(f.ctx, f.params("s"))
	require.ErrorIs(t, err, store.ErrNoPermit, "1 in use >= 1")
	f.release(ls[2])
	f.acquireW("s", 1)
	p := f.params("s")
	p.Weight = 2
	_, err = f.st.Acquire(f.ctx, p)
	require.ErrorIs(t, err, store.ErrWeightTooLarge, "scope aware of the new maxValue")
}

func testMaxValueRaised(t *testing.T, f *fixture) {
	f.put("s", 2, store.ScopeTotal)
	f.acquireW("s", 2)
	p := f.params("s")
	p.Wait = 30 * time.Second
	w1 := f.goAcquire(p)
	f.awaitWaiting("s", 1)
	p.Weight = 2
	w2 := f.goAcquire(p)
	f.awaitWaiting("s", 2)
	requirePending(t, w1, "w1 before raise")

	f.put("s", 5, store.ScopeTotal) // no release, no sweep: the raise itself grants
	l1 := recvLease(t, w1, "w1 granted by raise")
	l2 := recvLease(t, w2, "w2 granted by raise")
	require.Less(t, l1.FencingToken, l2.FencingToken, "granted in FIFO order")
	f.requireUsage("s", 5, 0)
}
