package storetest

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Batch enqueue (EnqueueJobs): order, dispatch, idempotency keys within
// the batch and against existing jobs, all or nothing at the queue limit.

func (f *fixture) enqueueBatch(name string, maxQueued int64, items ...store.EnqueueItem) ([]store.EnqueueResult, error) {
	return f.st.EnqueueJobs(f.ctx, store.EnqueueBatchParams{Tenant: f.tenant, Semaphore: name, Jobs: items, MaxQueued: maxQueued})
}

func item(payload, key string) store.EnqueueItem {
	return store.EnqueueItem{Payload: []byte(payload), IdempotencyKey: key}
}

func testEnqueueBatchOrder(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(2))
	rec := newRecorder(f, 0)
	items := make([]store.EnqueueItem, 5)
	for i := range items {
		items[i] = item(fmt.Sprintf(`{"n":%d}`, i), "")
	}
	items[4].Channel = "other"
	res, err := f.enqueueBatch("s", 0, items...)
	require.NoError(t, err)
	require.Len(t, res, 5)
	for i, r := range res {
		require.True(t, r.Created)
		require.Equal(t, f.tenant, r.Job.Tenant)
		require.Equal(t, "s", r.Job.Semaphore)
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(r.Job.Payload))
	}
	require.Equal(t, "other", res[4].Job.Channel)
	require.Equal(t, store.DefaultChannel, res[0].Job.Channel)
	// the two permits went to the head of each channel (round-robin), in
	// the one operation
	require.Equal(t, store.JobInflight, res[0].Job.Status, "returned as at the end of the operation")
	require.Equal(t, store.JobInflight, res[4].Job.Status)
	for _, r := range res[1:4] {
		require.Equal(t, store.JobScheduled, r.Job.Status)
	}
	rec.requireDispatched(t, res[0].Job.ID, res[4].Job.ID)
	f.requireJobs("s", 3, 2, 2)

	jobs, _, err := f.st.ListJobs(f.ctx, store.ListJobsParams{Tenant: f.tenant, Semaphore: "s"})
	require.NoError(t, err)
	require.Len(t, jobs, 5)
	for i, j := range jobs {
		require.Equal(t, res[i].Job.ID, j.ID, "listed in batch order")
	}
	// FIFO within the default channel: the second job is next
	f.act(res[0].Job.ID, store.ActRelease)
	require.Equal(t, store.JobInflight, f.getJob(res[1].Job.ID).Status)
	require.Equal(t, store.JobScheduled, f.getJob(res[2].Job.ID).Status)
}

func testEnqueueBatchIdempotency(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	f.suspend("s", true)
	old, _, err := f.st.EnqueueJob(f.ctx, store.EnqueueParams{Tenant: f.tenant, Semaphore: "s", Payload: []byte(`"old"`), IdempotencyKey: "k1"})
	require.NoError(t, err)
	res, err := f.enqueueBatch("s", 0, item(`"a"`, "k1"), item(`"b"`, "k2"), item(`"c"`, "k2"), item(`"d"`, ""), item(`"e"`, ""))
	require.NoError(t, err)
	require.Len(t, res, 5)
	require.False(t, res[0].Created, "k1 names an existing job")
	require.Equal(t, old.ID, res[0].Job.ID)
	require.JSONEq(t, `"old"`, string(res[0].Job.Payload), "the existing job, unchanged")
	require.True(t, res[1].Created)
	require.False(t, res[2].Created, "k2 names the batch's earlier job")
	require.Equal(t, res[1].Job.ID, res[2].Job.ID)
	require.JSONEq(t, `"b"`, string(res[2].Job.Payload))
	require.True(t, res[3].Created)
	require.True(t, res[4].Created)
	require.NotEqual(t, res[3].Job.ID, res[4].Job.ID)
	f.requireJobs("s", 4, 0, 0)

	// the whole batch replayed: nothing new, the same jobs
	again, err := f.enqueueBatch("s", 0, item(`"a"`, "k1"), item(`"b"`, "k2"))
	require.NoError(t, err)
	require.Equal(t, old.ID, again[0].Job.ID)
	require.Equal(t, res[1].Job.ID, again[1].Job.ID)
	require.False(t, again[0].Created || again[1].Created)
	f.requireJobs("s", 4, 0, 0)
}

func testEnqueueBatchQueueFull(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	f.suspend("s", true)
	_, err := f.enqueueBatch("s", 5, item(`1`, "a"), item(`2`, ""), item(`3`, ""))
	require.NoError(t, err)
	f.requireJobs("s", 3, 0, 0)

	// 3 more do not fit under 5: none is enqueued, though the first two would
	_, err = f.enqueueBatch("s", 5, item(`4`, "x"), item(`5`, ""), item(`6`, ""))
	require.ErrorIs(t, err, store.ErrQueueFull)
	f.requireJobs("s", 3, 0, 0)
	res, err := f.enqueueBatch("s", 0, item(`4`, "x"))
	require.NoError(t, err)
	require.True(t, res[0].Created, "key x was not used by the refused batch")
	f.requireJobs("s", 4, 0, 0)

	// a replayed key counts for nothing: 1 new job fits, with 2 replays
	res, err = f.enqueueBatch("s", 5, item(`1`, "a"), item(`7`, "y"), item(`4`, "x"))
	require.NoError(t, err)
	require.Equal(t, []bool{false, true, false}, []bool{res[0].Created, res[1].Created, res[2].Created})
	f.requireJobs("s", 5, 0, 0)
	res, err = f.enqueueBatch("s", 5, item(`1`, "a"))
	require.NoError(t, err, "a batch of replays is never queue-full")
	require.False(t, res[0].Created)
	_, err = f.enqueueBatch("s", 5, item(`8`, ""))
	require.ErrorIs(t, err, store.ErrQueueFull)
	f.requireJobs("s", 5, 0, 0)
}

func testEnqueueBatchUnknownSemaphore(t *testing.T, f *fixture) {
	_, err := f.enqueueBatch("nope", 0, item(`1`, ""))
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
}

// testEnqueueBatchLarge: a batch of 1,000 jobs (the API's limit) in one
// operation, then all purged in one.
func testEnqueueBatchLarge(t *testing.T, f *fixture) {
	f.putConfig("s", jobConfig(1))
	f.suspend("s", true)
	items := make([]store.EnqueueItem, 1000)
	for i := range items {
		items[i] = item(fmt.Sprintf(`{"n":%d}`, i), fmt.Sprintf("k%d", i))
	}
	res, err := f.enqueueBatch("s", 0, items...)
	require.NoError(t, err)
	require.Len(t, res, 1000)
	require.JSONEq(t, `{"n":999}`, string(res[999].Job.Payload))
	require.JSONEq(t, `{"n":999}`, string(f.getJob(res[999].Job.ID).Payload))
	f.requireJobs("s", 1000, 0, 0)
	n, err := f.st.PurgeJobs(f.ctx, store.PurgeJobsParams{Tenant: f.tenant, Semaphore: "s", Status: store.JobScheduled})
	require.NoError(t, err)
	require.Equal(t, 1000, n)
	f.requireJobs("s", 0, 0, 0)
	// the keys went with their jobs
	res, err = f.enqueueBatch("s", 0, items[0])
	require.NoError(t, err)
	require.True(t, res[0].Created)
}
