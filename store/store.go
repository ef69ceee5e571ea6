// Package store defines the storage contract of semaphored: every domain
// operation the service performs on shared state, each one atomic.
//
// Two implementations exist: store/memory (the embedded, zero-config default)
// and store/redis (one Lua script per operation, Redis 7 standalone or
// Cluster). Both pass the shared conformance suite in store/storetest, which
// is the executable form of the guarantees below.
//
// Guarantees every implementation keeps:
//
//   - Never oversubscribed: at every instant, the sum of the weights of live
//     leases on a semaphore (per channel when the scope is "channel") is at
//     most maxValue. A lease is live until it is released or its expiresAt
//     passes, judged by the store's own clock (Redis TIME for the Redis store,
//     the injected clock for the memory store). Expired leases are dropped
//     before anything is counted.
//   - Fencing: every grant carries a token greater than every earlier token
//     of that semaphore, never reused, also after the semaphore is deleted and
//     created again, and (for the Redis store) after a restart of the process.
//   - FIFO waiters: a waiting acquire is granted in arrival order within its
//     capacity domain (the whole semaphore for scope "total", its channel for
//     scope "channel"); a heavy waiter at the head is never overtaken by a
//     lighter one behind it.
//   - Push hand-off: a release, an expiry, or a raise of maxValue grants the
//     head waiters inside the same atomic operation and wakes their callers
//     by push (a Go channel, or Redis pub/sub), not by polling.
package store

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Errors returned by stores. Implementations return these (possibly wrapped)
// and nothing driver-specific, so the HTTP layer maps them in one table.
var (
	ErrSemaphoreNotFound = errors.New("store: semaphore not found") // no such semaphore in the tenant
	ErrLeaseNotFound     = errors.New("store: lease not found")     // unknown, released or expired lease
	ErrNoPermit          = errors.New("store: no permit")           // no permit within the wait
	ErrKeyNotFound       = errors.New("store: key not found")       // unknown or revoked API key
	ErrKeyExists         = errors.New("store: key exists")          // key id or secret hash taken
	ErrTenantExists      = errors.New("store: tenant exists")       // tenant name taken
	ErrTenantNotFound    = errors.New("store: tenant not found")
	ErrWeightTooLarge    = errors.New("store: weight exceeds maxValue") // can never be granted
	ErrUnavailable       = errors.New("store: unavailable")             // store unreachable
	// ErrLayoutNewer: the data of the semaphore was written by a newer
	// release, in a layout this build cannot read; the store refuses it
	// and changes nothing (an upgrade of this instance fixes it). It is an
	// ErrUnavailable for callers that only tell outages apart.
	ErrLayoutNewer = fmt.Errorf("%w: the semaphore's data was written by a newer release", ErrUnavailable)
	// ErrInvalidParams: parameters the service layer should have
	// normalized (see SemaphoreConfig.Check). Stores refuse them alike and
	// change nothing; users never see it, semaphore/ validates first.
	ErrInvalidParams = errors.New("store: invalid parameters")
)

// DefaultLeaseTTL is a lease's ttl when neither the request nor the
// semaphore's config sets one.
const DefaultLeaseTTL = 60 * time.Second

// Scope of a semaphore's maxValue.
const (
	ScopeTotal   = "total"   // maxValue shared across all channels
	ScopeChannel = "channel" // each channel has its own maxValue
)

// DefaultChannel is the channel used when a request names none.
const DefaultChannel = "default"

// SemaphoreConfig is the user-visible configuration of a semaphore
// (SPEC §4). Fields the store does not interpret are kept as given; Extra
// holds the raw JSON of everything the store does not model itself (routes,
// mapping, ...) so later features need no store change.
type SemaphoreConfig struct {
	MaxValue        int64
	MaxValueScope   string // ScopeTotal or ScopeChannel
	LeaseTimeout    time.Duration
	MaxAttempts     int
	OnSessionLost   string
	OnDeliveryError string
	// Rate, when set, limits grants per sliding window (SPEC §2.6, §4).
	Rate *RateLimit
	// Workers, when set, says the route chain begins with the websocket
	// route: jobs are dispatched only to a subscribed session with room
	// (see WorkerRoute). nil: jobs are dispatched when a permit is free and
	// the caller delivers them.
	Workers *WorkerRoute
	// Retry, when set, spaces the attempts of a job whose attempt failed
	// (a fail, an expired lease, a lost session, a failed chain): it waits
	// scheduled, for RetryPolicy.Delay, before it queues again. nil: it
	// queues again at once.
	Retry *RetryPolicy
	// Retention: how long terminal jobs stay (README guarantee 8), whole
	// milliseconds up to MaxRetention. Zero durations delete at once.
	Retention Retention
	Extra     []byte // opaque JSON (routes, mapping), stored verbatim
}

// WorkerRoute is what the store knows of a semaphore's websocket route
// (the first of its chain), to dispatch jobs by the room of the sessions
// subscribed to it (no job holds a permit while no worker can take it).
//
// A session's subscription to the semaphore and channel C (or to every
// channel, "") has room while it is connected and fewer jobs are bound to
// it than its Prefetch. A job of channel c goes to the subscriptions of
// Channel, or of c when Channel is "": dispatching it takes a permit only
// when one of them has room, and binds the job to the least loaded one in
// the same atomic operation (Job.Worker, route "websocket"). When none
// has room, a Fallback job is dispatched unbound (the caller offers it to
// the more stable routes that follow); otherwise it stays scheduled and
// its channel's queue waits, FIFO, for room: a Subscribe, a resumed
// session, or a bound job's end dispatches it.
type WorkerRoute struct {
	Channel  string // the subscription channel the route delivers to ("" = each job's own)
	Fallback bool   // a more stable route follows the websocket route
}

// RetryPolicy is the backoff between a job's failed attempts: after n
// failed attempts the job waits a random time in [0, min(MaxBackoff,
// Backoff·2^(n−1))) (full jitter) before it queues again. Backoff and
// MaxBackoff are whole milliseconds, 0 ≤ Backoff ≤ MaxBackoff.
type RetryPolicy struct {
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Delay is the wait after attempts failed attempts, u in [0, 1) the
// jitter (both stores compute it so, each drawing u its own way).
func (r *RetryPolicy) Delay(attempts int, u float64) time.Duration {
	if r == nil || r.Backoff <= 0 || attempts < 1 {
		return 0
	}
	d := r.Backoff
	for i := 1; i < attempts && d < r.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.MaxBackoff)
	return time.Duration(float64(d) * u).Truncate(time.Millisecond)
}

// Retention is how long a semaphore keeps its terminal jobs after they
// end, judged by the store's clock from FinishedAt: Done for done and
// cancelled jobs, Failed for error and timeout jobs (the dead letters).
// A job whose retention has passed is gone: GetJob, ListJobs, TransitionJob
// and PurgeJobs no longer find it, and its idempotency key is free again,
// whether or not the store has reclaimed its memory yet. A retention of 0
// deletes the job in the operation that ends it; the operation's result
// and JobEvents.Finished still carry it. A changed retention applies to
// the jobs already terminal too.
type Retention struct {
	Done   time.Duration
	Failed time.Duration
}

// Of returns the retention of terminal status s (Done for done and
// cancelled, Failed for error and timeout).
func (r Retention) Of(s JobStatus) time.Duration {
	if s == JobError || s == JobTimeout {
		return r.Failed
	}
	return r.Done
}

// Retention defaults (README, "Semaphore configuration") and bound: the service layer fills the
// defaults; a store reads them for a semaphore stored without a retention
// (by an earlier release).
const (
	DefaultRetentionDone   = 24 * time.Hour
	DefaultRetentionFailed = 7 * 24 * time.Hour
	MaxRetention           = 30 * 24 * time.Hour
)

// DefaultRetention is the default retention (api/openapi.yaml, Retention).
var DefaultRetention = Retention{Done: DefaultRetentionDone, Failed: DefaultRetentionFailed}

// RateLimit: at most Limit weight units granted in any sliding window of
// Period, per capacity domain (the whole semaphore with scope total, each
// channel with scope channel), judged by the store's clock, counting sync
// grants (to acquires and waiters) and job dispatches alike.
//
// The window is exact: a grant of weight w at time t occupies w units of
// its domain's window during [t, t+Period); a grant at now needs a free
// permit and used(now) + w <= Limit, where used(now) sums the grants with
// t > now - Period. A head waiter (or queued job) that has a permit but no
// room keeps its place (FIFO) and is granted at the instant enough units
// leave the window, by a timer, not by polling. Lowering Limit revokes
// nothing; a weight above Limit can never be granted (ErrWeightTooLarge).
type RateLimit struct {
	Limit  int64
	Period time.Duration
}

// RateLimitedError is the error of an acquire without wait that had a free
// permit but no room in its rate window: errors.Is(err, ErrNoPermit)
// holds. It carries what a refusal's answer says, read in the same atomic
// operation: the rate, the channel whose window is full ("" when the rate
// applies to the whole semaphore), when enough units leave the window for
// the weight (NextAt, store clock) and how long until then (Wait).
type RateLimitedError struct {
	Limit   int64
	Period  time.Duration
	Channel string
	NextAt  time.Time
	Wait    time.Duration
}

func (e *RateLimitedError) Error() string {
	return "store: no permit: rate limit reached until " + e.NextAt.UTC().Format(time.RFC3339Nano)
}

// Is makes errors.Is(err, ErrNoPermit) hold.
func (e *RateLimitedError) Is(target error) bool { return target == ErrNoPermit }

// Check reports a config no store accepts: the service layer (semaphore/)
// applies defaults and user-facing validation before, so stores receive
// only normalized configs and refuse the rest alike (ErrInvalidParams).
func (c SemaphoreConfig) Check() error {
	switch {
	case c.MaxValue < 1:
		return fmt.Errorf("%w: maxValue %d < 1", ErrInvalidParams, c.MaxValue)
	case c.MaxValueScope != ScopeTotal && c.MaxValueScope != ScopeChannel:
		return fmt.Errorf("%w: maxValueScope %q", ErrInvalidParams, c.MaxValueScope)
	case c.LeaseTimeout < 0:
		return fmt.Errorf("%w: leaseTimeout %v < 0", ErrInvalidParams, c.LeaseTimeout)
	case c.MaxAttempts < 0:
		return fmt.Errorf("%w: maxAttempts %d < 0", ErrInvalidParams, c.MaxAttempts)
	case c.Retry != nil && (c.Retry.Backoff < 0 || c.Retry.MaxBackoff < c.Retry.Backoff ||
		c.Retry.Backoff%time.Millisecond != 0 || c.Retry.MaxBackoff%time.Millisecond != 0):
		return fmt.Errorf("%w: retry backoff %v, maxBackoff %v", ErrInvalidParams, c.Retry.Backoff, c.Retry.MaxBackoff)
	case c.Rate != nil && (c.Rate.Limit < 1 || c.Rate.Period < time.Millisecond):
		return fmt.Errorf("%w: rate %d per %v", ErrInvalidParams, c.Rate.Limit, c.Rate.Period)
	case !retentionOK(c.Retention.Done) || !retentionOK(c.Retention.Failed):
		return fmt.Errorf("%w: retention %v/%v not whole milliseconds within 0..%v", ErrInvalidParams, c.Retention.Done, c.Retention.Failed, MaxRetention)
	}
	return nil
}

func retentionOK(d time.Duration) bool {
	return d >= 0 && d <= MaxRetention && d%time.Millisecond == 0
}

// Semaphore is a stored semaphore: its name, config and bookkeeping.
type Semaphore struct {
	Name      string
	Config    SemaphoreConfig
	Suspended bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

// ChannelState is the usage of one channel (or of the whole semaphore).
type ChannelState struct {
	InUse     int64 // sum of weights of live leases
	Available int64 // maxValue - inUse, floored at 0
	Waiting   int64 // waiting sync acquires
	Queued    int64 // scheduled async jobs (async issue)
	Inflight  int64 // jobs holding a permit (async issue)
	// With a rate: the units granted in the current window of this
	// channel's capacity domain (with scope total, the shared window; at
	// the top level with scope channel, the default channel's, as for
	// Available), and when its oldest grant leaves it (zero: the window
	// is empty, or there is no rate).
	RateUsed   int64
	RateNextAt time.Time
}

// SemaphoreState is a consistent snapshot of a semaphore's usage, taken in
// one atomic operation after dropping expired leases.
type SemaphoreState struct {
	ChannelState
	Channels map[string]ChannelState
}

// Lease is one held permit.
type Lease struct {
	ID           string
	Semaphore    string
	Channel      string
	Weight       int64
	FencingToken int64
	TTL          time.Duration
	AcquiredAt   time.Time
	ExpiresAt    time.Time
}

// AcquireParams are the inputs of Store.Acquire. Zero values: Channel
// DefaultChannel, Weight 1, TTL the semaphore's leaseTimeout (read in the
// same atomic operation, so the caller needs no extra round trip). The
// service layer checks bounds.
type AcquireParams struct {
	Tenant         string
	Semaphore      string
	Channel        string
	Weight         int64
	TTL            time.Duration
	Wait           time.Duration // 0: answer at once
	IdempotencyKey string        // optional; same key during the lease's life returns the same lease
	// Session, when set, binds the lease to that websocket session in the
	// same atomic operation that grants it (also a grant to a waiter): the
	// session's end releases it (SessionStore). The caller has recorded
	// the semaphore with SessionStore.UseSemaphore first.
	Session string
}

// ReleaseParams identifies a lease to release.
type ReleaseParams struct {
	Tenant  string
	LeaseID string
}

// ExtendParams sets a lease's expiry to now+TTL (store clock); TTL ≤ 0
// means the semaphore's leaseTimeout (else DefaultLeaseTTL), as for
// AcquireParams.
type ExtendParams struct {
	Tenant  string
	LeaseID string
	TTL     time.Duration
}

// ListLeasesParams pages through a semaphore's live leases. Channel ""
// lists every channel; Cursor is the previous page's nextCursor ("" =
// start); Limit ≤ 0 is 100.
type ListLeasesParams struct {
	Tenant    string
	Semaphore string
	Channel   string
	Cursor    string
	Limit     int
}

// PutSemaphoreParams creates or replaces a semaphore's config.
type PutSemaphoreParams struct {
	Tenant string
	Name   string
	Config SemaphoreConfig
}

// ListParams pages through a listing. Cursor is opaque ("" = start).
type ListParams struct {
	Tenant string
	Cursor string
	Limit  int
}

// Role of an API key.
type Role string

const (
	RoleWorker   Role = "worker"
	RoleAdmin    Role = "admin"
	RoleOperator Role = "operator"
)

// Tenant is an isolation unit.
type Tenant struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// Check reports a tenant no store accepts (ErrInvalidParams): its ID is
// its name, so the name must be set and the ID empty or the same.
func (t Tenant) Check() error {
	if t.Name == "" {
		return fmt.Errorf("%w: tenant without a name", ErrInvalidParams)
	}
	if t.ID != "" && t.ID != t.Name {
		return fmt.Errorf("%w: tenant id %q is not its name %q", ErrInvalidParams, t.ID, t.Name)
	}
	return nil
}

// DefaultTenant is the name and id of the tenant created at bootstrap.
const DefaultTenant = "default"

// APIKey is a stored API key. The secret is never stored, only Hash
// (hex SHA-256 of the secret).
type APIKey struct {
	ID        string
	Tenant    string
	Name      string
	Role      Role
	Prefix    string // first characters of the secret, for humans
	Hash      string
	CreatedAt time.Time
}

// Store is the storage contract. Every method is one atomic operation
// against shared state (one Lua script in Redis, one critical section in
// memory), safe for concurrent use by any number of goroutines and, for
// shared stores, by any number of processes.
type Store interface {
	// JobStore is the async half (store/jobs.go).
	JobStore
	// SessionStore is the websocket half (store/sessions.go).
	SessionStore

	// PutSemaphore creates or replaces a semaphore's config and returns the
	// stored semaphore and whether it was created. Live leases are never
	// revoked; a raised maxValue grants waiters at once.
	PutSemaphore(ctx context.Context, p PutSemaphoreParams) (sem Semaphore, created bool, err error)
	// GetSemaphore returns ErrSemaphoreNotFound for an unknown name.
	GetSemaphore(ctx context.Context, tenant, name string) (Semaphore, error)
	// ListSemaphores returns semaphores ordered by name, after the cursor.
	ListSemaphores(ctx context.Context, p ListParams) (sems []Semaphore, nextCursor string, err error)
	// DeleteSemaphore removes the semaphore, its leases and waiters (waiters
	// get ErrSemaphoreNotFound). The fencing counter survives.
	DeleteSemaphore(ctx context.Context, tenant, name string) error
	// SetSuspended suspends or resumes dispatching of queued jobs.
	SetSuspended(ctx context.Context, tenant, name string, suspended bool) (Semaphore, error)
	// State returns a snapshot of usage after dropping expired leases.
	State(ctx context.Context, tenant, name string) (SemaphoreState, error)

	// Acquire grants a lease if the weight fits and no earlier waiter of the
	// same capacity domain is waiting. Otherwise, with Wait > 0, it joins the
	// FIFO waiter queue and blocks until granted (by a release, expiry or
	// raise, pushed), until Wait passes or ctx ends: then ErrNoPermit (or the
	// ctx error), and the waiter leaves the queue without holding anything.
	// ErrWeightTooLarge when Weight > maxValue (it could never be granted).
	Acquire(ctx context.Context, p AcquireParams) (Lease, error)
	// Release ends a live lease; ErrLeaseNotFound (and no change) for an
	// unknown, released or expired one. Freed permits go to head waiters.
	// Releasing the lease of an inflight job releases the job (→ done).
	Release(ctx context.Context, p ReleaseParams) (Lease, error)
	// Extend moves a live lease's expiry to now+TTL; ErrLeaseNotFound for an
	// unknown, released or expired one. Extending the lease of an inflight
	// job keeps the job inflight longer (a long-running worker).
	Extend(ctx context.Context, p ExtendParams) (Lease, error)
	// ListLeases returns the semaphore's live leases (expired ones are
	// dropped first), oldest grant first (by fencing token), after the
	// cursor: the token of the last lease of the previous page, decimal. A
	// cursor that is not one lists nothing. ErrSemaphoreNotFound.
	ListLeases(ctx context.Context, p ListLeasesParams) (leases []Lease, nextCursor string, err error)
	// Sweep drops expired leases and waiters of every semaphore due for a
	// check and grants freed permits to waiters. It returns how many leases
	// expired. Run by every instance about every 250 ms; safe to run
	// concurrently from many instances.
	Sweep(ctx context.Context) (expired int, err error)

	// CreateTenant creates a tenant and returns it; ErrTenantExists when the
	// name is taken.
	CreateTenant(ctx context.Context, t Tenant) (Tenant, error)
	ListTenants(ctx context.Context) ([]Tenant, error)
	// CreateKey stores a key (its hash, never its secret).
	CreateKey(ctx context.Context, k APIKey) error
	// KeyByHash finds a key by the SHA-256 hash of its secret; ErrKeyNotFound.
	KeyByHash(ctx context.Context, hash string) (APIKey, error)
	ListKeys(ctx context.Context, tenant string) ([]APIKey, error)
	// DeleteKey revokes a key at once; ErrKeyNotFound for an unknown id.
	DeleteKey(ctx context.Context, tenant, id string) error

	// Ping checks the store is reachable (for /readyz).
	Ping(ctx context.Context) error
	// Close releases resources (pub/sub listeners, connections it owns).
	Close() error
}

// NewLeaseID returns a fresh lease id that carries the semaphore's name, so
// that a store can find the lease's semaphore (and, in Redis, its hash slot)
// from the id alone. Clients treat it as opaque.
func NewLeaseID(semaphore string) string {
	return newID() + "." + base64.RawURLEncoding.EncodeToString([]byte(semaphore))
}

// ParseLeaseID returns the semaphore name carried by a lease id, and false
// for an id not made by NewLeaseID (which no store can hold).
func ParseLeaseID(id string) (semaphore string, ok bool) {
	i := strings.IndexByte(id, '.')
	if i != 32 || len(id) > 32+1+172 {
		return "", false
	}
	if _, err := hex.DecodeString(id[:i]); err != nil {
		return "", false
	}
	name, err := base64.RawURLEncoding.DecodeString(id[i+1:])
	if err != nil || len(name) == 0 {
		return "", false
	}
	return string(name), true
}

// newID returns 32 hex characters from a random UUID.
func newID() string {
	u := uuid.New()
	return hex.EncodeToString(u[:])
}
