package redisstore

import (
	"context"
	"embed"
	"strings"

	"github.com/redis/go-redis/v9"
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
	return sc.Run(ctx, s.client, s.keys.sem(tenant, name), s.semArgs(args)...)
}

func (s *Store) semArgs(args []any) []any {
	return append([]any{s.keys.nodeChannelPrefix()}, args...)
}

// isNoScript reports a NOSCRIPT reply (the script cache was flushed, e.g.
// by a restart), after which a pipelined EVALSHA is sent again as EVAL.
func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}
