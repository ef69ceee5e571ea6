package storetest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/store"
)

// Knobs of the randomised session test.
const (
	// sessShortGrace is the short grace period (of a LoseSession, or a
	// session's Grace applied when its node dies). The test waits it out
	// at once (a bounded poll, or the time to pass), so that no session is
	// ever judged near its end and the model stays deterministic (rapid
	// replays a failure exactly).
	sessShortGrace = 10 * time.Millisecond
	// sessClockMargin is the distance allowed between the store's clock
	// (Redis TIME, ms) and the test's.
	sessClockMargin = 5 * time.Millisecond
	// sessKillTTL is the heartbeat ttl that kills a node.
	sessKillTTL = time.Millisecond
	// sessMaxSteps bounds the actions of one check (drawn in [1, max]).
	sessMaxSteps = 40
	// sessMaxSessions bounds the sessions one check creates.
	sessMaxSessions = 5
	// sessPoll is the poll interval of the bounded ExpiredSessions loops.
	sessPoll = 2 * time.Millisecond
)

// RunSessionsRapid drives one store (a fresh tenant and fresh node ids per
// check) with random, interleaved session and job operations on a few
// websocket sessions and two semaphores, and checks every answer against a
// model (see runSessionsRapid). The number of checks is rapid's
// (-rapid.checks, default 100); each check runs at most sessMaxSteps
// actions.
func RunSessionsRapid(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	st := newStore(t)
	runSessionsRapid(t, []store.Store{st})
}

// RunSessionsRapidShared is RunSessionsRapid on two store instances
// sharing one state (two server nodes on one Redis): every operation goes
// through one of them, drawn at random, and every check reads through
// either.
func RunSessionsRapidShared(t *testing.T, newPair func(t *testing.T) (a, b store.Store)) {
	t.Helper()
	a, b := newPair(t)
	stores := []store.Store{a}
	if b != a {
		stores = append(stores, b)
	}
	runSessionsRapid(t, stores)
}

// runSessionsRapid is the state machine. Actions: put a session (on node
// n1 or n2, after that node's Heartbeat; a short or long Grace),
// subscribe and unsubscribe (prefetch 1-3, channel "", c1 or c2), enqueue
// jobs (channels c1, c2), deliver an inflight job to a subscriber with
// room as Subscribers reports it (ActDelivered, Route websocket, Bind) or
// to "https" (no Bind), session-bound and unbound sync acquires (after
// UseSemaphore) and their releases, release/fail/cancel/retry of jobs
// (TransitionJob, or Release of the job's lease), LoseSession (short,
// long or the session's grace; with or without Node), ResumeSession by
// token (or a wrong one), EndSession, killing node n2 (a 1 ms heartbeat),
// and ExpiredSessions polled in a bounded loop. Whatever an ended or
// expired session returns gets the service's onSessionLost treatment
// (semaphore/sessions.go): its leases are released; its jobs are retried
// with their lease id (release), delivered to the next route, https,
// keeping their lease (redeliver), or left alone (wait).
//
// Job leases and sync leases never expire (a long leaseTimeout and TTL),
// so the job side of the model is exact. Only session ends are timed: a
// grace is either long (outlives the check) or short and waited out at
// once (the lose and killNode actions), so the model is exact too.
// Checked after every action:
//
//   - every job is in exactly one status, the model's, with its attempts,
//     lease and route (a job released after a session delivery has route
//     "websocket"); State's Queued, Inflight and InUse per channel and in
//     total match; dispatched jobs are queue heads that fit, and no job
//     stays queued while a permit is free; finished events are exact;
//   - GetSession of every session: its Leases and Jobs are exactly the
//     model's live bindings, with its node, loss, subscriptions and
//     semaphores; a session past its grace, or ended, is not found;
//   - Subscribers of both semaphores and both job channels list exactly
//     the connected sessions on live nodes with a matching subscription
//     (the exact channel preferred over ""), with Prefetch and Inflight
//     (the jobs bound on that subscription); Nodes lists the check's
//     nodes exactly while they are alive;
//   - an ended or expired session returns exactly its bindings, once
//     (ExpiredSessions never returns it again, ResumeSession and
//     GetSession no longer find it), and after onSessionLost it holds no
//     permit (InUse above).
func runSessionsRapid(t *testing.T, stores []store.Store) {
	t.Helper()
	var seq atomic.Int64
	rec := newBareRecorder()
	for _, st := range stores {
		st.SetJobListener(rec.listen)
	}
	t.Cleanup(func() {
		for _, st := range stores {
			st.SetJobListener(nil)
		}
	})
	rapid.Check(t, func(rt *rapid.T) {
		n := seq.Add(1)
		m := &sessModel{
			ctx:      t.Context(),
			stores:   stores,
			tenant:   fmt.Sprintf("sess-rapid-%d", n),
			rec:      rec,
			jobs:     map[string]*sjob{},
			leases:   map[string]*slease{},
			sems:     map[string]*ssem{},
			nodes:    map[string]*snode{},
			nodeName: []string{"n1", "n2"},
		}
		rec.take() // events of an earlier, failed check
		for _, name := range []string{"n1", "n2"} {
			m.nodes[name] = &snode{id: fmt.Sprintf("sess-rapid-%d-%d-%s", time.Now().UnixNano()%1e9, n, name)}
			require.NoError(rt, m.st().Heartbeat(m.ctx, m.nodes[name].id, rapidLongTTL))
		}
		for _, name := range []string{"x", "y"} {
			s := &ssem{
				name:        name,
				maxValue:    rapid.Int64Range(1, 3).Draw(rt, "maxValue_"+name),
				maxAttempts: rapid.IntRange(1, 3).Draw(rt, "maxAttempts_"+name),
				policy:      rapid.SampledFrom([]string{"release", "redeliver", "wait"}).Draw(rt, "onSessionLost_"+name),
				queues:      map[string][]string{},
			}
			m.sems[name] = s
			m.semNames = append(m.semNames, name)
			_, _, err := m.st().PutSemaphore(m.ctx, store.PutSemaphoreParams{
				Tenant: m.tenant, Name: name,
				Config: store.SemaphoreConfig{
					MaxValue: s.maxValue, MaxValueScope: store.ScopeTotal, LeaseTimeout: rapidLongTTL,
					MaxAttempts: s.maxAttempts, OnSessionLost: s.policy, Retention: keep,
				},
			})
			require.NoError(rt, err)
		}
		// Actions with their weights: sessions with subscriptions and
		// delivered jobs are what the interesting actions act on.
		actions := []struct {
			name   string
			weight int
			fn     func(*rapid.T)
		}{
			{"put", 1, m.put},
			{"subscribe", 3, m.subscribe},
			{"unsubscribe", 1, m.unsubscribe},
			{"enqueue", 3, m.enqueue},
			{"deliver", 4, m.deliver},
			{"acquire", 2, m.acquire},
			{"releaseSync", 1, m.releaseSync},
			{"finishJob", 2, m.finishJob},
			{"lose", 3, m.lose},
			{"resume", 2, m.resume},
			{"end", 1, m.end},
			{"killNode", 1, m.killNode},
			{"expire", 3, m.expire},
		}
		var keys []string
		fns := map[string]func(*rapid.T){}
		for _, a := range actions {
			for range a.weight {
				keys = append(keys, a.name)
			}
			fns[a.name] = a.fn
		}
		for range rapid.IntRange(0, 2).Draw(rt, "initialSessions") {
			m.put(rt)
			m.subscribe(rt)
		}
		for range rapid.IntRange(0, 2).Draw(rt, "initialJobs") {
			m.enqueue(rt)
		}
		m.check(rt)
		steps := rapid.IntRange(1, sessMaxSteps).Draw(rt, "steps")
		for range steps {
			fns[rapid.SampledFrom(keys).Draw(rt, "action")](rt)
			m.check(rt)
		}
		m.cleanup(rt)
	})
}

// Session states of the model.
type sessState int

const (
	sessConnected sessState = iota
	sessLost
	sessEnded
)

// Node states of the model.
type nodeState int

const (
	nodeAlive     nodeState = iota
	nodeDead                // heartbeat expired; not yet handled by ExpiredSessions
	nodeForgotten           // dead and handled (its sessions marked lost)
)

type snode struct {
	id    string
	state nodeState
	// while dead: its heartbeat expired at some instant in [diedFrom, diedBy]
	diedFrom, diedBy time.Time
}

type ssess struct {
	id    string
	grace time.Duration // Session.Grace
	state sessState
	node  string // model node name ("n1", "n2") while connected
	// while lost: LostAt in [lostFrom, lostBy]; it ends at LostAt+lostGrace
	lostFrom, lostBy time.Time
	lostGrace        time.Duration
	gone             bool // lost and its grace ran out (not yet returned)
	subs             []store.Subscription
	sems             []string
}

func (s *ssess) token() string { return "tok-" + s.id }

// sub returns the prefetch of the session's subscription to (sem, ch).
func (s *ssess) sub(sem, ch string) (int, bool) {
	for _, sub := range s.subs {
		if sub.Semaphore == sem && sub.Channel == ch {
			return sub.Prefetch, true
		}
	}
	return 0, false
}

func (s *ssess) use(sem string) {
	if !slices.Contains(s.sems, sem) {
		s.sems = append(s.sems, sem)
	}
}

type ssem struct {
	name        string
	maxValue    int64
	maxAttempts int
	policy      string              // onSessionLost
	queues      map[string][]string // channel -> scheduled job ids, FIFO
	order       []string            // job ids, creation order
}

type sjob struct {
	id, sem, channel string
	status           store.JobStatus
	attempts         int
	lease            string // while inflight
	route            string
	session          string // the session its lease is bound to ("" none)
	subChannel       string // the channel of the subscription it counts on
}

type slease struct {
	id, sem, session string
}

// sessModel is the state machine of RunSessionsRapid.
type sessModel struct {
	ctx        context.Context
	stores     []store.Store
	reads      int // round-robin over stores for the checks
	tenant     string
	rec        *recorder
	nodes      map[string]*snode
	nodeName   []string
	sems       map[string]*ssem
	semNames   []string
	sessions   []*ssess
	jobs       map[string]*sjob
	leases     map[string]*slease // sync leases
	leaseOrder []string           // their ids, in acquisition order
}

var (
	sessJobChannels = []string{"c1", "c2"}
	sessSubChannels = []string{"", "c1", "c2"}
)

// st returns a store for a read (round-robin when there are two).
func (m *sessModel) st() store.Store {
	m.reads++
	return m.stores[m.reads%len(m.stores)]
}

// via draws the store (node) an operation goes through.
func (m *sessModel) via(rt *rapid.T) store.Store {
	if len(m.stores) == 1 {
		return m.stores[0]
	}
	return m.stores[rapid.IntRange(0, len(m.stores)-1).Draw(rt, "via")]
}

func (m *sessModel) sp(s *ssess) store.SessionParams {
	return store.SessionParams{Tenant: m.tenant, Session: s.id}
}

// inUse counts the permits held on a semaphore.
func (m *sessModel) inUse(sem string) int64 {
	var n int64
	for _, l := range m.leases {
		if l.sem == sem {
			n++
		}
	}
	for _, j := range m.jobs {
		if j.sem == sem && j.status == store.JobInflight {
			n++
		}
	}
	return n
}

// boundLeases and boundJobs are a session's live bindings, in the order
// the leases and jobs were made (never in the order of their random ids,
// so that a replay by rapid does the same).
func (m *sessModel) boundLeases(s *ssess) []string {
	var ids []string
	for _, id := range m.leaseOrder {
		if m.leases[id].session == s.id {
			ids = append(ids, id)
		}
	}
	return ids
}

func (m *sessModel) boundJobs(s *ssess) []string {
	var ids []string
	for _, name := range m.semNames {
		for _, id := range m.sems[name].order {
			if j := m.jobs[id]; j.status == store.JobInflight && j.session == s.id {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// dropLease forgets a sync lease that ended.
func (m *sessModel) dropLease(id string) {
	delete(m.leases, id)
	m.leaseOrder = slices.DeleteFunc(m.leaseOrder, func(x string) bool { return x == id })
}

// inflight counts the jobs bound on a session's subscription (sem, ch).
func (m *sessModel) inflight(s *ssess, sem, ch string) int {
	n := 0
	for _, j := range m.jobs {
		if j.status == store.JobInflight && j.session == s.id && j.sem == sem && j.subChannel == ch {
			n++
		}
	}
	return n
}

// loss returns when a session counts as lost (LostAt in [from, by]) and
// its grace from then: a lost session, or one connected on a dead node.
func (m *sessModel) loss(s *ssess) (from, by time.Time, grace time.Duration, ok bool) {
	switch {
	case s.state == sessLost:
		return s.lostFrom, s.lostBy, s.lostGrace, true
	case s.state == sessConnected && m.nodes[s.node].state == nodeDead:
		n := m.nodes[s.node]
		return n.diedFrom, n.diedBy, s.grace, true
	}
	return time.Time{}, time.Time{}, 0, false
}

// pastGrace reports that s counts as lost and its grace ran out: lost
// past a short grace (waited out by lose), or connected with a short
// Grace on a dead node (waited out by killNode).
func (m *sessModel) pastGrace(s *ssess) bool {
	switch {
	case s.state == sessLost:
		return s.gone
	case s.state == sessConnected && m.nodes[s.node].state == nodeDead:
		return s.grace < rapidLongTTL
	}
	return false
}

// finds reports whether a session operation finds s. resume:
// ResumeSession, which also judges a session connected on a dead node by
// its loss (the other operations read the record, connected until
// ExpiredSessions marks it lost).
func (m *sessModel) finds(s *ssess, resume bool) bool {
	switch {
	case s.state == sessEnded:
		return false
	case s.state == sessConnected && !resume:
		return true
	}
	return !m.pastGrace(s)
}

// found checks err against what the model expects and reports whether
// the session was found.
func found(rt *rapid.T, want bool, err error, msg string, args ...any) bool {
	msgAndArgs := append([]any{msg}, args...)
	if want {
		require.NoError(rt, err, msgAndArgs...)
		return true
	}
	require.ErrorIs(rt, err, store.ErrSessionNotFound, msgAndArgs...)
	return false
}

func sameStrings(rt *rapid.T, want, got []string, msg string, args ...any) {
	msgAndArgs := append([]any{msg}, args...)
	if len(want) == 0 {
		require.Empty(rt, got, msgAndArgs...)
		return
	}
	require.ElementsMatch(rt, want, got, msgAndArgs...)
}

// requireSession checks a session a store returned against the model.
func (m *sessModel) requireSession(rt *rapid.T, s *ssess, got store.Session, op string) {
	require.Equal(rt, s.id, got.ID, op)
	require.Equal(rt, m.tenant, got.Tenant, op)
	sameStrings(rt, m.boundLeases(s), got.Leases, "%s: leases bound to session %s", op, s.id)
	sameStrings(rt, m.boundJobs(s), got.Jobs, "%s: jobs bound to session %s", op, s.id)
	sameStrings(rt, s.sems, got.Semaphores, "%s: semaphores of session %s", op, s.id)
	if len(s.subs) == 0 {
		require.Empty(rt, got.Subscriptions, "%s: subscriptions of session %s", op, s.id)
	} else {
		require.ElementsMatch(rt, s.subs, got.Subscriptions, "%s: subscriptions of session %s", op, s.id)
	}
	require.Equal(rt, s.token(), got.ResumeTokenHash, op)
	require.Equal(rt, s.grace, got.Grace, op)
}

// requireState checks a found session's connection state.
func (m *sessModel) requireState(rt *rapid.T, s *ssess, got store.Session, op string) {
	switch s.state {
	case sessConnected:
		require.Equal(rt, m.nodes[s.node].id, got.Node, "%s: session %s is connected there", op, s.id)
		require.True(rt, got.LostAt.IsZero(), "%s: session %s is connected", op, s.id)
		require.True(rt, got.GraceUntil.IsZero(), "%s: session %s is connected", op, s.id)
	case sessLost:
		m.requireLoss(rt, s, got, op)
	}
}

// requireLoss checks the LostAt and GraceUntil of a lost session.
func (m *sessModel) requireLoss(rt *rapid.T, s *ssess, got store.Session, op string) {
	from, by, grace, ok := m.loss(s)
	require.True(rt, ok, "%s: session %s is not lost in the model", op, s.id)
	require.Empty(rt, got.Node, "%s: a lost session has no node", op)
	require.WithinRange(rt, got.LostAt, from.Add(-clockSlack), by.Add(clockSlack), "%s: LostAt of session %s", op, s.id)
	require.WithinDuration(rt, got.LostAt.Add(grace), got.GraceUntil, 2*time.Millisecond, "%s: GraceUntil of session %s", op, s.id)
}

// settle applies the JobEvents of the last operation: finished must be
// exactly the jobs the model finished in it; dispatched jobs must be
// heads of their queues and fit. Then no job may stay queued while a
// permit of its semaphore is free.
func (m *sessModel) settle(rt *rapid.T, finished ...string) {
	d, f := m.rec.take()
	require.ElementsMatch(rt, finished, jobIDs(f), "finished events")
	for _, fj := range f {
		require.Equal(rt, m.tenant, fj.Tenant)
		require.Equal(rt, m.jobs[fj.ID].status, fj.Status, "finished event status of %s", fj.ID)
		require.Nil(rt, fj.Lease, "a finished job holds no lease")
	}
	for _, dj := range d {
		j, ok := m.jobs[dj.ID]
		require.True(rt, ok, "dispatched an unknown job %s (tenant %s)", dj.ID, dj.Tenant)
		sem := m.sems[j.sem]
		require.Equal(rt, store.JobScheduled, j.status, "dispatched a %s job", j.status)
		require.Equal(rt, j.id, sem.queues[j.channel][0], "a dispatched job is the head of its channel's queue")
		require.Less(rt, m.inUse(j.sem), sem.maxValue, "dispatched without a free permit on %s", j.sem)
		require.Equal(rt, store.JobInflight, dj.Status)
		require.Equal(rt, j.attempts+1, dj.Attempts, "a dispatch counts an attempt")
		require.NotNil(rt, dj.Lease)
		sem.queues[j.channel] = sem.queues[j.channel][1:]
		j.status, j.attempts, j.lease, j.session, j.subChannel = store.JobInflight, dj.Attempts, dj.Lease.ID, "", ""
	}
	for _, name := range m.semNames {
		sem := m.sems[name]
		for ch, q := range sem.queues {
			if len(q) > 0 {
				require.GreaterOrEqual(rt, m.inUse(name), sem.maxValue, "a job stays queued on %s/%s although a permit is free", name, ch)
			}
		}
	}
}

// requireJob checks a returned job against the model.
func (m *sessModel) requireJob(rt *rapid.T, got store.Job) {
	j := m.jobs[got.ID]
	require.Equal(rt, j.status, got.Status, "status of job %s", got.ID)
	require.Equal(rt, j.attempts, got.Attempts, "attempts of job %s", got.ID)
	require.Equal(rt, j.status == store.JobInflight, got.Lease != nil, "a lease exactly while inflight (job %s)", got.ID)
	if got.Lease != nil {
		require.Equal(rt, j.lease, got.Lease.ID, "lease of job %s", got.ID)
	}
	require.Equal(rt, j.route, got.Route, "route of job %s", got.ID)
	require.Equal(rt, j.channel, got.Channel)
	require.Equal(rt, m.tenant, got.Tenant)
}

// endJobLease models the end of an inflight job's lease: the job leaves
// inflight and its binding ends.
func (j *sjob) endLease(status store.JobStatus) {
	j.status, j.lease, j.session, j.subChannel = status, "", "", ""
}

// retry models ActRetry of an inflight job; it reports whether the job
// finished (timeout).
func (m *sessModel) retry(j *sjob) bool {
	sem := m.sems[j.sem]
	if j.attempts < sem.maxAttempts {
		j.endLease(store.JobScheduled)
		sem.queues[j.channel] = append(sem.queues[j.channel], j.id)
		return false
	}
	j.endLease(store.JobTimeout)
	return true
}

// pickSession draws one of the sessions made so far (ended ones too), or
// nil.
func (m *sessModel) pickSession(rt *rapid.T) *ssess {
	if len(m.sessions) == 0 {
		return nil
	}
	return m.sessions[rapid.IntRange(0, len(m.sessions)-1).Draw(rt, "session")]
}

// pickHolder mostly draws a session that holds something (a lease or a
// job), else any.
func (m *sessModel) pickHolder(rt *rapid.T) *ssess {
	var holders []*ssess
	for _, s := range m.sessions {
		if s.state != sessEnded && len(m.boundLeases(s))+len(m.boundJobs(s)) > 0 {
			holders = append(holders, s)
		}
	}
	if len(holders) > 0 && rapid.IntRange(0, 3).Draw(rt, "holder") > 0 {
		return holders[rapid.IntRange(0, len(holders)-1).Draw(rt, "session")]
	}
	return m.pickSession(rt)
}

// liveNode draws a node to act on and sends its heartbeat (it revives a
// forgotten node). A node that died and was not handled by
// ExpiredSessions yet is not revived (its sessions count as lost since
// it died): n1 acts instead.
func (m *sessModel) liveNode(rt *rapid.T, st store.Store) string {
	name := rapid.SampledFrom(m.nodeName).Draw(rt, "node")
	if m.nodes[name].state == nodeDead {
		name = "n1"
	}
	n := m.nodes[name]
	require.NoError(rt, st.Heartbeat(m.ctx, n.id, rapidLongTTL))
	n.state = nodeAlive
	return name
}

func (m *sessModel) put(rt *rapid.T) {
	if len(m.sessions) >= sessMaxSessions {
		return
	}
	st := m.via(rt)
	s := &ssess{
		id:    fmt.Sprintf("s%d", len(m.sessions)+1),
		grace: rapid.SampledFrom([]time.Duration{sessShortGrace, rapidLongTTL}).Draw(rt, "grace"),
	}
	s.node = m.liveNode(rt, st)
	require.NoError(rt, st.PutSession(m.ctx, store.Session{
		Tenant: m.tenant, ID: s.id, Node: m.nodes[s.node].id, ResumeTokenHash: s.token(), Grace: s.grace, KeyID: "k1",
	}))
	m.sessions = append(m.sessions, s)
}

func (m *sessModel) subscribe(rt *rapid.T) {
	s := m.pickSession(rt)
	if s == nil {
		return
	}
	sub := store.Subscription{
		Semaphore: rapid.SampledFrom(m.semNames).Draw(rt, "semaphore"),
		Channel:   rapid.SampledFrom(sessSubChannels).Draw(rt, "subChannel"),
		Prefetch:  rapid.IntRange(1, 3).Draw(rt, "prefetch"),
	}
	node := ""
	if s.state == sessConnected {
		node = m.nodes[s.node].id
	}
	err := m.via(rt).Subscribe(m.ctx, store.SubscribeParams{Tenant: m.tenant, Session: s.id, Node: node, Subscription: sub})
	if !found(rt, m.finds(s, false), err, "subscribe session %s (%v)", s.id, s.state) {
		return
	}
	if i := slices.IndexFunc(s.subs, func(x store.Subscription) bool {
		return x.Semaphore == sub.Semaphore && x.Channel == sub.Channel
	}); i >= 0 {
		s.subs[i] = sub
	} else {
		s.subs = append(s.subs, sub)
	}
	s.use(sub.Semaphore)
}

func (m *sessModel) unsubscribe(rt *rapid.T) {
	s := m.pickSession(rt)
	if s == nil {
		return
	}
	sub := store.Subscription{
		Semaphore: rapid.SampledFrom(m.semNames).Draw(rt, "semaphore"),
		Channel:   rapid.SampledFrom(sessSubChannels).Draw(rt, "subChannel"),
	}
	if len(s.subs) > 0 && rapid.Bool().Draw(rt, "existing") {
		sub = rapid.SampledFrom(s.subs).Draw(rt, "sub")
	}
	err := m.via(rt).Unsubscribe(m.ctx, m.sp(s), sub)
	if !found(rt, m.finds(s, false), err, "unsubscribe session %s (%v)", s.id, s.state) {
		return
	}
	s.subs = slices.DeleteFunc(s.subs, func(x store.Subscription) bool {
		return x.Semaphore == sub.Semaphore && x.Channel == sub.Channel
	})
}

func (m *sessModel) enqueue(rt *rapid.T) {
	sem := m.sems[rapid.SampledFrom(m.semNames).Draw(rt, "semaphore")]
	ch := rapid.SampledFrom(sessJobChannels).Draw(rt, "channel")
	got, created, err := m.via(rt).EnqueueJob(m.ctx, store.EnqueueParams{
		Tenant: m.tenant, Semaphore: sem.name, Channel: ch, Payload: []byte(`{}`),
	})
	require.NoError(rt, err)
	require.True(rt, created)
	m.jobs[got.ID] = &sjob{id: got.ID, sem: sem.name, channel: ch, status: store.JobScheduled}
	sem.order = append(sem.order, got.ID)
	sem.queues[ch] = append(sem.queues[ch], got.ID)
	m.settle(rt)
	m.requireJob(rt, got)
}

// pickJob draws a job of the model in one of the statuses, or nil.
func (m *sessModel) pickJob(rt *rapid.T, statuses ...store.JobStatus) *sjob {
	var ids []string
	for _, name := range m.semNames {
		for _, id := range m.sems[name].order {
			if slices.Contains(statuses, m.jobs[id].status) {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return m.jobs[rapid.SampledFrom(ids).Draw(rt, "job")]
}

// wantSubscribers is what Subscribers must return for (sem, ch).
func (m *sessModel) wantSubscribers(sem, ch string) []store.Subscriber {
	out := []store.Subscriber{}
	for _, s := range m.sessions {
		lost := s.state == sessLost && !s.gone
		if !lost && (s.state != sessConnected || m.nodes[s.node].state != nodeAlive) {
			continue
		}
		node := ""
		if !lost {
			node = m.nodes[s.node].id
		}
		for _, c := range []string{ch, ""} {
			if p, ok := s.sub(sem, c); ok {
				out = append(out, store.Subscriber{Session: s.id, Node: node, Prefetch: p, Inflight: m.inflight(s, sem, c), Lost: lost})
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return out
}

// subscribers reads and checks Subscribers.
func (m *sessModel) subscribers(rt *rapid.T, st store.Store, sem, ch string) []store.Subscriber {
	got, err := st.Subscribers(m.ctx, m.tenant, sem, ch)
	require.NoError(rt, err)
	sort.Slice(got, func(i, j int) bool { return got[i].Session < got[j].Session })
	require.Equal(rt, m.wantSubscribers(sem, ch), got, "subscribers of %s/%s", sem, ch)
	return got
}

// deliver hands an inflight job to a subscriber with room, as the
// websocket route does (or to the https route).
func (m *sessModel) deliver(rt *rapid.T) {
	// Mostly a job that a subscriber has room for (as the model knows it;
	// Subscribers is checked against it below).
	var ready []*sjob
	for _, name := range m.semNames {
		for _, id := range m.sems[name].order {
			if j := m.jobs[id]; j.status == store.JobInflight && slices.ContainsFunc(m.wantSubscribers(j.sem, j.channel), func(s store.Subscriber) bool {
				return s.Inflight < s.Prefetch
			}) {
				ready = append(ready, j)
			}
		}
	}
	var j *sjob
	if len(ready) > 0 && rapid.IntRange(0, 3).Draw(rt, "ready") > 0 {
		j = rapid.SampledFrom(ready).Draw(rt, "job")
	} else if j = m.pickJob(rt, store.JobInflight); j == nil {
		return
	}
	st := m.via(rt)
	var room []store.Subscriber
	for _, sub := range m.subscribers(rt, st, j.sem, j.channel) {
		if sub.Inflight < sub.Prefetch {
			room = append(room, sub)
		}
	}
	p := store.TransitionParams{Tenant: m.tenant, JobID: j.id, Action: store.ActDelivered, Route: "https", LeaseID: j.lease}
	var s *ssess
	var subCh string
	if len(room) > 0 && rapid.IntRange(0, 4).Draw(rt, "websocket") > 0 {
		pick := rapid.SampledFrom(room).Draw(rt, "subscriber")
		s = m.sessions[slices.IndexFunc(m.sessions, func(x *ssess) bool { return x.id == pick.Session })]
		if _, ok := s.sub(j.sem, j.channel); ok {
			subCh = j.channel
		}
		p.Route, p.Bind = "websocket", &store.SessionBinding{Session: s.id, Channel: subCh}
	}
	got, err := st.TransitionJob(m.ctx, p)
	require.NoError(rt, err, "deliver job %s on %s", j.id, p.Route)
	j.route, j.session, j.subChannel = p.Route, "", ""
	if s != nil {
		j.session, j.subChannel = s.id, subCh
	}
	m.settle(rt)
	m.requireJob(rt, got)
}

// acquire takes a sync lease, bound to a session (after UseSemaphore) or
// not.
func (m *sessModel) acquire(rt *rapid.T) {
	sem := m.sems[rapid.SampledFrom(m.semNames).Draw(rt, "semaphore")]
	st := m.via(rt)
	var s *ssess
	if rapid.IntRange(0, 3).Draw(rt, "bound") > 0 {
		if s = m.pickSession(rt); s == nil {
			return
		}
		err := st.UseSemaphore(m.ctx, m.sp(s), sem.name)
		if !found(rt, m.finds(s, false), err, "UseSemaphore of session %s (%v)", s.id, s.state) {
			return
		}
		s.use(sem.name)
	}
	p := store.AcquireParams{Tenant: m.tenant, Semaphore: sem.name, Weight: 1, TTL: rapidLongTTL}
	if s != nil {
		p.Session = s.id
	}
	l, err := st.Acquire(m.ctx, p)
	if m.inUse(sem.name) >= sem.maxValue {
		require.ErrorIs(rt, err, store.ErrNoPermit, "acquire on a full %s", sem.name)
		m.settle(rt)
		return
	}
	require.NoError(rt, err, "acquire on %s with a free permit", sem.name)
	m.leases[l.ID] = &slease{id: l.ID, sem: sem.name, session: p.Session}
	m.leaseOrder = append(m.leaseOrder, l.ID)
	m.settle(rt)
}

func (m *sessModel) releaseSync(rt *rapid.T) {
	if len(m.leases) == 0 {
		return
	}
	id := m.leaseOrder[rapid.IntRange(0, len(m.leaseOrder)-1).Draw(rt, "lease")]
	_, err := m.via(rt).Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: id})
	require.NoError(rt, err, "release of a live sync lease")
	m.dropLease(id)
	m.settle(rt)
}

// finishJob ends an inflight job (release, fail, cancel, retry, or
// Release of its lease: a worker's answer) or cancels a scheduled one.
func (m *sessModel) finishJob(rt *rapid.T) {
	j := m.pickJob(rt, store.JobInflight, store.JobScheduled)
	if j == nil {
		return
	}
	st := m.via(rt)
	if j.status == store.JobScheduled {
		got, err := st.TransitionJob(m.ctx, store.TransitionParams{Tenant: m.tenant, JobID: j.id, Action: store.ActCancel})
		require.NoError(rt, err, "cancel of a scheduled job")
		sem := m.sems[j.sem]
		sem.queues[j.channel] = slices.DeleteFunc(sem.queues[j.channel], func(id string) bool { return id == j.id })
		j.endLease(store.JobCancelled)
		m.settle(rt, j.id)
		m.requireJob(rt, got)
		return
	}
	how := rapid.SampledFrom([]string{"releaseLease", string(store.ActRelease), string(store.ActFail), string(store.ActCancel), string(store.ActRetry)}).Draw(rt, "how")
	if how == "releaseLease" {
		_, err := st.Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: j.lease})
		require.NoError(rt, err, "release of an inflight job's lease")
		j.endLease(store.JobDone)
		m.settle(rt, j.id)
		return
	}
	p := store.TransitionParams{Tenant: m.tenant, JobID: j.id, Action: store.JobAction(how), Error: "e"}
	if rapid.Bool().Draw(rt, "withLease") {
		p.LeaseID = j.lease
	}
	got, err := st.TransitionJob(m.ctx, p)
	require.NoError(rt, err, "%s of an inflight job", how)
	var finished []string
	switch p.Action {
	case store.ActRelease:
		j.endLease(store.JobDone)
		finished = append(finished, j.id)
	case store.ActFail:
		j.endLease(store.JobError)
		finished = append(finished, j.id)
	case store.ActCancel:
		j.endLease(store.JobCancelled)
		finished = append(finished, j.id)
	case store.ActRetry:
		if m.retry(j) {
			finished = append(finished, j.id)
		}
	}
	m.settle(rt, finished...)
	m.requireJob(rt, got)
}

func (m *sessModel) lose(rt *rapid.T) {
	s := m.pickHolder(rt)
	if s == nil {
		return
	}
	grace := rapid.SampledFrom([]time.Duration{0, sessShortGrace, sessShortGrace, rapidLongTTL}).Draw(rt, "loseGrace")
	p := m.sp(s)
	switch rapid.IntRange(0, 2).Draw(rt, "loseNode") {
	case 1: // the node it is connected on (or was, last)
		if s.node != "" {
			p.Node = m.nodes[s.node].id
		}
	case 2: // another node
		p.Node = m.nodes["n1"].id
		if s.node == "n1" {
			p.Node = m.nodes["n2"].id
		}
	}
	before := time.Now()
	err := m.via(rt).LoseSession(m.ctx, p, grace)
	after := time.Now()
	if !found(rt, m.finds(s, false), err, "lose session %s (%v)", s.id, s.state) {
		return
	}
	if s.state != sessConnected || (p.Node != "" && p.Node != m.nodes[s.node].id) {
		return // lost already, or connected elsewhere: unchanged
	}
	if grace <= 0 {
		grace = s.grace
	}
	s.state, s.node = sessLost, ""
	s.lostFrom, s.lostBy, s.lostGrace = before, after, grace
	if grace >= rapidLongTTL {
		return
	}
	// Wait out the short grace: from the first GetSession that misses it,
	// the session is gone for every operation but EndSession and
	// ExpiredSessions.
	limit := time.Now().Add(eventually)
	for {
		_, err := m.st().GetSession(m.ctx, m.sp(s))
		if err != nil {
			require.ErrorIs(rt, err, store.ErrSessionNotFound)
			break
		}
		require.True(rt, time.Now().Before(limit), "session %s lost with grace %v still found after %v", s.id, grace, eventually)
		<-time.After(sessPoll)
	}
	require.False(rt, time.Now().Add(sessClockMargin).Before(before.Add(grace)), "session %s lost with grace %v was gone before its grace ran out", s.id, grace)
	s.gone = true
}

func (m *sessModel) resume(rt *rapid.T) {
	s := m.pickSession(rt)
	var lost []*ssess
	for _, x := range m.sessions {
		if _, _, _, ok := m.loss(x); ok {
			lost = append(lost, x)
		}
	}
	if len(lost) > 0 && rapid.IntRange(0, 3).Draw(rt, "resumeLost") > 0 {
		s = rapid.SampledFrom(lost).Draw(rt, "lostSession")
	}
	if s == nil {
		return
	}
	st := m.via(rt)
	node := m.liveNode(rt, st)
	if rapid.IntRange(0, 4).Draw(rt, "wrongToken") == 0 {
		_, err := st.ResumeSession(m.ctx, m.tenant, "tok-none", m.nodes[node].id)
		require.ErrorIs(rt, err, store.ErrSessionNotFound, "resume with an unknown token")
		return
	}
	got, err := st.ResumeSession(m.ctx, m.tenant, s.token(), m.nodes[node].id)
	if !found(rt, m.finds(s, true), err, "resume session %s (%v)", s.id, s.state) {
		return
	}
	s.state, s.node, s.gone = sessConnected, node, false
	m.requireSession(rt, s, got, "ResumeSession")
	m.requireState(rt, s, got, "ResumeSession")
}

func (m *sessModel) end(rt *rapid.T) {
	s := m.pickHolder(rt)
	if s == nil {
		return
	}
	got, err := m.via(rt).EndSession(m.ctx, m.sp(s))
	if s.state == sessEnded {
		require.ErrorIs(rt, err, store.ErrSessionNotFound, "end of an ended session %s", s.id)
		return
	}
	require.NoError(rt, err, "EndSession finds session %s until it is returned (%v)", s.id, s.state)
	m.requireState(rt, s, got, "EndSession")
	m.ended(rt, s, got, "EndSession")
}

// ended checks what an ended (or expired) session returned, applies the
// service's onSessionLost to it and checks that it is gone.
func (m *sessModel) ended(rt *rapid.T, s *ssess, got store.Session, op string) {
	m.requireSession(rt, s, got, op)
	leases, jobs := m.boundLeases(s), m.boundJobs(s)
	s.state, s.node = sessEnded, ""
	for _, id := range leases {
		_, err := m.st().Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: id})
		require.NoError(rt, err, "%s: release of lease %s of ended session %s", op, id, s.id)
		m.dropLease(id)
		m.settle(rt)
	}
	for _, id := range jobs {
		j := m.jobs[id]
		switch m.sems[j.sem].policy {
		case "release":
			got, err := m.st().TransitionJob(m.ctx, store.TransitionParams{
				Tenant: m.tenant, JobID: id, Action: store.ActRetry, LeaseID: j.lease, Error: "websocket session lost",
			})
			require.NoError(rt, err, "%s: onSessionLost release of job %s of session %s", op, id, s.id)
			var finished []string
			if m.retry(j) {
				finished = append(finished, id)
			}
			m.settle(rt, finished...)
			m.requireJob(rt, got)
		case "redeliver":
			got, err := m.st().TransitionJob(m.ctx, store.TransitionParams{
				Tenant: m.tenant, JobID: id, Action: store.ActDelivered, Route: "https", LeaseID: j.lease,
			})
			require.NoError(rt, err, "%s: onSessionLost redeliver of job %s of session %s", op, id, s.id)
			j.route, j.session, j.subChannel = "https", "", ""
			m.settle(rt)
			m.requireJob(rt, got)
		}
		// "wait": the job keeps its lease until it times out.
	}
	st := m.st()
	_, err := st.GetSession(m.ctx, m.sp(s))
	require.ErrorIs(rt, err, store.ErrSessionNotFound, "%s: session %s is gone", op, s.id)
	_, err = st.ResumeSession(m.ctx, m.tenant, s.token(), m.nodes["n1"].id)
	require.ErrorIs(rt, err, store.ErrSessionNotFound, "%s: session %s cannot resume", op, s.id)
}

// killNode stops n2's heartbeat: it is dead once Nodes no longer lists it.
func (m *sessModel) killNode(rt *rapid.T) {
	n := m.nodes["n2"]
	if n.state != nodeAlive {
		return
	}
	st := m.via(rt)
	before := time.Now()
	require.NoError(rt, st.Heartbeat(m.ctx, n.id, sessKillTTL))
	after := time.Now()
	n.state, n.diedFrom, n.diedBy = nodeDead, before.Add(sessKillTTL), after.Add(sessKillTTL)
	limit := time.Now().Add(eventually)
	for {
		nodes, err := st.Nodes(m.ctx)
		require.NoError(rt, err)
		if !slices.Contains(nodes, n.id) {
			break
		}
		require.True(rt, time.Now().Before(limit), "node %s still listed %v after its heartbeat expired", n.id, eventually)
		<-time.After(sessPoll)
	}
	// Its sessions count as lost since it died: wait out the short Grace
	// (they are gone for ResumeSession from then on).
	for _, s := range m.sessions {
		if s.state == sessConnected && s.node == "n2" && s.grace < rapidLongTTL {
			waitUntil(n.diedBy.Add(sessShortGrace + sessClockMargin))
			break
		}
	}
}

// expire collects the sessions whose grace ran out with ExpiredSessions,
// polled in a bounded loop: every session past its grace must come back,
// exactly once, and no other; a dead node's connected sessions are
// marked lost (since it died).
func (m *sessModel) expire(rt *rapid.T) {
	var due []*ssess
	for _, s := range m.sessions {
		if m.pastGrace(s) {
			due = append(due, s)
		}
	}
	n2 := m.nodes["n2"]
	st := m.via(rt)
	collect := func() {
		lost, err := st.ExpiredSessions(m.ctx, 0)
		require.NoError(rt, err)
		// in the model's order, whatever the store's (a replay does the same)
		sort.Slice(lost, func(i, j int) bool { return lost[i].Session.ID < lost[j].Session.ID })
		for _, l := range lost {
			if l.Session.Tenant != m.tenant {
				continue // left by an earlier (failed) check
			}
			i := slices.IndexFunc(m.sessions, func(x *ssess) bool { return x.id == l.Session.ID })
			require.GreaterOrEqual(rt, i, 0, "ExpiredSessions returned an unknown session %s", l.Session.ID)
			s := m.sessions[i]
			require.NotEqual(rt, sessEnded, s.state, "ExpiredSessions returned session %s again, or after its end", s.id)
			require.True(rt, m.pastGrace(s), "ExpiredSessions returned session %s (%v) before its grace ran out", s.id, s.state)
			m.requireLoss(rt, s, l.Session, "ExpiredSessions")
			m.ended(rt, s, l.Session, "ExpiredSessions")
		}
	}
	// handled reports whether the dead n2's remaining connected sessions
	// (a long Grace) are marked lost.
	handled := func() bool {
		if n2.state != nodeDead {
			return true
		}
		for _, s := range m.sessions {
			if s.state != sessConnected || s.node != "n2" || m.pastGrace(s) {
				continue
			}
			got, err := m.st().GetSession(m.ctx, m.sp(s))
			require.NoError(rt, err, "session %s of the dead node within its grace", s.id)
			if got.LostAt.IsZero() {
				return false
			}
		}
		return true
	}
	limit := time.Now().Add(eventually)
	for {
		collect()
		done := handled()
		for _, s := range due {
			done = done && s.state == sessEnded
		}
		if done {
			break
		}
		require.True(rt, time.Now().Before(limit), "ExpiredSessions did not return every session past its grace within %v", eventually)
		<-time.After(sessPoll)
	}
	if n2.state == nodeDead {
		for _, s := range m.sessions {
			if s.state == sessConnected && s.node == "n2" {
				s.state, s.node = sessLost, ""
				s.lostFrom, s.lostBy, s.lostGrace = n2.diedFrom, n2.diedBy, s.grace
			}
		}
		n2.state = nodeForgotten
	}
	collect() // once more: nothing is returned twice
}

// check compares State, ListJobs, every session and the subscriber
// registry with the model, after every action.
func (m *sessModel) check(rt *rapid.T) { m.checkAll(rt, false) }

// checkAll is check; final also reads the sessions that ended.
func (m *sessModel) checkAll(rt *rapid.T, final bool) {
	m.settle(rt)
	for _, name := range m.semNames {
		sem := m.sems[name]
		state, err := m.st().State(m.ctx, m.tenant, name)
		require.NoError(rt, err)
		var queued, inflight int64
		for _, ch := range sessJobChannels {
			var in int64
			for _, j := range m.jobs {
				if j.sem == name && j.channel == ch && j.status == store.JobInflight {
					in++
				}
			}
			cs := state.Channels[ch]
			require.Equal(rt, int64(len(sem.queues[ch])), cs.Queued, "queued on %s/%s", name, ch)
			require.Equal(rt, in, cs.Inflight, "inflight on %s/%s", name, ch)
			queued, inflight = queued+int64(len(sem.queues[ch])), inflight+in
		}
		require.Equal(rt, queued, state.Queued, "queued on %s", name)
		require.Equal(rt, inflight, state.Inflight, "inflight on %s", name)
		require.Equal(rt, m.inUse(name), state.InUse, "permits in use on %s (sync leases + inflight jobs)", name)

		jobs, next, err := m.st().ListJobs(m.ctx, store.ListJobsParams{Tenant: m.tenant, Semaphore: name, Limit: 1000})
		require.NoError(rt, err)
		require.Empty(rt, next)
		require.Equal(rt, append([]string{}, sem.order...), jobIDs(jobs), "every job of %s listed once, oldest first", name)
		for _, j := range jobs {
			m.requireJob(rt, j)
			if j.Status == store.JobDone && m.jobs[j.ID].route == "websocket" {
				require.Equal(rt, "websocket", j.Route, "a job released after a session delivery keeps route websocket")
			}
		}
	}
	for _, s := range m.sessions {
		if s.state == sessEnded && !final {
			continue // found gone when it ended, and again at the end
		}
		got, err := m.st().GetSession(m.ctx, m.sp(s))
		if !found(rt, m.finds(s, false), err, "GetSession %s (%v)", s.id, s.state) {
			continue
		}
		m.requireSession(rt, s, got, "GetSession")
		m.requireState(rt, s, got, "GetSession")
	}
	for _, name := range m.semNames {
		for _, ch := range sessJobChannels {
			m.subscribers(rt, m.st(), name, ch)
		}
	}
	nodes, err := m.st().Nodes(m.ctx)
	require.NoError(rt, err)
	for _, name := range m.nodeName {
		n := m.nodes[name]
		require.Equal(rt, n.state == nodeAlive, slices.Contains(nodes, n.id), "node %s listed exactly while alive (%v)", name, n.state)
	}
}

// cleanup collects the check's sessions past their grace, ends the others
// (checked like the expire and end actions) and stops its nodes'
// heartbeats, so that later checks on the store find little of this one.
func (m *sessModel) cleanup(rt *rapid.T) {
	m.expire(rt) // what is due goes through ExpiredSessions
	for _, s := range m.sessions {
		if s.state == sessEnded {
			continue
		}
		got, err := m.st().EndSession(m.ctx, m.sp(s))
		require.NoError(rt, err, "EndSession of session %s (%v)", s.id, s.state)
		m.ended(rt, s, got, "EndSession")
	}
	m.checkAll(rt, true)
	for _, n := range m.nodes {
		require.NoError(rt, m.st().Heartbeat(m.ctx, n.id, sessKillTTL))
	}
}
