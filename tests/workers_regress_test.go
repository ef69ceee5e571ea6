package tests

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

// A worker that closes its session normally while a job pushed to it is
// not yet acked: the push never reached the worker, so the job returns to
// its queue with its attempt not counted, and onSessionLost (release,
// which would count it and, with maxAttempts 1, end it in timeout) does not
// apply to it.
func TestWorkers_CloseWithUnackedPushCostsNoAttempt(t *testing.T) {
	for _, name := range []string{"memory", "redis"} {
		t.Run(name, func(t *testing.T) {
			var inst *instance
			if name == "memory" {
				inst = start(t, "R", []string{"--admin-key", adminKey})
			} else {
				inst, _ = cluster(t)
			}
			ctx := t.Context()
			_, err := inst.admin.PutSemaphore(ctx, "r", sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: 10 * time.Second, MaxAttempts: 1, OnSessionLost: "release"})
			require.NoError(t, err)
			c, _, err := websocket.Dial(ctx, "ws"+inst.base[len("http"):]+"/v1/ws", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + adminKey}}})
			require.NoError(t, err)
			read := func() map[string]any {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				_, b, err := c.Read(rctx)
				require.NoError(t, err)
				var m map[string]any
				require.NoError(t, json.Unmarshal(b, &m))
				return m
			}
			require.Equal(t, "welcome", read()["type"])
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"1","semaphore":"r","prefetch":1}`)))
			require.Equal(t, "subscribed", read()["type"])
			j, err := inst.admin.Enqueue(ctx, "r", 1, sdk.EnqueueOptions{})
			require.NoError(t, err)
			f := read()
			require.Equal(t, "job", f["type"]) // pushed; not acked
			require.NoError(t, c.Close(websocket.StatusNormalClosure, "bye"))
			var got sdk.Job
			require.Eventually(t, func() bool {
				got, err = inst.admin.GetJob(ctx, j.ID)
				return err == nil && got.Status != sdk.JobInflight
			}, 5*time.Second, 10*time.Millisecond, "the job stays inflight after its worker left")
			require.Equal(t, sdk.JobScheduled, got.Status, "the unacked push must return the job")
			require.Zero(t, got.Attempts)
		})
	}
}

// A worker whose delivery of a job expired releases the job by id over its
// websocket after the job went to another worker: the release is refused
// (invalid_state) and the other worker's delivery goes on.
func TestWorkers_StaleReleaseCannotEndAnotherDelivery(t *testing.T) {
	inst := start(t, "R", []string{"--admin-key", adminKey})
	ctx := t.Context()
	_, err := inst.admin.PutSemaphore(ctx, "r", sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Second, MaxAttempts: 3, OnSessionLost: "release"})
	require.NoError(t, err)
	c, _, err := websocket.Dial(ctx, "ws"+inst.base[len("http"):]+"/v1/ws", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + adminKey}}})
	require.NoError(t, err)
	defer c.CloseNow()
	read := func(typ string) map[string]any {
		for {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, b, err := c.Read(rctx)
			cancel()
			require.NoError(t, err)
			var m map[string]any
			require.NoError(t, json.Unmarshal(b, &m))
			if m["type"] == typ {
				return m
			}
		}
	}
	read("welcome")
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"1","semaphore":"r","prefetch":1}`)))
	read("subscribed")
	j, err := inst.admin.Enqueue(ctx, "r", 1, sdk.EnqueueOptions{})
	require.NoError(t, err)
	read("job")
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"type":"ack","id":"2","job":"`+j.ID+`"}`)))
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"type":"unsubscribe","id":"3","semaphore":"r"}`)))
	// X keeps its connection (pings) but never extends: its lease expires.
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if c.Write(ctx, websocket.MessageText, []byte(`{"type":"ping","id":"p"}`)) != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	y, err := sdk.NewWorker(inst.base, adminKey)
	require.NoError(t, err)
	defer y.Close()
	started := make(chan sdk.Job, 1)
	finish := make(chan struct{})
	require.NoError(t, y.Subscribe(ctx, "r", "", 1, func(ctx context.Context, job sdk.Job) error {
		started <- job
		<-finish
		return nil
	}))
	var yj sdk.Job
	select {
	case yj = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the job did not reach Y")
	}
	t.Logf("Y got %s attempt %d lease %s", yj.ID, yj.Attempts, yj.Lease.ID)
	// X, whose delivery expired, releases the job by id.
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"type":"release","id":"4","job":"`+j.ID+`"}`)))
	rep := read("error")
	require.Equal(t, "4", rep["id"])
	require.Equal(t, "invalid_state", rep["code"], "%v", rep)
	got, err := inst.admin.GetJob(ctx, j.ID)
	require.NoError(t, err)
	s, err := inst.admin.GetSemaphore(ctx, "r")
	require.NoError(t, err)
	close(finish)
	require.Equal(t, sdk.JobInflight, got.Status, "a stale release must not end Y's delivery")
	require.EqualValues(t, 1, s.State.InUse, "Y still holds the permit")
	require.Equal(t, yj.Lease.ID, got.Lease.ID)
}
