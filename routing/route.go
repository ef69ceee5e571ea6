// Package routing parses, validates and evaluates the routing part of a
// semaphore config (SPEC §5): the chain of routes a job is offered to, in the
// fixed order of their stability, and the optional CEL mapping that may
// rewrite the payload and override part of the chain.
//
// A Config is immutable after Parse or DecodeExtra and safe for concurrent
// use; its compiled mapping program is shared by all callers.
package routing

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"code.dny.dev/ssrf"
)

// Route types of SPEC §5, from least to most stable.
const (
	TypeWebsocket = "websocket"
	TypeHTTPS     = "https"
	TypeSemaphore = "semaphore"
)

// Limits and defaults of routes.
const (
	DefaultTimeout  = 10 * time.Second
	MinTimeout      = time.Second
	MaxTimeout      = 60 * time.Second
	DefaultAttempts = 3
	MinAttempts     = 1
	MaxAttempts     = 10

	MaxRoutes   = 16   // routes per semaphore
	MaxURLBytes = 2048 // length of an https route's url

	// SecretPrefix starts every webhook secret (Standard Webhooks format).
	SecretPrefix = "whsec_"
	// SecretBytes is the number of random bytes of a generated secret.
	SecretBytes = 32
	// minSecretBytes and maxSecretBytes bound a secret given by an admin.
	minSecretBytes = 24
	maxSecretBytes = 64
)

// NamePattern is the pattern of semaphore and channel names (SPEC §1).
const NamePattern = `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`

var nameRE = regexp.MustCompile(NamePattern)

// Route is one link of a chain. Only the fields of its Type are set.
type Route struct {
	Type string // TypeWebsocket, TypeHTTPS or TypeSemaphore

	// websocket
	Channel string // subscription channel; "" = any subscriber of the semaphore

	// https
	URL              string
	Timeout          time.Duration // per attempt; DefaultTimeout when not given
	Attempts         int           // DefaultAttempts when not given
	ReleaseOnSuccess bool          // a 2xx ends the job as done at once
	Secret           string        // "whsec_…", signs every delivery (see AssignSecrets)

	// semaphore
	Target  string // semaphore of the same tenant the child job goes to
	Release bool   // free this semaphore's permit at hand-off (failover)
}

// Stability ranks route types: a higher rank is more stable. Unknown types
// rank 0.
func Stability(typ string) int {
	switch typ {
	case TypeWebsocket:
		return 1
	case TypeHTTPS:
		return 2
	case TypeSemaphore:
		return 3
	}
	return 0
}

// routeJSON is the wire form of a route (SPEC §4).
type routeJSON struct {
	Type             string `json:"type"`
	Channel          string `json:"channel,omitempty"`
	URL              string `json:"url,omitempty"`
	Timeout          string `json:"timeout,omitempty"`
	Attempts         int    `json:"attempts,omitempty"`
	ReleaseOnSuccess *bool  `json:"releaseOnSuccess,omitempty"`
	Secret           string `json:"secret,omitempty"`
	Target           string `json:"target,omitempty"`
	Release          *bool  `json:"release,omitempty"`
}

// MarshalJSON encodes the route as in SPEC §4 with its defaults filled in:
// only the fields of its type, the secret included (admins see it).
func (r Route) MarshalJSON() ([]byte, error) {
	out := routeJSON{Type: r.Type}
	switch r.Type {
	case TypeWebsocket:
		out.Channel = r.Channel
	case TypeHTTPS:
		out.URL, out.Secret = r.URL, r.Secret
		out.Timeout = r.Timeout.String()
		out.Attempts = r.Attempts
		out.ReleaseOnSuccess = &r.ReleaseOnSuccess
	case TypeSemaphore:
		out.Target = r.Target
		out.Release = &r.Release
	}
	return json.Marshal(out)
}

// FieldError reports an invalid field of a routing config. Field is its
// JSON path ("routes[1].url", "mapping.expr"); Message is human text that
// starts with the field. The API answers it with 400 invalid_config.
type FieldError struct {
	Field   string
	Message string
	err     error // ErrCycle, or nil
}

func (e *FieldError) Error() string { return e.Message }

// Unwrap returns ErrCycle for a cycle reported by CheckCycles, else nil.
func (e *FieldError) Unwrap() error { return e.err }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}

// Options are server-wide knobs of Parse and DecodeExtraOptions. The zero
// value is the safe default.
type Options struct {
	// AllowPrivate admits http:// URLs and literal private addresses
	// (--webhook-allow-private).
	AllowPrivate bool
	// CostLimit bounds the CEL cost of one mapping evaluation
	// (0: DefaultCostLimit).
	CostLimit uint64
	// MapTimeout bounds the wall time of one mapping evaluation
	// (0: DefaultMapTimeout).
	MapTimeout time.Duration
	// MaxPayloadBytes bounds the JSON size of a payload a mapping returns
	// (0: DefaultMaxPayloadBytes).
	MaxPayloadBytes int
}

func (o Options) withDefaults() Options {
	if o.CostLimit == 0 {
		o.CostLimit = DefaultCostLimit
	}
	if o.MapTimeout <= 0 {
		o.MapTimeout = DefaultMapTimeout
	}
	if o.MaxPayloadBytes <= 0 {
		o.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	return o
}

// allowedFields are the JSON fields of each route type, "type" included.
var allowedFields = map[string]map[string]bool{
	TypeWebsocket: {"type": true, "channel": true},
	TypeHTTPS:     {"type": true, "url": true, "timeout": true, "attempts": true, "releaseOnSuccess": true, "secret": true},
	TypeSemaphore: {"type": true, "target": true, "release": true},
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// JSONKind names the JSON type of raw for error messages ("an object", "a
// number", ...); the service layer uses it for its own config fields too.
func JSONKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// decodeObject decodes raw as a JSON object with unique keys, null values
// dropped (a null field counts as absent).
func decodeObject(field string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	if !json.Valid(raw) {
		return nil, fieldErr(field, "is not valid JSON")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fieldErr(field, "must be an object, got %s", JSONKind(raw))
	}
	for k, v := range m {
		if isNull(v) {
			delete(m, k)
		}
	}
	return m, nil
}

func decodeString(field string, raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(field, "must be a string, got %s", JSONKind(raw))
	}
	return s, nil
}

func decodeBool(field string, raw json.RawMessage) (bool, error) {
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return false, fieldErr(field, "must be a boolean, got %s", JSONKind(raw))
	}
	return b, nil
}

// routeCtx tells parseRoute where the route comes from.
type routeCtx struct {
	self         string // the semaphore the route belongs to ("" = unknown)
	allowPrivate bool
	fromMapping  bool // returned by a mapping: no secret allowed
	trusted      bool // decoded from the store: URL scheme not re-checked
}

// parseRoute parses and validates one route object; field is its JSON path.
func parseRoute(field string, raw json.RawMessage, rc routeCtx) (Route, error) {
	m, err := decodeObject(field, raw)
	if err != nil {
		return Route{}, err
	}
	typRaw, ok := m["type"]
	if !ok {
		return Route{}, fieldErr(field+".type", `is required ("websocket", "https" or "semaphore")`)
	}
	typ, err := decodeString(field+".type", typRaw)
	if err != nil {
		return Route{}, err
	}
	allowed, ok := allowedFields[typ]
	if !ok {
		return Route{}, fieldErr(field+".type", `must be "websocket", "https" or "semaphore", got %q`, truncate(typ, 64))
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !allowed[k] {
			return Route{}, fieldErr(field+"."+truncate(k, 64), "unknown field for a %s route", typ)
		}
		if k == "secret" && rc.fromMapping {
			return Route{}, fieldErr(field+".secret", "a mapping cannot set a secret (the mapping's secret signs its routes)")
		}
	}

	r := Route{Type: typ}
	switch typ {
	case TypeWebsocket:
		if v, ok := m["channel"]; ok {
			if r.Channel, err = decodeString(field+".channel", v); err != nil {
				return Route{}, err
			}
			if !nameRE.MatchString(r.Channel) {
				return Route{}, fieldErr(field+".channel", "%q does not match %s", truncate(r.Channel, 140), NamePattern)
			}
		}

	case TypeHTTPS:
		v, ok := m["url"]
		if !ok {
			return Route{}, fieldErr(field+".url", "is required for an https route")
		}
		if r.URL, err = decodeString(field+".url", v); err != nil {
			return Route{}, err
		}
		if err := checkURL(field+".url", r.URL, rc); err != nil {
			return Route{}, err
		}
		r.Timeout = DefaultTimeout
		if v, ok := m["timeout"]; ok {
			s, err := decodeString(field+".timeout", v)
			if err != nil {
				return Route{}, fieldErr(field+".timeout", `must be a duration string such as "10s", got %s`, JSONKind(v))
			}
			d, perr := time.ParseDuration(s)
			if perr != nil {
				return Route{}, fieldErr(field+".timeout", `must be a duration such as "10s", got %q`, truncate(s, 64))
			}
			if d < MinTimeout || d > MaxTimeout {
				return Route{}, fieldErr(field+".timeout", "must be between %s and %s, got %s", MinTimeout, MaxTimeout, d)
			}
			r.Timeout = d
		}
		r.Attempts = DefaultAttempts
		if v, ok := m["attempts"]; ok {
			var n int
			if err := json.Unmarshal(v, &n); err != nil {
				return Route{}, fieldErr(field+".attempts", "must be an integer between %d and %d", MinAttempts, MaxAttempts)
			}
			if n < MinAttempts || n > MaxAttempts {
				return Route{}, fieldErr(field+".attempts", "must be between %d and %d, got %d", MinAttempts, MaxAttempts, n)
			}
			r.Attempts = n
		}
		if v, ok := m["releaseOnSuccess"]; ok {
			if r.ReleaseOnSuccess, err = decodeBool(field+".releaseOnSuccess", v); err != nil {
				return Route{}, err
			}
		}
		if v, ok := m["secret"]; ok {
			if r.Secret, err = decodeString(field+".secret", v); err != nil {
				return Route{}, err
			}
			if err := checkSecret(field+".secret", r.Secret); err != nil {
				return Route{}, err
			}
		}

	case TypeSemaphore:
		v, ok := m["target"]
		if !ok {
			return Route{}, fieldErr(field+".target", "is required for a semaphore route")
		}
		if r.Target, err = decodeString(field+".target", v); err != nil {
			return Route{}, err
		}
		if !nameRE.MatchString(r.Target) {
			return Route{}, fieldErr(field+".target", "%q does not match %s", truncate(r.Target, 140), NamePattern)
		}
		if rc.self != "" && r.Target == rc.self {
			return Route{}, fieldErr(field+".target", "a semaphore cannot route to itself (%q)", r.Target)
		}
		if v, ok := m["release"]; ok {
			if r.Release, err = decodeBool(field+".release", v); err != nil {
				return Route{}, err
			}
		}
	}
	return r, nil
}

// privateGuard judges literal IP hosts at parse time with the same rules the
// webhook sender applies at connect time.
var privateGuard = ssrf.New(ssrf.WithAnyPort())

func checkURL(field, s string, rc routeCtx) error {
	if len(s) > MaxURLBytes {
		return fieldErr(field, "must be at most %d bytes, got %d", MaxURLBytes, len(s))
	}
	u, err := url.Parse(s)
	if err != nil {
		return fieldErr(field, "is not a valid URL: %s", trimURLErr(err))
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && (rc.allowPrivate || rc.trusted):
	case u.Scheme == "http":
		return fieldErr(field, "must be an https:// URL (http:// needs --webhook-allow-private)")
	default:
		return fieldErr(field, "must be an https:// URL, got %q", truncate(s, 140))
	}
	if u.Opaque != "" || u.Host == "" {
		return fieldErr(field, "must be an absolute URL with a host, got %q", truncate(s, 140))
	}
	if u.User != nil {
		return fieldErr(field, "must not contain credentials (deliveries are signed with the route's secret)")
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return fieldErr(field, "must not contain a fragment")
	}
	host := u.Hostname()
	if host == "" {
		return fieldErr(field, "must have a host, got %q", truncate(s, 140))
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fieldErr(field, "has an invalid port %q", p)
		}
	}
	if rc.allowPrivate || rc.trusted {
		return nil
	}
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") || strings.HasSuffix(strings.ToLower(strings.TrimSuffix(host, ".")), ".localhost") {
		return fieldErr(field, "must not point to localhost (needs --webhook-allow-private)")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if err := privateGuard.SafeAddr(ip.Unmap()); err != nil {
			return fieldErr(field, "%s is a loopback, private or special address (needs --webhook-allow-private)", ip)
		}
	}
	return nil
}

func trimURLErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

func checkSecret(field, s string) error {
	if !strings.HasPrefix(s, SecretPrefix) {
		return fieldErr(field, "must start with %q", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, SecretPrefix))
	if err != nil {
		return fieldErr(field, "must be %q followed by standard base64", SecretPrefix)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return fieldErr(field, "must encode %d to %d bytes, got %d", minSecretBytes, maxSecretBytes, len(key))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
