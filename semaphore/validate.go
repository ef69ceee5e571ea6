package semaphore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
)

// Validation error codes. They equal the wire codes of the HTTP API, which
// maps a *ValidationError to status 400 and its Code in one place.
const (
	CodeInvalidName    = "invalid_name"    // a semaphore or tenant name does not match NamePattern
	CodeInvalidConfig  = "invalid_config"  // a semaphore config field is invalid
	CodeInvalidRequest = "invalid_request" // any other field is out of range
)

// ValidationError reports bad user input. Nothing was changed.
type ValidationError struct {
	Code    string // CodeInvalidName, CodeInvalidConfig or CodeInvalidRequest
	Field   string // JSON name of the offending field ("maxValue", "ttl", "name")
	Message string // human text, naming the field
}

func (e *ValidationError) Error() string { return e.Message }

func invalid(code, field, format string, args ...any) *ValidationError {
	return &ValidationError{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// NamePattern is the pattern of semaphore, tenant and channel names (SPEC §1).
const NamePattern = `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`

// ValidName tells whether s matches NamePattern. It checks the bytes by
// hand: it runs on every request, and a regexp match costs far more.
// validate_test.go checks it against the pattern.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 128 || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func checkName(field, name string) error {
	if !ValidName(name) {
		return invalid(CodeInvalidName, field, "%s %q does not match %s", field, truncate(name, 140), NamePattern)
	}
	return nil
}

// Limits and defaults of SPEC §3 and §4.
const (
	MinTTL                 = time.Second
	MaxTTL                 = 24 * time.Hour
	MaxWait                = 60 * time.Second
	MaxMaxValue            = 1_000_000_000
	MaxMaxAttempts         = 100
	MaxIdempotencyKeyBytes = 256
	MaxKeyNameRunes        = 128

	DefaultLeaseTimeout    = 60 * time.Second
	DefaultMaxAttempts     = 3
	DefaultOnSessionLost   = "redeliver"
	DefaultOnDeliveryError = "fail"

	DefaultListLimit = 100
	MaxListLimit     = 1000

	// Bounds of a semaphore's rate (SPEC §4): at most MaxRateLimit units
	// per window, a window of MinRatePeriod to MaxRatePeriod.
	MaxRateLimit  = 1_000_000
	MinRatePeriod = time.Second
	MaxRatePeriod = 24 * time.Hour
)

// ConfigInput is a semaphore config as a client sends it: nil or empty
// fields take the SPEC §4 defaults. Routes, Mapping and Rate are raw JSON.
type ConfigInput struct {
	MaxValue        *int64
	MaxValueScope   string
	LeaseTimeout    *time.Duration
	MaxAttempts     *int
	OnSessionLost   string
	OnDeliveryError string
	Routes          json.RawMessage
	Mapping         json.RawMessage
	// Rate is {"limit": n, "period": "1m"}; absent, empty or null: no rate
	// (a PUT replaces the config, so that removes a rate set before).
	Rate json.RawMessage
	// Retry is {"backoff": "1s", "maxBackoff": "5m"}; absent, empty or null
	// fields take the defaults.
	Retry json.RawMessage
	// Retention is {"done": "24h", "failed": "7d"}; absent, empty or null
	// fields take the defaults (store.DefaultRetention).
	Retention json.RawMessage
}

// ValidateConfig checks the config of semaphore name, fills the defaults and
// returns the config to store with its routing config (routes and mapping,
// parsed and compiled by routing.Parse, kept in Extra). Secrets of https
// routes are not assigned yet (Service.PutSemaphore does, keeping the
// previous ones).
func ValidateConfig(name string, in ConfigInput, opts routing.Options) (store.SemaphoreConfig, routing.Config, error) {
	var cfg store.SemaphoreConfig
	var rc routing.Config
	switch {
	case in.MaxValue == nil:
		return cfg, rc, invalid(CodeInvalidConfig, "maxValue", "maxValue is required")
	case *in.MaxValue < 1 || *in.MaxValue > MaxMaxValue:
		return cfg, rc, invalid(CodeInvalidConfig, "maxValue", "maxValue must be between 1 and %d, got %d", MaxMaxValue, *in.MaxValue)
	}
	cfg.MaxValue = *in.MaxValue

	switch in.MaxValueScope {
	case "":
		cfg.MaxValueScope = store.ScopeTotal
	case store.ScopeTotal, store.ScopeChannel:
		cfg.MaxValueScope = in.MaxValueScope
	default:
		return cfg, rc, invalid(CodeInvalidConfig, "maxValueScope", `maxValueScope must be "total" or "channel", got %q`, truncate(in.MaxValueScope, 64))
	}

	cfg.LeaseTimeout = DefaultLeaseTimeout
	if in.LeaseTimeout != nil {
		if d := *in.LeaseTimeout; d < MinTTL || d > MaxTTL {
			return cfg, rc, invalid(CodeInvalidConfig, "leaseTimeout", "leaseTimeout must be between %s and %s, got %s", MinTTL, MaxTTL, d)
		}
		cfg.LeaseTimeout = *in.LeaseTimeout
	}

	cfg.MaxAttempts = DefaultMaxAttempts
	if in.MaxAttempts != nil {
		if n := *in.MaxAttempts; n < 1 || n > MaxMaxAttempts {
			return cfg, rc, invalid(CodeInvalidConfig, "maxAttempts", "maxAttempts must be between 1 and %d, got %d", MaxMaxAttempts, n)
		}
		cfg.MaxAttempts = *in.MaxAttempts
	}

	switch in.OnSessionLost {
	case "":
		cfg.OnSessionLost = DefaultOnSessionLost
	case "release", "redeliver", "wait":
		cfg.OnSessionLost = in.OnSessionLost
	default:
		return cfg, rc, invalid(CodeInvalidConfig, "onSessionLost", `onSessionLost must be "release", "redeliver" or "wait", got %q`, truncate(in.OnSessionLost, 64))
	}

	switch in.OnDeliveryError {
	case "":
		cfg.OnDeliveryError = DefaultOnDeliveryError
	case "fail", "suspend":
		cfg.OnDeliveryError = in.OnDeliveryError
	default:
		return cfg, rc, invalid(CodeInvalidConfig, "onDeliveryError", `onDeliveryError must be "fail" or "suspend", got %q`, truncate(in.OnDeliveryError, 64))
	}

	rate, err := parseRate(in.Rate)
	if err != nil {
		return cfg, rc, err
	}
	cfg.Rate = rate

	if cfg.Retry, err = parseRetry(in.Retry); err != nil {
		return cfg, rc, err
	}
	if cfg.Retention, err = parseRetention(in.Retention); err != nil {
		return cfg, rc, err
	}

	rc, err = routing.Parse(name, in.Routes, in.Mapping, opts)
	if err != nil {
		return cfg, rc, configError(err)
	}
	if cfg.Extra, err = rc.EncodeExtra(); err != nil {
		return cfg, rc, err
	}
	cfg.Workers = workerRoute(rc.Chain())
	return cfg, rc, nil
}

// workerRoute is what the store needs of a chain that begins with the
// websocket route, to dispatch its jobs by the room of the subscribed
// sessions (store.WorkerRoute); nil for any other chain.
func workerRoute(chain []routing.Route) *store.WorkerRoute {
	if len(chain) == 0 || chain[0].Type != routing.TypeWebsocket {
		return nil
	}
	return &store.WorkerRoute{Channel: chain[0].Channel, Fallback: len(chain) > 1}
}

// parseRate parses a config's rate: nil for none (absent, empty or null),
// else {"limit": integer 1..MaxRateLimit, "period": duration string
// MinRatePeriod..MaxRatePeriod}, both required. Errors are invalid_config
// naming "rate", "rate.limit" or "rate.period".
func parseRate(raw json.RawMessage) (*store.RateLimit, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	if !json.Valid(t) {
		return nil, invalid(CodeInvalidConfig, "rate", "rate is not valid JSON")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(t, &m); err != nil || m == nil {
		return nil, invalid(CodeInvalidConfig, "rate", `rate must be an object {"limit": n, "period": "1m"} or null, got %s`, routing.JSONKind(t))
	}
	var unknown []string
	for k, v := range m {
		switch {
		case k != "limit" && k != "period":
			unknown = append(unknown, k)
		case bytes.Equal(bytes.TrimSpace(v), []byte("null")):
			delete(m, k) // a null field counts as absent
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, invalid(CodeInvalidConfig, "rate", "rate has an unknown field %q: its fields are limit and period", truncate(unknown[0], 64))
	}

	r := &store.RateLimit{}
	v, ok := m["limit"]
	if !ok {
		return nil, invalid(CodeInvalidConfig, "rate.limit", "rate.limit is required (an integer between 1 and %d)", MaxRateLimit)
	}
	if err := json.Unmarshal(v, &r.Limit); err != nil {
		return nil, invalid(CodeInvalidConfig, "rate.limit", "rate.limit must be an integer between 1 and %d, got %s", MaxRateLimit, jsonValue(v))
	}
	if r.Limit < 1 || r.Limit > MaxRateLimit {
		return nil, invalid(CodeInvalidConfig, "rate.limit", "rate.limit must be between 1 and %d, got %d", MaxRateLimit, r.Limit)
	}

	v, ok = m["period"]
	if !ok {
		return nil, invalid(CodeInvalidConfig, "rate.period", `rate.period is required (a duration between %s and %s, such as "1m")`, MinRatePeriod, MaxRatePeriod)
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, invalid(CodeInvalidConfig, "rate.period", `rate.period must be a duration string such as "1m", got %s`, routing.JSONKind(v))
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, invalid(CodeInvalidConfig, "rate.period", `rate.period must be a duration such as "1m", got %q`, truncate(s, 64))
	}
	if d < MinRatePeriod || d > MaxRatePeriod {
		return nil, invalid(CodeInvalidConfig, "rate.period", "rate.period must be between %s and %s, got %s", MinRatePeriod, MaxRatePeriod, d)
	}
	r.Period = d
	return r, nil
}

// durationField is one named duration of a config object (retention,
// retry).
type durationField struct {
	name string
	dst  *time.Duration
}

// parseDurations parses a config object of durations, {"name": "24h",
// ...}, into fields (whose current values are the defaults); the object,
// or a field, absent or null keeps the default. A duration may start with
// whole days ("7d"). Errors are invalid_config naming field or
// field.name; example shows the object's shape.
func parseDurations(raw json.RawMessage, field, example string, fields ...durationField) error {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil
	}
	if !json.Valid(t) {
		return invalid(CodeInvalidConfig, field, "%s is not valid JSON", field)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(t, &m); err != nil || m == nil {
		return invalid(CodeInvalidConfig, field, `%s must be an object %s or null, got %s`, field, example, routing.JSONKind(t))
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	var unknown []string
	for k := range m {
		if !slices.Contains(names, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return invalid(CodeInvalidConfig, field, "%s has an unknown field %q: its fields are %s", field, truncate(unknown[0], 64), strings.Join(names, " and "))
	}
	for _, f := range fields {
		v, ok := m[f.name]
		if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			continue
		}
		name := field + "." + f.name
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return invalid(CodeInvalidConfig, name, `%s must be a duration string such as "24h", got %s`, name, routing.JSONKind(v))
		}
		d, err := parseDays(s)
		if err != nil {
			return invalid(CodeInvalidConfig, name, `%s must be a duration such as "24h" or "7d", got %q`, name, truncate(s, 64))
		}
		*f.dst = d
	}
	return nil
}

// parseRetention parses a config's retention: {"done": duration,
// "failed": duration}, each 0s (deleted at once) to store.MaxRetention in
// whole milliseconds, "7d" and "1d12h" allowed; absent or null fields take
// the defaults (store.DefaultRetention). Errors are invalid_config naming
// "retention", "retention.done" or "retention.failed".
func parseRetention(raw json.RawMessage) (store.Retention, error) {
	r := store.DefaultRetention
	if err := parseDurations(raw, "retention", `{"done": "24h", "failed": "7d"}`,
		durationField{"done", &r.Done}, durationField{"failed", &r.Failed}); err != nil {
		return r, err
	}
	for _, f := range []durationField{{"done", &r.Done}, {"failed", &r.Failed}} {
		if d := *f.dst; d < 0 || d > store.MaxRetention || d%time.Millisecond != 0 {
			field := "retention." + f.name
			return r, invalid(CodeInvalidConfig, field, "%s must be whole milliseconds between 0s and %s (30 days), got %s", field, store.MaxRetention, d)
		}
	}
	return r, nil
}

// Retry backoff bounds and defaults (api/openapi.yaml, Retry).
const (
	DefaultRetryBackoff    = time.Second
	DefaultRetryMaxBackoff = 5 * time.Minute
	MaxRetryBackoff        = time.Hour
	MaxRetryMaxBackoff     = 24 * time.Hour
)

// parseRetry parses a config's retry: {"backoff": duration, "maxBackoff":
// duration}, backoff 0s (retry at once) to 1h, maxBackoff from backoff to
// 24h, whole milliseconds; absent or null fields take the defaults (1s,
// 5m). Errors are invalid_config naming "retry", "retry.backoff" or
// "retry.maxBackoff".
func parseRetry(raw json.RawMessage) (*store.RetryPolicy, error) {
	r := &store.RetryPolicy{Backoff: DefaultRetryBackoff, MaxBackoff: DefaultRetryMaxBackoff}
	if err := parseDurations(raw, "retry", `{"backoff": "1s", "maxBackoff": "5m"}`,
		durationField{"backoff", &r.Backoff}, durationField{"maxBackoff", &r.MaxBackoff}); err != nil {
		return nil, err
	}
	switch {
	case r.Backoff < 0 || r.Backoff > MaxRetryBackoff || r.Backoff%time.Millisecond != 0:
		return nil, invalid(CodeInvalidConfig, "retry.backoff", "retry.backoff must be whole milliseconds between 0s and 1h, got %s", r.Backoff)
	case r.MaxBackoff < r.Backoff || r.MaxBackoff > MaxRetryMaxBackoff || r.MaxBackoff%time.Millisecond != 0:
		return nil, invalid(CodeInvalidConfig, "retry.maxBackoff", "retry.maxBackoff must be whole milliseconds between retry.backoff (%s) and 24h, got %s", r.Backoff, r.MaxBackoff)
	}
	return r, nil
}

// parseDays parses a Go duration that may start with a whole number of
// days (24h each): "7d", "1d12h", "90m".
func parseDays(s string) (time.Duration, error) {
	i := strings.IndexByte(s, 'd')
	if i < 0 {
		return time.ParseDuration(s)
	}
	days, err := strconv.ParseUint(s[:i], 10, 16) // digits only, below 65,536
	if err != nil || i == 0 {
		return 0, fmt.Errorf("bad day count in %q", s)
	}
	d := time.Duration(days) * 24 * time.Hour
	if rest := s[i+1:]; rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 || r > math.MaxInt64-d {
			return 0, fmt.Errorf("bad duration %q", s)
		}
		d += r
	}
	return d, nil
}

// jsonValue shows a JSON value in an error message: a number as it was
// written (1.5, 1e9), anything else by its kind.
func jsonValue(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if k := routing.JSONKind(t); k != "a number" {
		return k
	}
	return truncate(strings.ToValidUTF8(string(t), ""), 32)
}

// configError turns a routing error into a 400 invalid_config naming the
// field.
func configError(err error) error {
	var fe *routing.FieldError
	if errors.As(err, &fe) {
		return &ValidationError{Code: CodeInvalidConfig, Field: fe.Field, Message: fe.Message}
	}
	return err
}

// ConfigExtra returns the routes and mapping kept in a config's Extra, as
// the API shows them: routes "[]" and mapping "null" when there are none.
func ConfigExtra(cfg store.SemaphoreConfig) (routes, mapping json.RawMessage) {
	routes, mapping = json.RawMessage("[]"), json.RawMessage("null")
	rc, err := routing.DecodeExtra(cfg.Extra)
	if err != nil {
		return routes, mapping
	}
	if r, err := rc.RoutesJSON(); err == nil {
		routes = r
	}
	if m, err := rc.MappingJSON(); err == nil {
		mapping = m
	}
	return routes, mapping
}

// AcquireInput is an acquire request as a client sends it.
type AcquireInput struct {
	Channel        string         // "": store.DefaultChannel
	Weight         *int64         // nil: 1
	TTL            *time.Duration // nil: the semaphore's leaseTimeout
	Wait           *time.Duration // nil: 0
	IdempotencyKey string
}

// ValidateAcquire checks an acquire request without the store and fills the
// defaults that need no store: the returned params have TTL 0 when in.TTL is
// nil (Acquire then uses the semaphore's leaseTimeout).
func ValidateAcquire(tenant, name string, in AcquireInput) (store.AcquireParams, error) {
	p := store.AcquireParams{Tenant: tenant, Semaphore: name, Channel: store.DefaultChannel, Weight: 1}
	if err := checkName("semaphore", name); err != nil {
		return p, err
	}
	var err error
	if p.Channel, err = channelOrDefault(in.Channel); err != nil {
		return p, err
	}
	if in.Weight != nil {
		if w := *in.Weight; w < 1 || w > MaxMaxValue {
			return p, invalid(CodeInvalidRequest, "weight", "weight must be between 1 and %d, got %d", MaxMaxValue, w)
		}
		p.Weight = *in.Weight
	}
	if in.TTL != nil {
		if err := checkTTL(*in.TTL); err != nil {
			return p, err
		}
		p.TTL = *in.TTL
	}
	if in.Wait != nil {
		if w := *in.Wait; w < 0 || w > MaxWait {
			return p, invalid(CodeInvalidRequest, "wait", "wait must be between 0s and %s, got %s", MaxWait, w)
		}
		p.Wait = *in.Wait
	}
	if err := checkIdempotencyKey(in.IdempotencyKey); err != nil {
		return p, err
	}
	p.IdempotencyKey = in.IdempotencyKey
	return p, nil
}

// channelOrDefault checks a request's channel; "" is store.DefaultChannel.
func channelOrDefault(ch string) (string, error) {
	if ch == "" {
		return store.DefaultChannel, nil
	}
	if err := checkChannel(ch); err != nil {
		return "", err
	}
	return ch, nil
}

func checkChannel(ch string) error {
	if !ValidName(ch) {
		return invalid(CodeInvalidRequest, "channel", "channel %q does not match %s", truncate(ch, 140), NamePattern)
	}
	return nil
}

func checkIdempotencyKey(k string) error {
	if n := len(k); n > MaxIdempotencyKeyBytes {
		return invalid(CodeInvalidRequest, "idempotencyKey", "idempotencyKey must be at most %d bytes, got %d", MaxIdempotencyKeyBytes, n)
	}
	return nil
}

func checkTTL(d time.Duration) error {
	if d < MinTTL || d > MaxTTL {
		return invalid(CodeInvalidRequest, "ttl", "ttl must be between %s and %s, got %s", MinTTL, MaxTTL, d)
	}
	return nil
}

func checkListLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return DefaultListLimit, nil
	case limit < 1 || limit > MaxListLimit:
		return 0, invalid(CodeInvalidRequest, "limit", "limit must be between 1 and %d, got %d", MaxListLimit, limit)
	}
	return limit, nil
}

func checkKeyName(name string) error {
	n := utf8.RuneCountInString(name)
	if n < 1 || n > MaxKeyNameRunes || !utf8.ValidString(name) {
		return invalid(CodeInvalidRequest, "name", "name must be 1 to %d characters", MaxKeyNameRunes)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return invalid(CodeInvalidRequest, "name", "name must contain printable characters only")
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
