package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/wire"
)

// Node bus: one versioned envelope, store.NodeMessage, whose
// Body is the JSON of the message type.
const (
	busVersion = 1

	// msgDeliver asks the node holding a session to push a job to it;
	// the node answers msgAck or msgNack with the same request id.
	msgDeliver = "deliver"
	msgAck     = "ack"
	msgNack    = "nack"
	// msgReserved tells the dispatching node, before the ack, that the
	// session had room for the job: the next job of its order may go.
	msgReserved = "reserved"
	// msgSessionClosed tells every node that a session was resumed by a
	// connection of the sender: another node still holding a connection
	// for it closes that connection (4001).
	msgSessionClosed = "session_closed"
	// msgKeyRevoked tells every node that an API key was revoked: each
	// closes the sessions opened with it (Hub.RevokeKey).
	msgKeyRevoked = "key_revoked"
	// msgSessionOp hands a call on a session (posted frames, a poll, its
	// end) to the node holding it, which answers msgSessionReply with the
	// same request id (post.go).
	msgSessionOp    = "session_op"
	msgSessionReply = "session_reply"
)

type keyRevokedBody struct {
	Tenant string `json:"tenant"`
	Key    string `json:"key"`
}

type deliverBody struct {
	Request   string          `json:"request"`
	Tenant    string          `json:"tenant"`
	Session   string          `json:"session"`
	Semaphore string          `json:"semaphore"`
	Channel   string          `json:"channel"`
	Job       string          `json:"job"`
	Lease     string          `json:"lease"`
	Frame     json.RawMessage `json:"frame"` // the job frame, as the session receives it
	// Bound: the store bound the job to the session at dispatch (offer.bound).
	Bound bool `json:"bound,omitempty"`
}

// replyBody answers a deliver. Reason of a nack: "full" (the session holds
// its prefetch), "gone" (not connected there), "unsubscribed" (a bound
// job's subscription ended meanwhile), "timeout" (no ack).
type replyBody struct {
	Request string `json:"request"`
	Reason  string `json:"reason,omitempty"`
}

type sessionClosedBody struct {
	Tenant  string `json:"tenant"`
	Session string `json:"session"`
}

// nodeReply is an ack (err nil) or a nack, or (reserved) the news that
// the session had room.
type nodeReply struct {
	err      error
	reserved bool
}

type jobFrame struct {
	Type string        `json:"type"`
	Job  wire.JobFrame `json:"job"`
}

// ErrNotPushed is the failure of a push: the job never reached the
// worker its store bound it to (the session is gone, lost, or did not ack
// within AckTimeout). The session is marked lost in the store first, so
// the job, returned to its queue, is not dispatched to it again.
var ErrNotPushed = errors.New("the job did not reach its worker")

// Push delivers a job its store dispatched to a worker (store.Job.Worker:
// the session with room it is bound to, on the node that held it) and
// waits for the session's ack: nil once acked. A session of this node gets
// the job frame directly, a session elsewhere through its node, over the
// bus. Jobs pushed to one session from this node go in their dispatch
// order. An error wraps ErrNotPushed (and the session was marked lost, or
// closed when it did not ack) or is ctx's cause.
func (h *Hub) Push(ctx context.Context, job store.Job, payload json.RawMessage) error {
	w := job.Worker
	if job.Lease == nil || w == nil {
		return errors.New("websocket: job without lease or worker")
	}
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	jf := wire.JobFrame{
		ID: job.ID, Semaphore: job.Semaphore, Channel: job.Channel, Payload: payload,
		Status: string(store.JobInflight), Attempts: job.Attempts, Lease: wire.LeaseFromStore(*job.Lease),
		Route: routing.TypeWebsocket, CreatedAt: job.CreatedAt.UTC(), UpdatedAt: job.UpdatedAt.UTC(),
	}
	if job.Parent != nil {
		jf.Parent = &wire.JobRef{ID: job.Parent.ID, Semaphore: job.Parent.Semaphore, Hold: job.Parent.Hold}
	}
	frame, err := json.Marshal(jobFrame{Type: "job", Job: jf})
	if err != nil {
		return fmt.Errorf("websocket: job frame: %w", err)
	}
	// The jobs of one session take their turns in dispatch order (their
	// lease's fencing token), each until its frame is queued.
	turn := h.queueUp(orderKey{job.Tenant, job.Semaphore, w.Session}, job.Lease.FencingToken)
	defer turn.leave()
	for !turn.first() {
		wake := h.capacityChanged()
		if turn.first() {
			break
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	o := offer{
		tenant: job.Tenant, semaphore: job.Semaphore, channel: w.Channel,
		job: job.ID, lease: job.Lease.ID, frame: frame, placed: turn.leave, stalled: turn.pause, bound: true,
	}
	// lose: the session is not where the store says (ended or moved
	// before its store record caught up, or its node is silent): mark it
	// lost, so that it offers no room until it resumes. A session that
	// closes itself (no ack) is marked lost by its own end.
	node, lose := w.Node, false
	if s := h.pushSession(w.Session); s != nil && s.tenant == job.Tenant {
		node = h.node
		err = h.offerLocal(ctx, w.Session, o)
	} else if node == "" || node == h.node {
		err, lose = errGone, node != ""
	} else {
		err = h.offerRemote(ctx, node, w.Session, o)
		lose = errors.Is(err, errGone) || errors.Is(err, errNodeSilent)
	}
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	// (a session connected elsewhere meanwhile is left as it is)
	if lose {
		lctx, cancel := cleanupCtx()
		defer cancel()
		if lerr := h.store.LoseSession(lctx, store.SessionParams{Tenant: job.Tenant, Session: w.Session, Node: node}, h.cfg.Grace); lerr != nil && !errors.Is(lerr, store.ErrSessionNotFound) {
			h.log.Warn("marking a session that did not take its job lost failed", "session", w.Session, "err", lerr)
		}
	}
	return fmt.Errorf("%w: session %s: %w", ErrNotPushed, w.Session, err)
}

// pushSession is the local session a job is pushed to. One not found may
// be moving here (a resume: the store dispatches to it before this node
// has mapped it): the lookup is made again once moves are done.
func (h *Hub) pushSession(id string) *Session {
	if s := h.session(id); s != nil {
		return s
	}
	h.moving.Lock()
	h.moving.Unlock() // a barrier: waits for a move in progress
	return h.session(id)
}

// offer is one job offered to a session.
type offer struct {
	tenant, semaphore, channel string
	job, lease                 string
	// placed, if set, is called once the session has room for the job
	// (reserved, before the push): the next job of its order may go.
	placed func()
	// stalled, if set, is called when another instance has not answered
	// whether its session has room within reserveWait.
	stalled func()
	frame   []byte
	// bound: the store bound the job to the session at dispatch (it had
	// room there); the push neither checks the prefetch again nor records
	// the delivery. false: a deliver from an earlier build, which picked
	// the session itself.
	bound bool
}

// offerLocal pushes the job to a session of this node and waits for its
// ack (AckTimeout). On ack the job is bound to the session in the store.
func (h *Hub) offerLocal(ctx context.Context, sessionID string, o offer) error {
	s := h.pushSession(sessionID)
	if s == nil || s.tenant != o.tenant {
		return errGone
	}
	p, sub, err := s.reserve(o.semaphore, o.channel, o.job, o.lease, o.bound)
	if err != nil {
		return err
	}
	if o.placed != nil {
		o.placed()
	}
	var fail error
	if !s.sendRaw(o.frame) {
		fail = errGone
	} else {
		t := time.NewTimer(h.cfg.AckTimeout)
		select {
		case <-p.acked:
		case <-t.C:
			fail = errNoAck
		case <-ctx.Done():
			fail = context.Cause(ctx)
		case <-s.ctx.Done():
			fail = errGone
		}
		t.Stop()
	}
	// An ack that raced the failure wins: the client works on the job.
	if !s.settle(o.job, p) {
		if errors.Is(fail, errNoAck) && o.bound {
			// A worker that does not ack what it has room for is broken:
			// it is closed (it may resume) and offered no more jobs.
			s.close(reasonNoAck, ClosePolicy, "no ack within "+h.cfg.AckTimeout.String())
		}
		return fail
	}
	if o.bound {
		s.delivered(o.job, true) // bound in the store at dispatch
		return nil
	}
	// Record the delivery, bound to the session, in the semaphore's own
	// atomic call; a release of the job over the session waits for it.
	bctx, cancel := cleanupCtx()
	defer cancel()
	_, err = h.store.TransitionJob(bctx, store.TransitionParams{
		Tenant: o.tenant, JobID: o.job, Action: store.ActDelivered, Route: routing.TypeWebsocket, LeaseID: o.lease,
		Bind: &store.SessionBinding{Session: s.ID(), Channel: sub.Channel}, Quiet: true,
	})
	switch {
	case err == nil:
		s.delivered(o.job, true)
	case errors.Is(err, store.ErrStaleLease), errors.Is(err, store.ErrInvalidState), errors.Is(err, store.ErrJobNotFound):
		// It moved on meanwhile (expired and retried, cancelled, released
		// over HTTP): nothing of it is the session's any more.
		s.delivered(o.job, false)
	default:
		// The client works on it; its lease bounds the loss of the record.
		h.log.Warn("recording a websocket delivery failed; the job is retried when its lease expires",
			"session", s.ID(), "job", o.job, "err", err)
		s.delivered(o.job, true)
	}
	return nil
}

// reserveWait is how long a delivery keeps its turn while another
// instance answers whether its session has room (a bus round trip takes a
// millisecond or so).
const reserveWait = 100 * time.Millisecond

// ackMargin is how much longer than AckTimeout a remote delivery waits for
// the holding node's answer.
func (h *Hub) ackMargin() time.Duration { return max(h.cfg.AckTimeout/2, 250*time.Millisecond) }

// offerRemote asks the node holding the session to push the job, and
// waits for its ack or nack.
func (h *Hub) offerRemote(ctx context.Context, node, sessionID string, o offer) error {
	req := randomID(16)
	ch := make(chan nodeReply, 2)
	h.mu.Lock()
	h.waiters[req] = ch
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.waiters, req)
		h.mu.Unlock()
	}()
	body, err := json.Marshal(deliverBody{
		Request: req, Tenant: o.tenant, Session: sessionID, Semaphore: o.semaphore, Channel: o.channel,
		Job: o.job, Lease: o.lease, Frame: o.frame, Bound: o.bound,
	})
	if err != nil {
		return err
	}
	if err := h.store.Publish(ctx, store.NodeMessage{Version: busVersion, From: h.node, To: node, Type: msgDeliver, Body: body}); err != nil {
		return fmt.Errorf("publishing to node %s: %w", node, err)
	}
	t := time.NewTimer(h.cfg.AckTimeout + h.ackMargin())
	defer t.Stop()
	stall := time.NewTimer(reserveWait)
	defer stall.Stop()
	for {
		select {
		case <-stall.C:
			if o.stalled != nil {
				o.stalled()
			}
		case r := <-ch:
			if r.reserved {
				if o.placed != nil {
					o.placed()
				}
				continue
			}
			return r.err
		case <-t.C:
			return fmt.Errorf("node %s: %w", node, errNodeSilent)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// onMessage handles one envelope of the node bus. It does not block.
func (h *Hub) onMessage(m store.NodeMessage) {
	if m.Version != busVersion {
		h.log.Warn("node bus message of an unknown version dropped", "version", m.Version, "type", m.Type, "from", m.From)
		return
	}
	switch m.Type {
	case msgDeliver:
		var b deliverBody
		if err := json.Unmarshal(m.Body, &b); err != nil {
			h.log.Warn("bad deliver message", "from", m.From, "err", err)
			return
		}
		h.goTracked(func() { h.answerDeliver(m.From, b) })
	case msgAck, msgNack, msgReserved:
		var b replyBody
		if err := json.Unmarshal(m.Body, &b); err != nil {
			return
		}
		r := nodeReply{reserved: m.Type == msgReserved}
		if m.Type == msgNack {
			switch b.Reason {
			case "full":
				r.err = errFull
			case "gone":
				r.err = errGone
			case "unsubscribed":
				r.err = errNotSubscribed
			default:
				r.err = errNoAck
			}
		}
		h.mu.Lock()
		ch := h.waiters[b.Request]
		h.mu.Unlock()
		if ch != nil {
			select {
			case ch <- r:
			default:
			}
		}
	case msgSessionClosed:
		var b sessionClosedBody
		if m.From == h.node || json.Unmarshal(m.Body, &b) != nil {
			return
		}
		if s := h.session(b.Session); s != nil && s.tenant == b.Tenant {
			s.displace()
		}
	case msgKeyRevoked:
		var b keyRevokedBody
		if m.From == h.node || json.Unmarshal(m.Body, &b) != nil {
			return
		}
		h.closeKey(b.Tenant, b.Key)
	case msgSessionOp:
		var b sessionOpBody
		if err := json.Unmarshal(m.Body, &b); err != nil {
			h.log.Warn("bad session call message", "from", m.From, "err", err)
			return
		}
		h.goTracked(func() { h.answerOp(m.From, b) })
	case msgSessionReply:
		h.onSessionReply(m.Body)
	default:
		h.log.Debug("node bus message of an unknown type dropped", "type", m.Type, "from", m.From)
	}
}

// answerDeliver pushes a job another node dispatched to a local session
// and answers ack or nack.
func (h *Hub) answerDeliver(from string, b deliverBody) {
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.AckTimeout+h.ackMargin())
	defer cancel()
	reserved := func() {
		body, _ := json.Marshal(replyBody{Request: b.Request})
		pctx, pcancel := cleanupCtx()
		defer pcancel()
		if err := h.store.Publish(pctx, store.NodeMessage{Version: busVersion, From: h.node, To: from, Type: msgReserved, Body: body}); err != nil {
			h.log.Debug("announcing a reserved push failed", "to", from, "err", err)
		}
	}
	err := h.offerLocal(ctx, b.Session, offer{
		tenant: b.Tenant, semaphore: b.Semaphore, channel: b.Channel, job: b.Job, lease: b.Lease, frame: b.Frame,
		placed: reserved, bound: b.Bound,
	})
	typ, reply := msgAck, replyBody{Request: b.Request}
	switch {
	case err == nil:
	case errors.Is(err, errFull):
		typ, reply.Reason = msgNack, "full"
	case errors.Is(err, errGone):
		typ, reply.Reason = msgNack, "gone"
	case errors.Is(err, errNotSubscribed):
		typ, reply.Reason = msgNack, "unsubscribed"
	default:
		typ, reply.Reason = msgNack, "timeout"
	}
	body, _ := json.Marshal(reply)
	pctx, pcancel := cleanupCtx()
	defer pcancel()
	if err := h.store.Publish(pctx, store.NodeMessage{Version: busVersion, From: h.node, To: from, Type: typ, Body: body}); err != nil {
		h.log.Warn("answering a deliver failed", "to", from, "err", err)
	}
}

// publishSessionClosed tells the other nodes a session moved here.
func (h *Hub) publishSessionClosed(ctx context.Context, tenant, session string) {
	body, _ := json.Marshal(sessionClosedBody{Tenant: tenant, Session: session})
	if err := h.store.Publish(ctx, store.NodeMessage{Version: busVersion, From: h.node, Type: msgSessionClosed, Body: body}); err != nil {
		h.log.Warn("announcing a resumed session failed", "session", session, "err", err)
	}
}
