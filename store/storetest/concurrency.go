package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Size of the concurrency tests.
const (
	workers    = 32
	iterations = 15
)

// errorSink collects errors from worker goroutines (require may only fail
// the test from the test's own goroutine).
type errorSink struct {
	mu   sync.Mutex
	errs []error
}

func (s *errorSink) add(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) < 10 {
		s.errs = append(s.errs, err)
	}
}

func (s *errorSink) require(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	require.Empty(t, s.errs)
}

// runWorkers runs fn(i) on n goroutines and waits for them, failing the test
// if they take too long.
func runWorkers(t *testing.T, n int, fn func(i int)) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { fn(i) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		require.FailNow(t, "workers did not finish")
	}
}

// hold simulates a little work while a permit is held by yielding the
// processor a random number of times (no sleep: nothing is waited for).
func hold(rng *rand.Rand) {
	for range rng.IntN(50) {
		runtime.Gosched()
	}
}

// testNeverOversubscribed hammers one semaphore with random weights and
// channels, waiting and non-waiting acquires, and checks with a shared
// counter per capacity domain that held weight never exceeds maxValue.
func testNeverOversubscribed(t *testing.T, f *fixture, scope string) {
	const maxValue = 4
	f.put("s", maxValue, scope)
	channels := []string{"a", "b", "c"}
	held := map[string]*atomic.Int64{"": {}, "a": {}, "b": {}, "c": {}}
	domain := func(ch string) string {
		if scope == store.ScopeChannel {
			return ch
		}
		return ""
	}
	var granted, violations atomic.Int64
	var sink errorSink
	runWorkers(t, workers, func(i int) {
		rng := rand.New(rand.NewPCG(uint64(i), 42))
		for range iterations {
			p := f.params("s")
			p.Weight = 1 + rng.Int64N(3)
			p.Channel = channels[rng.IntN(len(channels))]
			if rng.IntN(4) > 0 {
				p.Wait = 10 * time.Second
			}
			l, err := f.st.Acquire(f.ctx, p)
			if errors.Is(err, store.ErrNoPermit) {
				continue
			}
			if err != nil {
				sink.add(fmt.Errorf("acquire: %w", err))
				return
			}
			granted.Add(1)
			c := held[domain(p.Channel)]
			if n := c.Add(p.Weight); n > maxValue {
				violations.Add(1)
				sink.add(fmt.Errorf("oversubscribed: %d > %d in domain %q", n, maxValue, domain(p.Channel)))
			}
			hold(rng) // let others run while the permit is held
			c.Add(-p.Weight)
			if _, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: l.ID}); err != nil {
				sink.add(fmt.Errorf("release: %w", err))
				return
			}
		}
	})
	sink.require(t)
	require.Zero(t, violations.Load())
	require.Greater(t, granted.Load(), int64(workers), "most acquires succeed")
	st := f.state("s")
	require.Equal(t, int64(0), st.InUse)
	require.Equal(t, int64(0), st.Waiting)
}

func testFencingSequential(t *testing.T, f *fixture) {
	f.put("s", 3, store.ScopeChannel)
	rng := rand.New(rand.NewPCG(7, 7))
	var last int64
	var live []store.Lease
	for i := range 40 {
		if len(live) > 0 && (len(live) == 3 || rng.IntN(2) == 0) {
			k := rng.IntN(len(live))
			f.release(live[k])
			live = slices.Delete(live, k, k+1)
			continue
		}
		p := f.params("s")
		p.Channel = []string{"a", "b"}[rng.IntN(2)]
		l, err := f.st.Acquire(f.ctx, p)
		if errors.Is(err, store.ErrNoPermit) {
			continue
		}
		require.NoError(t, err)
		require.Greater(t, l.FencingToken, last, "grant %d", i)
		last = l.FencingToken
		live = append(live, l)
	}
	require.Positive(t, last)
}

func testFencingDeleteRecreate(t *testing.T, f *fixture) {
	var last int64
	for round := range 3 {
		f.put("s", 1, store.ScopeTotal)
		l := f.acquireW("s", 1)
		require.Greater(t, l.FencingToken, last, "round %d: tokens survive delete and recreate", round)
		last = l.FencingToken
		require.NoError(t, f.st.DeleteSemaphore(f.ctx, f.tenant, "s"))
	}
	f.put("other", 1, store.ScopeTotal) // other semaphores do not disturb the counter
	f.acquireW("other", 1)
	f.put("s", 1, store.ScopeTotal)
	require.Greater(t, f.acquireW("s", 1).FencingToken, last)
}

func testFencingConcurrent(t *testing.T, f *fixture) {
	const perWorker = 10
	f.put("s", 4, store.ScopeTotal)
	tokens := make([][]int64, workers)
	var sink errorSink
	runWorkers(t, workers, func(i int) {
		for range perWorker {
			p := f.params("s")
			p.Wait = 20 * time.Second
			l, err := f.st.Acquire(f.ctx, p)
			if err != nil {
				sink.add(fmt.Errorf("acquire: %w", err))
				return
			}
			tokens[i] = append(tokens[i], l.FencingToken)
			if _, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: l.ID}); err != nil {
				sink.add(fmt.Errorf("release: %w", err))
				return
			}
		}
	})
	sink.require(t)
	var all []int64
	for i, ts := range tokens {
		require.Len(t, ts, perWorker)
		require.True(t, slices.IsSorted(ts) && len(slices.Compact(slices.Clone(ts))) == len(ts),
			"worker %d saw tokens out of order: %v", i, ts)
		all = append(all, ts...)
	}
	slices.Sort(all)
	require.Len(t, slices.Compact(all), workers*perWorker, "every token unique")
}
