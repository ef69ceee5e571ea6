package redisstore

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/semaphored/semaphored/store"
)

//go:generate go run ./internal/genconsts

// The Lua scripts' constants come from Go: lua/consts.lua is generated from
// luaConsts (go generate ./store/redis), and TestLuaConstsGenerated fails
// when the file differs from what the Go values give, so the two sides
// cannot drift. Every script gets the file in front of its code (the
// function library and the plain scripts alike).

// Error codes of the scripts' replies (in-band {code, ...} or
// redis.error_reply), mapped to the store's errors in translate.
const (
	codeSemaphoreNotFound = "SD_SEMAPHORE_NOT_FOUND"
	codeLeaseNotFound     = "SD_LEASE_NOT_FOUND"
	codeWeightTooLarge    = "SD_WEIGHT_TOO_LARGE"
	codeJobNotFound       = "SD_JOB_NOT_FOUND"
	codeInvalidState      = "SD_INVALID_STATE"
	codeQueueFull         = "SD_QUEUE_FULL"
	codeStaleLease        = "SD_STALE_LEASE"
	codeSessionNotFound   = "SD_SESSION_NOT_FOUND"
	codeLayoutNewer       = "SD_LAYOUT_NEWER"
)

// scriptErrors maps the error codes to the store's errors.
var scriptErrors = map[string]error{
	codeSemaphoreNotFound: store.ErrSemaphoreNotFound,
	codeLeaseNotFound:     store.ErrLeaseNotFound,
	codeWeightTooLarge:    store.ErrWeightTooLarge,
	codeJobNotFound:       store.ErrJobNotFound,
	codeInvalidState:      store.ErrInvalidState,
	codeQueueFull:         store.ErrQueueFull,
	codeStaleLease:        store.ErrStaleLease,
	codeSessionNotFound:   store.ErrSessionNotFound,
	codeLayoutNewer:       store.ErrLayoutNewer,
}

// statusLetter is a job status as job records store it (lib_*.lua m.s).
var statusLetter = map[store.JobStatus]string{
	store.JobScheduled: "S", store.JobInflight: "I", store.JobDone: "D",
	store.JobError: "E", store.JobTimeout: "T", store.JobCancelled: "C",
}

var letterStatus = func() map[string]store.JobStatus {
	m := make(map[string]store.JobStatus, len(statusLetter))
	for s, l := range statusLetter {
		m[l] = s
	}
	return m
}()

// luaConst is one constant of lua/consts.lua: a Lua local named Name with
// the Lua literal of Value (a string, an integer, or a map of strings).
type luaConst struct {
	Name  string
	Value any
	Doc   string
}

// luaConsts are the constants every script sees.
func luaConsts() []luaConst {
	statusNames := map[string]string{}
	for s, l := range statusLetter {
		statusNames[l] = string(s)
	}
	return []luaConst{
		{"DEFAULT_CHANNEL", store.DefaultChannel, "store.DefaultChannel (not stored in job records)"},
		{"DEFAULT_TTL", ms(store.DefaultLeaseTTL), "ms, store.DefaultLeaseTTL: a lease's ttl when neither request nor semaphore sets one"},
		{"DISPATCH_BATCH", store.DefaultDispatchBatch, "store.DefaultDispatchBatch"},
		{"RECHECK", ms(sweepRecheck), "ms, sweepRecheck (sweep.go)"},
		{"SCOPE_CHANNEL", store.ScopeChannel, "store.ScopeChannel"},
		{"RETENTION_DONE", ms(store.DefaultRetentionDone), "ms, store.DefaultRetentionDone: of a semaphore stored without a retention"},
		{"RETENTION_FAILED", ms(store.DefaultRetentionFailed), "ms, store.DefaultRetentionFailed: likewise"},
		{"FORGET_BATCH", forgetBatch, "forgetBatch (jobs.go)"},
		{"ACT_DELIVERED", string(store.ActDelivered), "store.JobAction values"},
		{"ACT_RELEASE", string(store.ActRelease), ""},
		{"ACT_FAIL", string(store.ActFail), ""},
		{"ACT_RETRY", string(store.ActRetry), ""},
		{"ACT_SUSPEND", string(store.ActSuspend), ""},
		{"ACT_CANCEL", string(store.ActCancel), ""},
		{"ACT_REQUEUE", string(store.ActRequeue), ""},
		{"ACT_HANDOFF", string(store.ActHandOff), ""},
		{"ACT_RETURN", string(store.ActReturn), ""},
		{"ACT_FAIL_RETRY", string(store.ActFailRetry), ""},
		{"ROUTE_WEBSOCKET", store.RouteWebsocket, "store.RouteWebsocket: the route of a job bound to a worker at dispatch"},
		{"JOB_STATUS_NAMES", statusNames, "job status letter (job records) -> store.JobStatus"},
		{"MSG_INVALID_TRANSITION", store.MsgInvalidTransition, "string.format(action, status name)"},
		{"MSG_GAVE_UP", store.MsgGaveUp, "string.format(attempts)"},
		{"E_SEMAPHORE_NOT_FOUND", codeSemaphoreNotFound, "error codes (scriptErrors)"},
		{"E_LEASE_NOT_FOUND", codeLeaseNotFound, ""},
		{"E_WEIGHT_TOO_LARGE", codeWeightTooLarge, ""},
		{"E_JOB_NOT_FOUND", codeJobNotFound, ""},
		{"E_INVALID_STATE", codeInvalidState, ""},
		{"E_QUEUE_FULL", codeQueueFull, ""},
		{"E_STALE_LEASE", codeStaleLease, ""},
		{"E_SESSION_NOT_FOUND", codeSessionNotFound, ""},
		{"E_LAYOUT_NEWER", codeLayoutNewer, ""},
	}
}

// LuaConsts renders lua/consts.lua.
func LuaConsts() string {
	var b strings.Builder
	b.WriteString("-- consts.lua: GENERATED from store/redis/consts.go by `go generate ./store/redis`. DO NOT EDIT.\n")
	b.WriteString("-- Every script gets this file in front of its code (scripts.go).\n")
	for _, c := range luaConsts() {
		if c.Doc != "" {
			fmt.Fprintf(&b, "-- %s\n", c.Doc)
		}
		fmt.Fprintf(&b, "local %s = %s\n", c.Name, luaLiteral(c.Value))
	}
	return b.String()
}

func luaLiteral(v any) string {
	switch v := v.(type) {
	case string:
		return luaString(v)
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case map[string]string:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = "[" + luaString(k) + "] = " + luaString(v[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	panic(fmt.Sprintf("redisstore: no Lua literal for %T", v)) // a defect in luaConsts
}

// luaString quotes s for Lua ('...', escaping backslash, quote and
// control characters).
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}
