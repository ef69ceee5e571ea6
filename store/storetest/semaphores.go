package storetest

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

func testPutGet(t *testing.T, f *fixture) {
	cfg := store.SemaphoreConfig{
		MaxValue: 3, MaxValueScope: store.ScopeChannel, LeaseTimeout: 30 * time.Second,
		MaxAttempts: 4, OnSessionLost: "redeliver", OnDeliveryError: "suspend",
		Retention: store.Retention{Done: 90 * time.Second, Failed: 0},
		Extra:     []byte(`{"routes":[{"type":"websocket"}]}`),
	}
	sem, created, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{Tenant: f.tenant, Name: "orders", Config: cfg})
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "orders", sem.Name)
	require.Equal(t, cfg, sem.Config)
	require.False(t, sem.Suspended)
	require.False(t, sem.CreatedAt.IsZero())

	got, err := f.st.GetSemaphore(f.ctx, f.tenant, "orders")
	require.NoError(t, err)
	require.Equal(t, cfg, got.Config)
	require.True(t, got.CreatedAt.Equal(sem.CreatedAt))

	cfg.MaxValue, cfg.Extra, cfg.Retention = 5, []byte(`{}`), store.Retention{Done: 0, Failed: store.MaxRetention}
	again, created, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{Tenant: f.tenant, Name: "orders", Config: cfg})
	require.NoError(t, err)
	require.False(t, created, "a replace is not a creation")
	require.Equal(t, cfg, again.Config)
	require.True(t, again.CreatedAt.Equal(sem.CreatedAt), "CreatedAt kept on replace")
	require.False(t, again.UpdatedAt.Before(sem.UpdatedAt))

	st := f.state("orders")
	require.Equal(t, int64(0), st.InUse)
	require.Equal(t, int64(0), st.Waiting)
}

func testUnknownSemaphore(t *testing.T, f *fixture) {
	_, err := f.st.GetSemaphore(f.ctx, f.tenant, "nope")
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, err = f.st.State(f.ctx, f.tenant, "nope")
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, err = f.st.Acquire(f.ctx, f.params("nope"))
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	p := f.params("nope")
	p.Wait = time.Second
	_, err = f.st.Acquire(f.ctx, p)
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound, "a wait on an unknown semaphore fails at once")
	_, err = f.st.SetSuspended(f.ctx, f.tenant, "nope", true)
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	require.ErrorIs(t, f.st.DeleteSemaphore(f.ctx, f.tenant, "nope"), store.ErrSemaphoreNotFound)
}

func testSetSuspended(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	sem, err := f.st.SetSuspended(f.ctx, f.tenant, "s", true)
	require.NoError(t, err)
	require.True(t, sem.Suspended)
	got, err := f.st.GetSemaphore(f.ctx, f.tenant, "s")
	require.NoError(t, err)
	require.True(t, got.Suspended)
	sem, err = f.st.SetSuspended(f.ctx, f.tenant, "s", false)
	require.NoError(t, err)
	require.False(t, sem.Suspended)
	got, err = f.st.GetSemaphore(f.ctx, f.tenant, "s")
	require.NoError(t, err)
	require.False(t, got.Suspended)
}

func testListPaging(t *testing.T, f *fixture) {
	names := []string{"a", "b.x", "b_y", "c", "d-1", "e"}
	for i := len(names) - 1; i >= 0; i-- { // created out of order
		f.put(names[i], 1, store.ScopeTotal)
	}
	f.withTenant("t2").put("zz-other-tenant", 1, store.ScopeTotal)

	var got []string
	cursor, pages := "", 0
	for {
		sems, next, err := f.st.ListSemaphores(f.ctx, store.ListParams{Tenant: f.tenant, Cursor: cursor, Limit: 4})
		require.NoError(t, err)
		require.LessOrEqual(t, len(sems), 4)
		for _, s := range sems {
			got = append(got, s.Name)
		}
		pages++
		require.Less(t, pages, 10, "paging does not end")
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, names, got, "sorted by name, every semaphore once")

	all, next, err := f.st.ListSemaphores(f.ctx, store.ListParams{Tenant: f.tenant})
	require.NoError(t, err)
	require.Empty(t, next, "default limit holds all six")
	require.Len(t, all, len(names))

	two, next, err := f.st.ListSemaphores(f.ctx, store.ListParams{Tenant: f.tenant, Limit: 2})
	require.NoError(t, err)
	require.Len(t, two, 2)
	require.NotEmpty(t, next)
	rest, next, err := f.st.ListSemaphores(f.ctx, store.ListParams{Tenant: f.tenant, Cursor: next, Limit: 100})
	require.NoError(t, err)
	require.Empty(t, next)
	require.Len(t, rest, 4)
	require.Equal(t, "b_y", rest[0].Name)

	none, next, err := f.st.ListSemaphores(f.ctx, store.ListParams{Tenant: "t3"})
	require.NoError(t, err)
	require.Empty(t, none)
	require.Empty(t, next)
}

func testDeleteWakesWaiters(t *testing.T, f *fixture) {
	f.put("d", 1, store.ScopeTotal)
	held := f.acquireW("d", 1)
	p := f.params("d")
	p.Wait = 30 * time.Second
	waiter := f.goAcquire(p)
	f.awaitWaiting("d", 1)

	require.NoError(t, f.st.DeleteSemaphore(f.ctx, f.tenant, "d"))
	r := recv(t, waiter, "waiter woken by delete")
	require.ErrorIs(t, r.err, store.ErrSemaphoreNotFound)

	_, err := f.st.GetSemaphore(f.ctx, f.tenant, "d")
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, err = f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: held.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "leases go with the semaphore")

	f.put("d", 1, store.ScopeTotal)
	f.requireUsage("d", 0, 0)
	_, err = f.st.Release(f.ctx, store.ReleaseParams{Tenant: f.tenant, LeaseID: held.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "an old lease does not come back with the new semaphore")
	l := f.acquireW("d", 1)
	f.release(l)
}

func testTenantIsolation(t *testing.T, f *fixture) {
	a, b := f, f.withTenant("t2")
	a.put("shared-name", 1, store.ScopeTotal)

	_, err := b.st.GetSemaphore(b.ctx, b.tenant, "shared-name")
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, err = b.st.Acquire(b.ctx, b.params("shared-name"))
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)

	b.put("shared-name", 1, store.ScopeTotal)
	la := a.acquireW("shared-name", 1)
	lb := b.acquireW("shared-name", 1) // own capacity
	require.NotEqual(t, la.ID, lb.ID)

	_, err = b.st.Release(b.ctx, store.ReleaseParams{Tenant: b.tenant, LeaseID: la.ID})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "another tenant's lease")
	_, err = b.st.Extend(b.ctx, store.ExtendParams{Tenant: b.tenant, LeaseID: la.ID, TTL: time.Hour})
	require.ErrorIs(t, err, store.ErrLeaseNotFound, "another tenant's lease")
	a.requireUsage("shared-name", 1, 0)
	b.requireUsage("shared-name", 1, 0)

	require.NoError(t, b.st.DeleteSemaphore(b.ctx, b.tenant, "shared-name"))
	a.requireUsage("shared-name", 1, 0)
	a.release(la)

	sems, _, err := b.st.ListSemaphores(b.ctx, store.ListParams{Tenant: b.tenant})
	require.NoError(t, err)
	require.Empty(t, sems)
	sems, _, err = a.st.ListSemaphores(a.ctx, store.ListParams{Tenant: a.tenant})
	require.NoError(t, err)
	require.Len(t, sems, 1)

	// keys
	require.NoError(t, a.st.CreateKey(a.ctx, testKey("ka", a.tenant, 1)))
	keys, err := b.st.ListKeys(b.ctx, b.tenant)
	require.NoError(t, err)
	require.Empty(t, keys)
	require.ErrorIs(t, b.st.DeleteKey(b.ctx, b.tenant, "ka"), store.ErrKeyNotFound)
	_, err = a.st.KeyByHash(a.ctx, testKey("ka", a.tenant, 1).Hash)
	require.NoError(t, err, "a failed delete by another tenant changes nothing")
}

func testTenantsCRUD(t *testing.T, f *fixture) {
	created := time.Unix(1700000000, 0).UTC()
	for _, name := range []string{"zeta", "alpha", "mid"} {
		tn, err := f.st.CreateTenant(f.ctx, store.Tenant{Name: name, CreatedAt: created})
		require.NoError(t, err)
		require.Equal(t, name, tn.ID, "tenant ID is its name")
		require.Equal(t, name, tn.Name)
	}
	_, err := f.st.CreateTenant(f.ctx, store.Tenant{Name: "mid"})
	require.ErrorIs(t, err, store.ErrTenantExists)

	ts, err := f.st.ListTenants(f.ctx)
	require.NoError(t, err)
	var names []string
	for _, tn := range ts {
		names = append(names, tn.Name)
		if tn.Name == "alpha" {
			require.Equal(t, "alpha", tn.ID)
			require.True(t, tn.CreatedAt.Equal(created), "CreatedAt kept: %v", tn.CreatedAt)
		}
	}
	require.IsNonDecreasing(t, names)
	require.Subset(t, names, []string{"alpha", "mid", "zeta"})
	require.Len(t, ts, 3, "a fresh store holds only the tenants created here")
}

// testKey returns a key whose hash derives from tenant and id, created n seconds after a fixed instant.
func testKey(id, tenant string, n int) store.APIKey {
	return store.APIKey{
		ID: id, Tenant: tenant, Name: "key " + id, Role: store.RoleWorker,
		Prefix: "sk_" + id, Hash: fmt.Sprintf("%x", sha256.Sum256([]byte(tenant+"/"+id))),
		CreatedAt: time.Unix(1700000000+int64(n), 0).UTC(),
	}
}

func testKeysCRUD(t *testing.T, f *fixture) {
	k3 := testKey("k3", f.tenant, 3)
	k1 := testKey("k1", f.tenant, 1)
	k2b := testKey("k2b", f.tenant, 2)
	k2a := testKey("k2a", f.tenant, 2) // same CreatedAt as k2b: ordered by ID
	k2a.Role = store.RoleAdmin
	other := testKey("ko", "t2", 0)
	for _, k := range []store.APIKey{k3, k1, k2b, k2a, other} {
		require.NoError(t, f.st.CreateKey(f.ctx, k))
	}

	got, err := f.st.KeyByHash(f.ctx, k2a.Hash)
	require.NoError(t, err)
	requireKey(t, k2a, got)
	_, err = f.st.KeyByHash(f.ctx, "0000")
	require.ErrorIs(t, err, store.ErrKeyNotFound)

	keys, err := f.st.ListKeys(f.ctx, f.tenant)
	require.NoError(t, err)
	require.Len(t, keys, 4)
	for i, want := range []store.APIKey{k1, k2a, k2b, k3} {
		requireKey(t, want, keys[i])
	}

	require.ErrorIs(t, f.st.DeleteKey(f.ctx, f.tenant, "ko"), store.ErrKeyNotFound, "another tenant's key")
	require.ErrorIs(t, f.st.DeleteKey(f.ctx, f.tenant, "nope"), store.ErrKeyNotFound)
	require.NoError(t, f.st.DeleteKey(f.ctx, f.tenant, "k2a"))
	require.ErrorIs(t, f.st.DeleteKey(f.ctx, f.tenant, "k2a"), store.ErrKeyNotFound)
	_, err = f.st.KeyByHash(f.ctx, k2a.Hash)
	require.ErrorIs(t, err, store.ErrKeyNotFound, "revoked at once")

	keys, err = f.st.ListKeys(f.ctx, f.tenant)
	require.NoError(t, err)
	require.Len(t, keys, 3)
	got, err = f.st.KeyByHash(f.ctx, other.Hash)
	require.NoError(t, err)
	requireKey(t, other, got)
}

// requireKey compares keys, times by instant.
func requireKey(t *testing.T, want, got store.APIKey) {
	t.Helper()
	require.True(t, want.CreatedAt.Equal(got.CreatedAt), "CreatedAt %v != %v", want.CreatedAt, got.CreatedAt)
	want.CreatedAt, got.CreatedAt = time.Time{}, time.Time{}
	require.Equal(t, want, got)
}

func testPing(t *testing.T, f *fixture) {
	require.NoError(t, f.st.Ping(f.ctx))
}
