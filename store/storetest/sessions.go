package storetest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// The session tests (store.SessionStore): presence, sessions, the
// subscriber registry, loss, resume and expiry, tickets and the node bus.
// Times are real: short heartbeats and grace periods that the tests wait
// out by polling, never by sleeping for an event.

// sessionTests are run by Run.
var sessionTests = []struct {
	name string
	fn   func(t *testing.T, f *fixture)
}{
	{"Sessions_HeartbeatExpiry", testHeartbeatExpiry},
	{"Sessions_PutGetEnd", testSessionPutGetEnd},
	{"Sessions_BindLeasesAndJobs", testSessionBind},
	{"Sessions_Subscribers", testSubscribers},
	{"Sessions_SubscribersNeedLiveNode", testSubscribersLiveNode},
	{"Sessions_LoseResume", testLoseResume},
	{"Sessions_ExpireAfterGrace", testExpireAfterGrace},
	{"Sessions_ExpireConcurrentOnce", func(t *testing.T, f *fixture) { testExpireOnce(t, f, f) }},
	{"Sessions_DeadNode", testDeadNode},
	{"Sessions_Tickets", testTickets},
	{"Sessions_Bus", testBus},
}

// sharedSessionTests are run by RunShared.
var sharedSessionTests = []struct {
	name string
	fn   func(t *testing.T, a, b *fixture)
}{
	{"Sessions_ResumeOnOtherNode", testSharedResume},
	{"Sessions_ExpireOnceAcrossNodes", testExpireOnce},
	{"Sessions_BusAcrossNodes", testSharedBus},
}

const (
	// grace is a grace period the tests wait out.
	grace = 300 * time.Millisecond
	// beat is a heartbeat ttl the tests wait out.
	beat = 200 * time.Millisecond
	// clockSlack tolerates the stores' time resolution (Redis: ms) and
	// the distance between the test's clock and the store's.
	clockSlack = 250 * time.Millisecond
)

func (f *fixture) sp(id string) store.SessionParams {
	return store.SessionParams{Tenant: f.tenant, Session: id}
}

// newSession returns a connected session of the fixture's tenant on node,
// its resume token hash derived from the id.
func (f *fixture) newSession(id, node string) store.Session {
	return store.Session{
		Tenant: f.tenant, ID: id, Node: node,
		ResumeTokenHash: "tok-" + id,
		Grace:           longTTL,
	}
}

// bindLease acquires a lease on sem (created with maxValue 100 if it does
// not exist) bound to the session.
func (f *fixture) bindLease(session, sem string) store.Lease {
	f.t.Helper()
	f.ensureSem(sem)
	require.NoError(f.t, f.st.UseSemaphore(f.ctx, f.sp(session), sem))
	p := f.params(sem)
	p.Session = session
	return f.acquire(p)
}

// deliverJob enqueues a job on sem (dispatched at once: maxValue 100) and
// records its delivery to the session on its subscription to subChannel.
func (f *fixture) deliverJob(session, sem, subChannel string) store.Job {
	f.t.Helper()
	f.ensureSem(sem)
	require.NoError(f.t, f.st.UseSemaphore(f.ctx, f.sp(session), sem))
	j := f.enqueue(sem, "")
	require.Equal(f.t, store.JobInflight, j.Status)
	j, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j.ID, Action: store.ActDelivered, Route: "websocket", LeaseID: j.Lease.ID,
		Bind: &store.SessionBinding{Session: session, Channel: subChannel},
	})
	require.NoError(f.t, err)
	return j
}

// ensureSem creates sem with maxValue 100 unless it exists.
func (f *fixture) ensureSem(sem string) {
	f.t.Helper()
	if _, err := f.st.GetSemaphore(f.ctx, f.tenant, sem); err == nil {
		return
	}
	f.putConfig(sem, jobConfig(100))
}

func (f *fixture) putSession(s store.Session) {
	f.t.Helper()
	require.NoError(f.t, f.st.PutSession(f.ctx, s))
}

func (f *fixture) getSession(id string) store.Session {
	f.t.Helper()
	s, err := f.st.GetSession(f.ctx, f.sp(id))
	require.NoError(f.t, err)
	return s
}

func (f *fixture) heartbeat(node string, ttl time.Duration) {
	f.t.Helper()
	require.NoError(f.t, f.st.Heartbeat(f.ctx, node, ttl))
}

func (f *fixture) subscribe(id, node, sem, channel string, prefetch int) {
	f.t.Helper()
	require.NoError(f.t, f.st.Subscribe(f.ctx, store.SubscribeParams{
		Tenant: f.tenant, Session: id, Node: node,
		Subscription: store.Subscription{Semaphore: sem, Channel: channel, Prefetch: prefetch},
	}))
}

func (f *fixture) subscribers(sem, channel string) []store.Subscriber {
	f.t.Helper()
	subs, err := f.st.Subscribers(f.ctx, f.tenant, sem, channel)
	require.NoError(f.t, err)
	sort.Slice(subs, func(i, j int) bool { return subs[i].Session < subs[j].Session })
	return subs
}

// subscriberIDs lists the sessions of Subscribers.
func (f *fixture) subscriberIDs(sem, channel string) []string {
	f.t.Helper()
	ids := []string{}
	for _, s := range f.subscribers(sem, channel) {
		ids = append(ids, s.Session)
	}
	return ids
}

func (f *fixture) nodes() []string {
	f.t.Helper()
	n, err := f.st.Nodes(f.ctx)
	require.NoError(f.t, err)
	sort.Strings(n)
	return n
}

// collectExpired calls ExpiredSessions until want sessions came back
// (within eventually), and then once more, which must return nothing.
func (f *fixture) collectExpired(want int) []store.LostSession {
	f.t.Helper()
	var got []store.LostSession
	require.Eventually(f.t, func() bool {
		l, err := f.st.ExpiredSessions(f.ctx, 0)
		if err != nil {
			return false
		}
		got = append(got, l...)
		return len(got) >= want
	}, eventually, tick, "waiting for %d expired sessions", want)
	l, err := f.st.ExpiredSessions(f.ctx, 0)
	require.NoError(f.t, err)
	require.Empty(f.t, l, "returned once")
	require.Len(f.t, got, want)
	return got
}

// requireBetween checks a store time taken during [before, after] by the
// test's clock, within clockSlack.
func requireBetween(t *testing.T, before, after, got time.Time, msg string) {
	t.Helper()
	require.WithinRange(t, got, before.Add(-clockSlack), after.Add(clockSlack), msg)
}

// early reports whether less than half of d has passed since start: an
// assertion that holds only before a short deadline is skipped on a
// machine too slow to reach it in time.
func early(start time.Time, d time.Duration) bool {
	return time.Since(start) < d/2
}

func requireSameStrings(t *testing.T, want, got []string, msg string) {
	t.Helper()
	if len(want) == 0 {
		require.Empty(t, got, msg)
		return
	}
	require.ElementsMatch(t, want, got, msg)
}

func testHeartbeatExpiry(t *testing.T, f *fixture) {
	require.Empty(t, f.nodes())
	start := time.Now()
	f.heartbeat("n1", beat)
	f.heartbeat("n2", longTTL)
	if n := f.nodes(); early(start, beat) {
		require.Equal(t, []string{"n1", "n2"}, n)
	}
	require.Eventually(t, func() bool {
		n, err := f.st.Nodes(f.ctx)
		return err == nil && len(n) == 1 && n[0] == "n2"
	}, eventually, tick, "n1's heartbeat expires")
	f.heartbeat("n1", longTTL)
	require.Equal(t, []string{"n1", "n2"}, f.nodes(), "a new heartbeat revives it")
}

func testSessionPutGetEnd(t *testing.T, f *fixture) {
	_, err := f.st.GetSession(f.ctx, f.sp("s1"))
	require.ErrorIs(t, err, store.ErrSessionNotFound)

	before := time.Now()
	s := f.newSession("s1", "n1")
	s.Leases = []string{"ignored"}
	s.Jobs = []string{"ignored"}
	s.KeyID = "k1"
	s.Subscriptions = []store.Subscription{{Semaphore: "s", Channel: "c", Prefetch: 3}}
	f.putSession(s)
	after := time.Now()
	require.Empty(t, f.getSession("s1").Leases, "PutSession binds nothing")
	require.Empty(t, f.getSession("s1").Jobs, "PutSession binds nothing")
	l1, l2 := f.bindLease("s1", "s"), f.bindLease("s1", "s2")
	j1 := f.deliverJob("s1", "s", "c")

	got := f.getSession("s1")
	require.Equal(t, f.tenant, got.Tenant)
	require.Equal(t, "s1", got.ID)
	require.Equal(t, "n1", got.Node)
	require.Equal(t, "tok-s1", got.ResumeTokenHash)
	require.Equal(t, longTTL, got.Grace)
	require.Equal(t, "k1", got.KeyID)
	requireSameStrings(t, []string{l1.ID, l2.ID}, got.Leases, "bound leases")
	require.Equal(t, []string{j1.ID}, got.Jobs)
	requireSameStrings(t, []string{"s", "s2"}, got.Semaphores, "semaphores")
	require.Equal(t, s.Subscriptions, got.Subscriptions)
	require.True(t, got.LostAt.IsZero())
	require.True(t, got.GraceUntil.IsZero())
	requireBetween(t, before, after, got.CreatedAt, "CreatedAt set by the store")

	_, err = f.withTenant("t2").st.GetSession(f.ctx, store.SessionParams{Tenant: "t2", Session: "s1"})
	require.ErrorIs(t, err, store.ErrSessionNotFound, "tenant isolation")

	// Put replaces, but what is bound stays bound.
	s.Node = "n2"
	f.putSession(s)
	got = f.getSession("s1")
	requireSameStrings(t, []string{l1.ID, l2.ID}, got.Leases, "bound leases after a put")
	require.Equal(t, "n2", got.Node)

	// Whatever ends a lease ends its binding.
	f.release(l2)
	require.Equal(t, []string{l1.ID}, f.getSession("s1").Leases)

	ended, err := f.st.EndSession(f.ctx, f.sp("s1"))
	require.NoError(t, err)
	require.Equal(t, []string{l1.ID}, ended.Leases)
	require.Equal(t, []string{j1.ID}, ended.Jobs)
	_, err = f.st.GetSession(f.ctx, f.sp("s1"))
	require.ErrorIs(t, err, store.ErrSessionNotFound)
	_, err = f.st.EndSession(f.ctx, f.sp("s1"))
	require.ErrorIs(t, err, store.ErrSessionNotFound)
	_, err = f.st.ResumeSession(f.ctx, f.tenant, "tok-s1", "n3")
	require.ErrorIs(t, err, store.ErrSessionNotFound, "an ended session cannot resume")
}

func testSessionBind(t *testing.T, f *fixture) {
	f.putSession(f.newSession("s1", "n1"))
	f.putSession(f.newSession("s2", "n1"))
	l1 := f.bindLease("s1", "s")
	l2 := f.bindLease("s1", "s")
	requireSameStrings(t, []string{l1.ID, l2.ID}, f.getSession("s1").Leases, "bound at grant")
	f.release(l1)
	require.Equal(t, []string{l2.ID}, f.getSession("s1").Leases, "unbound by its release")

	// A waiter's lease is bound when it is granted.
	f.putConfig("w", jobConfig(1))
	require.NoError(t, f.st.UseSemaphore(f.ctx, f.sp("s1"), "w"))
	holder := f.acquire(f.params("w"))
	p := f.params("w")
	p.Session, p.Wait = "s1", longTTL
	ch := f.goAcquire(p)
	f.awaitWaiting("w", 1)
	f.release(holder)
	r := <-ch
	require.NoError(t, r.err)
	requireSameStrings(t, []string{l2.ID, r.lease.ID}, f.getSession("s1").Leases, "a granted waiter's lease is bound")

	// A job's binding moves with its delivery and ends with its lease.
	j1 := f.deliverJob("s1", "s", "")
	require.Equal(t, []string{j1.ID}, f.getSession("s1").Jobs)
	require.NoError(t, f.st.UseSemaphore(f.ctx, f.sp("s2"), "s"))
	_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j1.ID, Action: store.ActDelivered, Route: "websocket", LeaseID: j1.Lease.ID,
		Bind: &store.SessionBinding{Session: "s2"},
	})
	require.NoError(t, err)
	require.Empty(t, f.getSession("s1").Jobs, "delivered again elsewhere")
	require.Equal(t, []string{j1.ID}, f.getSession("s2").Jobs)
	_, err = f.st.TransitionJob(f.ctx, store.TransitionParams{
		Tenant: f.tenant, JobID: j1.ID, Action: store.ActDelivered, Route: "https", LeaseID: j1.Lease.ID,
	})
	require.NoError(t, err)
	require.Empty(t, f.getSession("s2").Jobs, "delivered on another route")
	j2 := f.deliverJob("s1", "s", "")
	f.act(j2.ID, store.ActRelease)
	require.Empty(t, f.getSession("s1").Jobs, "released")
	j3 := f.deliverJob("s1", "s", "")
	_, err = f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: j3.Lease.ID})
	require.NoError(t, err)
	require.Empty(t, f.getSession("s1").Jobs, "its lease released")
	require.Equal(t, store.JobDone, f.getJob(j3.ID).Status)
	j4 := f.deliverJob("s1", "s", "")
	f.act(j4.ID, store.ActCancel)
	require.Empty(t, f.getSession("s1").Jobs, "cancelled")

	// Deleting the semaphore ends what was bound there.
	require.NoError(t, f.st.DeleteSemaphore(f.ctx, f.tenant, "s"))
	requireSameStrings(t, []string{r.lease.ID}, f.getSession("s1").Leases, "leases of a deleted semaphore")

	unknown := f.sp("nope")
	sub := store.Subscription{Semaphore: "s", Prefetch: 1}
	require.ErrorIs(t, f.st.UseSemaphore(f.ctx, unknown, "s"), store.ErrSessionNotFound)
	require.ErrorIs(t, f.st.Subscribe(f.ctx, store.SubscribeParams{Tenant: f.tenant, Session: "nope", Node: "n1", Subscription: sub}), store.ErrSessionNotFound)
	require.ErrorIs(t, f.st.Unsubscribe(f.ctx, unknown, sub), store.ErrSessionNotFound)
	require.ErrorIs(t, f.st.LoseSession(f.ctx, unknown, grace), store.ErrSessionNotFound)
}

func testSubscribers(t *testing.T, f *fixture) {
	f.heartbeat("n1", longTTL)
	f.heartbeat("n2", longTTL)
	f.putSession(f.newSession("a", "n1"))
	f.putSession(f.newSession("b", "n2"))
	f.putSession(f.newSession("c", "n1"))
	f.putSession(f.newSession("d", "n2"))
	f.subscribe("a", "n1", "s", "", 2)   // every channel
	f.subscribe("b", "n2", "s", "c1", 0) // prefetch 0 means 1
	f.subscribe("c", "n1", "s", "c2", 1)
	f.subscribe("d", "n2", "other", "", 1)

	require.Equal(t, []string{"a", "b"}, f.subscriberIDs("s", "c1"))
	require.Equal(t, []string{"a", "c"}, f.subscriberIDs("s", "c2"))
	require.Equal(t, []string{"a"}, f.subscriberIDs("s", "c3"))
	require.Equal(t, []string{"d"}, f.subscriberIDs("other", "c1"))
	requireSameStrings(t, nil, f.subscriberIDs("none", "c1"), "no subscribers")
	require.Empty(t, f.withTenant("t2").subscribers("s", "c1"), "tenant isolation")
	require.Equal(t, []store.Subscriber{
		{Session: "a", Node: "n1", Prefetch: 2},
		{Session: "b", Node: "n2", Prefetch: 1},
	}, f.subscribers("s", "c1"))

	// Inflight counts the jobs delivered on the subscription until their
	// leases end.
	pa, pb := f.sp("a"), f.sp("b")
	j1 := f.deliverJob("a", "s", "")
	f.deliverJob("a", "s", "")
	j3 := f.deliverJob("b", "s", "c1")
	require.Equal(t, []store.Subscriber{
		{Session: "a", Node: "n1", Prefetch: 2, Inflight: 2},
		{Session: "b", Node: "n2", Prefetch: 1, Inflight: 1},
	}, f.subscribers("s", "c1"))
	f.act(j1.ID, store.ActRelease)
	f.act(j3.ID, store.ActFail)
	require.Equal(t, []store.Subscriber{
		{Session: "a", Node: "n1", Prefetch: 2, Inflight: 1},
		{Session: "b", Node: "n2", Prefetch: 1, Inflight: 0},
	}, f.subscribers("s", "c1"))

	// Replacing a subscription keeps its load.
	f.subscribe("a", "n1", "s", "", 5)
	require.Equal(t, store.Subscriber{Session: "a", Node: "n1", Prefetch: 5, Inflight: 1}, f.subscribers("s", "c1")[0])
	require.Equal(t, []store.Subscription{{Semaphore: "s", Channel: "", Prefetch: 5}}, f.getSession("a").Subscriptions)

	// One entry per session: the exact channel before "".
	f.subscribe("a", "n1", "s", "c1", 1)
	f.deliverJob("a", "s", "c1")
	require.Equal(t, store.Subscriber{Session: "a", Node: "n1", Prefetch: 1, Inflight: 1}, f.subscribers("s", "c1")[0])
	require.Equal(t, store.Subscriber{Session: "a", Node: "n1", Prefetch: 5, Inflight: 1}, f.subscribers("s", "c2")[0])
	require.Len(t, f.subscribers("s", "c1"), 2)

	// Unsubscribe.
	require.NoError(t, f.st.Unsubscribe(f.ctx, pb, store.Subscription{Semaphore: "s", Channel: "c1"}))
	require.NoError(t, f.st.Unsubscribe(f.ctx, pb, store.Subscription{Semaphore: "s", Channel: "c1"}), "twice")
	require.Equal(t, []string{"a"}, f.subscriberIDs("s", "c1"))
	require.NoError(t, f.st.Unsubscribe(f.ctx, pa, store.Subscription{Semaphore: "s", Channel: "c1"}))
	require.Equal(t, store.Subscriber{Session: "a", Node: "n1", Prefetch: 5, Inflight: 1}, f.subscribers("s", "c1")[0])
	require.Equal(t, []store.Subscription{{Semaphore: "s", Channel: "", Prefetch: 5}}, f.getSession("a").Subscriptions)

	// An ended session leaves the registry.
	_, err := f.st.EndSession(f.ctx, pa)
	require.NoError(t, err)
	require.Equal(t, []string{"c"}, f.subscriberIDs("s", "c2"))
}

func testSubscribersLiveNode(t *testing.T, f *fixture) {
	f.putSession(f.newSession("a", "n1"))
	f.subscribe("a", "n1", "s", "", 1)
	require.Empty(t, f.subscribers("s", "c"), "a node that never sent a heartbeat")
	start := time.Now()
	f.heartbeat("n1", beat)
	if ids := f.subscriberIDs("s", "c"); early(start, beat) {
		require.Equal(t, []string{"a"}, ids)
	}
	require.Eventually(t, func() bool {
		subs, err := f.st.Subscribers(f.ctx, f.tenant, "s", "c")
		return err == nil && len(subs) == 0
	}, eventually, tick, "a dead node's sessions are no subscribers")
}

func testLoseResume(t *testing.T, f *fixture) {
	f.heartbeat("n1", longTTL)
	f.heartbeat("n2", longTTL)
	s := f.newSession("a", "n1")
	s.Grace = grace
	f.putSession(s)
	p := f.sp("a")
	l1 := f.bindLease("a", "s")
	f.subscribe("a", "n1", "s", "c", 2)
	j1 := f.deliverJob("a", "s", "c")
	require.Equal(t, []string{"a"}, f.subscriberIDs("s", "c"))

	// Lost by a node it is not connected on: nothing changes.
	require.NoError(t, f.st.LoseSession(f.ctx, store.SessionParams{Tenant: f.tenant, Session: "a", Node: "n2"}, longTTL))
	require.Equal(t, "n1", f.getSession("a").Node)
	require.Equal(t, []string{"a"}, f.subscriberIDs("s", "c"))

	before := time.Now()
	require.NoError(t, f.st.LoseSession(f.ctx, store.SessionParams{Tenant: f.tenant, Session: "a", Node: "n1"}, longTTL))
	after := time.Now()
	require.Equal(t, []store.Subscriber{{Session: "a", Prefetch: 2, Inflight: 1, Lost: true}}, f.subscribers("s", "c"),
		"a lost session within its grace is listed as lost: it may come back")
	lost := f.getSession("a")
	require.Empty(t, lost.Node)
	requireBetween(t, before, after, lost.LostAt, "LostAt")
	require.WithinDuration(t, lost.LostAt.Add(longTTL), lost.GraceUntil, 5*time.Millisecond)
	require.NoError(t, f.st.LoseSession(f.ctx, p, grace), "losing twice")
	require.Equal(t, lost.GraceUntil, f.getSession("a").GraceUntil, "the grace is not renewed")

	// A lost session may still be changed (a lease granted to a waiter
	// meanwhile).
	l2 := f.bindLease("a", "s")

	_, err := f.st.ResumeSession(f.ctx, f.tenant, "wrong", "n2")
	require.ErrorIs(t, err, store.ErrSessionNotFound)
	_, err = f.st.ResumeSession(f.ctx, "t2", "tok-a", "n2")
	require.ErrorIs(t, err, store.ErrSessionNotFound, "tenant isolation")

	r, err := f.st.ResumeSession(f.ctx, f.tenant, "tok-a", "n2")
	require.NoError(t, err)
	require.Equal(t, "n2", r.Node)
	require.True(t, r.LostAt.IsZero())
	require.True(t, r.GraceUntil.IsZero())
	requireSameStrings(t, []string{l1.ID, l2.ID}, r.Leases, "leases after resume")
	require.Equal(t, []string{j1.ID}, r.Jobs)
	require.Equal(t, []store.Subscription{{Semaphore: "s", Channel: "c", Prefetch: 2}}, r.Subscriptions)
	require.Equal(t, grace, r.Grace)
	require.Equal(t, []store.Subscriber{{Session: "a", Node: "n2", Prefetch: 2, Inflight: 1}}, f.subscribers("s", "c"))
	require.Equal(t, "n2", f.getSession("a").Node)

	// Resuming a connected session takes it over.
	r, err = f.st.ResumeSession(f.ctx, f.tenant, "tok-a", "n1")
	require.NoError(t, err)
	require.Equal(t, "n1", r.Node)
	require.Equal(t, []store.Subscriber{{Session: "a", Node: "n1", Prefetch: 2, Inflight: 1}}, f.subscribers("s", "c"))

	l, err := f.st.ExpiredSessions(f.ctx, 0)
	require.NoError(t, err)
	require.Empty(t, l, "a resumed session does not expire")
}

func testExpireAfterGrace(t *testing.T, f *fixture) {
	f.heartbeat("n1", longTTL)
	f.putSession(f.newSession("a", "n1"))
	f.putSession(f.newSession("b", "n1")) // stays connected
	f.subscribe("a", "n1", "s", "", 1)
	l1 := f.bindLease("a", "s")
	j1 := f.deliverJob("a", "s", "")
	start := time.Now()
	require.NoError(t, f.st.LoseSession(f.ctx, f.sp("a"), grace))
	l, err := f.st.ExpiredSessions(f.ctx, 0)
	require.NoError(t, err)
	if early(start, grace) {
		require.Empty(t, l, "within grace")
	}
	if len(l) == 0 {
		l = f.collectExpired(1)
	}
	got := l[0].Session
	require.Equal(t, "a", got.ID)
	require.Equal(t, f.tenant, got.Tenant)
	require.Equal(t, []string{l1.ID}, got.Leases)
	require.Equal(t, []string{j1.ID}, got.Jobs)
	require.Len(t, got.Subscriptions, 1)
	require.False(t, got.LostAt.IsZero())
	require.WithinDuration(t, got.LostAt.Add(grace), got.GraceUntil, 5*time.Millisecond)
	require.False(t, time.Now().Add(clockSlack).Before(got.GraceUntil), "not before its grace ran out")

	_, err = f.st.ResumeSession(f.ctx, f.tenant, "tok-a", "n1")
	require.ErrorIs(t, err, store.ErrSessionNotFound)
	_, err = f.st.GetSession(f.ctx, f.sp("a"))
	require.ErrorIs(t, err, store.ErrSessionNotFound)
	require.Empty(t, f.subscribers("s", "c"))
	require.Equal(t, "n1", f.getSession("b").Node)
}

// testExpireOnce: many lost sessions, collected by concurrent callers on a
// and b: every session comes back exactly once in total.
func testExpireOnce(t *testing.T, a, b *fixture) {
	const n = 20
	a.heartbeat("n1", longTTL)
	for i := range n {
		id := fmt.Sprintf("s%02d", i)
		a.putSession(a.newSession(id, "n1"))
		require.NoError(t, a.st.LoseSession(a.ctx, a.sp(id), 100*time.Millisecond))
	}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	total := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
	deadline := time.Now().Add(eventually)
	for w := range 4 {
		f := []*fixture{a, b}[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for total() < n && time.Now().Before(deadline) {
				l, err := f.st.ExpiredSessions(f.ctx, 3)
				if err != nil {
					t.Errorf("ExpiredSessions: %v", err)
					return
				}
				mu.Lock()
				for _, s := range l {
					seen[s.Session.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, seen, n)
	for id, c := range seen {
		require.Equal(t, 1, c, "session %s returned %d times", id, c)
	}
}

func testDeadNode(t *testing.T, f *fixture) {
	start := time.Now()
	f.heartbeat("n1", beat)
	f.heartbeat("n2", longTTL)
	short := f.newSession("short", "n1")
	short.Grace = grace
	f.putSession(short)
	j1 := f.deliverJob("short", "s", "")
	f.putSession(f.newSession("long", "n1")) // grace longTTL
	f.putSession(f.newSession("other", "n2"))
	f.subscribe("long", "n1", "s", "", 1)
	if ids := f.subscriberIDs("s", ""); early(start, beat) {
		require.Equal(t, []string{"long"}, ids)
	}

	// n1 stops sending heartbeats.
	require.Eventually(t, func() bool {
		n, err := f.st.Nodes(f.ctx)
		return err == nil && len(n) == 1 && n[0] == "n2"
	}, eventually, tick, "n1 dies")
	require.Empty(t, f.subscribers("s", ""))

	// Its session with a long grace resumes elsewhere, with everything.
	r, err := f.st.ResumeSession(f.ctx, f.tenant, "tok-long", "n2")
	require.NoError(t, err)
	require.Equal(t, "n2", r.Node)
	require.Equal(t, []string{"long"}, f.subscriberIDs("s", ""))

	// The other ends after n1's expiry + its grace.
	got := f.collectExpired(1)[0].Session
	require.Equal(t, "short", got.ID)
	require.Equal(t, []string{j1.ID}, got.Jobs)
	require.False(t, got.LostAt.IsZero(), "lost since its node's expiry")
	require.WithinDuration(t, got.LostAt.Add(grace), got.GraceUntil, 5*time.Millisecond)
	_, err = f.st.ResumeSession(f.ctx, f.tenant, "tok-short", "n2")
	require.ErrorIs(t, err, store.ErrSessionNotFound)

	require.Equal(t, "n2", f.getSession("long").Node)
	require.Equal(t, "n2", f.getSession("other").Node)
	require.Equal(t, []string{"n2"}, f.nodes())
}

func testTickets(t *testing.T, f *fixture) {
	exp := time.Now().Add(longTTL).Truncate(time.Millisecond)
	tk := store.Ticket{Hash: "h1", Tenant: f.tenant, KeyID: "k1", Role: store.RoleWorker, ExpiresAt: exp}
	require.NoError(t, f.st.CreateTicket(f.ctx, tk))
	got, err := f.st.TakeTicket(f.ctx, "h1")
	require.NoError(t, err)
	require.Equal(t, tk.Hash, got.Hash)
	require.Equal(t, tk.Tenant, got.Tenant)
	require.Equal(t, tk.KeyID, got.KeyID)
	require.Equal(t, tk.Role, got.Role)
	require.True(t, exp.Equal(got.ExpiresAt), "expiresAt %v, want %v", got.ExpiresAt, exp)
	_, err = f.st.TakeTicket(f.ctx, "h1")
	require.ErrorIs(t, err, store.ErrSessionNotFound, "single use")
	_, err = f.st.TakeTicket(f.ctx, "unknown")
	require.ErrorIs(t, err, store.ErrSessionNotFound)

	// Concurrent takers: one wins.
	require.NoError(t, f.st.CreateTicket(f.ctx, store.Ticket{Hash: "h2", Tenant: f.tenant, KeyID: "k1", Role: store.RoleAdmin, ExpiresAt: exp}))
	var wins sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for range 8 {
		wins.Add(1)
		go func() {
			defer wins.Done()
			if _, err := f.st.TakeTicket(f.ctx, "h2"); err == nil {
				mu.Lock()
				won++
				mu.Unlock()
			}
		}()
	}
	wins.Wait()
	require.Equal(t, 1, won)

	short := time.Now().Add(shortTTL)
	require.NoError(t, f.st.CreateTicket(f.ctx, store.Ticket{Hash: "h3", Tenant: f.tenant, KeyID: "k1", Role: store.RoleWorker, ExpiresAt: short}))
	waitUntil(short.Add(clockSlack))
	_, err = f.st.TakeTicket(f.ctx, "h3")
	require.ErrorIs(t, err, store.ErrSessionNotFound, "expired")
}

// busRecorder collects the messages a SubscribeNode handler gets.
type busRecorder struct {
	ch chan store.NodeMessage
}

// subscribeNode subscribes node on f's store until the test ends (or
// cancel is called).
func (f *fixture) subscribeNode(node string) (*busRecorder, context.CancelFunc) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(f.ctx)
	r := &busRecorder{ch: make(chan store.NodeMessage, 1000)}
	require.NoError(f.t, f.st.SubscribeNode(ctx, node, func(m store.NodeMessage) { r.ch <- m }))
	f.t.Cleanup(cancel)
	return r, cancel
}

func (r *busRecorder) next(t *testing.T, msg string) store.NodeMessage {
	t.Helper()
	select {
	case m := <-r.ch:
		return m
	case <-time.After(eventually):
		require.FailNow(t, "timed out waiting for a bus message: "+msg)
		return store.NodeMessage{}
	}
}

// expect receives the next message and checks its type and body.
func (r *busRecorder) expect(t *testing.T, typ, body string) store.NodeMessage {
	t.Helper()
	m := r.next(t, typ+" "+body)
	require.Equal(t, typ, m.Type)
	require.JSONEq(t, body, string(m.Body))
	return m
}

func (r *busRecorder) requireNone(t *testing.T, msg string) {
	t.Helper()
	select {
	case m := <-r.ch:
		require.FailNow(t, "unexpected bus message: "+msg, "%+v", m)
	default:
	}
}

func (f *fixture) publish(from, to, typ, body string) {
	f.t.Helper()
	require.NoError(f.t, f.st.Publish(f.ctx, store.NodeMessage{Version: 1, From: from, To: to, Type: typ, Body: []byte(body)}))
}

func testBus(t *testing.T, f *fixture) {
	testBusBetween(t, f, f)
}

func testSharedBus(t *testing.T, a, b *fixture) {
	testBusBetween(t, a, b)
}

// testBusBetween: n1 listens on a, n2 on b; messages to one node, to all,
// in order, and a subscription that ended gets nothing more.
func testBusBetween(t *testing.T, a, b *fixture) {
	r1, _ := a.subscribeNode("n1")
	r2, cancel2 := b.subscribeNode("n2")

	a.publish("n1", "n2", "deliver", `{"job":"j1"}`)
	m := r2.expect(t, "deliver", `{"job":"j1"}`)
	require.Equal(t, 1, m.Version)
	require.Equal(t, "n1", m.From)
	require.Equal(t, "n2", m.To)

	b.publish("n2", "", "session_closed", `{"session":"s1"}`)
	m = r1.expect(t, "session_closed", `{"session":"s1"}`)
	require.Empty(t, m.To)
	require.Equal(t, "n2", m.From)
	r2.expect(t, "session_closed", `{"session":"s1"}`) // to all includes the sender
	r1.requireNone(t, "n1 got n2's message")

	// In order.
	const n = 100
	for i := range n {
		b.publish("n2", "n1", "ack", fmt.Sprintf(`{"i":%d}`, i))
	}
	for i := range n {
		r1.expect(t, "ack", fmt.Sprintf(`{"i":%d}`, i))
	}

	// After its context ends, n2's subscription delivers nothing; a new one
	// does.
	cancel2()
	a.publish("n1", "nobody", "deliver", `{}`) // no subscriber: dropped, no error
	r3, _ := b.subscribeNode("n2")
	a.publish("n1", "n2", "deliver", `{"job":"j2"}`)
	r3.expect(t, "deliver", `{"job":"j2"}`)
	select {
	case m := <-r2.ch:
		if string(m.Body) == `{"job":"j2"}` {
			// The old subscription may still have been draining; it must
			// not get messages published after it ended, which this one
			// was (the new subscription was confirmed first).
			require.FailNow(t, "an ended subscription got a message")
		}
	default:
	}
}

func testSharedResume(t *testing.T, a, b *fixture) {
	a.heartbeat("n1", longTTL)
	b.heartbeat("n2", longTTL)
	a.putSession(a.newSession("x", "n1"))
	a.subscribe("x", "n1", "s", "", 3)
	l1 := a.bindLease("x", "s")
	j1 := a.deliverJob("x", "s", "")
	require.Equal(t, []store.Subscriber{{Session: "x", Node: "n1", Prefetch: 3, Inflight: 1}}, b.subscribers("s", "c"))

	require.NoError(t, a.st.LoseSession(a.ctx, a.sp("x"), longTTL))
	require.Equal(t, []store.Subscriber{{Session: "x", Prefetch: 3, Inflight: 1, Lost: true}}, b.subscribers("s", "c"))
	r, err := b.st.ResumeSession(b.ctx, b.tenant, "tok-x", "n2")
	require.NoError(t, err)
	require.Equal(t, []string{l1.ID}, r.Leases)
	require.Equal(t, []string{j1.ID}, r.Jobs)
	require.Equal(t, []store.Subscriber{{Session: "x", Node: "n2", Prefetch: 3, Inflight: 1}}, a.subscribers("s", "c"))
	b.act(j1.ID, store.ActRelease)
	require.Equal(t, []store.Subscriber{{Session: "x", Node: "n2", Prefetch: 3, Inflight: 0}}, a.subscribers("s", "c"))
	ended, err := a.st.EndSession(a.ctx, a.sp("x"))
	require.NoError(t, err)
	require.Equal(t, "n2", ended.Node)
	require.Empty(t, b.subscribers("s", "c"))
}
