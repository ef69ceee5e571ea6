package redisstore

import (
	"context"
	"embed"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

//go:embed lua/*.lua
var luaFS embed.FS

// Scripts, one per atomic operation. The per-semaphore ones get lib.lua
// prepended (see its header); the global ones stand alone.
var (
	scriptAcquire         = semScript("acquire.lua")
	scriptRelease         = semScript("release.lua")
	scriptExtend          = semScript("extend.lua")
	scriptPollWait        = semScript("poll_wait.lua")
	scriptCancelWait      = semScript("cancel_wait.lua")
	scriptSweep           = semScript("sweep.lua")
	scriptState           = semScript("state.lua")
	scriptPutSemaphore    = semScript("put_semaphore.lua")
	scriptDeleteSemaphore = semScript("delete_semaphore.lua")
	scriptSetSuspended    = semScript("set_suspended.lua")
	scriptEnqueue         = semScript("enqueue.lua")
	scriptDispatch        = semScript("dispatch.lua")
	scriptGetJob          = semScript("get_job.lua")
	scriptListJobs        = semScript("list_jobs.lua")
	scriptTransition      = semScript("transition.lua")
	scriptPurgeJobs       = semScript("purge_jobs.lua")

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

func semScript(name string) *redis.Script {
	return redis.NewScript(readLua("lib.lua") + "\n-- " + name + "\n" + readLua(name))
}

func plainScript(name string) *redis.Script {
	return redis.NewScript(readLua(name))
}

// runSem runs a per-semaphore script (EVALSHA, falling back to EVAL).
func (s *Store) runSem(ctx context.Context, sc *redis.Script, tenant, name string, args ...any) *redis.Cmd {
	return sc.Run(ctx, s.client, s.keys.sem(tenant, name), s.semArgs(name, args)...)
}

// semArgs prepends the ARGV every per-semaphore script gets (lib.lua): the
// node channel prefix, 16 random hex characters and the id suffix of the
// semaphore (for the lease ids of dispatched jobs).
func (s *Store) semArgs(name string, args []any) []any {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], rand.Uint64())
	return append([]any{s.keys.nodeChannelPrefix(), hex.EncodeToString(b[:]), idSuffix(name)}, args...)
}

// idSuffix is the part of a lease or job id after its 32 hex characters
// (store.NewLeaseID).
func idSuffix(name string) string { return "." + base64.RawURLEncoding.EncodeToString([]byte(name)) }

// run runs a per-semaphore script that replies through lib.lua done():
// {status, ..., due, events}. It records due in the sweep index, hands the
// events to the job listener, and returns the reply without due and
// events; a status "SD_..." becomes the store error (the reply is still
// returned, for the message of SD_INVALID_STATE).
func (s *Store) run(ctx context.Context, sc *redis.Script, tenant, name string, args ...any) ([]any, error) {
	res, _, err := s.runEv(ctx, sc, tenant, name, args...)
	return res, err
}

// runEv is run, also returning the events.
func (s *Store) runEv(ctx context.Context, sc *redis.Script, tenant, name string, args ...any) ([]any, store.JobEvents, error) {
	res, err := s.runSem(ctx, sc, tenant, name, args...).Slice()
	if err != nil {
		return nil, store.JobEvents{}, translate(err, nil)
	}
	if len(res) < 3 {
		return nil, store.JobEvents{}, fmt.Errorf("redisstore: short script reply (%d elements)", len(res))
	}
	due, _ := res[len(res)-2].(int64)
	s.indexDue(ctx, tenant, name, due)
	ev := s.emit(tenant, name, res[len(res)-1])
	res = res[:len(res)-2]
	if st, _ := res[0].(string); strings.HasPrefix(st, "SD_") {
		return res, ev, translate(errors.New(st), nil)
	}
	return res, ev, nil
}

// isNoScript reports a NOSCRIPT reply (the script cache was flushed, e.g.
// by a restart), after which a pipelined EVALSHA is sent again as EVAL.
func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}
