-- consts.lua: GENERATED from store/redis/consts.go by `go generate ./store/redis`. DO NOT EDIT.
-- Every script gets this file in front of its code (scripts.go).
-- store.DefaultChannel (not stored in job records)
local DEFAULT_CHANNEL = 'default'
-- ms, store.DefaultLeaseTTL: a lease's ttl when neither request nor semaphore sets one
local DEFAULT_TTL = 60000
-- store.DefaultDispatchBatch
local DISPATCH_BATCH = 64
-- ms, sweepRecheck (sweep.go)
local RECHECK = 5000
-- store.ScopeChannel
local SCOPE_CHANNEL = 'channel'
-- ms, store.DefaultRetentionDone: of a semaphore stored without a retention
local RETENTION_DONE = 86400000
-- ms, store.DefaultRetentionFailed: likewise
local RETENTION_FAILED = 604800000
-- forgetBatch (jobs.go)
local FORGET_BATCH = 256
-- store.JobAction values
local ACT_DELIVERED = 'delivered'
local ACT_RELEASE = 'release'
local ACT_FAIL = 'fail'
local ACT_RETRY = 'retry'
local ACT_SUSPEND = 'suspend'
local ACT_CANCEL = 'cancel'
local ACT_REQUEUE = 'requeue'
local ACT_HANDOFF = 'handoff'
local ACT_RETURN = 'return'
local ACT_FAIL_RETRY = 'failretry'
-- store.RouteWebsocket: the route of a job bound to a worker at dispatch
local ROUTE_WEBSOCKET = 'websocket'
-- job status letter (job records) -> store.JobStatus
local JOB_STATUS_NAMES = {['C'] = 'cancelled', ['D'] = 'done', ['E'] = 'error', ['I'] = 'inflight', ['S'] = 'scheduled', ['T'] = 'timeout'}
-- string.format(action, status name)
local MSG_INVALID_TRANSITION = '%s of a %s job'
-- string.format(attempts)
local MSG_GAVE_UP = 'gave up after %d attempts'
-- error codes (scriptErrors)
local E_SEMAPHORE_NOT_FOUND = 'SD_SEMAPHORE_NOT_FOUND'
local E_LEASE_NOT_FOUND = 'SD_LEASE_NOT_FOUND'
local E_WEIGHT_TOO_LARGE = 'SD_WEIGHT_TOO_LARGE'
local E_JOB_NOT_FOUND = 'SD_JOB_NOT_FOUND'
local E_INVALID_STATE = 'SD_INVALID_STATE'
local E_QUEUE_FULL = 'SD_QUEUE_FULL'
local E_STALE_LEASE = 'SD_STALE_LEASE'
local E_SESSION_NOT_FOUND = 'SD_SESSION_NOT_FOUND'
local E_LAYOUT_NEWER = 'SD_LAYOUT_NEWER'
