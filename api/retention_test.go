package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Retention (README, "Semaphore configuration") and purges by channel: the
// config, its validation and JSON shape; terminal jobs gone once their
// retention passed (the memory store's fake clock); the channel filter of
// DELETE /v1/semaphores/{name}/jobs.

func TestRetention_Config(t *testing.T) {
	t.Parallel()
	e := setup(t)

	sem := e.put("r", map[string]any{"maxValue": 1})
	require.Equal(t, RetentionJSON{Done: Duration(24 * time.Hour), Failed: Duration(7 * 24 * time.Hour)}, sem.Retention, "the defaults")
	require.Equal(t, map[string]any{"done": "24h0m0s", "failed": "168h0m0s"}, e.rawSemaphore("r")["retention"])

	for _, c := range []struct {
		in   string
		want RetentionJSON
	}{
		{`{"done": "0s", "failed": "30d"}`, RetentionJSON{0, Duration(30 * 24 * time.Hour)}},
		{`{"failed": "1h30m"}`, RetentionJSON{Duration(24 * time.Hour), Duration(90 * time.Minute)}},
		{`{"done": "2d", "failed": null}`, RetentionJSON{Duration(48 * time.Hour), Duration(7 * 24 * time.Hour)}},
		{`null`, RetentionJSON{Duration(24 * time.Hour), Duration(7 * 24 * time.Hour)}},
	} {
		var out SemaphoreResponse
		e.expect(http.StatusOK, "", http.MethodPut, "/v1/semaphores/r", e.admin,
			rawBody(`{"maxValue": 1, "retention": `+c.in+`}`)).into(&out)
		require.Equal(t, c.want, out.Semaphore.Retention, c.in)
		require.Equal(t, c.want, e.get("r").Retention, c.in)
	}

	// Bad retentions: 400 invalid_config naming the field, nothing changes.
	e.put("r", map[string]any{"maxValue": 1, "retention": map[string]any{"done": "1h"}})
	for _, c := range []struct{ in, field, message string }{
		{`"24h"`, "retention", `retention must be an object {"done": "24h", "failed": "7d"} or null, got a string`},
		{`{"done": "1h", "dead": "1h"}`, "retention", `retention has an unknown field "dead": its fields are done and failed`},
		{`{"done": 3600}`, "retention.done", `retention.done must be a duration string such as "24h", got a number`},
		{`{"done": "forever"}`, "retention.done", `retention.done must be a duration such as "24h" or "7d", got "forever"`},
		{`{"done": "-1s"}`, "retention.done", `retention.done must be whole milliseconds between 0s and 720h0m0s (30 days), got -1s`},
		{`{"failed": "31d"}`, "retention.failed", `retention.failed must be whole milliseconds between 0s and 720h0m0s (30 days), got 744h0m0s`},
		{`{"failed": "1us"}`, "retention.failed", `retention.failed must be whole milliseconds between 0s and 720h0m0s (30 days), got 1µs`},
	} {
		t.Run(c.in, func(t *testing.T) {
			e := e.with(t)
			e.unchanged("r", func() {
				r := e.expect(http.StatusBadRequest, CodeInvalidConfig, http.MethodPut, "/v1/semaphores/r", e.admin,
					rawBody(`{"maxValue": 1, "retention": `+c.in+`}`))
				require.Equal(t, c.message, r.message())
				require.True(t, strings.HasPrefix(r.message(), c.field+" "), "the message names %s: %s", c.field, r.message())
			})
		})
	}
	require.Equal(t, Duration(time.Hour), e.get("r").Retention.Done)
	e.expect(http.StatusBadRequest, CodeInvalidConfig, http.MethodPut, "/v1/semaphores/fresh", e.admin,
		rawBody(`{"maxValue": 1, "retention": {"done": "-1h"}}`))
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, "/v1/semaphores/fresh", e.admin, nil)
}

// TestRetention_Jobs: a cancelled job stays readable for retention.done,
// then is 404, unlisted, and its idempotency key free; with "0s" the
// cancel answers the job and it is gone at once.
func TestRetention_Jobs(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("r", map[string]any{"maxValue": 1, "retention": map[string]any{"done": "1h"}})
	e.suspend("r")
	j := e.enqueue("r", map[string]any{"payload": 1, "idempotencyKey": "k"})
	require.Equal(t, "cancelled", e.jobAction(j.ID, "cancel").Status)
	e.clock.Add(time.Hour - time.Millisecond)
	require.Equal(t, "cancelled", e.job(j.ID).Status)
	e.clock.Add(time.Millisecond)
	e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+j.ID, e.worker, nil)
	require.Empty(t, e.allJobs("r"))
	again := e.enqueue("r", map[string]any{"payload": 1, "idempotencyKey": "k"})
	require.NotEqual(t, j.ID, again.ID, "the key of a deleted job is free again")

	e.put("r", map[string]any{"maxValue": 1, "retention": map[string]any{"done": "0s"}})
	require.Equal(t, []string{again.ID}, ids(e.allJobs("r")), "a scheduled job is not terminal: kept")
	j = e.enqueue("r", map[string]any{"payload": 2})
	got := e.jobAction(j.ID, "cancel")
	require.Equal(t, j.ID, got.ID)
	require.Equal(t, "cancelled", got.Status, "the action answers the job it deleted")
	e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+j.ID, e.worker, nil)
}

func TestJobs_PurgeChannel(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("pc", map[string]any{"maxValue": 1})
	e.suspend("pc")
	a := e.enqueue("pc", map[string]any{"payload": 1, "channel": "a"})
	e.enqueue("pc", map[string]any{"payload": 2, "channel": "a"})
	b := e.enqueue("pc", map[string]any{"payload": 3, "channel": "b"})

	e.unchangedJobs("pc", func() {
		for _, ch := range []string{"-a", "a%2Fb", "%20a", strings.Repeat("x", 129)} {
			r := e.expect(http.StatusBadRequest, CodeInvalidRequest, http.MethodDelete, jobsPath("pc")+"?status=scheduled&channel="+ch, e.worker, nil)
			require.True(t, strings.HasPrefix(r.message(), "channel "), "the message names channel: %s", r.message())
		}
	})
	var out PurgeResponse
	e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("pc")+"?status=scheduled&channel=c", e.worker, nil).into(&out)
	require.Zero(t, out.Purged, "a channel without jobs")
	e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("pc")+"?status=scheduled&channel=a", e.worker, nil).into(&out)
	require.Equal(t, 2, out.Purged)
	e.expect(http.StatusNotFound, CodeJobNotFound, http.MethodGet, "/v1/jobs/"+a.ID, e.worker, nil)
	require.Equal(t, []string{b.ID}, ids(e.allJobs("pc")))
	st := e.get("pc").State
	require.EqualValues(t, 1, st.Queued)
	require.EqualValues(t, 1, st.Channels["b"].Queued)
	e.expect(http.StatusOK, "", http.MethodDelete, jobsPath("pc")+"?status=scheduled&channel=", e.worker, nil).into(&out)
	require.Equal(t, 1, out.Purged, "an empty channel: every channel")
}
