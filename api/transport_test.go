package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/store"
)

// The transport conformance suite (README "Websocket workers" and "Behind a proxy"): every session scenario runs
// on each transport — websocket, SSE and long-poll — through one client
// type, tclient, that speaks all three. A scenario sees requests and their
// replies, pushed frames, a dropped connection and a resume; which
// transport carries them is the table's column.

var transports = []string{hub.TransportWebsocket, hub.TransportSSE, hub.TransportLongPoll}

// tclient is one connection of a session over a transport.
type tclient struct {
	t       *testing.T
	e       *wsEnv
	kind    string
	node    int
	key     string
	session string
	token   string // the session's resume token
	first   WsFrame

	ctx    context.Context // ends with the connection
	cancel context.CancelFunc
	ws     *websocket.Conn
	in     chan tread // every frame from the server, in order
	ended  chan struct{}
	seq    atomic.Int64

	mu      sync.Mutex
	stash   []WsFrame // pushed frames read while waiting for a reply
	replies map[string]WsFrame
}

type tread struct {
	f   WsFrame
	err error
}

func (e *wsEnv) httpDo(ctx context.Context, method, url, key string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// A pooled keep-alive connection the test server closes just as a POST
	// goes out on it fails with "server closed idle connection", before the
	// server read anything; net/http resends such a request only when it
	// is marked replayable. The server ignores the header.
	req.Header.Set("X-Idempotency-Key", "tclient")
	return http.DefaultClient.Do(req)
}

// open opens a session on node over transport kind, resuming the session
// of token if it is set (websocket: with a resume frame; the others as
// they open). The first frame (welcome or resumed) is c.first.
func (e *wsEnv) open(kind string, node int, token string) *tclient {
	e.t.Helper()
	c, err := e.tryOpen(kind, node, token, e.worker)
	require.NoError(e.t, err)
	return c
}

func (e *wsEnv) tryOpen(kind string, node int, token, key string) (*tclient, error) {
	t := e.t
	ctx, cancel := context.WithCancel(context.Background())
	c := &tclient{t: t, e: e, kind: kind, node: node, key: key, ctx: ctx, cancel: cancel,
		in: make(chan tread, 1024), ended: make(chan struct{}), replies: map[string]WsFrame{}}
	base := e.nodes[node].url
	check := !e.schemaless
	push := func(raw []byte) bool {
		var f WsFrame
		err := json.Unmarshal(raw, &f)
		if err == nil && check {
			checkFrame(t, raw)
		}
		select {
		case c.in <- tread{f: f, err: err}:
			return true
		case <-ctx.Done():
			return false
		}
	}
	end := func(err error) {
		select {
		case c.in <- tread{err: err}:
		default:
		}
		close(c.ended)
	}
	switch kind {
	case hub.TransportWebsocket:
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		conn, resp, err := websocket.Dial(dctx, wsURL(base), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
		dcancel()
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if err != nil {
			cancel()
			return nil, err
		}
		c.ws = conn
		go func() {
			for {
				_, data, err := conn.Read(ctx)
				if err != nil {
					end(err)
					return
				}
				if !push(data) {
					end(ctx.Err())
					return
				}
			}
		}()
	case hub.TransportSSE:
		u := base + "/v1/sse"
		if token != "" {
			u += "?resume=" + token
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("GET /v1/sse: %d %s", resp.StatusCode, body)
		}
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
		require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
		go func() {
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(nil, 4<<20)
			for sc.Scan() {
				line := sc.Text()
				if data, ok := strings.CutPrefix(line, "data: "); ok && !push([]byte(data)) {
					break
				}
			}
			end(errors.New("the stream ended"))
		}()
	case hub.TransportLongPoll:
		var body []byte
		if token != "" {
			body, _ = json.Marshal(map[string]string{"resume": token})
		}
		resp, err := e.httpDo(ctx, http.MethodPost, base+"/v1/sessions", key, body)
		if err != nil {
			cancel()
			return nil, err
		}
		raw, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			cancel()
			return nil, fmt.Errorf("POST /v1/sessions: %d %s", resp.StatusCode, raw)
		}
		var head WsFrame
		require.NoError(t, json.Unmarshal(raw, &head))
		c.session = head.Session // before the poller reads it
		push(raw)
		go func() {
			for {
				frames, status, err := c.pollOnce(ctx, "1s")
				if err != nil || status != http.StatusOK {
					end(fmt.Errorf("poll: %d %v", status, err))
					return
				}
				for _, f := range frames {
					if !push(f) {
						end(ctx.Err())
						return
					}
				}
			}
		}()
	}
	first, err := c.readWithin(5 * time.Second)
	if err != nil {
		c.close()
		return nil, err
	}
	c.first, c.token = first, first.ResumeToken
	if kind != hub.TransportLongPoll { // (its poller reads it, set above)
		c.session = first.Session
	}
	if kind == hub.TransportWebsocket && token != "" {
		r := c.call(map[string]any{"type": "resume", "token": token})
		if r.Type != "resumed" {
			c.close()
			return nil, fmt.Errorf("resume: %+v", r)
		}
		first = r
		c.first, c.session = r, r.Session
	}
	if first.Type == "resumed" {
		c.token = token
	}
	t.Cleanup(c.close)
	return c, nil
}

// pollOnce is one GET of the session's frames.
func (c *tclient) pollOnce(ctx context.Context, wait string) ([]json.RawMessage, int, error) {
	resp, err := c.e.httpDo(ctx, http.MethodGet, c.e.nodes[c.node].url+"/v1/sessions/"+c.session+"/frames?wait="+wait, c.key, nil)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	var out FramesResponse
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		require.Equal(c.t, "no-store", resp.Header.Get("Cache-Control"))
		err = json.Unmarshal(raw, &out)
	}
	return out.Frames, resp.StatusCode, err
}

// close drops the connection without a goodbye: the session is lost
// (resumable) — a long-poll session once it misses 3 heartbeats.
func (c *tclient) close() {
	c.cancel()
	if c.ws != nil {
		_ = c.ws.CloseNow()
	}
	select {
	case <-c.ended:
	case <-time.After(5 * time.Second):
	}
}

// drop is close, named for the scenarios.
func (c *tclient) drop() { c.close() }

// end gives the session up: a websocket closes normally, the others DELETE.
func (c *tclient) end() {
	c.t.Helper()
	if c.kind == hub.TransportWebsocket {
		require.NoError(c.t, c.ws.Close(websocket.StatusNormalClosure, "bye"))
		return
	}
	resp, err := c.e.httpDo(context.Background(), http.MethodDelete, c.e.nodes[c.node].url+"/v1/sessions/"+c.session, c.key, nil)
	require.NoError(c.t, err)
	_ = resp.Body.Close()
	require.Equal(c.t, http.StatusNoContent, resp.StatusCode)
	c.close()
}

func (c *tclient) readWithin(d time.Duration) (WsFrame, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-c.in:
		if r.err != nil {
			c.in <- r // it stays ended
		}
		return r.f, r.err
	case <-t.C:
		return WsFrame{}, context.DeadlineExceeded
	}
}

// post posts frames to node (the session may be held by another) and
// returns the replies.
func (c *tclient) post(node int, frames ...map[string]any) []WsFrame {
	c.t.Helper()
	body, err := json.Marshal(frames)
	require.NoError(c.t, err)
	resp, err := c.e.httpDo(context.Background(), http.MethodPost, c.e.nodes[node].url+"/v1/sessions/"+c.session+"/frames", c.key, body)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	require.Equal(c.t, http.StatusOK, resp.StatusCode, "%s", raw)
	var out FramesResponse
	require.NoError(c.t, json.Unmarshal(raw, &out))
	require.Len(c.t, out.Frames, len(frames), "one reply per frame")
	replies := make([]WsFrame, len(out.Frames))
	for i, f := range out.Frames {
		checkFrame(c.t, f)
		require.NoError(c.t, json.Unmarshal(f, &replies[i]))
		require.NotEqual(c.t, "job", replies[i].Type, "a pushed frame in a reply body")
	}
	return replies
}

// call sends a request with an id and returns its reply, wherever the
// transport carries it; frames pushed meanwhile are kept for next.
func (c *tclient) call(v map[string]any) WsFrame {
	c.t.Helper()
	id := fmt.Sprintf("r%d", c.seq.Add(1))
	v["id"] = id
	if c.kind != hub.TransportWebsocket {
		r := c.post(c.node, v)[0]
		require.Equal(c.t, id, r.ID)
		return r
	}
	b, err := json.Marshal(v)
	require.NoError(c.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(c.t, c.ws.Write(ctx, websocket.MessageText, b))
	wait := 5 * time.Second
	if v["type"] == "ack" {
		wait = 300 * time.Millisecond // no reply on a websocket, unless an error
	}
	for {
		f, err := c.readWithin(wait)
		if v["type"] == "ack" && errors.Is(err, context.DeadlineExceeded) {
			return WsFrame{Type: "acked", ID: id}
		}
		require.NoError(c.t, err, "no reply to %v", v)
		if f.ID == id {
			return f
		}
		c.mu.Lock()
		c.stash = append(c.stash, f)
		c.mu.Unlock()
	}
}

// next returns the next pushed frame (job, or closed), failing after 5 s.
func (c *tclient) next() WsFrame {
	c.t.Helper()
	f, err := c.nextWithin(5 * time.Second)
	require.NoError(c.t, err)
	return f
}

func (c *tclient) nextWithin(d time.Duration) (WsFrame, error) {
	c.mu.Lock()
	if len(c.stash) > 0 {
		f := c.stash[0]
		c.stash = c.stash[1:]
		c.mu.Unlock()
		return f, nil
	}
	c.mu.Unlock()
	return c.readWithin(d)
}

// job returns the next pushed job frame.
func (c *tclient) job() WsFrame {
	c.t.Helper()
	f := c.next()
	require.Equal(c.t, "job", f.Type, "frame %+v", f)
	require.NotNil(c.t, f.Job)
	return f
}

// quiet requires that nothing is pushed within d.
func (c *tclient) quiet(d time.Duration) {
	c.t.Helper()
	f, err := c.nextWithin(d)
	require.ErrorIs(c.t, err, context.DeadlineExceeded, "unexpected frame %+v", f)
}

// take takes a pushed job: ack, and returns it.
func (c *tclient) take() WsFrame {
	c.t.Helper()
	f := c.job()
	r := c.call(map[string]any{"type": "ack", "job": f.Job.ID})
	require.Equal(c.t, "acked", r.Type, "%+v", r)
	return f
}

func (c *tclient) release(jobID string) JobJSON {
	c.t.Helper()
	r := c.call(map[string]any{"type": "release", "job": jobID})
	require.Equal(c.t, "released", r.Type, "%+v", r)
	return *r.Job
}

// keepAlive posts pings (SSE) every interval until the connection ends:
// a client that posts nothing is dropped after 3 heartbeats.
func (c *tclient) keepAlive(every time.Duration) {
	if c.kind != hub.TransportSSE {
		return
	}
	go func() {
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-c.ctx.Done():
				return
			case <-tk.C:
			}
			body := []byte(`{"type":"ping"}`)
			resp, err := c.e.httpDo(c.ctx, http.MethodPost, c.e.nodes[c.node].url+"/v1/sessions/"+c.session+"/frames", c.key, body)
			if err == nil {
				_ = resp.Body.Close()
			}
		}
	}()
}

// ---- the suite ----

// transportScenarios are the session scenarios every transport passes.
var transportScenarios = []struct {
	name string
	run  func(t *testing.T, kind string, redis bool)
}{
	{"subscribe, push, ack and release", scenarioPush},
	{"acquire and release", scenarioAcquire},
	{"fail", scenarioFail},
	{"drop and resume", scenarioResume},
	{"lost: release", func(t *testing.T, kind string, redis bool) { scenarioLost(t, kind, redis, "release") }},
	{"lost: redeliver", func(t *testing.T, kind string, redis bool) { scenarioLost(t, kind, redis, "redeliver") }},
	{"lost: wait", func(t *testing.T, kind string, redis bool) { scenarioLost(t, kind, redis, "wait") }},
	{"end gives the session up", scenarioEnd},
	{"cross-instance", scenarioCrossInstance},
}

// TestTransports runs every scenario on every transport, on one memory
// store and on Redis (each instance its own store on one Redis).
func TestTransports(t *testing.T) {
	for _, sc := range transportScenarios {
		t.Run(sc.name, func(t *testing.T) {
			for _, kind := range transports {
				t.Run(kind, func(t *testing.T) {
					forStores(t, func(t *testing.T, redis bool) {
						t.Parallel()
						sc.run(t, kind, redis)
					})
				})
			}
		})
	}
}

func scenarioPush(t *testing.T, kind string, redis bool) {
	e := setupWS(t, 1, wsOptions{redis: redis})
	e.put("work", map[string]any{"maxValue": 5})
	c := e.open(kind, 0, "")
	c.keepAlive(300 * time.Millisecond)
	r := c.call(map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 2})
	require.Equal(t, "subscribed", r.Type)
	var ids []string
	for i := range 4 {
		ids = append(ids, e.enqueue("work", map[string]any{"i": i}).ID)
	}
	pushed := map[string]bool{}
	for range 2 {
		f := c.take()
		require.False(t, pushed[f.Job.ID], "job pushed twice")
		pushed[f.Job.ID] = true
		require.Equal(t, "websocket", *f.Job.Route, "the route is named websocket on every transport")
	}
	c.quiet(300 * time.Millisecond) // prefetch 2
	for id := range pushed {
		require.Equal(t, "done", c.release(id).Status)
	}
	for range 2 {
		f := c.take()
		require.False(t, pushed[f.Job.ID], "job pushed twice")
		pushed[f.Job.ID] = true
		require.Equal(t, "done", c.release(f.Job.ID).Status)
	}
	for _, id := range ids {
		require.True(t, pushed[id])
		require.Equal(t, "done", e.job(id).Status)
	}
	r = c.call(map[string]any{"type": "ack", "job": ids[0]})
	require.Equal(t, "error", r.Type, "an ack of a job not pushed")
	require.Equal(t, CodeJobNotFound, r.Code)
	r = c.call(map[string]any{"type": "unsubscribe", "semaphore": "work"})
	require.Equal(t, "unsubscribed", r.Type)
	require.EqualValues(t, 0, e.inUse("work"))
}

func scenarioAcquire(t *testing.T, kind string, redis bool) {
	e := setupWS(t, 1, wsOptions{redis: redis})
	e.put("db", map[string]any{"maxValue": 1})
	c := e.open(kind, 0, "")
	r := c.call(map[string]any{"type": "acquire", "semaphore": "db", "ttl": "1m"})
	require.Equal(t, "acquired", r.Type, "%+v", r)
	require.EqualValues(t, 1, e.inUse("db"))
	busy := c.call(map[string]any{"type": "acquire", "semaphore": "db"})
	require.Equal(t, "rejected", busy.Type)
	require.Equal(t, CodeNoPermit, busy.Error.Code)
	// a waiting acquire is answered when the permit frees (SSE and
	// long-poll: its reply waits in its own request)
	got := make(chan WsFrame, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if kind == hub.TransportWebsocket {
			return
		}
		body := []byte(`{"type":"acquire","id":"w","semaphore":"db","wait":"5s"}`)
		resp, err := e.httpDo(ctx, http.MethodPost, e.nodes[0].url+"/v1/sessions/"+c.session+"/frames", e.worker, body)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		var out FramesResponse
		if json.NewDecoder(resp.Body).Decode(&out) == nil && len(out.Frames) == 1 {
			var f WsFrame
			_ = json.Unmarshal(out.Frames[0], &f)
			got <- f
		}
	}()
	ext := c.call(map[string]any{"type": "extend", "lease": r.Lease.ID, "ttl": "2m"})
	require.Equal(t, "extended", ext.Type)
	rel := c.call(map[string]any{"type": "release", "lease": r.Lease.ID})
	require.Equal(t, "released", rel.Type)
	if kind != hub.TransportWebsocket {
		select {
		case f := <-got:
			require.Equal(t, "acquired", f.Type, "%+v", f)
			require.Equal(t, "released", c.call(map[string]any{"type": "release", "lease": f.Lease.ID}).Type)
		case <-time.After(10 * time.Second):
			t.Fatal("the waiting acquire was not answered")
		}
	}
	e.eventually(func() bool { return e.inUse("db") == 0 }, "released")
	bad := c.call(map[string]any{"type": "nonsense"})
	require.Equal(t, CodeUnknownFrame, bad.Code)
	require.Equal(t, "pong", c.call(map[string]any{"type": "ping"}).Type, "the session stays up after a bad frame")
}

// scenarioFail: a worker gives up a job with fail: the permit frees at
// once (the next job comes), the message stays on the job, the job runs
// again while attempts remain and then ends in error; retry false ends it
// at once; a message over 1 KiB is cut.
func scenarioFail(t *testing.T, kind string, redis bool) {
	e := setupWS(t, 1, wsOptions{redis: redis})
	e.put("work", map[string]any{"maxValue": 5, "maxAttempts": 2, "leaseTimeout": "1m"})
	c := e.open(kind, 0, "")
	require.Equal(t, "subscribed", c.call(map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 1}).Type)
	a, b := e.enqueue("work", "a"), e.enqueue("work", "b")
	require.Equal(t, a.ID, c.take().Job.ID)
	r := c.call(map[string]any{"type": "fail", "job": a.ID, "error": "disk full"})
	require.Equal(t, "failed", r.Type, "%+v", r)
	require.Equal(t, "scheduled", r.Job.Status)
	require.Equal(t, "disk full", *r.Job.Error)
	require.Equal(t, 1, r.Job.Attempts)
	// Its room went to b at once, not after a lease expiry.
	require.Equal(t, b.ID, c.take().Job.ID)
	c.release(b.ID)
	again := c.take()
	require.Equal(t, a.ID, again.Job.ID)
	require.Equal(t, 2, again.Job.Attempts)
	long := strings.Repeat("é", 600) // 1,200 bytes
	r = c.call(map[string]any{"type": "fail", "job": a.ID, "error": long})
	require.Equal(t, "failed", r.Type, "%+v", r)
	require.Equal(t, "error", r.Job.Status, "attempts spent: error")
	require.Equal(t, strings.Repeat("é", 512), *r.Job.Error, "cut to 1 KiB")
	// retry false: error at once, attempts left or not.
	d := e.enqueue("work", "d")
	require.Equal(t, d.ID, c.take().Job.ID)
	r = c.call(map[string]any{"type": "fail", "job": d.ID, "retry": false})
	require.Equal(t, "error", r.Job.Status)
	require.Equal(t, "failed by the worker", *r.Job.Error)
	require.EqualValues(t, 0, e.inUse("work"))
	// Only a job the session holds can be failed.
	bad := c.call(map[string]any{"type": "fail", "job": d.ID})
	require.Equal(t, "error", bad.Type)
	require.Equal(t, CodeInvalidState, bad.Code)
	require.Equal(t, CodeInvalidRequest, c.call(map[string]any{"type": "fail"}).Code)
}

// scenarioResume drops a session holding a lease, a subscription and a
// job, and resumes it on each transport in turn.
func scenarioResume(t *testing.T, kind string, redis bool) {
	e := setupWS(t, 1, wsOptions{grace: 5 * time.Second, redis: redis})
	e.put("work", map[string]any{"maxValue": 3})
	c := e.open(kind, 0, "")
	lease := c.call(map[string]any{"type": "acquire", "semaphore": "work", "ttl": "1m"}).Lease
	require.Equal(t, "subscribed", c.call(map[string]any{"type": "subscribe", "semaphore": "work"}).Type)
	j := e.enqueue("work", "x")
	require.Equal(t, j.ID, c.take().Job.ID)
	e.eventually(func() bool { r := e.job(j.ID).Route; return r != nil && *r == "websocket" }, "delivered")
	token, session := c.token, c.session
	c.drop()
	for _, next := range append(transports, kind) {
		c2 := e.open(next, 0, token)
		require.Equal(t, "resumed", c2.first.Type)
		require.Equal(t, session, c2.first.Session)
		require.Equal(t, []string{lease.ID}, c2.first.Leases)
		require.Equal(t, []string{j.ID}, c2.first.Jobs)
		require.Len(t, c2.first.Subscriptions, 1)
		require.NotNil(t, c2.first.Heartbeat)
		require.Equal(t, "pong", c2.call(map[string]any{"type": "ping"}).Type)
		c2.drop()
	}
	c3 := e.open(kind, 0, token)
	require.Equal(t, "done", c3.release(j.ID).Status)
	require.Equal(t, "released", c3.call(map[string]any{"type": "release", "lease": lease.ID}).Type)
	// the subscription lives on: a new job comes
	j2 := e.enqueue("work", "y")
	c3.keepAlive(300 * time.Millisecond)
	require.Equal(t, j2.ID, c3.take().Job.ID)
	require.Equal(t, "done", c3.release(j2.ID).Status)
	// a resume token that is not known
	_, err := e.tryOpen(kind, 0, "nope", e.worker)
	require.Error(t, err)
	if kind != hub.TransportWebsocket {
		require.Contains(t, err.Error(), "404")
		require.Contains(t, err.Error(), CodeSessionNotFound)
	}
}

// scenarioLost drops a session holding a job and lets its grace run out.
func scenarioLost(t *testing.T, kind string, redis bool, onLost string) {
	e := setupWS(t, 1, wsOptions{heartbeat: 200 * time.Millisecond, grace: 300 * time.Millisecond, redis: redis})
	e.put("work", map[string]any{"maxValue": 1, "onSessionLost": onLost, "maxAttempts": 3, "routes": []any{
		map[string]any{"type": "websocket"},
		map[string]any{"type": "https", "url": e.hook},
	}})
	c := e.open(kind, 0, "")
	c.keepAlive(100 * time.Millisecond)
	require.Equal(t, "subscribed", c.call(map[string]any{"type": "subscribe", "semaphore": "work"}).Type)
	j := e.enqueue("work", "x")
	require.Equal(t, j.ID, c.take().Job.ID)
	e.eventually(func() bool { r := e.job(j.ID).Route; return r != nil && *r == "websocket" }, "delivered")
	c.drop() // long-poll: no poll from now on, which the server notices after 3 heartbeats
	e.eventually(func() bool {
		_, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: c.session})
		return errors.Is(err, store.ErrSessionNotFound)
	}, "session ended after the grace")
	switch onLost {
	case "redeliver":
		select {
		case call := <-e.hooks:
			require.Equal(t, j.ID, call.ID)
			require.Equal(t, 1, call.Attempt, "redelivered with its permit")
		case <-time.After(5 * time.Second):
			t.Fatal("not redelivered to the https route")
		}
	case "release":
		e.eventually(func() bool { j := e.job(j.ID); return j.Attempts == 2 || j.Status != "inflight" }, "the loss counted an attempt")
	case "wait":
		require.Equal(t, "inflight", e.job(j.ID).Status)
		require.Equal(t, "websocket", *e.job(j.ID).Route)
		select {
		case call := <-e.hooks:
			t.Fatalf("job redelivered: %+v", call)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func scenarioEnd(t *testing.T, kind string, redis bool) {
	e := setupWS(t, 1, wsOptions{grace: time.Hour, redis: redis})
	e.put("db", map[string]any{"maxValue": 1})
	c := e.open(kind, 0, "")
	require.Equal(t, "acquired", c.call(map[string]any{"type": "acquire", "semaphore": "db", "ttl": "1h"}).Type)
	c.end()
	e.eventually(func() bool { return e.inUse("db") == 0 }, "lease released at once")
	_, err := e.tryOpen(kind, 0, c.token, e.worker)
	require.Error(t, err, "an ended session cannot be resumed")
}

// scenarioCrossInstance: two instances on one store. A session held by
// node B gets a job enqueued through node A; for SSE and long-poll its
// frames and polls also go through node A (forwarded to B over the node
// bus).
func scenarioCrossInstance(t *testing.T, kind string, redis bool) {
	e := setupWS(t, 2, wsOptions{redis: redis})
	e.put("work", map[string]any{"maxValue": 4})
	c := e.open(kind, 1, "")
	c.keepAlive(300 * time.Millisecond)
	require.Equal(t, "subscribed", c.call(map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 4}).Type)
	for i := range 4 {
		j := e.enqueue("work", i) // through node 0
		f := c.take()
		require.Equal(t, j.ID, f.Job.ID)
		if kind == hub.TransportWebsocket {
			require.Equal(t, "done", c.release(j.ID).Status)
			continue
		}
		// posted to node A, which forwards to node B
		r := c.post(0, map[string]any{"type": "release", "id": "x", "job": j.ID}, map[string]any{"type": "ping", "id": "y"})
		require.Equal(t, "released", r[0].Type, "%+v", r[0])
		require.Equal(t, "done", r[0].Job.Status)
		require.Equal(t, "pong", r[1].Type)
	}
	if kind == hub.TransportLongPoll {
		// a poll through node A takes what node B queued
		c.drop()
		c2 := e.open(kind, 1, c.token)
		c2.cancel() // stop its own poller: polls go through node A below
		<-c2.ended
		j := e.enqueue("work", "via A")
		var got []json.RawMessage
		deadline := time.Now().Add(5 * time.Second)
		for len(got) == 0 && time.Now().Before(deadline) {
			c2.node = 0
			frames, status, err := c2.pollOnce(context.Background(), "1s")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status)
			got = frames
		}
		require.Len(t, got, 1)
		var f WsFrame
		require.NoError(t, json.Unmarshal(got[0], &f))
		require.Equal(t, j.ID, f.Job.ID)
	}
}
