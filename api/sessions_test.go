package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/store"
)

// The HTTP side of the fallback transports: bad input, tenants, the
// heartbeat rules, closing, and backpressure. Every scenario of a session
// is in transport_test.go.

func TestSessions_BadInput(t *testing.T) {
	e := setupWS(t, 1, wsOptions{})
	h := e.http()
	c := e.open(hub.TransportLongPoll, 0, "")
	path := "/v1/sessions/" + c.session + "/frames"
	for _, tc := range []struct {
		name   string
		status int
		code   string
		method string
		path   string
		body   any
	}{
		{"empty body", 400, CodeInvalidJSON, http.MethodPost, path, rawBody("")},
		{"not a frame", 400, CodeInvalidJSON, http.MethodPost, path, rawBody(`"ping"`)},
		{"malformed", 400, CodeInvalidJSON, http.MethodPost, path, rawBody(`[{"type":"ping"`)},
		{"no frames", 400, CodeInvalidRequest, http.MethodPost, path, rawBody(`[]`)},
		{"too many frames", 400, CodeInvalidRequest, http.MethodPost, path, rawBody("[" + strings.Repeat(`{"type":"ping"},`, MaxPostedFrames) + `{"type":"ping"}]`)},
		{"unknown session", 404, CodeSessionNotFound, http.MethodPost, "/v1/sessions/nope/frames", rawBody(`{"type":"ping"}`)},
		{"bad wait", 400, CodeInvalidRequest, http.MethodGet, path + "?wait=soon", nil},
		{"wait too long", 400, CodeInvalidRequest, http.MethodGet, path + "?wait=61s", nil},
		{"negative wait", 400, CodeInvalidRequest, http.MethodGet, path + "?wait=-1s", nil},
		{"poll unknown", 404, CodeSessionNotFound, http.MethodGet, "/v1/sessions/nope/frames?wait=0s", nil},
		{"end unknown", 404, CodeSessionNotFound, http.MethodDelete, "/v1/sessions/nope", nil},
		{"open: unknown field", 400, CodeInvalidJSON, http.MethodPost, "/v1/sessions", rawBody(`{"resume":"x","extra":1}`)},
		{"open: unknown resume token", 404, CodeSessionNotFound, http.MethodPost, "/v1/sessions", rawBody(`{"resume":"nope"}`)},
		{"sse: unknown resume token", 404, CodeSessionNotFound, http.MethodGet, "/v1/sse?resume=nope", nil},
		{"no key", 401, CodeUnauthorized, http.MethodGet, path, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := e.worker
			if tc.code == CodeUnauthorized {
				key = ""
			}
			h.expect(tc.status, tc.code, tc.method, tc.path, key, tc.body)
		})
	}
	// the session is unharmed, and its frames are answered in order
	r := c.post(0, map[string]any{"type": "ping", "id": "1"}, map[string]any{"type": "bogus", "id": "2"},
		map[string]any{"type": "ping", "id": "3", "extra": true}, map[string]any{"type": "ping", "id": "4"})
	require.Equal(t, "pong", r[0].Type)
	require.Equal(t, CodeUnknownFrame, r[1].Code)
	require.Equal(t, "2", r[1].ID)
	require.Equal(t, CodeInvalidJSON, r[2].Code)
	require.Equal(t, "pong", r[3].Type)
	require.Equal(t, "4", r[3].ID)
	// a form body is refused as any other route's
	resp, err := http.Post(e.nodes[0].url+path, "text/plain", strings.NewReader(`{"type":"ping"}`))
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	h.do(http.MethodPost, path, e.worker, []byte(`{"type":"ping"}`), "Content-Type", "text/plain")
}

// A session is its tenant's: another tenant's key finds nothing, on any
// instance, and changes nothing.
func TestSessions_OtherTenant(t *testing.T) {
	forStores(t, func(t *testing.T, redis bool) {
		e := setupWS(t, 2, wsOptions{redis: redis})
		_, _, other, err := e.nodes[0].svc.CreateTenant(context.Background(), e.opKey, "globex")
		require.NoError(t, err)
		for _, kind := range []string{hub.TransportSSE, hub.TransportLongPoll} {
			c := e.open(kind, 0, "")
			for node := range 2 {
				h := &env{t: t, url: e.nodes[node].url, admin: e.admin, worker: e.worker}
				h.expect(http.StatusNotFound, CodeSessionNotFound, http.MethodPost, "/v1/sessions/"+c.session+"/frames", other, rawBody(`{"type":"ping"}`))
				h.expect(http.StatusNotFound, CodeSessionNotFound, http.MethodGet, "/v1/sessions/"+c.session+"/frames?wait=0s", other, nil)
				h.expect(http.StatusNotFound, CodeSessionNotFound, http.MethodDelete, "/v1/sessions/"+c.session, other, nil)
			}
			if kind == hub.TransportSSE {
				// a poll of an SSE session, here and through the other instance
				for node := range 2 {
					h := &env{t: t, url: e.nodes[node].url, admin: e.admin, worker: e.worker}
					r := h.expect(http.StatusNotFound, CodeSessionNotFound, http.MethodGet, "/v1/sessions/"+c.session+"/frames?wait=0s", e.worker, nil)
					require.Contains(t, r.message(), "not a long-poll session", "node %d", node)
				}
			}
			require.Equal(t, "pong", c.call(map[string]any{"type": "ping"}).Type, "the session is unharmed")
			_, err := e.tryOpen(kind, 0, c.token, other)
			require.ErrorContains(t, err, "404", "another tenant cannot resume it")
		}
	})
}

// Tickets open SSE and long-poll sessions once, as they open websockets.
func TestSessions_Ticket(t *testing.T) {
	e := setupWS(t, 1, wsOptions{})
	h := e.http()
	for _, path := range []string{"/v1/sse", "/v1/sessions"} {
		var tk TicketResponse
		h.expect(http.StatusCreated, "", http.MethodPost, "/v1/ws/tickets", e.worker, nil).into(&tk)
		method := http.MethodGet
		if path == "/v1/sessions" {
			method = http.MethodPost
		}
		ctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(ctx, method, e.nodes[0].url+path+"?ticket="+url.QueryEscape(tk.Ticket), nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		require.Less(t, resp.StatusCode, 300, path)
		first, err := bufio.NewReader(resp.Body).ReadString('}') // the welcome's first object
		require.NoError(t, err)
		require.Contains(t, first, `"type":"welcome"`)
		cancel()
		_ = resp.Body.Close()
		h.expect(http.StatusUnauthorized, CodeUnauthorized, method, path+"?ticket="+url.QueryEscape(tk.Ticket), "", nil)
	}
}

// The heartbeat rules: a long-poll session without polls, and an SSE
// session without posted frames, are closed after 3 heartbeats and lost
// (resumable); a poll, or posted pings, keep them.
func TestSessions_Heartbeat(t *testing.T) {
	e := setupWS(t, 1, wsOptions{heartbeat: 100 * time.Millisecond, grace: time.Minute})
	lost := func(id string) bool {
		s, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: id})
		return err == nil && !s.LostAt.IsZero()
	}
	t.Run("sse", func(t *testing.T) {
		kept := e.open(hub.TransportSSE, 0, "")
		kept.keepAlive(50 * time.Millisecond)
		silent := e.open(hub.TransportSSE, 0, "")
		f := silent.next()
		require.Equal(t, "closed", f.Type)
		require.EqualValues(t, hub.ClosePolicy, f.CloseCode)
		e.eventually(func() bool { return lost(silent.session) }, "lost")
		require.False(t, lost(kept.session))
		require.Equal(t, "pong", kept.call(map[string]any{"type": "ping"}).Type)
		c := e.open(hub.TransportSSE, 0, silent.token)
		require.Equal(t, "resumed", c.first.Type)
	})
	t.Run("longpoll", func(t *testing.T) {
		kept := e.open(hub.TransportLongPoll, 0, "") // its poller polls
		silent := e.open(hub.TransportLongPoll, 0, "")
		silent.cancel()
		<-silent.ended
		e.eventually(func() bool { return lost(silent.session) }, "lost")
		require.False(t, lost(kept.session))
		frames, status, err := silent.pollOnce(context.Background(), "0s")
		require.NoError(t, err)
		require.Equal(t, http.StatusNotFound, status, "%s", frames)
		c := e.open(hub.TransportLongPoll, 0, silent.token)
		require.Equal(t, "resumed", c.first.Type)
	})
}

// A revoked key closes SSE and long-poll sessions with 4003, as it closes
// websockets.
func TestSessions_KeyRevoked(t *testing.T) {
	e := setupWS(t, 1, wsOptions{heartbeat: time.Minute})
	sse := e.open(hub.TransportSSE, 0, "")
	lp := e.open(hub.TransportLongPoll, 0, "")
	var keys KeyListResponse
	e.http().expect(http.StatusOK, "", http.MethodGet, "/v1/keys", e.admin, nil).into(&keys)
	for _, k := range keys.Keys {
		if k.Name == "worker" {
			e.http().expect(http.StatusOK, "", http.MethodDelete, "/v1/keys/"+k.ID, e.admin, nil)
		}
	}
	for _, c := range []*tclient{sse, lp} {
		f, err := c.nextWithin(5 * time.Second)
		if c.kind == hub.TransportLongPoll && err != nil && strings.Contains(err.Error(), "poll: 401") {
			// The poller's next poll left after the revocation: it is
			// refused at the door (the key is unknown now). A poll in
			// flight at the revocation gets the closed frame instead.
			continue
		}
		require.NoError(t, err, c.kind)
		require.Equal(t, "closed", f.Type, c.kind)
		require.EqualValues(t, hub.CloseKeyRevoked, f.CloseCode)
		require.Equal(t, "key_revoked", f.Reason)
	}
}

// Backpressure: a client that does not take its frames never makes the
// server buffer without bound. Pushed frames wait in the session's
// bounded send queue; a reader that lets it stay full is closed, and the
// jobs pushed to it go on to another session.
func TestSessions_Backpressure(t *testing.T) {
	t.Run("sse reader that stops reading", func(t *testing.T) {
		e := setupWS(t, 1, wsOptions{sendQueue: 4, writeTime: 300 * time.Millisecond, ackTimeout: 30 * time.Second, grace: time.Minute, heartbeat: 5 * time.Second})
		e.put("work", map[string]any{"maxValue": 200})
		// a raw connection that reads nothing after the response's head
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.nodes[0].url, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		// a small, fixed receive buffer (no autotuning up to tens of MiB)
		require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(16<<10))
		_, err = fmt.Fprintf(conn, "GET /v1/sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n", e.worker)
		require.NoError(t, err)
		br := bufio.NewReaderSize(conn, 1<<10)
		var session string
		for session == "" {
			line, err := br.ReadString('\n')
			require.NoError(t, err)
			if data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
				var f WsFrame
				require.NoError(t, json.Unmarshal([]byte(data), &f))
				session = f.Session
			}
		}
		stuck := &tclient{t: t, e: e, kind: hub.TransportSSE, key: e.worker, session: session}
		require.Equal(t, "subscribed", stuck.post(0, map[string]any{"type": "subscribe", "id": "s", "semaphore": "work", "prefetch": 200})[0].Type)
		// big jobs, so that the kernel's socket buffers fill
		payload := strings.Repeat("x", 200<<10)
		var ids []string
		for range 48 {
			ids = append(ids, e.enqueue("work", payload).ID)
		}
		e.eventually(func() bool {
			_, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: session})
			s, _ := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: session})
			return err == nil && !s.LostAt.IsZero()
		}, "the stuck reader was closed (lost)")
		// another worker takes every job: none was lost to the stuck one
		// (its jobs waited for it while it could be resumed)
		e.schemaless = true // the frames are 200 KiB each
		w := e.open(hub.TransportLongPoll, 0, "")
		// a prefetch below the send queue's size: however slowly this
		// reader polls (a loaded machine), its queue never stays full for
		// the 300 ms that closes a stuck reader
		require.Equal(t, "subscribed", w.call(map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 2}).Type)
		seen := map[string]bool{}
		for len(seen) < len(ids) {
			f, err := w.nextWithin(20 * time.Second)
			require.NoError(t, err, "%d of %d jobs taken", len(seen), len(ids))
			if f.Type == "job" && !seen[f.Job.ID] {
				seen[f.Job.ID] = true
				w.post(0, map[string]any{"type": "ack", "id": "a", "job": f.Job.ID}, map[string]any{"type": "release", "id": "r", "job": f.Job.ID})
			}
		}
	})
	t.Run("long-poll queue is bounded", func(t *testing.T) {
		e := setupWS(t, 1, wsOptions{sendQueue: 4, writeTime: 5 * time.Second, heartbeat: time.Minute})
		e.put("work", map[string]any{"maxValue": 50})
		c := e.open(hub.TransportLongPoll, 0, "")
		c.cancel() // no polls from here on
		<-c.ended
		require.Equal(t, "subscribed", c.post(0, map[string]any{"type": "subscribe", "id": "s", "semaphore": "work", "prefetch": 50})[0].Type)
		var ids []string
		for range 20 {
			ids = append(ids, e.enqueue("work", "x").ID)
		}
		e.eventually(func() bool {
			for _, id := range ids {
				if e.job(id).Status != "inflight" {
					return false
				}
			}
			return true
		}, "all 20 dispatched to the websocket route")
		// each poll takes at most the send queue's bound; acked and
		// released, every job comes
		seen := map[string]bool{}
		for len(seen) < len(ids) {
			frames, status, err := c.pollOnce(context.Background(), "5s")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status)
			require.NotEmpty(t, frames, "%d of %d jobs polled", len(seen), len(ids))
			require.LessOrEqual(t, len(frames), 4, "a poll takes at most the send queue's bound")
			for _, raw := range frames {
				var f WsFrame
				require.NoError(t, json.Unmarshal(raw, &f))
				require.Equal(t, "job", f.Type)
				seen[f.Job.ID] = true
				r := c.post(0, map[string]any{"type": "ack", "id": "a", "job": f.Job.ID}, map[string]any{"type": "release", "id": "r", "job": f.Job.ID})
				require.Equal(t, "released", r[1].Type, "%+v", r[1])
			}
		}
	})
}

// SSE and long-poll over HTTP/2 with TLS: the stream runs through the
// handler (no hijack), posts and polls share the one connection.
func TestSessions_HTTP2(t *testing.T) {
	e := setupWS(t, 1, wsOptions{})
	e.put("work", map[string]any{"maxValue": 2})
	ts := httptest.NewUnstartedServer(e.nodes[0].handler)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	t.Cleanup(ts.Close)
	hc := ts.Client()
	do := func(ctx context.Context, method, path string, body string) *http.Response {
		t.Helper()
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, ts.URL+path, r)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+e.worker)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		require.NoError(t, err)
		require.Equal(t, 2, resp.ProtoMajor, "HTTP/2")
		return resp
	}
	frames := func(resp *http.Response) []WsFrame {
		t.Helper()
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var out struct{ Frames []WsFrame }
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		return out.Frames
	}

	t.Run("sse", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		resp := do(ctx, http.MethodGet, "/v1/sse", "")
		defer resp.Body.Close()
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
		events := make(chan WsFrame, 16)
		go func() {
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
					var f WsFrame
					if json.Unmarshal([]byte(data), &f) == nil {
						events <- f
					}
				}
			}
			close(events)
		}()
		next := func() WsFrame {
			select {
			case f := <-events:
				return f
			case <-time.After(5 * time.Second):
				t.Fatal("no event within 5s")
				return WsFrame{}
			}
		}
		welcome := next()
		require.Equal(t, "welcome", welcome.Type)
		path := "/v1/sessions/" + welcome.Session + "/frames"
		require.Equal(t, "subscribed", frames(do(ctx, http.MethodPost, path, `{"type":"subscribe","id":"1","semaphore":"work"}`))[0].Type)
		j := e.enqueue("work", "h2")
		f := next()
		require.Equal(t, j.ID, f.Job.ID)
		r := frames(do(ctx, http.MethodPost, path, `[{"type":"ack","id":"2","job":"`+j.ID+`"},{"type":"release","id":"3","job":"`+j.ID+`"}]`))
		require.Equal(t, "acked", r[0].Type)
		require.Equal(t, "done", r[1].Job.Status)
	})
	t.Run("long-poll", func(t *testing.T) {
		ctx := t.Context()
		resp := do(ctx, http.MethodPost, "/v1/sessions", "")
		var welcome WsFrame
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&welcome))
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		path := "/v1/sessions/" + welcome.Session + "/frames"
		require.Equal(t, "subscribed", frames(do(ctx, http.MethodPost, path, `{"type":"subscribe","id":"1","semaphore":"work"}`))[0].Type)
		j := e.enqueue("work", "h2")
		got := frames(do(ctx, http.MethodGet, path+"?wait=5s", ""))
		require.Len(t, got, 1)
		require.Equal(t, j.ID, got[0].Job.ID)
		r := frames(do(ctx, http.MethodPost, path, `[{"type":"ack","id":"2","job":"`+j.ID+`"},{"type":"release","id":"3","job":"`+j.ID+`"}]`))
		require.Equal(t, "done", r[1].Job.Status)
		resp = do(ctx, http.MethodDelete, "/v1/sessions/"+welcome.Session, "")
		resp.Body.Close()
		require.Equal(t, http.StatusNoContent, resp.StatusCode)
	})
}
