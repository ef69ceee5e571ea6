package redisstore

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
)

// BenchmarkAcquireRelease: parallel acquire+release pairs, each goroutine on
// its own semaphore channel of a scope-channel semaphore (no contention on
// permits, only on Redis).
func BenchmarkAcquireRelease(b *testing.B) {
	s := newStoreOn(b, testredis.Client(b), testredis.Prefix(b))
	ctx := context.Background()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "bench",
		Config: store.SemaphoreConfig{MaxValue: 1, MaxValueScope: store.ScopeChannel, LeaseTimeout: time.Minute}})
	require.NoError(b, err)
	var seq atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ch := fmt.Sprintf("c%d", seq.Add(1))
		for pb.Next() {
			l, err := s.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "bench", Channel: ch, TTL: time.Minute})
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: l.ID}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHandoff measures release → waiter grant latency: a waiter on
// Store A, the release on Store B; the time from the release call to the
// waiting Acquire's return. Reports p50 and p99.
func BenchmarkHandoff(b *testing.B) {
	prefix := testredis.Prefix(b)
	a := newStoreOn(b, testredis.Client(b), prefix)
	bs := newStoreOn(b, testredis.Client(b), prefix)
	ctx := context.Background()
	_, _, err := a.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "h",
		Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1, LeaseTimeout: time.Minute}})
	require.NoError(b, err)
	holder, err := bs.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "h", TTL: time.Minute})
	require.NoError(b, err)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		got := make(chan outcome, 1)
		go func() {
			l, err := a.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "h", TTL: time.Minute, Wait: 30 * time.Second})
			got <- outcome{l, err, time.Now()}
		}()
		for {
			st, err := bs.State(ctx, testTenant, "h")
			require.NoError(b, err)
			if st.Waiting == 1 {
				break
			}
		}
		b.StartTimer()
		t0 := time.Now()
		_, err := bs.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: holder.ID})
		require.NoError(b, err)
		o := <-got
		require.NoError(b, o.err)
		lat = append(lat, o.at.Sub(t0))
		holder = o.lease
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkEnqueueDispatchRelease: the async round trip. Producers enqueue
// jobs into a semaphore of maxValue 100; each dispatched job (a JobEvents
// listener) goes to a worker that releases it (TransitionJob release with
// its lease), which dispatches the next queued one. ns/op is per job, from
// enqueue to done; enqueue→dispatched latency is reported as p50/p99.
func BenchmarkEnqueueDispatchRelease(b *testing.B) {
	s := newStoreOn(b, testredis.Client(b), testredis.Prefix(b))
	ctx := context.Background()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "jobs",
		Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 100, LeaseTimeout: time.Minute, MaxAttempts: 3}})
	require.NoError(b, err)
	var enqueuedAt sync.Map // job id -> time.Time
	dispatched := make(chan store.Job, b.N+200)
	s.SetJobListener(func(ev store.JobEvents) {
		for _, j := range ev.Dispatched {
			dispatched <- j
		}
	})
	var (
		mu  sync.Mutex
		lat = make([]time.Duration, 0, b.N)
		wg  sync.WaitGroup
	)
	released := make(chan struct{}, b.N)
	for range 16 {
		wg.Go(func() {
			for j := range dispatched {
				at := time.Now()
				if t0, ok := enqueuedAt.Load(j.ID); ok {
					mu.Lock()
					lat = append(lat, at.Sub(t0.(time.Time)))
					mu.Unlock()
				}
				if _, err := s.TransitionJob(ctx, store.TransitionParams{Tenant: testTenant, JobID: j.ID,
					Action: store.ActRelease, LeaseID: j.Lease.ID}); err != nil {
					b.Error(err)
				}
				released <- struct{}{}
			}
		})
	}
	b.ResetTimer()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t0 := time.Now()
			// The id is known only after the call; a dispatch inside the
			// enqueue is timed from t0 by the worker's fallback below.
			j, _, err := s.EnqueueJob(ctx, store.EnqueueParams{Tenant: testTenant, Semaphore: "jobs", Payload: []byte(`{"n":1}`)})
			if err != nil {
				b.Error(err)
				return
			}
			if j.Status == store.JobScheduled {
				enqueuedAt.Store(j.ID, t0)
			} else {
				mu.Lock()
				lat = append(lat, time.Since(t0))
				mu.Unlock()
			}
		}
	})
	for range b.N {
		<-released
	}
	b.StopTimer()
	s.SetJobListener(nil)
	close(dispatched)
	wg.Wait()
	slices.Sort(lat)
	if len(lat) > 0 {
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
		b.ReportMetric(pct(0.50), "dispatch-p50-ms")
		b.ReportMetric(pct(0.99), "dispatch-p99-ms")
	}
}

// BenchmarkDelayedLateness: how late due delayed jobs are dispatched after
// their runAt, pushed by the store's timer with nothing else calling it.
// Each op enqueues 200 jobs with delays spread over 50–500 ms into one
// semaphore with room for all, and waits for them; it reports the median
// and p99 lateness (dispatch event received minus runAt, both this
// machine's clock, which Redis shares here).
//
//	go test -run '^$' -bench BenchmarkDelayedLateness -benchtime 3x ./store/redis/
func BenchmarkDelayedLateness(b *testing.B) {
	const jobs = 200
	s := newStoreOn(b, testredis.Client(b), testredis.Prefix(b))
	ctx := context.Background()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "late",
		Config: store.SemaphoreConfig{MaxValue: 1_000_000, MaxValueScope: store.ScopeTotal, LeaseTimeout: time.Minute, MaxAttempts: 1, Retention: store.Retention{}}})
	require.NoError(b, err)
	var mu sync.Mutex
	var late []time.Duration
	got := make(chan struct{}, jobs)
	s.SetJobListener(func(ev store.JobEvents) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, j := range ev.Dispatched {
			if at, ok := runAts.Load(j.ID); ok {
				late = append(late, now.Sub(at.(time.Time)))
				got <- struct{}{}
			}
		}
	})
	b.Cleanup(func() { s.SetJobListener(nil) })
	for b.Loop() {
		items := make([]store.EnqueueItem, jobs)
		for i := range items {
			items[i] = store.EnqueueItem{Payload: []byte(`1`), Delay: time.Duration(50+i*450/jobs) * time.Millisecond}
		}
		res, err := s.EnqueueJobs(ctx, store.EnqueueBatchParams{Tenant: testTenant, Semaphore: "late", Jobs: items})
		require.NoError(b, err)
		for _, r := range res {
			runAts.Store(r.Job.ID, r.Job.RunAt)
		}
		for range jobs {
			select {
			case <-got:
			case <-time.After(10 * time.Second):
				b.Fatal("the delayed jobs were not dispatched")
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(late)
	b.ReportMetric(float64(late[len(late)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(late[len(late)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(late[len(late)*9/10].Microseconds())/1000, "p90-ms")
	b.ReportMetric(float64(late[len(late)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(late[0].Microseconds())/1000, "min-ms")
}

// runAts maps the job ids of BenchmarkDelayedLateness to their runAt.
var runAts sync.Map

// redisCPU is the Redis main thread's CPU time so far (INFO cpu), seconds.
func redisCPU(b *testing.B, s *Store) float64 {
	b.Helper()
	info, err := s.client.Info(context.Background(), "cpu").Result()
	require.NoError(b, err)
	var total float64
	for _, line := range strings.Split(info, "\n") {
		for _, k := range []string{"used_cpu_user_main_thread:", "used_cpu_sys_main_thread:"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
	}
	return total
}

// BenchmarkJobRedisCPU: the Redis CPU of one job's life in calls of a
// fixed shape, so that two builds of the function library compare without
// the batching a loaded server adds: each op enqueues a batch of 16 jobs
// (one call, which also dispatches them) and releases them in one call,
// with nothing else on the semaphore. Reports Redis main-thread CPU per
// job (INFO cpu delta, which includes every other client of that Redis).
//
//	go test -run '^$' -bench BenchmarkJobRedisCPU -count 5 ./store/redis/
func BenchmarkJobRedisCPU(b *testing.B) {
	s := newStoreOn(b, testredis.Client(b), testredis.Prefix(b))
	ctx := context.Background()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "jobs",
		Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 100, LeaseTimeout: time.Minute, MaxAttempts: 3}})
	require.NoError(b, err)
	const n = 16
	items := make([]store.EnqueueItem, n)
	for i := range items {
		items[i] = store.EnqueueItem{Payload: []byte(`{"n":1,"pad":"0123456789012345678901234567890123456789012345678901234567890123456789012345678"}`)}
	}
	var released atomic.Int64
	b.ResetTimer()
	cpu0 := redisCPU(b, s)
	for range b.N {
		jobs, err := s.EnqueueJobs(ctx, store.EnqueueBatchParams{Tenant: testTenant, Semaphore: "jobs", Jobs: items})
		require.NoError(b, err)
		var wg sync.WaitGroup
		for _, r := range jobs {
			// released together: the store batches the calls of one
			// semaphore sent at about the same time
			wg.Go(func() {
				_, err := s.TransitionJob(ctx, store.TransitionParams{Tenant: testTenant, JobID: r.Job.ID,
					Action: store.ActRelease, LeaseID: r.Job.Lease.ID, Quiet: true})
				if err == nil {
					released.Add(1)
				}
			})
		}
		wg.Wait()
	}
	cpu := redisCPU(b, s) - cpu0
	b.StopTimer()
	require.EqualValues(b, b.N*n, released.Load(), "every job dispatched in its enqueue call and released")
	b.ReportMetric(cpu*1e6/float64(b.N*n), "redis-µs/job")
}
