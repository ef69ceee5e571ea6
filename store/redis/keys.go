package redisstore

import "strings"

// Key layout. Every key is built here, from the configurable prefix P
// (default "sd"):
//
//	P:{<tenant>/<name>}:sem        hash: config, suspended, timestamps, waiter seq, layout
//	                               version, ix and the u/wn/jq counters (lib_*.lua)
//	P:{<tenant>/<name>}:holders    zset: lease id -> expiry ms (Redis TIME)
//	P:{<tenant>/<name>}:leases     hash: lease id -> lease JSON
//	P:{<tenant>/<name>}:used       hash: "c:<channel>" -> used weight
//	P:{<tenant>/<name>}:fence      string: fencing counter, never deleted
//	P:{<tenant>/<name>}:waiters    zset: waiter id -> arrival seq
//	P:{<tenant>/<name>}:cq         zset (scores 0): per-channel FIFO by lex order
//	P:{<tenant>/<name>}:wdata      hash: waiter id -> waiter JSON
//	P:{<tenant>/<name>}:wdeadline  zset: waiter id -> deadline ms
//	P:{<tenant>/<name>}:wcount     hash: "c:<channel>" -> waiting waiters
//	P:{<tenant>/<name>}:granted    hash: waiter id -> node id (granted, not yet claimed)
//	P:{<tenant>/<name>}:idem       hash: idempotency key -> lease id
//	P:{<tenant>/<name>}:jobs       hash: job seq -> job record (meta JSON, "\n", payload)
//	P:{<tenant>/<name>}:jq         hash: per-channel job queues in chunks of 6-byte seqs
//	P:{<tenant>/<name>}:jch        zset (scores 0): channels with scheduled jobs (round-robin)
//	P:{<tenant>/<name>}:jcnt       hash: "q:<channel>" scheduled, "i"/"i:<channel>" inflight jobs
//	P:{<tenant>/<name>}:jfin       zset: job seq -> finish ms (done and cancelled jobs, retention)
//	P:{<tenant>/<name>}:jidem      hash: job idempotency key -> job seq
//	P:{<tenant>/<name>}:sbind      zset (scores 0): session bindings, "<session>\0L<lease id>",
//	                               "<session>\0J<channel>\0<job id>"
//	P:{<tenant>/<name>}:rlog       zset (scores 0): the rate windows' grants
//	P:{<tenant>/<name>}:rused      hash: the rate windows' running totals
//	P:{<tenant>/<name>}:jfail      zset: job seq -> finish ms (error and timeout jobs, retention)
//
//	P:sweep                        zset: "<tenant>/<name>" -> next due ms
//	P:sems:<tenant>                zset (scores 0): semaphore names, for ListSemaphores
//	P:tenants                      hash: tenant name -> tenant JSON
//	P:{keys}:byhash                hash: secret hash -> key JSON
//	P:{keys}:tenant:<tenant>       hash: key id -> secret hash
//	P:node:<node id>               pub/sub channel of one Store (grants to its waiters)
//
// Sessions (sessions.go):
//
//	P:{<tenant>/<name>}:subs       hash: subscriber registry of the semaphore:
//	                               "<session>\0<channel>" -> "<prefetch> <node>"
//	                               (node "" while the session is lost); a hint for
//	                               Subscribers, the room of dispatch (lib_dispatch.lua)
//	P:{nodes}                      zset: node id -> heartbeat expiry ms
//	P:{nodes}:sess                 hash: "<tenant>/<id>" -> session record JSON (sesslib.lua)
//	P:{nodes}:bynode               zset (scores 0): "<node>\0<tenant>/<id>", sessions per node
//	P:{nodes}:lost                 zset: "<tenant>/<id>" -> end of grace ms
//	P:{nodes}:tokens               hash: "<tenant>\0<resume token hash>" -> session id
//	P:ticket:<hash>                string: websocket ticket JSON, expiring (PXAT)
//	P:bus:node:<node id>           pub/sub channel of one node on the node bus
//	P:bus:all                      pub/sub channel of every node on the node bus
//
// The hash tag {<tenant>/<name>} puts all keys of one semaphore in one
// Redis Cluster slot, so each per-semaphore script runs on Cluster. The
// global keys are never touched by the same script as a semaphore's keys;
// the two key-record keys share the tag {keys} because create_key.lua and
// delete_key.lua touch both. Semaphore names cannot contain "/", so a
// sweep index member splits at its last "/".
//
// Session records share the tag {nodes} with node presence and the
// session indexes, so each session operation is one script; a semaphore's
// subscriber registry lives in the semaphore's slot (sessions.go says why
// it need not agree with the records). Tenant names contain no "/", so a
// session member splits at its first "/".
type keys struct {
	p string // prefix without a trailing ':'
}

func newKeys(prefix string) keys {
	return keys{p: strings.TrimRight(prefix, ":")}
}

// Indexes into semKeys' result, in the order lib_state.lua expects.
const (
	kSem = iota
	kHolders
	kLeases
	kUsed
	kFence
	kWaiters
	kCQ
	kWData
	kWDeadline
	kWCount
	kGranted
	kIdem
	kJobs
	kJQ
	kJCh
	kJCnt
	kJFin
	kJIdem
	kSBind
	kRLog
	kRUsed
	kSubs
	kJFail
	kJDly
	numSemKeys
)

var semKeySuffixes = [numSemKeys]string{
	":sem", ":holders", ":leases", ":used", ":fence", ":waiters", ":cq",
	":wdata", ":wdeadline", ":wcount", ":granted", ":idem",
	":jobs", ":jq", ":jch", ":jcnt", ":jfin", ":jidem", ":sbind", ":rlog", ":rused",
	":subs", ":jfail", ":jdly",
}

// sem returns the KEYS of every per-semaphore script.
func (k keys) sem(tenant, name string) []string {
	base := k.p + ":{" + semMember(tenant, name) + "}"
	out := make([]string, numSemKeys)
	for i, s := range semKeySuffixes {
		out[i] = base + s
	}
	return out
}

// SemaphoreKeys returns the KEYS of the per-semaphore functions (see
// LibraryCode) under prefix, for benchmarks that call them straight.
func SemaphoreKeys(prefix, tenant, name string) []string { return newKeys(prefix).sem(tenant, name) }

// semMember is a semaphore's member in the sweep index.
func semMember(tenant, name string) string { return tenant + "/" + name }

// splitSemMember reverses semMember.
func splitSemMember(m string) (tenant, name string, ok bool) {
	i := strings.LastIndexByte(m, '/')
	if i < 0 {
		return "", "", false
	}
	return m[:i], m[i+1:], true
}

func (k keys) sweep() string                   { return k.p + ":sweep" }
func (k keys) semList(tenant string) string    { return k.p + ":sems:" + tenant }
func (k keys) tenants() string                 { return k.p + ":tenants" }
func (k keys) keyRecords() string              { return k.p + ":{keys}:byhash" }
func (k keys) tenantKeys(tenant string) string { return k.p + ":{keys}:tenant:" + tenant }
func (k keys) nodeChannelPrefix() string       { return k.p + ":node:" }
func (k keys) nodeChannel(node string) string  { return k.nodeChannelPrefix() + node }

// keysRevokedChannel carries the hash of every revoked API key to every
// Store, which evicts it from its key cache.
func (k keys) keysRevokedChannel() string { return k.p + ":keys:revoked" }

// subs is a semaphore's subscriber registry, in the semaphore's slot
// (also sem's kSubs).
func (k keys) subs(tenant, name string) string {
	return k.p + ":{" + semMember(tenant, name) + "}" + semKeySuffixes[kSubs]
}

// sessMember is a session's member in the global session index.
func sessMember(tenant, id string) string { return tenant + "/" + id }

// sessIndex returns the keys of the global session index, all with the
// tag {nodes}: nodes, idx, bynode, lost, tokens.
func (k keys) sessIndex() sessIndexKeys {
	b := k.p + ":{nodes}"
	return sessIndexKeys{nodes: b, sess: b + ":sess", bynode: b + ":bynode", lost: b + ":lost", tokens: b + ":tokens"}
}

type sessIndexKeys struct{ nodes, sess, bynode, lost, tokens string }

// tokenField is a resume token's field in the tokens hash.
func tokenField(tenant, hash string) string { return tenant + "\x00" + hash }

func (k keys) ticket(hash string) string  { return k.p + ":ticket:" + hash }
func (k keys) busNode(node string) string { return k.p + ":bus:node:" + node }
func (k keys) busAll() string             { return k.p + ":bus:all" }
