package api

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/hub"
)

// A worker that releases each job right after its ack (without waiting
// for anything) finds every job done with the route it came by, on one
// node and across two nodes sharing a store.
func TestWS_ReleaseRightAfterAck(t *testing.T) {
	forStores(t, func(t *testing.T, redis bool) {
		e := setupWS(t, 2, wsOptions{redis: redis})
		e.put("work", map[string]any{"maxValue": 4})
		c := e.dial(0)
		c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 4})
		const n = 24
		ids := make([]string, 0, n)
		for i := range n {
			ids = append(ids, e.enqueue("work", i).ID)
		}
		released := 0
		for released < n {
			f := c.read()
			switch f.Type {
			case "job":
				c.send(map[string]any{"type": "ack", "job": f.Job.ID})
				c.send(map[string]any{"type": "release", "job": f.Job.ID, "id": f.Job.ID})
			case "released":
				require.Equal(t, "done", f.Job.Status)
				require.NotNil(t, f.Job.Route, "job %s released without its route", f.Job.ID)
				require.Equal(t, "websocket", *f.Job.Route)
				released++
			default:
				t.Fatalf("unexpected frame %+v", f)
			}
		}
		for _, id := range ids {
			j := e.job(id)
			require.Equal(t, "done", j.Status)
			require.NotNil(t, j.Route)
			require.Equal(t, "websocket", *j.Route)
		}
		require.EqualValues(t, 0, e.inUse("work"))
	})
}

// A client that floods requests but reads every reply is slowed down
// (the server stops reading), never closed.
func TestWS_FloodIsBackpressured(t *testing.T) {
	// The heartbeat outlasts the test's reading of 1000 frames on a busy
	// machine: the client writes all its pings first, then only reads.
	e := setupWS(t, 1, wsOptions{heartbeat: time.Minute})
	c := e.dial(0)
	const n = 1000 // far beyond the send queue (64)
	go func() {
		for i := range n {
			b := fmt.Appendf(nil, `{"type":"ping","id":"p%d"}`, i)
			if c.c.Write(t.Context(), websocket.MessageText, b) != nil {
				return
			}
		}
	}()
	for i := range n {
		f := c.readChecking(i < 10)
		require.Equal(t, "pong", f.Type)
		require.Equal(t, fmt.Sprintf("p%d", i), f.ID, "replies of inline frames keep their order")
	}
	c.request("pong", map[string]any{"type": "ping"})
}

// Sync leases over one session: many acquires and releases in flight at
// once, each bound to the session, and all of them released by its end.
func TestWS_ConcurrentLeases(t *testing.T) {
	forStores(t, func(t *testing.T, redis bool) {
		e := setupWS(t, 1, wsOptions{redis: redis})
		e.put("pool", map[string]any{"maxValue": 100})
		c := e.dial(0)
		const n = 50
		for i := range n {
			c.send(map[string]any{"type": "acquire", "semaphore": "pool", "id": fmt.Sprint(i), "ttl": "1m"})
		}
		leases := map[string]bool{}
		for range n {
			f := c.expect("acquired")
			leases[f.Lease.ID] = true
		}
		require.Len(t, leases, n)
		require.EqualValues(t, n, e.inUse("pool"))
		i := 0
		for id := range leases {
			if i%2 == 0 {
				c.send(map[string]any{"type": "release", "lease": id, "id": id})
			}
			i++
		}
		for range n / 2 {
			c.expect("released")
		}
		require.EqualValues(t, n/2, e.inUse("pool"))
		// A normal close gives the session up: its leases are released.
		require.NoError(t, c.c.Close(websocket.StatusNormalClosure, ""))
		e.eventually(func() bool { return e.inUse("pool") == 0 }, "the session's leases released at its end")
	})
}

// Revoking a key closes every session opened with it, on every node,
// within 1 s (SPEC §2.7), with code 4003 "key_revoked"; the session ends.
func TestWS_KeyRevokedClosesSessions(t *testing.T) {
	forStores(t, func(t *testing.T, redis bool) {
		e := setupWS(t, 2, wsOptions{redis: redis, heartbeat: time.Minute})
		e.put("pool", map[string]any{"maxValue": 5})
		a, b := e.dial(0), e.dial(1)
		b.request("acquired", map[string]any{"type": "acquire", "semaphore": "pool"})
		require.EqualValues(t, 1, e.inUse("pool"))

		var keys KeyListResponse
		e.http().expect(http.StatusOK, "", http.MethodGet, "/v1/keys", e.admin, nil).into(&keys)
		id := ""
		for _, k := range keys.Keys {
			if k.Name == "worker" {
				id = k.ID
			}
		}
		require.NotEmpty(t, id)
		e.http().expect(http.StatusOK, "", http.MethodDelete, "/v1/keys/"+id, e.admin, nil)
		// The heartbeat is a minute: the bus closes them, not the
		// periodic key check.
		for _, c := range []*wsClient{a, b} {
			require.Equal(t, websocket.StatusCode(hub.CloseKeyRevoked), c.closeStatus())
		}
		e.eventually(func() bool { return e.inUse("pool") == 0 }, "the revoked session ended and released its lease")
		_, status, err := e.dialRaw(0, "", http.Header{"Authorization": {"Bearer " + e.worker}})
		require.Error(t, err)
		require.Equal(t, http.StatusUnauthorized, status)
	})
}

// Jobs reach a websocket worker in their queue's order (FIFO per channel)
// also when they hold permits while the worker is at its prefetch: jobs
// dispatched later never overtake ones already waiting for room, on one
// node and across two.
func TestWS_FIFOAtPrefetch(t *testing.T) {
	forStores(t, func(t *testing.T, redis bool) {
		e := setupWS(t, 2, wsOptions{redis: redis})
		e.put("work", map[string]any{"maxValue": 3})
		c := e.dial(0)
		c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 1})
		const n = 12
		ids := make([]string, 0, n)
		for i := range n {
			ids = append(ids, e.enqueue("work", i).ID)
		}
		for i := range n {
			f := c.expect("job")
			require.Equal(t, ids[i], f.Job.ID, "job %d out of order", i)
			c.send(map[string]any{"type": "ack", "job": f.Job.ID})
			c.request("released", map[string]any{"type": "release", "job": f.Job.ID})
		}
	})
}

// A job a session holds that is cancelled (or released, or requeued)
// over HTTP frees the session's prefetch at once, not at the next check
// of held jobs a heartbeat later; a job taken again meanwhile is kept.
func TestWS_HTTPJobActionFreesPrefetch(t *testing.T) {
	for _, kind := range transports {
		t.Run(kind, func(t *testing.T) {
			e := setupWS(t, 1, wsOptions{heartbeat: time.Minute})
			e.put("work", map[string]any{"maxValue": 5})
			c := e.open(kind, 0, "")
			require.Equal(t, "subscribed", c.call(map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 1}).Type)
			first := e.enqueue("work", 1)
			require.Equal(t, first.ID, c.take().Job.ID)
			second := e.enqueue("work", 2)
			c.quiet(200 * time.Millisecond) // prefetch 1: held by the first
			e.http().expect(http.StatusOK, "", http.MethodPost, "/v1/jobs/"+first.ID+"/cancel", e.worker, nil)
			f, err := c.nextWithin(5 * time.Second) // well within the minute's heartbeat
			require.NoError(t, err)
			require.Equal(t, second.ID, f.Job.ID)
		})
	}
}
