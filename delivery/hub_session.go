package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/semaphored/semaphored/store"
)

// Errors of session operations, for the API to map to error frames.
var (
	// ErrSessionBusy: resume on a connection whose session already holds
	// leases, subscriptions or jobs.
	ErrSessionBusy = errors.New("delivery: resume must come before the session holds anything")
	// ErrNotSubscribed: unsubscribe from something the session is not
	// subscribed to.
	ErrNotSubscribed = errors.New("delivery: not subscribed")
)

// maxRequests bounds the requests of one connection running at once in
// their own goroutine (acquires that wait).
const maxRequests = 64

// closeReason is why the server ended a connection.
type closeReason int

const (
	reasonNone      closeReason = iota // the client closed it, or it broke
	reasonShutdown                     // Hub.Stop
	reasonHeartbeat                    // no frame for 3 heartbeats
	reasonSlow                         // send queue full or a write timed out
	reasonDisplaced                    // the session was resumed by another connection
)

// subKey identifies a subscription of a session.
type subKey struct{ semaphore, channel string }

// heldJob is a job a session acked and has not released.
type heldJob struct {
	sub   subKey
	lease string // the job's lease when pushed ("" unknown: restored by resume)
	// binding: acked, and the push is still recording it in the store
	// (BindJob); a release meanwhile leaves the unbinding to the push, so
	// the store never binds a job after its unbinding.
	binding bool
}

// pendingPush is a job pushed and not yet acked.
type pendingPush struct {
	sub   subKey
	lease string
	acked chan struct{}
	ack   bool
}

// Session is one websocket connection of this instance and the session it
// carries (which may change once, by resume). Its methods are safe for
// concurrent use.
type Session struct {
	hub    *Hub
	conn   *websocket.Conn
	tenant string
	send   chan []byte
	ctx    context.Context // ends when the connection ends
	cancel context.CancelFunc

	slots     chan struct{}  // request goroutines running (Go)
	tasks     sync.WaitGroup // request goroutines and the closer
	closeOnce sync.Once

	mu      sync.Mutex
	id      string
	resumed bool
	reason  closeReason
	leases  map[string]bool
	subs    map[subKey]store.Subscription
	held    map[string]heldJob
	pending map[string]*pendingPush
	early   map[string]bool // released while binding: the push unbinds them
}

// ServeParams are the callbacks of Serve: the request/reply protocol is
// the API's, the hub runs the connection and the session.
type ServeParams struct {
	Tenant string
	// Open is called once the session exists in the store, before any
	// frame is read (it sends welcome).
	Open func(s *Session, resumeToken string)
	// Handle is called for every frame the client sends, in order, in the
	// connection's read goroutine. ctx ends with the connection.
	Handle func(ctx context.Context, s *Session, typ websocket.MessageType, data []byte)
	// End is called when the client closed the connection normally (close
	// status 1000): it gave its session up, which has been removed from the
	// store; sess is what it held, for onSessionLost to apply at once.
	End func(ctx context.Context, sess store.Session)
}

// HashToken returns the stored form of a resume token: its hex SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Serve runs an accepted connection as a new session until it ends, and
// returns then. The session is created in the store, connected on this
// node; a frame over MaxMessageBytes closes the connection (1009), no frame
// for 3 heartbeats closes it (1008). When the connection ends, the session
// is lost (resumable within the grace period) unless the client closed it
// normally (then it is ended and p.End called) or it was resumed by another
// connection.
func (h *Hub) Serve(ctx context.Context, conn *websocket.Conn, p ServeParams) error {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		_ = conn.Close(CloseGoingAway, "server shutting down")
		return ErrHubStopped
	}
	h.serves.Add(1)
	h.mu.Unlock()
	defer h.serves.Done()

	conn.SetReadLimit(h.cfg.MaxMessageBytes)
	token := randomID(32)
	s := &Session{
		hub: h, conn: conn, tenant: p.Tenant, id: randomID(16),
		send:    make(chan []byte, h.cfg.SendQueue),
		slots:   make(chan struct{}, maxRequests),
		leases:  make(map[string]bool),
		subs:    make(map[subKey]store.Subscription),
		held:    make(map[string]heldJob),
		pending: make(map[string]*pendingPush),
		early:   make(map[string]bool),
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	defer s.cancel()
	err := h.store.PutSession(ctx, store.Session{
		Tenant: p.Tenant, ID: s.id, Node: h.node, ResumeTokenHash: HashToken(token), Grace: h.cfg.Grace,
	})
	if err != nil {
		_ = conn.Close(websocket.StatusInternalError, "session store unavailable")
		return fmt.Errorf("delivery: creating the session: %w", err)
	}
	h.mu.Lock()
	stopped := h.stopped
	if !stopped {
		h.sessions[s.id] = s
	}
	h.mu.Unlock()
	if stopped {
		_ = conn.Close(CloseGoingAway, "server shutting down")
		cctx, cancel := cleanupCtx()
		_, _ = h.store.EndSession(cctx, store.SessionParams{Tenant: p.Tenant, Session: s.id})
		cancel()
		return ErrHubStopped
	}

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		s.writeLoop()
	}()
	if p.Open != nil {
		p.Open(s, token)
	}

	silence := 3 * h.cfg.Heartbeat
	timer := time.AfterFunc(silence, func() {
		s.close(reasonHeartbeat, ClosePolicy, "no frame for 3 heartbeats")
	})
	var readErr error
	for {
		typ, data, err := conn.Read(s.ctx)
		if err != nil {
			readErr = err
			break
		}
		timer.Reset(silence)
		if p.Handle != nil {
			p.Handle(s.ctx, s, typ, data)
		}
	}
	timer.Stop()
	s.cancel()
	<-writerDone
	s.closeOnce.Do(func() {}) // a close from now on has nothing to do
	s.tasks.Wait()
	_ = conn.CloseNow()
	h.endSession(s, readErr, p)
	return nil
}

// endSession applies the end of a connection to its session in the store.
func (h *Hub) endSession(s *Session, readErr error, p ServeParams) {
	h.moving.Lock()
	defer h.moving.Unlock()
	s.mu.Lock()
	id, reason := s.id, s.reason
	pending := len(s.pending) + len(s.held)
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
	if reason == reasonNone && websocket.CloseStatus(readErr) == websocket.StatusNormalClosure {
		sess, err := h.store.EndSession(ctx, sp)
		if err != nil {
			if !errors.Is(err, store.ErrSessionNotFound) {
				h.log.Warn("ending a websocket session failed; it ends after the grace period", "session", id, "err", err)
			}
			return
		}
		if p.End != nil {
			p.End(ctx, sess)
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
		h.log.Warn("marking a websocket session lost failed", "session", id, "err", err)
	}
}

// writeLoop writes queued frames, each under WriteTimeout, until the
// connection ends.
func (s *Session) writeLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case msg := <-s.send:
			ctx, cancel := context.WithTimeout(s.ctx, s.hub.cfg.WriteTimeout)
			err := s.conn.Write(ctx, websocket.MessageText, msg)
			cancel()
			if err != nil {
				s.setReason(reasonSlow)
				_ = s.conn.CloseNow()
				return
			}
		}
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

// Send queues a frame (marshalled to JSON) without blocking. A client whose
// queue is full is too slow: its connection is closed (1008). false when
// the frame was not queued.
func (s *Session) Send(frame any) bool {
	b, err := json.Marshal(frame)
	if err != nil {
		s.hub.log.Error("marshalling a websocket frame", "err", err)
		return false
	}
	return s.sendRaw(b)
}

func (s *Session) sendRaw(b []byte) bool {
	if s.ctx.Err() != nil {
		return false
	}
	select {
	case s.send <- b:
		return true
	default:
		s.close(reasonSlow, ClosePolicy, "send queue full: the client reads too slowly")
		return false
	}
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
	if s.reason == reasonNone || r == reasonDisplaced {
		s.reason = r
	}
	s.mu.Unlock()
}

// close closes the connection with a close frame, once, in the background
// (the close handshake waits for the client).
func (s *Session) close(r closeReason, code websocket.StatusCode, text string) {
	s.setReason(r)
	s.closeOnce.Do(func() {
		s.tasks.Add(1)
		go func() {
			defer s.tasks.Done()
			_ = s.conn.Close(code, text)
		}()
	})
}

// displace ends a connection whose session was resumed by another one.
func (s *Session) displace() {
	s.close(reasonDisplaced, CloseResumed, "session resumed by another connection")
}

// BindLease records a sync lease acquired over the session.
func (s *Session) BindLease(ctx context.Context, leaseID string) error {
	if err := s.hub.store.BindLease(ctx, s.params(), leaseID); err != nil {
		return err
	}
	s.mu.Lock()
	s.leases[leaseID] = true
	s.mu.Unlock()
	return nil
}

// LeaseReleased forgets a lease released over the session.
func (s *Session) LeaseReleased(ctx context.Context, leaseID string) {
	s.mu.Lock()
	bound := s.leases[leaseID]
	delete(s.leases, leaseID)
	s.mu.Unlock()
	if bound {
		if err := s.hub.store.UnbindLease(ctx, s.params(), leaseID); err != nil && !errors.Is(err, store.ErrSessionNotFound) {
			s.hub.log.Warn("unbinding a lease from its session", "session", s.ID(), "err", err)
		}
	}
}

// Subscribe adds or replaces a subscription (Prefetch ≥ 1).
func (s *Session) Subscribe(ctx context.Context, sub store.Subscription) error {
	if err := s.hub.store.Subscribe(ctx, store.SubscribeParams{
		Tenant: s.tenant, Session: s.ID(), Node: s.hub.node, Subscription: sub,
	}); err != nil {
		return err
	}
	s.mu.Lock()
	s.subs[subKey{sub.Semaphore, sub.Channel}] = sub
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
// holds it (a release that follows at once finds it). false for a job that
// was not pushed to this session (or whose ack came too late).
func (s *Session) Ack(jobID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.pending[jobID]; ok {
		if !p.ack {
			p.ack = true
			close(p.acked)
			delete(s.pending, jobID)
			s.held[jobID] = heldJob{sub: p.sub, lease: p.lease, binding: true}
		}
		return true
	}
	_, ok := s.held[jobID]
	return ok
}

// JobReleased forgets a job released over the session, freeing room for
// the next push.
func (s *Session) JobReleased(ctx context.Context, jobID string) {
	s.hub.jobLeftCtx(ctx, s, jobID)
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
	busy := s.resumed || len(s.leases)+len(s.subs)+len(s.held)+len(s.pending) > 0
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
	for _, sub := range old.Subscriptions {
		s.subs[subKey{sub.Semaphore, sub.Channel}] = sub
	}
	for _, id := range old.Jobs {
		s.held[id] = heldJob{sub: s.subOfJobLocked(id)}
	}
	s.mu.Unlock()
	if prev != nil && prev != s {
		prev.displace()
	}
	h.publishSessionClosed(ctx, s.tenant, old.ID)
	h.freed()
	return old, nil
}

// subOfJobLocked guesses the subscription a restored job came through: the
// first of its semaphore.
func (s *Session) subOfJobLocked(jobID string) subKey {
	sem, _ := store.ParseJobID(jobID)
	for k := range s.subs {
		if k.semaphore == sem {
			return k
		}
	}
	return subKey{semaphore: sem}
}

func (s *Session) params() store.SessionParams {
	return store.SessionParams{Tenant: s.tenant, Session: s.ID()}
}

// errFull: the session already holds Prefetch unreleased jobs of the
// subscription. errGone: the session is not (any more) on this node.
var (
	errFull  = errors.New("session at its prefetch")
	errGone  = errors.New("session not connected here")
	errNoAck = errors.New("no ack in time")
)

// reserve counts a job about to be pushed against the session's prefetch
// on the subscription that matches (semaphore, channel): the exact one,
// else the one of every channel.
func (s *Session) reserve(semaphore, channel, jobID, lease string) (*pendingPush, store.Subscription, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := subKey{semaphore, channel}
	sub, ok := s.subs[k]
	if !ok {
		k = subKey{semaphore, ""}
		if sub, ok = s.subs[k]; !ok {
			return nil, store.Subscription{}, errGone
		}
	}
	if _, ok := s.pending[jobID]; ok {
		return nil, store.Subscription{}, errFull
	}
	delete(s.held, jobID) // pushed again (its earlier lease expired): it counts once
	n := 0
	for _, p := range s.pending {
		if p.sub == k {
			n++
		}
	}
	for _, hj := range s.held {
		if hj.sub == k {
			n++
		}
	}
	if n >= max(sub.Prefetch, 1) {
		return nil, store.Subscription{}, errFull
	}
	p := &pendingPush{sub: k, lease: lease, acked: make(chan struct{})}
	s.pending[jobID] = p
	return p, sub, nil
}

// settle ends a push: true when it was acked (Ack made it held), else
// the push is dropped (a later ack is refused) and false.
func (s *Session) settle(jobID string, p *pendingPush) bool {
	s.mu.Lock()
	acked := p.ack
	if !acked && s.pending[jobID] == p {
		delete(s.pending, jobID)
	}
	s.mu.Unlock()
	if !acked {
		s.hub.freed()
	}
	return acked
}

// bound records that an acked job is bound in the store; true when it was
// released meanwhile and must be unbound now.
func (s *Session) bound(jobID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.early[jobID] {
		delete(s.early, jobID)
		return true
	}
	if hj, ok := s.held[jobID]; ok && hj.binding {
		hj.binding = false
		s.held[jobID] = hj
	}
	return false
}

func (s *Session) heldJobs() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.held))
	for id, hj := range s.held {
		out[id] = hj.lease
	}
	return out
}

func (s *Session) setHeldLease(jobID, lease string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if hj, ok := s.held[jobID]; ok {
		hj.lease = lease
		s.held[jobID] = hj
	}
}

// jobLeft forgets a held job and unbinds it in the store.
func (h *Hub) jobLeft(s *Session, jobID string) {
	ctx, cancel := cleanupCtx()
	defer cancel()
	h.jobLeftCtx(ctx, s, jobID)
}

func (h *Hub) jobLeftCtx(ctx context.Context, s *Session, jobID string) {
	s.mu.Lock()
	hj, held := s.held[jobID]
	delete(s.held, jobID)
	if held && hj.binding {
		s.early[jobID] = true
	}
	s.mu.Unlock()
	if !held {
		return
	}
	if hj.binding {
		h.freed() // the push unbinds it once bound
		return
	}
	if err := h.store.UnbindJob(ctx, s.params(), jobID); err != nil && !errors.Is(err, store.ErrSessionNotFound) {
		h.log.Warn("unbinding a job from its session", "session", s.ID(), "job", jobID, "err", err)
	}
	h.freed()
}
