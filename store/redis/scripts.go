package redisstore

import (
	"context"
	"crypto/sha1"
	"embed"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

//go:embed lua/*.lua
var luaFS embed.FS

// The per-semaphore operations are the functions of one Redis function
// library (FUNCTION LOAD, FCALL), built from lib_*.lua and one file per
// operation (see lib_state.lua's header); the global scripts stand alone (EVALSHA
// with an EVAL fallback).
var (
	fnBatch           = semFunc("batch.lua")
	fnExtend          = semFunc("extend.lua")
	fnCancelWait      = semFunc("cancel_wait.lua")
	fnSweep           = semFunc("sweep.lua")
	fnState           = semFunc("state.lua")
	fnPutSemaphore    = semFunc("put_semaphore.lua")
	fnDeleteSemaphore = semFunc("delete_semaphore.lua")
	fnSetSuspended    = semFunc("set_suspended.lua")
	fnSetSub          = semFunc("set_sub.lua")
	fnDispatch        = semFunc("dispatch.lua")
	fnGetJob          = semFunc("get_job.lua")
	fnListJobs        = semFunc("list_jobs.lua")
	fnPurgeJobs       = semFunc("purge_jobs.lua")
	fnListLeases      = semFunc("list_leases.lua")

	scriptSweepClaim = plainScript("sweep_claim.lua")
	scriptCreateKey  = plainScript("create_key.lua")
	scriptDeleteKey  = plainScript("delete_key.lua")
	scriptListKeys   = plainScript("list_keys.lua")
)

func readLua(name string) string {
	b, err := luaFS.ReadFile("lua/" + name)
	if err != nil {
		panic("redisstore: missing embedded script " + name) // a build defect, not user input
	}
	return string(b)
}

// plainScript is a script outside the function library, with the
// generated constants in front.
func plainScript(name string) *redis.Script {
	return redis.NewScript(readLua("consts.lua") + "\n-- " + name + "\n" + readLua(name))
}

// semFunc is the FCALL name of the library function built from the
// per-semaphore script file: "<library>_<file name without .lua>".
func semFunc(file string) string {
	return library.name + "_" + strings.TrimSuffix(file, ".lua")
}

// libParts are the helpers of the library, split by concern, in the one
// order they are concatenated in: a part uses only what the parts before it
// define (Lua locals are lexically scoped).
var libParts = []string{
	"lib_cache.lua",     // the per-call write-back cache of the hashes
	"lib_state.lua",     // keys, per-call state, config, counters
	"lib_rate.lua",      // the rate limit's sliding windows
	"lib_leases.lua",    // leases, session bindings, waiters and their grants
	"lib_jobs.lua",      // job records, queues, life cycle, expiry
	"lib_dispatch.lua",  // the sweep index's due time, dispatch, the reply
	"lib_lease_ops.lua", // the lease operations of batch.lua
	"lib_job_ops.lua",   // the job operations of batch.lua
}

// libFiles are the per-semaphore scripts, each a function of the library.
var libFiles = []string{
	"batch.lua", "extend.lua", "cancel_wait.lua", "sweep.lua",
	"state.lua", "put_semaphore.lua", "delete_semaphore.lua", "set_suspended.lua",
	"dispatch.lua", "get_job.lua", "list_jobs.lua", "purge_jobs.lua",
	"list_leases.lua", "set_sub.lua",
}

// library is the function library: its name carries a hash of its code, so
// Stores of different builds on one Redis each call their own functions.
var library = buildLibrary()

type lib struct{ name, code string }

func buildLibrary() lib {
	var body strings.Builder
	body.WriteString(readLua("consts.lua"))
	for _, part := range libParts {
		fmt.Fprintf(&body, "\n-- %s\n%s", part, readLua(part))
	}
	for _, f := range libFiles {
		// The script's body becomes the function's body; its top-level
		// locals and returns are the function's.
		// hflush sends the hash writes the body cached (lib_cache.lua).
		fmt.Fprintf(&body, "\n-- %s\nredis.register_function('@_%s', function(keys, args)\nbegin(keys, args)\nlocal r = (function()\n%s\nend)()\nhflush()\nreturn r\nend)\n",
			f, strings.TrimSuffix(f, ".lua"), readLua(f))
	}
	sum := sha1.Sum([]byte(body.String()))
	name := "sd_" + hex.EncodeToString(sum[:6])
	code := "#!lua name=" + name + "\n" + strings.ReplaceAll(body.String(), "redis.register_function('@_", "redis.register_function('"+name+"_")
	return lib{name: name, code: code}
}

// LibraryCode is the source of the function library the Store loads
// (FUNCTION LOAD REPLACE), and FunctionName the FCALL name of one of its
// functions ("batch", "state", ...: the script file's name without .lua).
// For benchmarks that call the functions straight from Go.
func LibraryCode() string { return library.code }

// FunctionName: see LibraryCode.
func FunctionName(op string) string { return semFunc(op + ".lua") }

// loadLibrary loads the function library on every master (REPLACE: the
// same code under the same name is a no-op for callers).
func (s *Store) loadLibrary(ctx context.Context) error {
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.FunctionLoadReplace(ctx, library.code).Err()
		})
	}
	return s.client.FunctionLoadReplace(ctx, library.code).Err()
}

// runSem calls a per-semaphore function, loading the library first if
// Redis lost it.
func (s *Store) runSem(ctx context.Context, fn string, tenant, name string, args ...any) *redis.Cmd {
	keys, argv := s.keys.sem(tenant, name), s.semArgs(name, args)
	cmd := s.once(ctx, scriptArgs("fcall", fn, keys, argv)...)
	if isNoFunction(cmd.Err()) {
		if err := s.loadLibrary(ctx); err != nil {
			s.log.Warn("function library load failed", "err", err)
			return cmd
		}
		cmd = s.once(ctx, scriptArgs("fcall", fn, keys, argv)...)
	}
	s.noteRefusal(tenant, name, cmd.Err())
	return cmd
}

// noRetryCmd is a command go-redis never sends again once it was sent: by
// default go-redis re-sends a command whose connection dropped before the
// reply came (on Cluster too, whatever MaxRetries says), and a script that
// ran before the drop would run twice (a release that then answers
// lease_not_found, a job enqueued twice, a released lease granted again).
// Its caller gets the error instead: unavailable, the outcome unknown.
type noRetryCmd struct{ *redis.Cmd }

func (noRetryCmd) NoRetry() bool { return true }

// once sends a command at most once (noRetryCmd).
func (s *Store) once(ctx context.Context, args ...any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, args...)
	_ = s.client.Process(ctx, noRetryCmd{cmd})
	return cmd
}

// scriptArgs is the argument list of FCALL or EVALSHA/EVAL: name, numkeys,
// keys, args.
func scriptArgs(command, name string, keys []string, args []any) []any {
	out := make([]any, 0, 3+len(keys)+len(args))
	out = append(out, command, name, len(keys))
	for _, k := range keys {
		out = append(out, k)
	}
	return append(out, args...)
}

// runOnce runs a plain script at most once (noRetryCmd): EVALSHA, and
// when Redis lost its script cache (NOSCRIPT: nothing ran) SCRIPT LOAD
// (harmless to repeat) and EVALSHA again.
func (s *Store) runOnce(ctx context.Context, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	cmd := s.once(ctx, scriptArgs("evalsha", sc.Hash(), keys, args)...)
	if isNoScript(cmd.Err()) {
		if err := sc.Load(ctx, s.client).Err(); err != nil {
			return cmd
		}
		cmd = s.once(ctx, scriptArgs("evalsha", sc.Hash(), keys, args)...)
	}
	return cmd
}

// semArgs prepends the ARGV every per-semaphore script gets (lib_*.lua): the
// node channel prefix, 16 random hex characters and the id suffix of the
// semaphore (for the lease ids of dispatched jobs), and this Store's node
// id (grants to its own waiters come in the reply).
func (s *Store) semArgs(name string, args []any) []any {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], rand.Uint64())
	return append([]any{s.keys.nodeChannelPrefix(), hex.EncodeToString(b[:]), idSuffix(name), s.nodeID}, args...)
}

// idSuffix is the part of a lease or job id after its 32 hex characters
// (store.NewLeaseID).
func idSuffix(name string) string { return "." + base64.RawURLEncoding.EncodeToString([]byte(name)) }

// run runs a per-semaphore script that replies through lib_*.lua done():
// {status, ..., due, events}. It records due in the sweep index, hands the
// events to the job listener, and returns the reply without due and
// events; a status "SD_..." becomes the store error (the reply is still
// returned, for the message of SD_INVALID_STATE).
func (s *Store) run(ctx context.Context, fn string, tenant, name string, args ...any) ([]any, error) {
	res, _, err := s.runEv(ctx, fn, tenant, name, args...)
	return res, err
}

// runEv is run, also returning the events.
func (s *Store) runEv(ctx context.Context, fn string, tenant, name string, args ...any) ([]any, store.JobEvents, error) {
	sent := time.Now()
	res, err := s.runSem(ctx, fn, tenant, name, args...).Slice()
	if err != nil {
		return nil, store.JobEvents{}, translate(err, nil)
	}
	if len(res) < 5 {
		return nil, store.JobEvents{}, fmt.Errorf("redisstore: short script reply (%d elements)", len(res))
	}
	due, _ := res[len(res)-3].(int64)
	s.indexDue(ctx, tenant, name, due)
	s.handOverAll(tenant, res[len(res)-1])
	ev := s.emit(tenant, name, res[len(res)-2])
	// The timer is armed after the events are out: anchored at the send,
	// it may fire at once, and its dispatch's events must not reach the
	// listener before these (jobs of one channel are seen in FIFO order).
	if in, _ := res[len(res)-4].(int64); in > 0 {
		s.rateTimer(tenant, name, sent, time.Duration(in)*time.Millisecond)
	}
	res = res[:len(res)-4]
	if st, _ := res[0].(string); codeError(st) != nil {
		return res, ev, codeError(st)
	}
	return res, ev, nil
}

// handOverAll hands the grants of a reply (lib_*.lua done: {waiter id,
// lease JSON} each) to this Store's waiters.
func (s *Store) handOverAll(tenant string, v any) {
	grants, _ := v.([]any)
	for _, g := range grants {
		if g, _ := g.([]any); len(g) == 2 {
			id, _ := g[0].(string)
			raw, _ := g[1].(string)
			s.handOver(tenant, id, raw)
		}
	}
}
