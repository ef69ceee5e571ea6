package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// The tests of this file pin what both stores do with parameters at the
// edges of the contract, where they once disagreed: the service layer
// normalizes what users send, and stores then agree on the rest.

// testPutInvalidConfig: a config the service would never pass (unknown
// scope, no scope, maxValue 0, a retention below 0, above MaxRetention or
// not whole milliseconds) is refused with ErrInvalidParams and creates or
// changes nothing.
func testPutInvalidConfig(t *testing.T, f *fixture) {
	for _, cfg := range []store.SemaphoreConfig{
		{MaxValue: 1, MaxValueScope: "bogus"},
		{MaxValue: 1},
		{MaxValue: 0, MaxValueScope: store.ScopeTotal},
		{MaxValue: 1, MaxValueScope: store.ScopeTotal, Retention: store.Retention{Done: -time.Millisecond}},
		{MaxValue: 1, MaxValueScope: store.ScopeTotal, Retention: store.Retention{Failed: store.MaxRetention + time.Millisecond}},
		{MaxValue: 1, MaxValueScope: store.ScopeTotal, Retention: store.Retention{Done: 1500 * time.Microsecond}},
	} {
		_, _, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{Tenant: f.tenant, Name: "bad", Config: cfg})
		require.ErrorIs(t, err, store.ErrInvalidParams, "%+v", cfg)
		_, err = f.st.GetSemaphore(f.ctx, f.tenant, "bad")
		require.ErrorIs(t, err, store.ErrSemaphoreNotFound, "nothing created by %+v", cfg)
	}
	f.put("good", 2, store.ScopeChannel)
	_, _, err := f.st.PutSemaphore(f.ctx, store.PutSemaphoreParams{Tenant: f.tenant, Name: "good",
		Config: store.SemaphoreConfig{MaxValue: 5, MaxValueScope: "bogus"}})
	require.ErrorIs(t, err, store.ErrInvalidParams)
	sem, err := f.st.GetSemaphore(f.ctx, f.tenant, "good")
	require.NoError(t, err)
	require.Equal(t, int64(2), sem.Config.MaxValue, "nothing changed")
	require.Equal(t, store.ScopeChannel, sem.Config.MaxValueScope, "nothing changed")
}

// testExtendDefaultTTL: Extend with TTL 0 gives the lease the semaphore's
// leaseTimeout, as Acquire does.
func testExtendDefaultTTL(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal) // leaseTimeout longTTL
	p := f.params("s")
	p.TTL = 2 * time.Second
	l := f.acquire(p)
	got, err := f.st.Extend(f.ctx, store.ExtendParams{Tenant: f.tenant, LeaseID: l.ID})
	require.NoError(t, err)
	require.Equal(t, longTTL, got.TTL)
	require.WithinDuration(t, time.Now().Add(longTTL), got.ExpiresAt, 5*time.Second)
}

// testCreateKeyDuplicate: a key id or secret hash that is taken gives
// ErrKeyExists and leaves the stored key as it was.
func testCreateKeyDuplicate(t *testing.T, f *fixture) {
	k := testKey("dup", f.tenant, 1)
	require.NoError(t, f.st.CreateKey(f.ctx, k))

	sameID := testKey("dup", f.tenant, 2)
	sameID.Hash = "00" + k.Hash[2:]
	sameID.Role = store.RoleAdmin
	require.ErrorIs(t, f.st.CreateKey(f.ctx, sameID), store.ErrKeyExists)
	sameHash := testKey("other", f.tenant, 3)
	sameHash.Hash = k.Hash
	require.ErrorIs(t, f.st.CreateKey(f.ctx, sameHash), store.ErrKeyExists)

	got, err := f.st.KeyByHash(f.ctx, k.Hash)
	require.NoError(t, err)
	requireKey(t, k, got)
	_, err = f.st.KeyByHash(f.ctx, sameID.Hash)
	require.ErrorIs(t, err, store.ErrKeyNotFound)
	keys, err := f.st.ListKeys(f.ctx, f.tenant)
	require.NoError(t, err)
	require.Len(t, keys, 1)
}

// testDeliveredKeepsRoute: ActDelivered without a Route keeps the route
// recorded before; with one, it records it.
func testDeliveredKeepsRoute(t *testing.T, f *fixture) {
	j := f.jobIn("s", store.JobInflight)
	_, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: store.ActDelivered, Route: "https"})
	require.NoError(t, err)
	got, err := f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: store.ActDelivered})
	require.NoError(t, err)
	require.Equal(t, "https", got.Route)
	require.Equal(t, "https", f.getJob(j.ID).Route)
	got, err = f.st.TransitionJob(f.ctx, store.TransitionParams{Tenant: f.tenant, JobID: j.ID, Action: store.ActDelivered, Route: "websocket"})
	require.NoError(t, err)
	require.Equal(t, "websocket", got.Route)
}

// testTenantParams: a tenant's ID is its name; no name, or another ID, is
// ErrInvalidParams. Key ids are unique per tenant, secret hashes
// everywhere.
func testTenantParams(t *testing.T, f *fixture) {
	_, err := f.st.CreateTenant(f.ctx, store.Tenant{})
	require.ErrorIs(t, err, store.ErrInvalidParams)
	_, err = f.st.CreateTenant(f.ctx, store.Tenant{ID: "tid", Name: "tname"})
	require.ErrorIs(t, err, store.ErrInvalidParams)
	got, err := f.st.CreateTenant(f.ctx, store.Tenant{Name: "tname"})
	require.NoError(t, err)
	require.Equal(t, "tname", got.ID)

	k := testKey("shared-id", f.tenant, 1)
	require.NoError(t, f.st.CreateKey(f.ctx, k))
	other := testKey("shared-id", "other-tenant", 2)
	require.NoError(t, f.st.CreateKey(f.ctx, other), "the same id in another tenant")
	for _, want := range []store.APIKey{k, other} {
		got, err := f.st.KeyByHash(f.ctx, want.Hash)
		require.NoError(t, err)
		requireKey(t, want, got)
	}
	require.NoError(t, f.st.DeleteKey(f.ctx, "other-tenant", "shared-id"))
	got2, err := f.st.KeyByHash(f.ctx, k.Hash)
	require.NoError(t, err, "deleting the other tenant's key leaves this one")
	requireKey(t, k, got2)
}

// testIdempotentReplayFirst: an acquire with the idempotency key of a live
// lease returns that lease even when its weight no longer fits maxValue.
func testIdempotentReplayFirst(t *testing.T, f *fixture) {
	f.put("s", 1, store.ScopeTotal)
	p := f.params("s")
	p.IdempotencyKey = "k1"
	l := f.acquire(p)
	p.Weight = 2
	again := f.acquire(p)
	require.Equal(t, l.ID, again.ID)
	p.IdempotencyKey = "k2"
	_, err := f.st.Acquire(f.ctx, p)
	require.ErrorIs(t, err, store.ErrWeightTooLarge)
}
