package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strconv"
	"time"

	"github.com/semaphored/semaphored/wire"
)

// This file fixes the JSON wire format of the HTTP API (api/openapi.yaml). It is the
// one place the handlers, api/openapi.yaml and the SDK agree on. Every object
// sits under its own key in a response ({"semaphore": ...}, {"lease": ...}),
// so fields can be added later. Durations are Go duration strings, times RFC
// 3339 with nanoseconds (UTC).

// Stable error codes. Each is documented in api/openapi.yaml.
const (
	CodeUnauthorized      = "unauthorized"           // 401: missing or unknown key
	CodeForbidden         = "forbidden"              // 403: role may not do this
	CodeInvalidJSON       = "invalid_json"           // 400: malformed JSON, wrong type, unknown field
	CodeInvalidRequest    = "invalid_request"        // 400: a field's value is out of range; message names the field
	CodeInvalidName       = "invalid_name"           // 400: semaphore/tenant name does not match the pattern
	CodeInvalidConfig     = "invalid_config"         // 400: semaphore config invalid; message names the field
	CodeSemaphoreNotFound = "semaphore_not_found"    // 404
	CodeLeaseNotFound     = "lease_not_found"        // 404: unknown, released or expired lease
	CodeKeyNotFound       = "key_not_found"          // 404
	CodeNotFound          = "not_found"              // 404: no such route
	CodeMethodNotAllowed  = "method_not_allowed"     // 405
	CodeNoPermit          = "no_permit"              // 409: no permit within wait
	CodeWeightTooLarge    = "weight_too_large"       // 409: weight > maxValue, can never be granted now
	CodeTenantExists      = "tenant_exists"          // 409
	CodePayloadTooLarge   = "payload_too_large"      // 413: body over the limit
	CodeUnsupportedMedia  = "unsupported_media_type" // 415: body that is not application/json
	CodeRateLimited       = "rate_limited"           // 429, with Retry-After
	CodeStoreUnavailable  = "store_unavailable"      // 503
	CodeInternal          = "internal"               // 500

	// Codes of the job routes (async issue), fixed here so openapi.yaml and
	// the SDK know them already.
	CodeJobNotFound  = "job_not_found" // 404
	CodeInvalidState = "invalid_state" // 409: wrong job transition
	CodeQueueFull    = "queue_full"    // 429: the semaphore's queue is full

	// Codes of the sessions (README "Websocket workers"). Only session_not_found has an HTTP
	// status (404, on the session routes); the others come in frames.
	CodeUnknownFrame    = "unknown_frame"     // a frame type the server does not know
	CodeSessionNotFound = "session_not_found" // unknown session or resume token, another tenant's, grace period over
	CodeNotSubscribed   = "not_subscribed"    // unsubscribe from something not subscribed
	CodeSessionClosed   = "session_closed"    // a posted frame the session's connection ended before answering
)

// ErrorBody is every error response: {"error": {"code", "message"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody. Index is set when one job of a
// batch enqueue was refused: its place in "jobs", from 0.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Index   *int   `json:"index,omitempty"`
}

// Duration is a time.Duration that travels as a Go duration string ("30s").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON accepts only a Go duration string. Any other value fails
// with a *json.UnmarshalTypeError, so the decoder names the field.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil // like the standard types: null leaves the value alone
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: jsonKind(b), Type: durationType}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: "string " + strconv.Quote(shorten(s, 64)), Type: durationType}
	}
	*d = Duration(v)
	return nil
}

// jsonKind names the kind of a JSON value for error messages.
func jsonKind(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// ---- semaphores (admin) ----

// SemaphoreConfigJSON is the body of PUT /v1/semaphores/{name} and the
// config part of a returned semaphore. Zero/absent fields take the defaults
// noted in openapi.yaml: maxValueScope "total", leaseTimeout "60s",
// maxAttempts 3, onSessionLost "redeliver", onDeliveryError "fail",
// retention {"done": "24h", "failed": "7d"}.
type SemaphoreConfigJSON struct {
	MaxValue        *int64          `json:"maxValue"`                  // required, 1..1e9
	MaxValueScope   string          `json:"maxValueScope,omitempty"`   // total | channel
	LeaseTimeout    *Duration       `json:"leaseTimeout,omitempty"`    // 1s..24h
	MaxAttempts     *int            `json:"maxAttempts,omitempty"`     // 1..100
	OnSessionLost   string          `json:"onSessionLost,omitempty"`   // release | redeliver | wait
	OnDeliveryError string          `json:"onDeliveryError,omitempty"` // fail | suspend
	Routes          json.RawMessage `json:"routes,omitempty"`          // array of route objects (async issue)
	Mapping         json.RawMessage `json:"mapping,omitempty"`         // mapping object (async issue)
	Rate            json.RawMessage `json:"rate,omitempty"`            // RateJSON or null (none); checked by semaphore.ValidateConfig
	Retention       json.RawMessage `json:"retention,omitempty"`       // RetentionJSON, fields optional; checked by semaphore.ValidateConfig
	Retry           json.RawMessage `json:"retry,omitempty"`           // RetryJSON, fields optional; checked by semaphore.ValidateConfig
}

// RetryJSON spaces a job's failed attempts: the n-th retry waits a random
// time up to min(maxBackoff, backoff × 2^(n−1)).
type RetryJSON struct {
	Backoff    Duration `json:"backoff"`
	MaxBackoff Duration `json:"maxBackoff"`
}

// RetentionJSON is how long a semaphore keeps terminal jobs after they
// end: done for done and cancelled jobs, failed for error and timeout
// jobs; "0s" deletes at once, at most 30 days. A PUT may write days
// ("7d"); a returned semaphore shows Go durations ("168h0m0s").
type RetentionJSON struct {
	Done   Duration `json:"done"`
	Failed Duration `json:"failed"`
}

// RateJSON is a semaphore's rate: at most limit (1..1,000,000) weight
// units granted in any sliding window of period (1s..24h), per capacity
// domain (the semaphore, or each channel with maxValueScope "channel").
type RateJSON struct {
	Limit  int64    `json:"limit"`
	Period Duration `json:"period"`
}

// SemaphoreJSON is a returned semaphore.
type SemaphoreJSON struct {
	Name            string          `json:"name"`
	MaxValue        int64           `json:"maxValue"`
	MaxValueScope   string          `json:"maxValueScope"`
	LeaseTimeout    Duration        `json:"leaseTimeout"`
	MaxAttempts     int             `json:"maxAttempts"`
	OnSessionLost   string          `json:"onSessionLost"`
	OnDeliveryError string          `json:"onDeliveryError"`
	Routes          json.RawMessage `json:"routes"`  // [] when none
	Mapping         json.RawMessage `json:"mapping"` // null when none
	Rate            *RateJSON       `json:"rate"`    // null when none
	Retention       RetentionJSON   `json:"retention"`
	Retry           RetryJSON       `json:"retry"`
	Suspended       bool            `json:"suspended"`
	CreatedAt       time.Time       `json:"createdAt"`
	UpdatedAt       time.Time       `json:"updatedAt"`
	State           *StateJSON      `json:"state,omitempty"` // on GET of one semaphore
}

// StateJSON is a semaphore's usage: the top level's fields, then channels.
type StateJSON struct {
	ChannelStateJSON
	Channels map[string]ChannelStateJSON `json:"channels"`
}

// ChannelStateJSON is one channel's usage (or the top level's).
type ChannelStateJSON struct {
	InUse     int64 `json:"inUse"`
	Available int64 `json:"available"`
	Waiting   int64 `json:"waiting"`
	Queued    int64 `json:"queued"`
	Inflight  int64 `json:"inflight"`
	// RateUsed is the weight granted in the current rate window of the
	// capacity domain (0 without a rate); RateNextAt when its oldest grant
	// leaves the window, null when the window is empty or there is no rate.
	RateUsed   int64      `json:"rateUsed"`
	RateNextAt *time.Time `json:"rateNextAt"`
}

// SemaphoreResponse is {"semaphore": ...}.
type SemaphoreResponse struct {
	Semaphore SemaphoreJSON `json:"semaphore"`
}

// SemaphoreListResponse is GET /v1/semaphores: nextCursor "" on the last page.
type SemaphoreListResponse struct {
	Semaphores []SemaphoreJSON `json:"semaphores"`
	NextCursor string          `json:"nextCursor"`
}

// ---- sync leases (worker) ----

// AcquireRequest is the body of POST /v1/semaphores/{name}/acquire (may be
// empty). ttl defaults to the semaphore's leaseTimeout, 1s..24h; wait 0..60s.
type AcquireRequest struct {
	Channel        string    `json:"channel,omitempty"` // default "default"; same pattern as names
	Weight         *int64    `json:"weight,omitempty"`  // default 1, >= 1
	TTL            *Duration `json:"ttl,omitempty"`
	Wait           *Duration `json:"wait,omitempty"`
	IdempotencyKey string    `json:"idempotencyKey,omitempty"` // 1..256 bytes
}

// ExtendRequest is the body of POST /v1/leases/{id}/extend.
type ExtendRequest struct {
	TTL *Duration `json:"ttl"` // required, 1s..24h
}

// LeaseJSON is a returned lease: {id, semaphore, channel, weight,
// fencingToken, acquiredAt, expiresAt}. It is the webhook body's lease too,
// so the type is defined once, in wire.
type LeaseJSON = wire.Lease

// LeaseResponse is {"lease": ...}: acquire, extend and release (the lease as
// it was when released).
type LeaseResponse struct {
	Lease LeaseJSON `json:"lease"`
}

// ---- tenants and keys ----

// TenantRequest is the body of POST /v1/tenants.
type TenantRequest struct {
	Name string `json:"name"` // same pattern as semaphore names
}

// TenantJSON is a returned tenant.
type TenantJSON struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// TenantCreatedResponse is 201 of POST /v1/tenants: the tenant and its first
// admin key, whose secret is shown only here.
type TenantCreatedResponse struct {
	Tenant TenantJSON `json:"tenant"`
	Key    KeyJSON    `json:"key"`
}

// TenantListResponse is GET /v1/tenants.
type TenantListResponse struct {
	Tenants []TenantJSON `json:"tenants"`
}

// KeyRequest is the body of POST /v1/keys. role: worker | admin (an operator
// may also create operator keys). name: 1..128 printable characters.
type KeyRequest struct {
	Role string `json:"role"`
	Name string `json:"name"`
}

// KeyJSON is a returned key. Secret ("sk_…") only in the creation reply.
type KeyJSON struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Prefix    string    `json:"prefix"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"createdAt"`
	Secret    string    `json:"secret,omitempty"`
}

// KeyResponse is {"key": ...}: creation (201, with secret) and revocation
// (200, the revoked key).
type KeyResponse struct {
	Key KeyJSON `json:"key"`
}

// KeyListResponse is GET /v1/keys.
type KeyListResponse struct {
	Keys []KeyJSON `json:"keys"`
}

// ---- other ----

// HealthResponse is /healthz and /readyz: {"status": "ok"} (503 with an
// error body from /readyz when the store is unreachable).
type HealthResponse struct {
	Status string `json:"status"`
}

var durationType = reflect.TypeFor[Duration]()

// statusOf maps each error code to its HTTP status, in one table.
var statusOf = map[string]int{
	CodeUnauthorized:      http.StatusUnauthorized,
	CodeForbidden:         http.StatusForbidden,
	CodeInvalidJSON:       http.StatusBadRequest,
	CodeInvalidRequest:    http.StatusBadRequest,
	CodeInvalidName:       http.StatusBadRequest,
	CodeInvalidConfig:     http.StatusBadRequest,
	CodeSemaphoreNotFound: http.StatusNotFound,
	CodeLeaseNotFound:     http.StatusNotFound,
	CodeKeyNotFound:       http.StatusNotFound,
	CodeNotFound:          http.StatusNotFound,
	CodeMethodNotAllowed:  http.StatusMethodNotAllowed,
	CodeNoPermit:          http.StatusConflict,
	CodeWeightTooLarge:    http.StatusConflict,
	CodeTenantExists:      http.StatusConflict,
	CodePayloadTooLarge:   http.StatusRequestEntityTooLarge,
	CodeUnsupportedMedia:  http.StatusUnsupportedMediaType,
	CodeRateLimited:       http.StatusTooManyRequests,
	CodeStoreUnavailable:  http.StatusServiceUnavailable,
	CodeInternal:          http.StatusInternalServerError,
	CodeJobNotFound:       http.StatusNotFound,
	CodeInvalidState:      http.StatusConflict,
	CodeQueueFull:         http.StatusTooManyRequests,
	CodeSessionNotFound:   http.StatusNotFound,
}

// ---- async jobs (worker) ----

// EnqueueRequest is the body of POST /v1/semaphores/{name}/jobs: one job
// (payload is required: any JSON value, null included; at most 256 KiB), or
// instead a batch in jobs (1 to 1,000 of them, enqueued all or nothing).
type EnqueueRequest struct {
	Channel        string          `json:"channel,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotencyKey,omitempty"`
	Delay          *Duration       `json:"delay,omitempty"` // 0s..30d, or runAt
	RunAt          *time.Time      `json:"runAt,omitempty"` // at most 30 days ahead
	// Jobs holds the batch's jobs as sent; each is decoded as an
	// EnqueueJob, as strictly as a whole body (its keys included).
	Jobs []json.RawMessage `json:"jobs,omitempty"`
}

// EnqueueJob is one job of a batch enqueue.
type EnqueueJob struct {
	Channel        string          `json:"channel,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotencyKey,omitempty"`
	Delay          *Duration       `json:"delay,omitempty"`
	RunAt          *time.Time      `json:"runAt,omitempty"`
}

// EnqueueBatchResponse answers a batch enqueue: the jobs in the batch's
// order (a replayed idempotency key gives the existing job).
type EnqueueBatchResponse struct {
	Jobs []JobJSON `json:"jobs"`
}

// JobRefJSON points at a related job: the parent of a child job created by
// a semaphore route, or the child a parent handed off to.
type JobRefJSON struct {
	ID        string `json:"id"`
	Semaphore string `json:"semaphore"`
	Hold      bool   `json:"hold"`
}

// JobJSON is a returned job.
type JobJSON struct {
	ID         string          `json:"id"`
	Semaphore  string          `json:"semaphore"`
	Channel    string          `json:"channel"`
	Payload    json.RawMessage `json:"payload"`
	Status     string          `json:"status"`
	Attempts   int             `json:"attempts"`
	Lease      *LeaseJSON      `json:"lease"`  // null unless inflight
	Route      *string         `json:"route"`  // route type that accepted it; null before
	Error      *string         `json:"error"`  // why it ended in error or timeout; null otherwise
	Parent     *JobRefJSON     `json:"parent"` // null unless a child job
	Child      *JobRefJSON     `json:"child"`  // null unless handed off to a child job
	CreatedAt  time.Time       `json:"createdAt"`
	UpdatedAt  time.Time       `json:"updatedAt"`
	FinishedAt *time.Time      `json:"finishedAt"` // null until terminal
	RunAt      *time.Time      `json:"runAt"`      // a scheduled job waiting for its time (delay, retry backoff); null otherwise
}

// JobResponse is {"job": ...}.
type JobResponse struct {
	Job JobJSON `json:"job"`
}

// LeaseListResponse is GET /v1/semaphores/{name}/leases.
type LeaseListResponse struct {
	Leases     []LeaseJSON `json:"leases"`
	NextCursor string      `json:"nextCursor"`
}

// JobListResponse is GET /v1/semaphores/{name}/jobs.
type JobListResponse struct {
	Jobs       []JobJSON `json:"jobs"`
	NextCursor string    `json:"nextCursor"`
}

// PurgeResponse is DELETE /v1/semaphores/{name}/jobs.
type PurgeResponse struct {
	Purged int `json:"purged"`
}
