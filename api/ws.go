package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/store"
)

// This file serves the websocket protocol of README "Websocket workers": GET /v1/ws (the
// upgrade, its auth and origin check, and every client frame) and POST
// /v1/ws/tickets. The connection, its session, job pushes and acks are
// hub.Hub's; here is the request/reply protocol on top.

// WsProtocol is the protocol version announced in welcome.
const WsProtocol = 1

// createTicket serves POST /v1/ws/tickets.
func (s *Server) createTicket(c echo.Context) error {
	if err := decodeBody(c, s.maxBody, &struct{}{}, true); err != nil {
		return err
	}
	secret, exp, err := s.svc.CreateTicket(c.Request().Context(), callerKey(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, TicketResponse{Ticket: secret, ExpiresAt: exp.UTC()})
}

// authenticateWS checks the origin (before anything else, so a foreign
// page cannot even spend a ticket), then the key: the Authorization header
// or a ticket. Any role may open a websocket.
func (s *Server) authenticateWS(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if !s.originAllowed(r) {
			return errorf(CodeForbidden, "origin %q may not open a websocket here (see --allowed-origins)", shorten(r.Header.Get("Origin"), 200))
		}
		var (
			k   store.APIKey
			err error
		)
		if h := r.Header.Get(echo.HeaderAuthorization); h != "" {
			secret, ok := cutBearer(h)
			if !ok {
				return errorf(CodeUnauthorized, "malformed Authorization header: send Authorization: Bearer sk_…")
			}
			k, err = s.svc.Authenticate(r.Context(), secret)
		} else if t := c.QueryParam("ticket"); t != "" {
			k, err = s.svc.RedeemTicket(r.Context(), t)
		} else {
			return errorf(CodeUnauthorized, "missing API key: send Authorization: Bearer sk_… or ?ticket= from POST /v1/ws/tickets")
		}
		if errors.Is(err, store.ErrKeyNotFound) {
			return errorf(CodeUnauthorized, "unknown or revoked API key, or unknown, used or expired ticket")
		}
		if err != nil {
			return err
		}
		return next(&keyContext{Context: c, key: k})
	}
}

// originAllowed: no Origin (not a browser), the server's own origin, or one
// matching --allowed-origins ("*", an exact scheme://host[:port], or a
// path.Match pattern such as https://*.example.com).
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	o := strings.ToLower(u.Scheme + "://" + u.Host)
	for _, p := range s.origins {
		if p == "*" || p == o {
			return true
		}
		if ok, _ := path.Match(p, o); ok {
			return true
		}
	}
	return false
}

// serveWS upgrades GET /v1/ws and runs the session until it ends.
func (s *Server) serveWS(c echo.Context) error {
	// The http.Server's read and write timeouts were set on the connection
	// for this request; a websocket lives on, under its own heartbeat and
	// write timeouts.
	rc := http.NewResponseController(c.Response())
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	conn, err := hub.Accept(c.Response(), c.Request(), &websocket.AcceptOptions{
		InsecureSkipVerify: true, // the origin was checked by authenticateWS
	})
	if err != nil {
		return nil // Accept answered the request (400, 426, ...)
	}
	p := s.sessionParams(c, "")
	// The connection is the hub's now: the handler returns, so that this
	// request's goroutine, its deep stack and net/http's state for it are
	// freed while the session lives on (an idle session costs less). The
	// session's context keeps the request's values, not its end; the hub
	// tracks the session until it ends (Hub.Stop waits for it).
	ctx := context.WithoutCancel(c.Request().Context())
	go func() {
		if err := s.hub.Serve(ctx, conn, p); err != nil && !errors.Is(err, hub.ErrStopped) {
			s.log.Warn("websocket session failed", "err", err)
		}
	}()
	return nil
}

// sessionParams are the callbacks of a session opened by the request c,
// resuming the session of the token resume if it is set.
func (s *Server) sessionParams(c echo.Context, resume string) hub.ServeParams {
	k := callerKey(c)
	w := &wsConn{srv: s, tenant: k.Tenant}
	return hub.ServeParams{
		Tenant: k.Tenant,
		KeyID:  k.ID,
		Open:   w.opener(c.Request().Context(), resume),
		Handle: w.handle,
		End:    s.svc.SessionLost,
	}
}

// wsConn is the protocol state of one connection.
type wsConn struct {
	srv    *Server
	tenant string
}

// opener returns the Open callback of a session: it sends welcome, or,
// with a resume token (SSE and long-poll may resume as they open), it
// resumes that session and sends resumed.
func (w *wsConn) opener(ctx context.Context, resume string) func(sess *hub.Session, out hub.Replier, resumeToken string) error {
	return func(sess *hub.Session, out hub.Replier, resumeToken string) error {
		if resume != "" {
			old, err := sess.Resume(ctx, resume)
			if err != nil {
				return err
			}
			out.Send(w.resumedFrame("", old))
			return nil
		}
		out.Send(WsFrame{
			Type: "welcome", Session: sess.ID(), ResumeToken: resumeToken,
			Heartbeat: new(Duration(w.srv.hub.Heartbeat())), Protocol: WsProtocol,
		})
		return nil
	}
}

// resumedFrame is the reply to a resume: the session and what it holds,
// and the heartbeat (a session resumed as it opens has no welcome).
func (w *wsConn) resumedFrame(id string, old store.Session) WsFrame {
	f := WsFrame{Type: "resumed", ID: id, Session: old.ID, Leases: old.Leases, Jobs: old.Jobs,
		Heartbeat: new(Duration(w.srv.hub.Heartbeat()))}
	for _, sub := range old.Subscriptions {
		f.Subscriptions = append(f.Subscriptions, WsSubscriptionJSON{Semaphore: sub.Semaphore, Channel: sub.Channel, Prefetch: sub.Prefetch})
	}
	return f
}

// wsHandlers are the client frame types.
var wsHandlers = map[string]func(w *wsConn, ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte){
	"resume":      (*wsConn).resume,
	"ping":        (*wsConn).ping,
	"acquire":     (*wsConn).acquire,
	"extend":      (*wsConn).extend,
	"release":     (*wsConn).release,
	"fail":        (*wsConn).failJob,
	"subscribe":   (*wsConn).subscribe,
	"unsubscribe": (*wsConn).unsubscribe,
	"ack":         (*wsConn).ack,
	"enqueue":     (*wsConn).enqueue,
}

// handle answers one client frame. A bad frame gets an error frame; the
// session stays up.
func (w *wsConn) handle(ctx context.Context, sess *hub.Session, out hub.Replier, data []byte, binary bool) {
	if binary {
		w.fail(out, "", errorf(CodeInvalidJSON, "frames must be JSON text, got a binary frame"))
		return
	}
	var head struct {
		Type string `json:"type"`
		ID   string `json:"id"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		w.fail(out, "", jsonError(err))
		return
	}
	if head.Type == "" {
		w.fail(out, head.ID, errorf(CodeInvalidRequest, "type is required"))
		return
	}
	h, ok := wsHandlers[head.Type]
	if !ok {
		w.fail(out, head.ID, errorf(CodeUnknownFrame, "unknown frame type %q", shorten(head.Type, 64)))
		return
	}
	h(w, ctx, sess, out, head.ID, data)
}

// decode decodes a frame strictly (unknown fields, wrong types): on error
// it answers with an error frame and returns false.
func (w *wsConn) decode(out hub.Replier, id string, data []byte, v any) bool {
	if err := decodeJSON(data, v); err != nil {
		w.fail(out, id, err)
		return false
	}
	return true
}

// fail answers an error frame {code, message}.
func (w *wsConn) fail(out hub.Replier, id string, err error) {
	code, message := w.classify(err)
	out.Send(WsFrame{Type: "error", ID: id, Code: code, Message: message})
}

// classify maps an error to its wire code, as the HTTP API does.
func (w *wsConn) classify(err error) (code, message string) {
	switch {
	case errors.Is(err, store.ErrSessionNotFound):
		return CodeSessionNotFound, "session not found: unknown resume token, or its grace period ran out"
	case errors.Is(err, hub.ErrSessionBusy):
		return CodeInvalidState, "resume must be the first request of a connection, before it acquires, subscribes or takes jobs"
	case errors.Is(err, hub.ErrNotSubscribed):
		return CodeNotSubscribed, "this session is not subscribed to that semaphore and channel"
	}
	status, code, message := classify(err)
	if status >= 500 {
		w.srv.log.LogAttrs(context.Background(), slog.LevelError, "websocket request failed",
			slog.String("code", code), slog.Any("err", err))
	}
	return code, message
}

func (w *wsConn) resume(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsResumeFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	if req.Token == "" {
		w.fail(out, id, errorf(CodeInvalidRequest, "token is required"))
		return
	}
	old, err := sess.Resume(ctx, req.Token)
	if err != nil {
		w.fail(out, id, err)
		return
	}
	out.Send(w.resumedFrame(id, old))
}

func (w *wsConn) ping(_ context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsPingFrame
	if w.decode(out, id, data, &req) {
		out.Send(WsFrame{Type: "pong", ID: id})
	}
}

func (w *wsConn) acquire(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsAcquireFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	in := AcquireRequest{Channel: req.Channel, Weight: req.Weight, TTL: req.TTL, Wait: req.Wait}.input()
	run := func(ctx context.Context) {
		l, err := w.srv.svc.AcquireOverSession(ctx, w.tenant, req.Semaphore, in, sess)
		if err != nil {
			if ctx.Err() != nil {
				return // the connection ended while waiting
			}
			code, message := w.classify(err)
			out.Send(WsFrame{Type: "rejected", ID: id, Error: &WsErrorJSON{Code: code, Message: message, RetryAfter: retryAfter(err)}})
			return
		}
		sess.LeaseAcquired(l.ID)
		out.Send(WsFrame{Type: "acquired", ID: id, Lease: new(leaseJSON(l))})
	}
	if in.Wait == nil || *in.Wait <= 0 {
		sess.Run(run)
		return
	}
	if !sess.Go(run) {
		w.fail(out, id, errorf(CodeRateLimited, "too many acquires waiting on this connection"))
	}
}

func (w *wsConn) extend(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsExtendFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	switch {
	case req.Lease == "":
		w.fail(out, id, errorf(CodeInvalidRequest, "lease is required"))
		return
	case req.TTL == nil:
		w.fail(out, id, errorf(CodeInvalidRequest, "ttl is required"))
		return
	}
	sess.Run(func(ctx context.Context) {
		l, err := w.srv.svc.Extend(ctx, w.tenant, req.Lease, time.Duration(*req.TTL))
		if err != nil {
			w.fail(out, id, err)
			return
		}
		out.Send(WsFrame{Type: "extended", ID: id, Lease: new(leaseJSON(l))})
	})
}

func (w *wsConn) release(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsReleaseFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	switch {
	case req.Lease != "" && req.Job != "":
		w.fail(out, id, errorf(CodeInvalidRequest, "give lease or job, not both"))
	case req.Lease != "":
		sess.Run(func(ctx context.Context) {
			l, err := w.srv.svc.Release(ctx, w.tenant, req.Lease)
			if err != nil {
				w.fail(out, id, err)
				return
			}
			sess.LeaseReleased(l.ID)
			out.Send(WsFrame{Type: "released", ID: id, Lease: new(leaseJSON(l))})
		})
	case req.Job != "":
		sess.Run(func(ctx context.Context) {
			// An acked job's delivery is recorded first, so it ends done
			// with its route.
			if err := sess.AwaitDelivered(ctx, req.Job); err != nil {
				return // the connection ended
			}
			j, err := w.srv.svc.ReleaseHeldJob(ctx, w.tenant, req.Job, sess.HeldLease(req.Job))
			if err != nil {
				w.fail(out, id, err)
				return
			}
			// the reply goes first: the room it frees may push the next job at once
			out.Send(WsFrame{Type: "released", ID: id, Job: new(jobJSON(j))})
			sess.JobReleased(j.ID)
		})
	default:
		w.fail(out, id, errorf(CodeInvalidRequest, "lease or job is required"))
	}
}

// failJob answers a fail frame: the worker gives up its attempt at a job
// it holds (failed {job}).
func (w *wsConn) failJob(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsFailFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	if req.Job == "" {
		w.fail(out, id, errorf(CodeInvalidRequest, "job is required"))
		return
	}
	retry := req.Retry == nil || *req.Retry
	sess.Run(func(ctx context.Context) {
		if err := sess.AwaitDelivered(ctx, req.Job); err != nil {
			return // the connection ended
		}
		j, err := w.srv.svc.FailJob(ctx, w.tenant, req.Job, sess.HeldLease(req.Job), req.Error, retry)
		if err != nil {
			w.fail(out, id, err)
			return
		}
		out.Send(WsFrame{Type: "failed", ID: id, Job: new(jobJSON(j))})
		sess.JobReleased(j.ID)
	})
}

func (w *wsConn) subscribe(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsSubscribeFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	sub, err := w.srv.svc.CheckSubscription(ctx, w.tenant, req.Semaphore, req.Channel, req.Prefetch)
	if err != nil {
		w.fail(out, id, err)
		return
	}
	if err := sess.Subscribe(ctx, sub); err != nil {
		w.fail(out, id, err)
		return
	}
	out.Send(WsFrame{Type: "subscribed", ID: id, Semaphore: sub.Semaphore, Channel: sub.Channel, Prefetch: sub.Prefetch})
}

func (w *wsConn) unsubscribe(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsUnsubscribeFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	if req.Semaphore == "" {
		w.fail(out, id, errorf(CodeInvalidRequest, "semaphore is required"))
		return
	}
	if err := sess.Unsubscribe(ctx, req.Semaphore, req.Channel); err != nil {
		w.fail(out, id, err)
		return
	}
	out.Send(WsFrame{Type: "unsubscribed", ID: id, Semaphore: req.Semaphore, Channel: req.Channel})
}

// ack has no reply on success on a stream (the push waits for it, not
// the client); in a reply body (posted frames) it answers acked.
func (w *wsConn) ack(_ context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsAckFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	if req.Job == "" {
		w.fail(out, id, errorf(CodeInvalidRequest, "job is required"))
		return
	}
	if !sess.Ack(req.Job) {
		w.fail(out, id, errorf(CodeJobNotFound, "job %q was not pushed to this session, or its ack came too late", shorten(req.Job, 200)))
		return
	}
	if out.InBody() {
		// a reply body has one reply per frame
		out.Send(WsFrame{Type: "acked", ID: id})
	}
}

func (w *wsConn) enqueue(ctx context.Context, sess *hub.Session, out hub.Replier, id string, data []byte) {
	var req WsEnqueueFrame
	if !w.decode(out, id, data, &req) {
		return
	}
	j, _, err := w.srv.svc.Enqueue(ctx, w.tenant, req.Semaphore,
		enqueueInput(req.Channel, req.Payload, req.IdempotencyKey, req.Delay, req.RunAt))
	if err != nil {
		w.fail(out, id, err)
		return
	}
	out.Send(WsFrame{Type: "enqueued", ID: id, Job: new(jobJSON(j))})
}
