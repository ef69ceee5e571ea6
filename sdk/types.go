package sdk

import (
	"encoding/json"
	"fmt"
	"time"
)

// Scope of a semaphore's MaxValue.
const (
	ScopeTotal   = "total"   // MaxValue shared across all channels (default)
	ScopeChannel = "channel" // each channel has its own MaxValue
)

// Role of an API key.
type Role string

// Roles of API keys.
const (
	RoleWorker   Role = "worker"   // acquire, extend, release, jobs
	RoleAdmin    Role = "admin"    // worker + semaphores and keys of its tenant
	RoleOperator Role = "operator" // admin of the default tenant + tenants
)

// SemaphoreConfig is the configuration of a semaphore (PUT
// /v1/semaphores/{name}). Zero fields take the server's defaults: scope
// "total", LeaseTimeout 60s, MaxAttempts 3, OnSessionLost "redeliver",
// OnDeliveryError "fail", no Rate, Retention done 24h and failed 7d.
type SemaphoreConfig struct {
	MaxValue        int64         // required, ≥ 1
	MaxValueScope   string        // ScopeTotal or ScopeChannel
	LeaseTimeout    time.Duration // default ttl of a lease; 1s..24h
	MaxAttempts     int           // async jobs
	OnSessionLost   string        // release | redeliver | wait
	OnDeliveryError string        // fail | suspend
	Routes          json.RawMessage
	Mapping         json.RawMessage
	// Rate limits grants per sliding window besides MaxValue at once; nil:
	// none (PutSemaphore replaces the whole config, so nil removes a rate).
	Rate *RateLimit
	// Retention says how long terminal jobs stay readable after they end;
	// nil: the server's defaults. A Semaphore the server returns always
	// has it.
	Retention *Retention
	// Retry spaces a job's failed attempts; nil: the server's defaults
	// (backoff 1s, maxBackoff 5m). A Semaphore the server returns always
	// has it.
	Retry *Retry
}

// Retry is the backoff between a job's failed attempts: after n failed
// attempts the job waits a random time up to min(MaxBackoff,
// Backoff·2^(n−1)) (full jitter) before it runs again. Backoff 0 retries
// at once.
type Retry struct {
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Retention is how long a semaphore keeps its terminal jobs after they
// end: Done for done and cancelled jobs, Failed for error and timeout
// jobs. Each is 0 (deleted as it ends) to 30 days, whole milliseconds.
// Once it has passed, GetJob reports IsJobNotFound, ListJobs skips the
// job and its idempotency key is free again.
type Retention struct {
	Done   time.Duration
	Failed time.Duration
}

// RateLimit is a semaphore's rate: at most Limit weight units granted in
// any sliding window of Period, in the scope of MaxValue (the whole
// semaphore, or each channel with ScopeChannel). Sync acquires and job
// dispatches both count. An acquire without wait that finds a permit but
// no room is refused with an error for which IsNoPermit is true and whose
// APIError.RetryAfter says when room frees (see WithRetryAfter for Do).
type RateLimit struct {
	Limit  int64         // 1..1,000,000 weight units per window
	Period time.Duration // 1s..24h
}

// Semaphore is a semaphore as the server returns it.
type Semaphore struct {
	Name string
	SemaphoreConfig
	Suspended bool
	CreatedAt time.Time
	UpdatedAt time.Time
	// State is the current usage; set by GetSemaphore only.
	State *SemaphoreState
}

// ChannelState is the usage of a semaphore or of one of its channels.
type ChannelState struct {
	InUse     int64 // sum of weights of live leases
	Available int64 // MaxValue - InUse, at least 0
	Waiting   int64 // waiting acquires
	Queued    int64 // scheduled async jobs
	Inflight  int64 // async jobs holding a permit
	// RateUsed is the weight granted in the current rate window (0
	// without a Rate); RateNextAt is when the window's oldest grant leaves
	// it, zero when the window is empty or there is no Rate.
	RateUsed   int64
	RateNextAt time.Time
}

// SemaphoreState is a snapshot of a semaphore's usage.
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
	FencingToken int64 // strictly increasing per semaphore: pass it to the guarded resource
	AcquiredAt   time.Time
	ExpiresAt    time.Time
}

// TTL is the lease's current time to live as granted (ExpiresAt -
// AcquiredAt for a fresh lease).
func (l Lease) TTL() time.Duration { return l.ExpiresAt.Sub(l.AcquiredAt) }

// AcquireOptions are the optional inputs of Acquire. Zero values: channel
// "default", weight 1, ttl the semaphore's LeaseTimeout, no wait.
type AcquireOptions struct {
	Channel        string
	Weight         int64
	TTL            time.Duration // 1s..24h
	Wait           time.Duration // 0..60s: how long the server may hold the request for a permit
	IdempotencyKey string        // the same key during the lease's life returns the same lease
}

// ListOptions page through a listing.
type ListOptions struct {
	Cursor string // "" = first page; then the previous page's NextCursor
	Limit  int    // 0 = server default
}

// SemaphorePage is one page of ListSemaphores. NextCursor is "" on the
// last page.
type SemaphorePage struct {
	Semaphores []Semaphore
	NextCursor string
}

// Tenant is an isolation unit.
type Tenant struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// Key is an API key. Secret is set only in the reply that created the key.
type Key struct {
	ID        string
	Name      string
	Role      Role
	Prefix    string // first characters of the secret, to recognise it
	Tenant    string
	CreatedAt time.Time
	Secret    string
}

// TenantCreated is the reply of CreateTenant: the tenant and its first admin
// key (Key.Secret is shown only here).
type TenantCreated struct {
	Tenant Tenant
	Key    Key
}

// ---- wire format (mirrors api/wire.go; the SDK does not import the server) ----

type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string: %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func durPtr(d time.Duration) *duration {
	if d == 0 {
		return nil
	}
	v := duration(d)
	return &v
}

type semaphoreConfigWire struct {
	MaxValue        int64           `json:"maxValue"`
	MaxValueScope   string          `json:"maxValueScope,omitempty"`
	LeaseTimeout    *duration       `json:"leaseTimeout,omitempty"`
	MaxAttempts     int             `json:"maxAttempts,omitempty"`
	OnSessionLost   string          `json:"onSessionLost,omitempty"`
	OnDeliveryError string          `json:"onDeliveryError,omitempty"`
	Routes          json.RawMessage `json:"routes,omitempty"`
	Mapping         json.RawMessage `json:"mapping,omitempty"`
	Rate            *rateWire       `json:"rate,omitempty"`      // absent: no rate
	Retention       *retentionWire  `json:"retention,omitempty"` // absent: the defaults
	Retry           *retryWire      `json:"retry,omitempty"`     // absent: the defaults
}

type retryWire struct {
	Backoff    duration `json:"backoff"`
	MaxBackoff duration `json:"maxBackoff"`
}

func (r *retryWire) toSDK() *Retry {
	if r == nil {
		return nil
	}
	return &Retry{Backoff: time.Duration(r.Backoff), MaxBackoff: time.Duration(r.MaxBackoff)}
}

func retryToWire(r *Retry) *retryWire {
	if r == nil {
		return nil
	}
	return &retryWire{Backoff: duration(r.Backoff), MaxBackoff: duration(r.MaxBackoff)}
}

type retentionWire struct {
	Done   duration `json:"done"`
	Failed duration `json:"failed"`
}

func (r *retentionWire) toSDK() *Retention {
	if r == nil {
		return nil
	}
	return &Retention{Done: time.Duration(r.Done), Failed: time.Duration(r.Failed)}
}

func retentionToWire(r *Retention) *retentionWire {
	if r == nil {
		return nil
	}
	return &retentionWire{Done: duration(r.Done), Failed: duration(r.Failed)}
}

type rateWire struct {
	Limit  int64    `json:"limit"`
	Period duration `json:"period"`
}

func (r *rateWire) toSDK() *RateLimit {
	if r == nil {
		return nil
	}
	return &RateLimit{Limit: r.Limit, Period: time.Duration(r.Period)}
}

func rateToWire(r *RateLimit) *rateWire {
	if r == nil {
		return nil
	}
	return &rateWire{Limit: r.Limit, Period: duration(r.Period)}
}

type channelStateWire struct {
	InUse      int64      `json:"inUse"`
	Available  int64      `json:"available"`
	Waiting    int64      `json:"waiting"`
	Queued     int64      `json:"queued"`
	Inflight   int64      `json:"inflight"`
	RateUsed   int64      `json:"rateUsed"`
	RateNextAt *time.Time `json:"rateNextAt"` // null: none
}

func (w channelStateWire) toSDK() ChannelState {
	cs := ChannelState{InUse: w.InUse, Available: w.Available, Waiting: w.Waiting, Queued: w.Queued, Inflight: w.Inflight, RateUsed: w.RateUsed}
	if w.RateNextAt != nil {
		cs.RateNextAt = *w.RateNextAt
	}
	return cs
}

type stateWire struct {
	channelStateWire
	Channels map[string]channelStateWire `json:"channels"`
}

type semaphoreWire struct {
	Name            string          `json:"name"`
	MaxValue        int64           `json:"maxValue"`
	MaxValueScope   string          `json:"maxValueScope"`
	LeaseTimeout    duration        `json:"leaseTimeout"`
	MaxAttempts     int             `json:"maxAttempts"`
	OnSessionLost   string          `json:"onSessionLost"`
	OnDeliveryError string          `json:"onDeliveryError"`
	Routes          json.RawMessage `json:"routes"`
	Mapping         json.RawMessage `json:"mapping"`
	Rate            *rateWire       `json:"rate"`
	Retention       *retentionWire  `json:"retention"`
	Retry           *retryWire      `json:"retry"`
	Suspended       bool            `json:"suspended"`
	CreatedAt       time.Time       `json:"createdAt"`
	UpdatedAt       time.Time       `json:"updatedAt"`
	State           *stateWire      `json:"state"`
}

func (w semaphoreWire) toSDK() Semaphore {
	s := Semaphore{
		Name: w.Name,
		SemaphoreConfig: SemaphoreConfig{
			MaxValue:        w.MaxValue,
			MaxValueScope:   w.MaxValueScope,
			LeaseTimeout:    time.Duration(w.LeaseTimeout),
			MaxAttempts:     w.MaxAttempts,
			OnSessionLost:   w.OnSessionLost,
			OnDeliveryError: w.OnDeliveryError,
			Routes:          w.Routes,
			Mapping:         w.Mapping,
			Rate:            w.Rate.toSDK(),
			Retention:       w.Retention.toSDK(),
			Retry:           w.Retry.toSDK(),
		},
		Suspended: w.Suspended,
		CreatedAt: w.CreatedAt,
		UpdatedAt: w.UpdatedAt,
	}
	if w.State != nil {
		st := &SemaphoreState{ChannelState: w.State.toSDK()}
		if len(w.State.Channels) > 0 {
			st.Channels = make(map[string]ChannelState, len(w.State.Channels))
			for k, v := range w.State.Channels {
				st.Channels[k] = v.toSDK()
			}
		}
		s.State = st
	}
	return s
}

type acquireWire struct {
	Channel        string    `json:"channel,omitempty"`
	Weight         int64     `json:"weight,omitempty"`
	TTL            *duration `json:"ttl,omitempty"`
	Wait           *duration `json:"wait,omitempty"`
	IdempotencyKey string    `json:"idempotencyKey,omitempty"`
}

// replayKey: a request with a key is safe to send twice (see replayable).
func (w acquireWire) replayKey() string { return w.IdempotencyKey }

type extendWire struct {
	TTL duration `json:"ttl"`
}

type leaseWire struct {
	ID           string    `json:"id"`
	Semaphore    string    `json:"semaphore"`
	Channel      string    `json:"channel"`
	Weight       int64     `json:"weight"`
	FencingToken int64     `json:"fencingToken"`
	AcquiredAt   time.Time `json:"acquiredAt"`
	ExpiresAt    time.Time `json:"expiresAt"`
}

type tenantWire struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

type keyWire struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Prefix    string    `json:"prefix"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"createdAt"`
	Secret    string    `json:"secret"`
}
