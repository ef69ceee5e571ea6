package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/delivery"
	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// ---- environment: one or more nodes (service + hub + server) on one
// memory store with the real clock ----

type wsOptions struct {
	heartbeat  time.Duration
	grace      time.Duration
	ackTimeout time.Duration
	maxMessage int64
	sendQueue  int
	writeTime  time.Duration // the hub's WriteTimeout
	origins    []string
	redis      bool // each node its own Redis store on one shared Redis (else one memory store)
	// wrap, when set, wraps each node's store (a stub of some calls).
	wrap func(store.Store) store.Store
}

type wsNode struct {
	url     string // http://…
	handler http.Handler
	svc     *semaphore.Service
	hub     *hub.Hub
}

type wsEnv struct {
	t      *testing.T
	st     store.Store // node 0's
	nodes  []*wsNode
	admin  string
	worker string
	opKey  store.APIKey // the operator's
	// schemaless: tclients opened from now on do not check the frames
	// they receive against the schema (it costs much for big payloads
	// under the race detector)
	schemaless bool
	hooks      chan webhookCall // jobs received by the webhook receiver
	hook       string           // its URL
}

type webhookCall struct {
	ID      string          `json:"id"`
	Attempt int             `json:"attempt"`
	Payload json.RawMessage `json:"payload"`
}

// setupWS starts n nodes (n ≥ 1) sharing one memory store, or one Redis,
// tenant "acme" with an admin and a worker key, and a webhook receiver.
// On one memory store the job listener is the last node's: every job is
// dispatched by it. On Redis each node has its store and listener.
func setupWS(t *testing.T, n int, o wsOptions) *wsEnv {
	t.Helper()
	if o.heartbeat == 0 {
		o.heartbeat = time.Second
	}
	if o.grace == 0 {
		o.grace = 500 * time.Millisecond
	}
	if o.ackTimeout == 0 {
		o.ackTimeout = 3 * time.Second
	}
	ctx := context.Background()
	var (
		stores []store.Store
		prefix = testredis.Prefix(t)
	)
	for i := range n {
		if !o.redis {
			if i == 0 {
				stores = append(stores, memory.New(memory.Options{}))
			} else {
				stores = append(stores, stores[0])
			}
			continue
		}
		st, err := redisstore.New(testredis.Client(t), redisstore.Options{
			Prefix: prefix, NodeID: "node" + string(rune('A'+i)), Logger: slog.New(slog.DiscardHandler),
		})
		require.NoError(t, err)
		stores = append(stores, st)
	}
	e := &wsEnv{t: t, st: stores[0], hooks: make(chan webhookCall, 100)}

	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c webhookCall
		body, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(body, &c)
		select {
		case e.hooks <- c:
		default:
		}
	}))
	e.hook = rcv.URL
	webhooks, err := delivery.NewWebhookSender(delivery.WebhookConfig{AllowPrivate: true})
	require.NoError(t, err)

	t.Cleanup(func() {
		rcv.Close()
		webhooks.Close()
		for i, st := range stores {
			if i == 0 || o.redis {
				_ = st.Close()
			}
		}
	})
	for i, st := range stores {
		wsHub, err := hub.New(hub.Config{
			Store: st, Node: "node" + string(rune('A'+i)), Logger: testLogger(t),
			Heartbeat: o.heartbeat, Grace: o.grace, AckTimeout: o.ackTimeout, MaxMessageBytes: o.maxMessage,
			SendQueue: o.sendQueue, WriteTimeout: o.writeTime,
		})
		require.NoError(t, err)
		svcStore := st
		if o.wrap != nil {
			svcStore = o.wrap(st)
		}
		svc, err := semaphore.New(semaphore.Config{
			Store: svcStore, SweepInterval: 20 * time.Millisecond, SessionInterval: 20 * time.Millisecond,
			Webhooks: webhooks, Websocket: wsHub, Routing: routing.Options{AllowPrivate: true},
		})
		require.NoError(t, err)
		require.NoError(t, svc.Start(ctx))
		require.NoError(t, wsHub.Start(ctx))
		srv, err := New(Config{Service: svc, Hub: wsHub, AllowedOrigins: o.origins})
		require.NoError(t, err)
		hs := httptest.NewUnstartedServer(srv.Handler())
		// as cmd/semaphored does: websockets must outlive these
		hs.Config.ReadTimeout, hs.Config.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond
		// An idle keep-alive connection would otherwise be closed after
		// ReadTimeout, and a POST the client sends on it just then fails
		// with EOF (it is not retried): the tests' HTTP calls are not what
		// this setup is about.
		hs.Config.IdleTimeout = time.Minute
		hs.Start()
		t.Cleanup(func() {
			wsHub.Stop() // closes the hijacked connections httptest does not track
			hs.Close()
			svc.Stop()
		})
		e.nodes = append(e.nodes, &wsNode{url: hs.URL, handler: srv.Handler(), svc: svc, hub: wsHub})
	}

	svc := e.nodes[0].svc
	operator, err := svc.Bootstrap(ctx, "")
	require.NoError(t, err)
	opKey, err := svc.Authenticate(ctx, operator)
	require.NoError(t, err)
	e.opKey = opKey
	_, _, admin, err := svc.CreateTenant(ctx, opKey, "acme")
	require.NoError(t, err)
	adminKey, err := svc.Authenticate(ctx, admin)
	require.NoError(t, err)
	_, worker, err := svc.CreateKey(ctx, adminKey, store.RoleWorker, "worker")
	require.NoError(t, err)
	e.admin, e.worker = admin, worker
	return e
}

// http is an env of the HTTP helpers (checked against openapi.yaml) on node 0.
func (e *wsEnv) http() *env {
	return &env{t: e.t, url: e.nodes[0].url, admin: e.admin, worker: e.worker}
}

// put creates a semaphore in tenant acme.
func (e *wsEnv) put(name string, cfg map[string]any) { e.http().put(name, cfg) }

// job returns a job over HTTP.
func (e *wsEnv) job(id string) JobJSON {
	var out JobResponse
	e.http().expect(http.StatusOK, "", http.MethodGet, "/v1/jobs/"+id, e.worker, nil).into(&out)
	return out.Job
}

// enqueue enqueues a job over HTTP.
func (e *wsEnv) enqueue(sem string, payload any) JobJSON {
	var out JobResponse
	e.http().expect(http.StatusAccepted, "", http.MethodPost, "/v1/semaphores/"+sem+"/jobs", e.worker,
		map[string]any{"payload": payload}).into(&out)
	return out.Job
}

// inUse is the semaphore's usage.
func (e *wsEnv) inUse(sem string) int64 { return e.http().get(sem).State.InUse }

// eventually waits (bounded) for cond.
func (e *wsEnv) eventually(cond func() bool, msg string) {
	e.t.Helper()
	require.Eventually(e.t, cond, 5*time.Second, 10*time.Millisecond, msg)
}

// ---- a test client ----

type wsClient struct {
	t       *testing.T
	c       *websocket.Conn
	welcome WsFrame
	frames  chan wsRead // filled by the client's reader goroutine
	pushed  []WsFrame   // job frames read before a reply, for the next reads
}

// wsRead is one frame read, or the error that ended the connection.
type wsRead struct {
	f   WsFrame
	raw []byte
	err error
}

func wsURL(httpURL string) string { return "ws" + strings.TrimPrefix(httpURL, "http") + "/v1/ws" }

// dialRaw opens a websocket on node i with the given headers; it returns
// the HTTP status on refusal.
func (e *wsEnv) dialRaw(i int, query string, hdr http.Header) (*websocket.Conn, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, wsURL(e.nodes[i].url)+query, &websocket.DialOptions{HTTPHeader: hdr})
	status := 0
	if resp != nil {
		status = resp.StatusCode
		if resp.Body != nil {
			_ = resp.Body.Close()
		}
	}
	return c, status, err
}

// dial connects a worker to node i and reads its welcome.
func (e *wsEnv) dial(i int) *wsClient {
	e.t.Helper()
	c, _, err := e.dialRaw(i, "", http.Header{"Authorization": {"Bearer " + e.worker}})
	require.NoError(e.t, err)
	return e.client(c)
}

func (e *wsEnv) client(c *websocket.Conn) *wsClient {
	e.t.Helper()
	cl := &wsClient{t: e.t, c: c, frames: make(chan wsRead, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, data, err := c.Read(context.Background())
			var r wsRead
			switch {
			case err != nil:
				r.err = err
			case typ != websocket.MessageText:
				r.err = errors.New("binary frame from the server")
			default:
				r.raw = data
				r.err = json.Unmarshal(data, &r.f)
			}
			cl.frames <- r
			if err != nil {
				return
			}
		}
	}()
	e.t.Cleanup(func() {
		_ = c.CloseNow()
		<-done
	})
	cl.welcome = cl.expect("welcome")
	return cl
}

func (c *wsClient) sendRaw(s string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(c.t, c.c.Write(ctx, websocket.MessageText, []byte(s)))
}

func (c *wsClient) send(v map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(c.t, err)
	c.sendRaw(string(b))
}

// read returns the next frame, failing after 5 s.
func (c *wsClient) read() WsFrame {
	c.t.Helper()
	f, err := c.readWithin(5 * time.Second)
	require.NoError(c.t, err)
	return f
}

// readChecking is read, checking the frame against its schema only when
// check is set: for tests that read many frames of one shape (the check
// costs milliseconds per frame under the race detector).
func (c *wsClient) readChecking(check bool) WsFrame {
	c.t.Helper()
	if len(c.pushed) > 0 {
		f := c.pushed[0]
		c.pushed = c.pushed[1:]
		return f
	}
	select {
	case r := <-c.frames:
		require.NoError(c.t, r.err)
		if check {
			checkFrame(c.t, r.raw)
		}
		return r.f
	case <-time.After(5 * time.Second):
		c.t.Fatal("no frame within 5s")
		return WsFrame{}
	}
}

func (c *wsClient) readWithin(d time.Duration) (WsFrame, error) {
	if len(c.pushed) > 0 {
		f := c.pushed[0]
		c.pushed = c.pushed[1:]
		return f, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-c.frames:
		if r.err != nil {
			c.frames <- r // the connection stays ended for later reads
		} else {
			checkFrame(c.t, r.raw)
		}
		return r.f, r.err
	case <-t.C:
		return WsFrame{}, context.DeadlineExceeded
	}
}

// expect reads the next frame and requires its type.
func (c *wsClient) expect(typ string) WsFrame {
	c.t.Helper()
	f := c.read()
	require.Equal(c.t, typ, f.Type, "frame %+v", f)
	return f
}

// request sends a frame with an id and requires a reply of type typ
// echoing it. A job pushed before the reply (a release dispatches the next
// job to the session it freed, which may overtake the reply) is kept for
// the next read.
func (c *wsClient) request(typ string, v map[string]any) WsFrame {
	c.t.Helper()
	id := "r" + time.Now().Format("150405.000000000")
	v["id"] = id
	c.send(v)
	var pushed []WsFrame
	f := c.read()
	for f.Type == "job" && typ != "job" {
		pushed = append(pushed, f)
		f = c.read()
	}
	c.pushed = append(c.pushed, pushed...)
	require.Equal(c.t, typ, f.Type, "frame %+v", f)
	require.Equal(c.t, id, f.ID)
	return f
}

// errorCode sends a frame and requires an error frame with code.
func (c *wsClient) errorCode(code string, raw string) WsFrame {
	c.t.Helper()
	c.sendRaw(raw)
	f := c.expect("error")
	require.Equal(c.t, code, f.Code, "frame %+v", f)
	require.NotEmpty(c.t, f.Message)
	return f
}

// quiet requires that no frame arrives within d (an absence: bounded).
func (c *wsClient) quiet(d time.Duration) {
	c.t.Helper()
	f, err := c.readWithin(d)
	require.Error(c.t, err, "unexpected frame %+v", f)
	require.ErrorIs(c.t, err, context.DeadlineExceeded)
}

// closeStatus reads until the connection closes and returns its status.
func (c *wsClient) closeStatus() websocket.StatusCode {
	c.t.Helper()
	for {
		_, err := c.readWithin(5 * time.Second)
		if err != nil {
			require.NotErrorIs(c.t, err, context.DeadlineExceeded, "connection still open")
			return websocket.CloseStatus(err)
		}
	}
}

// ---- tests ----

func TestWS_Auth(t *testing.T) {
	e := setupWS(t, 1, wsOptions{origins: []string{"https://app.example.com", "https://*.trusted.example"}})
	h := e.http()

	t.Run("no key", func(t *testing.T) {
		_, status, err := e.dialRaw(0, "", nil)
		require.Error(t, err)
		require.Equal(t, http.StatusUnauthorized, status)
	})
	t.Run("bad key", func(t *testing.T) {
		_, status, err := e.dialRaw(0, "", http.Header{"Authorization": {"Bearer sk_nope"}})
		require.Error(t, err)
		require.Equal(t, http.StatusUnauthorized, status)
	})
	t.Run("worker and admin keys", func(t *testing.T) {
		for _, k := range []string{e.worker, e.admin} {
			c, _, err := e.dialRaw(0, "", http.Header{"Authorization": {"Bearer " + k}})
			require.NoError(t, err)
			cl := e.with(t).client(c)
			require.NotEmpty(t, cl.welcome.Session)
			require.NotEmpty(t, cl.welcome.ResumeToken)
			require.Equal(t, WsProtocol, cl.welcome.Protocol)
			require.Equal(t, Duration(time.Second), *cl.welcome.Heartbeat)
		}
	})
	t.Run("ticket is single use", func(t *testing.T) {
		var tr TicketResponse
		h.with(t).expect(http.StatusCreated, "", http.MethodPost, "/v1/ws/tickets", e.worker, nil).into(&tr)
		require.NotEmpty(t, tr.Ticket)
		require.WithinDuration(t, time.Now().Add(60*time.Second), tr.ExpiresAt, 5*time.Second)
		c, _, err := e.dialRaw(0, "?ticket="+tr.Ticket, nil)
		require.NoError(t, err)
		e.with(t).client(c)
		_, status, err := e.dialRaw(0, "?ticket="+tr.Ticket, nil)
		require.Error(t, err)
		require.Equal(t, http.StatusUnauthorized, status)
		_, status, _ = e.dialRaw(0, "?ticket=wst_unknown", nil)
		require.Equal(t, http.StatusUnauthorized, status)
		h.with(t).expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodPost, "/v1/ws/tickets", "", nil)
	})
	t.Run("origins", func(t *testing.T) {
		auth := "Bearer " + e.worker
		_, status, err := e.dialRaw(0, "", http.Header{"Authorization": {auth}, "Origin": {"https://evil.example"}})
		require.Error(t, err)
		require.Equal(t, http.StatusForbidden, status)
		// a refused origin does not spend a ticket
		var tr TicketResponse
		h.with(t).expect(http.StatusCreated, "", http.MethodPost, "/v1/ws/tickets", e.worker, nil).into(&tr)
		_, status, _ = e.dialRaw(0, "?ticket="+tr.Ticket, http.Header{"Origin": {"https://evil.example"}})
		require.Equal(t, http.StatusForbidden, status)
		for _, o := range []string{e.nodes[0].url, "https://app.example.com", "https://x.trusted.example"} {
			c, _, err := e.dialRaw(0, "", http.Header{"Authorization": {auth}, "Origin": {o}})
			require.NoError(t, err, o)
			e.with(t).client(c)
		}
		c, _, err := e.dialRaw(0, "?ticket="+tr.Ticket, http.Header{"Origin": {"https://app.example.com"}})
		require.NoError(t, err)
		e.with(t).client(c)
	})
}

func (e *wsEnv) with(t *testing.T) *wsEnv {
	c := *e
	c.t = t
	return &c
}

func TestWS_Frames(t *testing.T) {
	e := setupWS(t, 1, wsOptions{})
	e.put("db", map[string]any{"maxValue": 1})
	c := e.dial(0)

	t.Run("ping", func(t *testing.T) {
		c.t = t
		c.request("pong", map[string]any{"type": "ping"})
	})
	t.Run("acquire extend release", func(t *testing.T) {
		c.t = t
		f := c.request("acquired", map[string]any{"type": "acquire", "semaphore": "db", "ttl": "10s"})
		require.NotNil(t, f.Lease)
		require.Equal(t, "db", f.Lease.Semaphore)
		require.EqualValues(t, 1, e.with(t).inUse("db"))
		sess, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: c.welcome.Session})
		require.NoError(t, err)
		require.Equal(t, []string{f.Lease.ID}, sess.Leases, "the lease is bound to the session")

		r := c.request("rejected", map[string]any{"type": "acquire", "semaphore": "db"})
		require.Equal(t, CodeNoPermit, r.Error.Code)
		r = c.request("rejected", map[string]any{"type": "acquire", "semaphore": "nope"})
		require.Equal(t, CodeSemaphoreNotFound, r.Error.Code)

		x := c.request("extended", map[string]any{"type": "extend", "lease": f.Lease.ID, "ttl": "20s"})
		require.True(t, x.Lease.ExpiresAt.After(f.Lease.ExpiresAt))
		rel := c.request("released", map[string]any{"type": "release", "lease": f.Lease.ID})
		require.Equal(t, f.Lease.ID, rel.Lease.ID)
		require.EqualValues(t, 0, e.with(t).inUse("db"))
		c.errorCode(CodeLeaseNotFound, `{"type":"release","id":"x","lease":"`+f.Lease.ID+`"}`)
		c.errorCode(CodeLeaseNotFound, `{"type":"extend","lease":"nope","ttl":"5s"}`)
	})
	t.Run("acquire waits", func(t *testing.T) {
		c.t = t
		l := e.with(t).http().acquire("db", map[string]any{})
		c.send(map[string]any{"type": "acquire", "id": "w", "semaphore": "db", "wait": "5s"})
		c.request("pong", map[string]any{"type": "ping"}) // the wait does not block the connection
		e.with(t).http().expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l.ID+"/release", e.worker, nil)
		f := c.expect("acquired")
		require.Equal(t, "w", f.ID)
		c.request("released", map[string]any{"type": "release", "lease": f.Lease.ID})
	})
	t.Run("enqueue", func(t *testing.T) {
		c.t = t
		f := c.request("enqueued", map[string]any{"type": "enqueue", "semaphore": "db", "payload": map[string]any{"n": 1}})
		require.NotNil(t, f.Job)
		require.JSONEq(t, `{"n":1}`, string(f.Job.Payload))
		c.errorCode(CodeSemaphoreNotFound, `{"type":"enqueue","semaphore":"nope","payload":1}`)
		c.errorCode(CodeInvalidRequest, `{"type":"enqueue","semaphore":"db"}`)
		require.Equal(t, "scheduled", f.Job.Status, "no worker yet: it waits")
		e.http().jobAction(f.Job.ID, "cancel") // not pushed to the subscription below
	})
	t.Run("subscribe unsubscribe", func(t *testing.T) {
		c.t = t
		f := c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "db", "prefetch": 3})
		require.Equal(t, 3, f.Prefetch)
		subs, err := e.st.Subscribers(context.Background(), "acme", "db", "default")
		require.NoError(t, err)
		require.Len(t, subs, 1)
		require.Equal(t, c.welcome.Session, subs[0].Session)
		c.request("unsubscribed", map[string]any{"type": "unsubscribe", "semaphore": "db"})
		c.errorCode(CodeNotSubscribed, `{"type":"unsubscribe","semaphore":"db"}`)
		c.errorCode(CodeSemaphoreNotFound, `{"type":"subscribe","semaphore":"nope"}`)
		c.errorCode(CodeInvalidRequest, `{"type":"subscribe","semaphore":"db","prefetch":0}`)
		c.errorCode(CodeInvalidRequest, `{"type":"subscribe","semaphore":"db","channel":"bad channel"}`)
	})
	t.Run("wrong ids", func(t *testing.T) {
		c.t = t
		c.errorCode(CodeJobNotFound, `{"type":"ack","job":"nope"}`)
		c.errorCode(CodeJobNotFound, `{"type":"release","job":"nope"}`)
		c.errorCode(CodeSessionNotFound, `{"type":"resume","token":"nope"}`)
		c.errorCode(CodeInvalidRequest, `{"type":"release"}`)
		c.errorCode(CodeInvalidRequest, `{"type":"release","lease":"a","job":"b"}`)
	})
}

func TestWS_HostileFrames(t *testing.T) {
	e := setupWS(t, 1, wsOptions{maxMessage: 4096})
	e.put("db", map[string]any{"maxValue": 1})
	c := e.dial(0)
	for _, tc := range []struct{ code, frame string }{
		{CodeInvalidJSON, `{"type":`},
		{CodeInvalidJSON, `not json`},
		{CodeInvalidJSON, `[1,2]`},
		{CodeInvalidJSON, `{"type":7}`},
		{CodeInvalidJSON, `{"type":"ping","id":7}`},
		{CodeInvalidRequest, `{"id":"x"}`},
		{CodeUnknownFrame, `{"type":"explode"}`},
		{CodeInvalidJSON, `{"type":"ping","extra":1}`},
		{CodeInvalidJSON, `{"type":"acquire","semaphore":"db","weight":"x"}`},
		{CodeInvalidJSON, `{"type":"acquire","semaphore":"db","ttl":5}`},
		{CodeInvalidJSON, `{"type":"acquire","semaphore":"db","ttl":"forever"}`},
		{CodeInvalidJSON, `{"type":"subscribe","semaphore":["db"]}`},
		{CodeInvalidJSON, `{"type":"ping","type":"ping"}`},
		{CodeInvalidJSON, `{"type":"ping"} {"type":"ping"}`},
	} {
		f := c.errorCode(tc.code, tc.frame)
		if strings.Contains(tc.frame, `"id":"x"`) {
			require.Equal(t, "x", f.ID)
		}
	}
	r := c.request("rejected", map[string]any{"type": "acquire", "semaphore": "db", "weight": -1})
	require.Equal(t, CodeInvalidRequest, r.Error.Code)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.c.Write(ctx, websocket.MessageBinary, []byte(`{"type":"ping"}`)))
	require.Equal(t, CodeInvalidJSON, c.expect("error").Code)
	c.request("pong", map[string]any{"type": "ping"}) // still up

	// a frame over the limit closes the connection with 1009
	c.sendRaw(`{"type":"ping","id":"` + strings.Repeat("x", 5000) + `"}`)
	require.Equal(t, websocket.StatusMessageTooBig, c.closeStatus())
	require.EqualValues(t, 0, e.inUse("db"))
}

func TestWS_HeartbeatTimeout(t *testing.T) {
	e := setupWS(t, 1, wsOptions{heartbeat: 300 * time.Millisecond, grace: 10 * time.Second})
	c := e.dial(0)
	require.Equal(t, Duration(300*time.Millisecond), *c.welcome.Heartbeat)
	start := time.Now()
	require.Equal(t, websocket.StatusPolicyViolation, c.closeStatus())
	require.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond) // 900ms from the upgrade, the welcome came after
	e.eventually(func() bool {
		sess, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: c.welcome.Session})
		return err == nil && !sess.LostAt.IsZero()
	}, "the session is lost (resumable), not ended")

	// pings keep a connection up
	c2 := e.dial(0)
	for range 12 {
		c2.request("pong", map[string]any{"type": "ping"})
		c2.quiet(100 * time.Millisecond) // 12 × 100ms > 3 heartbeats
	}
}

func TestWS_JobPushAckRelease(t *testing.T) {
	e := setupWS(t, 1, wsOptions{})
	e.put("work", map[string]any{"maxValue": 5})
	c := e.dial(0)
	c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work", "prefetch": 2})
	var ids []string
	for i := range 5 {
		ids = append(ids, e.enqueue("work", map[string]any{"i": i}).ID)
	}
	pushed := map[string]bool{}
	take := func() WsFrame {
		f := c.expect("job")
		require.NotNil(t, f.Job)
		require.NotNil(t, f.Job.Lease)
		require.False(t, pushed[f.Job.ID], "job pushed twice")
		pushed[f.Job.ID] = true
		c.send(map[string]any{"type": "ack", "job": f.Job.ID})
		return f
	}
	first, second := take(), take()
	c.quiet(300 * time.Millisecond) // prefetch 2: nothing more until a release
	e.eventually(func() bool { return e.job(first.Job.ID).Status == "inflight" && e.job(first.Job.ID).Route != nil }, "delivered")
	require.Equal(t, "websocket", *e.job(first.Job.ID).Route)

	for n := 2; n < 5; n++ {
		rel := c.request("released", map[string]any{"type": "release", "job": first.Job.ID})
		require.Equal(t, "done", rel.Job.Status)
		first, second = second, take()
		c.quiet(100 * time.Millisecond)
	}
	c.request("released", map[string]any{"type": "release", "job": first.Job.ID})
	c.request("released", map[string]any{"type": "release", "job": second.Job.ID})
	for _, id := range ids {
		require.True(t, pushed[id])
		require.Equal(t, "done", e.job(id).Status)
	}
	require.EqualValues(t, 0, e.inUse("work"))
}

func TestWS_NoAckMovesOn(t *testing.T) {
	e := setupWS(t, 1, wsOptions{ackTimeout: 300 * time.Millisecond})
	e.put("work", map[string]any{"maxValue": 2, "routes": []any{
		map[string]any{"type": "websocket"},
		map[string]any{"type": "https", "url": e.hook},
	}})
	c := e.dial(0)
	c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work"})
	j := e.enqueue("work", "hello")
	f := c.expect("job")
	require.Equal(t, j.ID, f.Job.ID)
	// no ack: after AckTimeout the job goes on to the https route
	select {
	case call := <-e.hooks:
		require.Equal(t, j.ID, call.ID)
	case <-time.After(5 * time.Second):
		t.Fatal("the job did not reach the https route")
	}
	e.eventually(func() bool { r := e.job(j.ID).Route; return r != nil && *r == "https" }, "route https")
	// A worker that does not ack a job it had room for is closed (it may
	// resume), so that no more jobs wait on it.
	require.Equal(t, websocket.StatusPolicyViolation, c.closeStatus())
}

func TestWS_SessionLost(t *testing.T) {
	forStores(t, testSessionLost)
}

func testSessionLost(t *testing.T, redis bool) {
	setup := func(t *testing.T, onLost string) (*wsEnv, *wsClient, JobJSON) {
		e := setupWS(t, 1, wsOptions{grace: 300 * time.Millisecond, redis: redis})
		e.put("work", map[string]any{"maxValue": 1, "onSessionLost": onLost, "maxAttempts": 3, "routes": []any{
			map[string]any{"type": "websocket"},
			map[string]any{"type": "https", "url": e.hook},
		}})
		c := e.dial(0)
		c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work"})
		j := e.enqueue("work", "x")
		f := c.expect("job")
		require.Equal(t, j.ID, f.Job.ID)
		require.Equal(t, 1, f.Job.Attempts)
		c.send(map[string]any{"type": "ack", "job": j.ID})
		e.eventually(func() bool { r := e.job(j.ID).Route; return r != nil && *r == "websocket" }, "delivered")
		return e, c, j
	}

	t.Run("redeliver", func(t *testing.T) {
		e, c, j := setup(t, "redeliver")
		_ = c.c.CloseNow()
		select {
		case call := <-e.hooks:
			require.Equal(t, j.ID, call.ID)
			require.Equal(t, 1, call.Attempt, "redelivered with its permit, same attempt")
		case <-time.After(5 * time.Second):
			t.Fatal("the job was not redelivered to the https route")
		}
		e.eventually(func() bool { r := e.job(j.ID).Route; return r != nil && *r == "https" }, "route https")
		require.EqualValues(t, 1, e.inUse("work"), "the permit is kept")
	})
	t.Run("release", func(t *testing.T) {
		e, c, j := setup(t, "release")
		other := e.dial(0) // takes the job when it is scheduled again
		other.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work"})
		_ = c.c.CloseNow()
		f := other.expect("job")
		require.Equal(t, j.ID, f.Job.ID)
		require.Equal(t, 2, f.Job.Attempts, "the loss counted an attempt")
		other.send(map[string]any{"type": "ack", "job": j.ID})
		other.request("released", map[string]any{"type": "release", "job": j.ID})
		require.Equal(t, "done", e.job(j.ID).Status)
		require.EqualValues(t, 0, e.inUse("work"))
	})
	t.Run("wait", func(t *testing.T) {
		e, c, j := setup(t, "wait")
		_ = c.c.CloseNow()
		e.eventually(func() bool {
			_, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: c.welcome.Session})
			return errors.Is(err, store.ErrSessionNotFound)
		}, "session ended")
		require.Equal(t, "inflight", e.job(j.ID).Status)
		require.Equal(t, "websocket", *e.job(j.ID).Route)
		select {
		case call := <-e.hooks:
			t.Fatalf("job redelivered: %+v", call)
		default:
		}
	})
}

func TestWS_Resume(t *testing.T) {
	t.Run("within grace keeps leases and subscriptions", func(t *testing.T) {
		e := setupWS(t, 1, wsOptions{grace: 300 * time.Millisecond})
		e.put("db", map[string]any{"maxValue": 1})
		c := e.dial(0)
		l := c.request("acquired", map[string]any{"type": "acquire", "semaphore": "db", "ttl": "1h"}).Lease
		c.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "db"})
		_ = c.c.CloseNow()

		c2 := e.dial(0)
		r := c2.request("resumed", map[string]any{"type": "resume", "token": c.welcome.ResumeToken})
		require.Equal(t, c.welcome.Session, r.Session)
		require.Equal(t, []string{l.ID}, r.Leases)
		require.Len(t, r.Subscriptions, 1)
		_, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: c2.welcome.Session})
		require.ErrorIs(t, err, store.ErrSessionNotFound, "the fresh session of the resuming connection ended")
		subs, err := e.st.Subscribers(context.Background(), "acme", "db", "default")
		require.NoError(t, err)
		require.Len(t, subs, 1, "subscribed again")
		// connected again: past the grace its lease lives on
		c2.quiet(600 * time.Millisecond)
		require.EqualValues(t, 1, e.inUse("db"))
		sess, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: r.Session})
		require.NoError(t, err)
		require.True(t, sess.LostAt.IsZero())
		c2.request("released", map[string]any{"type": "release", "lease": l.ID})
		// resume is only for a fresh connection
		c2.errorCode(CodeInvalidState, `{"type":"resume","token":"`+c.welcome.ResumeToken+`"}`)
	})
	t.Run("takes over a connection still open", func(t *testing.T) {
		e := setupWS(t, 1, wsOptions{})
		c := e.dial(0)
		c2 := e.dial(0)
		c2.request("resumed", map[string]any{"type": "resume", "token": c.welcome.ResumeToken})
		require.Equal(t, websocket.StatusCode(hub.CloseResumed), c.closeStatus())
		c2.request("pong", map[string]any{"type": "ping"})
	})
	t.Run("after grace the lease is released", func(t *testing.T) {
		e := setupWS(t, 1, wsOptions{grace: 200 * time.Millisecond})
		e.put("db", map[string]any{"maxValue": 1})
		c := e.dial(0)
		c.request("acquired", map[string]any{"type": "acquire", "semaphore": "db", "ttl": "1h"})
		_ = c.c.CloseNow()
		e.eventually(func() bool { return e.inUse("db") == 0 }, "lease released after the grace")
		c2 := e.dial(0)
		c2.errorCode(CodeSessionNotFound, `{"type":"resume","token":"`+c.welcome.ResumeToken+`"}`)
	})
	t.Run("normal close gives the session up at once", func(t *testing.T) {
		e := setupWS(t, 1, wsOptions{grace: time.Hour})
		e.put("db", map[string]any{"maxValue": 1})
		c := e.dial(0)
		c.request("acquired", map[string]any{"type": "acquire", "semaphore": "db", "ttl": "1h"})
		require.NoError(t, c.c.Close(websocket.StatusNormalClosure, "bye"))
		e.eventually(func() bool { return e.inUse("db") == 0 }, "lease released at once")
	})
}

// A session dropped on node A resumes on node B with its lease.
func TestWS_ResumeAcrossNodes(t *testing.T) {
	forStores(t, func(t *testing.T, redis bool) {
		e := setupWS(t, 2, wsOptions{grace: 2 * time.Second, redis: redis})
		e.put("db", map[string]any{"maxValue": 1})
		c := e.dial(0)
		l := c.request("acquired", map[string]any{"type": "acquire", "semaphore": "db"}).Lease
		_ = c.c.CloseNow()
		c2 := e.dial(1)
		r := c2.request("resumed", map[string]any{"type": "resume", "token": c.welcome.ResumeToken})
		require.Equal(t, []string{l.ID}, r.Leases)
		sess, err := e.st.GetSession(context.Background(), store.SessionParams{Tenant: "acme", Session: r.Session})
		require.NoError(t, err)
		require.Equal(t, "nodeB", sess.Node)
		c2.request("released", map[string]any{"type": "release", "lease": l.ID})
	})
}

// forStores runs f on one memory store and on Redis.
func forStores(t *testing.T, f func(t *testing.T, redis bool)) {
	t.Run("memory", func(t *testing.T) { f(t, false) })
	t.Run("redis", func(t *testing.T) { f(t, true) })
}

func TestWS_TwoNodes(t *testing.T) {
	forStores(t, testTwoNodes)
}

func testTwoNodes(t *testing.T, redis bool) {
	e := setupWS(t, 2, wsOptions{redis: redis})
	e.put("work", map[string]any{"maxValue": 4})
	// One worker on each node; the store's job listener is the last
	// service's (node B), so jobs reach node A's worker over the bus.
	a, b := e.dial(0), e.dial(1)
	a.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work"})
	b.request("subscribed", map[string]any{"type": "subscribe", "semaphore": "work"})
	var mu sync.Mutex
	got := map[string]string{}
	j1, j2 := e.enqueue("work", 1), e.enqueue("work", 2)
	for _, c := range []*wsClient{a, b} {
		f := c.expect("job") // prefetch 1: each worker gets one
		c.send(map[string]any{"type": "ack", "job": f.Job.ID})
		mu.Lock()
		got[f.Job.ID] = c.welcome.Session
		mu.Unlock()
	}
	require.Len(t, got, 2)
	require.Contains(t, got, j1.ID)
	require.Contains(t, got, j2.ID)
	for id := range got {
		e.eventually(func() bool { r := e.job(id).Route; return r != nil && *r == "websocket" }, "delivered")
	}
	for _, c := range []*wsClient{a, b} {
		for id, s := range got {
			if s == c.welcome.Session {
				c.request("released", map[string]any{"type": "release", "job": id})
			}
		}
	}
	require.EqualValues(t, 0, e.inUse("work"))
}

// testLogger logs through t.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// checkFrame validates a server frame against WsServerFrame of
// api/openapi.yaml, and a pushed job against Job.
func checkFrame(t *testing.T, raw []byte) {
	t.Helper()
	doc, _ := loadSpec(t)
	var v map[string]any
	require.NoError(t, json.Unmarshal(raw, &v))
	opts := openapi3.EnableJSONSchema2020()
	require.NoError(t, doc.Components.Schemas["WsServerFrame"].Value.VisitJSON(v, opts), "frame %s", raw)
	if job, ok := v["job"]; ok {
		require.NoError(t, doc.Components.Schemas["Job"].Value.VisitJSON(job, opts), "job of frame %s", raw)
	}
}
