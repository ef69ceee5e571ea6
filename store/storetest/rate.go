package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// The rate limit (store.RateLimit, SPEC §2.6). Grant times are read from
// Lease.AcquiredAt, the store's clock, never from the test's: a window is
// checked on what the store did, and a timer grant is judged by how far
// its AcquiredAt lies after the instant its slot opened.

// rateOnTime bounds how late after its slot (the instant enough units left
// the window) a waiter or queued job is granted: by a timer, not a poll
// (no test calls Sweep while it waits, and the sweep interval is 250 ms).
// The memory store grants within 1 ms of the slot, also with -race, the
// whole suite in parallel and another core kept busy on 2 cores; the rest
// is headroom for a loaded machine and Redis' round trips.
const rateOnTime = 50 * time.Millisecond

// grantSeen is one grant as a test saw it.
type grantSeen struct {
	at      time.Time // Lease.AcquiredAt
	weight  int64
	channel string
}

func seen(l store.Lease) grantSeen {
	return grantSeen{at: l.AcquiredAt, weight: l.Weight, channel: l.Channel}
}

func seenAll(ls ...store.Lease) []grantSeen {
	out := make([]grantSeen, 0, len(ls))
	for _, l := range ls {
		out = append(out, seen(l))
	}
	return out
}

// rateConfig is a config with a rate: a long leaseTimeout, 3 attempts.
func rateConfig(maxValue int64, scope string, limit int64, period time.Duration) store.SemaphoreConfig {
	return store.SemaphoreConfig{
		MaxValue: maxValue, MaxValueScope: scope, LeaseTimeout: longTTL, MaxAttempts: 3,
		Rate: &store.RateLimit{Limit: limit, Period: period}, Retention: keep,
	}
}

// scopeDomain returns the capacity domain function of a scope.
func scopeDomain(scope string) func(string) string {
	return func(ch string) string {
		if scope == store.ScopeChannel {
			return ch
		}
		return ""
	}
}

// windowViolation checks the rate on a set of grants: at every grant's
// instant t, the grants of its domain made in (t-period, t] (itself and
// those at the same instant included) sum to at most limit(t). With a
// constant limit this is "every window of length period holds at most
// limit units", since the fullest window starts at a grant. It returns
// a description of the first violation, or "".
func windowViolation(grants []grantSeen, domain func(string) string, limit func(time.Time) int64, period time.Duration) string {
	for _, g := range grants {
		var sum int64
		var in []string
		for _, h := range grants {
			if domain(h.channel) == domain(g.channel) && h.at.After(g.at.Add(-period)) && !h.at.After(g.at) {
				sum += h.weight
				in = append(in, fmt.Sprintf("%d@%s", h.weight, h.at.Format("15:04:05.000000")))
			}
		}
		if l := limit(g.at); sum > l {
			return fmt.Sprintf("domain %q: %d units > limit %d in the window of %v ending %s: %v",
				domain(g.channel), sum, l, period, g.at.Format("15:04:05.000000"), in)
		}
	}
	return ""
}

func constLimit(n int64) func(time.Time) int64 { return func(time.Time) int64 { return n } }

// rateSlot returns the instant at which weight more units fit in a window
// holding prior (the earlier grants of one domain): when the newest grant
// whose leaving makes room leaves. Zero when they fit at once.
func rateSlot(prior []grantSeen, weight, limit int64, period time.Duration) time.Time {
	byNewest := slices.Clone(prior)
	slices.SortStableFunc(byNewest, func(a, b grantSeen) int { return b.at.Compare(a.at) })
	var acc int64
	for _, g := range byNewest {
		acc += g.weight
		if acc+weight > limit {
			return g.at.Add(period)
		}
	}
	return time.Time{}
}

// requireOnTime checks that l was granted at its rate slot among prior
// (never before it) and within rateOnTime after it.
func requireOnTime(t *testing.T, prior []grantSeen, l store.Lease, limit int64, period time.Duration, msg string) {
	t.Helper()
	slot := rateSlot(prior, l.Weight, limit, period)
	require.False(t, slot.IsZero(), "%s: test setup: the grant had room at once", msg)
	late := l.AcquiredAt.Sub(slot)
	require.GreaterOrEqual(t, late, time.Duration(0), "%s: granted %v before its slot", msg, -late)
	require.LessOrEqual(t, late, rateOnTime, "%s: granted %v after its slot (a timer, not a poll)", msg, late)
}

// requireRateLimited checks err is a *store.RateLimitedError (which is
// also ErrNoPermit) with NextAt at next, and returns it.
func requireRateLimited(t *testing.T, err error, next time.Time, msg string) *store.RateLimitedError {
	t.Helper()
	require.ErrorIs(t, err, store.ErrNoPermit, msg)
	var rl *store.RateLimitedError
	require.ErrorAs(t, err, &rl, msg)
	require.WithinDuration(t, next, rl.NextAt, time.Millisecond, "%s: NextAt", msg)
	return rl
}

// waiterParams returns params of a waiting acquire of weight on channel.
func (f *fixture) waiterParams(name, channel string, weight int64) store.AcquireParams {
	p := f.params(name)
	p.Channel, p.Weight, p.Wait = channel, weight, 30*time.Second
	return p
}

// acquireOn acquires weight on channel at once, which must succeed.
func (f *fixture) acquireOn(name, channel string, weight int64) store.Lease {
	f.t.Helper()
	p := f.params(name)
	p.Channel, p.Weight = channel, weight
	return f.acquire(p)
}

// tryAcquireOn acquires weight on channel without waiting.
func (f *fixture) tryAcquireOn(name, channel string, weight int64) error {
	p := f.params(name)
	p.Channel, p.Weight = channel, weight
	_, err := f.st.Acquire(f.ctx, p)
	return err
}

// rateHammer runs concurrent acquirers (most of them waiting) with random
// weights and channels through the given nodes of one store, and checks
// every window of the grants they got. maxValue is large, so the rate is
// what holds them back.
func rateHammer(t *testing.T, nodes []*fixture, scope string) {
	const (
		limit   = 10
		period  = 150 * time.Millisecond
		workers = 12
		each    = 5
	)
	nodes[0].putConfig("s", rateConfig(1000, scope, limit, period))
	channels := []string{"a", "b", "c"}
	var (
		mu      sync.Mutex
		grants  []grantSeen
		limited int
		sink    errorSink
	)
	runWorkers(t, workers, func(i int) {
		f := nodes[i%len(nodes)]
		rng := rand.New(rand.NewPCG(uint64(i), 11))
		for range each {
			p := f.params("s")
			p.Weight = 1 + rng.Int64N(3)
			p.Channel = channels[rng.IntN(len(channels))]
			if rng.IntN(4) > 0 {
				p.Wait = 10 * time.Second // a store that never grants fails in 10 s
			}
			before := time.Now()
			l, err := f.st.Acquire(f.ctx, p)
			var rl *store.RateLimitedError
			switch {
			case errors.As(err, &rl):
				if rl.NextAt.Before(before.Add(-clockMargin)) || rl.NextAt.After(time.Now().Add(period+clockMargin)) {
					sink.add(fmt.Errorf("NextAt %v not within the next period", rl.NextAt))
				}
				mu.Lock()
				limited++
				mu.Unlock()
				continue
			case errors.Is(err, store.ErrNoPermit) && p.Wait == 0:
				continue
			case err != nil:
				sink.add(fmt.Errorf("acquire %+v: %w", p, err))
				return
			}
			mu.Lock()
			grants = append(grants, seen(l))
			mu.Unlock()
			if _, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: l.ID}); err != nil {
				sink.add(fmt.Errorf("release: %w", err))
				return
			}
		}
	})
	sink.require(t)
	var units int64
	first, last := grants[0].at, grants[0].at
	for _, g := range grants {
		units += g.weight
		first, last = minTime(first, g.at), maxTime(last, g.at)
	}
	require.Empty(t, windowViolation(grants, scopeDomain(scope), constLimit(limit), period))
	require.Greater(t, last.Sub(first), period, "the grants spanned several windows (%d units, %d rate-limited)", units, limited)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// testRateNeverOverLimit: no window of any domain ever holds more than
// the limit, under concurrent waiting and non-waiting acquires.
func testRateNeverOverLimit(t *testing.T, f *fixture, scope string) {
	rateHammer(t, []*fixture{f}, scope)
}

// testRateSharedNeverOverLimit: two instances together stay under it.
func testRateSharedNeverOverLimit(t *testing.T, a, b *fixture) {
	rateHammer(t, []*fixture{a, b}, store.ScopeTotal)
}

// testRateWaitersOnTime: waiters queued in order (across channels, scope
// total) are granted in that order, each at its slot, by a timer.
func testRateWaitersOnTime(t *testing.T, f *fixture) {
	const limit, period, n = 2, 250 * time.Millisecond, 4
	f.putConfig("s", rateConfig(100, store.ScopeTotal, limit, period))
	grants := seenAll(f.acquireW("s", 1), f.acquireW("s", 1))
	waiters := make([]<-chan result, n)
	for i := range n {
		waiters[i] = f.goAcquire(f.waiterParams("s", fmt.Sprintf("c%d", i%2), 1))
		f.awaitWaiting("s", int64(i+1))
	}
	var last int64
	for i := range n {
		l := recvLease(t, waiters[i], fmt.Sprintf("waiter %d", i))
		requireOnTime(t, grants, l, limit, period, fmt.Sprintf("waiter %d", i))
		require.Greater(t, l.FencingToken, last, "waiter %d granted in arrival order", i)
		last = l.FencingToken
		grants = append(grants, seen(l))
		for j := i + limit; j < n; j++ { // their slot comes a period later
			requirePending(t, waiters[j], fmt.Sprintf("waiter %d after the grant of %d", j, i))
		}
	}
	require.Empty(t, windowViolation(grants, scopeDomain(store.ScopeTotal), constLimit(limit), period))
	f.requireUsage("s", limit+n, 0)
}

// testRateHeavyHead: a heavy head waiting for room is not overtaken by a
// light waiter behind it, although the window has room for the light one.
func testRateHeavyHead(t *testing.T, f *fixture) {
	const limit, period = 3, 300 * time.Millisecond
	f.putConfig("s", rateConfig(100, store.ScopeTotal, limit, period))
	grants := seenAll(f.acquireW("s", 1), f.acquireW("s", 1)) // room for 1
	hw := f.goAcquire(f.waiterParams("s", "a", 3))
	f.awaitWaiting("s", 1)
	lw := f.goAcquire(f.waiterParams("s", "b", 1))
	f.awaitWaiting("s", 2) // the light one queues although 1 unit has room
	err := f.tryAcquireOn("s", "c", 1)
	require.ErrorIs(t, err, store.ErrNoPermit, "no barging past the waiters")
	requirePending(t, lw, "light waiter behind the heavy head")

	heavy := recvLease(t, hw, "heavy head")
	requireOnTime(t, grants, heavy, limit, period, "heavy head")
	grants = append(grants, seen(heavy))
	light := recvLease(t, lw, "light waiter")
	require.Greater(t, light.FencingToken, heavy.FencingToken, "light granted after the heavy head")
	requireOnTime(t, grants, light, limit, period, "light waiter")
	grants = append(grants, seen(light))
	require.Empty(t, windowViolation(grants, scopeDomain(store.ScopeTotal), constLimit(limit), period))
}

// testRateChannelWindows: with scope channel every channel has its own
// window, and a waiter blocked by its channel's window blocks nobody else.
func testRateChannelWindows(t *testing.T, f *fixture) {
	const limit, period = 2, 300 * time.Millisecond
	f.putConfig("s", rateConfig(100, store.ScopeChannel, limit, period))
	a := seenAll(f.acquireOn("s", "a", 1), f.acquireOn("s", "a", 1))
	rl := requireRateLimited(t, f.tryAcquireOn("s", "a", 1), a[0].at.Add(period), "channel a full")
	require.Equal(t, "a", rl.Channel, "scope channel: the channel whose window is full")
	aw := f.goAcquire(f.waiterParams("s", "a", 2)) // needs both of a's grants gone
	f.awaitWaiting("s", 1)
	b := seenAll(f.acquireOn("s", "b", 1), f.acquireOn("s", "b", 1)) // b's own window
	bw := f.goAcquire(f.waiterParams("s", "b", 1))
	f.awaitWaiting("s", 2)
	f.acquireOn("s", "", 2) // the default channel's window, while a and b wait
	st := f.state("s")
	require.Equal(t, int64(2), st.RateUsed, "top level: the default channel's window")
	for _, ch := range []string{"a", "b"} {
		require.Equal(t, int64(2), st.Channels[ch].RateUsed, "channel %s", ch)
	}

	la := recvLease(t, aw, "waiter on a")
	requireOnTime(t, a, la, limit, period, "waiter on a")
	lb := recvLease(t, bw, "waiter on b")
	requireOnTime(t, b, lb, limit, period, "waiter on b")
}

// testRateLimitedError: an acquire without wait that has a permit but no
// room gets a *RateLimitedError saying when enough units leave for its
// weight; one without a permit gets the plain ErrNoPermit.
func testRateLimitedError(t *testing.T, f *fixture) {
	const period = time.Second
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 3, period))
	g0 := f.acquireW("s", 1)
	g1 := f.acquireW("s", 2)
	rl := requireRateLimited(t, f.tryAcquireOn("s", "", 1), g0.AcquiredAt.Add(period), "weight 1: g0 leaving is enough")
	require.Equal(t, int64(3), rl.Limit, "the rate it refused for")
	require.Equal(t, period, rl.Period)
	require.Empty(t, rl.Channel, "scope total: the whole semaphore's window")
	require.InDelta(t, float64(time.Until(rl.NextAt)), float64(rl.Wait), float64(50*time.Millisecond), "Wait: until NextAt")
	requireRateLimited(t, f.tryAcquireOn("s", "x", 2), g1.AcquiredAt.Add(period), "weight 2: g1 must leave too")
	requireRateLimited(t, f.tryAcquireOn("s", "", 3), g1.AcquiredAt.Add(period), "weight 3: the window empty")

	f.putConfig("p", rateConfig(1, store.ScopeTotal, 5, period))
	f.acquireW("p", 1)
	err := f.tryAcquireOn("p", "", 1)
	require.ErrorIs(t, err, store.ErrNoPermit)
	require.False(t, errors.As(err, &rl), "no permit: not the rate's doing (%v)", err)
	f.requireUsage("s", 3, 0)
}

// testRateWeightTooLarge: a weight above the limit can never be granted,
// also for a waiter when the limit is lowered below its weight.
func testRateWeightTooLarge(t *testing.T, f *fixture) {
	const period = 10 * time.Second
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 3, period))
	err := f.tryAcquireOn("s", "", 4)
	require.ErrorIs(t, err, store.ErrWeightTooLarge)
	_, err = f.st.Acquire(f.ctx, f.waiterParams("s", "", 4))
	require.ErrorIs(t, err, store.ErrWeightTooLarge, "with a wait too")

	f.acquireW("s", 3)
	w := f.goAcquire(f.waiterParams("s", "", 3))
	f.awaitWaiting("s", 1)
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 2, period))
	r := recv(t, w, "waiter heavier than the lowered limit")
	require.ErrorIs(t, r.err, store.ErrWeightTooLarge)
	f.requireUsage("s", 3, 0)
}

// testRateRemoved: rate nil lifts the limit at once (a waiter is granted)
// and drops the window; a rate set again starts with an empty window.
func testRateRemoved(t *testing.T, f *fixture) {
	const period = 10 * time.Second
	cfg := rateConfig(10, store.ScopeTotal, 1, period)
	f.putConfig("s", cfg)
	g := f.acquireW("s", 1)
	requireRateLimited(t, f.tryAcquireOn("s", "", 1), g.AcquiredAt.Add(period), "window full")
	w := f.goAcquire(f.waiterParams("s", "", 1))
	f.awaitWaiting("s", 1)

	noRate := cfg
	noRate.Rate = nil
	f.putConfig("s", noRate)
	recvLease(t, w, "waiter granted when the rate is removed")
	f.acquireW("s", 3)
	st := f.state("s")
	require.Zero(t, st.RateUsed)
	require.True(t, st.RateNextAt.IsZero())

	f.putConfig("s", cfg)
	st = f.state("s")
	require.Zero(t, st.RateUsed, "the old window is gone")
	require.True(t, st.RateNextAt.IsZero())
	g = f.acquireW("s", 1)
	requireRateLimited(t, f.tryAcquireOn("s", "", 1), g.AcquiredAt.Add(period), "the new window counts from here")
	f.requireUsage("s", 6, 0)
}

// testRateLowered: lowering the limit revokes nothing (leases and window
// stay) and only delays new grants until the window is under it.
func testRateLowered(t *testing.T, f *fixture) {
	const period = 400 * time.Millisecond
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 4, period))
	var held []store.Lease
	for range 4 {
		held = append(held, f.acquireW("s", 1))
	}
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 2, period))
	st := f.state("s")
	require.Equal(t, int64(4), st.InUse, "no lease revoked")
	require.Equal(t, int64(4), st.RateUsed, "the window kept")
	// 4 used + 1 - 2: three grants must leave.
	requireRateLimited(t, f.tryAcquireOn("s", "", 1), held[2].AcquiredAt.Add(period), "over the lowered limit")
	f.release(held[3])
	w := f.goAcquire(f.waiterParams("s", "", 1))
	l := recvLease(t, w, "waiter under the lowered limit")
	requireOnTime(t, seenAll(held...), l, 2, period, "waiter under the lowered limit")
}

// testRateRaised: raising the limit grants a waiter at once.
func testRateRaised(t *testing.T, f *fixture) {
	const period = 10 * time.Second
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 1, period))
	g := f.acquireW("s", 1)
	w := f.goAcquire(f.waiterParams("s", "", 1))
	f.awaitWaiting("s", 1)
	raised := time.Now()
	f.putConfig("s", rateConfig(10, store.ScopeTotal, 2, period))
	r := recv(t, w, "waiter granted by the raise")
	require.NoError(t, r.err)
	require.Less(t, r.at.Sub(raised), handOff)
	requireRateLimited(t, f.tryAcquireOn("s", "", 1), g.AcquiredAt.Add(period), "2 of 2 used")
}

// testRateJobs: job dispatches obey the window, in FIFO order, and resume
// by timer (nothing calls Sweep or DispatchJobs here).
func testRateJobs(t *testing.T, f *fixture) {
	const limit, period, n = 3, 300 * time.Millisecond, 7
	f.putConfig("s", rateConfig(100, store.ScopeTotal, limit, period))
	rec := newRecorder(f, 0)
	var ids []string
	for i := range n {
		j := f.enqueue("s", "")
		ids = append(ids, j.ID)
		want := store.JobInflight
		if i >= limit {
			want = store.JobScheduled
		}
		require.Equal(t, want, j.Status, "job %d", i)
	}
	f.requireJobs("s", n-limit, limit, limit)
	rec.await(t, "every job dispatched", func(d, _ []store.Job) bool { return len(d) >= n })
	d := rec.requireDispatchedInGrantOrder(t, ids...) // FIFO
	var grants []grantSeen
	for i, j := range d {
		require.NotNil(t, j.Lease)
		if i >= limit {
			requireOnTime(t, grants, *j.Lease, limit, period, fmt.Sprintf("job %d", i))
		}
		grants = append(grants, seen(*j.Lease))
	}
	require.Empty(t, windowViolation(grants, scopeDomain(store.ScopeTotal), constLimit(limit), period))
	f.requireJobs("s", 0, n, n)
}

// testRateJobsPerChannel: with scope channel a channel whose head job has
// no room blocks only its own channel.
func testRateJobsPerChannel(t *testing.T, f *fixture) {
	const period = 300 * time.Millisecond
	f.putConfig("s", rateConfig(100, store.ScopeChannel, 1, period))
	rec := newRecorder(f, 0)
	a0, a1 := f.enqueue("s", "a"), f.enqueue("s", "a")
	b0 := f.enqueue("s", "b")
	require.Equal(t, store.JobInflight, a0.Status)
	require.Equal(t, store.JobScheduled, a1.Status)
	require.Equal(t, store.JobInflight, b0.Status, "b's window is its own")
	rec.await(t, "a1 dispatched", func(d, _ []store.Job) bool { return len(d) >= 3 })
	d := rec.requireDispatched(t, a0.ID, b0.ID, a1.ID)
	requireOnTime(t, seenAll(*d[0].Lease), *d[2].Lease, 1, period, "a1")
}

// testRateJobsShareWindow: sync grants and job dispatches count in one
// window; a waiter that came after a queued job still goes first (live
// callers first), each at its slot.
func testRateJobsShareWindow(t *testing.T, f *fixture) {
	const limit, period = 2, 300 * time.Millisecond
	f.putConfig("s", rateConfig(100, store.ScopeTotal, limit, period))
	rec := newRecorder(f, 0)
	g0 := f.acquireW("s", 1)
	waitUntil(time.Now().Add(period / 3)) // the two slots apart
	grants := seenAll(g0, f.acquireW("s", 1))
	j := f.enqueue("s", "b")
	require.Equal(t, store.JobScheduled, j.Status, "no room for the job")
	w := f.goAcquire(f.waiterParams("s", "a", 1))
	f.awaitWaiting("s", 1)

	l := recvLease(t, w, "waiter")
	requireOnTime(t, grants, l, limit, period, "waiter before the job")
	grants = append(grants, seen(l))
	rec.await(t, "job dispatched", func(d, _ []store.Job) bool { return len(d) >= 1 })
	d := rec.requireDispatched(t, j.ID)
	requireOnTime(t, grants, *d[0].Lease, limit, period, "job after the waiter")
	require.Greater(t, d[0].Lease.FencingToken, l.FencingToken)
}

// testRateState: State's RateUsed and RateNextAt, in total and per
// channel, for both scopes and without a rate.
func testRateState(t *testing.T, f *fixture) {
	const period = 400 * time.Millisecond
	f.put("none", 5, store.ScopeTotal)
	f.acquireW("none", 1)
	st := f.state("none")
	require.Zero(t, st.RateUsed, "no rate")
	require.True(t, st.RateNextAt.IsZero(), "no rate")

	f.putConfig("s", rateConfig(10, store.ScopeTotal, 5, period))
	st = f.state("s")
	require.Zero(t, st.RateUsed)
	require.True(t, st.RateNextAt.IsZero(), "empty window")
	ga := f.acquireOn("s", "a", 1)
	gb := f.acquireOn("s", "b", 2)
	st = f.state("s")
	require.Equal(t, int64(3), st.RateUsed)
	require.WithinDuration(t, ga.AcquiredAt.Add(period), st.RateNextAt, time.Millisecond, "the oldest grant leaves")
	for _, ch := range []string{"a", "b"} {
		require.Equal(t, int64(3), st.Channels[ch].RateUsed, "channel %s shows the shared window", ch)
		require.WithinDuration(t, ga.AcquiredAt.Add(period), st.Channels[ch].RateNextAt, time.Millisecond, ch)
	}
	f.release(ga)
	require.Equal(t, int64(3), f.state("s").RateUsed, "a released grant stays in the window")

	f.putConfig("c", rateConfig(10, store.ScopeChannel, 5, period))
	ca := f.acquireOn("c", "a", 1)
	cb := f.acquireOn("c", "b", 2)
	st = f.state("c")
	require.Zero(t, st.RateUsed, "top level: the default channel's window")
	require.True(t, st.RateNextAt.IsZero())
	require.Equal(t, int64(1), st.Channels["a"].RateUsed)
	require.WithinDuration(t, ca.AcquiredAt.Add(period), st.Channels["a"].RateNextAt, time.Millisecond)
	require.Equal(t, int64(2), st.Channels["b"].RateUsed)
	require.WithinDuration(t, cb.AcquiredAt.Add(period), st.Channels["b"].RateNextAt, time.Millisecond)
	cd := f.acquireOn("c", "", 3)
	st = f.state("c")
	require.Equal(t, int64(3), st.RateUsed)
	require.WithinDuration(t, cd.AcquiredAt.Add(period), st.RateNextAt, time.Millisecond)

	waitUntil(maxTime(gb.AcquiredAt, cd.AcquiredAt).Add(period + clockMargin))
	for _, name := range []string{"s", "c"} {
		st = f.state(name)
		require.Zero(t, st.RateUsed, "%s: the window emptied", name)
		require.True(t, st.RateNextAt.IsZero(), name)
		for ch, cs := range st.Channels {
			require.Zero(t, cs.RateUsed, "%s channel %s", name, ch)
			require.True(t, cs.RateNextAt.IsZero(), "%s channel %s", name, ch)
		}
	}
}
