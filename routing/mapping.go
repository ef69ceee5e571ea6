package routing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"
)

// Limits of a mapping evaluation (each overridable in Options).
const (
	// DefaultCostLimit is about 7,000 iterations of a simple comprehension
	// (payload.map(x, x * 2) costs 14 per element). cel-go's cost tracker
	// slows down as an evaluation grows, so the limit is kept where it
	// stops an expensive expression within milliseconds, before the timeout.
	DefaultCostLimit       = 100_000
	DefaultMapTimeout      = 100 * time.Millisecond
	DefaultMaxPayloadBytes = 256 << 10

	// interruptCheckFrequency is how many comprehension iterations run
	// between two checks of the evaluation's context.
	interruptCheckFrequency = 100
)

// program is a compiled mapping.
type program struct {
	prg cel.Program
}

// mappingEnv is the CEL environment of every mapping: variables payload
// (dyn: the JSON payload), job {id, channel, attempt} and semaphore
// {name, maxValue}, the standard library, optional types and the strings,
// math and encoders extensions.
var mappingEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("payload", cel.DynType),
		cel.Variable("job", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("semaphore", cel.MapType(cel.StringType, cel.DynType)),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Math(),
		ext.Encoders(),
	)
})

// compile compiles a mapping expression. Its error message is the CEL
// compiler's.
func compile(expr string, opts Options) (*program, error) {
	env, err := mappingEnv()
	if err != nil {
		return nil, fmt.Errorf("routing: CEL environment: %w", err)
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, errors.New(iss.Err().Error())
	}
	if t := ast.OutputType(); !isMapOrDyn(t) {
		return nil, fmt.Errorf(`must return a map such as {"payload": ..., "route": {...}}, not %s`, t)
	}
	prg, err := env.Program(ast,
		cel.CostLimit(opts.CostLimit),
		cel.InterruptCheckFrequency(interruptCheckFrequency),
	)
	if err != nil {
		return nil, err
	}
	return &program{prg: prg}, nil
}

func isMapOrDyn(t *cel.Type) bool {
	switch t.Kind() {
	case types.DynKind, types.AnyKind:
		return true
	case types.MapKind:
		k := t.Parameters()[0].Kind()
		return k == types.StringKind || k == types.DynKind || k == types.AnyKind
	}
	return false
}

// MapInput are the inputs of a mapping evaluation.
type MapInput struct {
	Payload   json.RawMessage // the job's payload; empty = null
	JobID     string          // job.id
	Channel   string          // job.channel
	Attempt   int             // job.attempt
	Semaphore string          // semaphore.name
	MaxValue  int64           // semaphore.maxValue
}

// Result is what a mapping returned.
type Result struct {
	// Payload replaces the job's payload when the mapping returned a
	// "payload" key (JSON "null" when it returned null); nil when it did not.
	Payload json.RawMessage
	// Route is the route the mapping returned, validated like a configured
	// route and with its secret filled (https: the configured https route's
	// secret for the same URL, else the mapping's secret). It is nil when the
	// mapping returned no "route" key, or when the mapping's
	// CanOverrideRouting is false (the returned route is then ignored, not
	// validated). Apply it with Override(cfg.Chain(), *Route).
	Route *Route
}

// MapError is a mapping that failed at run time: a CEL runtime error (its
// message is CEL's), the cost limit or timeout exceeded, or a result that is
// not a valid map. The job ends in error with Error().
type MapError struct {
	Message string
}

func (e *MapError) Error() string { return "mapping: " + e.Message }

func mapErr(format string, args ...any) *MapError {
	return &MapError{Message: fmt.Sprintf(format, args...)}
}

// Map evaluates the config's mapping for one delivery, under the cost limit
// and the timeout of the config's Options. Without a mapping it returns the
// zero Result. A failed mapping is a *MapError; when ctx itself ends first
// Map returns ctx's error instead (the job is not to blame).
func (c Config) Map(ctx context.Context, in MapInput) (Result, error) {
	if c.Mapping == nil || c.program == nil {
		return Result{}, nil
	}
	opts := c.opts.withDefaults()
	payload, err := decodeJSONValue(in.Payload)
	if err != nil {
		return Result{}, mapErr("the job's payload is not valid JSON: %v", err)
	}
	vars := map[string]any{
		"payload": payload,
		"job": types.NewRefValMap(types.DefaultTypeAdapter, map[ref.Val]ref.Val{
			types.String("id"): types.String(in.JobID), types.String("channel"): types.String(in.Channel),
			types.String("attempt"): types.Int(in.Attempt),
		}),
		"semaphore": types.NewRefValMap(types.DefaultTypeAdapter, map[ref.Val]ref.Val{
			types.String("name"): types.String(in.Semaphore), types.String("maxValue"): types.Int(in.MaxValue),
		}),
	}
	evalCtx, cancel := context.WithTimeout(ctx, opts.MapTimeout)
	defer cancel()
	val, _, err := c.program.prg.ContextEval(evalCtx, vars)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Result{}, ctxErr
		}
		if errors.Is(err, context.DeadlineExceeded) || evalCtx.Err() != nil {
			return Result{}, mapErr("evaluation exceeded %s", opts.MapTimeout)
		}
		return Result{}, mapErr("%s", err.Error())
	}
	m, ok := val.(traits.Mapper)
	if !ok {
		return Result{}, mapErr(`must return a map such as {"payload": ..., "route": {...}}, returned %s`, val.Type().TypeName())
	}
	var res Result
	it := m.Iterator()
	for it.HasNext() == types.True {
		k := it.Next()
		key, ok := k.(types.String)
		if !ok {
			return Result{}, mapErr("returned a map with a non-string key %v", k)
		}
		switch key {
		case "payload":
			v, err := toNative(m.Get(k))
			if err != nil {
				return Result{}, mapErr("returned payload: %v", err)
			}
			b, err := json.Marshal(v)
			if err != nil {
				return Result{}, mapErr("returned payload: %v", err)
			}
			if len(b) > opts.MaxPayloadBytes {
				return Result{}, mapErr("returned a payload of %d bytes, over the limit of %d", len(b), opts.MaxPayloadBytes)
			}
			res.Payload = b
		case "route":
			if !c.Mapping.CanOverrideRouting {
				continue
			}
			v, err := toNative(m.Get(k))
			if err != nil {
				return Result{}, mapErr("returned route: %v", err)
			}
			b, err := json.Marshal(v)
			if err != nil {
				return Result{}, mapErr("returned route: %v", err)
			}
			r, err := parseRoute("route", b, routeCtx{self: in.Semaphore, allowPrivate: opts.AllowPrivate, fromMapping: true})
			if err != nil {
				return Result{}, mapErr("returned an invalid %s", err.Error())
			}
			if r.Type == TypeHTTPS {
				r.Secret = c.Mapping.Secret
				for _, cr := range c.Routes {
					if cr.Type == TypeHTTPS && cr.URL == r.URL && cr.Secret != "" {
						r.Secret = cr.Secret
						break
					}
				}
			}
			res.Route = &r
		default:
			return Result{}, mapErr(`returned an unknown key %q (only "payload" and "route")`, truncate(string(key), 64))
		}
	}
	return res, nil
}

// decodeJSONValue decodes JSON into Go values CEL adapts: objects as
// map[string]any, arrays as []any, integers that fit as int64 (so that
// payload.n + 1 works), other numbers as float64.
func decodeJSONValue(raw json.RawMessage) (ref.Val, error) {
	if isNull(raw) {
		return types.NullValue, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON value")
	}
	return toCEL(v), nil
}

// toCEL converts a decoded JSON value to CEL values at once, so the
// evaluation does not adapt Go values by reflection on every access.
func toCEL(v any) ref.Val {
	switch v := v.(type) {
	case nil:
		return types.NullValue
	case bool:
		return types.Bool(v)
	case string:
		return types.String(v)
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return types.Int(i)
		}
		f, _ := v.Float64() // a valid JSON number: at worst ±Inf, refused on output
		return types.Double(f)
	case map[string]any:
		m := make(map[ref.Val]ref.Val, len(v))
		for k, e := range v {
			m[types.String(k)] = toCEL(e)
		}
		return types.NewRefValMap(types.DefaultTypeAdapter, m)
	case []any:
		l := make([]ref.Val, len(v))
		for i, e := range v {
			l[i] = toCEL(e)
		}
		return types.NewRefValList(types.DefaultTypeAdapter, l)
	}
	return types.NewErr("unexpected JSON value %T", v)
}

// toNative converts a CEL value to a Go value json.Marshal encodes: null,
// bool, int, uint, double (finite), string, bytes (base64), timestamp
// (RFC 3339), duration (Go syntax), list and map with string keys.
func toNative(v ref.Val) (any, error) {
	switch v := v.(type) {
	case types.Null:
		return nil, nil
	case types.Bool:
		return bool(v), nil
	case types.Int:
		return int64(v), nil
	case types.Uint:
		return uint64(v), nil
	case types.Double:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%v is not a JSON number", f)
		}
		return f, nil
	case types.String:
		return string(v), nil
	case types.Bytes:
		return []byte(v), nil
	case types.Timestamp:
		return v.Time, nil
	case types.Duration:
		return v.Duration.String(), nil
	case *types.Err:
		return nil, v
	case traits.Mapper:
		out := map[string]any{}
		it := v.Iterator()
		for it.HasNext() == types.True {
			k := it.Next()
			ks, ok := k.(types.String)
			if !ok {
				return nil, fmt.Errorf("map key %v is not a string", k)
			}
			e, err := toNative(v.Get(k))
			if err != nil {
				return nil, err
			}
			out[string(ks)] = e
		}
		return out, nil
	case traits.Lister:
		out := []any{}
		it := v.Iterator()
		for it.HasNext() == types.True {
			e, err := toNative(it.Next())
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, nil
	}
	return nil, fmt.Errorf("a value of type %s has no JSON form", v.Type().TypeName())
}
