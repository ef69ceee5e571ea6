package tests

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

// TestTwoInstances_EnqueueBatchIdempotent: batches sent at once through two
// instances on one Redis, their idempotency keys overlapping, create each
// key's job exactly once, and every batch answers every key with that job.
func TestTwoInstances_EnqueueBatchIdempotent(t *testing.T) {
	t.Parallel()
	a, b := cluster(t)
	putSemaphore(t, a, "batch", 1)
	_, err := a.admin.Suspend(t.Context(), "batch")
	require.NoError(t, err)

	const senders, size, step = 8, 50, 25 // sender g sends keys g*25 .. g*25+49
	ids := make([][]string, senders)
	var wg sync.WaitGroup
	for g := range senders {
		c := a.admin
		if g%2 == 1 {
			c = b.admin
		}
		wg.Go(func() {
			jobs := make([]sdk.BatchJob, size)
			for i := range jobs {
				k := g*step + i
				jobs[i] = sdk.BatchJob{Payload: k, EnqueueOptions: sdk.EnqueueOptions{IdempotencyKey: fmt.Sprintf("k%d", k)}}
			}
			got, err := c.EnqueueBatch(t.Context(), "batch", jobs)
			if err != nil {
				t.Errorf("sender %d: %v", g, err)
				return
			}
			for _, j := range got {
				ids[g] = append(ids[g], j.ID)
			}
		})
	}
	wg.Wait()
	byKey := map[int]string{}
	for g, list := range ids {
		require.Len(t, list, size)
		for i, id := range list {
			k := g*step + i
			if prev, ok := byKey[k]; ok {
				require.Equal(t, prev, id, "key k%d answered with two jobs", k)
			}
			byKey[k] = id
		}
	}
	var all []sdk.Job
	cursor := ""
	for range 10 {
		page, err := b.admin.ListJobs(t.Context(), "batch", sdk.ListJobsOptions{Cursor: cursor, Limit: 1000})
		require.NoError(t, err)
		all = append(all, page.Jobs...)
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	want := (senders-1)*step + size
	require.Len(t, all, want, "one job per distinct key")
	for _, j := range all {
		var k int
		require.NoError(t, json.Unmarshal(j.Payload, &k))
		require.Equal(t, byKey[k], j.ID, "the job of key k%d", k)
	}
}
