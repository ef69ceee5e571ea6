package memory

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/semaphored/semaphored/store"
)

// This file implements store.SessionStore: websocket sessions, node
// presence, the subscriber registry, tickets and the node bus, all under
// the store's one mutex and judged by its injected clock. The rules it
// shares with the Redis store (and that the conformance suite checks):
//
//   - A node is alive while the clock is before its last Heartbeat's
//     now+ttl. Subscribers lists only sessions on live nodes: a node must
//     Heartbeat before its sessions are offered jobs.
//   - A session is connected (Node set, LostAt zero) or lost (Node "",
//     LostAt and GraceUntil set). A lost session whose GraceUntil has come
//     is gone for every reader (GetSession, ResumeSession, the mutators
//     return ErrSessionNotFound) but is still held until ExpiredSessions (or
//     EndSession) removes and returns it, exactly once.
//   - The sessions of a node whose heartbeat expired at E count as lost
//     since E: ResumeSession accepts them until E+Grace, and
//     ExpiredSessions marks them lost (LostAt E, GraceUntil E+Grace),
//     forgets the node, and returns them once E+Grace has come.
//   - A subscription is identified by (Semaphore, Channel). A job delivered
//     with TransitionParams.Bind counts on the subscription (its
//     Semaphore, Bind.Channel) until its lease ends or it is delivered
//     again; Inflight of a subscription is the number of jobs counted on
//     it. Subscribers gives one entry per session: its subscription to
//     exactly the channel if any, else its "" one.
//   - Bindings live on the leases (leaseEntry.session) and are mirrored in
//     the session's Leases and Jobs inside the same critical section.
//   - PutSession replaces the session but what is bound to it.

// defaultExpiredBatch is ExpiredSessions' max when none is given.
const defaultExpiredBatch = 100

// busQueueLimit bounds the undelivered messages of one bus subscription;
// beyond it messages are dropped (the bus is best effort).
const busQueueLimit = 10000

type sessKey struct{ tenant, id string }

type tokKey struct{ tenant, hash string }

type subKey struct{ sem, channel string }

// sessEntry is a stored session and the subscription each of its jobs is
// counted on.
type sessEntry struct {
	s       store.Session
	jobSubs map[string]subKey
}

// sessionState is the session half of the Store, guarded by Store.mu.
type sessionState struct {
	sessions map[sessKey]*sessEntry
	tokens   map[tokKey]string               // (tenant, resume token hash) -> session id
	bySem    map[semKey]map[sessKey]struct{} // sessions subscribed to a semaphore
	nodes    map[string]time.Time            // node -> heartbeat expiry
	tickets  map[string]store.Ticket         // by hash
	bus      map[string][]*busSub            // node -> active subscriptions
}

// sess returns the session state, creating it on first use. s.mu must be held.
func (s *Store) sess() *sessionState {
	if s.sessState == nil {
		s.sessState = &sessionState{
			sessions: make(map[sessKey]*sessEntry),
			tokens:   make(map[tokKey]string),
			bySem:    make(map[semKey]map[sessKey]struct{}),
			nodes:    make(map[string]time.Time),
			tickets:  make(map[string]store.Ticket),
			bus:      make(map[string][]*busSub),
		}
	}
	return s.sessState
}

// Heartbeat implements store.SessionStore.
func (s *Store) Heartbeat(ctx context.Context, node string, ttl time.Duration) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.sess().nodes[node] = s.now().Add(ttl)
	return nil
}

// Nodes implements store.SessionStore, sorted by id.
func (s *Store) Nodes(ctx context.Context) ([]string, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	now := s.now()
	nodes := []string{}
	for n, exp := range s.sess().nodes {
		if now.Before(exp) {
			nodes = append(nodes, n)
		}
	}
	sort.Strings(nodes)
	return nodes, nil
}

// PutSession implements store.SessionStore. A zero CreatedAt is set to the
// store's clock; LostAt and GraceUntil are cleared (the session is
// connected on s.Node).
func (s *Store) PutSession(ctx context.Context, sess store.Session) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	st := s.sess()
	key := sessKey{sess.Tenant, sess.ID}
	e := &sessEntry{s: copySession(sess), jobSubs: make(map[string]subKey)}
	e.s.LostAt, e.s.GraceUntil = time.Time{}, time.Time{}
	e.s.Leases, e.s.Jobs = nil, nil // bound by the lease and job operations only
	if e.s.CreatedAt.IsZero() {
		e.s.CreatedAt = s.now()
	}
	for i := range e.s.Subscriptions {
		e.s.Subscriptions[i].Prefetch = max(e.s.Subscriptions[i].Prefetch, 1)
	}
	for _, sub := range e.s.Subscriptions {
		e.useSemaphore(sub.Semaphore)
	}
	if old, ok := st.sessions[key]; ok {
		// what is bound to it stays bound
		e.s.Leases, e.s.Jobs, e.jobSubs = old.s.Leases, old.s.Jobs, old.jobSubs
		for _, sem := range old.s.Semaphores {
			e.useSemaphore(sem)
		}
		st.unindex(key, old)
	}
	st.sessions[key] = e
	st.index(key, e)
	return nil
}

// index adds a session to the token and semaphore indexes.
func (st *sessionState) index(key sessKey, e *sessEntry) {
	if e.s.ResumeTokenHash != "" {
		st.tokens[tokKey{key.tenant, e.s.ResumeTokenHash}] = key.id
	}
	for _, sub := range e.s.Subscriptions {
		st.indexSub(key, sub.Semaphore)
	}
}

func (st *sessionState) indexSub(key sessKey, sem string) {
	sk := semKey{key.tenant, sem}
	m := st.bySem[sk]
	if m == nil {
		m = make(map[sessKey]struct{})
		st.bySem[sk] = m
	}
	m[key] = struct{}{}
}

// unindex removes a session from the indexes.
func (st *sessionState) unindex(key sessKey, e *sessEntry) {
	tk := tokKey{key.tenant, e.s.ResumeTokenHash}
	if st.tokens[tk] == key.id {
		delete(st.tokens, tk)
	}
	for _, sub := range e.s.Subscriptions {
		st.dropSemIndex(key, sub.Semaphore)
	}
}

// unindexSub drops the session from the semaphore's index unless another
// of its subscriptions still names the semaphore.
func (st *sessionState) unindexSub(key sessKey, e *sessEntry, sem string) {
	for _, sub := range e.s.Subscriptions {
		if sub.Semaphore == sem {
			return
		}
	}
	st.dropSemIndex(key, sem)
}

func (st *sessionState) dropSemIndex(key sessKey, sem string) {
	sk := semKey{key.tenant, sem}
	delete(st.bySem[sk], key)
	if len(st.bySem[sk]) == 0 {
		delete(st.bySem, sk)
	}
}

func (e *sessEntry) hasSub(k subKey) bool {
	return e.subIndex(k) >= 0
}

func (e *sessEntry) subIndex(k subKey) int {
	for i, sub := range e.s.Subscriptions {
		if sub.Semaphore == k.sem && sub.Channel == k.channel {
			return i
		}
	}
	return -1
}

// inflight counts the session's jobs counted on a subscription.
func (e *sessEntry) inflight(k subKey) int {
	n := 0
	for _, sk := range e.jobSubs {
		if sk == k {
			n++
		}
	}
	return n
}

// lost reports whether the session is lost.
func (e *sessEntry) lost() bool { return !e.s.LostAt.IsZero() }

// gone reports whether the session is lost past its grace.
func (e *sessEntry) gone(now time.Time) bool {
	return e.lost() && !now.Before(e.s.GraceUntil)
}

// live returns the session unless it is unknown or lost past its grace.
func (st *sessionState) live(p store.SessionParams, now time.Time) (*sessEntry, error) {
	e, ok := st.sessions[sessKey{p.Tenant, p.Session}]
	if !ok || e.gone(now) {
		return nil, store.ErrSessionNotFound
	}
	return e, nil
}

// GetSession implements store.SessionStore.
func (s *Store) GetSession(ctx context.Context, p store.SessionParams) (store.Session, error) {
	if err := s.lock(ctx); err != nil {
		return store.Session{}, err
	}
	defer s.mu.Unlock()
	e, err := s.sess().live(p, s.now())
	if err != nil {
		return store.Session{}, err
	}
	return copySession(e.s), nil
}

// UseSemaphore implements store.SessionStore.
func (s *Store) UseSemaphore(ctx context.Context, p store.SessionParams, semaphore string) error {
	return s.withLive(ctx, p, func(e *sessEntry) { e.useSemaphore(semaphore) })
}

func (e *sessEntry) useSemaphore(sem string) {
	if !slices.Contains(e.s.Semaphores, sem) {
		e.s.Semaphores = append(e.s.Semaphores, sem)
	}
}

// bindLease binds a lease (a sync lease, or a delivered job's) to a
// session, counted on its subscription to channel when it is a job's. It
// runs inside the lease or job operation that grants or delivers it; a
// session that is gone keeps no binding. s.mu is held.
func (s *Store) bindLease(tenant string, l *leaseEntry, session, channel string) {
	l.session, l.bindChannel, l.bindNode = session, channel, ""
	e, ok := s.sess().sessions[sessKey{tenant, session}]
	if !ok {
		return
	}
	l.bindNode = e.s.Node
	e.useSemaphore(l.lease.Semaphore)
	if l.job != nil {
		id := l.job.job.ID
		if !slices.Contains(e.s.Jobs, id) {
			e.s.Jobs = append(e.s.Jobs, id)
		}
		e.jobSubs[id] = subKey{l.lease.Semaphore, channel}
		return
	}
	if !slices.Contains(e.s.Leases, l.lease.ID) {
		e.s.Leases = append(e.s.Leases, l.lease.ID)
	}
}

// unbindLease ends a lease's binding (the lease ended, or a job moved to
// another route). s.mu is held.
func (s *Store) unbindLease(tenant string, l *leaseEntry) {
	session := l.session
	l.session, l.bindChannel, l.bindNode = "", "", ""
	e, ok := s.sess().sessions[sessKey{tenant, session}]
	if !ok {
		return
	}
	if l.job != nil {
		id := l.job.job.ID
		e.s.Jobs = slices.DeleteFunc(e.s.Jobs, func(x string) bool { return x == id })
		delete(e.jobSubs, id)
		return
	}
	e.s.Leases = slices.DeleteFunc(e.s.Leases, func(x string) bool { return x == l.lease.ID })
}

// withLive runs f on the live session p under the store's lock
// (store.ErrSessionNotFound for an unknown or ended one).
func (s *Store) withLive(ctx context.Context, p store.SessionParams, f func(e *sessEntry)) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	e, err := s.sess().live(p, s.now())
	if err != nil {
		return err
	}
	f(e)
	return nil
}

// Subscribe implements store.SessionStore. The session's own node is used
// for the registry (p.Node is informational); Prefetch below 1 means 1.
// Replacing a subscription keeps the jobs counted on it. A lost session's
// subscription is recorded and becomes active when it resumes.
func (s *Store) Subscribe(ctx context.Context, p store.SubscribeParams) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	st := s.sess()
	e, err := st.live(store.SessionParams{Tenant: p.Tenant, Session: p.Session}, s.now())
	if err != nil {
		return err
	}
	sub := p.Subscription
	sub.Prefetch = max(sub.Prefetch, 1)
	if i := e.subIndex(subKey{sub.Semaphore, sub.Channel}); i >= 0 {
		e.s.Subscriptions[i] = sub
	} else {
		e.s.Subscriptions = append(e.s.Subscriptions, sub)
	}
	e.useSemaphore(sub.Semaphore)
	st.indexSub(sessKey{p.Tenant, p.Session}, sub.Semaphore)
	if !e.lost() {
		s.dispatchFor(p.Tenant, []string{sub.Semaphore}, s.now())
	}
	return nil
}

// Unsubscribe implements store.SessionStore; an unknown subscription is
// ignored. Jobs counted on it stay bound to the session (they count again
// if it subscribes to the same semaphore and channel again).
func (s *Store) Unsubscribe(ctx context.Context, p store.SessionParams, sub store.Subscription) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	st := s.sess()
	e, err := st.live(p, s.now())
	if err != nil {
		return err
	}
	i := e.subIndex(subKey{sub.Semaphore, sub.Channel})
	if i < 0 {
		return nil
	}
	e.s.Subscriptions = slices.Delete(e.s.Subscriptions, i, i+1)
	st.unindexSub(sessKey{p.Tenant, p.Session}, e, sub.Semaphore)
	return nil
}

// Subscribers implements store.SessionStore, sorted by session id.
func (s *Store) Subscribers(ctx context.Context, tenant, semaphore, channel string) ([]store.Subscriber, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	st := s.sess()
	now := s.now()
	out := []store.Subscriber{}
	for key := range st.bySem[semKey{tenant, semaphore}] {
		e := st.sessions[key]
		if e == nil || e.gone(now) || (!e.lost() && !st.nodeAlive(e.s.Node, now)) {
			continue
		}
		for _, k := range []subKey{{semaphore, channel}, {semaphore, ""}} {
			if i := e.subIndex(k); i >= 0 {
				out = append(out, store.Subscriber{
					Session:  key.id,
					Node:     e.s.Node,
					Prefetch: e.s.Subscriptions[i].Prefetch,
					Inflight: e.inflight(k),
					Lost:     e.lost(),
				})
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return out, nil
}

// roomEntry is a subscription with room for one more job.
type roomEntry struct{ session, channel string }

// roomFor picks the subscription a job of the semaphore sem, routed to
// channel rc, is bound to at dispatch (store.WorkerRoute): among the
// connected sessions whose subscription to rc (preferred) or to every
// channel has fewer bound jobs than its prefetch, the least loaded, ties
// by session id. nil when none has room. A session of a node whose
// heartbeat expired is offered as in the Redis store (which cannot see
// node presence there): its push fails and the session is marked lost.
// s.mu is held.
func (s *Store) roomFor(sem semKey, rc string) *roomEntry {
	st := s.sess()
	var best *roomEntry
	bestLoad := 0
	for key := range st.bySem[sem] {
		e := st.sessions[key]
		if e == nil || e.lost() {
			continue
		}
		for _, k := range []subKey{{sem.name, rc}, {sem.name, ""}} {
			i := e.subIndex(k)
			if i < 0 {
				continue
			}
			load := e.inflight(k)
			if load < max(e.s.Subscriptions[i].Prefetch, 1) && (best == nil || load < bestLoad || (load == bestLoad && key.id < best.session)) {
				best, bestLoad = &roomEntry{key.id, k.channel}, load
			}
			break
		}
	}
	return best
}

// dispatchFor dispatches the jobs of the semaphores in sems of the tenant
// (a session's room changed: it subscribed or resumed). s.mu is held.
func (s *Store) dispatchFor(tenant string, sems []string, now time.Time) {
	for _, name := range sems {
		if sem, ok := s.sems[semKey{tenant, name}]; ok && sem.info.Config.Workers != nil {
			s.refresh(sem, now)
		}
	}
}

func (st *sessionState) nodeAlive(node string, now time.Time) bool {
	exp, ok := st.nodes[node]
	return ok && now.Before(exp)
}

// LoseSession implements store.SessionStore. grace ≤ 0 means the session's
// Grace. Losing a lost session changes nothing (its grace is not renewed).
func (s *Store) LoseSession(ctx context.Context, p store.SessionParams, grace time.Duration) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := s.now()
	e, err := s.sess().live(p, now)
	if err != nil {
		return err
	}
	if e.lost() || (p.Node != "" && e.s.Node != p.Node) {
		return nil
	}
	if grace <= 0 {
		grace = e.s.Grace
	}
	e.markLost(now, now.Add(grace))
	return nil
}

func (e *sessEntry) markLost(at, until time.Time) {
	e.s.Node = ""
	e.s.LostAt = at
	e.s.GraceUntil = until
}

// ResumeSession implements store.SessionStore. It also takes over a
// session still connected on another node (a client reconnecting before
// the old connection is noticed as dropped).
func (s *Store) ResumeSession(ctx context.Context, tenant, resumeTokenHash, node string) (store.Session, error) {
	if err := s.lock(ctx); err != nil {
		return store.Session{}, err
	}
	defer s.unlock()
	st := s.sess()
	now := s.now()
	id, ok := st.tokens[tokKey{tenant, resumeTokenHash}]
	if !ok || resumeTokenHash == "" {
		return store.Session{}, store.ErrSessionNotFound
	}
	e, err := st.live(store.SessionParams{Tenant: tenant, Session: id}, now)
	if err != nil {
		return store.Session{}, err
	}
	if !e.lost() {
		// Connected on a node whose heartbeat expired at exp: lost since.
		if exp, ok := st.nodes[e.s.Node]; ok && !now.Before(exp) && !now.Before(exp.Add(e.s.Grace)) {
			return store.Session{}, store.ErrSessionNotFound
		}
	}
	e.s.Node = node
	e.s.LostAt, e.s.GraceUntil = time.Time{}, time.Time{}
	sems := make([]string, 0, len(e.s.Subscriptions))
	for _, sub := range e.s.Subscriptions {
		sems = append(sems, sub.Semaphore)
	}
	s.dispatchFor(tenant, sems, now)
	return copySession(e.s), nil
}

// EndSession implements store.SessionStore. It ends a session lost past
// its grace too (not yet returned by ExpiredSessions): whichever of the two
// removes it returns it.
func (s *Store) EndSession(ctx context.Context, p store.SessionParams) (store.Session, error) {
	if err := s.lock(ctx); err != nil {
		return store.Session{}, err
	}
	defer s.mu.Unlock()
	st := s.sess()
	key := sessKey{p.Tenant, p.Session}
	e, ok := st.sessions[key]
	if !ok {
		return store.Session{}, store.ErrSessionNotFound
	}
	st.remove(key, e)
	return copySession(e.s), nil
}

func (st *sessionState) remove(key sessKey, e *sessEntry) {
	delete(st.sessions, key)
	st.unindex(key, e)
}

// ExpiredSessions implements store.SessionStore: first the sessions of
// nodes whose heartbeat expired are marked lost (and the nodes forgotten),
// then the sessions whose grace ran out are removed and returned, soonest
// GraceUntil first. max ≤ 0 means 100.
func (s *Store) ExpiredSessions(ctx context.Context, maxN int) ([]store.LostSession, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if maxN <= 0 {
		maxN = defaultExpiredBatch
	}
	st := s.sess()
	now := s.now()
	dead := map[string]time.Time{}
	for n, exp := range st.nodes {
		if !now.Before(exp) {
			dead[n] = exp
			delete(st.nodes, n)
		}
	}
	var due []sessKey
	for key, e := range st.sessions {
		if exp, ok := dead[e.s.Node]; ok && !e.lost() {
			e.markLost(exp, exp.Add(e.s.Grace))
		}
		if e.gone(now) {
			due = append(due, key)
		}
	}
	sort.Slice(due, func(i, j int) bool {
		a, b := st.sessions[due[i]].s.GraceUntil, st.sessions[due[j]].s.GraceUntil
		if !a.Equal(b) {
			return a.Before(b)
		}
		return due[i].tenant+"/"+due[i].id < due[j].tenant+"/"+due[j].id
	})
	if len(due) > maxN {
		due = due[:maxN]
	}
	out := make([]store.LostSession, 0, len(due))
	for _, key := range due {
		e := st.sessions[key]
		st.remove(key, e)
		out = append(out, store.LostSession{Session: copySession(e.s)})
	}
	return out, nil
}

// CreateTicket implements store.SessionStore; a ticket with the same hash
// is replaced.
func (s *Store) CreateTicket(ctx context.Context, t store.Ticket) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	st := s.sess()
	now := s.now()
	for h, old := range st.tickets { // forget expired ones; tickets are few
		if !now.Before(old.ExpiresAt) {
			delete(st.tickets, h)
		}
	}
	st.tickets[t.Hash] = t
	return nil
}

// TakeTicket implements store.SessionStore.
func (s *Store) TakeTicket(ctx context.Context, hash string) (store.Ticket, error) {
	if err := s.lock(ctx); err != nil {
		return store.Ticket{}, err
	}
	defer s.mu.Unlock()
	st := s.sess()
	t, ok := st.tickets[hash]
	if !ok {
		return store.Ticket{}, store.ErrSessionNotFound
	}
	delete(st.tickets, hash)
	if !s.now().Before(t.ExpiresAt) {
		return store.Ticket{}, store.ErrSessionNotFound
	}
	return t, nil
}

// busSub is one SubscribeNode subscription: a queue drained in order by
// its own goroutine, so a slow handler never blocks Publish.
type busSub struct {
	h      func(store.NodeMessage)
	mu     sync.Mutex
	queue  []store.NodeMessage
	signal chan struct{} // capacity 1: the queue is not empty
}

func (b *busSub) push(m store.NodeMessage) {
	b.mu.Lock()
	if len(b.queue) < busQueueLimit {
		b.queue = append(b.queue, m)
	}
	b.mu.Unlock()
	select {
	case b.signal <- struct{}{}:
	default:
	}
}

// run delivers queued messages until ctx ends.
func (b *busSub) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.signal:
		}
		b.mu.Lock()
		q := b.queue
		b.queue = nil
		b.mu.Unlock()
		for _, m := range q {
			if ctx.Err() != nil {
				return
			}
			b.h(m)
		}
	}
}

// Publish implements store.SessionStore: an in-process fan-out to the
// subscriptions of m.To (every subscription when m.To is ""), the sender's
// own included. A message to a node without a subscription is dropped.
func (s *Store) Publish(ctx context.Context, m store.NodeMessage) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if m.Version == 0 {
		m.Version = 1
	}
	for node, subs := range s.sess().bus {
		if m.To != "" && node != m.To {
			continue
		}
		for _, b := range subs {
			c := m
			c.Body = slices.Clone(m.Body)
			b.push(c)
		}
	}
	return nil
}

// SubscribeNode implements store.SessionStore. It returns once subscribed
// (a message published after it returns is delivered) and delivers from its
// own goroutine, which ends with ctx. Several nodes may share one store;
// a second subscription of the same node gets every message too.
func (s *Store) SubscribeNode(ctx context.Context, node string, h func(store.NodeMessage)) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	st := s.sess()
	b := &busSub{h: h, signal: make(chan struct{}, 1)}
	st.bus[node] = append(st.bus[node], b)
	go func() {
		b.run(ctx)
		s.mu.Lock()
		st.bus[node] = slices.DeleteFunc(st.bus[node], func(x *busSub) bool { return x == b })
		if len(st.bus[node]) == 0 {
			delete(st.bus, node)
		}
		s.mu.Unlock()
	}()
	return nil
}

// copySession returns a copy sharing no memory with the store.
func copySession(s store.Session) store.Session {
	s.Leases = slices.Clone(s.Leases)
	s.Jobs = slices.Clone(s.Jobs)
	s.Semaphores = slices.Clone(s.Semaphores)
	s.Subscriptions = slices.Clone(s.Subscriptions)
	return s
}
