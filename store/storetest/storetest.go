// Package storetest is the conformance suite of store.Store: the executable
// form of the guarantees in package store, run against every implementation.
//
// A store's tests call
//
//	storetest.Run(t, newStore)                    // the bulk of the suite
//	storetest.RunShared(t, newPair)               // two instances sharing state
//	storetest.RunRapid(t, newStore)               // randomised state machine vs a model
//	storetest.RunJobsRapid(t, newStore)           // the same for async jobs
//	storetest.RunSessionsRapid(t, newStore)       // the same for sessions and their bindings
//	storetest.RunSessionsRapidShared(t, newPair)  // that, through two instances
//	storetest.RunRateRapid(t, newStore)           // the rate limit's windows, with waiters
//
// Run and RunShared include the session tests (sessions.go).
//
// newStore must return a fresh, isolated store on every call (for Redis: a
// unique key prefix on a shared server) and register its own cleanup with
// t.Cleanup. The suite uses real time with short TTLs, because the Redis
// store's clock cannot be faked; it never sleeps to wait for something to
// happen, it waits on channels with timeouts or polls (calling Sweep) in
// bounded require.Eventually loops.
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Timing knobs of the suite.
const (
	// eventually bounds every wait for something that must happen.
	eventually = 5 * time.Second
	// tick is the poll interval of require.Eventually loops.
	tick = 5 * time.Millisecond
	// longTTL is a lease lifetime no test outlives.
	longTTL = time.Minute
	// shortTTL is a lease lifetime tests wait out.
	shortTTL = 150 * time.Millisecond
)

// keep is a retention no test outlives: terminal jobs stay readable.
var keep = store.Retention{Done: time.Hour, Failed: time.Hour}

// Run runs the conformance suite against the stores newStore returns. Every
// subtest calls newStore once and runs in parallel with the others.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, f *fixture)
	}{
		{"Semaphore_PutGet", testPutGet},
		{"Semaphore_Unknown", testUnknownSemaphore},
		{"Semaphore_SetSuspended", testSetSuspended},
		{"Semaphore_ListPaging", testListPaging},
		{"Semaphore_DeleteWakesWaiters", testDeleteWakesWaiters},
		{"Acquire_Release", testAcquireRelease},
		{"Acquire_Defaults", testAcquireDefaults},
		{"Acquire_NoPermit", testNoPermit},
		{"Acquire_Weights", testWeights},
		{"Acquire_WeightTooLarge", testWeightTooLarge},
		{"Acquire_ScopeTotalAcrossChannels", testScopeTotal},
		{"Acquire_ScopeChannel", testScopeChannel},
		{"Acquire_Idempotency", testIdempotency},
		{"Lease_UnknownReleasedExpired", testLeaseNotFound},
		{"Lease_Extend", testExtend},
		{"Lease_List", testListLeases},
		{"Expiry_ReturnsPermits", testExpiryReturnsPermits},
		{"Expiry_SweepCounts", testSweepCounts},
		{"Expiry_GrantsWaiter", testExpiryGrantsWaiter},
		{"MaxValue_Lowered", testMaxValueLowered},
		{"MaxValue_Raised", testMaxValueRaised},
		{"Fencing_Sequential", testFencingSequential},
		{"Fencing_DeleteRecreate", testFencingDeleteRecreate},
		{"Fencing_Concurrent", testFencingConcurrent},
		{"Waiters_ReleaseWakes", testReleaseWakesWaiter},
		{"Waiters_FIFO", testFIFO},
		{"Waiters_HeavyHeadNotOvertaken", testHeavyHead},
		{"Waiters_HeavyHeadOtherChannel", testHeavyHeadOtherChannel},
		{"Waiters_NoBarging", testNoBarging},
		{"Waiters_Timeout", testWaiterTimeout},
		{"Waiters_CtxCancel", testWaiterCtxCancel},
		{"Waiters_LeavingHeadGrantsNext", testLeavingHeadGrantsNext},
		{"Waiters_CancelRacesGrant", testCancelRacesGrant},
		{"Concurrency_NeverOversubscribed_Total", func(t *testing.T, f *fixture) {
			testNeverOversubscribed(t, f, store.ScopeTotal)
		}},
		{"Concurrency_NeverOversubscribed_Channel", func(t *testing.T, f *fixture) {
			testNeverOversubscribed(t, f, store.ScopeChannel)
		}},
		{"Tenants_Isolation", testTenantIsolation},
		{"Tenants_CRUD", testTenantsCRUD},
		{"Keys_CRUD", testKeysCRUD},
		{"Ping", testPing},
		{"Jobs_EnqueueDispatches", testJobEnqueueDispatches},
		{"Jobs_DispatchOnFreedPermit", testJobDispatchOnFreedPermit},
		{"Jobs_SuspendResume", testJobSuspendResume},
		{"Jobs_BurstFIFONeverOversubscribed", testJobBurst},
		{"Jobs_RoundRobin", testJobRoundRobin},
		{"Jobs_ScopeChannel", testJobScopeChannel},
		{"Jobs_SyncWaitersFirst", testJobSyncWaitersFirst},
		{"Jobs_TransitionGrantsWaiters", testJobTransitionGrantsWaiters},
		{"Jobs_LeaseExpiry", testJobLeaseExpiry},
		{"Jobs_ReleaseAndExtendLease", testJobReleaseLease},
		{"Jobs_Idempotency", testJobIdempotency},
		{"Jobs_QueueFull", testJobQueueFull},
		{"EnqueueBatch_OrderAndDispatch", testEnqueueBatchOrder},
		{"EnqueueBatch_Idempotency", testEnqueueBatchIdempotency},
		{"EnqueueBatch_QueueFullEnqueuesNothing", testEnqueueBatchQueueFull},
		{"EnqueueBatch_UnknownSemaphore", testEnqueueBatchUnknownSemaphore},
		{"EnqueueBatch_Large", testEnqueueBatchLarge},
		{"Jobs_ListPaging", testJobList},
		{"Jobs_Purge", testJobPurge},
		{"Jobs_PurgeChannel", testJobPurgeChannel},
		{"Retention_Done", testRetentionDone},
		{"Retention_Failed", testRetentionFailed},
		{"Retention_Zero", testRetentionZero},
		{"Retention_Changed", testRetentionChanged},
		{"Jobs_DeleteSemaphore", testJobDeleteSemaphore},
		{"Jobs_NotFound", testJobNotFound},
		{"Jobs_TenantIsolation", testJobTenantIsolation},
		{"Jobs_TransitionTable", testJobTransitionTable},
		{"Jobs_FailRetrySuspend", testJobFailRetrySuspend},
		{"Jobs_FailRetry", testJobFailRetry},
		{"Jobs_Requeue", testJobRequeue},
		{"Jobs_DeliveredAndHandOff", testJobDeliveredAndHandOff},
		{"Jobs_StaleLease", testJobStaleLease},
		{"Jobs_Concurrent", testJobConcurrent},
		{"Params_PutInvalidConfig", testPutInvalidConfig},
		{"Params_ExtendDefaultTTL", testExtendDefaultTTL},
		{"Params_CreateKeyDuplicate", testCreateKeyDuplicate},
		{"Params_DeliveredKeepsRoute", testDeliveredKeepsRoute},
		{"Params_Tenant", testTenantParams},
		{"Params_IdempotentReplayFirst", testIdempotentReplayFirst},
		{"Rate_NeverOverLimit_Total", func(t *testing.T, f *fixture) {
			testRateNeverOverLimit(t, f, store.ScopeTotal)
		}},
		{"Rate_NeverOverLimit_Channel", func(t *testing.T, f *fixture) {
			testRateNeverOverLimit(t, f, store.ScopeChannel)
		}},
		{"Rate_WaitersOnTimeFIFO", testRateWaitersOnTime},
		{"Rate_HeavyHeadNotOvertaken", testRateHeavyHead},
		{"Rate_ChannelWindows", testRateChannelWindows},
		{"Rate_LimitedError", testRateLimitedError},
		{"Rate_WeightTooLarge", testRateWeightTooLarge},
		{"Rate_Removed", testRateRemoved},
		{"Rate_LoweredRevokesNothing", testRateLowered},
		{"Rate_RaisedGrantsWaiter", testRateRaised},
		{"Rate_Jobs", testRateJobs},
		{"Rate_JobsPerChannel", testRateJobsPerChannel},
		{"Rate_JobsShareWindow", testRateJobsShareWindow},
		{"Rate_State", testRateState},
	}
	tests = append(tests, sessionTests...)
	tests = append(tests, workerTests...)
	tests = append(tests, delayedTests...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newFixture(t, newStore(t)))
		})
	}
}

// fixture bundles a store, a tenant and a context for one test.
type fixture struct {
	t      *testing.T
	ctx    context.Context
	st     store.Store
	tenant string
}

func newFixture(t *testing.T, st store.Store) *fixture {
	return &fixture{t: t, ctx: t.Context(), st: st, tenant: "t1"}
}

// withTenant returns a copy of the fixture acting as another tenant.
func (f *fixture) withTenant(tenant string) *fixture {
	g := *f
	g.tenant = tenant
	return &g
}

// put creates or replaces a semaphore with the given maxValue and scope.
func (f *fixture) put(name string, maxValue int64, scope string) store.Semaphore {
	f.t.Helper()
	sem, _, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{
		Tenant: f.tenant, Name: name,
		Config: store.SemaphoreConfig{MaxValue: maxValue, MaxValueScope: scope, LeaseTimeout: longTTL, Retention: keep},
	})
	require.NoError(f.t, err)
	return sem
}

// params returns AcquireParams for this tenant with a long TTL and weight 1.
func (f *fixture) params(name string) store.AcquireParams {
	return store.AcquireParams{Tenant: f.tenant, Semaphore: name, Weight: 1, TTL: longTTL}
}

// acquire must succeed.
func (f *fixture) acquire(p store.AcquireParams) store.Lease {
	f.t.Helper()
	l, err := f.st.Acquire(f.ctx, p)
	require.NoError(f.t, err)
	return l
}

// acquireW acquires one lease of the given weight on the default channel.
func (f *fixture) acquireW(name string, weight int64) store.Lease {
	f.t.Helper()
	p := f.params(name)
	p.Weight = weight
	return f.acquire(p)
}

// release must succeed.
func (f *fixture) release(l store.Lease) {
	f.t.Helper()
	_, err := f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: l.ID})
	require.NoError(f.t, err)
}

// state must succeed.
func (f *fixture) state(name string) store.SemaphoreState {
	f.t.Helper()
	st, err := f.st.State(f.ctx, f.tenant, name)
	require.NoError(f.t, err)
	return st
}

// requireUsage checks the top-level InUse and Waiting of a semaphore.
func (f *fixture) requireUsage(name string, inUse, waiting int64) {
	f.t.Helper()
	st := f.state(name)
	require.Equal(f.t, inUse, st.InUse, "inUse")
	require.Equal(f.t, waiting, st.Waiting, "waiting")
}

// awaitWaiting waits until State shows n waiters.
func (f *fixture) awaitWaiting(name string, n int64) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		st, err := f.st.State(f.ctx, f.tenant, name)
		return err == nil && st.Waiting == n
	}, eventually, tick, "waiting for %d waiters on %s", n, name)
}

// inUseIs returns a condition for sweepUntil: the semaphore's InUse is n.
// (Conditions run on another goroutine, so they must not call require.)
func (f *fixture) inUseIs(name string, n int64) func() bool {
	return func() bool {
		st, err := f.st.State(f.ctx, f.tenant, name)
		return err == nil && st.InUse == n
	}
}

// sweepUntil calls Sweep and then cond until cond holds, within eventually.
// cond must not call require (it runs on another goroutine).
func (f *fixture) sweepUntil(cond func() bool, msg string) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		if _, err := f.st.Sweep(f.ctx); err != nil {
			return false
		}
		return cond()
	}, eventually, tick, msg)
}

// result is the outcome of an Acquire run in the background.
type result struct {
	lease store.Lease
	err   error
	at    time.Time
}

// goAcquire runs Acquire in a goroutine and delivers its result on the
// returned channel. The goroutine is cancelled and awaited at cleanup, so
// it never outlives the test.
func (f *fixture) goAcquire(p store.AcquireParams) <-chan result {
	ctx, cancel := context.WithCancel(f.ctx)
	return f.goAcquireCtx(ctx, cancel, p)
}

// goAcquireCtx is goAcquire with a caller-controlled context.
func (f *fixture) goAcquireCtx(ctx context.Context, cancel context.CancelFunc, p store.AcquireParams) <-chan result {
	out := make(chan result, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := f.st.Acquire(ctx, p)
		out <- result{lease: l, err: err, at: time.Now()}
	}()
	f.t.Cleanup(func() {
		cancel()
		<-done
	})
	return out
}

// recv waits for a background result.
func recv(t *testing.T, ch <-chan result, msg string) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(eventually):
		require.FailNow(t, "timed out: "+msg)
		return result{}
	}
}

// recvLease waits for a background result that must be a lease.
func recvLease(t *testing.T, ch <-chan result, msg string) store.Lease {
	t.Helper()
	r := recv(t, ch, msg)
	require.NoError(t, r.err, msg)
	return r.lease
}

// requirePending checks that a background acquire has not returned yet.
func requirePending(t *testing.T, ch <-chan result, msg string) {
	t.Helper()
	select {
	case r := <-ch:
		require.FailNow(t, "acquire returned early: "+msg, "lease %+v err %v", r.lease, r.err)
	default:
	}
}

// waitUntil blocks until the wall clock passes deadline. It waits for time
// to pass (a lease to expire), not for an event.
func waitUntil(deadline time.Time) {
	if d := time.Until(deadline); d > 0 {
		<-time.After(d)
	}
}
