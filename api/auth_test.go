package api

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/semaphore"
)

func TestAuth_Unauthorized(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("s", map[string]any{"maxValue": 1})
	routes := [][2]string{
		{http.MethodGet, "/v1/semaphores"},
		{http.MethodPut, "/v1/semaphores/s"},
		{http.MethodGet, "/v1/semaphores/s"},
		{http.MethodDelete, "/v1/semaphores/s"},
		{http.MethodPost, "/v1/semaphores/s/suspend"},
		{http.MethodPost, "/v1/semaphores/s/resume"},
		{http.MethodPost, "/v1/semaphores/s/acquire"},
		{http.MethodPost, "/v1/leases/x/extend"},
		{http.MethodPost, "/v1/leases/x/release"},
		{http.MethodPost, "/v1/tenants"},
		{http.MethodGet, "/v1/tenants"},
		{http.MethodPost, "/v1/keys"},
		{http.MethodGet, "/v1/keys"},
		{http.MethodDelete, "/v1/keys/x"},
	}
	for _, r := range routes {
		e.unchanged("s", func() {
			for _, h := range []string{"", "Bearer", "Bearer ", "Basic " + e.admin, "Bearer sk_unknown", "Bearer " + e.admin + "x", e.admin} {
				resp := e.do(r[0], r[1], "", rawBody(`{}`), "Authorization", h)
				require.Equal(t, http.StatusUnauthorized, resp.Status, "%s %s with %q", r[0], r[1], h)
				require.Equal(t, CodeUnauthorized, resp.code())
			}
		})
	}
	// The scheme is case-insensitive.
	resp := e.do(http.MethodGet, "/v1/semaphores/s", "", nil, "Authorization", "bearer "+e.admin)
	require.Equal(t, http.StatusOK, resp.Status)
}

func TestAuth_Roles(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("s", map[string]any{"maxValue": 1})

	adminRoutes := [][2]string{
		{http.MethodGet, "/v1/semaphores"},
		{http.MethodPut, "/v1/semaphores/s"},
		{http.MethodGet, "/v1/semaphores/s"},
		{http.MethodDelete, "/v1/semaphores/s"},
		{http.MethodPost, "/v1/semaphores/s/suspend"},
		{http.MethodPost, "/v1/semaphores/s/resume"},
		{http.MethodPost, "/v1/keys"},
		{http.MethodGet, "/v1/keys"},
		{http.MethodDelete, "/v1/keys/x"},
		{http.MethodPost, "/v1/tenants"},
		{http.MethodGet, "/v1/tenants"},
	}
	e.unchanged("s", func() {
		for _, r := range adminRoutes {
			e.expect(http.StatusForbidden, CodeForbidden, r[0], r[1], e.worker, map[string]any{"maxValue": 5, "name": "x", "role": "worker"})
		}
		for _, r := range adminRoutes[len(adminRoutes)-2:] {
			e.expect(http.StatusForbidden, CodeForbidden, r[0], r[1], e.admin, map[string]any{"name": "x"})
		}
	})

	// A worker may use leases; admins and operators may too.
	for _, k := range []string{e.worker, e.admin} {
		l := e.acquire("s", nil)
		e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+l.ID+"/release", k, nil)
	}
}

func TestTenants(t *testing.T) {
	t.Parallel()
	e := setup(t)

	var created TenantCreatedResponse
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": "beta"}).into(&created)
	require.Equal(t, "beta", created.Tenant.Name)
	require.Equal(t, "beta", created.Tenant.ID)
	require.Equal(t, "admin", created.Key.Role)
	require.Equal(t, "beta", created.Key.Tenant)
	require.Regexp(t, `^sk_[A-Za-z0-9_-]{43}$`, created.Key.Secret)

	// The new admin key works in its tenant.
	e.expect(http.StatusOK, "", http.MethodPut, "/v1/semaphores/x", created.Key.Secret, map[string]any{"maxValue": 1})

	var list TenantListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/tenants", e.operator, nil).into(&list)
	names := []string{}
	for _, tn := range list.Tenants {
		names = append(names, tn.Name)
	}
	require.ElementsMatch(t, []string{"default", "acme", "beta"}, names)

	e.expect(http.StatusConflict, CodeTenantExists, http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": "beta"})
	e.expect(http.StatusBadRequest, CodeInvalidName, http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": "no way"})
	e.expect(http.StatusBadRequest, CodeInvalidName, http.MethodPost, "/v1/tenants", e.operator, map[string]any{})
	e.expect(http.StatusBadRequest, CodeInvalidJSON, http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": 1})
	e.expect(http.StatusBadRequest, CodeInvalidJSON, http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": "c", "id": "c"})
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/tenants", e.operator, nil).into(&list)
	require.Len(t, list.Tenants, 3, "rejected requests created nothing")
}

func TestKeys(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("s", map[string]any{"maxValue": 1})

	var k KeyResponse
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/keys", e.admin, map[string]any{"role": "worker", "name": "ci runner ✓"}).into(&k)
	require.Regexp(t, `^key_[0-9a-f]{16}$`, k.Key.ID)
	require.Regexp(t, `^sk_[A-Za-z0-9_-]{43}$`, k.Key.Secret)
	require.Equal(t, k.Key.Secret[:11], k.Key.Prefix)
	require.Equal(t, "worker", k.Key.Role)
	require.Equal(t, "acme", k.Key.Tenant)
	require.Equal(t, "ci runner ✓", k.Key.Name)
	secret := k.Key.Secret

	// The new key works; the list shows it without the secret.
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/s/acquire", secret, map[string]any{"ttl": "1s"})
	lr := e.expect(http.StatusOK, "", http.MethodGet, "/v1/keys", e.admin, nil)
	require.NotContains(t, string(lr.Body), secret)
	require.NotContains(t, string(lr.Body), `"secret"`)
	var list KeyListResponse
	lr.into(&list)
	require.Len(t, list.Keys, 3) // admin, worker, this one

	// Revocation takes effect at once.
	var del KeyResponse
	e.expect(http.StatusOK, "", http.MethodDelete, "/v1/keys/"+k.Key.ID, e.admin, nil).into(&del)
	require.Equal(t, k.Key.ID, del.Key.ID)
	require.Empty(t, del.Key.Secret)
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/v1/semaphores/s", secret, nil)
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodPost, "/v1/semaphores/s/acquire", secret, nil)
	e.expect(http.StatusNotFound, CodeKeyNotFound, http.MethodDelete, "/v1/keys/"+k.Key.ID, e.admin, nil)

	// Roles: an admin creates worker and admin keys, not operator keys.
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/keys", e.admin, map[string]any{"role": "admin", "name": "a2"})
	e.expect(http.StatusForbidden, CodeForbidden, http.MethodPost, "/v1/keys", e.admin, map[string]any{"role": "operator", "name": "op"})
	var op KeyResponse
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/keys", e.operator, map[string]any{"role": "operator", "name": "op2"}).into(&op)
	require.Equal(t, "default", op.Key.Tenant)
	// ...and an admin of the default tenant cannot revoke an operator key.
	var dadmin KeyResponse
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/keys", e.operator, map[string]any{"role": "admin", "name": "dadmin"}).into(&dadmin)
	e.expect(http.StatusForbidden, CodeForbidden, http.MethodDelete, "/v1/keys/"+op.Key.ID, dadmin.Key.Secret, nil)
	e.expect(http.StatusOK, "", http.MethodDelete, "/v1/keys/"+op.Key.ID, e.operator, nil)

	bad := []struct {
		body any
		code string
	}{
		{rawBody(`{"role":"root","name":"x"}`), CodeInvalidRequest},
		{rawBody(`{"name":"x"}`), CodeInvalidRequest},
		{rawBody(`{"role":"worker","name":""}`), CodeInvalidRequest},
		{rawBody(`{"role":"worker","name":"` + strings.Repeat("n", 129) + `"}`), CodeInvalidRequest},
		{rawBody(`{"role":"worker","name":"tab\there"}`), CodeInvalidRequest},
		{rawBody(`{"role":"worker","name":"x","tenant":"beta"}`), CodeInvalidJSON},
		{rawBody(`{"role":["worker"],"name":"x"}`), CodeInvalidJSON},
		{rawBody(``), CodeInvalidJSON},
	}
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/keys", e.admin, nil).into(&list)
	before := len(list.Keys)
	for _, b := range bad {
		e.expect(http.StatusBadRequest, b.code, http.MethodPost, "/v1/keys", e.admin, b.body)
	}
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/keys", e.admin, nil).into(&list)
	require.Len(t, list.Keys, before, "rejected requests created no key")
}

func TestWhoami(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for key, want := range map[string]struct{ role, tenant string }{
		e.worker:   {"worker", "acme"},
		e.admin:    {"admin", "acme"},
		e.operator: {"operator", "default"},
	} {
		var me KeyResponse
		r := e.expect(http.StatusOK, "", http.MethodGet, "/v1/whoami", key, nil)
		r.into(&me)
		require.Equal(t, want.role, me.Key.Role)
		require.Equal(t, want.tenant, me.Key.Tenant)
		require.Equal(t, key[:11], me.Key.Prefix)
		require.Regexp(t, `^key_`, me.Key.ID)
		require.NotContains(t, string(r.Body), key, "never the secret")
		require.NotContains(t, string(r.Body), `"secret"`)
	}
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/v1/whoami", "", nil)
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/v1/whoami", "sk_unknown_0123456789abcdef0123456789abcdef", nil)
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.put("shared-name", map[string]any{"maxValue": 1})
	e.put("only-acme", map[string]any{"maxValue": 1})
	lease := e.acquire("only-acme", nil)

	var other TenantCreatedResponse
	e.expect(http.StatusCreated, "", http.MethodPost, "/v1/tenants", e.operator, map[string]any{"name": "other"}).into(&other)
	o := other.Key.Secret

	// The other tenant sees nothing of acme's.
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodGet, "/v1/semaphores/only-acme", o, nil)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/only-acme/acquire", o, nil)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodDelete, "/v1/semaphores/only-acme", o, nil)
	e.expect(http.StatusNotFound, CodeSemaphoreNotFound, http.MethodPost, "/v1/semaphores/only-acme/suspend", o, nil)
	var list SemaphoreListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores", o, nil).into(&list)
	require.Empty(t, list.Semaphores)

	// Same name, separate semaphores.
	e.expect(http.StatusOK, "", http.MethodPut, "/v1/semaphores/shared-name", o, map[string]any{"maxValue": 7})
	require.EqualValues(t, 1, e.get("shared-name").MaxValue)

	// acme's lease cannot be released or extended by the other tenant.
	e.unchanged("only-acme", func() {
		e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+lease.ID+"/release", o, nil)
		e.expect(http.StatusNotFound, CodeLeaseNotFound, http.MethodPost, "/v1/leases/"+lease.ID+"/extend", o, map[string]any{"ttl": "1h"})
	})

	// Keys: listed and revoked per tenant only.
	var keys KeyListResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/keys", o, nil).into(&keys)
	require.Len(t, keys.Keys, 1)
	require.Equal(t, "other", keys.Keys[0].Tenant)
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/keys", e.admin, nil).into(&keys)
	for _, k := range keys.Keys {
		require.Equal(t, "acme", k.Tenant)
		e.expect(http.StatusNotFound, CodeKeyNotFound, http.MethodDelete, "/v1/keys/"+k.ID, o, nil)
	}
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores/only-acme", e.admin, nil)
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/leases/"+lease.ID+"/release", e.worker, nil)
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *Config) { c.KeyRateLimit = 0.001; c.KeyRateBurst = 2 })
	e.put("s", map[string]any{"maxValue": 1}) // admin: 1
	e.get("s")                                // admin: 2
	r := e.expect(http.StatusTooManyRequests, CodeRateLimited, http.MethodGet, "/v1/semaphores/s", e.admin, nil)
	ra := r.Header.Get("Retry-After")
	require.Regexp(t, regexp.MustCompile(`^[1-9][0-9]*$`), ra)
	// Other keys have their own bucket.
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/s/acquire", e.worker, map[string]any{"ttl": "1s"})
	// Unauthenticated requests are 401, not counted.
	e.expect(http.StatusUnauthorized, CodeUnauthorized, http.MethodGet, "/v1/semaphores/s", "", nil)
	// Health checks are not limited.
	e.expect(http.StatusOK, "", http.MethodGet, "/healthz", "", nil)
}

func TestKeyLimiter(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	l := newKeyLimiter(1, 2, 3, clock)

	_, ok := l.allow("a")
	require.True(t, ok)
	_, ok = l.allow("a")
	require.True(t, ok)
	wait, ok := l.allow("a")
	require.False(t, ok)
	require.Equal(t, time.Second, wait)
	now = now.Add(time.Second)
	_, ok = l.allow("a")
	require.True(t, ok, "a token refilled")

	// The map stays bounded: full buckets go first, then the least recently used.
	for _, k := range []string{"b", "c"} {
		_, ok = l.allow(k)
		require.True(t, ok)
	}
	require.Equal(t, 3, l.len())
	now = now.Add(10 * time.Second) // every bucket refilled
	_, ok = l.allow("d")
	require.True(t, ok)
	require.Equal(t, 1, l.len(), "refilled buckets are dropped")
	for _, k := range []string{"e", "f", "g", "h"} {
		_, ok = l.allow(k)
		require.True(t, ok)
		require.LessOrEqual(t, l.len(), 3)
	}
}

func TestAuthenticate_Direct(t *testing.T) {
	t.Parallel()
	e := setup(t)
	_, err := e.svc.Authenticate(t.Context(), "not-a-key")
	require.Error(t, err)
	k, err := e.svc.Authenticate(t.Context(), e.worker)
	require.NoError(t, err)
	require.Equal(t, semaphore.HashSecret(e.worker), k.Hash)
}
