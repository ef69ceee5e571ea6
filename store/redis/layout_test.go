package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
)

// TestLayoutNewerIsRefused: a semaphore whose data a newer release wrote
// (its hash's layout "v" above this build's) is refused by every
// operation, with store.ErrLayoutNewer, and nothing of it changes: not its
// hash, its leases, its jobs or its keys; the refusals are counted. Once
// the layout is one this build reads again, everything works as before.
func TestLayoutNewerIsRefused(t *testing.T) {
	c := testredis.Client(t)
	s := newStoreOn(t, c, testredis.Prefix(t))
	ctx := context.Background()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "s",
		Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 2, LeaseTimeout: time.Minute, MaxAttempts: 3}})
	require.NoError(t, err)
	held, err := s.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "s", Weight: 1, TTL: 200 * time.Millisecond})
	require.NoError(t, err)
	job, _, err := s.EnqueueJob(ctx, store.EnqueueParams{Tenant: testTenant, Semaphore: "s", Payload: []byte(`{"n":1}`)})
	require.NoError(t, err)
	require.Equal(t, store.JobInflight, job.Status)

	keys := s.keys.sem(testTenant, "s")
	snapshot := func() map[string]string {
		out := map[string]string{}
		for _, k := range keys {
			typ, err := c.Type(ctx, k).Result()
			require.NoError(t, err)
			dump, err := c.Dump(ctx, k).Result()
			if err != nil {
				dump = "(none)"
			}
			out[k] = typ + ":" + dump
		}
		return out
	}
	for _, newer := range []string{"3", "17", "3.1", "x"} {
		require.NoError(t, c.HSet(ctx, keys[0], "v", newer).Err())
		before := snapshot()
		n0 := s.LayoutRefusals()
		// the held lease's expiry passes (Redis shares this clock): nothing
		// may act on it while the layout is refused
		time.Sleep(time.Until(held.ExpiresAt.Add(20 * time.Millisecond)))

		_, err = s.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "s", Weight: 1})
		require.ErrorIs(t, err, store.ErrLayoutNewer, "acquire, layout %s", newer)
		require.ErrorIs(t, err, store.ErrUnavailable, "an outage for callers that only tell those apart")
		_, err = s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: held.ID})
		require.ErrorIs(t, err, store.ErrLayoutNewer, "release")
		_, _, err = s.EnqueueJob(ctx, store.EnqueueParams{Tenant: testTenant, Semaphore: "s", Payload: []byte(`{}`)})
		require.ErrorIs(t, err, store.ErrLayoutNewer, "enqueue")
		_, err = s.TransitionJob(ctx, store.TransitionParams{Tenant: testTenant, JobID: job.ID, Action: store.ActRelease, LeaseID: job.Lease.ID})
		require.ErrorIs(t, err, store.ErrLayoutNewer, "transition")
		_, err = s.GetJob(ctx, testTenant, job.ID)
		require.ErrorIs(t, err, store.ErrLayoutNewer, "get job")
		_, err = s.State(ctx, testTenant, "s")
		require.ErrorIs(t, err, store.ErrLayoutNewer, "state")
		_, _, err = s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "s",
			Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 5, LeaseTimeout: time.Minute, MaxAttempts: 1}})
		require.ErrorIs(t, err, store.ErrLayoutNewer, "put")
		require.ErrorIs(t, s.DeleteSemaphore(ctx, testTenant, "s"), store.ErrLayoutNewer, "delete")
		_, err = s.SetSuspended(ctx, testTenant, "s", true)
		require.ErrorIs(t, err, store.ErrLayoutNewer, "suspend")
		_, err = s.PurgeJobs(ctx, store.PurgeJobsParams{Tenant: testTenant, Semaphore: "s", Status: store.JobScheduled})
		require.ErrorIs(t, err, store.ErrLayoutNewer, "purge")
		_, _ = s.Sweep(ctx) // when it reaches the semaphore, it must leave it

		require.Equal(t, before, snapshot(), "nothing of the semaphore changed (layout %s)", newer)
		require.GreaterOrEqual(t, s.LayoutRefusals()-n0, int64(10), "every refused operation counted")
	}

	// back to this build's layout: as if nothing happened
	require.NoError(t, c.HSet(ctx, keys[0], "v", "2").Err())
	_, err = s.TransitionJob(ctx, store.TransitionParams{Tenant: testTenant, JobID: job.ID, Action: store.ActRelease, LeaseID: job.Lease.ID})
	require.NoError(t, err)
	_, err = s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: held.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "its ttl passed: expired now, by this build")
	st, err := s.State(ctx, testTenant, "s")
	require.NoError(t, err)
	require.Zero(t, st.InUse)
}
