package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// The raw limit: the Redis store's own acquire and release functions (its
// function library, redisstore.LibraryCode, loaded by FUNCTION LOAD),
// called by FCALL from Go with the KEYS and ARGV the store passes
// (store/redis/keys.go, lease.go). What the store does around the call
// (sweep-index ZADD when a due time moves, job events, lease JSON decoding)
// is left out; "store direct" adds it back. The library is the one compiled
// into this benchmark (the working tree's store package, also with -rev).

// semKeys are the KEYS of the per-semaphore functions, as the store builds
// them.
func semKeys(prefix, tenant, name string) []string {
	return redisstore.SemaphoreKeys(prefix, tenant, name)
}

// rawSem calls the batch function (acquires and releases) directly.
type rawSem struct {
	c          *redis.Client
	fn         string // the batch function
	keys       []string
	name       string
	nodePrefix string
	node       string
}

const rawPrefix = "rawbench"

func newRawSem(ctx context.Context, c *redis.Client, name string, maxValue int64) (*rawSem, error) {
	if err := c.FunctionLoadReplace(ctx, redisstore.LibraryCode()).Err(); err != nil {
		return nil, err
	}
	// The semaphore's config is created through the store itself.
	st, err := redisstore.New(c, redisstore.Options{Prefix: rawPrefix})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if _, _, err := st.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "bench", Name: name,
		Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: maxValue, LeaseTimeout: time.Minute}}); err != nil {
		return nil, err
	}
	return &rawSem{c: c, fn: redisstore.FunctionName("batch"), keys: semKeys(rawPrefix, "bench", name), name: name,
		nodePrefix: rawPrefix + ":node:", node: "rawbenchnode"}, nil
}

func (r *rawSem) args(extra ...any) []any {
	var b [8]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	idSuffix := "." + base64.RawURLEncoding.EncodeToString([]byte(r.name))
	return append([]any{r.nodePrefix, hex.EncodeToString(b[:]), idSuffix, r.node}, extra...)
}

// acquireOp is one acquire of batch.lua: id, channel, weight, ttl ms,
// idempotency key, wait ms, node, slack ms, session ("" none).
func (r *rawSem) acquireOp(id string) []any {
	return []any{"a", id, "default", 1, 60000, "", 0, r.node, 2000, ""}
}

// call sends ops (batch.lua operations) in one FCALL and checks that each
// got status want.
func (r *rawSem) call(ctx context.Context, p redis.Cmdable, ops [][]any) *redis.Cmd {
	var args []any
	for _, op := range ops {
		args = append(args, op...)
	}
	return p.FCall(ctx, r.fn, r.keys, r.args(args...)...)
}

func checkOps(cmd *redis.Cmd, n int, want string) error {
	res, err := cmd.Slice()
	if err != nil {
		return err
	}
	if len(res) < 2 {
		return fmt.Errorf("short reply")
	}
	out, _ := res[1].([]any)
	if len(out) != n {
		return fmt.Errorf("%d results, want %d", len(out), n)
	}
	for _, o := range out {
		r, _ := o.([]any)
		if len(r) == 0 {
			return fmt.Errorf("bad result %v", o)
		}
		if s, _ := r[0].(string); s != want {
			return fmt.Errorf("status %q, want %q", s, want)
		}
	}
	return nil
}

// pair is one acquire + release, one FCALL each (what the store sends for
// a lone caller: a batch of one).
func (r *rawSem) pair(ctx context.Context) error {
	id := store.NewLeaseID(r.name)
	if err := checkOps(r.call(ctx, r.c, [][]any{r.acquireOp(id)}), 1, "ok"); err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	if err := checkOps(r.call(ctx, r.c, [][]any{{"r", id}}), 1, "ok"); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// batched sends n acquires in one FCALL, then their releases in another: 2
// round trips and 2 function calls per n pairs (what the store sends when
// n callers of one semaphore arrive together).
func (r *rawSem) batched(ctx context.Context, n int) error {
	acq, rel := make([][]any, n), make([][]any, n)
	for i := range n {
		id := store.NewLeaseID(r.name)
		acq[i], rel[i] = r.acquireOp(id), []any{"r", id}
	}
	if err := checkOps(r.call(ctx, r.c, acq), n, "ok"); err != nil {
		return fmt.Errorf("acquire batch: %w", err)
	}
	if err := checkOps(r.call(ctx, r.c, rel), n, "ok"); err != nil {
		return fmt.Errorf("release batch: %w", err)
	}
	return nil
}

// pipelined sends n single-acquire FCALLs in one pipeline, then their
// releases in another: 2 round trips but 2n function calls per n pairs.
func (r *rawSem) pipelined(ctx context.Context, n int) error {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = store.NewLeaseID(r.name)
	}
	for _, step := range []struct {
		name string
		op   func(id string) []any
	}{{"acquire", r.acquireOp}, {"release", func(id string) []any { return []any{"r", id} }}} {
		p := r.c.Pipeline()
		cmds := make([]*redis.Cmd, n)
		for i, id := range ids {
			cmds[i] = r.call(ctx, p, [][]any{step.op(id)})
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("%s pipeline: %w", step.name, err)
		}
		for _, c := range cmds {
			if err := checkOps(c, 1, "ok"); err != nil {
				return fmt.Errorf("%s: %w", step.name, err)
			}
		}
	}
	return nil
}

// storeDirect is the Redis store's Go API (what semaphored runs per HTTP
// call), without HTTP.
type storeDirect struct {
	st   *redisstore.Store
	name string
}

func newStoreDirect(ctx context.Context, c *redis.Client, name string, maxValue int64) (*storeDirect, error) {
	st, err := redisstore.New(c, redisstore.Options{Prefix: "directbench"})
	if err != nil {
		return nil, err
	}
	if _, _, err := st.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "bench", Name: name,
		Config: store.SemaphoreConfig{MaxValueScope: store.ScopeTotal, MaxValue: maxValue, LeaseTimeout: time.Minute}}); err != nil {
		_ = st.Close()
		return nil, err
	}
	return &storeDirect{st: st, name: name}, nil
}

func (s *storeDirect) pair(ctx context.Context) error {
	l, err := s.st.Acquire(ctx, store.AcquireParams{Tenant: "bench", Semaphore: s.name, TTL: time.Minute})
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	if _, err := s.st.Release(ctx, store.ReleaseParams{Tenant: "bench", LeaseID: l.ID}); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}
