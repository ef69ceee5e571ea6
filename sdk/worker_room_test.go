package sdk_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

// A job takes a permit only when a worker has room for it (README,
// "Websocket workers"):
// busy, slow, failing or absent workers never make a job end unrun.

// jobIs returns the job, requiring its status and attempts.
func jobIs(t *testing.T, c *sdk.Client, id string, st sdk.JobStatus, attempts int) sdk.Job {
	t.Helper()
	j, err := c.GetJob(t.Context(), id)
	require.NoError(t, err)
	require.Equal(t, st, j.Status, "job %s", id)
	require.Equal(t, attempts, j.Attempts, "attempts of job %s", id)
	return j
}

func TestWorker_JobWaitsForTheFirstWorker(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "late", sdk.SemaphoreConfig{MaxValue: 2, LeaseTimeout: time.Second})
	require.NoError(t, err)
	ids := enqueueN(t, c, "late", 0, 3)
	for _, id := range ids {
		jobIs(t, c, id, sdk.JobScheduled, 0) // no worker yet: it waits, no permit taken
	}
	s, err := c.GetSemaphore(ctx, "late")
	require.NoError(t, err)
	require.Zero(t, s.State.InUse)
	w, _ := newWorker(t, srv.URL)
	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "late", "", 1, log.handler(0)))
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
	for _, id := range ids {
		jobIs(t, c, id, sdk.JobDone, 1)
	}
}

func TestWorker_BusyWorkerDoesNotTimeJobsOut(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	// Job A works three times the leaseTimeout (its lease kept alive by the
	// worker); B comes meanwhile: it must wait for the worker's room, not
	// hold the second permit until its lease expires.
	_, err := c.PutSemaphore(ctx, "busy", sdk.SemaphoreConfig{MaxValue: 2, LeaseTimeout: time.Second, MaxAttempts: 3})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	started := make(chan string, 4)
	release := make(chan struct{})
	require.NoError(t, w.Subscribe(ctx, "busy", "", 1, func(ctx context.Context, j sdk.Job) error {
		started <- j.ID
		if j.Payload != nil && string(j.Payload) == `"A"` {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}))
	a, err := c.Enqueue(ctx, "busy", "A", sdk.EnqueueOptions{})
	require.NoError(t, err)
	require.Equal(t, a.ID, <-started)
	b, err := c.Enqueue(ctx, "busy", "B", sdk.EnqueueOptions{})
	require.NoError(t, err)
	// 3 s: three of B's leaseTimeouts, which would have spent all its
	// attempts had it taken a permit.
	deadline := time.After(3 * time.Second)
	for waiting := true; waiting; {
		select {
		case id := <-started:
			t.Fatalf("job %s pushed to a worker without room", id)
		case <-deadline:
			waiting = false
		}
	}
	jobIs(t, c, b.ID, sdk.JobScheduled, 0)
	s, err := c.GetSemaphore(ctx, "busy")
	require.NoError(t, err)
	require.EqualValues(t, 1, s.State.InUse, "B holds no permit while it waits")
	close(release)
	require.Equal(t, b.ID, <-started)
	waitStatus(t, c, []string{a.ID, b.ID}, sdk.JobDone)
	jobIs(t, c, a.ID, sdk.JobDone, 1)
	jobIs(t, c, b.ID, sdk.JobDone, 1)
}

func TestWorker_FailedJobDoesNotStarveTheNext(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "flaky2", sdk.SemaphoreConfig{MaxValue: 2, LeaseTimeout: time.Second, MaxAttempts: 3})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	var failedOnce atomic.Bool
	ran := make(chan string, 8)
	require.NoError(t, w.Subscribe(ctx, "flaky2", "", 1, func(ctx context.Context, j sdk.Job) error {
		ran <- j.ID
		if string(j.Payload) == `"A"` && failedOnce.CompareAndSwap(false, true) {
			return errors.New("transient failure")
		}
		return nil
	}))
	a, err := c.Enqueue(ctx, "flaky2", "A", sdk.EnqueueOptions{})
	require.NoError(t, err)
	require.Equal(t, a.ID, <-ran)
	b, err := c.Enqueue(ctx, "flaky2", "B", sdk.EnqueueOptions{})
	require.NoError(t, err)
	waitStatus(t, c, []string{a.ID, b.ID}, sdk.JobDone)
	jobIs(t, c, a.ID, sdk.JobDone, 2) // its failure spent one attempt
	jobIs(t, c, b.ID, sdk.JobDone, 1) // B ran once, on its first attempt
}

func TestWorker_SlowWorkersUnderLoad(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	// The load, scaled down: 4 workers of prefetch 1 behind 20
	// permits, short leases, jobs of a fifth of the lease.
	_, err := c.PutSemaphore(ctx, "load", sdk.SemaphoreConfig{MaxValue: 20, LeaseTimeout: time.Second, MaxAttempts: 3})
	require.NoError(t, err)
	log := newJobLog()
	for range 4 {
		w, _ := newWorker(t, srv.URL)
		require.NoError(t, w.Subscribe(ctx, "load", "", 1, log.handler(50*time.Millisecond)))
	}
	ids := enqueueN(t, c, "load", 0, 40)
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
	for _, id := range ids {
		jobIs(t, c, id, sdk.JobDone, 1) // no attempt spent waiting for a worker
	}
	require.LessOrEqual(t, log.peak, 4, "never more jobs at once than the workers' room")
}

func TestWorker_DelayedJob(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "later", sdk.SemaphoreConfig{MaxValue: 2, Retry: &sdk.Retry{Backoff: 0}})
	require.NoError(t, err)
	got, err := c.GetSemaphore(ctx, "later")
	require.NoError(t, err)
	require.Equal(t, &sdk.Retry{}, got.Retry, "the config's retry, backoff 0: retried at once")
	w, _ := newWorker(t, srv.URL)
	ran := make(chan time.Time, 1)
	require.NoError(t, w.Subscribe(ctx, "later", "", 1, func(context.Context, sdk.Job) error {
		ran <- time.Now()
		return nil
	}))
	start := time.Now()
	j, err := c.Enqueue(ctx, "later", "x", sdk.EnqueueOptions{Delay: 300 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, sdk.JobScheduled, j.Status)
	require.False(t, j.RunAt.IsZero())
	select {
	case at := <-ran:
		require.GreaterOrEqual(t, at.Sub(start), 250*time.Millisecond, "not before its time")
	case <-time.After(10 * time.Second):
		t.Fatal("the delayed job did not run")
	}
	waitStatus(t, c, []string{j.ID}, sdk.JobDone)
	// Through the worker's connection, with RunAt.
	j, err = w.Enqueue(ctx, "later", "y", sdk.EnqueueOptions{RunAt: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, sdk.JobScheduled, j.Status)
	require.WithinDuration(t, time.Now().Add(time.Hour), j.RunAt, 5*time.Second)
}

func TestWorker_OneSessionSlowJobsNeverStall(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	// The third scenario: one session of prefetch 1, leaseTimeout
	// 1s, 300 ms of work per job. Each lease runs from its push, so no
	// release is refused and the session never stalls.
	_, err := c.PutSemaphore(ctx, "one", sdk.SemaphoreConfig{MaxValue: 5, LeaseTimeout: time.Second, MaxAttempts: 3})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "one", "", 1, log.handler(300*time.Millisecond)))
	ids := enqueueN(t, c, "one", 0, 8)
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
	for _, id := range ids {
		jobIs(t, c, id, sdk.JobDone, 1)
	}
	require.Equal(t, 1, log.peak)
}
