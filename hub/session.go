package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/coder/websocket"

	"github.com/semaphored/semaphored/store"
)

// Errors of session operations, for the API to map to error frames.
var (
	// ErrSessionBusy: resume on a connection whose session already holds
	// leases, subscriptions or jobs.
	ErrSessionBusy = errors.New("hub: resume must come before the session holds anything")
	// ErrNotSubscribed: unsubscribe from something the session is not
	// subscribed to.
	ErrNotSubscribed = errors.New("hub: not subscribed")
)

// maxWaiting bounds the acquires of one connection that wait for a
// permit at once, each in its own goroutine; maxRequests bounds the other
// requests of one connection that run at once (acquires without wait,
// releases, extends): when they are all busy the connection's reads stop
// until one ends (backpressure).
const (
	maxWaiting  = 64
	maxRequests = 64
)

// closeReason is why the server ended a connection.
type closeReason int

const (
	reasonNone      closeReason = iota // the client closed it, or it broke
	reasonShutdown                     // Hub.Stop
	reasonHeartbeat                    // no frame for 3 heartbeats
	reasonSlow                         // send queue full for WriteTimeout, or a write failed
	reasonDisplaced                    // the session was resumed by another connection
	reasonRevoked                      // its API key was revoked: the session ends
	reasonEnded                        // the client ended the session (DELETE)
	reasonNoAck                        // it did not ack a job it had room for
)

// Session is one connection of this instance (a websocket, an SSE stream
// or a run of long polls: its transport) and the session it carries
// (which may change once, by resume). Its methods are safe for
// concurrent use.
type Session struct {
	hub    *Hub
	tr     transport
	proto  ServeParams
	tenant string
	// The send queue: frames waiting to be written, at most SendQueue. A
	// writer goroutine runs while it is not empty (none for an idle
	// session), started by the frame that finds none running; a pulled
	// transport (long-poll) has no writer: its polls take the queue.
	wmu     sync.Mutex
	queue   [][]byte
	spare   [][]byte      // the writer's last batch, for reuse
	writing bool          // a writer runs
	ended   bool          // the connection ended: nothing is queued any more
	room    chan struct{} // closed (and replaced) when the writer takes the queue
	queued  chan struct{} // closed (and replaced) when a frame is queued (pulled transports)
	writers sync.WaitGroup
	ctx     context.Context // ends when the connection ends
	cancel  context.CancelFunc
	done    chan struct{} // closed once the connection's end is applied (finish)

	keyID     string
	slots     chan struct{}  // waiting acquires running (Go)
	workers   chan struct{}  // other requests running (Run)
	tasks     sync.WaitGroup // request goroutines and the closer
	closeOnce sync.Once

	mu      sync.Mutex
	id      string
	resumed bool
	reason  closeReason
	leases  map[string]bool // sync leases acquired over it, live as far as it knows
	sems    map[string]bool // semaphores recorded in the store (UseSemaphore)
	subs    map[subKey]store.Subscription
	jobs    ledger
}

// Replier takes the replies to client frames: the session itself (they
// go on its stream, with the pushed frames), or, for frames posted over
// HTTP, the reply body of that request (Hub.Post).
type Replier interface {
	// Send queues a reply (marshalled to JSON); false when it was not.
	Send(frame any) bool
	// InBody reports whether replies go in a reply body, exactly one per
	// client frame, rather than on the stream.
	InBody() bool
}

// ServeParams are a session's callbacks: the request/reply protocol is
// the API's, the hub runs the connection and the session.
type ServeParams struct {
	Tenant string
	// KeyID is the API key the connection authenticated with: its
	// revocation closes the session (Hub.RevokeKey).
	KeyID string
	// Open is called once the session exists in the store, before any
	// frame is read: it sends welcome to out (or resumes a session and
	// sends resumed). An error ends the fresh session; the connection is
	// not opened (SSE, long-poll: the request gets the error).
	Open func(s *Session, out Replier, resumeToken string) error
	// Handle is called for every frame the client sends, in order: in the
	// connection's read goroutine (websocket), or in the request that
	// posted it. Its replies go to out. ctx ends with the connection.
	// binary: a websocket binary frame.
	Handle func(ctx context.Context, s *Session, out Replier, data []byte, binary bool)
	// End is called when the client ended its session (websocket close
	// status 1000, DELETE of an SSE or long-poll session): it gave it up,
	// and it has been removed from the store; sess is what it held, for
	// onSessionLost to apply at once.
	End func(ctx context.Context, sess store.Session)
}

// HashToken returns the stored form of a resume token: its hex SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// errStopping: the hub is stopping; no session opens.
var errStopping = errors.New("hub: server shutting down")

// open creates a session on transport tr, connected on this node, and
// calls p.Open with out (nil: the session). The session's context is a
// child of ctx. On error the transport is closed and nothing is left.
func (h *Hub) open(ctx context.Context, tr transport, p ServeParams, out Replier) (*Session, error) {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		tr.close(CloseGoingAway, "server shutting down")
		return nil, errStopping
	}
	h.serves.Add(1)
	h.mu.Unlock()

	token := randomID(32)
	s := &Session{
		hub: h, tr: tr, proto: p, tenant: p.Tenant, keyID: p.KeyID, id: randomID(16),
		room:    make(chan struct{}),
		queued:  make(chan struct{}),
		done:    make(chan struct{}),
		slots:   make(chan struct{}, maxWaiting),
		workers: make(chan struct{}, maxRequests),
		leases:  make(map[string]bool),
		sems:    make(map[string]bool),
		subs:    make(map[subKey]store.Subscription),
		jobs:    newLedger(),
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	fail := func(err error) (*Session, error) {
		s.cancel()
		h.serves.Done()
		return nil, err
	}
	err := h.store.PutSession(ctx, store.Session{
		Tenant: p.Tenant, ID: s.id, Node: h.node, ResumeTokenHash: HashToken(token), Grace: h.cfg.Grace,
		KeyID: p.KeyID,
	})
	if err != nil {
		tr.close(websocket.StatusInternalError, "session store unavailable")
		return fail(fmt.Errorf("hub: creating the session: %w", err))
	}
	h.mu.Lock()
	stopped := h.stopped
	if !stopped {
		h.sessions[s.id] = s
	}
	h.mu.Unlock()
	if stopped {
		tr.close(CloseGoingAway, "server shutting down")
		h.dropFresh(s)
		return fail(errStopping)
	}
	if out == nil {
		out = s
	}
	if p.Open != nil {
		if err := p.Open(s, out, token); err != nil {
			h.mu.Lock()
			if h.sessions[s.id] == s {
				delete(h.sessions, s.id)
			}
			h.mu.Unlock()
			s.mu.Lock()
			resumed := s.resumed
			s.mu.Unlock()
			if !resumed {
				h.dropFresh(s)
			}
			return fail(err)
		}
	}
	return s, nil
}

// dropFresh ends a session that never served a frame.
func (h *Hub) dropFresh(s *Session) {
	cctx, cancel := cleanupCtx()
	defer cancel()
	_, _ = h.store.EndSession(cctx, store.SessionParams{Tenant: s.tenant, Session: s.ID()})
}

// finish ends a session's connection once its transport is done with it
// (the websocket's reader returned, the SSE stream ended, the long polls
// stopped): it stops the writer and the requests, and applies the end to
// the session in the store. normal: the client gave the session up. It
// is called once, by the goroutine that open's caller runs the session
// in.
func (h *Hub) finish(s *Session, normal bool) {
	defer h.serves.Done()
	defer close(s.done)
	s.cancel()
	s.wmu.Lock()
	s.ended = true // no writer starts after this
	s.wmu.Unlock()
	s.writers.Wait()
	s.closeOnce.Do(func() {}) // a close from now on has nothing to do
	s.tasks.Wait()
	s.tr.closeNow()
	h.endSession(s, normal)
}

// endSession applies the end of a connection to its session in the store.
func (h *Hub) endSession(s *Session, normal bool) {
	h.moving.Lock()
	defer h.moving.Unlock()
	s.mu.Lock()
	id, reason := s.id, s.reason
	pending := s.jobs.size()
	s.mu.Unlock()
	h.mu.Lock()
	owner := h.sessions[id] == s
	if owner {
		delete(h.sessions, id)
	}
	h.mu.Unlock()
	if pending > 0 {
		h.freed()
	}
	if reason == reasonDisplaced || !owner {
		return // the session lives on in another connection
	}
	ctx, cancel := cleanupCtx()
	defer cancel()
	sp := store.SessionParams{Tenant: s.tenant, Session: id}
	if reason == reasonRevoked || reason == reasonEnded || (reason == reasonNone && normal) {
		sess, err := h.store.EndSession(ctx, sp)
		if err != nil {
			if !errors.Is(err, store.ErrSessionNotFound) {
				h.log.Warn("ending a session failed; it ends after the grace period", "session", id, "err", err)
			}
			return
		}
		// Only the jobs the worker acked are its to give up (onSessionLost):
		// a push it never acked fails, and its job goes back to its queue
		// without counting the attempt (Push).
		s.mu.Lock()
		sess.Jobs = slices.DeleteFunc(sess.Jobs, func(id string) bool { return !s.jobs.isHeld(id) })
		s.mu.Unlock()
		if s.proto.End != nil {
			s.proto.End(ctx, sess)
		}
		return
	}
	// A resume through another instance moves the session there; only the
	// node that holds it may mark it lost.
	if cur, err := h.store.GetSession(ctx, sp); err != nil || (cur.Node != "" && cur.Node != h.node) {
		return
	}
	// (checked again atomically: a resume elsewhere may come in between)
	sp.Node = h.node
	if err := h.store.LoseSession(ctx, sp, h.cfg.Grace); err != nil && !errors.Is(err, store.ErrSessionNotFound) {
		h.log.Warn("marking a session lost failed", "session", id, "err", err)
	}
}

// ID is the session id (it changes once when the connection resumes
// another session).
func (s *Session) ID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// Tenant is the session's tenant.
func (s *Session) Tenant() string { return s.tenant }

// Run runs f in a goroutine bounded per connection (maxRequests), so that
// the requests of one connection run concurrently (and share the store's
// batched calls); the connection's end waits for it. When maxRequests run
// already it waits for one to end first: the caller, the connection's
// reader, stops reading meanwhile (backpressure). false, and f not run,
// when the connection ended.
func (s *Session) Run(f func(ctx context.Context)) bool {
	select {
	case s.workers <- struct{}{}:
	case <-s.ctx.Done():
		return false
	}
	s.tasks.Add(1)
	go func() {
		defer s.tasks.Done()
		defer func() { <-s.workers }()
		f(s.ctx)
	}()
	return true
}

// Go runs f in a goroutine bounded per connection (a request that may
// wait, such as an acquire with wait); the connection's end waits for it.
// false, and f not run, when too many run already.
func (s *Session) Go(f func(ctx context.Context)) bool {
	select {
	case s.slots <- struct{}{}:
	default:
		return false
	}
	s.tasks.Add(1)
	go func() {
		defer s.tasks.Done()
		defer func() { <-s.slots }()
		f(s.ctx)
	}()
	return true
}

func (s *Session) setReason(r closeReason) {
	s.mu.Lock()
	if s.reason == reasonNone || r == reasonDisplaced || r == reasonRevoked || r == reasonEnded {
		s.reason = r
	}
	s.mu.Unlock()
}

// close closes the connection, once, in the background, telling the
// client why where the transport can (a websocket close frame, a closed
// frame on an SSE stream or to a waiting poll).
func (s *Session) close(r closeReason, code websocket.StatusCode, text string) {
	s.setReason(r)
	s.closeOnce.Do(func() {
		s.tasks.Add(1)
		go func() {
			defer s.tasks.Done()
			s.tr.close(code, text)
		}()
	})
}

// displace ends a connection whose session was resumed by another one.
func (s *Session) displace() {
	s.close(reasonDisplaced, CloseResumed, "session resumed by another connection")
}

// UseSemaphore records in the store, once per semaphore, that the session
// may hold leases there: before its first session-bound acquire on it.
func (s *Session) UseSemaphore(ctx context.Context, semaphore string) error {
	s.mu.Lock()
	done := s.sems[semaphore]
	s.mu.Unlock()
	if done {
		return nil
	}
	if err := s.hub.store.UseSemaphore(ctx, s.params(), semaphore); err != nil {
		return err
	}
	s.mu.Lock()
	s.sems[semaphore] = true
	s.mu.Unlock()
	return nil
}

// LeaseAcquired records a lease acquired over the session (bound to it in
// the store by the acquire itself).
func (s *Session) LeaseAcquired(leaseID string) {
	s.mu.Lock()
	s.leases[leaseID] = true
	s.mu.Unlock()
}

// LeaseReleased forgets a lease released over the session (its release
// unbound it in the store).
func (s *Session) LeaseReleased(leaseID string) {
	s.mu.Lock()
	delete(s.leases, leaseID)
	s.mu.Unlock()
}

// Subscribe adds or replaces a subscription (Prefetch ≥ 1).
func (s *Session) Subscribe(ctx context.Context, sub store.Subscription) error {
	// Recorded here first: the store dispatches to the subscription in the
	// same operation that records it, and those pushes must find it.
	k := subKey{sub.Semaphore, sub.Channel}
	s.mu.Lock()
	prev, had := s.subs[k]
	s.subs[k] = sub
	s.mu.Unlock()
	if err := s.hub.store.Subscribe(ctx, store.SubscribeParams{
		Tenant: s.tenant, Session: s.ID(), Node: s.hub.node, Subscription: sub,
	}); err != nil {
		s.mu.Lock()
		if had {
			s.subs[k] = prev
		} else {
			delete(s.subs, k)
		}
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	s.sems[sub.Semaphore] = true
	s.mu.Unlock()
	s.hub.freed()
	return nil
}

// Unsubscribe removes a subscription; ErrNotSubscribed when there is none.
// Jobs pushed on it stay held until released.
func (s *Session) Unsubscribe(ctx context.Context, semaphore, channel string) error {
	k := subKey{semaphore, channel}
	s.mu.Lock()
	sub, ok := s.subs[k]
	s.mu.Unlock()
	if !ok {
		return ErrNotSubscribed
	}
	if err := s.hub.store.Unsubscribe(ctx, s.params(), sub); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.subs, k)
	s.mu.Unlock()
	return nil
}

// Ack records the client's ack of a pushed job: from now on the session
// holds it (a release that follows waits until the push has recorded the
// delivery). false for a job that was not pushed to this session (or
// whose ack came too late).
func (s *Session) Ack(jobID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs.ack(jobID)
}

// AwaitDelivered waits until the delivery of a job the session acked is
// recorded in the store (at once for any other job), so that a release
// never reaches the store before the delivery it ends. ctx bounds it.
func (s *Session) AwaitDelivered(ctx context.Context, jobID string) error {
	s.mu.Lock()
	ch := s.jobs.binding(jobID)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// HeldLease returns the lease under which the session holds a job it
// acked ("" when it does not hold it, or got it back by a resume and does
// not know it): a release or fail of the job over the session must be
// under that lease, so that a worker whose delivery ended never ends
// another worker's later one.
func (s *Session) HeldLease(jobID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs.heldLease(jobID)
}

// JobReleased forgets a job released over the session, freeing room for
// the next push (its release unbound it in the store).
func (s *Session) JobReleased(jobID string) {
	s.hub.jobLeft(s, jobID)
}

// Resume makes this connection carry the session with the resume token
// (lost, or still connected elsewhere: that connection is closed, 4001),
// and returns it with everything it held. The connection's own fresh
// session is ended. ErrSessionBusy when this connection's session already
// holds something; store.ErrSessionNotFound for an unknown token or after
// the grace period.
func (s *Session) Resume(ctx context.Context, token string) (store.Session, error) {
	h := s.hub
	s.mu.Lock()
	busy := s.resumed || len(s.leases)+len(s.subs)+s.jobs.size() > 0
	fresh := s.id
	s.mu.Unlock()
	if busy {
		return store.Session{}, ErrSessionBusy
	}
	h.moving.Lock()
	defer h.moving.Unlock()
	old, err := h.store.ResumeSession(ctx, s.tenant, HashToken(token), h.node)
	if err != nil {
		return store.Session{}, err
	}
	if old.ID == fresh {
		return old, nil
	}
	if _, err := h.store.EndSession(ctx, store.SessionParams{Tenant: s.tenant, Session: fresh}); err != nil && !errors.Is(err, store.ErrSessionNotFound) {
		h.log.Warn("ending the fresh session of a resumed connection", "session", fresh, "err", err)
	}
	h.mu.Lock()
	prev := h.sessions[old.ID]
	if h.sessions[fresh] == s {
		delete(h.sessions, fresh)
	}
	h.sessions[old.ID] = s
	h.mu.Unlock()

	s.mu.Lock()
	s.id, s.resumed = old.ID, true
	for _, id := range old.Leases {
		s.leases[id] = true
	}
	keys := make([]subKey, 0, len(old.Subscriptions))
	for _, sub := range old.Subscriptions {
		k := subKey{sub.Semaphore, sub.Channel}
		s.subs[k] = sub
		keys = append(keys, k)
	}
	for _, sem := range old.Semaphores {
		s.sems[sem] = true
	}
	s.jobs.restore(old.Jobs, keys, func(id string) string { sem, _ := store.ParseJobID(id); return sem })
	s.mu.Unlock()
	if prev != nil && prev != s {
		prev.displace()
	}
	h.publishSessionClosed(ctx, s.tenant, old.ID)
	h.freed()
	return old, nil
}

func (s *Session) params() store.SessionParams {
	return store.SessionParams{Tenant: s.tenant, Session: s.ID()}
}

// errGone: the session is not (any more) on this node. errNoAck: it did
// not ack in time.
var (
	errGone  = errors.New("session not connected here")
	errNoAck = errors.New("no ack in time")
	// errNotSubscribed: the session unsubscribed while a job bound to
	// that subscription was on its way (it is returned to its queue).
	errNotSubscribed = errors.New("session no longer subscribed")
	// errNodeSilent: the node holding the session did not answer.
	errNodeSilent = errors.New("node did not answer")
)

// reserve counts a job about to be pushed against the session's prefetch
// on the subscription that matches (semaphore, channel): the exact one,
// else the one of every channel.
// With bound (the store bound the job to it at dispatch, by its room) the
// prefetch is not checked again: the store's count is the truth, this
// ledger may lag behind a release made elsewhere.
func (s *Session) reserve(semaphore, channel, jobID, lease string, bound bool) (*push, store.Subscription, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := subKey{semaphore, channel}
	sub, ok := s.subs[k]
	if !ok {
		k = subKey{semaphore, ""}
		if sub, ok = s.subs[k]; !ok {
			if bound {
				return nil, store.Subscription{}, errNotSubscribed
			}
			return nil, store.Subscription{}, errGone
		}
	}
	prefetch := sub.Prefetch
	if bound {
		prefetch = math.MaxInt
	}
	p, err := s.jobs.reserve(k, prefetch, jobID, lease)
	return p, sub, err
}

// settle ends a push: true when it was acked (Ack made it held), else
// the push is dropped (a later ack is refused) and false.
func (s *Session) settle(jobID string, p *push) bool {
	s.mu.Lock()
	acked := s.jobs.settle(jobID, p)
	s.mu.Unlock()
	if !acked {
		s.hub.freed()
	}
	return acked
}

// delivered ends the binding state of an acked job: its delivery is
// recorded (ok), or it moved on meanwhile and is forgotten.
func (s *Session) delivered(jobID string, ok bool) {
	s.mu.Lock()
	if ok {
		s.jobs.bound(jobID)
	} else {
		s.jobs.forget(jobID)
	}
	s.mu.Unlock()
	if !ok {
		s.hub.freed()
	}
}

func (s *Session) heldJobs() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs.heldLeases()
}

func (s *Session) setHeldLease(jobID, lease string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobs.setLease(jobID, lease)
}

// jobLeft forgets a held job (released, or moved on without the session).
func (h *Hub) jobLeft(s *Session, jobID string) {
	s.mu.Lock()
	held := s.jobs.forget(jobID)
	s.mu.Unlock()
	if held {
		h.freed()
	}
}
