package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSemaphores_PutGet(t *testing.T) {
	t.Parallel()
	e := setup(t)

	sem := e.put("orders", map[string]any{"maxValue": 3})
	require.Equal(t, "orders", sem.Name)
	require.EqualValues(t, 3, sem.MaxValue)
	require.Equal(t, "total", sem.MaxValueScope)
	require.Equal(t, Duration(60*time.Second), sem.LeaseTimeout)
	require.Equal(t, 3, sem.MaxAttempts)
	require.Equal(t, "redeliver", sem.OnSessionLost)
	require.Equal(t, "fail", sem.OnDeliveryError)
	require.JSONEq(t, `[]`, string(sem.Routes))
	require.JSONEq(t, `null`, string(sem.Mapping))
	require.Nil(t, sem.State, "PUT returns no state")

	got := e.get("orders")
	require.NotNil(t, got.State)
	require.EqualValues(t, 3, got.State.Available)
	require.EqualValues(t, 0, got.State.InUse)

	// Replace with every field set.
	full := map[string]any{
		"maxValue": 5, "maxValueScope": "channel", "leaseTimeout": "1m30s", "maxAttempts": 7,
		"onSessionLost": "wait", "onDeliveryError": "suspend",
		"routes": []any{
			map[string]any{"type": "websocket", "channel": "gpu"},
			map[string]any{"type": "semaphore", "target": "overflow", "release": true},
		},
		"mapping": map[string]any{"expr": "{}", "canOverrideRouting": true},
	}
	// A semaphore route's target must exist first.
	r := e.do(http.MethodPut, "/v1/semaphores/orders", e.admin, full)
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.Equal(t, CodeInvalidConfig, r.code())
	require.Equal(t, `routes[1].target: semaphore "overflow" does not exist: create it first`, r.message())
	require.EqualValues(t, 3, e.get("orders").MaxValue, "nothing changed")
	e.put("overflow", map[string]any{"maxValue": 1})
	sem = e.put("orders", full)
	require.EqualValues(t, 5, sem.MaxValue)
	require.Equal(t, "channel", sem.MaxValueScope)
	require.Equal(t, Duration(90*time.Second), sem.LeaseTimeout)
	require.Equal(t, 7, sem.MaxAttempts)
	require.Equal(t, "wait", sem.OnSessionLost)
	require.Equal(t, "suspend", sem.OnDeliveryError)
	require.JSONEq(t, `[{"type":"websocket","channel":"gpu"},{"type":"semaphore","target":"overflow","release":true}]`, string(sem.Routes))
	var mapping map[string]any
	require.NoError(t, json.Unmarshal(sem.Mapping, &mapping))
	require.Equal(t, "{}", mapping["expr"])
	require.Equal(t, true, mapping["canOverrideRouting"])
	require.Regexp(t, `^whsec_`, mapping["secret"], "a secret for https routes the mapping returns")

	// Lowering maxValue never revokes live leases.
	e.put("small", map[string]any{"maxValue": 2})
	e.acquire("small", map[string]any{"weight": 2})
	e.put("small", map[string]any{"maxValue": 1})
	st := e.get("small").State
	require.EqualValues(t, 2, st.InUse)
	require.EqualValues(t, 0, st.Available)
	e.expect(http.StatusConflict, CodeNoPermit, http.MethodPost, "/v1/semaphores/small/acquire", e.worker, nil)

	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, "/v1/semaphores/nope", e.admin, nil)
}

func TestSemaphores_ListDelete(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for _, n := range []string{"c", "a", "b"} {
		e.put(n, map[string]any{"maxValue": 1})
	}
	var page SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores?limit=2", e.admin, nil).into(&page)
	require.Len(t, page.Semaphores, 2)
	require.Equal(t, "a", page.Semaphores[0].Name)
	require.Equal(t, "b", page.Semaphores[1].Name)
	require.NotEmpty(t, page.NextCursor)
	var rest SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores?limit=2&cursor="+page.NextCursor, e.admin, nil).into(&rest)
	require.Len(t, rest.Semaphores, 1)
	require.Equal(t, "c", rest.Semaphores[0].Name)
	require.Empty(t, rest.NextCursor)

	for q, field := range map[string]string{
		"limit=0": "limit", "limit=1001": "limit", "limit=-1": "limit", "limit=x": "limit",
		"cursor=b": "cursor", "cursor=%25": "cursor", "cursor=" + page.NextCursor + "x": "cursor",
		// a jobs cursor (base64url of "j:5") is not a semaphores cursor
		"cursor=ajo1": "cursor",
	} {
		r := e.do(http.MethodGet, "/v1/semaphores?"+q, e.admin, nil)
		require.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", q, r.Body)
		require.Equal(t, CodeInvalidRequest, r.code(), q)
		require.Contains(t, r.message(), field, "%s: the message names the parameter", q)
		if q == "limit=0" {
			require.Contains(t, r.message(), `got "0"`, "the value sent, not a stand-in")
		}
	}

	var del SemaphoreResponse
	e.expect(http.StatusOK, "", http.MethodDelete, "/v1/semaphores/b", e.admin, nil).into(&del)
	require.Equal(t, "b", del.Semaphore.Name)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, "/v1/semaphores/b", e.admin, nil)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodDelete, "/v1/semaphores/b", e.admin, nil)

	var all SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores", e.admin, nil).into(&all)
	require.Len(t, all.Semaphores, 2)
	for _, sem := range all.Semaphores {
		require.Nil(t, sem.State, "no state unless asked")
	}
}

func TestSemaphores_ListWithState(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("a", map[string]any{"maxValue": 3})
	e.put("b", map[string]any{"maxValue": 2})
	e.acquire("a", map[string]any{"weight": 2, "channel": "gpu"})
	e.expect(http.StatusAccepted, "", http.MethodPost, "/v1/semaphores/b/jobs", e.worker, map[string]any{"payload": 1})

	var page SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores?state=true", e.admin, nil).into(&page)
	require.Len(t, page.Semaphores, 2)
	for _, sem := range page.Semaphores {
		require.NotNil(t, sem.State, sem.Name)
		require.Equal(t, *e.get(sem.Name).State, *sem.State, "%s: the same state as GET", sem.Name)
	}
	a := page.Semaphores[0].State
	require.EqualValues(t, 2, a.InUse)
	require.EqualValues(t, 1, a.Available)
	require.EqualValues(t, 2, a.Channels["gpu"].InUse)

	var plain SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores?state=false", e.admin, nil).into(&plain)
	require.Nil(t, plain.Semaphores[0].State)
	r := e.expect(http.StatusBadRequest, CodeInvalidRequest, http.MethodGet, "/v1/semaphores?state=yes", e.admin, nil)
	require.Contains(t, r.message(), "state")
	e.expect(http.StatusForbidden, CodeForbidden, http.MethodGet, "/v1/semaphores?state=true", e.worker, nil)
}

func TestSemaphores_SuspendResume(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("s", map[string]any{"maxValue": 1})

	var out SemaphoreResponse
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/s/suspend", e.admin, nil).into(&out)
	require.True(t, out.Semaphore.Suspended)
	require.True(t, e.get("s").Suspended)
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/s/resume", e.admin, rawBody(`{}`)).into(&out)
	require.False(t, out.Semaphore.Suspended)

	e.unchanged("s", func() {
		e.expect(http.StatusBadRequest, CodeInvalidJSON, http.MethodPost, "/v1/semaphores/s/suspend", e.admin, rawBody(`{"x":1}`))
	})
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/nope/suspend", e.admin, nil)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/nope/resume", e.admin, nil)
}

func TestSemaphores_BadRequests(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("s", map[string]any{"maxValue": 2, "leaseTimeout": "10s"})

	big := `{"maxValue": 1, "routes": [` + strings.Repeat(`{"type":"websocket"},`, 60000) + `{"type":"websocket"}]}`
	cases := []struct {
		name   string
		body   any
		status int
		code   string
		field  string // must appear in the message
	}{
		{"missing maxValue", rawBody(`{}`), 400, CodeInvalidConfig, "maxValue"},
		{"null body", rawBody(`null`), 400, CodeInvalidConfig, "maxValue"},
		{"maxValue zero", rawBody(`{"maxValue":0}`), 400, CodeInvalidConfig, "maxValue"},
		{"maxValue too big", rawBody(`{"maxValue":1000000001}`), 400, CodeInvalidConfig, "maxValue"},
		{"maxValue negative", rawBody(`{"maxValue":-5}`), 400, CodeInvalidConfig, "maxValue"},
		{"maxValue string", rawBody(`{"maxValue":"10"}`), 400, CodeInvalidJSON, "maxValue"},
		{"maxValue float", rawBody(`{"maxValue":1.5}`), 400, CodeInvalidJSON, "maxValue"},
		{"maxValue overflow", rawBody(`{"maxValue":1e30}`), 400, CodeInvalidJSON, "maxValue"},
		{"bad scope", rawBody(`{"maxValue":1,"maxValueScope":"all"}`), 400, CodeInvalidConfig, "maxValueScope"},
		{"scope type", rawBody(`{"maxValue":1,"maxValueScope":1}`), 400, CodeInvalidJSON, "maxValueScope"},
		{"leaseTimeout short", rawBody(`{"maxValue":1,"leaseTimeout":"500ms"}`), 400, CodeInvalidConfig, "leaseTimeout"},
		{"leaseTimeout long", rawBody(`{"maxValue":1,"leaseTimeout":"25h"}`), 400, CodeInvalidConfig, "leaseTimeout"},
		{"leaseTimeout garbage", rawBody(`{"maxValue":1,"leaseTimeout":"soon"}`), 400, CodeInvalidJSON, "leaseTimeout"},
		{"leaseTimeout number", rawBody(`{"maxValue":1,"leaseTimeout":60}`), 400, CodeInvalidJSON, "leaseTimeout"},
		{"maxAttempts zero", rawBody(`{"maxValue":1,"maxAttempts":0}`), 400, CodeInvalidConfig, "maxAttempts"},
		{"maxAttempts 101", rawBody(`{"maxValue":1,"maxAttempts":101}`), 400, CodeInvalidConfig, "maxAttempts"},
		{"onSessionLost", rawBody(`{"maxValue":1,"onSessionLost":"panic"}`), 400, CodeInvalidConfig, "onSessionLost"},
		{"onDeliveryError", rawBody(`{"maxValue":1,"onDeliveryError":"retry"}`), 400, CodeInvalidConfig, "onDeliveryError"},
		{"routes object", rawBody(`{"maxValue":1,"routes":{"type":"https"}}`), 400, CodeInvalidConfig, "routes"},
		{"route type", rawBody(`{"maxValue":1,"routes":[{"type":"smtp"}]}`), 400, CodeInvalidConfig, "routes[0].type"},
		{"route not object", rawBody(`{"maxValue":1,"routes":[1]}`), 400, CodeInvalidConfig, "routes"},
		{"mapping array", rawBody(`{"maxValue":1,"mapping":[]}`), 400, CodeInvalidConfig, "mapping"},
		{"mapping no expr", rawBody(`{"maxValue":1,"mapping":{}}`), 400, CodeInvalidConfig, "mapping.expr"},
		{"mapping override", rawBody(`{"maxValue":1,"mapping":{"expr":"x","canOverrideRouting":"yes"}}`), 400, CodeInvalidConfig, "canOverrideRouting"},
		{"unknown field", rawBody(`{"maxValue":1,"color":2}`), 400, CodeInvalidJSON, "color"},
		{"case-insensitive match", rawBody(`{"maxValue":1,"maxvalue":2}`), 400, CodeInvalidJSON, "maxvalue"},
		{"duplicate key", rawBody(`{"maxValue":1,"maxValue":2}`), 400, CodeInvalidJSON, "maxValue"},
		{"malformed", rawBody(`{"maxValue":1`), 400, CodeInvalidJSON, ""},
		{"syntax", rawBody(`{"maxValue":,}`), 400, CodeInvalidJSON, ""},
		{"two values", rawBody(`{"maxValue":1}{"maxValue":1}`), 400, CodeInvalidJSON, ""},
		{"trailing garbage", rawBody(`{"maxValue":1} x`), 400, CodeInvalidJSON, ""},
		{"array", rawBody(`[1]`), 400, CodeInvalidJSON, ""},
		{"string", rawBody(`"x"`), 400, CodeInvalidJSON, ""},
		{"empty", rawBody(``), 400, CodeInvalidJSON, ""},
		{"oversize", rawBody(big), 413, CodePayloadTooLarge, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := e.with(t)
			e.unchanged("s", func() {
				r := e.expect(tc.status, tc.code, http.MethodPut, "/v1/semaphores/s", e.admin, tc.body)
				var eb ErrorBody
				r.into(&eb)
				require.Contains(t, eb.Error.Message, tc.field)
			})
		})
	}

	t.Run("content type", func(t *testing.T) {
		e := e.with(t)
		e.unchanged("s", func() {
			r := e.do(http.MethodPut, "/v1/semaphores/s", e.admin, rawBody(`{"maxValue":1}`), "Content-Type", "text/plain")
			require.Equal(t, http.StatusUnsupportedMediaType, r.Status)
			require.Equal(t, CodeUnsupportedMedia, r.code())
		})
		// application/json with a charset is fine.
		r := e.do(http.MethodPut, "/v1/semaphores/t", e.admin, rawBody(`{"maxValue":1}`), "Content-Type", "application/json; charset=utf-8")
		require.Equal(t, http.StatusOK, r.Status)
	})

	t.Run("bad names", func(t *testing.T) {
		e := e.with(t)
		for _, n := range []string{"-x", "_x", ".x", "a%20b", "a%2Fb", "%C3%A9", strings.Repeat("a", 129)} {
			e.expect(http.StatusBadRequest, CodeInvalidName, http.MethodPut, "/v1/semaphores/"+n, e.admin, map[string]any{"maxValue": 1})
		}
		e.expect(http.StatusOK, "", http.MethodPut, "/v1/semaphores/"+strings.Repeat("a", 128), e.admin, map[string]any{"maxValue": 1})
		var all SemaphoreListResponse
		e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores", e.admin, nil).into(&all)
		require.Len(t, all.Semaphores, 3) // s, t and aaa…
	})
}

func TestSemaphores_DecodeMessages(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]string{
		`{"maxValue":"10"}`:                    `field "maxValue" must be an integer in range, got string`,
		`{"leaseTimeout":"soon"}`:              `field "leaseTimeout" must be a Go duration string such as "30s" or "1500ms", got string "soon"`,
		`{"leaseTimeout":5}`:                   `field "leaseTimeout" must be a Go duration string`,
		`{"nope":1}`:                           `unknown field "nope"`,
		`{"maxValue":1}]`:                      `single JSON value`,
		`[]`:                                   `must be a JSON object, got array`,
		`{"maxValue":1,`:                       `unexpected end`,
		`{"routes":[1,]}`:                      `malformed JSON at byte`,
		`{"maxValueScope":["x"]}`:              `field "maxValueScope" must be a string, got array`,
		`{"maxAttempts":12345678901234567890}`: `field "maxAttempts" must be an integer in range`,
	} {
		var req SemaphoreConfigJSON
		err := decodeJSON([]byte(body), &req)
		require.Error(t, err, body)
		var ae *apiError
		require.ErrorAs(t, err, &ae)
		require.Equal(t, CodeInvalidJSON, ae.Code, body)
		require.Contains(t, ae.Message, want, body)
	}
	var ok SemaphoreConfigJSON
	require.NoError(t, decodeJSON([]byte(` {"maxValue": 3, "leaseTimeout": "2s"} `+"\n"), &ok))
	require.EqualValues(t, 3, *ok.MaxValue)
	b, err := json.Marshal(Duration(1500 * time.Millisecond))
	require.NoError(t, err)
	require.Equal(t, `"1.5s"`, string(b))
}
