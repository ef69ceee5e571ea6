package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

func setup(t *testing.T) (*server, *sdk.Client) {
	t.Helper()
	srv := newTestServer(t, serverOptions{})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	return srv, c
}

func TestNew(t *testing.T) {
	for _, bad := range []string{"", "localhost:8080", "ftp://x", "http://", "http://x/?a=b", "http://x/#f", "http://%zz"} {
		_, err := sdk.New(bad, "k")
		require.Error(t, err, bad)
	}
	c, err := sdk.New("http://localhost:8080/", "k", sdk.WithUserAgent("x"), sdk.WithHTTPClient(nil))
	require.NoError(t, err)
	require.NotNil(t, c)
}

func TestClient_BaseURLPathAndHeaders(t *testing.T) {
	var got http.Header
	var path string
	url := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		got, path = r.Header.Clone(), r.URL.EscapedPath()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"lease":{"id":"l1","semaphore":"s","channel":"default","weight":1,"fencingToken":7,"acquiredAt":"2026-01-02T03:04:05Z","expiresAt":"2026-01-02T03:05:05Z"}}`))
	})
	c, err := sdk.New(url+"/prefix/", "sk_abc", sdk.WithUserAgent("my-app/1"))
	require.NoError(t, err)
	l, err := c.Acquire(t.Context(), "s", sdk.AcquireOptions{TTL: 1500 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, "/prefix/v1/semaphores/s/acquire", path)
	require.Equal(t, "Bearer sk_abc", got.Get("Authorization"))
	require.Equal(t, "my-app/1", got.Get("User-Agent"))
	require.Equal(t, "application/json", got.Get("Content-Type"))
	require.Equal(t, int64(7), l.FencingToken)
	require.Equal(t, time.Minute, l.TTL())

	_, err = c.Release(t.Context(), "a/b c")
	require.NoError(t, err)
	require.Equal(t, "/prefix/v1/leases/a%2Fb%20c/release", path)
}

func TestClient_Semaphores(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()

	s, err := c.PutSemaphore(ctx, "db", sdk.SemaphoreConfig{MaxValue: 5, MaxValueScope: sdk.ScopeChannel, LeaseTimeout: 90 * time.Second})
	require.NoError(t, err)
	require.Equal(t, "db", s.Name)
	require.Equal(t, int64(5), s.MaxValue)
	require.Equal(t, sdk.ScopeChannel, s.MaxValueScope)
	require.Equal(t, 90*time.Second, s.LeaseTimeout)
	require.False(t, s.CreatedAt.IsZero())

	s, err = c.PutSemaphore(ctx, "db", sdk.SemaphoreConfig{MaxValue: 2})
	require.NoError(t, err)
	require.Equal(t, int64(2), s.MaxValue)
	require.Equal(t, sdk.ScopeTotal, s.MaxValueScope, "server default")
	require.Equal(t, 60*time.Second, s.LeaseTimeout, "server default")

	_, err = c.Acquire(ctx, "db", sdk.AcquireOptions{Channel: "eu"})
	require.NoError(t, err)
	s, err = c.GetSemaphore(ctx, "db")
	require.NoError(t, err)
	require.NotNil(t, s.State)
	require.Equal(t, int64(1), s.State.InUse)
	require.Equal(t, int64(1), s.State.Available)
	require.Equal(t, int64(1), s.State.Channels["eu"].InUse)

	for _, n := range []string{"a", "b", "c"} {
		_, err := c.PutSemaphore(ctx, n, sdk.SemaphoreConfig{MaxValue: 1})
		require.NoError(t, err)
	}
	var names []string
	opts := sdk.ListOptions{Limit: 2}
	for {
		page, err := c.ListSemaphores(ctx, opts)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Semaphores), 2)
		for _, s := range page.Semaphores {
			names = append(names, s.Name)
			require.Nil(t, s.State)
		}
		if page.NextCursor == "" {
			break
		}
		opts.Cursor = page.NextCursor
	}
	require.Equal(t, []string{"a", "b", "c", "db"}, names)

	s, err = c.Suspend(ctx, "a")
	require.NoError(t, err)
	require.True(t, s.Suspended)
	s, err = c.Resume(ctx, "a")
	require.NoError(t, err)
	require.False(t, s.Suspended)

	require.NoError(t, c.DeleteSemaphore(ctx, "a"))
	_, err = c.GetSemaphore(ctx, "a")
	require.ErrorIs(t, err, sdk.ErrSemaphoreNotFound)
	require.True(t, sdk.IsNotFound(err))

	_, err = c.PutSemaphore(ctx, "bad name!", sdk.SemaphoreConfig{MaxValue: 1})
	require.Equal(t, http.StatusBadRequest, sdk.StatusCode(err), "%v", err)
	_, err = c.PutSemaphore(ctx, "x", sdk.SemaphoreConfig{MaxValue: 0})
	require.ErrorIs(t, err, sdk.ErrInvalidConfig)
	var apiErr *sdk.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Contains(t, apiErr.Message, "maxValue")
}

func TestClient_Leases(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "pool", sdk.SemaphoreConfig{MaxValue: 3})
	require.NoError(t, err)

	l, err := c.Acquire(ctx, "pool", sdk.AcquireOptions{Weight: 2, TTL: 10 * time.Second, IdempotencyKey: "job-1"})
	require.NoError(t, err)
	require.Equal(t, "pool", l.Semaphore)
	require.Equal(t, "default", l.Channel)
	require.Equal(t, int64(2), l.Weight)
	require.Equal(t, 10*time.Second, l.TTL())

	again, err := c.Acquire(ctx, "pool", sdk.AcquireOptions{Weight: 2, TTL: 10 * time.Second, IdempotencyKey: "job-1"})
	require.NoError(t, err)
	require.Equal(t, l.ID, again.ID, "same idempotency key, same lease")

	_, err = c.Acquire(ctx, "pool", sdk.AcquireOptions{Weight: 2})
	require.True(t, sdk.IsNoPermit(err), "%v", err)
	_, err = c.Acquire(ctx, "pool", sdk.AcquireOptions{Weight: 4})
	require.ErrorIs(t, err, sdk.ErrWeightTooLarge)

	other, err := c.Acquire(ctx, "pool", sdk.AcquireOptions{Channel: "eu"})
	require.NoError(t, err)
	page, err := c.ListLeases(ctx, "pool", sdk.ListLeasesOptions{Limit: 1})
	require.NoError(t, err)
	require.Equal(t, []string{l.ID}, []string{page.Leases[0].ID}, "oldest grant first")
	require.NotEmpty(t, page.NextCursor)
	page, err = c.ListLeases(ctx, "pool", sdk.ListLeasesOptions{Cursor: page.NextCursor})
	require.NoError(t, err)
	require.Len(t, page.Leases, 1)
	require.Equal(t, other.ID, page.Leases[0].ID)
	require.Empty(t, page.NextCursor)
	eu, err := c.ListLeases(ctx, "pool", sdk.ListLeasesOptions{Channel: "eu"})
	require.NoError(t, err)
	require.Len(t, eu.Leases, 1)
	_, err = c.Release(ctx, other.ID)
	require.NoError(t, err)

	ext, err := c.Extend(ctx, l.ID, time.Hour)
	require.NoError(t, err)
	require.Equal(t, l.ID, ext.ID)
	require.True(t, ext.ExpiresAt.After(l.ExpiresAt))

	rel, err := c.Release(ctx, l.ID)
	require.NoError(t, err)
	require.Equal(t, l.ID, rel.ID)
	_, err = c.Release(ctx, l.ID)
	require.True(t, sdk.IsLeaseNotFound(err))
	_, err = c.Extend(ctx, l.ID, time.Minute)
	require.True(t, sdk.IsLeaseNotFound(err))
	_, err = c.Release(ctx, "not-a-lease")
	require.True(t, sdk.IsNotFound(err), "%v", err)
}

func TestClient_AcquireWaitIsWokenByRelease(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "one", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	held, err := c.Acquire(ctx, "one", sdk.AcquireOptions{})
	require.NoError(t, err)

	type result struct {
		l   sdk.Lease
		err error
	}
	got := make(chan result, 1)
	go func() {
		l, err := c.Acquire(ctx, "one", sdk.AcquireOptions{Wait: 20 * time.Second})
		got <- result{l, err}
	}()
	waitFor(t, func() bool {
		s, err := c.GetSemaphore(ctx, "one")
		return err == nil && s.State.Waiting == 1
	})
	_, err = c.Release(ctx, held.ID)
	require.NoError(t, err)
	select {
	case r := <-got:
		require.NoError(t, r.err)
		require.Greater(t, r.l.FencingToken, held.FencingToken)
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not woken")
	}
}

func TestClient_TenantsAndKeys(t *testing.T) {
	srv, op := setup(t)
	ctx := t.Context()

	created, err := op.CreateTenant(ctx, "acme")
	require.NoError(t, err)
	require.Equal(t, "acme", created.Tenant.Name)
	require.Equal(t, sdk.RoleAdmin, created.Key.Role)
	require.NotEmpty(t, created.Key.Secret)
	_, err = op.CreateTenant(ctx, "acme")
	require.ErrorIs(t, err, sdk.ErrTenantExists)

	tenants, err := op.ListTenants(ctx)
	require.NoError(t, err)
	var names []string
	for _, tn := range tenants {
		names = append(names, tn.Name)
	}
	require.Contains(t, names, "acme")
	require.Contains(t, names, "default")

	acme, err := sdk.New(srv.URL, created.Key.Secret)
	require.NoError(t, err)
	_, err = acme.ListTenants(ctx)
	require.True(t, sdk.IsForbidden(err), "tenant admin is no operator: %v", err)

	// Tenants are isolated.
	_, err = op.PutSemaphore(ctx, "shared-name", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	_, err = acme.GetSemaphore(ctx, "shared-name")
	require.ErrorIs(t, err, sdk.ErrSemaphoreNotFound)

	k, err := acme.CreateKey(ctx, sdk.RoleWorker, "w1")
	require.NoError(t, err)
	require.Equal(t, sdk.RoleWorker, k.Role)
	require.Equal(t, "w1", k.Name)
	require.NotEmpty(t, k.Secret)
	require.NotEmpty(t, k.Prefix)
	require.Contains(t, k.Secret, k.Prefix)

	keys, err := acme.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 2)
	for _, key := range keys {
		require.Empty(t, key.Secret)
	}

	worker, err := sdk.New(srv.URL, k.Secret)
	require.NoError(t, err)
	_, err = worker.ListKeys(ctx)
	require.ErrorIs(t, err, sdk.ErrForbidden)
	me, err := worker.Whoami(ctx)
	require.NoError(t, err)
	require.Equal(t, k.ID, me.ID)
	require.Equal(t, sdk.RoleWorker, me.Role)
	require.Equal(t, "acme", me.Tenant)
	require.Empty(t, me.Secret)

	del, err := acme.DeleteKey(ctx, k.ID)
	require.NoError(t, err)
	require.Equal(t, k.ID, del.ID)
	_, err = worker.ListKeys(ctx)
	require.True(t, sdk.IsUnauthorized(err))
	require.Equal(t, http.StatusUnauthorized, sdk.StatusCode(err))
	_, err = acme.DeleteKey(ctx, k.ID)
	require.ErrorIs(t, err, sdk.ErrKeyNotFound)
}

func TestClient_HealthReady(t *testing.T) {
	srv, _ := setup(t)
	c, err := sdk.New(srv.URL, "")
	require.NoError(t, err)
	require.NoError(t, c.Health(t.Context()))
	require.NoError(t, c.Ready(t.Context()))
	_, err = c.ListKeys(t.Context())
	require.True(t, sdk.IsUnauthorized(err))
}

func TestClient_RateLimited(t *testing.T) {
	srv := newTestServer(t, serverOptions{keyRateLimit: 0.5, keyRateBurst: 1})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	_, err = c.ListKeys(t.Context())
	require.NoError(t, err)
	_, err = c.ListKeys(t.Context())
	require.True(t, sdk.IsRateLimited(err), "%v", err)
	var apiErr *sdk.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode)
	require.Positive(t, apiErr.RetryAfter)
}

func TestAPIError_Decoding(t *testing.T) {
	t.Run("not a semaphored body", func(t *testing.T) {
		url := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "upstream connect error", http.StatusBadGateway)
		})
		c, err := sdk.New(url, "k")
		require.NoError(t, err)
		err = c.Health(t.Context())
		var apiErr *sdk.APIError
		require.ErrorAs(t, err, &apiErr)
		require.Equal(t, http.StatusBadGateway, apiErr.StatusCode)
		require.Empty(t, apiErr.Code)
		require.Equal(t, "upstream connect error", apiErr.Message)
		require.Equal(t, 7*time.Second, apiErr.RetryAfter)
		require.Contains(t, err.Error(), "502")
		require.False(t, sdk.IsNoPermit(err))
	})
	t.Run("unknown code", func(t *testing.T) {
		url := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusConflict)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "brand_new", "message": "m"}})
		})
		c, err := sdk.New(url, "k")
		require.NoError(t, err)
		err = c.Health(t.Context())
		var apiErr *sdk.APIError
		require.ErrorAs(t, err, &apiErr)
		require.Equal(t, "brand_new", apiErr.Code)
		require.Equal(t, "semaphored: brand_new (HTTP 409): m", err.Error())
		require.False(t, errors.Is(err, sdk.ErrNoPermit))
	})
	t.Run("transport error has no status", func(t *testing.T) {
		c, err := sdk.New("http://127.0.0.1:1", "k")
		require.NoError(t, err)
		err = c.Health(t.Context())
		require.Error(t, err)
		require.Zero(t, sdk.StatusCode(err))
	})
}

func TestClient_Do(t *testing.T) {
	_, c := setup(t)
	// Each subtest has its own semaphore "work-N", so a failure in one
	// cannot hold a permit another one waits for.
	var seq atomic.Int64
	newSem := func(t *testing.T) (name string, inUse func() int64) {
		name = fmt.Sprintf("work-%d", seq.Add(1))
		_, err := c.PutSemaphore(t.Context(), name, sdk.SemaphoreConfig{MaxValue: 1})
		require.NoError(t, err)
		return name, func() int64 {
			s, err := c.GetSemaphore(t.Context(), name)
			require.NoError(t, err)
			return s.State.InUse
		}
	}

	t.Run("releases after success", func(t *testing.T) {
		work, inUse := newSem(t)
		var ran bool
		err := c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error {
			ran = true
			require.Equal(t, int64(1), inUse())
			require.Positive(t, l.FencingToken)
			return nil
		}, sdk.WithWait(5*time.Second))
		require.NoError(t, err)
		require.True(t, ran)
		require.Zero(t, inUse())
	})

	t.Run("returns fn's error and releases", func(t *testing.T) {
		work, inUse := newSem(t)
		boom := errors.New("boom")
		err := c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error { return boom }, sdk.WithWait(5*time.Second))
		require.ErrorIs(t, err, boom)
		require.NotErrorIs(t, err, sdk.ErrLeaseLost)
		require.Zero(t, inUse())
	})

	t.Run("releases on panic and re-panics", func(t *testing.T) {
		work, inUse := newSem(t)
		require.PanicsWithValue(t, "kaboom", func() {
			_ = c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error { panic("kaboom") }, sdk.WithWait(5*time.Second))
		})
		require.Zero(t, inUse())
	})

	t.Run("no permit: fn does not run", func(t *testing.T) {
		work, _ := newSem(t)
		held, err := c.Acquire(t.Context(), work, sdk.AcquireOptions{})
		require.NoError(t, err)
		defer c.Release(context.WithoutCancel(t.Context()), held.ID) //nolint:errcheck
		err = c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error {
			t.Error("fn ran without a permit")
			return nil
		}, sdk.WithWait(0))
		require.True(t, sdk.IsNoPermit(err), "%v", err)
	})

	t.Run("waits for a permit", func(t *testing.T) {
		work, _ := newSem(t)
		held, err := c.Acquire(t.Context(), work, sdk.AcquireOptions{})
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() {
			done <- c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error {
				if l.FencingToken <= held.FencingToken {
					return errors.New("fencing token did not increase")
				}
				return nil
			}, sdk.WithWait(20*time.Second))
		}()
		waitFor(t, func() bool {
			s, err := c.GetSemaphore(t.Context(), work)
			return err == nil && s.State.Waiting == 1
		})
		_, err = c.Release(t.Context(), held.ID)
		require.NoError(t, err)
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("Do did not get the permit")
		}
	})

	t.Run("keeps the lease alive past its ttl", func(t *testing.T) {
		work, inUse := newSem(t)
		var extends atomic.Int64
		err := c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error {
			require.Equal(t, time.Second, l.TTL())
			// Work for 2.5 ttls; the lease must still be ours afterwards.
			select {
			case <-time.After(2500 * time.Millisecond):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			s, err := c.GetSemaphore(ctx, work)
			require.NoError(t, err)
			require.Equal(t, int64(1), s.State.InUse)
			extends.Add(1)
			return nil
		}, sdk.WithTTL(time.Second), sdk.WithWait(5*time.Second))
		require.NoError(t, err)
		require.Equal(t, int64(1), extends.Load())
		require.Zero(t, inUse())
	})

	t.Run("lost lease cancels fn", func(t *testing.T) {
		work, _ := newSem(t)
		err := c.Do(t.Context(), work, func(ctx context.Context, l sdk.Lease) error {
			// Someone deletes the semaphore: the lease is gone, the next
			// extend says so, and fn's context ends.
			require.NoError(t, c.DeleteSemaphore(ctx, work))
			select {
			case <-ctx.Done():
				require.ErrorIs(t, context.Cause(ctx), sdk.ErrLeaseLost)
				return ctx.Err()
			case <-time.After(10 * time.Second):
				return errors.New("fn's context was not cancelled")
			}
		}, sdk.WithTTL(time.Second))
		require.ErrorIs(t, err, sdk.ErrLeaseLost)
		require.ErrorIs(t, err, context.Canceled)
	})

	t.Run("parent context cancelled", func(t *testing.T) {
		work, inUse := newSem(t)
		ctx, cancel := context.WithCancel(t.Context())
		err := c.Do(ctx, work, func(ctx context.Context, l sdk.Lease) error {
			cancel()
			<-ctx.Done()
			return ctx.Err()
		}, sdk.WithWait(5*time.Second))
		require.ErrorIs(t, err, context.Canceled)
		require.NotErrorIs(t, err, sdk.ErrLeaseLost)
		require.Zero(t, inUse(), "released despite the cancelled context")
	})

}

// waitFor polls cond (bounded) until it holds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClient_ReusesConnections: a reply with bytes after its JSON value (a
// trailing newline, white space) is still read to its end, so sequential
// calls share one keep-alive connection.
func TestClient_ReusesConnections(t *testing.T) {
	lease := `{"lease":{"id":"l1","semaphore":"s","channel":"default","weight":1,"fencingToken":1,` +
		`"ttl":"1m0s","acquiredAt":"2026-01-01T00:00:00Z","expiresAt":"2026-01-01T00:01:00Z"}}`
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(lease + "\n"))
		if f, ok := w.(http.Flusher); ok {
			f.Flush() // chunked: the trailing bytes come in a chunk of their own,
		}
		time.Sleep(20 * time.Millisecond) // after the client has its JSON value
		_, _ = w.Write([]byte("   \n"))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := sdk.New(srv.URL, "k")
	require.NoError(t, err)
	for range 5 {
		l, err := c.Release(t.Context(), "l1")
		require.NoError(t, err)
		require.Equal(t, "l1", l.ID)
	}
	require.Equal(t, int64(1), conns.Load())
}

// TestClient_ReplaysKeyedRequestOnClosedConnection: a server that reads a
// request on a kept-alive connection and closes it unanswered (as a
// restarting process can) costs a request with an idempotency key nothing,
// since it is sent again on a new connection; one without a key reports
// the failure rather than risk a second job.
func TestClient_ReplaysKeyedRequestOnClosedConnection(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	var keys []string
	var mu sync.Mutex
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := requests.Add(1)
		if r.URL.Path == "/v1/semaphores/s/jobs" {
			var in struct {
				IdempotencyKey string `json:"idempotencyKey"`
			}
			_ = json.NewDecoder(r.Body).Decode(&in)
			mu.Lock()
			keys = append(keys, in.IdempotencyKey)
			mu.Unlock()
		}
		if n%2 == 0 { // every second request: read, then close unanswered
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = conn.Close()
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"semaphore":{"name":"s","maxValue":1},"job":{"id":"j1","semaphore":"s","status":"queued"}}`))
	}))
	t.Cleanup(ts.Close)
	c, err := sdk.New(ts.URL, "k")
	require.NoError(t, err)

	// 1st request opens the connection; the 2nd reuses it and is cut, so
	// the transport sends it again (3rd) on a new one
	_, err = c.GetSemaphore(t.Context(), "s")
	require.NoError(t, err)
	j, err := c.Enqueue(t.Context(), "s", 1, sdk.EnqueueOptions{IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.Equal(t, "j1", j.ID)
	require.EqualValues(t, 3, requests.Load())
	mu.Lock()
	require.Equal(t, []string{"k1", "k1"}, keys, "the same key both times")
	mu.Unlock()

	// 4th is cut on the kept-alive connection and, with no key, not resent
	_, err = c.Enqueue(t.Context(), "s", 1, sdk.EnqueueOptions{})
	require.Error(t, err)
	require.EqualValues(t, 4, requests.Load())
}
