package sdk_test

// Slow workers: 4 sessions of prefetch 1, 100 ms of work per job,
// leaseTimeout 1s, 200 jobs enqueued at once behind 20 permits. The ideal
// is 40 jobs/s (4 workers × 10 jobs/s); it reports the
// throughput as a fraction of that, and the jobs that took more than one
// attempt (0 when no job spends an attempt waiting for a worker) and the
// jobs that did not end done.
//
//	go test -run '^$' -bench 'BenchmarkSlowWorkers' -benchtime 1x -count 5 ./sdk/

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

func BenchmarkSlowWorkers(b *testing.B) {
	// 100 ms: the bench row. 300 ms (100 jobs): the load under
	// which jobs that waited inside the server for a worker outlived their
	// leases.
	b.Run("work=100ms", func(b *testing.B) { benchSlowWorkers(b, 200, 100*time.Millisecond) })
	b.Run("work=300ms", func(b *testing.B) { benchSlowWorkers(b, 100, 300*time.Millisecond) })
}

func benchSlowWorkers(b *testing.B, jobs int, work time.Duration) {
	const workers = 4
	srv, err := startServer(serverOptions{})
	require.NoError(b, err)
	b.Cleanup(srv.Close)
	ctx := context.Background()
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(b, err)
	for i := range b.N {
		sem := "slow" + string(rune('a'+i%26))
		_, err = c.PutSemaphore(ctx, sem, sdk.SemaphoreConfig{MaxValue: 20, LeaseTimeout: time.Second, MaxAttempts: 3})
		require.NoError(b, err)
		var ws []*sdk.Worker
		for range workers {
			w, err := sdk.NewWorker(srv.URL, adminKey)
			require.NoError(b, err)
			ws = append(ws, w)
			require.NoError(b, w.Subscribe(ctx, sem, "", 1, func(ctx context.Context, j sdk.Job) error {
				time.Sleep(work) // the handler's work
				return nil
			}))
		}
		items := make([]sdk.BatchJob, jobs)
		for k := range items {
			items[k] = sdk.BatchJob{Payload: k}
		}
		start := time.Now()
		enq, err := c.EnqueueBatch(ctx, sem, items)
		require.NoError(b, err)
		// Until every job has ended (done, or timeout on a build that lets
		// jobs wait inside the server), at most a minute.
		require.Eventually(b, func() bool {
			s, err := c.GetSemaphore(ctx, sem)
			return err == nil && s.State.Queued+s.State.Inflight == 0
		}, time.Minute, 5*time.Millisecond)
		elapsed := time.Since(start)
		finished, retried := 0, 0
		for _, j := range enq {
			got, err := c.GetJob(ctx, j.ID)
			require.NoError(b, err)
			if got.Status == sdk.JobDone {
				finished++
			}
			if got.Attempts > 1 {
				retried++
			}
		}
		for _, w := range ws {
			_ = w.Close()
		}
		ideal := workers * float64(time.Second) / float64(work)
		b.ReportMetric(float64(finished)/elapsed.Seconds()/ideal, "of-ideal")
		b.ReportMetric(float64(retried), "retried-jobs")
		b.ReportMetric(float64(jobs-finished), "not-done-jobs")
	}
}
