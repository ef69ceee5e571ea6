package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/semaphore"
)

// enqueueBatch enqueues jobs as a batch as the worker of tenant acme.
func (e *env) enqueueBatch(name string, jobs ...map[string]any) []JobJSON {
	e.t.Helper()
	var out EnqueueBatchResponse
	e.expect(http.StatusAccepted, "", http.MethodPost, jobsPath(name), e.worker, map[string]any{"jobs": jobs}).into(&out)
	require.Len(e.t, out.Jobs, len(jobs))
	return out.Jobs
}

func TestEnqueueBatch(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("b", map[string]any{"maxValue": 1, "routes": []any{failingRoute}})
	e.put("w", map[string]any{"maxValue": 1})
	for _, j := range e.enqueueBatch("w", map[string]any{"payload": 1}, map[string]any{"payload": 2}) {
		require.Equal(t, "scheduled", j.Status, "no worker subscribed: it waits")
	}
	jobs := e.enqueueBatch("b",
		map[string]any{"payload": map[string]any{"n": 0}},
		map[string]any{"payload": "one", "channel": "c1", "idempotencyKey": "k1"},
		map[string]any{"payload": nil},
	)
	inflight := 0
	for _, j := range jobs {
		if j.Status == "inflight" {
			inflight++
		}
	}
	require.Equal(t, 1, inflight, "one job took the permit in the same operation")
	require.JSONEq(t, `{"n":0}`, string(jobs[0].Payload))
	require.Equal(t, "c1", jobs[1].Channel)
	require.JSONEq(t, `null`, string(jobs[2].Payload))
	require.Equal(t, ids(jobs), ids(e.allJobs("b")), "enqueued in the batch's order")

	// a replayed key returns the existing job; its duplicate in the batch too
	again := e.enqueueBatch("b",
		map[string]any{"payload": "other", "idempotencyKey": "k1"},
		map[string]any{"payload": 1, "idempotencyKey": "k2"},
		map[string]any{"payload": 2, "idempotencyKey": "k2"},
	)
	require.Equal(t, jobs[1].ID, again[0].ID)
	require.JSONEq(t, `"one"`, string(again[0].Payload))
	require.Equal(t, again[1].ID, again[2].ID)
	require.JSONEq(t, `1`, string(again[2].Payload))
	require.Len(t, e.allJobs("b"), 4)

	// a batch of 1,000 is taken
	many := make([]map[string]any, semaphore.MaxEnqueueBatch)
	for i := range many {
		many[i] = map[string]any{"payload": i}
	}
	got := e.enqueueBatch("b", many...)
	require.JSONEq(t, `999`, string(got[999].Payload))
}

func TestEnqueueBatch_BadInput(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("b", map[string]any{"maxValue": 1})
	e.suspend("b")
	e.enqueue("b", map[string]any{"payload": 0, "idempotencyKey": "kept"})
	good := map[string]any{"payload": 1}
	cases := []struct {
		name    string
		body    any
		status  int
		code    string
		index   int // -1: none
		message string
	}{
		{"empty batch", map[string]any{"jobs": []any{}}, 400, CodeInvalidRequest, -1, "jobs must hold 1 to 1000 jobs, got 0"},
		{"too many", map[string]any{"jobs": make([]map[string]any, 1001)}, 400, CodeInvalidRequest, -1, "got 1001"},
		{"missing payload", map[string]any{"jobs": []any{good, good, map[string]any{"channel": "x"}}}, 400, CodeInvalidRequest, 2, "jobs[2]: payload is required"},
		{"bad channel", map[string]any{"jobs": []any{map[string]any{"payload": 1, "channel": "no spaces"}, good}}, 400, CodeInvalidRequest, 0, "jobs[0]: channel"},
		{"long key", map[string]any{"jobs": []any{good, map[string]any{"payload": 1, "idempotencyKey": strings.Repeat("k", 300)}}}, 400, CodeInvalidRequest, 1, "jobs[1]: idempotencyKey"},
		{"huge number", map[string]any{"jobs": []any{good, good, good, map[string]any{"payload": json1e999{}}}}, 400, CodeInvalidJSON, 3, "jobs[3]: "},
		{"unknown field", map[string]any{"jobs": []any{good, map[string]any{"payload": 1, "weight": 2}}}, 400, CodeInvalidJSON, 1, `jobs[1]: unknown field "weight"`},
		{"key in capitals", map[string]any{"jobs": []any{map[string]any{"PAYLOAD": 1}}}, 400, CodeInvalidJSON, 0, `jobs[0]: unknown field "PAYLOAD"`},
		{"repeated key", json.RawMessage(`{"jobs":[{"payload":1},{"payload":1,"payload":2}]}`), 400, CodeInvalidJSON, 1, `jobs[1]: field "payload" appears twice`},
		{"job not an object", map[string]any{"jobs": []any{good, 5}}, 400, CodeInvalidJSON, 1, "jobs[1]: "},
		{"null job", map[string]any{"jobs": []any{good, nil}}, 400, CodeInvalidRequest, 1, "jobs[1]: payload is required"},
		{"both shapes", map[string]any{"payload": 1, "jobs": []any{good}}, 400, CodeInvalidRequest, -1, "not both"},
		{"jobs not a list", map[string]any{"jobs": map[string]any{"payload": 1}}, 400, CodeInvalidJSON, -1, "jobs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := e.with(t)
			e.unchangedJobs("b", func() {
				r := e.expect(c.status, c.code, http.MethodPost, jobsPath("b"), e.worker, c.body)
				var body ErrorBody
				r.into(&body)
				require.Contains(t, body.Error.Message, c.message)
				if c.index < 0 {
					require.Nil(t, body.Error.Index)
				} else {
					require.NotNil(t, body.Error.Index, "the index of the refused job")
					require.Equal(t, c.index, *body.Error.Index)
				}
			})
		})
	}
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, jobsPath("nope"), e.worker, map[string]any{"jobs": []any{good}})
}

// json1e999 marshals as the number 1e999, which no JSON decoder can hold.
type json1e999 struct{}

func (json1e999) MarshalJSON() ([]byte, error) { return []byte("1e999"), nil }

func TestEnqueueBatch_QueueFull(t *testing.T) {
	t.Parallel()
	e := setupService(t, func(c *semaphore.Config) { c.MaxQueued = 4 })
	e.put("q", map[string]any{"maxValue": 1})
	e.suspend("q")
	e.enqueueBatch("q", map[string]any{"payload": 1, "idempotencyKey": "a"}, map[string]any{"payload": 2})
	three := make([]map[string]any, 3)
	for i := range three {
		three[i] = map[string]any{"payload": fmt.Sprint(i)}
	}
	e.unchangedJobs("q", func() {
		// 2 + 3 > 4: the first of the three would fit, none is enqueued
		e.expect(http.StatusTooManyRequests, CodeQueueFull, http.MethodPost, jobsPath("q"), e.worker, map[string]any{"jobs": three})
		// replays are never refused
		e.enqueueBatch("q", map[string]any{"payload": 1, "idempotencyKey": "a"})
	})
	e.enqueueBatch("q", three[:2]...)
	require.Len(t, e.allJobs("q"), 4)
}
