package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestJobs_DelayAndRunAt: delay or runAt keep a job scheduled with runAt
// shown until then, on the single and the batch enqueue; bad values are a
// 400 naming the field, and enqueue nothing.
func TestJobs_DelayAndRunAt(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("d", map[string]any{"maxValue": 5, "routes": []any{failingRoute}, "maxAttempts": 1})
	// The store's clock (a fake one here) counts the wait: runAt is the
	// caller's time less this instance's clock, from the store's now.
	j := e.enqueue("d", map[string]any{"payload": 1, "delay": "1h"})
	require.Equal(t, "scheduled", j.Status, "free permits, but not its time")
	require.NotNil(t, j.RunAt)
	require.WithinDuration(t, e.clock.Now().Add(time.Hour), *j.RunAt, 5*time.Second)
	at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	j = e.enqueue("d", map[string]any{"payload": 1, "runAt": at.Format(time.RFC3339)})
	require.Equal(t, "scheduled", j.Status)
	require.WithinDuration(t, e.clock.Now().Add(2*time.Hour), *j.RunAt, 5*time.Second)
	got := e.job(j.ID)
	require.NotNil(t, got.RunAt, "GET shows runAt too")
	// A past runAt, or a delay of 0, is now: dispatched (and failed) at once.
	now := e.enqueue("d", map[string]any{"payload": 1, "runAt": time.Now().Add(-time.Hour).Format(time.RFC3339)})
	require.Nil(t, now.RunAt)
	require.NotEqual(t, "scheduled", now.Status)
	batch := e.enqueueBatch("d", map[string]any{"payload": 1, "delay": "30m"}, map[string]any{"payload": 2, "delay": "0s"})
	require.Equal(t, "scheduled", batch[0].Status)
	require.NotNil(t, batch[0].RunAt)
	require.Nil(t, batch[1].RunAt)
	require.EqualValues(t, 3, e.get("d").State.Queued, "delayed jobs count as queued")

	for _, c := range []struct {
		body  map[string]any
		code  string
		field string
	}{
		{map[string]any{"payload": 1, "delay": "-1s"}, CodeInvalidRequest, "delay"},
		{map[string]any{"payload": 1, "delay": "721h"}, CodeInvalidRequest, "delay"},
		{map[string]any{"payload": 1, "delay": "1s", "runAt": time.Now().Format(time.RFC3339)}, CodeInvalidRequest, "not both"},
		{map[string]any{"payload": 1, "runAt": time.Now().Add(31 * 24 * time.Hour).Format(time.RFC3339)}, CodeInvalidRequest, "runAt"},
		{map[string]any{"payload": 1, "delay": 5}, CodeInvalidJSON, "delay"},
		{map[string]any{"payload": 1, "runAt": "tomorrow"}, CodeInvalidJSON, "parsing time"},
		{map[string]any{"jobs": []any{map[string]any{"payload": 1}, map[string]any{"payload": 1, "delay": "-1s"}}}, CodeInvalidRequest, "jobs[1]"},
		{map[string]any{"delay": "1s", "jobs": []any{map[string]any{"payload": 1}}}, CodeInvalidRequest, "not both"},
	} {
		r := e.expect(http.StatusBadRequest, c.code, http.MethodPost, jobsPath("d"), e.worker, c.body)
		require.True(t, strings.Contains(string(r.Body), c.field), "%s names %s", r.Body, c.field)
	}
	require.EqualValues(t, 3, e.get("d").State.Queued, "the refused enqueues added nothing")
}

// TestSemaphores_Retry: the retry backoff is shown with its defaults, set
// and checked.
func TestSemaphores_Retry(t *testing.T) {
	t.Parallel()
	e := setup(t)
	s := e.put("r", map[string]any{"maxValue": 1})
	require.Equal(t, RetryJSON{Backoff: Duration(time.Second), MaxBackoff: Duration(5 * time.Minute)}, s.Retry)
	s = e.put("r", map[string]any{"maxValue": 1, "retry": map[string]any{"backoff": "250ms", "maxBackoff": "10s"}})
	require.Equal(t, RetryJSON{Backoff: Duration(250 * time.Millisecond), MaxBackoff: Duration(10 * time.Second)}, s.Retry)
	require.Equal(t, s.Retry, e.get("r").Retry)
	s = e.put("r", map[string]any{"maxValue": 1, "retry": map[string]any{"backoff": "0s", "maxBackoff": "0s"}})
	require.Zero(t, s.Retry.Backoff, "0s: retried at once")
	for _, c := range []struct {
		retry any
		field string
	}{
		{map[string]any{"backoff": "2h"}, "retry.backoff"},
		{map[string]any{"backoff": "-1s"}, "retry.backoff"},
		{map[string]any{"backoff": "10s", "maxBackoff": "5s"}, "retry.maxBackoff"},
		{map[string]any{"maxBackoff": "25h"}, "retry.maxBackoff"},
		{map[string]any{"backoff": 1}, "retry.backoff"},
		{map[string]any{"jitter": "full"}, "retry"},
		{"1s", "retry"},
	} {
		r := e.expect(http.StatusBadRequest, CodeInvalidConfig, http.MethodPut, "/v1/semaphores/r", e.admin, map[string]any{"maxValue": 1, "retry": c.retry})
		require.Contains(t, string(r.Body), c.field)
	}
}
