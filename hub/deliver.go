package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/wire"
)

// Node bus (STYLE 12): one versioned envelope, store.NodeMessage, whose
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
}

// replyBody answers a deliver. Reason of a nack: "full" (the session holds
// its prefetch), "gone" (not connected there), "timeout" (no ack).
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

// Deliver offers a dispatched job to the sessions subscribed to its
// semaphore (and the route's channel, else the job's), on any node:
// least loaded first (fewest unreleased jobs, ties broken at random). A
// session on this node gets the job frame directly; a session elsewhere
// through its node, over the bus. The first session that acks within
// AckTimeout takes it (nil). A session that does not ack is not offered
// the job again; when every subscriber with room has been tried, or none
// is subscribed, the error wraps ErrNoSubscriber and the dispatcher moves
// the job on. nil means the delivery is recorded too (the job is inflight
// on the websocket route, bound to the session that took it): the
// dispatcher records nothing more. While every subscriber not yet tried
// holds its prefetch, or is lost within its grace period (its connection
// dropped: it may be resumed, on any transport), Deliver waits until ctx
// ends (the job's lease ends it), so a job is never pushed beyond a
// session's prefetch, and a worker's reconnect does not fail it.
func (h *Hub) Deliver(ctx context.Context, route routing.Route, job store.Job, payload json.RawMessage) error {
	if job.Lease == nil {
		return errors.New("websocket: job without lease")
	}
	channel := route.Channel
	if channel == "" {
		channel = job.Channel
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
	// Jobs of one (semaphore, channel) take the room of its sessions in
	// the order they were dispatched (their lease's fencing token): only
	// the first of them not yet placed with a session offers; the others
	// wait behind it (FIFO on the websocket route, also when its sessions
	// are at their prefetch and jobs hold permits meanwhile).
	key := orderKey{job.Tenant, job.Semaphore, channel}
	turn := h.queueUp(key, job.Lease.FencingToken)
	defer turn.leave()
	o := offer{
		tenant: job.Tenant, semaphore: job.Semaphore, channel: channel,
		job: job.ID, lease: job.Lease.ID, frame: frame, placed: turn.leave, stalled: turn.pause,
	}
	tried := make(map[string]bool) // sessions that refused, did not ack or were gone
	wait := 20 * time.Millisecond
	refresh := false
	for {
		wake := h.capacityChanged() // before reading loads: a free after it wakes us
		if !turn.first() {
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		subs, fresh, err := h.subscribers(ctx, key, refresh)
		if err != nil {
			return fmt.Errorf("websocket: listing subscribers: %w", err)
		}
		refresh = false
		full := false
		for _, c := range candidates(h.withLocalLoads(subs, key), tried) {
			if c.Lost {
				// It may be resumed within its grace: wait for it rather
				// than fail the route (a worker reconnecting).
				full = true
				continue
			}
			if c.Inflight >= c.Prefetch {
				full = true
				continue
			}
			if c.Node == h.node {
				err = h.offerLocal(ctx, c.Session, o)
			} else {
				// The turn is held while the other instance answers
				// "reserved" (a bus round trip), but not longer than
				// reserveWait (that instance may be gone: its answer
				// then waits for AckTimeout): the jobs behind it go
				// meanwhile, and it queues up again, at its place, if it
				// must wait.
				err = h.offerRemote(ctx, c.Node, c.Session, o)
				if err != nil {
					turn.rejoin()
				}
			}
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if errors.Is(err, errFull) {
				full = true // another push holds its room: wait for it
				continue
			}
			if errors.Is(err, errGone) {
				// Its connection ended (or moved) meanwhile: it is lost
				// and may be resumed, or connected elsewhere. Look again
				// after a wait; the list then says which.
				full = true
				continue
			}
			tried[c.Session] = true
			h.log.Debug("websocket session did not take the job", "job", job.ID, "session", c.Session, "node", c.Node, "err", err)
		}
		if !full && !fresh {
			// The list may predate a session that subscribed since: look
			// again before the route fails.
			refresh = true
			continue
		}
		if !full {
			if h.stopping() {
				// Sessions of this instance are closing (shutdown), not
				// gone for good: do not fail the job's route; its lease
				// ends the delivery and the job is retried.
				<-ctx.Done()
				return context.Cause(ctx)
			}
			if len(tried) > 0 {
				return fmt.Errorf("%w: %d subscribed session(s) did not ack within %s", ErrNoSubscriber, len(tried), h.cfg.AckTimeout)
			}
			return errNoneSubscribed
		}
		// Every subscriber left holds its prefetch, or is lost and may come
		// back: wait for a release or a resume here (pushed) or elsewhere
		// (polled, backing off to 1s).
		// A local release is known here at once; room on another
		// instance is found by reading the list again when the timer fires.
		t := time.NewTimer(wait)
		select {
		case <-wake:
		case <-t.C:
			refresh = true
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		}
		t.Stop()
		wait = min(2*wait, time.Second)
	}
}

// candidates returns the subscribers not yet tried, least loaded first,
// ties in random order.
func candidates(subs []store.Subscriber, tried map[string]bool) []store.Subscriber {
	out := make([]store.Subscriber, 0, len(subs))
	for _, s := range subs {
		if !tried[s.Session] {
			out = append(out, s)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	slices.SortStableFunc(out, func(a, b store.Subscriber) int { return a.Inflight - b.Inflight })
	return out
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
}

// offerLocal pushes the job to a session of this node and waits for its
// ack (AckTimeout). On ack the job is bound to the session in the store.
func (h *Hub) offerLocal(ctx context.Context, sessionID string, o offer) error {
	s := h.session(sessionID)
	if s == nil || s.tenant != o.tenant {
		return errGone
	}
	p, sub, err := s.reserve(o.semaphore, o.channel, o.job, o.lease)
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
		return fail
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
		Job: o.job, Lease: o.lease, Frame: o.frame,
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
			return fmt.Errorf("node %s did not answer: %w", node, errNoAck)
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
		placed: reserved,
	})
	typ, reply := msgAck, replyBody{Request: b.Request}
	switch {
	case err == nil:
	case errors.Is(err, errFull):
		typ, reply.Reason = msgNack, "full"
	case errors.Is(err, errGone):
		typ, reply.Reason = msgNack, "gone"
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
