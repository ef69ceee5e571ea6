package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/semaphored/semaphored/store"
)

// Calls on a session by id over plain HTTP (SPEC §6 "Fallback
// transports"): posted client frames, polls, and the end of a session.
// Any instance takes them: one that does not hold the session hands the
// call over the node bus to the one that does (msgSessionOp), and relays
// its answer.

// Errors of Post, Poll and End; both wrap store.ErrSessionNotFound.
var (
	// ErrNotConnected: the session is not connected on any instance (it
	// is lost: resume it), or unknown, or another tenant's.
	ErrNotConnected = fmt.Errorf("%w: it is not connected (resume it)", store.ErrSessionNotFound)
	// ErrNotLongPoll: a poll of a session that is not a long-poll one.
	ErrNotLongPoll = fmt.Errorf("%w: not a long-poll session", store.ErrSessionNotFound)
)

// opTimeout bounds a posted call the holding instance runs for another
// instance: an acquire may wait up to a minute.
const opTimeout = 90 * time.Second

// Session operations over the node bus.
const (
	opFrames = "frames"
	opPoll   = "poll"
	opEnd    = "end"
)

type sessionOpBody struct {
	Request string            `json:"request"`
	Op      string            `json:"op"`
	Tenant  string            `json:"tenant"`
	Session string            `json:"session"`
	Frames  []json.RawMessage `json:"frames,omitempty"`
	Wait    time.Duration     `json:"wait,omitempty"` // poll
}

type sessionReplyBody struct {
	Request string            `json:"request"`
	Frames  []json.RawMessage `json:"frames,omitempty"`
	// Missing: the session is not connected on the answering node.
	Missing bool `json:"missing,omitempty"`
	// NotLongPoll: a poll of a session that is not a long-poll one.
	NotLongPoll bool `json:"notLongPoll,omitempty"`
}

// bodyReplies gathers the replies to posted frames, one per frame.
type bodyReplies struct {
	mu     sync.Mutex
	frames []json.RawMessage
	left   int
	done   chan struct{}
}

func newBodyReplies(n int) *bodyReplies {
	r := &bodyReplies{frames: make([]json.RawMessage, n), left: n, done: make(chan struct{})}
	if n == 0 {
		close(r.done)
	}
	return r
}

// result is a copy of the replies so far (nil where none came).
func (r *bodyReplies) result() []json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]json.RawMessage(nil), r.frames...)
}

// bodySlot is the Replier of one posted frame: its first reply is kept.
type bodySlot struct {
	r *bodyReplies
	i int
}

func (b bodySlot) InBody() bool { return true }

func (b bodySlot) Send(frame any) bool {
	raw, err := json.Marshal(frame)
	if err != nil {
		return false
	}
	r := b.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frames[b.i] != nil {
		return false
	}
	r.frames[b.i] = raw
	r.left--
	if r.left == 0 {
		close(r.done)
	}
	return true
}

// handlePosted handles posted frames in order, as the websocket's reader
// would, and waits for their replies (until ctx or the connection ends).
func (s *Session) handlePosted(ctx context.Context, frames []json.RawMessage) []json.RawMessage {
	t, heard := s.tr.(interface{ touch(time.Duration) })
	silence := 3 * s.hub.cfg.Heartbeat
	if heard {
		t.touch(silence)
	}
	r := newBodyReplies(len(frames))
	for i, f := range frames {
		if s.ctx.Err() != nil {
			break
		}
		if s.proto.Handle != nil {
			s.proto.Handle(s.ctx, s, bodySlot{r, i}, f, false)
		}
	}
	select {
	case <-r.done:
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	if heard {
		t.touch(silence)
	}
	return r.result()
}

// local returns the session id of tenant if this instance holds it.
func (h *Hub) local(tenant, id string) *Session {
	s := h.session(id)
	if s == nil || s.tenant != tenant {
		return nil
	}
	return s
}

// Post hands client frames posted over HTTP to the session id of tenant,
// wherever it is connected, and returns their replies in order: one per
// frame, nil where none came before ctx ended or the session's connection
// ended. store.ErrSessionNotFound when the session is not connected on
// any instance (unknown, another tenant's, lost: resume it).
func (h *Hub) Post(ctx context.Context, tenant, id string, frames []json.RawMessage) ([]json.RawMessage, error) {
	if s := h.local(tenant, id); s != nil {
		return s.handlePosted(ctx, frames), nil
	}
	r, err := h.remoteOp(ctx, sessionOpBody{Op: opFrames, Tenant: tenant, Session: id, Frames: frames})
	if err != nil {
		return nil, err
	}
	out := make([]json.RawMessage, len(frames))
	copy(out, r.Frames)
	return out, nil
}

// Poll waits up to wait (at most MaxPollWait) for the frames pushed to a
// long-poll session, wherever it is connected; see Session.poll.
// store.ErrSessionNotFound as for Post, and for a session that is not a
// long-poll one.
func (h *Hub) Poll(ctx context.Context, tenant, id string, wait time.Duration) ([]json.RawMessage, error) {
	wait = min(max(wait, 0), MaxPollWait)
	if s := h.local(tenant, id); s != nil {
		if s.tr.kind() != TransportLongPoll {
			return nil, ErrNotLongPoll
		}
		return raws(s.poll(ctx, wait)), nil
	}
	r, err := h.remoteOp(ctx, sessionOpBody{Op: opPoll, Tenant: tenant, Session: id, Wait: wait})
	if err != nil {
		return nil, err
	}
	return r.Frames, nil
}

// End ends a session for its client, wherever it is connected, as a
// websocket closed normally does: it is removed from the store and
// onSessionLost applies at once. It returns once it is done.
func (h *Hub) End(ctx context.Context, tenant, id string) error {
	if s := h.local(tenant, id); s != nil {
		s.end(ctx)
		return nil
	}
	_, err := h.remoteOp(ctx, sessionOpBody{Op: opEnd, Tenant: tenant, Session: id})
	return err
}

// end closes the connection as the client's end of the session and waits
// for it (ctx bounds the wait).
func (s *Session) end(ctx context.Context) {
	s.close(reasonEnded, websocket.StatusNormalClosure, "session ended by the client")
	select {
	case <-s.done:
	case <-ctx.Done():
	}
}

func raws(b [][]byte) []json.RawMessage {
	out := make([]json.RawMessage, len(b))
	for i, f := range b {
		out[i] = f
	}
	return out
}

// remoteOp runs a session call on the instance holding the session.
func (h *Hub) remoteOp(ctx context.Context, op sessionOpBody) (sessionReplyBody, error) {
	cur, err := h.store.GetSession(ctx, store.SessionParams{Tenant: op.Tenant, Session: op.Session})
	if err != nil {
		return sessionReplyBody{}, err
	}
	if cur.Node == "" || cur.Node == h.node {
		return sessionReplyBody{}, ErrNotConnected
	}
	op.Request = randomID(16)
	ch := make(chan sessionReplyBody, 1)
	h.mu.Lock()
	h.opWaiters[op.Request] = ch
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.opWaiters, op.Request)
		h.mu.Unlock()
	}()
	body, err := json.Marshal(op)
	if err != nil {
		return sessionReplyBody{}, err
	}
	if err := h.store.Publish(ctx, store.NodeMessage{Version: busVersion, From: h.node, To: cur.Node, Type: msgSessionOp, Body: body}); err != nil {
		return sessionReplyBody{}, fmt.Errorf("publishing to node %s: %w", cur.Node, err)
	}
	limit := opTimeout
	if op.Op == opPoll {
		limit = op.Wait
	}
	t := time.NewTimer(limit + h.ackMargin())
	defer t.Stop()
	select {
	case r := <-ch:
		switch {
		case r.NotLongPoll:
			return r, ErrNotLongPoll
		case r.Missing:
			return r, ErrNotConnected
		}
		return r, nil
	case <-t.C:
		return sessionReplyBody{}, fmt.Errorf("node %s did not answer: %w", cur.Node, errNoAck)
	case <-ctx.Done():
		return sessionReplyBody{}, context.Cause(ctx)
	}
}

// answerOp runs a session call another instance handed over, and answers.
func (h *Hub) answerOp(from string, op sessionOpBody) {
	reply := sessionReplyBody{Request: op.Request}
	limit := opTimeout
	if op.Op == opPoll {
		limit = min(max(op.Wait, 0), MaxPollWait)
	}
	ctx, cancel := context.WithTimeout(h.ctx, limit)
	defer cancel()
	s := h.local(op.Tenant, op.Session)
	switch {
	case s == nil:
		reply.Missing = true
	case op.Op == opFrames:
		reply.Frames = s.handlePosted(ctx, op.Frames)
	case op.Op == opPoll:
		if s.tr.kind() != TransportLongPoll {
			reply.NotLongPoll = true
		} else {
			reply.Frames = raws(s.poll(ctx, limit))
		}
	case op.Op == opEnd:
		s.end(ctx)
	default:
		reply.Missing = true
	}
	body, _ := json.Marshal(reply)
	pctx, pcancel := cleanupCtx()
	defer pcancel()
	if err := h.store.Publish(pctx, store.NodeMessage{Version: busVersion, From: h.node, To: from, Type: msgSessionReply, Body: body}); err != nil {
		h.log.Warn("answering a session call failed", "to", from, "err", err)
	}
}

// onSessionReply routes the answer to a remoteOp.
func (h *Hub) onSessionReply(body []byte) {
	var r sessionReplyBody
	if err := json.Unmarshal(body, &r); err != nil {
		return
	}
	h.mu.Lock()
	ch := h.opWaiters[r.Request]
	h.mu.Unlock()
	if ch != nil {
		select {
		case ch <- r:
		default:
		}
	}
}
