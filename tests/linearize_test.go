package tests

// Linearizability of the sync lease API (SPEC §2 guarantees 1 and 2, §3),
// checked with porcupine. Eighteen clients spread over three semaphored
// instances sharing one Redis (or one Redis Cluster) acquire, release,
// extend and read the state (GET /v1/semaphores/{name}) of three
// semaphores concurrently; one instance is killed with SIGKILL while
// requests to it are in flight. Every call is recorded with its invocation
// and response times, and the history is checked against a sequential model
// of a counting semaphore with fencing and expiring leases:
//
//   - a grant needs room: the weights of live leases never exceed maxValue;
//   - a grant's fencing token is greater than every earlier grant's;
//   - release and extend succeed exactly on a live lease: a released or
//     expired lease answers 404 lease_not_found, and a live one never does;
//   - a refused acquire (no_permit, no wait) found no room;
//   - a state read's inUse is the sum of the weights of the live leases.
//
// Each semaphore is one porcupine partition (its operations touch nothing
// else).
//
// Expiry is judged by Redis' clock: a lease whose expiresAt is e (whole
// ms) is dead at Redis time p exactly when p >= e. The test measures Redis'
// clock against its own with the grants themselves: a lease's acquiredAt
// is Redis' time when the script granted it, which lies inside its call's
// interval; that bounds the offset between the clocks to an interval
// [dLo, dHi] (about a millisecond wide on loopback). A call that ran from
// c to r (test clock) was therefore linearized at a Redis time within
// [c+dLo-m, r+dHi+m] (m a small margin). When the model steps a call, every
// lease that expires before that window is dead, every lease that expires
// after it is alive, and one that expires inside it may be either: the
// checker tries each point of the window where a lease expires, so leases
// die in the order of their expiry. Most leases live 30 s (longer than a
// history), a third live 1 s (the minimum ttl) and some of those are left
// to expire, then released or extended (which must fail).
//
// Crashed calls: a call whose outcome the test cannot know (its instance
// was killed under it, or an unexpected 5xx) gets an "unknown" output and a
// response time at the end of the history: it may have taken effect at any
// point after its invocation, or not at all. An acquire of unknown outcome
// may have created a lease whose id the test never learns: the model may
// hold it (its weight is known; it expires between invocation+ttl and
// end+ttl) or not. An extend of unknown outcome may or may not have moved
// the expiry. A call refused with ECONNREFUSED never reached an instance
// and is left out of the history, as are state reads without an answer.
// Leases that clients of the killed instance hold stay held in Redis, and
// those clients go on (release, extend, acquire) through a survivor.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// Shape of a linearizability history.
const (
	linMaxValue      = 3
	linSemaphores    = 3                    // one porcupine partition each
	linClientsPerKey = 2                    // clients per (semaphore, instance): 3 × 3 × 2 = 18
	linOpsPerClient  = 60                   // at most; ≈ 6 × 60 = 360 operations per semaphore
	linRunFor        = 6 * time.Second      // at most
	linPaceMin       = 5 * time.Millisecond // a client's think time between calls
	linPaceMax       = 35 * time.Millisecond
	linLongTTL       = 30 * time.Second // outlives the history
	linShortTTL      = time.Second      // the minimum ttl: expires within it
	linKillAfterOps  = 400              // operations recorded before the kill
	linKillAfter     = 2 * time.Second  // or this long after the start, whichever comes first
	linKillInflight  = 2                // requests in flight to the victim wanted at the kill (polled for up to 2 s)
	linMarginUs      = 2000             // µs added on both sides of every window
	linExpiredSlack  = 50 * time.Millisecond
	linCheckTimeout  = 20 * time.Second
	linSlots         = linMaxValue + 1 // leases a model state can hold (weights ≥ 1)
)

func TestLinearizability_Redis(t *testing.T) {
	t.Parallel()
	url := testredis.URL(t)
	prefix := "e2e-lin-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	linRunHistory(t, []string{"--redis-url", url, "--redis-prefix", prefix, "--admin-key", adminKey})
}

func TestLinearizability_RedisCluster(t *testing.T) {
	t.Parallel()
	addrs := testredis.StartCluster(t)
	linRunHistory(t, []string{"--redis-url", strings.Join(addrs, ","), "--redis-prefix", "e2e-lin", "--admin-key", adminKey})
}

// ---- the sequential model ----

type linKind uint8

const (
	linAcquire linKind = iota
	linRelease
	linExtend
	linRead // GET /v1/semaphores/{name}
)

func (k linKind) String() string {
	return [...]string{"acquire", "release", "extend", "state"}[k]
}

type linRes uint8

const (
	linOK      linRes = iota
	linFail           // acquire: 409 no_permit; release, extend: 404 lease_not_found
	linUnknown        // no answer: may or may not have taken effect
)

// linInput is a call as the model sees it. Times are Redis' clock in µs.
type linInput struct {
	Part   int // semaphore number (the partition)
	Kind   linKind
	Lease  int32 // release, extend: the lease's number
	Weight int64 // acquire
	Waits  bool  // acquire with wait > 0: a refusal says nothing about one instant
	Lo, Hi int64 // the call took effect at a Redis time within [Lo, Hi]
	// Outcome unknown: the expiry window of the lease it may have created
	// (acquire) or moved (extend), and the model's id of that lease
	// (acquire, < 0).
	ULo, UHi int64
	Anon     int32
	// Release or extend of a lease the client saw expire 50 ms before
	// (not used by the model: for the self-check and the dump).
	Expired bool
}

// linOutput is what the call returned.
type linOutput struct {
	Res   linRes
	Lease int32 // acquire OK: the new lease's number
	Token int64 // acquire OK: its fencing token
	Exp   int64 // acquire, extend OK: expiresAt, Redis µs
	InUse int64 // state
}

// linLease is a live lease of the model: it expires at a Redis time within
// [eLo, eHi] (one point for a lease whose expiresAt the test saw).
type linLease struct {
	id       int32 // lease number; < 0: created by an acquire of unknown outcome
	w        int64
	eLo, eHi int64
}

// linState is the model's state: the live leases sorted by id (unused slots
// zero, so that == compares states), the last fencing token granted, and a
// lower bound of the current Redis time (the latest expiry the model let
// happen).
type linState struct {
	n    int
	l    [linSlots]linLease
	last int64
	now  int64
}

func (s linState) inUse() int64 {
	var u int64
	for i := range s.n {
		u += s.l[i].w
	}
	return u
}

func (s linState) find(id int32) int {
	for i := range s.n {
		if s.l[i].id == id {
			return i
		}
	}
	return -1
}

// drop removes lease i, which expired (or was released: expired false).
func (s linState) drop(i int, expired bool) linState {
	if expired {
		s.now = max(s.now, s.l[i].eLo)
	}
	copy(s.l[i:s.n], s.l[i+1:s.n])
	s.n--
	s.l[s.n] = linLease{}
	return s
}

// add inserts l in id order; false when the state is full.
func (s linState) add(l linLease) (linState, bool) {
	if s.n == linSlots {
		return s, false
	}
	i := s.n
	for i > 0 && s.l[i-1].id > l.id {
		s.l[i] = s.l[i-1]
		i--
	}
	s.l[i] = l
	s.n++
	return s, true
}

func (s linState) hash() uint64 {
	h := uint64(14695981039346656037)
	mix := func(v int64) {
		h ^= uint64(v)
		h *= 1099511628211
	}
	mix(int64(s.n))
	mix(s.last)
	mix(s.now)
	for i := range s.n {
		mix(int64(s.l[i].id))
		mix(s.l[i].w)
		mix(s.l[i].eLo)
		mix(s.l[i].eHi)
	}
	return h
}

// linAt returns the states s may be in at some point of [lo, hi] at or
// after s.now: for each point where a lease's expiry bound falls (and lo),
// the leases surely expired by then are dropped, and a lease whose window
// contains the point is dropped or kept.
func linAt(s linState, lo, hi int64) []linState {
	lo = max(lo, s.now)
	if lo > hi {
		return nil
	}
	points := []int64{lo}
	for i := range s.n {
		for _, e := range [2]int64{s.l[i].eLo, s.l[i].eHi} {
			if e > lo && e <= hi {
				points = append(points, e)
			}
		}
	}
	var out []linState
	for _, p := range points {
		base := s
		var maybe []int32
		for i := base.n - 1; i >= 0; i-- {
			switch l := base.l[i]; {
			case l.eHi <= p:
				base = base.drop(i, true)
			case l.eLo <= p:
				maybe = append(maybe, l.id)
			}
		}
		for mask := range 1 << len(maybe) {
			c := base
			for j, id := range maybe {
				if mask&(1<<j) != 0 {
					c = c.drop(c.find(id), true)
				}
			}
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out
}

// linApply returns the states after the call (none: it cannot happen in s).
func linApply(maxValue int64, s linState, in linInput, out linOutput) []linState {
	switch in.Kind {
	case linAcquire:
		switch out.Res {
		case linOK:
			if s.inUse()+in.Weight > maxValue || out.Token <= s.last || s.find(out.Lease) >= 0 {
				return nil
			}
			n, ok := s.add(linLease{id: out.Lease, w: in.Weight, eLo: out.Exp, eHi: out.Exp})
			if !ok {
				return nil
			}
			n.last = out.Token
			return []linState{n}
		case linFail:
			if in.Waits || s.inUse()+in.Weight > maxValue {
				return []linState{s}
			}
			return nil
		default:
			res := []linState{s}
			if s.inUse()+in.Weight <= maxValue {
				if n, ok := s.add(linLease{id: in.Anon, w: in.Weight, eLo: in.ULo, eHi: in.UHi}); ok {
					res = append(res, n)
				}
			}
			return res
		}
	case linRelease:
		i := s.find(in.Lease)
		switch out.Res {
		case linOK:
			if i < 0 {
				return nil
			}
			return []linState{s.drop(i, false)}
		case linFail:
			if i >= 0 {
				return nil
			}
			return []linState{s}
		default:
			if i < 0 {
				return []linState{s}
			}
			return []linState{s, s.drop(i, false)}
		}
	case linExtend:
		i := s.find(in.Lease)
		switch out.Res {
		case linOK:
			if i < 0 {
				return nil
			}
			n := s
			n.l[i].eLo, n.l[i].eHi = out.Exp, out.Exp
			return []linState{n}
		case linFail:
			if i >= 0 {
				return nil
			}
			return []linState{s}
		default:
			if i < 0 {
				return []linState{s}
			}
			n := s
			n.l[i].eLo, n.l[i].eHi = in.ULo, in.UHi
			return []linState{s, n}
		}
	case linRead:
		if out.Res == linOK && s.inUse() == out.InUse {
			return []linState{s}
		}
		return nil
	}
	return nil
}

// linModel is the model for semaphores of maxValue permits; base (Redis
// µs) is subtracted from the times the visualization shows.
func linModel(maxValue, base int64) porcupine.Model {
	rel := func(us int64) string {
		if us >= math.MaxInt64/2 || us <= math.MinInt64/2 {
			return "∞"
		}
		return fmt.Sprintf("%.3fs", float64(us-base)/1e6)
	}
	leaseName := func(id int32) string {
		if id < 0 {
			return fmt.Sprintf("?%d", -id)
		}
		return fmt.Sprintf("L%d", id)
	}
	nm := porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			parts := make([][]porcupine.Operation, linSemaphores)
			for _, op := range history {
				p := op.Input.(linInput).Part
				parts[p] = append(parts[p], op)
			}
			return slices.DeleteFunc(parts, func(p []porcupine.Operation) bool { return len(p) == 0 })
		},
		Init: func() []any { return []any{linState{}} },
		Step: func(state, input, output any) []any {
			in, out := input.(linInput), output.(linOutput)
			var next []any
			for _, s := range linAt(state.(linState), in.Lo, in.Hi) {
				for _, n := range linApply(maxValue, s, in, out) {
					next = append(next, n)
				}
			}
			return next
		},
		Equal: func(a, b any) bool { return a.(linState) == b.(linState) },
		Hash:  func(s any) uint64 { return s.(linState).hash() },
		DescribeOperation: func(input, output any) string {
			in, out := input.(linInput), output.(linOutput)
			var call string
			switch in.Kind {
			case linAcquire:
				call = fmt.Sprintf("acquire(w%d", in.Weight)
				if in.Waits {
					call += ", wait"
				}
				call += ")"
			case linRelease, linExtend:
				call = fmt.Sprintf("%s(%s)", in.Kind, leaseName(in.Lease))
				if in.Expired {
					call += " [expired]"
				}
			case linRead:
				call = "state"
			}
			var res string
			switch {
			case out.Res == linUnknown:
				res = "unknown"
			case in.Kind == linRead:
				res = fmt.Sprintf("inUse %d", out.InUse)
			case out.Res == linFail && in.Kind == linAcquire:
				res = "no_permit"
			case out.Res == linFail:
				res = "404"
			case in.Kind == linAcquire:
				res = fmt.Sprintf("%s #%d exp %s", leaseName(out.Lease), out.Token, rel(out.Exp))
			case in.Kind == linExtend:
				res = "exp " + rel(out.Exp)
			default:
				res = "ok"
			}
			return fmt.Sprintf("%s → %s  [%s, %s]", call, res, rel(in.Lo), rel(in.Hi))
		},
		DescribeState: func(state any) string {
			s := state.(linState)
			parts := make([]string, 0, s.n)
			for i := range s.n {
				l := s.l[i]
				e := rel(l.eLo)
				if l.eHi != l.eLo {
					e += ".." + rel(l.eHi)
				}
				parts = append(parts, fmt.Sprintf("%s w%d exp %s", leaseName(l.id), l.w, e))
			}
			return fmt.Sprintf("inUse %d, last #%d, now ≥ %s: [%s]", s.inUse(), s.last, rel(max(s.now, base)), strings.Join(parts, "; "))
		},
	}
	return nm.ToModel()
}

// ---- recording a history ----

// linRecord is one call as recorded (test clock: time since linRun.start).
type linRecord struct {
	client     int
	part       int
	kind       linKind
	res        linRes
	crashed    bool  // unknown because the instance was killed
	lease      int32 // release, extend: the lease; acquire OK: the new lease
	weight     int64
	ttl        time.Duration
	wait       time.Duration
	call, ret  time.Duration
	token      int64
	acquiredAt int64 // acquire OK: Redis ms
	expiresAt  int64 // acquire, extend OK: Redis ms
	inUse      int64
	pastExpiry bool   // release or extend of a lease the client saw expire
	inst       string // the instance that served it
}

type linRun struct {
	start    time.Time
	maxValue int64
	sems     []string

	mu       sync.Mutex
	recs     []linRecord
	leases   map[string]int32 // lease id → number
	tokens   []int64          // fencing token by lease number
	bad      []string         // answers that break the API contract outright
	skipped  int              // calls refused (ECONNREFUSED) or state reads without an answer
	serverE  []string         // 5xx answers, transport errors of live instances (outcome unknown)
	armed    chan struct{}    // closed once linKillAfterOps calls are recorded
	armOnce  sync.Once
	inflight atomic.Int64 // requests in flight to the victim
	killing  atomic.Bool  // set just before the SIGKILL
}

func (r *linRun) record(rec linRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	if len(r.recs) >= linKillAfterOps {
		r.armOnce.Do(func() { close(r.armed) })
	}
}

func (r *linRun) badf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bad = append(r.bad, fmt.Sprintf(format, args...))
}

// newLease numbers a granted lease; false when its id was granted before.
func (r *linRun) newLease(id string, token int64) (int32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n, ok := r.leases[id]; ok {
		return n, false
	}
	n := int32(len(r.tokens))
	r.leases[id] = n
	r.tokens = append(r.tokens, token)
	return n, true
}

func (r *linRun) token(n int32) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tokens[n]
}

// linTarget is an instance as a client sees it.
type linTarget struct {
	inst   *instance
	c      *sdk.Client // worker key: acquire, release, extend
	admin  *sdk.Client // state reads (an admin call)
	victim bool
}

// linHeld is a lease a client knows.
type linHeld struct {
	id  string
	n   int32
	exp time.Time // expiresAt as last seen (Redis clock)
}

type linClient struct {
	n       int
	part    int
	sem     string
	targets []linTarget // home first: the first one alive is used
	rng     *rand.Rand
	held    []linHeld // believed live
	letGo   []linHeld // short leases left to expire: touched only after their expiry
	gone    []linHeld // released, expired, or of unknown fate
}

func (c *linClient) target() *linTarget {
	for i := range c.targets {
		select {
		case <-c.targets[i].inst.exited:
		default:
			return &c.targets[i]
		}
	}
	return nil
}

// invoke runs one call on the client's current instance and times it.
func (r *linRun) invoke(ctx context.Context, tg *linTarget, wait time.Duration, fn func(context.Context, *linTarget) error) (call, ret time.Duration, err error) {
	cctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	if tg.victim {
		r.inflight.Add(1)
		defer r.inflight.Add(-1)
	}
	call = time.Since(r.start)
	err = fn(cctx, tg)
	ret = time.Since(r.start)
	return call, ret, err
}

// classify sorts a call's error: expected is the refusal the model knows
// (no_permit, lease_not_found). skip: the request never reached an
// instance.
func (r *linRun) classify(c *linClient, tg *linTarget, kind linKind, err error, expected func(error) bool) (res linRes, crashed, skip bool) {
	switch {
	case err == nil:
		return linOK, false, false
	case expected(err):
		return linFail, false, false
	case errors.Is(err, syscall.ECONNREFUSED):
		r.mu.Lock()
		r.skipped++
		r.mu.Unlock()
		return 0, false, true
	}
	status := sdk.StatusCode(err)
	switch {
	case status >= 400 && status < 500:
		r.badf("client %d %s on %s: unexpected answer: %v", c.n, kind, tg.inst.name, err)
		return 0, false, true
	case status >= 500:
		r.mu.Lock()
		r.serverE = append(r.serverE, fmt.Sprintf("client %d %s on %s: %v", c.n, kind, tg.inst.name, err))
		r.mu.Unlock()
	}
	select {
	case <-tg.inst.exited:
		crashed = true
	default:
		if tg.victim && r.killing.Load() {
			crashed = true
		} else if status == 0 {
			// A transport error from a live instance: the request may
			// have been served. Reported as unknown (not crashed).
			r.mu.Lock()
			r.serverE = append(r.serverE, fmt.Sprintf("client %d %s on %s: %v", c.n, kind, tg.inst.name, err))
			r.mu.Unlock()
		}
	}
	return linUnknown, crashed, false
}

// step runs one randomly chosen call of client c.
func (r *linRun) step(ctx context.Context, c *linClient) {
	tg := c.target()
	if tg == nil {
		return
	}
	now := time.Now()
	var due []int
	for i, h := range c.letGo {
		if now.After(h.exp.Add(linExpiredSlack)) {
			due = append(due, i)
		}
	}
	type choice struct {
		weight int
		run    func()
	}
	choices := []choice{{12, func() { r.state(ctx, c, tg) }}}
	switch {
	case len(c.held)+len(c.letGo) >= 3:
	case len(c.held) == 0:
		choices = append(choices, choice{30, func() { r.acquire(ctx, c, tg) }})
	default:
		choices = append(choices, choice{8, func() { r.acquire(ctx, c, tg) }})
	}
	if len(c.held) > 0 {
		choices = append(choices,
			choice{30, func() { r.onHeld(ctx, c, tg, linRelease) }},
			choice{10, func() { r.onHeld(ctx, c, tg, linExtend) }})
	}
	if len(due) > 0 {
		choices = append(choices, choice{15, func() {
			i := due[c.rng.IntN(len(due))]
			h := c.letGo[i]
			c.letGo = slices.Delete(c.letGo, i, i+1)
			r.onOld(ctx, c, tg, h, true)
		}})
	}
	if len(c.gone) > 0 {
		choices = append(choices, choice{6, func() {
			r.onOld(ctx, c, tg, c.gone[c.rng.IntN(len(c.gone))], false)
		}})
	}
	total := 0
	for _, ch := range choices {
		total += ch.weight
	}
	roll := c.rng.IntN(total)
	for _, ch := range choices {
		if roll < ch.weight {
			ch.run()
			return
		}
		roll -= ch.weight
	}
}

func (r *linRun) acquire(ctx context.Context, c *linClient, tg *linTarget) {
	w := int64(1)
	if c.rng.IntN(5) == 0 {
		w = 2
	}
	ttl := linLongTTL
	if c.rng.IntN(100) < 35 {
		ttl = linShortTTL
	}
	var wait time.Duration
	// Waiting acquires only on instances that stay up (a waiter of a
	// killed instance can still be granted a lease in Redis after the
	// kill), and only of weight 1 (so that a waiter at the head of the
	// queue never blocks an acquire that fits).
	if w == 1 && !tg.victim && c.rng.IntN(4) == 0 {
		wait = time.Duration(100+c.rng.IntN(500)) * time.Millisecond
	}
	var l sdk.Lease
	call, ret, err := r.invoke(ctx, tg, wait, func(ctx context.Context, tg *linTarget) error {
		var err error
		l, err = tg.c.Acquire(ctx, c.sem, sdk.AcquireOptions{Weight: w, TTL: ttl, Wait: wait})
		return err
	})
	res, crashed, skip := r.classify(c, tg, linAcquire, err, sdk.IsNoPermit)
	if skip {
		return
	}
	rec := linRecord{client: c.n, part: c.part, kind: linAcquire, res: res, crashed: crashed,
		weight: w, ttl: ttl, wait: wait, call: call, ret: ret, inst: tg.inst.name}
	if res == linOK {
		n, fresh := r.newLease(l.ID, l.FencingToken)
		if !fresh {
			r.badf("client %d: acquire granted lease %s, granted before", c.n, l.ID)
			return
		}
		if l.Semaphore != c.sem || l.Weight != w || l.ExpiresAt.Sub(l.AcquiredAt) != ttl {
			r.badf("client %d: acquire(%s, w%d, ttl %v) granted %+v", c.n, c.sem, w, ttl, l)
		}
		rec.lease, rec.token = n, l.FencingToken
		rec.acquiredAt, rec.expiresAt = l.AcquiredAt.UnixMilli(), l.ExpiresAt.UnixMilli()
		h := linHeld{id: l.ID, n: n, exp: l.ExpiresAt}
		if ttl == linShortTTL && c.rng.IntN(3) == 0 {
			c.letGo = append(c.letGo, h)
		} else {
			c.held = append(c.held, h)
		}
	}
	r.record(rec)
}

// onHeld releases or extends one of the leases c believes live.
func (r *linRun) onHeld(ctx context.Context, c *linClient, tg *linTarget, kind linKind) {
	i := c.rng.IntN(len(c.held))
	h := c.held[i]
	rec, l, ok := r.leaseCall(ctx, c, tg, kind, h, false)
	if !ok {
		return
	}
	if rec.res == linOK && kind == linExtend {
		c.held[i].exp = l.ExpiresAt
		if rec.ttl == linShortTTL && c.rng.IntN(2) == 0 {
			c.letGo = append(c.letGo, c.held[i])
			c.held = slices.Delete(c.held, i, i+1)
		}
		return
	}
	c.held = slices.Delete(c.held, i, i+1)
	c.gone = append(c.gone, h)
}

// onOld releases or extends a lease that was left to expire (expired) or
// is gone.
func (r *linRun) onOld(ctx context.Context, c *linClient, tg *linTarget, h linHeld, expired bool) {
	kind := linRelease
	if c.rng.IntN(2) == 0 {
		kind = linExtend
	}
	rec, _, ok := r.leaseCall(ctx, c, tg, kind, h, expired)
	if expired {
		c.gone = append(c.gone, h)
	}
	if ok && rec.res == linOK && expired {
		// (the model judges it too: this is the readable form)
		r.badf("client %d: %s of lease %s %v after its expiry %v answered 200", c.n, kind, h.id,
			r.start.Add(rec.call).Sub(h.exp).Round(time.Millisecond), h.exp.Format(time.RFC3339Nano))
	}
}

func (r *linRun) leaseCall(ctx context.Context, c *linClient, tg *linTarget, kind linKind, h linHeld, expired bool) (linRecord, sdk.Lease, bool) {
	ttl := linLongTTL
	if kind == linExtend && c.rng.IntN(100) < 40 {
		ttl = linShortTTL
	}
	var l sdk.Lease
	call, ret, err := r.invoke(ctx, tg, 0, func(ctx context.Context, tg *linTarget) error {
		var err error
		if kind == linRelease {
			l, err = tg.c.Release(ctx, h.id)
		} else {
			l, err = tg.c.Extend(ctx, h.id, ttl)
		}
		return err
	})
	res, crashed, skip := r.classify(c, tg, kind, err, sdk.IsLeaseNotFound)
	if skip {
		return linRecord{}, l, false
	}
	rec := linRecord{client: c.n, part: c.part, kind: kind, res: res, crashed: crashed, lease: h.n,
		call: call, ret: ret, pastExpiry: expired, inst: tg.inst.name}
	if kind == linExtend {
		rec.ttl = ttl
	}
	if res == linOK {
		if l.ID != h.id || l.FencingToken != r.token(h.n) {
			r.badf("client %d: %s of lease %s (token %d) answered %+v", c.n, kind, h.id, r.token(h.n), l)
		}
		rec.expiresAt = l.ExpiresAt.UnixMilli()
	}
	r.record(rec)
	return rec, l, true
}

func (r *linRun) state(ctx context.Context, c *linClient, tg *linTarget) {
	var s sdk.Semaphore
	call, ret, err := r.invoke(ctx, tg, 0, func(ctx context.Context, tg *linTarget) error {
		var err error
		s, err = tg.admin.GetSemaphore(ctx, c.sem)
		return err
	})
	res, _, skip := r.classify(c, tg, linRead, err, func(error) bool { return false })
	if skip || res != linOK {
		if !skip {
			r.mu.Lock()
			r.skipped++ // a read without an answer says nothing
			r.mu.Unlock()
		}
		return
	}
	if s.State == nil {
		r.badf("client %d: state of %s missing: %+v", c.n, c.sem, s)
		return
	}
	if s.State.Available != max(0, r.maxValue-s.State.InUse) {
		r.badf("client %d: state of %s: inUse %d, available %d, maxValue %d", c.n, c.sem, s.State.InUse, s.State.Available, r.maxValue)
	}
	r.record(linRecord{client: c.n, part: c.part, kind: linRead, res: linOK, call: call, ret: ret,
		inUse: s.State.InUse, inst: tg.inst.name})
}

// ---- the test ----

func linRunHistory(t *testing.T, args []string) {
	insts := []*instance{start(t, "A", args), start(t, "B", args), start(t, "C", args)}
	victim := insts[2]
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()

	r := &linRun{maxValue: linMaxValue, leases: map[string]int32{}, armed: make(chan struct{})}
	for i := range linSemaphores {
		name := fmt.Sprintf("lin-%d", i)
		r.sems = append(r.sems, name)
		_, err := insts[i%len(insts)].admin.PutSemaphore(ctx, name, sdk.SemaphoreConfig{MaxValue: linMaxValue, LeaseTimeout: linLongTTL})
		require.NoError(t, err)
	}
	key, err := insts[0].admin.CreateKey(ctx, sdk.RoleWorker, "linearizability")
	require.NoError(t, err)

	var clients []*linClient
	for i := range linSemaphores * len(insts) * linClientsPerKey {
		part, home := i%linSemaphores, (i/linSemaphores)%len(insts)
		c := &linClient{n: i, part: part, sem: r.sems[part], rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))}
		for k := range insts {
			inst := insts[(home+k)%len(insts)]
			c.targets = append(c.targets, linTarget{inst: inst, c: inst.client(t, key.Secret), admin: inst.client(t, adminKey), victim: inst == victim})
		}
		clients = append(clients, c)
	}

	r.start = time.Now()
	stopAt := r.start.Add(linRunFor)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for range linOpsPerClient {
				if ctx.Err() != nil || time.Now().After(stopAt) {
					return
				}
				r.step(ctx, c)
				pace := time.NewTimer(linPaceMin + time.Duration(c.rng.Int64N(int64(linPaceMax-linPaceMin))))
				select {
				case <-pace.C:
				case <-ctx.Done():
					pace.Stop()
					return
				}
			}
		})
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	defer func() { // on an early failure too: no client outlives the test
		cancel()
		<-finished
	}()

	// The kill: once enough history is recorded (or after linKillAfter
	// on a slow machine), when requests to the victim are in flight
	// (polled, at most 2 s).
	select {
	case <-r.armed:
	case <-time.After(linKillAfter):
	case <-finished:
		t.Fatal("the workload ended before the kill")
	case <-ctx.Done():
		t.Fatal("no kill before the deadline")
	}
	pollUntil := time.Now().Add(2 * time.Second)
	for r.inflight.Load() < linKillInflight && time.Now().Before(pollUntil) {
		time.Sleep(200 * time.Microsecond) // a bounded poll of a counter
	}
	inflightAtKill := r.inflight.Load()
	r.killing.Store(true)
	killedAt := sigkill(t, victim).Sub(r.start)
	select {
	case <-finished:
	case <-ctx.Done():
		t.Fatal("the workload did not end before the deadline")
	}

	r.mu.Lock()
	recs := slices.Clone(r.recs)
	bad := slices.Clone(r.bad)
	serverE := slices.Clone(r.serverE)
	skipped := r.skipped
	r.mu.Unlock()

	ops, base, dLo, dHi := linOperations(t, r, recs, len(clients))
	model := linModel(linMaxValue, base)
	checkStart := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, ops, linCheckTimeout)
	checkTook := time.Since(checkStart)

	t.Logf("linearizability: %s in %v: %s", result, checkTook.Round(time.Millisecond), linSummary(recs, len(ops), skipped, killedAt, inflightAtKill))
	t.Logf("Redis clock − test clock within [%.3f, %.3f] ms; history %v long", float64(dLo)/1e3, float64(dHi)/1e3, linHistoryEnd(recs).Round(time.Millisecond))
	for _, e := range serverE {
		t.Logf("outcome unknown (not a kill): %s", e)
	}
	for _, b := range bad {
		t.Errorf("contract: %s", b)
	}
	if result != porcupine.Ok {
		dir, err := os.MkdirTemp("", "semaphored-linearize-")
		require.NoError(t, err)
		vis := filepath.Join(dir, "visualization.html")
		if err := porcupine.VisualizePath(model, info, vis); err != nil {
			t.Logf("visualization: %v", err)
		}
		hist := filepath.Join(dir, "history.txt")
		require.NoError(t, os.WriteFile(hist, []byte(linDump(model, ops)), 0o644))
		why := "a violation"
		if result == porcupine.Unknown {
			why = fmt.Sprintf("the check timed out after %v", linCheckTimeout)
		}
		t.Fatalf("porcupine: %s (%s). Visualization: %s; history: %s", result, why, vis, hist)
	}

	// The check is not vacuous: the same history with one answer
	// falsified must be found Illegal.
	var caught []string
	for _, m := range linMutants(ops, base) {
		res := porcupine.CheckOperationsTimeout(m.model, m.ops, linCheckTimeout/2)
		if res != porcupine.Illegal {
			t.Errorf("self-check: the history with %s was found %s, want Illegal", m.name, res)
			continue
		}
		caught = append(caught, m.name)
	}
	t.Logf("self-check: Illegal, as it must be, with %s", strings.Join(caught, "; "))
}

type linMutant struct {
	name  string
	model porcupine.Model
	ops   []porcupine.Operation
}

// linMutants returns falsified copies of a history that passed: each must
// be Illegal.
func linMutants(ops []porcupine.Operation, base int64) []linMutant {
	var ms []linMutant
	// The model of a semaphore of one permit less, when a read saw every
	// permit taken.
	if slices.ContainsFunc(ops, func(op porcupine.Operation) bool {
		return op.Input.(linInput).Kind == linRead && op.Output.(linOutput).InUse == linMaxValue
	}) {
		ms = append(ms, linMutant{"the model's maxValue lowered to " + fmt.Sprint(linMaxValue-1), linModel(linMaxValue-1, base), ops})
	}
	falsify := func(name string, i int, out linOutput) {
		m := linMutant{name: name, model: linModel(linMaxValue, base), ops: slices.Clone(ops)}
		m.ops[i].Output = out
		ms = append(ms, m)
	}
	// A grant carrying the fencing token of an earlier grant.
	first := map[int]int{}
	for i, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.Kind != linAcquire || out.Res != linOK {
			continue
		}
		j, ok := first[in.Part]
		if !ok {
			first[in.Part] = i
			continue
		}
		out.Token = ops[j].Output.(linOutput).Token
		falsify(fmt.Sprintf("grant L%d repeating L%d's fencing token %d", out.Lease, ops[j].Output.(linOutput).Lease, out.Token), i, out)
		break
	}
	// A release (or extend) of a lease gone for tens of ms answering 200.
	for i, op := range ops {
		in, out := op.Input.(linInput), op.Output.(linOutput)
		if in.Kind != linRelease && in.Kind != linExtend || out.Res != linFail || !in.Expired {
			continue
		}
		out.Res, out.Exp = linOK, in.Hi+linLongTTL.Microseconds()
		falsify(fmt.Sprintf("%s of expired lease L%d answering 200", in.Kind, in.Lease), i, out)
		break
	}
	// A read seeing one permit more than the model allows.
	for i, op := range ops {
		if op.Input.(linInput).Kind == linRead {
			out := op.Output.(linOutput)
			out.InUse = linMaxValue + 1
			falsify(fmt.Sprintf("a read of inUse %d", out.InUse), i, out)
			break
		}
	}
	return ms
}

// linOperations turns the records into porcupine operations, with windows
// in Redis' clock (µs). It returns them, the history's start in Redis µs,
// and the clock offset interval.
func linOperations(t *testing.T, r *linRun, recs []linRecord, clients int) (ops []porcupine.Operation, base, dLo, dHi int64) {
	t.Helper()
	wall0 := r.start.UnixMicro()
	us := func(d time.Duration) int64 { return wall0 + d.Microseconds() }
	// Redis time of a call is in [ms, ms+1000) µs for the ms it reported.
	dLo, dHi = math.MinInt64, math.MaxInt64
	samples := 0
	for _, rec := range recs {
		var at int64 = -1
		switch {
		case rec.res == linOK && rec.kind == linAcquire:
			at = rec.acquiredAt * 1000
		case rec.res == linOK && rec.kind == linExtend:
			at = (rec.expiresAt - rec.ttl.Milliseconds()) * 1000
		}
		if at < 0 {
			continue
		}
		samples++
		dLo = max(dLo, at-us(rec.ret))
		dHi = min(dHi, at+1000-us(rec.call))
	}
	require.Positive(t, samples, "no grant or extend: nothing to judge the clocks by")
	require.LessOrEqual(t, dLo, dHi, "Redis' clock jumped against the test's during the history")

	end := linHistoryEnd(recs)
	endNs := end.Nanoseconds() + 1
	unknowns := 0
	for i, rec := range recs {
		in := linInput{Part: rec.part, Kind: rec.kind, Lease: rec.lease, Weight: rec.weight, Waits: rec.wait > 0, Expired: rec.pastExpiry,
			Lo: us(rec.call) + dLo - linMarginUs, Hi: us(rec.ret) + dHi + linMarginUs}
		out := linOutput{Res: rec.res}
		op := porcupine.Operation{ClientId: rec.client, Call: rec.call.Nanoseconds(), Return: rec.ret.Nanoseconds(), Metadata: "on " + rec.inst}
		switch rec.res {
		case linOK:
			var at int64 = -1
			switch rec.kind {
			case linAcquire:
				out.Lease, out.Token, out.Exp = rec.lease, rec.token, rec.expiresAt*1000
				at = rec.acquiredAt * 1000
			case linExtend:
				out.Exp = rec.expiresAt * 1000
				at = (rec.expiresAt - rec.ttl.Milliseconds()) * 1000
			case linRead:
				out.InUse = rec.inUse
			}
			if at >= 0 { // the server's own clock reading narrows the window
				in.Lo, in.Hi = max(in.Lo, at-linMarginUs), min(in.Hi, at+1000+linMarginUs)
			}
		case linUnknown:
			// It may take effect at any time after its call; it had no
			// effect after the history's end.
			op.Return = endNs
			op.ClientId = clients + unknowns
			if rec.crashed {
				op.Metadata = "on " + rec.inst + ", killed"
			}
			unknowns++
			in.Hi = us(end) + dHi + linMarginUs
			ttl := rec.ttl.Microseconds()
			in.ULo, in.UHi = in.Lo+ttl, in.Hi+ttl
			if rec.kind == linAcquire && !rec.crashed {
				// A live instance that lost its caller releases the
				// grant (store: abandoned): the lease may end any time.
				in.ULo = in.Lo
			}
			in.Anon = -int32(i + 1)
		}
		op.Input, op.Output = in, out
		ops = append(ops, op)
	}
	return ops, wall0 + dLo, dLo, dHi
}

func linHistoryEnd(recs []linRecord) time.Duration {
	var end time.Duration
	for _, rec := range recs {
		end = max(end, rec.ret, rec.call)
	}
	return end
}

func linSummary(recs []linRecord, ops, skipped int, killedAt time.Duration, inflightAtKill int64) string {
	type key struct {
		kind linKind
		res  linRes
	}
	count := map[key]int{}
	perPart := make([]int, linSemaphores)
	crashed, pastExpiry, pastExpiry404 := 0, 0, 0
	for _, rec := range recs {
		count[key{rec.kind, rec.res}]++
		perPart[rec.part]++
		if rec.crashed {
			crashed++
		}
		if rec.pastExpiry {
			pastExpiry++
			if rec.res == linFail {
				pastExpiry404++
			}
		}
	}
	kind := func(k linKind, fail string) string {
		s := fmt.Sprintf("%s %d ok / %d %s", k, count[key{k, linOK}], count[key{k, linFail}], fail)
		if u := count[key{k, linUnknown}]; u > 0 {
			s += fmt.Sprintf(" / %d unknown", u)
		}
		return s
	}
	return fmt.Sprintf("%d operations (per semaphore %v): %s; %s; %s; state %d; "+
		"%d of unknown outcome (%d crashed with the instance killed at %v with %d requests in flight to it), %d left out (refused or unanswered reads); "+
		"%d calls on leases left to expire, %d of them 404",
		ops, perPart, kind(linAcquire, "no_permit"), kind(linRelease, "404"), kind(linExtend, "404"), count[key{linRead, linOK}],
		count[key{linAcquire, linUnknown}]+count[key{linRelease, linUnknown}]+count[key{linExtend, linUnknown}], crashed,
		killedAt.Round(time.Millisecond), inflightAtKill, skipped, pastExpiry, pastExpiry404)
}

// linDump writes the history, one operation a line, by partition and call
// time.
func linDump(model porcupine.Model, ops []porcupine.Operation) string {
	sorted := slices.Clone(ops)
	slices.SortStableFunc(sorted, func(a, b porcupine.Operation) int {
		if pa, pb := a.Input.(linInput).Part, b.Input.(linInput).Part; pa != pb {
			return pa - pb
		}
		return int(a.Call - b.Call)
	})
	var b strings.Builder
	for _, op := range sorted {
		fmt.Fprintf(&b, "sem %d client %2d  call %9.3fms  return %9.3fms  %s  (%v)\n", op.Input.(linInput).Part, op.ClientId,
			float64(op.Call)/1e6, float64(op.Return)/1e6, model.DescribeOperation(op.Input, op.Output), op.Metadata)
	}
	return b.String()
}
