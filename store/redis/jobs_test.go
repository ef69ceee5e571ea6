package redisstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
)

// Redis-specific job tests: the queue encoding (chunks, stale entries),
// the sweep index covering job leases, id reuse, the ListJobs walk, and
// memory per queued job. The behaviour itself is the conformance suite's.

// jobRec collects job events.
type jobRec struct {
	mu         sync.Mutex
	dispatched []store.Job
	finished   []store.Job
}

func listen(s *Store) *jobRec {
	r := &jobRec{}
	s.SetJobListener(func(ev store.JobEvents) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.dispatched = append(r.dispatched, ev.Dispatched...)
		r.finished = append(r.finished, ev.Finished...)
	})
	return r
}

func (r *jobRec) take() (d, f []store.Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, f = r.dispatched, r.finished
	r.dispatched, r.finished = nil, nil
	return d, f
}

func putJobs(t testing.TB, s *Store, name string, cfg store.SemaphoreConfig) {
	t.Helper()
	_, _, err := s.PutSemaphore(context.Background(), store.PutSemaphoreParams{Tenant: testTenant, Name: name, Config: cfg})
	require.NoError(t, err)
}

func enqueue(t testing.TB, s *Store, name, ch, payload string) store.Job {
	t.Helper()
	j, created, err := s.EnqueueJob(context.Background(), store.EnqueueParams{
		Tenant: testTenant, Semaphore: name, Channel: ch, Payload: []byte(payload)})
	require.NoError(t, err)
	require.True(t, created)
	return j
}

func transition(t testing.TB, s *Store, id string, a store.JobAction) store.Job {
	t.Helper()
	j, err := s.TransitionJob(context.Background(), store.TransitionParams{Tenant: testTenant, JobID: id, Action: a})
	require.NoError(t, err)
	return j
}

// TestRedis_JobQueueChunks: FIFO order across many queue chunks, with
// cancelled (stale) entries in the middle, a requeued job whose stale
// entry is still ahead of it, and front pushes (onDeliveryError suspend)
// both into a partly consumed head chunk and into a fresh one.
func TestRedis_JobQueueChunks(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	rec := listen(s)
	putJobs(t, s, "q", store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1, LeaseTimeout: time.Minute, MaxAttempts: 3, Retention: store.DefaultRetention})
	_, err := s.SetSuspended(ctx, testTenant, "q", true)
	require.NoError(t, err)

	const n = 3*128 + 17 // several chunks
	var want []string
	jobs := make([]store.Job, n)
	for i := range n {
		jobs[i] = enqueue(t, s, "q", "", fmt.Sprintf(`{"i":%d}`, i))
		require.Equal(t, store.JobScheduled, jobs[i].Status)
	}
	cancelled := map[int]bool{}
	for i := 5; i < n; i += 7 {
		transition(t, s, jobs[i].ID, store.ActCancel)
		cancelled[i] = true
	}
	// job 12 was cancelled and is requeued: back of the queue, not at its
	// old (stale) place.
	transition(t, s, jobs[12].ID, store.ActRequeue)
	for i := range n {
		if !cancelled[i] {
			want = append(want, jobs[i].ID)
		}
	}
	want = append(want, jobs[12].ID)
	st, err := s.State(ctx, testTenant, "q")
	require.NoError(t, err)
	require.Equal(t, int64(len(want)), st.Queued)

	// Resume and drain one job at a time; suspend-transitions push the
	// job back to the head (a fresh chunk first, then the consumed part of
	// the head chunk).
	_, err = s.SetSuspended(ctx, testTenant, "q", false)
	require.NoError(t, err)
	var got []string
	front := 0
	for len(got) < len(want) {
		d, _ := rec.take()
		require.Len(t, d, 1, "one permit: one job at a time (after %d)", len(got))
		j := d[0]
		if front < 2 && (len(got) == 0 || len(got) == 200) {
			front++
			back := transition(t, s, j.ID, store.ActSuspend)
			require.Equal(t, store.JobScheduled, back.Status)
			require.Equal(t, 0, back.Attempts)
			_, err = s.SetSuspended(ctx, testTenant, "q", false)
			require.NoError(t, err)
			continue // the same job comes again, first
		}
		got = append(got, j.ID)
		transition(t, s, j.ID, store.ActRelease)
	}
	require.Equal(t, want, got)
	st, err = s.State(ctx, testTenant, "q")
	require.NoError(t, err)
	require.Zero(t, st.Queued)
	require.Zero(t, st.InUse)
	keys := s.keys.sem(testTenant, "q")
	n2, err := s.client.HLen(ctx, keys[kJQ]).Result()
	require.NoError(t, err)
	require.Zero(t, n2, "an empty queue leaves no chunk behind")
}

// TestRedis_JobLeaseSweepIndex: a dispatched job whose lease expires with
// nothing else touching the semaphore is found by Sweep through the sweep
// index (the due time covers job leases) and retried, then timed out.
func TestRedis_JobLeaseSweepIndex(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	rec := listen(s)
	const lt = 200 * time.Millisecond
	putJobs(t, s, "x", store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1, LeaseTimeout: lt, MaxAttempts: 2, Retention: store.DefaultRetention})
	j := enqueue(t, s, "x", "", `{}`)
	require.Equal(t, store.JobInflight, j.Status)
	score, err := s.client.ZScore(ctx, s.keys.sweep(), semMember(testTenant, "x")).Result()
	require.NoError(t, err)
	require.Equal(t, float64(j.Lease.ExpiresAt.UnixMilli()), score, "the job lease's expiry is the due time")
	rec.take()

	var d, f []store.Job
	deadline := time.Now().Add(10 * time.Second)
	for len(f) == 0 && time.Now().Before(deadline) {
		_, err := s.Sweep(ctx)
		require.NoError(t, err)
		dd, ff := rec.take()
		d, f = append(d, dd...), append(f, ff...)
		time.Sleep(20 * time.Millisecond) // the sweeper's tick
	}
	require.Len(t, d, 1, "retried once (maxAttempts 2)")
	require.Equal(t, j.ID, d[0].ID)
	require.Equal(t, 2, d[0].Attempts)
	require.Greater(t, d[0].Lease.FencingToken, j.Lease.FencingToken)
	require.Len(t, f, 1)
	require.Equal(t, store.JobTimeout, f[0].Status)
	require.Equal(t, "lease expired after 2 attempts", f[0].Error)
	require.Nil(t, f[0].Lease)
}

// TestRedis_JobIDs: a job id carries its semaphore; a semaphore deleted and
// created again does not resolve the old ids (a new salt), and a job's
// lease id is a lease id of its semaphore.
func TestRedis_JobIDs(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	cfg := store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1, LeaseTimeout: time.Minute, MaxAttempts: 1, Retention: store.DefaultRetention}
	putJobs(t, s, "ids", cfg)
	j := enqueue(t, s, "ids", "", `1`)
	name, ok := store.ParseJobID(j.ID)
	require.True(t, ok)
	require.Equal(t, "ids", name)
	name, ok = store.ParseLeaseID(j.Lease.ID)
	require.True(t, ok)
	require.Equal(t, "ids", name)
	require.NoError(t, s.DeleteSemaphore(ctx, testTenant, "ids"))
	putJobs(t, s, "ids", cfg)
	j2 := enqueue(t, s, "ids", "", `2`)
	require.NotEqual(t, j.ID, j2.ID)
	_, err := s.GetJob(ctx, testTenant, j.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	got, err := s.GetJob(ctx, testTenant, j2.ID)
	require.NoError(t, err)
	require.JSONEq(t, `2`, string(got.Payload))
	for _, bad := range []string{"", "x", j2.ID[:31] + "g" + j2.ID[32:], strings.Repeat("0", 32) + j2.ID[32:]} {
		_, err = s.GetJob(ctx, testTenant, bad)
		require.ErrorIs(t, err, store.ErrJobNotFound, bad)
	}
}

// TestRedis_ListJobsWalk: listing walks at most listScan seqs per call: a
// selective filter behind many other jobs comes back in short pages with a
// cursor, and never misses or repeats a job; purged jobs at the start are
// skipped through the jlo hint.
func TestRedis_ListJobsWalk(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	putJobs(t, s, "w", store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1, LeaseTimeout: time.Minute, Retention: store.DefaultRetention})
	_, err := s.SetSuspended(ctx, testTenant, "w", true)
	require.NoError(t, err)
	const n = 2*listScan + 300
	bulkEnqueue(t, s, "w", n, func(i int) string {
		if i%1000 == 999 {
			return "rare"
		}
		return "a"
	}, "{}")
	keys := s.keys.sem(testTenant, "w")
	var rare []store.Job
	cursor, calls := "", 0
	for {
		page, next, err := s.ListJobs(ctx, store.ListJobsParams{Tenant: testTenant, Semaphore: "w", Channel: "rare", Cursor: cursor, Limit: 3})
		require.NoError(t, err)
		calls++
		rare = append(rare, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Len(t, rare, n/1000)
	require.True(t, slices.IsSortedFunc(rare, func(a, b store.Job) int { return a.CreatedAt.Compare(b.CreatedAt) }))
	require.GreaterOrEqual(t, calls, n/listScan, "short pages when the walk budget runs out")

	// Purge everything, add one: the first listing walks past the purged
	// seqs (short pages) and moves the hint, so the next one is one call.
	m, err := s.PurgeJobs(ctx, store.PurgeJobsParams{Tenant: testTenant, Semaphore: "w", Status: store.JobScheduled})
	require.NoError(t, err)
	require.Equal(t, n, m)
	last := enqueue(t, s, "w", "", `{}`)
	page, next, err := s.ListJobs(ctx, store.ListJobsParams{Tenant: testTenant, Semaphore: "w"})
	require.NoError(t, err)
	require.NotEmpty(t, next, "the walk budget ran out")
	for next != "" {
		var more []store.Job
		more, next, err = s.ListJobs(ctx, store.ListJobsParams{Tenant: testTenant, Semaphore: "w", Cursor: next})
		require.NoError(t, err)
		page = append(page, more...)
	}
	require.Equal(t, []string{last.ID}, jobIDsOf(page))
	page, next, err = s.ListJobs(ctx, store.ListJobsParams{Tenant: testTenant, Semaphore: "w"})
	require.NoError(t, err)
	require.Empty(t, next)
	require.Equal(t, []string{last.ID}, jobIDsOf(page))
	lo, err := s.client.HGet(ctx, keys[kSem], "jlo").Int64()
	require.NoError(t, err)
	require.Equal(t, int64(n+1), lo)
}

// bulkEnqueue enqueues n jobs by batch.lua calls of 250 enqueues each
// (faster than one by one), short enough never to hit a read timeout.
func bulkEnqueue(t testing.TB, s *Store, name string, n int, channel func(int) string, payload string) {
	t.Helper()
	ctx := context.Background()
	keys := s.keys.sem(testTenant, name)
	for start := 0; start < n; start += 250 {
		var args []any
		for i := start; i < min(start+250, n); i++ {
			args = append(args, "e", newSalt(), channel(i), payload, "", 0, "", 0)
		}
		require.NoError(t, s.client.FCall(ctx, fnBatch, keys, s.semArgs(name, args)...).Err())
	}
}

func jobIDsOf(jobs []store.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

// TestRedis_JobMemory reports the Redis memory of a queued job beyond its
// 100-byte payload, measured on a dedicated server (used_memory before and
// after 10,000 jobs, and MEMORY USAGE of the semaphore's keys).
func TestRedis_JobMemory(t *testing.T) {
	t.Parallel()
	srv := testredis.StartServer(t, "--appendonly", "no")
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := newStoreOn(t, c, "sd")
	ctx := t.Context()
	putJobs(t, s, "mem", store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 10, LeaseTimeout: time.Minute, Retention: store.DefaultRetention})
	_, err := s.SetSuspended(ctx, testTenant, "mem", true)
	require.NoError(t, err)
	enqueue(t, s, "mem", "", `{}`) // scripts loaded, salt set
	payload := `{"p":"` + strings.Repeat("x", 100-8) + `"}`
	require.Len(t, payload, 100)

	usedMemory := func() int64 {
		info, err := c.InfoMap(ctx, "memory").Result()
		require.NoError(t, err)
		return atoi(info["Memory"]["used_memory"])
	}
	keyMemory := func() int64 {
		var sum int64
		for _, k := range s.keys.sem(testTenant, "mem") {
			v, err := c.MemoryUsage(ctx, k, 0).Result()
			if err == nil {
				sum += v
			}
		}
		return sum
	}
	const n = 10_000
	before, keysBefore := usedMemory(), keyMemory()
	bulkEnqueue(t, s, "mem", n, func(int) string { return store.DefaultChannel }, payload)
	after, keysAfter := usedMemory(), keyMemory()
	st, err := s.State(ctx, testTenant, "mem")
	require.NoError(t, err)
	require.Equal(t, int64(n+1), st.Queued)
	perJob := float64(after-before)/n - 100
	perJobKeys := float64(keysAfter-keysBefore)/n - 100
	t.Logf("Redis memory per queued job beyond a 100-byte payload: %.0f bytes (used_memory), %.0f bytes (MEMORY USAGE SAMPLES 0)", perJob, perJobKeys)
	require.LessOrEqual(t, perJobKeys, 250.0)
}

// TestRedis_JobDispatchBatch: scope channel with more open channels than
// one dispatch batch: a resume dispatches DefaultDispatchBatch jobs, and the
// next operation of any kind goes on with the rest (dmore), although those
// channels were not touched by it.
func TestRedis_JobDispatchBatch(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	rec := listen(s)
	putJobs(t, s, "b", store.SemaphoreConfig{MaxValue: 1, MaxValueScope: store.ScopeChannel, LeaseTimeout: time.Minute, Retention: store.DefaultRetention})
	_, err := s.SetSuspended(ctx, testTenant, "b", true)
	require.NoError(t, err)
	const chans = store.DefaultDispatchBatch + 6
	for i := range chans {
		for range 2 {
			enqueue(t, s, "b", fmt.Sprintf("c%03d", i), `{}`)
		}
	}
	_, err = s.SetSuspended(ctx, testTenant, "b", false)
	require.NoError(t, err)
	d, _ := rec.take()
	require.Len(t, d, store.DefaultDispatchBatch)
	for i, j := range d {
		require.Equal(t, fmt.Sprintf("c%03d", i), j.Channel, "round-robin by name, one job per channel")
	}
	st, err := s.State(ctx, testTenant, "b")
	require.NoError(t, err)
	d, _ = rec.take()
	require.Len(t, d, chans-store.DefaultDispatchBatch, "the next operation dispatches the rest")
	require.Equal(t, int64(chans), st.Inflight)
	require.Equal(t, int64(chans), st.Queued)

	// Every channel is full now: releasing the job of one channel
	// dispatches that channel's next job, and nothing else.
	_, err = s.TransitionJob(ctx, store.TransitionParams{Tenant: testTenant, JobID: d[2].ID, Action: store.ActRelease})
	require.NoError(t, err)
	d2, f := rec.take()
	require.Len(t, f, 1)
	require.Len(t, d2, 1)
	require.Equal(t, d[2].Channel, d2[0].Channel)
	n, err := s.client.ZCard(ctx, s.keys.sem(testTenant, "b")[kJCh]).Result()
	require.NoError(t, err)
	require.Equal(t, int64(chans-1), n, "the released channel's queue is empty and left the round")
}

// TestStore_PurgeManyJobs: a purge of more jobs than lib_cache.lua keeps
// writes for (HMAX) sends them in parts within the one call, and forgets
// every job and idempotency key.
func TestStore_PurgeManyJobs(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "many",
		Config: store.SemaphoreConfig{MaxValue: 1, MaxValueScope: store.ScopeTotal, LeaseTimeout: time.Minute, MaxAttempts: 1, Retention: store.DefaultRetention}})
	require.NoError(t, err)
	_, err = s.SetSuspended(ctx, testTenant, "many", true)
	require.NoError(t, err)
	const batches = 10
	var last store.Job
	for b := range batches {
		items := make([]store.EnqueueItem, 1000)
		for i := range items {
			items[i] = store.EnqueueItem{Payload: []byte(`{"n":1}`), IdempotencyKey: fmt.Sprintf("k%d-%d", b, i)}
		}
		res, err := s.EnqueueJobs(ctx, store.EnqueueBatchParams{Tenant: testTenant, Semaphore: "many", Jobs: items})
		require.NoError(t, err)
		last = res[len(res)-1].Job
	}
	st, err := s.State(ctx, testTenant, "many")
	require.NoError(t, err)
	require.Equal(t, int64(batches*1000), st.Queued)
	n, err := s.PurgeJobs(ctx, store.PurgeJobsParams{Tenant: testTenant, Semaphore: "many", Status: store.JobScheduled})
	require.NoError(t, err)
	require.Equal(t, batches*1000, n)
	st, err = s.State(ctx, testTenant, "many")
	require.NoError(t, err)
	require.Zero(t, st.Queued)
	_, err = s.GetJob(ctx, testTenant, last.ID)
	require.ErrorIs(t, err, store.ErrJobNotFound)
	jobs, err := s.client.HLen(ctx, s.keys.sem(testTenant, "many")[12]).Result()
	require.NoError(t, err)
	require.Zero(t, jobs, "no job record left")
	res, err := s.EnqueueJobs(ctx, store.EnqueueBatchParams{Tenant: testTenant, Semaphore: "many",
		Jobs: []store.EnqueueItem{{Payload: []byte(`1`), IdempotencyKey: "k9-999"}}})
	require.NoError(t, err)
	require.True(t, res[0].Created, "the purged job's key is free again")
}

// TestRedis_FinishedJobMemory reports the Redis memory of a terminal job
// beyond its 100-byte payload (MEMORY USAGE SAMPLES 0 of the semaphore's
// keys, on a dedicated server, before and after 10,000 jobs ended: half
// done, half error), and checks that what a retention deletes leaves
// nothing behind: lowering it to 0 empties the job records, the finished
// sets and the idempotency keys within the calls that follow (at most
// FORGET_BATCH per class and call), and jobs that end under a retention of
// 0 never occupy anything.
func TestRedis_FinishedJobMemory(t *testing.T) {
	t.Parallel()
	srv := testredis.StartServer(t, "--appendonly", "no")
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := newStoreOn(t, c, "sd")
	ctx := t.Context()
	cfg := store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: 1_000_000, LeaseTimeout: time.Minute,
		MaxAttempts: 1, Retention: store.Retention{Done: time.Hour, Failed: time.Hour}}
	putJobs(t, s, "fin", cfg)
	rec := listen(s)
	payload := `{"p":"` + strings.Repeat("x", 100-8) + `"}`
	keys := s.keys.sem(testTenant, "fin")
	keyMemory := func() int64 {
		var sum int64
		for _, k := range keys {
			if k == keys[kFence] {
				continue
			}
			v, err := c.MemoryUsage(ctx, k, 0).Result()
			if err == nil {
				sum += v
			}
		}
		return sum
	}
	// run enqueues n jobs (with idempotency keys "<tag>-<i>"), dispatches
	// them and ends them: even ones done, odd ones error.
	run := func(tag string, n int) {
		t.Helper()
		var ids []string
		for start := 0; start < n; start += 1000 {
			items := make([]store.EnqueueItem, min(1000, n-start))
			for i := range items {
				items[i] = store.EnqueueItem{Payload: []byte(payload), IdempotencyKey: fmt.Sprintf("%s-%d", tag, start+i)}
			}
			_, err := s.EnqueueJobs(ctx, store.EnqueueBatchParams{Tenant: testTenant, Semaphore: "fin", Jobs: items})
			require.NoError(t, err)
		}
		for {
			d, err := s.DispatchJobs(ctx, store.DispatchParams{Tenant: testTenant, Semaphore: "fin", Max: 1000})
			require.NoError(t, err)
			if len(d) == 0 {
				break
			}
		}
		d, _ := rec.take() // by the enqueues and the dispatches
		ids = jobIDsOf(d)
		require.Len(t, ids, n)
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < len(ids); i += 8 {
					a := store.ActRelease
					if i%2 == 1 {
						a = store.ActFail
					}
					_, err := s.TransitionJob(ctx, store.TransitionParams{Tenant: testTenant, JobID: ids[i], Action: a, Quiet: true})
					assert.NoError(t, err)
				}
			})
		}
		wg.Wait()
	}
	run("warm", 300) // the hashes and sets past their compact encodings
	const n = 10_000
	before := keyMemory()
	run("m", n)
	after := keyMemory()
	perJob := float64(after-before)/n - 100
	t.Logf("Redis memory per terminal job beyond a 100-byte payload (with a 7-byte idempotency key): %.0f bytes (MEMORY USAGE SAMPLES 0)", perJob)
	require.LessOrEqual(t, perJob, 300.0)
	fin, err := c.ZCard(ctx, keys[kJFin]).Result()
	require.NoError(t, err)
	fail, err := c.ZCard(ctx, keys[kJFail]).Result()
	require.NoError(t, err)
	require.Equal(t, []int64{(n + 300) / 2, (n + 300) / 2}, []int64{fin, fail}, "done jobs in jfin, error jobs in jfail")

	// Retention lowered to 0: every job is gone at once for readers, and
	// the calls that follow delete them.
	cfg.Retention = store.Retention{}
	putJobs(t, s, "fin", cfg)
	j, err := s.GetJob(ctx, testTenant, store.NewJobID("fin"))
	require.ErrorIs(t, err, store.ErrJobNotFound, "%+v", j)
	empty := func() bool {
		n, err := c.Exists(ctx, keys[kJobs], keys[kJFin], keys[kJFail], keys[kJIdem]).Result()
		require.NoError(t, err)
		return n == 0
	}
	// With nothing else happening, the sweep comes back at once while
	// due jobs are left (the sweep index), FORGET_BATCH per class each time.
	for sweeps := 0; !empty(); sweeps++ {
		require.Less(t, sweeps, (n+300)/forgetBatch, "the sweep drains the backlog")
		_, err := s.Sweep(ctx)
		require.NoError(t, err)
	}

	// Jobs ending under a retention of 0 leave nothing.
	run("z", 2000)
	require.True(t, empty(), "jobs deleted as they ended")
	st, err := s.State(ctx, testTenant, "fin")
	require.NoError(t, err)
	require.Zero(t, st.InUse)
}
