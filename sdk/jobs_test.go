package sdk_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

func TestJobStatus_Terminal(t *testing.T) {
	for _, s := range []sdk.JobStatus{sdk.JobDone, sdk.JobError, sdk.JobTimeout, sdk.JobCancelled} {
		require.True(t, s.Terminal(), s)
	}
	require.False(t, sdk.JobScheduled.Terminal())
	require.False(t, sdk.JobInflight.Terminal())
}

func TestClient_Jobs(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "jobs", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	_, err = c.Suspend(ctx, "jobs") // jobs stay scheduled
	require.NoError(t, err)

	type invoice struct {
		N int `json:"n"`
	}
	a, err := c.Enqueue(ctx, "jobs", invoice{N: 1}, sdk.EnqueueOptions{IdempotencyKey: "inv-1"})
	require.NoError(t, err)
	require.Equal(t, "jobs", a.Semaphore)
	require.Equal(t, "default", a.Channel)
	require.JSONEq(t, `{"n":1}`, string(a.Payload))
	require.Equal(t, sdk.JobScheduled, a.Status)
	require.Zero(t, a.Attempts)
	require.Nil(t, a.Lease)
	require.Empty(t, a.Route)
	require.Empty(t, a.Error)
	require.Nil(t, a.Parent)
	require.Nil(t, a.Child)
	require.False(t, a.CreatedAt.IsZero())
	require.True(t, a.FinishedAt.IsZero())

	again, err := c.Enqueue(ctx, "jobs", invoice{N: 99}, sdk.EnqueueOptions{IdempotencyKey: "inv-1"})
	require.NoError(t, err)
	require.Equal(t, a.ID, again.ID, "the same idempotency key returns the same job")

	b, err := c.Enqueue(ctx, "jobs", json.RawMessage(`[1, 2]`), sdk.EnqueueOptions{Channel: "eu"})
	require.NoError(t, err)
	require.Equal(t, "eu", b.Channel)
	require.JSONEq(t, `[1,2]`, string(b.Payload))
	n, err := c.Enqueue(ctx, "jobs", nil, sdk.EnqueueOptions{})
	require.NoError(t, err)
	require.JSONEq(t, `null`, string(n.Payload))
	_, err = c.Enqueue(ctx, "jobs", json.RawMessage(`{`), sdk.EnqueueOptions{})
	require.Error(t, err, "invalid JSON is refused before sending")

	got, err := c.GetJob(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, a, got)

	// Listing, paging and filters.
	page, err := c.ListJobs(ctx, "jobs", sdk.ListJobsOptions{Limit: 2})
	require.NoError(t, err)
	require.Equal(t, []string{a.ID, b.ID}, jobIDs(page.Jobs))
	require.NotEmpty(t, page.NextCursor)
	page, err = c.ListJobs(ctx, "jobs", sdk.ListJobsOptions{Limit: 2, Cursor: page.NextCursor})
	require.NoError(t, err)
	require.Equal(t, []string{n.ID}, jobIDs(page.Jobs))
	require.Empty(t, page.NextCursor)
	page, err = c.ListJobs(ctx, "jobs", sdk.ListJobsOptions{Channel: "eu", Status: sdk.JobScheduled})
	require.NoError(t, err)
	require.Equal(t, []string{b.ID}, jobIDs(page.Jobs))
	_, err = c.ListJobs(ctx, "jobs", sdk.ListJobsOptions{Status: "bogus"})
	require.ErrorIs(t, err, sdk.ErrInvalidRequest)

	// Transitions.
	_, err = c.ReleaseJob(ctx, a.ID)
	require.True(t, sdk.IsInvalidState(err), "a scheduled job cannot be released: %v", err)
	cancelled, err := c.CancelJob(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, sdk.JobCancelled, cancelled.Status)
	require.False(t, cancelled.FinishedAt.IsZero())
	_, err = c.CancelJob(ctx, a.ID)
	require.True(t, sdk.IsInvalidState(err))
	requeued, err := c.RequeueJob(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, sdk.JobScheduled, requeued.Status)
	_, err = c.RequeueJob(ctx, a.ID)
	require.True(t, sdk.IsInvalidState(err))

	// Purge: of one channel, then of all.
	_, err = c.PurgeJobs(ctx, "jobs", sdk.JobInflight, sdk.PurgeJobsOptions{})
	require.True(t, sdk.IsInvalidState(err), "inflight jobs cannot be purged: %v", err)
	_, err = c.PurgeJobs(ctx, "jobs", sdk.JobScheduled, sdk.PurgeJobsOptions{Channel: "-eu"})
	require.ErrorIs(t, err, sdk.ErrInvalidRequest, "a bad channel")
	purged, err := c.PurgeJobs(ctx, "jobs", sdk.JobScheduled, sdk.PurgeJobsOptions{Channel: "eu"})
	require.NoError(t, err)
	require.Equal(t, 1, purged)
	_, err = c.GetJob(ctx, b.ID)
	require.True(t, sdk.IsJobNotFound(err))
	purged, err = c.PurgeJobs(ctx, "jobs", sdk.JobScheduled, sdk.PurgeJobsOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, purged)
	_, err = c.GetJob(ctx, a.ID)
	require.True(t, sdk.IsJobNotFound(err))
	require.True(t, sdk.IsNotFound(err))

	// Errors.
	_, err = c.Enqueue(ctx, "missing", 1, sdk.EnqueueOptions{})
	require.ErrorIs(t, err, sdk.ErrSemaphoreNotFound)
	_, err = c.Enqueue(ctx, "jobs", strings.Repeat("x", 300<<10), sdk.EnqueueOptions{})
	require.ErrorIs(t, err, sdk.ErrPayloadTooLarge)
	_, err = c.ReleaseJob(ctx, "no-such-job")
	require.True(t, sdk.IsJobNotFound(err))
}

func TestClient_JobsQueueFull(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, serverOptions{maxQueued: 1})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	ctx := t.Context()
	_, err = c.PutSemaphore(ctx, "q", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	_, err = c.Suspend(ctx, "q")
	require.NoError(t, err)
	_, err = c.Enqueue(ctx, "q", 1, sdk.EnqueueOptions{})
	require.NoError(t, err)
	_, err = c.Enqueue(ctx, "q", 2, sdk.EnqueueOptions{})
	require.True(t, sdk.IsQueueFull(err), "%v", err)
	require.Equal(t, http.StatusTooManyRequests, sdk.StatusCode(err))
}

// TestClient_JobsWebhook: a job delivered to a webhook receiver that
// releases it when its work is done.
func TestClient_JobsWebhook(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, serverOptions{webhooks: true})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	ctx := t.Context()

	ids := make(chan string, 10)
	hook := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ID string `json:"id"`
		}
		raw, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(raw, &body)
		ids <- body.ID
		w.WriteHeader(http.StatusOK) // accepted: the job stays inflight until released
	})
	routes := fmt.Sprintf(`[{"type":"https","url":%q,"attempts":1}]`, hook)
	_, err = c.PutSemaphore(ctx, "hooked", sdk.SemaphoreConfig{MaxValue: 1, Routes: json.RawMessage(routes)})
	require.NoError(t, err)

	j, err := c.Enqueue(ctx, "hooked", map[string]int{"n": 1}, sdk.EnqueueOptions{})
	require.NoError(t, err)
	select {
	case id := <-ids:
		require.Equal(t, j.ID, id)
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10s")
	}
	got, err := c.GetJob(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, sdk.JobInflight, got.Status)
	require.NotNil(t, got.Lease)
	require.Equal(t, 1, got.Attempts)

	done, err := c.ReleaseJob(ctx, j.ID)
	require.NoError(t, err)
	require.Equal(t, sdk.JobDone, done.Status)
	require.Nil(t, done.Lease)
	s, err := c.GetSemaphore(ctx, "hooked")
	require.NoError(t, err)
	require.EqualValues(t, 0, s.State.InUse)
}

func jobIDs(jobs []sdk.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

func TestClient_EnqueueBatch(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "batch", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	_, err = c.Suspend(ctx, "batch")
	require.NoError(t, err)
	first, err := c.Enqueue(ctx, "batch", 0, sdk.EnqueueOptions{IdempotencyKey: "k0"})
	require.NoError(t, err)

	jobs, err := c.EnqueueBatch(ctx, "batch", []sdk.BatchJob{
		{Payload: map[string]int{"n": 1}},
		{Payload: json.RawMessage(`"two"`), EnqueueOptions: sdk.EnqueueOptions{Channel: "eu", IdempotencyKey: "k2"}},
		{Payload: 3, EnqueueOptions: sdk.EnqueueOptions{IdempotencyKey: "k0"}},
		{Payload: "dup", EnqueueOptions: sdk.EnqueueOptions{IdempotencyKey: "k2"}},
	})
	require.NoError(t, err)
	require.Len(t, jobs, 4)
	require.JSONEq(t, `{"n":1}`, string(jobs[0].Payload))
	require.Equal(t, "eu", jobs[1].Channel)
	require.Equal(t, first.ID, jobs[2].ID, "k0 names the existing job")
	require.Equal(t, jobs[1].ID, jobs[3].ID, "k2 names the batch's second job")
	page, err := c.ListJobs(ctx, "batch", sdk.ListJobsOptions{})
	require.NoError(t, err)
	require.Len(t, page.Jobs, 3)

	_, err = c.EnqueueBatch(ctx, "batch", []sdk.BatchJob{{Payload: 1}, {Payload: json.RawMessage(`{bad`)}})
	require.Error(t, err, "bad JSON is refused before sending")
	_, err = c.EnqueueBatch(ctx, "batch", []sdk.BatchJob{{Payload: 1}, {Payload: 2, EnqueueOptions: sdk.EnqueueOptions{Channel: "not a name"}}})
	var ae *sdk.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, 400, ae.StatusCode)
	require.Equal(t, 1, ae.Index, "the server names the refused job")
	_, err = c.EnqueueBatch(ctx, "batch", nil)
	require.ErrorAs(t, err, &ae)
	require.Equal(t, -1, ae.Index)
	page, err = c.ListJobs(ctx, "batch", sdk.ListJobsOptions{})
	require.NoError(t, err)
	require.Len(t, page.Jobs, 3, "refused batches enqueue nothing")
}
