package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLeases_AcquireExtendRelease(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("db", map[string]any{"maxValue": 3, "leaseTimeout": "45s"})

	// Empty body: defaults (channel default, weight 1, ttl = leaseTimeout).
	l1 := e.acquire("db", nil)
	require.Equal(t, "db", l1.Semaphore)
	require.Equal(t, "default", l1.Channel)
	require.EqualValues(t, 1, l1.Weight)
	require.Equal(t, e.clock.Now(), l1.AcquiredAt)
	require.Equal(t, 45*time.Second, l1.ExpiresAt.Sub(l1.AcquiredAt))
	require.Positive(t, l1.FencingToken)

	l2 := e.acquire("db", map[string]any{"channel": "eu", "weight": 2, "ttl": "10s", "wait": "0s"})
	require.Equal(t, "eu", l2.Channel)
	require.EqualValues(t, 2, l2.Weight)
	require.Equal(t, 10*time.Second, l2.ExpiresAt.Sub(l2.AcquiredAt))
	require.Greater(t, l2.FencingToken, l1.FencingToken)

	st := e.get("db").State
	require.EqualValues(t, 3, st.InUse)
	require.EqualValues(t, 0, st.Available)
	require.EqualValues(t, 2, st.Channels["eu"].InUse)

	e.unchanged("db", func() {
		e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/db/acquire", e.worker, nil)
		e.expect(http.StatusConflict, CodeWeightTooLarge, http.MethodPost, "/v1/semaphores/db/acquire", e.worker, map[string]any{"weight": 4})
	})

	// Extend from the store's clock.
	e.clock.Add(5 * time.Second)
	var ext LeaseResponse
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l2.ID+"/extend", e.worker, map[string]any{"ttl": "1m"}).into(&ext)
	require.Equal(t, l2.ID, ext.Lease.ID)
	require.Equal(t, e.clock.Now().Add(time.Minute), ext.Lease.ExpiresAt)
	require.Equal(t, l2.FencingToken, ext.Lease.FencingToken)

	// Release, then the lease is gone for release and extend.
	var rel LeaseResponse
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l2.ID+"/release", e.worker, nil).into(&rel)
	require.Equal(t, l2.ID, rel.Lease.ID)
	require.EqualValues(t, 1, e.get("db").State.InUse)
	e.unchanged("db", func() {
		e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+l2.ID+"/release", e.worker, nil)
		e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+l2.ID+"/extend", e.worker, map[string]any{"ttl": "10s"})
	})

	// Expiry, judged by the store's clock.
	e.clock.Add(41 * time.Second) // l1 is 46s old
	e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+l1.ID+"/release", e.worker, nil)
	e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+l1.ID+"/extend", e.worker, map[string]any{"ttl": "10s"})
	require.EqualValues(t, 0, e.get("db").State.InUse)

	// Unknown ids of every shape.
	for _, id := range []string{"nope", strings.Repeat("0", 32) + ".ZGI", strings.Repeat("z", 300), "%2E"} {
		e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+id+"/release", e.worker, nil)
	}
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/nope/acquire", e.worker, nil)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/nope/acquire", e.worker, map[string]any{"ttl": "5s"})
}

func TestLeases_Idempotency(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("db", map[string]any{"maxValue": 2})
	a := e.acquire("db", map[string]any{"idempotencyKey": "job-1"})
	b := e.acquire("db", map[string]any{"idempotencyKey": "job-1"})
	require.Equal(t, a, b)
	require.EqualValues(t, 1, e.get("db").State.InUse)
	c := e.acquire("db", map[string]any{"idempotencyKey": "job-2"})
	require.NotEqual(t, a.ID, c.ID)
}

func TestLeases_WaitHandOff(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("db", map[string]any{"maxValue": 1})
	held := e.acquire("db", nil)

	got := make(chan response, 1)
	go func() {
		got <- e.do(http.MethodPost, "/v1/semaphores/db/acquire", e.worker, map[string]any{"wait": "30s"})
	}()
	require.Eventually(t, func() bool { return e.get("db").State.Waiting == 1 }, 10*time.Second, time.Millisecond)
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+held.ID+"/release", e.worker, nil)
	select {
	case r := <-got:
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var l LeaseResponse
		r.into(&l)
		require.Greater(t, l.Lease.FencingToken, held.FencingToken)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not granted")
	}
}

func TestLeases_BadRequests(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("db", map[string]any{"maxValue": 2})
	held := e.acquire("db", nil)

	acquire := []struct {
		name   string
		body   any
		status int
		code   string
		field  string
	}{
		{"wait over 60s", rawBody(`{"wait":"61s"}`), 400, CodeInvalidRequest, "wait"},
		{"negative wait", rawBody(`{"wait":"-1s"}`), 400, CodeInvalidRequest, "wait"},
		{"ttl too short", rawBody(`{"ttl":"999ms"}`), 400, CodeInvalidRequest, "ttl"},
		{"ttl too long", rawBody(`{"ttl":"24h0m1s"}`), 400, CodeInvalidRequest, "ttl"},
		{"ttl not a duration", rawBody(`{"ttl":"10"}`), 400, CodeInvalidJSON, "ttl"},
		{"ttl number", rawBody(`{"ttl":10}`), 400, CodeInvalidJSON, "ttl"},
		{"weight zero", rawBody(`{"weight":0}`), 400, CodeInvalidRequest, "weight"},
		{"weight negative", rawBody(`{"weight":-1}`), 400, CodeInvalidRequest, "weight"},
		{"weight string", rawBody(`{"weight":"2"}`), 400, CodeInvalidJSON, "weight"},
		{"weight bool", rawBody(`{"weight":true}`), 400, CodeInvalidJSON, "weight"},
		{"bad channel", rawBody(`{"channel":"-eu"}`), 400, CodeInvalidRequest, "channel"},
		{"channel type", rawBody(`{"channel":7}`), 400, CodeInvalidJSON, "channel"},
		{"long idempotency key", rawBody(`{"idempotencyKey":"` + strings.Repeat("k", 257) + `"}`), 400, CodeInvalidRequest, "idempotencyKey"},
		{"unknown field", rawBody(`{"weigth":1}`), 400, CodeInvalidJSON, "weigth"},
		{"malformed", rawBody(`{"weight":`), 400, CodeInvalidJSON, ""},
		{"not an object", rawBody(`[]`), 400, CodeInvalidJSON, ""},
		{"two values", rawBody(`{} {}`), 400, CodeInvalidJSON, ""},
		{"oversize", rawBody(`{"idempotencyKey":"` + strings.Repeat("k", 1<<20) + `"}`), 413, CodePayloadTooLarge, ""},
		{"oversize white space", rawBody(`{}` + strings.Repeat(" ", 1<<20)), 413, CodePayloadTooLarge, ""},
	}
	for _, tc := range acquire {
		t.Run("acquire "+tc.name, func(t *testing.T) {
			e := e.with(t)
			e.unchanged("db", func() {
				r := e.expect(tc.status, tc.code, http.MethodPost, "/v1/semaphores/db/acquire", e.worker, tc.body)
				var eb ErrorBody
				r.into(&eb)
				require.Contains(t, eb.Error.Message, tc.field)
			})
		})
	}

	extend := []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"no ttl", rawBody(`{}`), 400, CodeInvalidRequest},
		{"no body", nil, 400, CodeInvalidJSON},
		{"ttl too long", rawBody(`{"ttl":"25h"}`), 400, CodeInvalidRequest},
		{"ttl zero", rawBody(`{"ttl":"0s"}`), 400, CodeInvalidRequest},
		{"ttl type", rawBody(`{"ttl":true}`), 400, CodeInvalidJSON},
		{"unknown field", rawBody(`{"ttl":"5s","lease":"x"}`), 400, CodeInvalidJSON},
		{"oversize", rawBody(`{"ttl":"` + strings.Repeat("1", 2<<20) + `s"}`), 413, CodePayloadTooLarge},
	}
	for _, tc := range extend {
		t.Run("extend "+tc.name, func(t *testing.T) {
			e := e.with(t)
			e.unchanged("db", func() {
				e.expect(tc.status, tc.code, http.MethodPost, "/v1/leases/"+held.ID+"/extend", e.worker, tc.body)
			})
		})
	}

	t.Run("release with a body", func(t *testing.T) {
		e := e.with(t)
		e.unchanged("db", func() {
			e.expect(http.StatusBadRequest, CodeInvalidJSON, http.MethodPost, "/v1/leases/"+held.ID+"/release", e.worker, rawBody(`{"force":true}`))
		})
	})
	t.Run("bad semaphore name", func(t *testing.T) {
		e := e.with(t)
		e.expect(http.StatusBadRequest, CodeInvalidName, http.MethodPost, "/v1/semaphores/-db/acquire", e.worker, nil)
	})

	// The lease survived every bad request.
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+held.ID+"/release", e.worker, nil)
}

// TestLeases_List: GET /v1/semaphores/{name}/leases pages through the live
// leases in grant order, per channel on request; released and expired
// ones are gone; bad parameters are 400 naming them.
func TestLeases_List(t *testing.T) {
	e := setup(t)
	e.put("pool", map[string]any{"maxValue": 10, "maxValueScope": "channel"})
	var ids []string
	for i := range 5 {
		ch := "a"
		if i%2 == 1 {
			ch = "b"
		}
		ids = append(ids, e.acquire("pool", map[string]any{"channel": ch, "ttl": "1m"}).ID)
	}
	short := e.acquire("pool", map[string]any{"channel": "a", "ttl": "1s"})
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+ids[2]+"/release", e.worker, nil)
	e.clock.Add(2 * time.Second) // the 1s lease expires

	list := func(q string) LeaseListResponse {
		var out LeaseListResponse
		e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores/pool/leases?"+q, e.worker, nil).into(&out)
		return out
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 5)
		p := list("limit=2&cursor=" + cursor)
		for _, l := range p.Leases {
			got = append(got, l.ID)
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
	}
	require.Equal(t, []string{ids[0], ids[1], ids[3], ids[4]}, got, "live leases in grant order")
	require.NotContains(t, got, short.ID)

	b := list("channel=b")
	require.Len(t, b.Leases, 2)
	for _, l := range b.Leases {
		require.Equal(t, "b", l.Channel)
	}
	require.Empty(t, b.NextCursor)

	for q, field := range map[string]string{"limit=0": "limit", "cursor=zz": "cursor", "channel=-x": "channel"} {
		r := e.do(http.MethodGet, "/v1/semaphores/pool/leases?"+q, e.worker, nil)
		require.Equal(t, http.StatusBadRequest, r.Status, q)
		require.Equal(t, CodeInvalidRequest, r.code(), q)
		require.Contains(t, r.message(), field, q)
	}
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, "/v1/semaphores/nope/leases", e.worker, nil)
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/v1/semaphores/pool/leases", "", nil)
}
