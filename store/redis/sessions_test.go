package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Tests of the Redis session store's cross-slot steps: what happens when
// the second step (index, registry) of an operation is late, lost or
// replayed. The conformance suite covers the rest.

func sessSetup(t *testing.T) (*Store, store.SessionParams) {
	t.Helper()
	s := newTestStore(t)
	ctx := t.Context()
	require.NoError(t, s.Heartbeat(ctx, "n1", time.Minute))
	require.NoError(t, s.PutSession(ctx, store.Session{Tenant: testTenant, ID: "a", Node: "n1", ResumeTokenHash: "tok", Grace: time.Minute}))
	require.NoError(t, s.Subscribe(ctx, store.SubscribeParams{Tenant: testTenant, Session: "a", Node: "n1",
		Subscription: store.Subscription{Semaphore: "s", Prefetch: 1}}))
	return s, store.SessionParams{Tenant: testTenant, Session: "a"}
}

func subscriberCount(t *testing.T, s *Store) int {
	t.Helper()
	subs, err := s.Subscribers(t.Context(), testTenant, "s", "c")
	require.NoError(t, err)
	return len(subs)
}

// A registry write of an older rev arriving after the session was lost
// (a Subscribe whose second step is late) does not bring the entry back.
func TestRedis_SessionRegistryStaleWrite(t *testing.T) {
	t.Parallel()
	s, p := sessSetup(t)
	ctx := t.Context()
	bind, err := s.runSess(ctx, scriptSessSubscribe, p.Tenant, p.Session, "s", "c", 2)
	require.NoError(t, err)
	require.NoError(t, s.LoseSession(ctx, p, time.Minute))
	require.Zero(t, subscriberCount(t, s))
	require.NoError(t, s.sync(ctx, bind, true), "the late second step of the subscribe")
	require.Zero(t, subscriberCount(t, s), "a lost session stays out of the registry")

	r, err := s.ResumeSession(ctx, testTenant, "tok", "n1")
	require.NoError(t, err)
	require.Len(t, r.Subscriptions, 2)
	subs, err := s.Subscribers(ctx, testTenant, "s", "c")
	require.NoError(t, err)
	require.Equal(t, []store.Subscriber{{Session: "a", Node: "n1", Prefetch: 2}}, subs)
}

// A LoseSession whose second step never ran (the process died) is
// repaired by calling it again.
func TestRedis_SessionLoseRetryRepairs(t *testing.T) {
	t.Parallel()
	s, p := sessSetup(t)
	ctx := t.Context()
	_, err := s.runSess(ctx, scriptSessLose, p.Tenant, p.Session, int64(150))
	require.NoError(t, err)
	require.Equal(t, 1, subscriberCount(t, s), "stale: the registry was not told")
	require.NoError(t, s.LoseSession(ctx, p, time.Minute))
	require.Zero(t, subscriberCount(t, s))
	var got []store.LostSession
	require.Eventually(t, func() bool {
		l, err := s.ExpiredSessions(ctx, 0)
		got = append(got, l...)
		return err == nil && len(got) == 1
	}, 5*time.Second, 5*time.Millisecond, "expires by the record's grace (150 ms), now in the index")
	require.Equal(t, "a", got[0].Session.ID)
}

// A session resumed while its lost entry is still in the index (the
// resume's second step is late) is claimed by ExpiredSessions but not
// ended: its record holds a newer connection.
func TestRedis_SessionExpireSkipsResumed(t *testing.T) {
	t.Parallel()
	s, p := sessSetup(t)
	ctx := t.Context()
	require.NoError(t, s.LoseSession(ctx, p, 100*time.Millisecond))
	_, err := s.runSess(ctx, scriptSessResume, p.Tenant, p.Session, "tok", "n1", "", int64(0))
	require.NoError(t, err)
	k := s.keys.sessIndex()
	var got []store.LostSession
	require.Eventually(t, func() bool {
		n, err := s.client.ZCard(ctx, k.lost).Result()
		if err != nil {
			return false
		}
		l, err := s.ExpiredSessions(ctx, 0)
		got = append(got, l...)
		return err == nil && n == 0
	}, 5*time.Second, 5*time.Millisecond, "claimed")
	require.Empty(t, got, "a resumed session is not returned")
	sess, err := s.GetSession(ctx, p)
	require.NoError(t, err)
	require.Equal(t, "n1", sess.Node)
}

// A bus message of another envelope version is dropped; the next one of
// version 1 arrives.
func TestRedis_BusVersion(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := make(chan store.NodeMessage, 10)
	require.NoError(t, s.SubscribeNode(ctx, "n1", func(m store.NodeMessage) { got <- m }))
	require.NoError(t, s.client.Publish(ctx, s.keys.busNode("n1"), `{"v":2,"type":"future"}`).Err())
	require.NoError(t, s.client.Publish(ctx, s.keys.busNode("n1"), `not json`).Err())
	require.NoError(t, s.Publish(ctx, store.NodeMessage{From: "n2", To: "n1", Type: "ack", Body: []byte(`{"x":1}`)}))
	select {
	case m := <-got:
		require.Equal(t, store.NodeMessage{Version: 1, From: "n2", To: "n1", Type: "ack", Body: []byte(`{"x":1}`)}, m)
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
	}
}
