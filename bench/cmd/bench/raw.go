package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// The raw limit: the Redis store's own acquire.lua and release.lua, built
// exactly as store/redis/scripts.go builds them (lib.lua prepended, with
// the "\n-- <name>\n" separator), called by EVALSHA from Go with the KEYS
// and ARGV the store passes (store/redis/keys.go, lease.go). What the store
// does around the script (sweep-index ZADD when a due time moves, job
// events, lease JSON decoding) is left out; "store direct" adds it back.

// semKeySuffixes mirrors store/redis/keys.go (the order lib.lua expects).
var semKeySuffixes = []string{
	":sem", ":holders", ":leases", ":used", ":fence", ":waiters", ":cq",
	":wdata", ":wdeadline", ":wcount", ":granted", ":idem",
	":jobs", ":jq", ":jch", ":jcnt", ":jfin", ":jidem",
}

func semKeys(prefix, tenant, name string) []string {
	base := prefix + ":{" + tenant + "/" + name + "}"
	out := make([]string, len(semKeySuffixes))
	for i, s := range semKeySuffixes {
		out[i] = base + s
	}
	return out
}

// loadSemScript reads repo/store/redis/lua/<name> with lib.lua prepended.
func loadSemScript(repo, name string) (*redis.Script, error) {
	dir := filepath.Join(repo, "store", "redis", "lua")
	lib, err := os.ReadFile(filepath.Join(dir, "lib.lua"))
	if err != nil {
		return nil, err
	}
	body, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	return redis.NewScript(string(lib) + "\n-- " + name + "\n" + string(body)), nil
}

// rawSem runs acquire.lua / release.lua directly.
type rawSem struct {
	c                *redis.Client
	acquire, release *redis.Script
	keys             []string
	name             string
	nodePrefix       string
	node             string
}

const rawPrefix = "rawbench"

func newRawSem(ctx context.Context, repo string, c *redis.Client, name string, maxValue int64) (*rawSem, error) {
	acq, err := loadSemScript(repo, "acquire.lua")
	if err != nil {
		return nil, err
	}
	rel, err := loadSemScript(repo, "release.lua")
	if err != nil {
		return nil, err
	}
	for _, sc := range []*redis.Script{acq, rel} {
		if err := sc.Load(ctx, c).Err(); err != nil {
			return nil, err
		}
	}
	// The semaphore's config is created through the store itself.
	st, err := redisstore.New(c, redisstore.Options{Prefix: rawPrefix})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if _, _, err := st.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: "bench", Name: name,
		Config: store.SemaphoreConfig{MaxValue: maxValue, LeaseTimeout: time.Minute}}); err != nil {
		return nil, err
	}
	return &rawSem{c: c, acquire: acq, release: rel, keys: semKeys(rawPrefix, "bench", name), name: name,
		nodePrefix: rawPrefix + ":node:", node: "rawbenchnode"}, nil
}

func (r *rawSem) args(extra ...any) []any {
	var b [8]byte
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	idSuffix := "." + base64.RawURLEncoding.EncodeToString([]byte(r.name))
	return append([]any{r.nodePrefix, hex.EncodeToString(b[:]), idSuffix}, extra...)
}

func (r *rawSem) acquireArgs(id string) []any {
	// id, channel, weight, ttl ms, idempotency key, wait ms, node, slack ms
	return r.args(id, "default", 1, 60000, "", 0, r.node, 2000)
}

func checkStatus(res []any, err error, want string) error {
	if err != nil {
		return err
	}
	if len(res) == 0 {
		return fmt.Errorf("empty reply")
	}
	if s, _ := res[0].(string); s != want {
		return fmt.Errorf("script status %q, want %q", s, want)
	}
	return nil
}

// pair is one acquire + release, one EVALSHA each.
func (r *rawSem) pair(ctx context.Context) error {
	id := store.NewLeaseID(r.name)
	res, err := r.c.EvalSha(ctx, r.acquire.Hash(), r.keys, r.acquireArgs(id)...).Slice()
	if err := checkStatus(res, err, "ok"); err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	res, err = r.c.EvalSha(ctx, r.release.Hash(), r.keys, r.args(id)...).Slice()
	if err := checkStatus(res, err, "ok"); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// pipelined sends batch acquires in one pipeline, then their releases in
// another: 2 round trips per batch pairs.
func (r *rawSem) pipelined(ctx context.Context, batch int) error {
	ids := make([]string, batch)
	p := r.c.Pipeline()
	cmds := make([]*redis.Cmd, batch)
	for i := range ids {
		ids[i] = store.NewLeaseID(r.name)
		cmds[i] = p.EvalSha(ctx, r.acquire.Hash(), r.keys, r.acquireArgs(ids[i])...)
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("acquire pipeline: %w", err)
	}
	for _, c := range cmds {
		res, err := c.Slice()
		if err := checkStatus(res, err, "ok"); err != nil {
			return fmt.Errorf("acquire: %w", err)
		}
	}
	p = r.c.Pipeline()
	for i := range ids {
		cmds[i] = p.EvalSha(ctx, r.release.Hash(), r.keys, r.args(ids[i])...)
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("release pipeline: %w", err)
	}
	for _, c := range cmds {
		res, err := c.Slice()
		if err := checkStatus(res, err, "ok"); err != nil {
			return fmt.Errorf("release: %w", err)
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
		Config: store.SemaphoreConfig{MaxValue: maxValue, LeaseTimeout: time.Minute}}); err != nil {
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
