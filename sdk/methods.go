package sdk

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ---- semaphores (admin key) ----

// PutSemaphore creates the semaphore name or replaces its configuration.
// Lowering MaxValue never revokes live leases.
func (c *Client) PutSemaphore(ctx context.Context, name string, cfg SemaphoreConfig) (Semaphore, error) {
	in := semaphoreConfigWire{
		MaxValue:        cfg.MaxValue,
		MaxValueScope:   cfg.MaxValueScope,
		LeaseTimeout:    durPtr(cfg.LeaseTimeout),
		MaxAttempts:     cfg.MaxAttempts,
		OnSessionLost:   cfg.OnSessionLost,
		OnDeliveryError: cfg.OnDeliveryError,
		Routes:          cfg.Routes,
		Mapping:         cfg.Mapping,
		Rate:            rateToWire(cfg.Rate),
		Retention:       retentionToWire(cfg.Retention),
		Retry:           retryToWire(cfg.Retry),
	}
	var out struct {
		Semaphore semaphoreWire `json:"semaphore"`
	}
	if err := c.do(ctx, http.MethodPut, c.endpoint(nil, "v1", "semaphores", name), in, &out); err != nil {
		return Semaphore{}, err
	}
	return out.Semaphore.toSDK(), nil
}

// GetSemaphore returns the semaphore with its current State.
func (c *Client) GetSemaphore(ctx context.Context, name string) (Semaphore, error) {
	var out struct {
		Semaphore semaphoreWire `json:"semaphore"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "semaphores", name), nil, &out); err != nil {
		return Semaphore{}, err
	}
	return out.Semaphore.toSDK(), nil
}

// ListSemaphores returns one page of the tenant's semaphores, ordered by
// name.
func (c *Client) ListSemaphores(ctx context.Context, opts ListOptions) (SemaphorePage, error) {
	q := url.Values{}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	var out struct {
		Semaphores []semaphoreWire `json:"semaphores"`
		NextCursor string          `json:"nextCursor"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "semaphores"), nil, &out); err != nil {
		return SemaphorePage{}, err
	}
	page := SemaphorePage{Semaphores: make([]Semaphore, 0, len(out.Semaphores)), NextCursor: out.NextCursor}
	for _, s := range out.Semaphores {
		page.Semaphores = append(page.Semaphores, s.toSDK())
	}
	return page, nil
}

// DeleteSemaphore deletes the semaphore, its leases and waiters.
func (c *Client) DeleteSemaphore(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, c.endpoint(nil, "v1", "semaphores", name), nil, nil)
}

// Suspend stops dispatching the semaphore's queued jobs (jobs are still
// accepted).
func (c *Client) Suspend(ctx context.Context, name string) (Semaphore, error) {
	return c.semaphoreAction(ctx, name, "suspend")
}

// Resume restarts dispatching the semaphore's queued jobs.
func (c *Client) Resume(ctx context.Context, name string) (Semaphore, error) {
	return c.semaphoreAction(ctx, name, "resume")
}

func (c *Client) semaphoreAction(ctx context.Context, name, action string) (Semaphore, error) {
	var out struct {
		Semaphore semaphoreWire `json:"semaphore"`
	}
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "semaphores", name, action), struct{}{}, &out); err != nil {
		return Semaphore{}, err
	}
	return out.Semaphore.toSDK(), nil
}

// ---- leases (worker key) ----

// Acquire asks for a permit of semaphore. With opts.Wait > 0 the server holds
// the request up to that long (at most 60 s) for a permit; without one it
// answers at once. No permit → an error for which IsNoPermit is true.
func (c *Client) Acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, error) {
	in := acquireWire{
		Channel:        opts.Channel,
		Weight:         opts.Weight,
		TTL:            durPtr(opts.TTL),
		Wait:           durPtr(opts.Wait),
		IdempotencyKey: opts.IdempotencyKey,
	}
	return c.leaseCall(ctx, c.endpoint(nil, "v1", "semaphores", semaphore, "acquire"), in)
}

// Extend sets the lease's expiry to now + ttl (server clock). An expired or
// released lease → IsLeaseNotFound.
func (c *Client) Extend(ctx context.Context, leaseID string, ttl time.Duration) (Lease, error) {
	return c.leaseCall(ctx, c.endpoint(nil, "v1", "leases", leaseID, "extend"), extendWire{TTL: duration(ttl)})
}

// Release ends the lease and returns it as it was. An expired or already
// released lease → IsLeaseNotFound.
func (c *Client) Release(ctx context.Context, leaseID string) (Lease, error) {
	return c.leaseCall(ctx, c.endpoint(nil, "v1", "leases", leaseID, "release"), struct{}{})
}

// ListLeasesOptions filters and pages ListLeases.
type ListLeasesOptions struct {
	Channel string // "" = every channel
	Cursor  string // "" = first page; then the previous page's NextCursor
	Limit   int    // 0 = the server's default (100); at most 1000
}

// LeasePage is one page of ListLeases, oldest grant first. NextCursor is ""
// on the last page.
type LeasePage struct {
	Leases     []Lease
	NextCursor string
}

// ListLeases returns one page of a semaphore's live leases (sync leases and
// those of inflight jobs), oldest grant first.
func (c *Client) ListLeases(ctx context.Context, semaphore string, opts ListLeasesOptions) (LeasePage, error) {
	q := url.Values{}
	if opts.Channel != "" {
		q.Set("channel", opts.Channel)
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	var out struct {
		Leases     []leaseWire `json:"leases"`
		NextCursor string      `json:"nextCursor"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "semaphores", semaphore, "leases"), nil, &out); err != nil {
		return LeasePage{}, err
	}
	page := LeasePage{Leases: make([]Lease, 0, len(out.Leases)), NextCursor: out.NextCursor}
	for _, l := range out.Leases {
		page.Leases = append(page.Leases, Lease(l))
	}
	return page, nil
}

func (c *Client) leaseCall(ctx context.Context, target string, in any) (Lease, error) {
	var out struct {
		Lease leaseWire `json:"lease"`
	}
	if err := c.do(ctx, http.MethodPost, target, in, &out); err != nil {
		return Lease{}, err
	}
	return Lease(out.Lease), nil
}

// ---- tenants (operator key) and keys (admin key) ----

// CreateTenant creates a tenant and its first admin key, whose Secret is
// returned only here.
func (c *Client) CreateTenant(ctx context.Context, name string) (TenantCreated, error) {
	var out struct {
		Tenant tenantWire `json:"tenant"`
		Key    keyWire    `json:"key"`
	}
	in := struct {
		Name string `json:"name"`
	}{name}
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "tenants"), in, &out); err != nil {
		return TenantCreated{}, err
	}
	return TenantCreated{Tenant: Tenant(out.Tenant), Key: Key(out.Key)}, nil
}

// ListTenants lists every tenant.
func (c *Client) ListTenants(ctx context.Context) ([]Tenant, error) {
	var out struct {
		Tenants []tenantWire `json:"tenants"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "tenants"), nil, &out); err != nil {
		return nil, err
	}
	ts := make([]Tenant, 0, len(out.Tenants))
	for _, t := range out.Tenants {
		ts = append(ts, Tenant(t))
	}
	return ts, nil
}

// CreateKey creates an API key of the caller's tenant. The returned Key's
// Secret ("sk_…") is shown only here: store it.
func (c *Client) CreateKey(ctx context.Context, role Role, name string) (Key, error) {
	in := struct {
		Role Role   `json:"role"`
		Name string `json:"name"`
	}{role, name}
	var out struct {
		Key keyWire `json:"key"`
	}
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "keys"), in, &out); err != nil {
		return Key{}, err
	}
	return Key(out.Key), nil
}

// ListKeys lists the keys of the caller's tenant, without secrets.
func (c *Client) ListKeys(ctx context.Context) ([]Key, error) {
	var out struct {
		Keys []keyWire `json:"keys"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "keys"), nil, &out); err != nil {
		return nil, err
	}
	ks := make([]Key, 0, len(out.Keys))
	for _, k := range out.Keys {
		ks = append(ks, Key(k))
	}
	return ks, nil
}

// Whoami returns the caller's own key, without its secret: its role and
// tenant. Any role may call it.
func (c *Client) Whoami(ctx context.Context) (Key, error) {
	var out struct {
		Key keyWire `json:"key"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(nil, "v1", "whoami"), nil, &out); err != nil {
		return Key{}, err
	}
	return Key(out.Key), nil
}

// DeleteKey revokes a key at once and returns it.
func (c *Client) DeleteKey(ctx context.Context, id string) (Key, error) {
	var out struct {
		Key keyWire `json:"key"`
	}
	if err := c.do(ctx, http.MethodDelete, c.endpoint(nil, "v1", "keys", id), nil, &out); err != nil {
		return Key{}, err
	}
	return Key(out.Key), nil
}
