package semaphore_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testredis.Stop() // the shared redis-server of the dispatcher tests, if started
		os.Exit(code)
	}))
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type env struct {
	svc   *semaphore.Service
	store *memory.Store
	clock *fakeClock
	reg   *prometheus.Registry
}

func setup(t *testing.T) env {
	t.Helper()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := memory.New(memory.Options{Now: clock.Now})
	reg := prometheus.NewRegistry()
	svc, err := semaphore.New(semaphore.Config{Store: st, Registerer: reg, SweepInterval: time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() {
		svc.Stop()
		_ = st.Close()
	})
	return env{svc: svc, store: st, clock: clock, reg: reg}
}

func ptr[T any](v T) *T { return &v }

func TestNew(t *testing.T) {
	t.Parallel()
	_, err := semaphore.New(semaphore.Config{})
	require.Error(t, err)
	_, err = semaphore.New(semaphore.Config{Store: memory.New(memory.Options{}), SweepInterval: -1})
	require.Error(t, err)

	// Metrics register once per registry.
	reg := prometheus.NewRegistry()
	_, err = semaphore.New(semaphore.Config{Store: memory.New(memory.Options{}), Registerer: reg})
	require.NoError(t, err)
	_, err = semaphore.New(semaphore.Config{Store: memory.New(memory.Options{}), Registerer: reg})
	require.Error(t, err)
	// No registerer: fine.
	svc, err := semaphore.New(semaphore.Config{Store: memory.New(memory.Options{})})
	require.NoError(t, err)
	svc.Stop() // without Start: a no-op
}

func TestValidateConfig(t *testing.T) {
	t.Parallel()
	cfg, _, err := semaphore.ValidateConfig("s", semaphore.ConfigInput{MaxValue: ptr[int64](10)}, routing.Options{})
	require.NoError(t, err)
	require.Equal(t, store.SemaphoreConfig{
		MaxValue: 10, MaxValueScope: "total", LeaseTimeout: 60 * time.Second, MaxAttempts: 3,
		OnSessionLost: "redeliver", OnDeliveryError: "fail", Retention: store.DefaultRetention,
		Retry:   &store.RetryPolicy{Backoff: time.Second, MaxBackoff: 5 * time.Minute},
		Workers: &store.WorkerRoute{}, // no routes: the websocket route, by room
	}, cfg)

	cfg, _, err = semaphore.ValidateConfig("s", semaphore.ConfigInput{
		MaxValue: ptr[int64](1), Routes: json.RawMessage(` [ {"type": "https", "url": "https://x.example"} ] `),
		Mapping: json.RawMessage(`{"expr": "{'payload': payload}"}`),
	}, routing.Options{})
	require.NoError(t, err)
	routes, mapping := semaphore.ConfigExtra(cfg)
	var rs []map[string]any
	require.NoError(t, json.Unmarshal(routes, &rs))
	require.Len(t, rs, 1)
	require.Equal(t, "https", rs[0]["type"])
	require.Equal(t, "https://x.example", rs[0]["url"])
	var m map[string]any
	require.NoError(t, json.Unmarshal(mapping, &m))
	require.Equal(t, "{'payload': payload}", m["expr"])

	routes, mapping = semaphore.ConfigExtra(store.SemaphoreConfig{})
	require.Equal(t, "[]", string(routes))
	require.Equal(t, "null", string(mapping))

	for field, in := range map[string]semaphore.ConfigInput{
		"maxValue":        {},
		"maxValueScope":   {MaxValue: ptr[int64](1), MaxValueScope: "x"},
		"leaseTimeout":    {MaxValue: ptr[int64](1), LeaseTimeout: ptr(24*time.Hour + 1)},
		"maxAttempts":     {MaxValue: ptr[int64](1), MaxAttempts: ptr(0)},
		"onSessionLost":   {MaxValue: ptr[int64](1), OnSessionLost: "x"},
		"onDeliveryError": {MaxValue: ptr[int64](1), OnDeliveryError: "x"},
		"routes":          {MaxValue: ptr[int64](1), Routes: json.RawMessage(`"x"`)},
		"routes[1].type":  {MaxValue: ptr[int64](1), Routes: json.RawMessage(`[{"type":"https","url":"https://x.example"},{}]`)},
		"mapping":         {MaxValue: ptr[int64](1), Mapping: json.RawMessage(`1`)},
	} {
		_, _, err := semaphore.ValidateConfig("s", in, routing.Options{})
		var ve *semaphore.ValidationError
		require.ErrorAs(t, err, &ve, field)
		require.Equal(t, semaphore.CodeInvalidConfig, ve.Code)
		require.Equal(t, field, ve.Field)
		require.Contains(t, ve.Message, field)
	}
}

func TestService_Semaphores(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()

	_, _, err := e.svc.PutSemaphore(ctx, "t", "bad name", semaphore.ConfigInput{MaxValue: ptr[int64](1)})
	var ve *semaphore.ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, semaphore.CodeInvalidName, ve.Code)

	sem, created, err := e.svc.PutSemaphore(ctx, "t", "s", semaphore.ConfigInput{MaxValue: ptr[int64](2)})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "s", sem.Name)

	_, st, err := e.svc.GetSemaphore(ctx, "t", "s")
	require.NoError(t, err)
	require.EqualValues(t, 2, st.Available)
	_, _, err = e.svc.GetSemaphore(ctx, "other", "s")
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, _, err = e.svc.GetSemaphore(ctx, "t", "../s")
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)

	_, _, err = e.svc.ListSemaphores(ctx, "t", "", 1001)
	require.ErrorAs(t, err, &ve)
	sems, next, err := e.svc.ListSemaphores(ctx, "t", "", 0)
	require.NoError(t, err)
	require.Len(t, sems, 1)
	require.Empty(t, next)

	sem, err = e.svc.SetSuspended(ctx, "t", "s", true)
	require.NoError(t, err)
	require.True(t, sem.Suspended)
	require.NoError(t, e.svc.DeleteSemaphore(ctx, "t", "s"))
	require.ErrorIs(t, e.svc.DeleteSemaphore(ctx, "t", "s"), store.ErrSemaphoreNotFound)
}

func TestService_Acquire(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	_, _, err := e.svc.PutSemaphore(ctx, "t", "s", semaphore.ConfigInput{MaxValue: ptr[int64](2), LeaseTimeout: ptr(7 * time.Second)})
	require.NoError(t, err)

	l, err := e.svc.Acquire(ctx, "t", "s", semaphore.AcquireInput{})
	require.NoError(t, err)
	require.Equal(t, 7*time.Second, l.ExpiresAt.Sub(l.AcquiredAt), "ttl defaults to leaseTimeout")
	require.Equal(t, store.DefaultChannel, l.Channel)

	_, err = e.svc.Acquire(ctx, "t", "s", semaphore.AcquireInput{Weight: ptr[int64](2)})
	require.ErrorIs(t, err, store.ErrNoPermit)
	_, err = e.svc.Acquire(ctx, "t", "s", semaphore.AcquireInput{Weight: ptr[int64](3)})
	require.ErrorIs(t, err, store.ErrWeightTooLarge)
	_, err = e.svc.Acquire(ctx, "t", "nope", semaphore.AcquireInput{})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)

	for field, in := range map[string]semaphore.AcquireInput{
		"ttl":            {TTL: ptr(time.Millisecond)},
		"wait":           {Wait: ptr(61 * time.Second)},
		"weight":         {Weight: ptr[int64](0)},
		"channel":        {Channel: "a b"},
		"idempotencyKey": {IdempotencyKey: strings.Repeat("x", 257)},
	} {
		_, err := e.svc.Acquire(ctx, "t", "s", in)
		var ve *semaphore.ValidationError
		require.ErrorAs(t, err, &ve, field)
		require.Equal(t, field, ve.Field)
	}

	l2, err := e.svc.Extend(ctx, "t", l.ID, time.Hour)
	require.NoError(t, err)
	require.Equal(t, e.clock.Now().Add(time.Hour), l2.ExpiresAt)
	_, err = e.svc.Extend(ctx, "t", l.ID, 0)
	var ve *semaphore.ValidationError
	require.ErrorAs(t, err, &ve)
	_, err = e.svc.Extend(ctx, "t", "garbage", time.Second)
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	_, err = e.svc.Release(ctx, "t", "garbage")
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	_, err = e.svc.Release(ctx, "other", l.ID)
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
	_, err = e.svc.Release(ctx, "t", l.ID)
	require.NoError(t, err)
	_, err = e.svc.Release(ctx, "t", l.ID)
	require.ErrorIs(t, err, store.ErrLeaseNotFound)

	require.Equal(t, 1.0, metricValue(t, e.reg, "semaphored_acquire_total", "granted"))
	require.Equal(t, 1.0, metricValue(t, e.reg, "semaphored_acquire_total", "no_permit"))
	require.Equal(t, 1.0, metricValue(t, e.reg, "semaphored_acquire_total", "weight_too_large"))
	require.Equal(t, 1.0, metricValue(t, e.reg, "semaphored_acquire_total", "error"))
}

// metricValue returns the value of a gathered counter, the series whose
// first label has the value label ("" for an unlabelled counter).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{%q}", name, label)
	return 0
}

func TestService_Sweeper(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	_, _, err := e.svc.PutSemaphore(ctx, "t", "s", semaphore.ConfigInput{MaxValue: ptr[int64](1)})
	require.NoError(t, err)

	require.NoError(t, e.svc.Start(ctx))
	require.Error(t, e.svc.Start(ctx), "started twice")

	// A waiter is granted when the holder's lease expires: the sweeper
	// notices without any other call touching the semaphore.
	_, err = e.svc.Acquire(ctx, "t", "s", semaphore.AcquireInput{TTL: ptr(time.Second)})
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		_, err := e.svc.Acquire(ctx, "t", "s", semaphore.AcquireInput{Wait: ptr(30 * time.Second)})
		got <- err
	}()
	require.Eventually(t, func() bool {
		_, st, err := e.svc.GetSemaphore(ctx, "t", "s")
		return err == nil && st.Waiting == 1
	}, 10*time.Second, time.Millisecond)
	e.clock.Add(2 * time.Second)
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not granted after expiry")
	}
	// The sweeper counts after its store call returns: the count may trail
	// the grant by a moment.
	require.Eventually(t, func() bool {
		return metricValue(t, e.reg, "semaphored_leases_expired_total", "") == 1
	}, 10*time.Second, time.Millisecond)

	e.svc.Stop()
	e.svc.Stop() // twice is fine
}

func TestService_StateCollector(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	for _, tn := range []string{"a", "b"} {
		_, err := e.store.CreateTenant(ctx, store.Tenant{ID: tn, Name: tn})
		require.NoError(t, err)
	}
	_, _, err := e.svc.PutSemaphore(ctx, "a", "s1", semaphore.ConfigInput{MaxValue: ptr[int64](5)})
	require.NoError(t, err)
	_, _, err = e.svc.PutSemaphore(ctx, "b", "s2", semaphore.ConfigInput{MaxValue: ptr[int64](1)})
	require.NoError(t, err)
	_, err = e.svc.Acquire(ctx, "a", "s1", semaphore.AcquireInput{Weight: ptr[int64](2)})
	require.NoError(t, err)

	require.NoError(t, testutil.GatherAndCompare(e.reg, strings.NewReader(`
# HELP semaphored_permits_in_use Sum of the weights of live leases.
# TYPE semaphored_permits_in_use gauge
semaphored_permits_in_use{semaphore="s1",tenant="a"} 2
semaphored_permits_in_use{semaphore="s2",tenant="b"} 0
# HELP semaphored_permits_max maxValue of the semaphore (per channel when scoped by channel).
# TYPE semaphored_permits_max gauge
semaphored_permits_max{semaphore="s1",tenant="a"} 5
semaphored_permits_max{semaphore="s2",tenant="b"} 1
# HELP semaphored_waiters Acquire calls waiting for a permit.
# TYPE semaphored_waiters gauge
semaphored_waiters{semaphore="s1",tenant="a"} 0
semaphored_waiters{semaphore="s2",tenant="b"} 0
`), "semaphored_permits_in_use", "semaphored_permits_max", "semaphored_waiters"))
}

var secretRE = `^sk_[A-Za-z0-9_-]{43}$`

func TestService_Bootstrap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("random key", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		secret, err := e.svc.Bootstrap(ctx, "")
		require.NoError(t, err)
		require.Regexp(t, secretRE, secret)
		k, err := e.svc.Authenticate(ctx, secret)
		require.NoError(t, err)
		require.Equal(t, store.RoleOperator, k.Role)
		require.Equal(t, store.DefaultTenant, k.Tenant)
		require.Equal(t, secret[:11], k.Prefix)
		require.Regexp(t, `^key_[0-9a-f]{16}$`, k.ID)
		require.Equal(t, semaphore.HashSecret(secret), k.Hash)
		require.Len(t, k.Hash, 64)

		again, err := e.svc.Bootstrap(ctx, "")
		require.NoError(t, err)
		require.Empty(t, again, "nothing new the second time")
	})

	t.Run("admin key", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		admin := "sk_" + strings.Repeat("a", 29)
		secret, err := e.svc.Bootstrap(ctx, admin)
		require.NoError(t, err)
		require.Empty(t, secret)
		k, err := e.svc.Authenticate(ctx, admin)
		require.NoError(t, err)
		require.Equal(t, store.RoleOperator, k.Role)

		secret, err = e.svc.Bootstrap(ctx, admin)
		require.NoError(t, err)
		require.Empty(t, secret)
		keys, err := e.store.ListKeys(ctx, store.DefaultTenant)
		require.NoError(t, err)
		require.Len(t, keys, 1, "idempotent")

		// A restart without the flag creates no random key either.
		secret, err = e.svc.Bootstrap(ctx, "")
		require.NoError(t, err)
		require.Empty(t, secret)
	})

	t.Run("bad admin key", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		for _, k := range []string{"sk_short", strings.Repeat("x", 40), "pk_" + strings.Repeat("a", 40)} {
			_, err := e.svc.Bootstrap(ctx, k)
			require.Error(t, err, k)
		}
		tenants, err := e.store.ListTenants(ctx)
		require.NoError(t, err)
		require.Empty(t, tenants, "a bad flag changes nothing")
	})
}

func TestService_Keys(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	opSecret, err := e.svc.Bootstrap(ctx, "")
	require.NoError(t, err)
	op, err := e.svc.Authenticate(ctx, opSecret)
	require.NoError(t, err)

	tn, adm, admSecret, err := e.svc.CreateTenant(ctx, op, "acme")
	require.NoError(t, err)
	require.Equal(t, "acme", tn.ID)
	require.Equal(t, store.RoleAdmin, adm.Role)
	admin, err := e.svc.Authenticate(ctx, admSecret)
	require.NoError(t, err)

	_, _, _, err = e.svc.CreateTenant(ctx, admin, "nope")
	require.ErrorIs(t, err, semaphore.ErrForbidden)
	_, err = e.svc.ListTenants(ctx, admin)
	require.ErrorIs(t, err, semaphore.ErrForbidden)
	_, _, _, err = e.svc.CreateTenant(ctx, op, "acme")
	require.ErrorIs(t, err, store.ErrTenantExists)

	w, wSecret, err := e.svc.CreateKey(ctx, admin, store.RoleWorker, "w")
	require.NoError(t, err)
	require.Equal(t, "acme", w.Tenant)
	worker, err := e.svc.Authenticate(ctx, wSecret)
	require.NoError(t, err)
	_, _, err = e.svc.CreateKey(ctx, worker, store.RoleWorker, "x")
	require.ErrorIs(t, err, semaphore.ErrForbidden)
	_, _, err = e.svc.CreateKey(ctx, admin, store.RoleOperator, "x")
	require.ErrorIs(t, err, semaphore.ErrForbidden)
	_, _, err = e.svc.CreateKey(ctx, admin, "root", "x")
	var ve *semaphore.ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, "role", ve.Field)

	keys, err := e.svc.ListKeys(ctx, admin)
	require.NoError(t, err)
	require.Len(t, keys, 2)

	_, err = e.svc.DeleteKey(ctx, admin, op.ID)
	require.ErrorIs(t, err, store.ErrKeyNotFound, "other tenant's key")
	got, err := e.svc.DeleteKey(ctx, admin, w.ID)
	require.NoError(t, err)
	require.Equal(t, w.ID, got.ID)
	_, err = e.svc.Authenticate(ctx, wSecret)
	require.ErrorIs(t, err, store.ErrKeyNotFound, "revoked at once")
	_, err = e.svc.Authenticate(ctx, "")
	require.True(t, errors.Is(err, store.ErrKeyNotFound))
}

// takenOnce is a store whose first CreateKey answers ErrKeyExists, as when
// a random key id was already taken.
type takenOnce struct {
	store.Store
	calls int
}

func (s *takenOnce) CreateKey(ctx context.Context, k store.APIKey) error {
	s.calls++
	if s.calls == 1 {
		return store.ErrKeyExists
	}
	return s.Store.CreateKey(ctx, k)
}

func TestService_NewKeyDrawnAgainWhenTaken(t *testing.T) {
	st := &takenOnce{Store: memory.New(memory.Options{})}
	svc, err := semaphore.New(semaphore.Config{Store: st})
	require.NoError(t, err)
	secret, err := svc.Bootstrap(t.Context(), "")
	require.NoError(t, err)
	require.Equal(t, 2, st.calls, "drawn again after ErrKeyExists")
	k, err := svc.Authenticate(t.Context(), secret)
	require.NoError(t, err)
	require.Equal(t, store.RoleOperator, k.Role)
}
