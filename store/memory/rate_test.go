package memory

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// putRate replaces semaphore "s" of tenant "t" with a rated config.
func putRate(t *testing.T, s *Store, maxValue int64, scope string, limit int64, period time.Duration) {
	t.Helper()
	var rate *store.RateLimit
	if limit > 0 {
		rate = &store.RateLimit{Limit: limit, Period: period}
	}
	_, _, err := s.PutSemaphore(t.Context(), store.PutSemaphoreParams{
		Tenant: "t", Name: "s",
		Config: store.SemaphoreConfig{MaxValue: maxValue, MaxValueScope: scope, Rate: rate},
	})
	require.NoError(t, err)
}

// rateTimerSet reports whether semaphore "s" has its rate timer set.
func rateTimerSet(s *Store) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sem := s.sems[semKey{"t", "s"}]
	return sem != nil && sem.rate != nil && sem.rate.timer != nil
}

func TestRateLog_BoundedRing(t *testing.T) {
	t.Parallel()
	var l rateLog
	for i := range int64(1000) {
		l.push(rateGrant{at: i, weight: 1 + i%3})
	}
	require.Equal(t, 1000, l.n)
	require.Equal(t, 1024, len(l.buf), "a power of two, at most twice the grants")
	l.prune(989) // grants at 990..999 stay
	require.Equal(t, 10, l.n)
	require.Equal(t, int64(990), l.get(0).at, "oldest first")
	require.Equal(t, int64(999), l.get(9).at)
	var sum int64
	for i := range 10 {
		sum += l.get(i).weight
	}
	require.Equal(t, sum, l.sum)
	require.LessOrEqual(t, len(l.buf), 4*l.n, "shrunk with the window")
	l.push(rateGrant{at: 5, weight: 1}) // a clock set back: no earlier than the newest
	require.Equal(t, int64(999), l.get(l.n-1).at)
	l.prune(1000)
	require.Zero(t, l.n)
	require.Zero(t, l.sum)
}

// TestStore_RateOnFakeClock: with an injected clock, every operation
// re-checks the window, so a waiter is granted by the first operation after
// the clock passes its slot, at that instant; the timer is the real-time
// path for the real clock.
func TestStore_RateOnFakeClock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 10, store.ScopeTotal)
	putRate(t, s, 10, store.ScopeTotal, 2, 10*time.Second)
	start := clock.Now()
	for range 2 {
		_, err := s.Acquire(ctx, acquireParams(time.Hour))
		require.NoError(t, err)
	}
	clock.Add(4 * time.Second)
	_, err := s.Acquire(ctx, acquireParams(time.Hour))
	var rl *store.RateLimitedError
	require.ErrorAs(t, err, &rl)
	require.Equal(t, start.Add(10*time.Second), rl.NextAt)

	out := make(chan store.Lease, 1)
	go func() {
		p := acquireParams(time.Hour)
		p.Wait = time.Minute
		l, err := s.Acquire(ctx, p)
		if err == nil {
			out <- l
		}
		close(out)
	}()
	requireWaiting(t, s, 1)
	require.True(t, rateTimerSet(s), "a timer for the waiter's slot")
	st, err := s.State(ctx, "t", "s")
	require.NoError(t, err)
	require.Equal(t, int64(2), st.RateUsed)
	require.Equal(t, start.Add(10*time.Second), st.RateNextAt)

	clock.Add(6*time.Second - time.Nanosecond)
	requireWaiting(t, s, 1) // State refreshes: still no room
	clock.Add(time.Nanosecond)
	requireWaiting(t, s, 0) // now the two grants left the window
	l, ok := <-out
	require.True(t, ok, "waiter granted")
	require.Equal(t, clock.Now(), l.AcquiredAt)
	require.False(t, rateTimerSet(s), "nothing blocked by the rate")
}

// TestStore_RateTimerStopped: deleting the semaphore or closing the store
// stops its rate timer.
func TestStore_RateTimerStopped(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := New(Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	putRate(t, s, 10, store.ScopeTotal, 1, time.Hour)
	_, err := s.Acquire(ctx, acquireParams(time.Hour))
	require.NoError(t, err)
	_, _, err = s.EnqueueJob(ctx, store.EnqueueParams{Tenant: "t", Semaphore: "s", Payload: []byte(`1`)})
	require.NoError(t, err)
	require.True(t, rateTimerSet(s), "a timer for the queued job")
	s.mu.Lock()
	r := s.sems[semKey{"t", "s"}].rate
	s.mu.Unlock()
	require.NoError(t, s.DeleteSemaphore(ctx, "t", "s"))
	require.Nil(t, r.timer, "stopped on delete")

	putRate(t, s, 10, store.ScopeTotal, 1, time.Hour)
	_, err = s.Acquire(ctx, acquireParams(time.Hour))
	require.NoError(t, err)
	_, _, err = s.EnqueueJob(ctx, store.EnqueueParams{Tenant: "t", Semaphore: "s", Payload: []byte(`1`)})
	require.NoError(t, err)
	s.mu.Lock()
	r = s.sems[semKey{"t", "s"}].rate
	s.mu.Unlock()
	require.NotNil(t, r.timer)
	require.NoError(t, s.Close())
	require.Nil(t, r.timer, "stopped on close")
}

// TestStore_RateScopeChange: the grants in the window survive a change of
// scope: from total, the shared window counts in every channel until it
// drains; back to total, the channels' windows are merged.
func TestStore_RateScopeChange(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 10, store.ScopeTotal)
	putRate(t, s, 10, store.ScopeTotal, 3, 10*time.Second)
	pa := acquireParams(time.Hour)
	pa.Channel, pa.Weight = "a", 3
	_, err := s.Acquire(ctx, pa)
	require.NoError(t, err)
	_, err = s.Acquire(ctx, acquireParams(time.Hour))
	var rl *store.RateLimitedError
	require.ErrorAs(t, err, &rl, "the shared window is full")

	// A change of scope starts the windows anew (as in the Redis store):
	// each channel has its own, empty.
	clock.Add(time.Second)
	atChange := clock.Now()
	putRate(t, s, 10, store.ScopeChannel, 3, 10*time.Second)
	pb := acquireParams(time.Hour)
	pb.Channel, pb.Weight = "b", 3
	_, err = s.Acquire(ctx, pb)
	require.NoError(t, err)
	pb.Weight = 1
	_, err = s.Acquire(ctx, pb)
	require.ErrorAs(t, err, &rl, "b's own window is full")
	require.Equal(t, atChange.Add(10*time.Second), rl.NextAt)
	st, err := s.State(ctx, "t", "s")
	require.NoError(t, err)
	require.Equal(t, int64(3), st.Channels["b"].RateUsed)
	require.Zero(t, st.RateUsed, "the default channel's window is empty")

	// And back: one shared window, empty again.
	putRate(t, s, 10, store.ScopeTotal, 3, 10*time.Second)
	st, err = s.State(ctx, "t", "s")
	require.NoError(t, err)
	require.Zero(t, st.RateUsed)
	_, err = s.Acquire(ctx, acquireParams(time.Hour))
	require.NoError(t, err)

	putRate(t, s, 10, store.ScopeTotal, 0, 0) // rate nil
	s.mu.Lock()
	require.Nil(t, s.sems[semKey{"t", "s"}].rate, "window data dropped")
	s.mu.Unlock()
}
