package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// Tests of what the Redis session store keeps outside the session's own
// atomic scripts: the subscriber registries, a hint that Subscribers checks
// against the records. The conformance suite covers the rest.

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

func subscribers(t *testing.T, s *Store) []store.Subscriber {
	t.Helper()
	subs, err := s.Subscribers(t.Context(), testTenant, "s", "c")
	require.NoError(t, err)
	return subs
}

// A registry entry the record does not back (a late write of a displaced
// connection, a process that died between the record and the registry)
// lists nothing; the record's prefetch wins over nothing in the entry.
func TestRedis_SessionRegistryIsAHint(t *testing.T) {
	t.Parallel()
	s, p := sessSetup(t)
	ctx := t.Context()
	reg := s.keys.subs(testTenant, "s")
	require.NoError(t, s.client.HSet(ctx, reg, regField("a", "c"), "1").Err(), "an entry without a subscription")
	require.Equal(t, []store.Subscriber{{Session: "a", Node: "n1", Prefetch: 1}}, subscribers(t, s),
		"the session's \"\" subscription, from its record")

	require.NoError(t, s.client.HSet(ctx, reg, regField("ghost", ""), "1").Err(), "an entry of no session")
	require.Len(t, subscribers(t, s), 1)
	n, err := s.client.HExists(ctx, reg, regField("ghost", "")).Result()
	require.NoError(t, err)
	require.False(t, n, "pruned on the way")

	require.NoError(t, s.LoseSession(ctx, p, time.Minute))
	require.Equal(t, []store.Subscriber{{Session: "a", Prefetch: 1, Lost: true}}, subscribers(t, s), "a lost session is listed as lost")
	ok, err := s.client.HExists(ctx, reg, regField("a", "")).Result()
	require.NoError(t, err)
	require.True(t, ok, "a lost session keeps its entry for its resume")
}

// A subscription whose registry entry was lost is written again when its
// session resumes.
func TestRedis_SessionResumeRegistersAgain(t *testing.T) {
	t.Parallel()
	s, p := sessSetup(t)
	ctx := t.Context()
	require.NoError(t, s.client.Del(ctx, s.keys.subs(testTenant, "s")).Err())
	require.Empty(t, subscribers(t, s))
	require.NoError(t, s.LoseSession(ctx, p, time.Minute))
	_, err := s.ResumeSession(ctx, testTenant, "tok", "n1")
	require.NoError(t, err)
	require.Equal(t, []store.Subscriber{{Session: "a", Node: "n1", Prefetch: 1}}, subscribers(t, s))
}

// An ended session's registry entries are removed.
func TestRedis_SessionEndUnregisters(t *testing.T) {
	t.Parallel()
	s, p := sessSetup(t)
	ctx := t.Context()
	_, err := s.EndSession(ctx, p)
	require.NoError(t, err)
	n, err := s.client.HLen(ctx, s.keys.subs(testTenant, "s")).Result()
	require.NoError(t, err)
	require.Zero(t, n)
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
