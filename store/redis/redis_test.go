package redisstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/storetest"
)

const testTenant = "t1"

func put(t *testing.T, s *Store, name string, maxValue int64, scope string) {
	t.Helper()
	_, _, err := s.PutSemaphore(t.Context(), store.PutSemaphoreParams{
		Tenant: testTenant, Name: name,
		Config: store.SemaphoreConfig{MaxValue: maxValue, MaxValueScope: scope, LeaseTimeout: time.Minute},
	})
	require.NoError(t, err)
}

func acquire(t *testing.T, s *Store, name string, ttl, wait time.Duration) (store.Lease, error) {
	t.Helper()
	return s.Acquire(t.Context(), store.AcquireParams{Tenant: testTenant, Semaphore: name, Weight: 1, TTL: ttl, Wait: wait})
}

func awaitWaiting(t *testing.T, s *Store, name string, n int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, err := s.State(t.Context(), testTenant, name)
		return err == nil && st.Waiting == n
	}, 5*time.Second, 2*time.Millisecond)
}

type outcome struct {
	lease store.Lease
	err   error
	at    time.Time
}

// goAcquire runs a waiting Acquire in the background, awaited at cleanup.
func goAcquire(t *testing.T, s *Store, name string, wait time.Duration) <-chan outcome {
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan outcome, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := s.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: name, Weight: 1, TTL: time.Minute, Wait: wait})
		out <- outcome{l, err, time.Now()}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return out
}

func recvOutcome(t *testing.T, ch <-chan outcome, within time.Duration) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(within):
		require.FailNow(t, "timed out waiting for acquire")
		return outcome{}
	}
}

func redisNow(t *testing.T, c redis.UniversalClient) time.Time {
	t.Helper()
	now, err := c.Time(t.Context()).Result()
	require.NoError(t, err)
	return now
}

// TestConformanceSessionsRapid and TestConformanceSessionsRapidShared run
// the randomised session state machine on the shared test Redis (the other
// Rapid suites are registered in main_test.go).
func TestConformanceSessionsRapid(t *testing.T) {
	storetest.RunSessionsRapid(t, func(t *testing.T) store.Store { return newTestStore(t) })
}

func TestConformanceSessionsRapidShared(t *testing.T) {
	storetest.RunSessionsRapidShared(t, func(t *testing.T) (store.Store, store.Store) {
		prefix := testredis.Prefix(t)
		ca, cb := testredis.Client(t), testredis.Client(t)
		ca.AddHook(&slotCheck{t: t})
		cb.AddHook(&slotCheck{t: t})
		return newStoreOn(t, ca, prefix), newStoreOn(t, cb, prefix)
	})
}

func TestRedis_FencingSurvivesRestart(t *testing.T) {
	t.Parallel()
	srv := testredis.StartServer(t)
	ctx := t.Context()
	open := func() *Store {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { _ = c.Close() })
		return newStoreOn(t, c, "sd")
	}
	s := open()
	put(t, s, "f", 1, store.ScopeTotal)
	var last int64
	for range 3 {
		l, err := acquire(t, s, "f", time.Minute, 0)
		require.NoError(t, err)
		require.Greater(t, l.FencingToken, last)
		last = l.FencingToken
		_, err = s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: l.ID})
		require.NoError(t, err)
	}
	require.NoError(t, s.DeleteSemaphore(ctx, testTenant, "f"))
	put(t, s, "f", 1, store.ScopeTotal)

	require.NoError(t, srv.Restart())
	s2 := open()
	l, err := acquire(t, s2, "f", time.Minute, 0)
	require.NoError(t, err, "the semaphore survives the restart (AOF)")
	require.Greater(t, l.FencingToken, last, "tokens keep increasing across delete, recreate and restart")
	last = l.FencingToken

	require.NoError(t, s2.DeleteSemaphore(ctx, testTenant, "f"))
	require.NoError(t, srv.Restart())
	s3 := open()
	put(t, s3, "f", 1, store.ScopeTotal)
	l, err = acquire(t, s3, "f", time.Minute, 0)
	require.NoError(t, err)
	require.Greater(t, l.FencingToken, last)
}

// TestRedis_ExpiryByRedisTime: grant and expiry times are Redis TIME, and
// the store's answers agree with Redis time, whatever the local clock says.
func TestRedis_ExpiryByRedisTime(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	put(t, s, "e", 1, store.ScopeTotal)
	before := redisNow(t, s.client)
	l, err := acquire(t, s, "e", 300*time.Millisecond, 0)
	require.NoError(t, err)
	after := redisNow(t, s.client)
	require.WithinRange(t, l.AcquiredAt, before.Truncate(time.Millisecond), after)
	require.Equal(t, l.AcquiredAt.Add(300*time.Millisecond), l.ExpiresAt)

	// Live while Redis time is before ExpiresAt: the permit is taken.
	if redisNow(t, s.client).Before(l.ExpiresAt.Add(-50 * time.Millisecond)) {
		_, err = acquire(t, s, "e", time.Minute, 0)
		require.ErrorIs(t, err, store.ErrNoPermit)
	}
	// Wait on Redis' clock, not ours.
	require.Eventually(t, func() bool { return !redisNow(t, s.client).Before(l.ExpiresAt) }, 5*time.Second, 10*time.Millisecond)
	_, err = s.Extend(ctx, store.ExtendParams{Tenant: testTenant, LeaseID: l.ID, TTL: time.Minute})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	st, err := s.State(ctx, testTenant, "e")
	require.NoError(t, err)
	require.Zero(t, st.InUse)
	l2, err := acquire(t, s, "e", time.Minute, 0)
	require.NoError(t, err)
	require.Greater(t, l2.FencingToken, l.FencingToken)
}

// TestRedis_CrashedNodeWaiters: a Store whose connection dies while it
// waits (so it cannot cancel its waiter) leaves a waiter in Redis; it
// vanishes at its deadline (wait + slack) and never blocks others for
// longer, also when it was granted a lease it never claimed.
func TestRedis_CrashedNodeWaiters(t *testing.T) {
	t.Parallel()
	prefix := testredis.Prefix(t)
	b := newStoreOn(t, testredis.Client(t), prefix)
	ctx := t.Context()
	put(t, b, "c", 1, store.ScopeTotal)
	holder, err := acquire(t, b, "c", time.Minute, 0)
	require.NoError(t, err)

	// Node A: its own client, "crashed" by closing that client.
	ca := testredis.Client(t)
	a, err := New(ca, Options{Prefix: prefix})
	require.NoError(t, err)
	// The dead waiter stays queued until wait+waiterSlack after it joined:
	// long enough for the steps below on a busy box.
	const wait = 3 * time.Second
	dead := goAcquire(t, a, "c", wait)
	awaitWaiting(t, b, "c", 1)
	require.NoError(t, ca.Close())
	o := recvOutcome(t, dead, 5*time.Second)
	// ErrNoPermit at its deadline; ErrUnavailable if the close cut the
	// reply of its enqueue. Either way the waiter stays queued in Redis.
	require.True(t, errors.Is(o.err, store.ErrNoPermit) || errors.Is(o.err, store.ErrUnavailable), "%v", o.err)
	_ = a.Close()

	// The dead waiter is still queued (its cancel failed) and at the head.
	st, err := b.State(ctx, testTenant, "c")
	require.NoError(t, err)
	require.Equal(t, int64(1), st.Waiting)

	// A live waiter behind it; the release grants the dead head waiter
	// (its Redis deadline has not passed), which never claims it.
	live := goAcquire(t, b, "c", 20*time.Second)
	awaitWaiting(t, b, "c", 2)
	_, err = b.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: holder.ID})
	require.NoError(t, err)

	// Sweeping drops the unclaimed grant at the dead waiter's deadline and
	// hands the permit to the live waiter.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				_, _ = b.Sweep(ctx)
			}
		}
	})
	o = recvOutcome(t, live, wait+waiterSlack+5*time.Second)
	close(stop)
	wg.Wait()
	require.NoError(t, o.err)
	st, err = b.State(ctx, testTenant, "c")
	require.NoError(t, err)
	require.Equal(t, int64(1), st.InUse)
	require.Zero(t, st.Waiting)
}

// TestRedis_PushWake: a release on Store B wakes a waiter on Store A much
// faster than the 1 s fallback poll.
func TestRedis_PushWake(t *testing.T) {
	t.Parallel()
	prefix := testredis.Prefix(t)
	a := newStoreOn(t, testredis.Client(t), prefix)
	b := newStoreOn(t, testredis.Client(t), prefix)
	put(t, a, "p", 1, store.ScopeTotal)
	holder, err := acquire(t, b, "p", time.Minute, 0)
	require.NoError(t, err)
	for i := range 5 {
		w := goAcquire(t, a, "p", 30*time.Second)
		awaitWaiting(t, b, "p", 1)
		released := time.Now()
		_, err := b.Release(t.Context(), store.ReleaseParams{Tenant: testTenant, LeaseID: holder.ID})
		require.NoError(t, err)
		o := recvOutcome(t, w, 300*time.Millisecond) // the poll would take up to 1 s
		require.NoError(t, o.err, "round %d", i)
		require.Less(t, o.at.Sub(released), 300*time.Millisecond)
		holder = o.lease
	}
}

// TestRedis_LostPushFallsBackToPoll: a waiter whose push is lost (its Store
// listens on another channel) is still granted by its ~1 s poll.
func TestRedis_LostPushFallsBackToPoll(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	s.nodeID = "nobody-listens" // grants are published where no one hears them
	put(t, s, "l", 1, store.ScopeTotal)
	holder, err := acquire(t, s, "l", time.Minute, 0)
	require.NoError(t, err)
	w := goAcquire(t, s, "l", 30*time.Second)
	awaitWaiting(t, s, "l", 1)
	_, err = s.Release(t.Context(), store.ReleaseParams{Tenant: testTenant, LeaseID: holder.ID})
	require.NoError(t, err)
	o := recvOutcome(t, w, pollInterval+2*time.Second)
	require.NoError(t, o.err)
}

// TestRedis_ConcurrentSweeps: sweepers on two Stores count every expired
// lease exactly once.
func TestRedis_ConcurrentSweeps(t *testing.T) {
	t.Parallel()
	prefix := testredis.Prefix(t)
	a := newStoreOn(t, testredis.Client(t), prefix)
	b := newStoreOn(t, testredis.Client(t), prefix)
	const sems, per = 20, 3
	var last time.Time
	for i := range sems {
		name := "s" + string(rune('a'+i))
		put(t, a, name, per, store.ScopeTotal)
		for range per {
			// long enough that no lease expires (and is dropped by a later
			// acquire instead of a sweep) while the 60 are taken on a busy box
			l, err := acquire(t, a, name, 2*time.Second, 0)
			require.NoError(t, err)
			last = l.ExpiresAt
		}
	}
	require.Eventually(t, func() bool { return redisNow(t, a.client).After(last) }, 15*time.Second, 10*time.Millisecond)
	var total atomic.Int64
	var wg sync.WaitGroup
	for _, s := range []*Store{a, b, a, b} {
		wg.Go(func() {
			for range 20 {
				n, err := s.Sweep(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				total.Add(int64(n))
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(sems*per), total.Load())
}

// TestRedis_NoScriptFallback: after SCRIPT FLUSH (as after a restart) the
// single and the pipelined script calls fall back to EVAL.
func TestRedis_NoScriptFallback(t *testing.T) {
	t.Parallel()
	srv := testredis.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	s := newStoreOn(t, c, "sd")
	put(t, s, "n", 2, store.ScopeTotal)
	l, err := acquire(t, s, "n", 100*time.Millisecond, 0)
	require.NoError(t, err)
	require.NoError(t, c.ScriptFlush(t.Context()).Err())
	require.Eventually(t, func() bool { return redisNow(t, c).After(l.ExpiresAt) }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, c.ScriptFlush(t.Context()).Err())
	n, err := s.Sweep(t.Context())
	require.NoError(t, err)
	require.Equal(t, 1, n)
}

// TestRedis_Unavailable: connection errors become store.ErrUnavailable.
func TestRedis_Unavailable(t *testing.T) {
	t.Parallel()
	srv := testredis.StartServer(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	s := newStoreOn(t, c, "sd")
	srv.Stop()
	err := s.Ping(t.Context())
	require.ErrorIs(t, err, store.ErrUnavailable)
	_, err = acquire(t, s, "x", time.Second, 0)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.False(t, errors.Is(err, store.ErrNoPermit))
}

func TestTranslate(t *testing.T) {
	t.Parallel()
	require.NoError(t, translate(nil, nil))
	require.ErrorIs(t, translate(redis.Nil, store.ErrKeyNotFound), store.ErrKeyNotFound)
	require.ErrorIs(t, translate(context.Canceled, nil), context.Canceled)
	require.ErrorIs(t, translate(redis.ErrClosed, nil), store.ErrUnavailable)
	require.ErrorIs(t, translate(errors.New("dial tcp: connection refused"), nil), store.ErrUnavailable)
	s := newTestStore(t)
	// A real script error reply, as Redis 7 sends it.
	_, err := s.Release(t.Context(), store.ReleaseParams{Tenant: testTenant, LeaseID: store.NewLeaseID("none")})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	err = s.client.Eval(t.Context(), "return redis.error_reply('LOADING x')", nil).Err()
	require.ErrorIs(t, translate(err, nil), store.ErrUnavailable)
	err = s.client.Eval(t.Context(), "return redis.error_reply('SOMETHING odd')", nil).Err()
	require.NotErrorIs(t, translate(err, nil), store.ErrUnavailable)
}

// TestRedis_KeyRevokeEvictsEveryCache: Store A caches a key it
// authenticated; a revoke through Store B reaches A by pub/sub, far sooner
// than the cache ttl.
func TestRedis_KeyRevokeEvictsEveryCache(t *testing.T) {
	t.Parallel()
	prefix := testredis.Prefix(t)
	a := newStoreOn(t, testredis.Client(t), prefix)
	b := newStoreOn(t, testredis.Client(t), prefix)
	ctx := t.Context()
	k := store.APIKey{ID: "key_revoke", Tenant: testTenant, Name: "n", Role: store.RoleWorker, Prefix: "sk_x", Hash: "h-revoke", CreatedAt: time.Now().Truncate(time.Second)}
	require.NoError(t, b.CreateKey(ctx, k))
	got, err := a.KeyByHash(ctx, k.Hash)
	require.NoError(t, err)
	require.Equal(t, k.ID, got.ID)
	_, cached, _ := a.authKeys.get(k.Hash, time.Now())
	require.True(t, cached, "A cached the key")

	require.NoError(t, b.DeleteKey(ctx, testTenant, k.ID))
	_, err = b.KeyByHash(ctx, k.Hash)
	require.ErrorIs(t, err, store.ErrKeyNotFound, "revoked at once on the revoking instance")
	require.Eventually(t, func() bool {
		_, err := a.KeyByHash(ctx, k.Hash)
		return errors.Is(err, store.ErrKeyNotFound)
	}, keyCacheTTL/4, 5*time.Millisecond, "the revoke reached A by pub/sub, not by the cache ttl")
	require.ErrorIs(t, b.DeleteKey(ctx, testTenant, k.ID), store.ErrKeyNotFound)
}

// TestKeyCache_StaleFillAfterEvict: a lookup that began before a revoke
// does not put the revoked key back.
func TestKeyCache_StaleFillAfterEvict(t *testing.T) {
	t.Parallel()
	c := newKeyCache()
	now := time.Now()
	_, ok, gen := c.get("h", now)
	require.False(t, ok)
	c.evict("h") // the revoke lands while the lookup is in flight
	c.put("h", store.APIKey{ID: "k"}, gen, now)
	_, ok, gen = c.get("h", now)
	require.False(t, ok, "a stale lookup must not fill the cache")
	c.put("h", store.APIKey{ID: "k"}, gen, now)
	_, ok, _ = c.get("h", now)
	require.True(t, ok)
	_, ok, _ = c.get("h", now.Add(keyCacheTTL))
	require.False(t, ok, "entries expire")
}

// TestRedis_LayoutUpgrade: a semaphore written by the earlier data layout
// (total used weight in the used hash, no counters in the semaphore hash)
// is converted on first use, with its live leases counted: no
// oversubscription, and a short lease already due still expires.
func TestRedis_LayoutUpgrade(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	put(t, s, "old", 3, store.ScopeTotal)
	long, err := acquire(t, s, "old", time.Minute, 0)
	require.NoError(t, err)
	_, err = acquire(t, s, "old", time.Minute, 0)
	require.NoError(t, err)
	short, err := acquire(t, s, "old", 50*time.Millisecond, 0)
	require.NoError(t, err)
	k := s.keys.sem(testTenant, "old")
	require.NoError(t, s.client.HDel(ctx, k[kSem], "u", "wn", "jq", "ix", "v").Err())
	require.NoError(t, s.client.HSet(ctx, k[kUsed], "t", 3).Err())
	require.Eventually(t, func() bool { return redisNow(t, s.client).After(short.ExpiresAt) }, 5*time.Second, 10*time.Millisecond)

	st, err := s.State(ctx, testTenant, "old")
	require.NoError(t, err)
	require.Equal(t, int64(2), st.InUse) // the expired short lease is gone
	_, err = acquire(t, s, "old", time.Minute, 0)
	require.NoError(t, err)
	_, err = acquire(t, s, "old", time.Minute, 0)
	require.ErrorIs(t, err, store.ErrNoPermit)
	_, err = s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: long.ID})
	require.NoError(t, err)
	_, err = acquire(t, s, "old", time.Minute, 0)
	require.NoError(t, err)
	v, err := s.client.HGet(ctx, k[kSem], "v").Result()
	require.NoError(t, err)
	require.Equal(t, "2", v)
	require.False(t, s.client.HExists(ctx, k[kUsed], "t").Val())
}
