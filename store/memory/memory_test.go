package memory

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newStore returns a fresh store on the real clock, closed at cleanup.
func newStore(t *testing.T) store.Store {
	s := New(Options{})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, newStore)
}

func TestConformanceShared(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
		s := newStore(t)
		return s, s
	})
}

func TestConformanceRapid(t *testing.T) {
	storetest.RunRapid(t, newStore)
}

func TestConformanceJobsRapid(t *testing.T) {
	storetest.RunJobsRapid(t, newStore)
}

func TestConformanceWorkersRapid(t *testing.T) {
	storetest.RunWorkersRapid(t, newStore)
}

func TestConformanceRateRapid(t *testing.T) {
	storetest.RunRateRapid(t, newStore)
}

func TestConformanceSessionsRapid(t *testing.T) {
	storetest.RunSessionsRapid(t, newStore)
}

func TestConformanceSessionsRapidShared(t *testing.T) {
	storetest.RunSessionsRapidShared(t, func(t *testing.T) (store.Store, store.Store) {
		s := newStore(t)
		return s, s
	})
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// setup returns a store on a fake clock with semaphore "s" of tenant "t".
func setup(t *testing.T, maxValue int64, scope string) (*Store, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	s := New(Options{Now: clock.Now})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	_, created, err := s.PutSemaphore(t.Context(), store.PutSemaphoreParams{
		Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValue: maxValue, MaxValueScope: scope},
	})
	require.NoError(t, err)
	require.True(t, created)
	return s, clock
}

func acquireParams(ttl time.Duration) store.AcquireParams {
	return store.AcquireParams{Tenant: "t", Semaphore: "s", Weight: 1, TTL: ttl}
}

func TestStore_ExpiryAtBoundary(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 1, store.ScopeTotal)
	start := clock.Now()
	l, err := s.Acquire(ctx, acquireParams(10*time.Second))
	require.NoError(t, err)
	require.Equal(t, start, l.AcquiredAt)
	require.Equal(t, start.Add(10*time.Second), l.ExpiresAt)

	clock.Add(10*time.Second - time.Nanosecond)
	n, err := s.Sweep(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "live until just before expiresAt")
	st, err := s.State(ctx, "t", "s")
	require.NoError(t, err)
	require.Equal(t, int64(1), st.InUse)

	clock.Add(time.Nanosecond) // now == expiresAt: expired
	n, err = s.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = s.Release(ctx, store.ReleaseParams{Tenant: "t", LeaseID: l.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	_, err = s.Acquire(ctx, acquireParams(time.Second))
	require.NoError(t, err)
}

func TestStore_ExpiryWithoutSweep(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 1, store.ScopeTotal)
	l, err := s.Acquire(ctx, acquireParams(time.Second))
	require.NoError(t, err)
	clock.Add(time.Second)
	_, err = s.Extend(ctx, store.ExtendParams{Tenant: "t", LeaseID: l.ID, TTL: time.Hour})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "every operation drops expired leases first")
	_, err = s.Acquire(ctx, acquireParams(time.Second))
	require.NoError(t, err)
}

func TestStore_ExtendUsesStoreClock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 1, store.ScopeTotal)
	l, err := s.Acquire(ctx, acquireParams(time.Second))
	require.NoError(t, err)
	clock.Add(500 * time.Millisecond)
	ext, err := s.Extend(ctx, store.ExtendParams{Tenant: "t", LeaseID: l.ID, TTL: 3 * time.Second})
	require.NoError(t, err)
	require.Equal(t, clock.Now().Add(3*time.Second), ext.ExpiresAt)
	require.Equal(t, 3*time.Second, ext.TTL)
	require.Equal(t, l.AcquiredAt, ext.AcquiredAt)
}

func TestStore_DefaultTTL(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 2, store.ScopeTotal)
	l, err := s.Acquire(ctx, acquireParams(0))
	require.NoError(t, err)
	require.Equal(t, clock.Now().Add(store.DefaultLeaseTTL), l.ExpiresAt, "no ttl and no leaseTimeout")
	_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{
		Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 2, LeaseTimeout: 7 * time.Second},
	})
	require.NoError(t, err)
	l, err = s.Acquire(ctx, acquireParams(0))
	require.NoError(t, err)
	require.Equal(t, clock.Now().Add(7*time.Second), l.ExpiresAt, "the semaphore's leaseTimeout")
}

func TestStore_TokensSeededFromClock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 1, store.ScopeTotal)
	var last int64
	for range 1000 {
		l, err := s.Acquire(ctx, acquireParams(time.Second))
		require.NoError(t, err)
		require.GreaterOrEqual(t, l.FencingToken, clock.Now().UnixMicro())
		require.Greater(t, l.FencingToken, last)
		last = l.FencingToken
		_, err = s.Release(ctx, store.ReleaseParams{Tenant: "t", LeaseID: l.ID})
		require.NoError(t, err)
	}

	// A restart: a new process a second later hands out greater tokens.
	clock.Add(time.Second)
	s2 := New(Options{Now: clock.Now})
	t.Cleanup(func() { require.NoError(t, s2.Close()) })
	_, _, err := s2.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1}})
	require.NoError(t, err)
	l, err := s2.Acquire(ctx, acquireParams(time.Second))
	require.NoError(t, err)
	require.Greater(t, l.FencingToken, last)

	// A clock that steps back never makes tokens go back.
	clock.Add(-time.Hour)
	_, err = s2.Release(ctx, store.ReleaseParams{Tenant: "t", LeaseID: l.ID})
	require.NoError(t, err)
	l2, err := s2.Acquire(ctx, acquireParams(time.Second))
	require.NoError(t, err)
	require.Equal(t, l.FencingToken+1, l2.FencingToken)
}

func TestStore_WaiterGrantedBySweep(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock := setup(t, 1, store.ScopeTotal)
	_, err := s.Acquire(ctx, acquireParams(10*time.Second))
	require.NoError(t, err)
	out := make(chan store.Lease, 1)
	go func() {
		p := acquireParams(5 * time.Second)
		p.Wait = time.Minute
		l, err := s.Acquire(ctx, p)
		if err == nil {
			out <- l
		}
		close(out)
	}()
	requireWaiting(t, s, 1)
	clock.Add(10 * time.Second)
	n, err := s.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	select {
	case l, ok := <-out:
		require.True(t, ok, "waiter failed")
		require.Equal(t, clock.Now(), l.AcquiredAt, "granted inside the sweep, on the store clock")
		require.Equal(t, clock.Now().Add(5*time.Second), l.ExpiresAt)
	case <-time.After(5 * time.Second):
		require.FailNow(t, "waiter not granted by the sweep")
	}
}

func TestStore_LoweredBelowWaiterWeight(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := setup(t, 3, store.ScopeTotal)
	_, err := s.Acquire(ctx, acquireParams(time.Minute))
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		p := acquireParams(time.Minute)
		p.Weight, p.Wait = 3, time.Minute
		_, err := s.Acquire(ctx, p)
		errc <- err
	}()
	requireWaiting(t, s, 1)
	_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 2}})
	require.NoError(t, err)
	select {
	case err := <-errc:
		require.ErrorIs(t, err, store.ErrWeightTooLarge, "a waiter that can never fit fails at once")
	case <-time.After(5 * time.Second):
		require.FailNow(t, "waiter still blocked")
	}
	requireWaiting(t, s, 0)
}

func TestStore_AbandonRace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		cause     error
		keepLease bool
	}{
		{"timeout keeps a lease granted at the same moment", store.ErrNoPermit, true},
		{"cancel gives a lease granted at the same moment back", context.Canceled, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			s, _ := setup(t, 1, store.ScopeTotal)
			holder, err := s.Acquire(ctx, acquireParams(time.Minute))
			require.NoError(t, err)

			// Queue a waiter by hand, then grant it and abandon it as
			// if its timer or ctx had fired in the same instant.
			s.mu.Lock()
			p := acquireParams(time.Minute)
			p.Wait = time.Minute
			w, _, err := s.tryAcquire(normalize(p))
			s.mu.Unlock()
			require.NoError(t, err)
			require.NotNil(t, w)
			_, err = s.Release(ctx, store.ReleaseParams{Tenant: "t", LeaseID: holder.ID})
			require.NoError(t, err)
			require.True(t, w.settled)

			l, err := s.abandon(w, tc.cause)
			st, serr := s.State(ctx, "t", "s")
			require.NoError(t, serr)
			require.Zero(t, st.Waiting)
			if tc.keepLease {
				require.NoError(t, err)
				require.Equal(t, w.lease.ID, l.ID)
				require.Equal(t, int64(1), st.InUse)
				return
			}
			require.ErrorIs(t, err, context.Canceled)
			require.Equal(t, int64(0), st.InUse, "nothing leaked")
		})
	}
}

func TestStore_Close(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := setup(t, 1, store.ScopeTotal)
	_, err := s.Acquire(ctx, acquireParams(time.Minute))
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		p := acquireParams(time.Minute)
		p.Wait = time.Minute
		_, err := s.Acquire(ctx, p)
		errc <- err
	}()
	requireWaiting(t, s, 1)
	require.NoError(t, s.Close())
	select {
	case err := <-errc:
		require.ErrorIs(t, err, store.ErrUnavailable)
	case <-time.After(5 * time.Second):
		require.FailNow(t, "waiter not woken by Close")
	}
	require.ErrorIs(t, s.Ping(ctx), store.ErrUnavailable)
	_, err = s.Acquire(ctx, acquireParams(time.Minute))
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.NoError(t, s.Close(), "closing twice")
}

func TestStore_CancelledContext(t *testing.T) {
	t.Parallel()
	s, _ := setup(t, 1, store.ScopeTotal)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Acquire(ctx, acquireParams(time.Minute))
	require.ErrorIs(t, err, context.Canceled)
	st, err := s.State(t.Context(), "t", "s")
	require.NoError(t, err)
	require.Zero(t, st.InUse)
}

func TestStore_ScopeChangeRequeues(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := setup(t, 1, store.ScopeTotal)
	pa := acquireParams(time.Minute)
	pa.Channel = "a"
	_, err := s.Acquire(ctx, pa)
	require.NoError(t, err)
	out := make(chan error, 1)
	go func() {
		pb := acquireParams(time.Minute)
		pb.Channel, pb.Wait = "b", time.Minute
		_, err := s.Acquire(ctx, pb)
		out <- err
	}()
	requireWaiting(t, s, 1)
	_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{
		Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValue: 1, MaxValueScope: store.ScopeChannel},
	})
	require.NoError(t, err)
	select {
	case err := <-out:
		require.NoError(t, err, "channel b has its own permit under scope channel")
	case <-time.After(5 * time.Second):
		require.FailNow(t, "waiter not granted on scope change")
	}
}

// requireWaiting waits until semaphore "s" of tenant "t" has n waiters.
func requireWaiting(t *testing.T, s *Store, n int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, err := s.State(t.Context(), "t", "s")
		return err == nil && st.Waiting == n
	}, 5*time.Second, time.Millisecond)
}

func TestStore_FencingCounterSurvivesDelete(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _ := setup(t, 1, store.ScopeTotal) // the clock stands still: only the counter can increase tokens
	l1, err := s.Acquire(ctx, acquireParams(time.Minute))
	require.NoError(t, err)
	require.NoError(t, s.DeleteSemaphore(ctx, "t", "s"))
	_, created, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1}})
	require.NoError(t, err)
	require.True(t, created)
	l2, err := s.Acquire(ctx, acquireParams(time.Minute))
	require.NoError(t, err)
	require.Equal(t, l1.FencingToken+1, l2.FencingToken)
}

// setupJobs returns a store on a fake clock with semaphore "s" of tenant
// "t" (jobsConfig) and its job events.
func setupJobs(t *testing.T, maxValue int64) (*Store, *fakeClock, *events) {
	t.Helper()
	clock := newFakeClock()
	s := New(Options{Now: clock.Now})
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ev := &events{}
	s.SetJobListener(ev.add)
	_, _, err := s.PutSemaphore(t.Context(), store.PutSemaphoreParams{Tenant: "t", Name: "s", Config: jobsConfig(maxValue)})
	require.NoError(t, err)
	return s, clock, ev
}

// jobsConfig is setupJobs' config: scope total, leaseTimeout 10s,
// maxAttempts 2, the default retention.
func jobsConfig(maxValue int64) store.SemaphoreConfig {
	return store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: maxValue, LeaseTimeout: 10 * time.Second,
		MaxAttempts: 2, Retention: store.DefaultRetention}
}

// events records job events.
type events struct {
	mu         sync.Mutex
	dispatched []store.Job
	finished   []store.Job
}

func (e *events) add(ev store.JobEvents) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatched = append(e.dispatched, ev.Dispatched...)
	e.finished = append(e.finished, ev.Finished...)
}

func (e *events) counts() (dispatched, finished int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.dispatched), len(e.finished)
}

func enqueue(t *testing.T, s *Store, payload string) store.Job {
	t.Helper()
	j, created, err := s.EnqueueJob(t.Context(), store.EnqueueParams{Tenant: "t", Semaphore: "s", Payload: []byte(payload)})
	require.NoError(t, err)
	require.True(t, created)
	return j
}

func getJob(t *testing.T, s *Store, id string) store.Job {
	t.Helper()
	j, err := s.GetJob(t.Context(), "t", id)
	require.NoError(t, err)
	return j
}

func TestStore_JobLeaseExpiryAtBoundary(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock, ev := setupJobs(t, 1)
	start := clock.Now()
	j := enqueue(t, s, `1`)
	require.Equal(t, store.JobInflight, j.Status)
	require.Equal(t, start.Add(10*time.Second), j.Lease.ExpiresAt, "leaseTimeout on the store clock")
	require.Equal(t, start, j.Lease.AcquiredAt)

	clock.Add(10*time.Second - time.Nanosecond)
	n, err := s.Sweep(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, store.JobInflight, getJob(t, s, j.ID).Status)

	clock.Add(time.Nanosecond) // expiresAt: expired, attempt 1 of 2 → again at once
	n, err = s.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got := getJob(t, s, j.ID)
	require.Equal(t, store.JobInflight, got.Status, "rescheduled and dispatched in the same sweep")
	require.Equal(t, 2, got.Attempts)
	require.Equal(t, clock.Now().Add(10*time.Second), got.Lease.ExpiresAt)
	d, f := ev.counts()
	require.Equal(t, 2, d)
	require.Zero(t, f)

	clock.Add(10 * time.Second) // found by GetJob, without a sweep
	got = getJob(t, s, j.ID)
	require.Equal(t, store.JobTimeout, got.Status)
	require.Equal(t, "lease expired after 2 attempts", got.Error)
	require.Equal(t, clock.Now(), got.FinishedAt)
	_, f = ev.counts()
	require.Equal(t, 1, f)
}

// TestStore_JobRetention: by the injected clock, a done or cancelled job
// is kept for Retention.Done and an error or timeout job for
// Retention.Failed after it ends, to the nanosecond, also without a
// sweep; a requeued job is not terminal any more; the key of a forgotten
// job is free again.
func TestStore_JobRetention(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock, _ := setupJobs(t, 1)
	done := enqueue(t, s, `1`)
	_, err := s.TransitionJob(ctx, store.TransitionParams{Tenant: "t", JobID: done.ID, Action: store.ActRelease})
	require.NoError(t, err)
	clock.Add(time.Hour)
	requeued := enqueue(t, s, `2`)
	_, err = s.TransitionJob(ctx, store.TransitionParams{Tenant: "t", JobID: requeued.ID, Action: store.ActCancel})
	require.NoError(t, err)
	keyed, _, err := s.EnqueueJob(ctx, store.EnqueueParams{Tenant: "t", Semaphore: "s", Payload: []byte(`3`), IdempotencyKey: "k"})
	require.NoError(t, err)
	_, err = s.TransitionJob(ctx, store.TransitionParams{Tenant: "t", JobID: keyed.ID, Action: store.ActFail})
	require.NoError(t, err)

	clock.Add(store.DefaultRetentionDone - time.Hour - time.Nanosecond)
	_, err = s.Sweep(ctx)
	require.NoError(t, err)
	getJob(t, s, done.ID) // kept until FinishedAt+Retention.Done
	clock.Add(time.Nanosecond)
	_, err = s.GetJob(ctx, "t", done.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound, "forgotten after Retention.Done, also without a sweep")

	// A requeued job is not terminal any more: it is not forgotten.
	_, err = s.TransitionJob(ctx, store.TransitionParams{Tenant: "t", JobID: requeued.ID, Action: store.ActRequeue})
	require.NoError(t, err)
	clock.Add(time.Hour)
	_, err = s.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, store.JobInflight, getJob(t, s, requeued.ID).Status)
	require.Equal(t, store.JobError, getJob(t, s, keyed.ID).Status, "an error job is kept for Retention.Failed")

	clock.Add(store.DefaultRetentionFailed - store.DefaultRetentionDone - time.Nanosecond)
	getJob(t, s, keyed.ID)
	clock.Add(time.Nanosecond)
	_, err = s.GetJob(ctx, "t", keyed.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound, "forgotten after Retention.Failed")
	again, created, err := s.EnqueueJob(ctx, store.EnqueueParams{Tenant: "t", Semaphore: "s", Payload: []byte(`3`), IdempotencyKey: "k"})
	require.NoError(t, err)
	require.True(t, created, "the key of a forgotten job is free again")
	require.NotEqual(t, keyed.ID, again.ID)
	jobs, _, err := s.ListJobs(ctx, store.ListJobsParams{Tenant: "t", Semaphore: "s"})
	require.NoError(t, err)
	require.Len(t, jobs, 2)
}

// TestStore_JobRetentionChanged: a changed retention applies to the jobs
// already terminal, at once.
func TestStore_JobRetentionChanged(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, clock, _ := setupJobs(t, 1)
	j := enqueue(t, s, `1`)
	_, err := s.TransitionJob(ctx, store.TransitionParams{Tenant: "t", JobID: j.ID, Action: store.ActFail})
	require.NoError(t, err)
	clock.Add(2 * time.Hour)
	cfg := jobsConfig(1)
	cfg.Retention.Failed = 3 * time.Hour
	_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "t", Name: "s", Config: cfg})
	require.NoError(t, err)
	getJob(t, s, j.ID)
	cfg.Retention.Failed = time.Hour
	_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "t", Name: "s", Config: cfg})
	require.NoError(t, err)
	_, err = s.GetJob(ctx, "t", j.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound, "a lowered retention forgets at once")
}

func TestStore_JobPayloadCopied(t *testing.T) {
	t.Parallel()
	s, _, ev := setupJobs(t, 1)
	payload := []byte(`{"a":1}`)
	j, _, err := s.EnqueueJob(t.Context(), store.EnqueueParams{Tenant: "t", Semaphore: "s", Payload: payload})
	require.NoError(t, err)
	payload[2] = 'X'
	j.Payload[2] = 'Y'
	ev.dispatched[0].Payload[2] = 'Z'
	require.Equal(t, `{"a":1}`, string(getJob(t, s, j.ID).Payload))
}

func TestStore_JobListenerOutsideLock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _, _ := setupJobs(t, 1)
	delivered := make(chan store.Job, 1)
	s.SetJobListener(func(ev store.JobEvents) {
		for _, j := range ev.Dispatched { // deliver at once, calling the store back
			got, err := s.TransitionJob(ctx, store.TransitionParams{
				Tenant: "t", JobID: j.ID, Action: store.ActDelivered, Route: "websocket", LeaseID: j.Lease.ID,
			})
			if err == nil {
				delivered <- got
			}
		}
	})
	j := enqueue(t, s, `1`)
	select {
	case got := <-delivered:
		require.Equal(t, j.ID, got.ID)
		require.Equal(t, "websocket", got.Route)
	default:
		require.FailNow(t, "listener not called synchronously before EnqueueJob returned")
	}
}

func TestStore_JobDispatchBatch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s, _, ev := setupJobs(t, 1)
	_, err := s.SetSuspended(ctx, "t", "s", true)
	require.NoError(t, err)
	for range 100 {
		enqueue(t, s, `1`)
	}
	_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{
		Tenant: "t", Name: "s", Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 200, LeaseTimeout: time.Minute},
	})
	require.NoError(t, err)
	jobs, err := s.DispatchJobs(ctx, store.DispatchParams{Tenant: "t", Semaphore: "s", Max: 1})
	require.NoError(t, err)
	require.Empty(t, jobs, "suspended")
	_, err = s.SetSuspended(ctx, "t", "s", false)
	require.NoError(t, err)
	d, _ := ev.counts()
	require.Equal(t, store.DefaultDispatchBatch, d, "one operation dispatches at most a batch")
	jobs, err = s.DispatchJobs(ctx, store.DispatchParams{Tenant: "t", Semaphore: "s", Max: 5})
	require.NoError(t, err)
	require.Len(t, jobs, 5)
	require.Equal(t, time.Minute, jobs[0].Lease.TTL, "the current leaseTimeout")
	_, err = s.Sweep(ctx)
	require.NoError(t, err)
	st, err := s.State(ctx, "t", "s")
	require.NoError(t, err)
	require.Equal(t, int64(100), st.Inflight)
	require.Zero(t, st.Queued)
}
