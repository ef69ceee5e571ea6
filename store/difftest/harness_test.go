package difftest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/store"
)

// side is one of the two stores under test, with the maps that give the
// generated ids in its replies stable names (in order of first sight), so
// that the replies of the two stores can be compared field by field.
type side struct {
	name   string // "memory" or "redis"
	st     store.Store
	coarse bool // its times have ms granularity (Redis TIME)

	names        map[string]string    // raw lease or job id -> stable name ("L3", "J2")
	ids          map[string]string    // stable name -> raw id
	nLease, nJob int                  // names given
	fences       map[string]*fence    // "tenant/semaphore" -> the fencing tokens seen
	lastJob      map[string]store.Job // job name -> its latest record seen

	mu     sync.Mutex
	events store.JobEvents // of the running operation (the job listener)
}

func newSide(name string, st store.Store, coarse bool) *side {
	s := &side{
		name: name, st: st, coarse: coarse,
		names: map[string]string{}, ids: map[string]string{},
		fences: map[string]*fence{}, lastJob: map[string]store.Job{},
	}
	st.SetJobListener(s.listen)
	return s
}

func (s *side) listen(ev store.JobEvents) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events.Dispatched = append(s.events.Dispatched, ev.Dispatched...)
	s.events.Finished = append(s.events.Finished, ev.Finished...)
}

// takeEvents returns the job events heard since the last call.
func (s *side) takeEvents() store.JobEvents {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := s.events
	s.events = store.JobEvents{}
	return ev
}

// nameOf returns the stable name of a raw id of kind 'L' (lease) or 'J'
// (job), naming it if it is new; "" stays "".
func (s *side) nameOf(kind byte, raw string) (name string, isNew bool) {
	if raw == "" {
		return "", false
	}
	if n, ok := s.names[raw]; ok {
		return n, false
	}
	if kind == 'L' {
		s.nLease++
		name = "L" + strconv.Itoa(s.nLease)
	} else {
		s.nJob++
		name = "J" + strconv.Itoa(s.nJob)
	}
	s.names[raw], s.ids[name] = name, raw
	return name, true
}

// raw resolves an id argument for this side.
func (s *side) raw(r idRef) string {
	if r.name != "" {
		return s.ids[r.name]
	}
	return r.raw
}

// idRef is an id argument: a stable name (resolved per side) or a raw id
// the test made up (sent as is to both).
type idRef struct {
	name string
	raw  string
}

func (r idRef) String() string {
	if r.name != "" {
		return r.name
	}
	return strconv.Quote(r.raw)
}

// fence ranks the fencing tokens seen in one semaphore. Tokens are compared
// by rank: their values are implementation-defined (the memory store seeds
// them from the clock, Redis counts from 1), their order is not.
type fence struct {
	max  int64
	rank map[int64]int
}

func (s *side) fenceRank(sem string, tok int64) string {
	f := s.fences[sem]
	if f == nil {
		f = &fence{rank: map[int64]int{}}
		s.fences[sem] = f
	}
	if r, ok := f.rank[tok]; ok {
		return "#" + strconv.Itoa(r)
	}
	r := len(f.rank)
	f.rank[tok] = r
	if tok <= f.max {
		return fmt.Sprintf("#%d NOT ABOVE EARLIER TOKENS", r)
	}
	f.max = tok
	return "#" + strconv.Itoa(r)
}

// span is a time normalized to the interval of the run it fell in: the
// run's timeline is cut at the start and end of every operation, interval
// 2(i-1) being operation i and 2(i-1)+1 the checks after it. A time of the
// memory store falls in one interval; a time of Redis (ms, truncated) may
// touch two. Two spans agree when they share an interval.
type span struct {
	lo, hi int    // interval indices; -1 before the run
	fixed  string // "zero", or the name of a time the test itself passed
	t      time.Time
	coarse bool // a time of Redis (ms)
}

// String is the span as a failure's message shows it: a time of Redis
// only as "set", its interval being known only up to a ms (rapid shrinks
// only while a failure's message stays the same); the log shows detail.
func (sp span) String() string {
	if sp.fixed != "" {
		return sp.fixed
	}
	if sp.coarse {
		return "set"
	}
	return sp.label()
}

func (sp span) label() string {
	lbl := func(k int) string {
		if k < 0 {
			return "before-run"
		}
		if k%2 == 0 {
			return fmt.Sprintf("op%d", k/2+1)
		}
		return fmt.Sprintf("after-op%d", k/2+1)
	}
	s := lbl(sp.lo)
	if sp.hi != sp.lo {
		s += ".." + lbl(sp.hi)
	}
	return s
}

// detail is the span with its time, for the log (a failure's message
// must not carry it: rapid shrinks only while a failure's message stays
// the same).
func (sp span) detail() string {
	if sp.fixed != "" {
		return sp.fixed
	}
	return sp.label() + " (" + sp.t.Format("15:04:05.000000") + ")"
}

func (sp span) agrees(o span) bool {
	if sp.fixed != "" || o.fixed != "" {
		return sp.fixed == o.fixed
	}
	return max(sp.lo, o.lo) <= min(sp.hi, o.hi)
}

// fixedTimes are the times the test passes to the stores itself.
var fixedTimes = map[string]time.Time{
	"fixed-1": time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC),
	"fixed-2": time.Date(2024, 1, 2, 3, 4, 5, 6000, time.FixedZone("X", 3600)), // an hour earlier, in another zone
}

// rec is the normalized reply of one store to one operation (or the state
// read after it): an ordered set of fields, path -> value.
type rec struct {
	w     *world
	s     *side
	order []string
	vals  map[string]string
	times map[string]span
}

func (w *world) newRec(s *side) *rec {
	return &rec{w: w, s: s, vals: map[string]string{}, times: map[string]span{}}
}

func (r *rec) add(path string, v any) {
	if _, ok := r.vals[path]; !ok {
		if _, ok := r.times[path]; !ok {
			r.order = append(r.order, path)
		}
	}
	r.vals[path] = fmt.Sprint(v)
}

func (r *rec) time(path string, t time.Time) {
	if _, ok := r.vals[path]; !ok {
		if _, ok := r.times[path]; !ok {
			r.order = append(r.order, path)
		}
	}
	r.times[path] = r.w.span(t, r.s.coarse)
}

// err records an error's class and reports whether it is nil (the reply
// fields are compared only then: a failed call's reply is unspecified).
func (r *rec) err(path string, err error) bool {
	r.add(path+"err", errClass(err))
	return err == nil
}

func (r *rec) bytes(path string, b []byte) {
	// nil and empty are the same to a client (JSON null vs absent).
	r.add(path, strconv.Quote(string(b)))
}

func (r *rec) ref(path string, j *store.JobRef) {
	if j == nil {
		r.add(path, "nil")
		return
	}
	r.add(path, fmt.Sprintf("{sem=%s id=%s hold=%v}", j.Semaphore, j.ID, j.Hold))
}

// lease records a lease of tenant's semaphore.
func (r *rec) lease(p string, l store.Lease, tenant string) {
	name, isNew := r.s.nameOf('L', l.ID)
	sem := tenant + "/" + l.Semaphore
	if isNew && r.s == r.w.mem {
		r.w.leases = append(r.w.leases, leaseInfo{name: name, tenant: tenant, sem: l.Semaphore, gen: r.w.semGen[sem]})
	}
	r.add(p+"id", name)
	r.add(p+"semaphore", l.Semaphore)
	r.add(p+"channel", l.Channel)
	r.add(p+"weight", l.Weight)
	r.add(p+"fence", r.s.fenceRank(sem, l.FencingToken))
	r.add(p+"ttl", l.TTL)
	r.time(p+"acquiredAt", l.AcquiredAt)
	// expiresAt = (the time of the acquire, extend or hold that set it) + ttl
	r.time(p+"expiresAt-ttl", l.ExpiresAt.Add(-l.TTL))
}

func (r *rec) job(p string, j store.Job) {
	name, isNew := r.s.nameOf('J', j.ID)
	if isNew && r.s == r.w.mem {
		r.w.jobs = append(r.w.jobs, jobInfo{name: name, tenant: j.Tenant, sem: j.Semaphore, gen: r.w.semGen[j.Tenant+"/"+j.Semaphore]})
	}
	r.add(p+"id", name)
	r.add(p+"tenant", j.Tenant)
	r.add(p+"semaphore", j.Semaphore)
	r.add(p+"channel", j.Channel)
	r.bytes(p+"payload", j.Payload)
	r.add(p+"status", j.Status)
	r.add(p+"attempts", j.Attempts)
	if j.Lease != nil {
		r.lease(p+"lease.", *j.Lease, j.Tenant)
		if r.s == r.w.mem {
			ln := r.s.names[j.Lease.ID]
			if h := r.w.jobLeases[name]; len(h) == 0 || h[len(h)-1] != ln {
				r.w.jobLeases[name] = append(h, ln)
			}
		}
	} else {
		r.add(p+"lease", "nil")
	}
	r.add(p+"route", strconv.Quote(j.Route))
	r.add(p+"error", strconv.Quote(j.Error))
	r.add(p+"idempotencyKey", strconv.Quote(j.IdempotencyKey))
	r.ref(p+"parent", j.Parent)
	r.ref(p+"child", j.Child)
	r.time(p+"createdAt", j.CreatedAt)
	r.time(p+"updatedAt", j.UpdatedAt)
	r.time(p+"finishedAt", j.FinishedAt)
	r.s.lastJob[name] = j
}

// jobs records a list of jobs as p.len, p[0].id, ...
func (r *rec) jobs(p string, js []store.Job) {
	r.add(p+".len", len(js))
	for i, j := range js {
		r.job(fmt.Sprintf("%s[%d].", p, i), j)
	}
}

func (r *rec) events(ev store.JobEvents) {
	if len(ev.Dispatched) > 0 {
		r.jobs("event.dispatched", ev.Dispatched)
	}
	if len(ev.Finished) > 0 {
		r.jobs("event.finished", ev.Finished)
	}
}

func (r *rec) semaphore(p string, s store.Semaphore) {
	r.add(p+"name", s.Name)
	c := s.Config
	r.add(p+"maxValue", c.MaxValue)
	r.add(p+"maxValueScope", strconv.Quote(c.MaxValueScope))
	r.add(p+"leaseTimeout", c.LeaseTimeout)
	r.add(p+"maxAttempts", c.MaxAttempts)
	r.add(p+"onSessionLost", strconv.Quote(c.OnSessionLost))
	r.add(p+"onDeliveryError", strconv.Quote(c.OnDeliveryError))
	r.bytes(p+"extra", c.Extra)
	r.add(p+"retention", fmt.Sprintf("%v/%v", c.Retention.Done, c.Retention.Failed))
	r.add(p+"suspended", s.Suspended)
	r.time(p+"createdAt", s.CreatedAt)
	r.time(p+"updatedAt", s.UpdatedAt)
}

func (r *rec) state(p string, st store.SemaphoreState) {
	cs := func(p string, c store.ChannelState) {
		r.add(p+"inUse", c.InUse)
		r.add(p+"available", c.Available)
		r.add(p+"waiting", c.Waiting)
		r.add(p+"queued", c.Queued)
		r.add(p+"inflight", c.Inflight)
	}
	cs(p, st.ChannelState)
	chans := make([]string, 0, len(st.Channels))
	for c := range st.Channels {
		chans = append(chans, c)
	}
	sort.Strings(chans)
	r.add(p+"channels", strings.Join(chans, ","))
	for _, c := range chans {
		cs(p+"channel["+c+"].", st.Channels[c])
	}
}

func (r *rec) tenant(p string, t store.Tenant) {
	r.add(p+"id", strconv.Quote(t.ID))
	r.add(p+"name", strconv.Quote(t.Name))
	r.time(p+"createdAt", t.CreatedAt)
}

func (r *rec) key(p string, k store.APIKey) {
	r.add(p+"id", strconv.Quote(k.ID))
	r.add(p+"tenant", strconv.Quote(k.Tenant))
	r.add(p+"name", strconv.Quote(k.Name))
	r.add(p+"role", k.Role)
	r.add(p+"prefix", strconv.Quote(k.Prefix))
	r.add(p+"hash", strconv.Quote(k.Hash))
	r.time(p+"createdAt", k.CreatedAt)
}

// diff returns the fields where a (memory) and b (redis) disagree, and
// the raw times of the time fields among them.
func diff(a, b *rec) (diffs, times []string) {
	paths := union(a.order, b.order)
	show := func(r *rec, p string) string {
		if v, ok := r.vals[p]; ok {
			return v
		}
		if t, ok := r.times[p]; ok {
			return t.String()
		}
		return "<absent>"
	}
	for _, p := range paths {
		ta, okA := a.times[p]
		tb, okB := b.times[p]
		if okA && okB {
			if !ta.agrees(tb) {
				diffs = append(diffs, fmt.Sprintf("%s: memory=%s redis=%s (set in different operations, see the log)", p, ta, tb))
				times = append(times, fmt.Sprintf("%s: memory=%s redis=%s", p, ta.detail(), tb.detail()))
			}
			continue
		}
		if va, vb := show(a, p), show(b, p); va != vb || okA != okB {
			diffs = append(diffs, fmt.Sprintf("%s: memory=%s redis=%s", p, va, vb))
		}
	}
	return diffs, times
}

// sameRec reports the fields where two records of one store differ (for
// "nothing changed" expectations), times compared exactly.
func sameRec(before, after *rec) []string {
	var out []string
	for _, p := range union(before.order, after.order) {
		tb, okB := before.times[p]
		ta, okA := after.times[p]
		switch {
		case okA && okB:
			if !ta.t.Equal(tb.t) {
				out = append(out, p+" changed")
			}
		case before.vals[p] != after.vals[p]:
			out = append(out, fmt.Sprintf("%s: before=%s after=%s", p, orAbsent(before.vals, p), orAbsent(after.vals, p)))
		}
	}
	return out
}

// union returns a's elements, then those of b that a lacks.
func union(a, b []string) []string {
	out := slices.Clone(a)
	seen := make(map[string]bool, len(a))
	for _, x := range a {
		seen[x] = true
	}
	for _, x := range b {
		if !seen[x] {
			out = append(out, x)
		}
	}
	return out
}

func orAbsent(m map[string]string, k string) string {
	if v, ok := m[k]; ok {
		return v
	}
	return "<absent>"
}

// world is one rapid check: the two stores, the timeline, the history of
// operations, and what the generators draw from.
type world struct {
	rt       *rapid.T
	ctx      context.Context
	mem, red *side
	sides    []*side
	areas    area
	excl     map[string]bool // excluded edge-case categories
	stats    *stats          // operations run, by name and result

	bounds  []time.Time // the timeline's cut points (see span)
	history []string    // one line per operation
	expect  []string    // intended semantics violated by the running operation

	// What the generators pick from: names as the memory side gave them
	// (the same on the redis side while the two agree).
	leases    []leaseInfo
	jobs      []jobInfo
	jobLeases map[string][]string        // job name -> its leases, oldest first
	touched   map[string]bool            // "tenant/semaphore" pairs operated on
	maxValue  map[string]int64           // "tenant/semaphore" -> maxValue last put (memory)
	live      map[string]bool            // "tenant/semaphore" pairs that exist (memory)
	semGen    map[string]int             // "tenant/semaphore" -> how many times it was deleted (memory)
	keyIDs    map[string]map[string]bool // tenant -> ids of its live keys (both stores agreed)
	keyHashes map[string]bool            // hashes of live keys
	keyHash   map[string]string          // "tenant/id" -> hash of a live key
	nKey      int                        // key hashes made: h1..hN
	nKeyID    int                        // fresh key ids made: k-new1..
}

// leaseInfo and jobInfo are a lease and a job the generators may pick,
// with the generation of their semaphore (see world.semGen).
type leaseInfo struct {
	name, tenant, sem string
	gen               int
}

type jobInfo struct {
	name, tenant, sem string
	gen               int
}

// current reports whether the semaphore a lease or job was made in still
// exists (not deleted since, as far as the memory store said).
func (w *world) current(tenant, sem string, gen int) bool {
	k := tenant + "/" + sem
	return w.live[k] && w.semGen[k] == gen
}

// span normalizes a time (see span).
func (w *world) span(t time.Time, coarse bool) span {
	if t.IsZero() {
		return span{fixed: "zero"}
	}
	t = t.Round(0) // wall clock only
	for n, ft := range fixedTimes {
		if t.Equal(ft) {
			return span{fixed: n}
		}
	}
	idx := func(t time.Time) int {
		return sort.Search(len(w.bounds), func(i int) bool { return w.bounds[i].After(t) }) - 1
	}
	hi := t
	if coarse {
		hi = t.Add(time.Millisecond - time.Nanosecond)
	}
	return span{lo: idx(t), hi: idx(hi), t: t, coarse: coarse}
}

// mark cuts the timeline now.
func (w *world) mark() {
	t := time.Now().Round(0)
	if n := len(w.bounds); n > 0 && !t.After(w.bounds[n-1]) {
		t = w.bounds[n-1].Add(time.Nanosecond)
	}
	w.bounds = append(w.bounds, t)
}

// expectf records that a store's reply breaks the intended semantics.
func (w *world) expectf(s *side, format string, args ...any) {
	w.expect = append(w.expect, s.name+": "+fmt.Sprintf(format, args...))
}

// op runs one operation on both stores, memory first, and compares their
// replies and the job events each one produced; then the state of every
// semaphore operated on so far (checkState), and for tenant and key
// operations every key and tenant (checkKeys).
func (w *world) op(desc string, fn func(s *side, r *rec)) {
	w.expect = nil
	w.mark()
	recs := make([]*rec, len(w.sides))
	for i, s := range w.sides {
		s.takeEvents()
		r := w.newRec(s)
		fn(s, r)
		r.events(s.takeEvents())
		recs[i] = r
	}
	w.mark()
	res, short := recs[0].vals["err"], shortClass(recs[0].vals["err"])
	if rr := recs[1].vals["err"]; rr != res {
		res = "memory " + res + ", redis " + rr
		short = "memory " + short + ", redis " + shortClass(rr)
	}
	w.history = append(w.history, fmt.Sprintf("%s -> %s", desc, res))
	if w.stats != nil {
		opName, args, _ := strings.Cut(desc, "(")
		if _, a, ok := strings.Cut(args, " action="); ok { // TransitionJob
			a, _, _ = strings.Cut(a, " ")
			opName += " " + a
		}
		w.stats.add(opName + " -> " + short)
	}
	w.fail("reply", recs[0], recs[1])
	w.checkState()
	if w.areas&areaAuth != 0 {
		w.checkKeys()
	}
}

// checkState compares, in both stores, State and every job (ListJobs) of
// each semaphore operated on so far, and the job events of those reads.
func (w *world) checkState() {
	recs := make([]*rec, len(w.sides))
	for i, s := range w.sides {
		r := w.newRec(s)
		for _, k := range sortedKeys(w.touched) {
			tenant, name, _ := strings.Cut(k, "/")
			p := "state[" + k + "]."
			if st, err := s.st.State(w.ctx, tenant, name); r.err(p, err) {
				r.state(p, st)
			}
			p = "jobs[" + k + "]"
			jobs, next, err := s.st.ListJobs(w.ctx, store.ListJobsParams{Tenant: tenant, Semaphore: name, Limit: 1000})
			if r.err(p+".", err) {
				r.add(p+".next", strconv.Quote(next))
				r.jobs(p, jobs)
			}
		}
		r.events(s.takeEvents())
		recs[i] = r
	}
	w.fail("state after the operation", recs[0], recs[1])
}

// maxDiffLines bounds the fields a failure lists.
const maxDiffLines = 30

// fail ends the check when the stores disagreed (a and b: the records of
// memory and redis) or broke an intended semantics, with the operation,
// the fields and the operations of the check.
func (w *world) fail(what string, a, b *rec) {
	diffs, times := diff(a, b)
	if len(diffs) == 0 && len(w.expect) == 0 {
		return
	}
	if len(times) > 0 {
		w.rt.Logf("times of the fields that differ:\n    %s", strings.Join(times, "\n    "))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n=== memory and redis stores DISAGREE, %s of operation %d:\n    %s\n", what, len(w.history), w.history[len(w.history)-1])
	if len(diffs) > 0 {
		fmt.Fprintf(&sb, "--- fields that differ (%d):\n", len(diffs))
		for i, d := range diffs {
			if i == maxDiffLines {
				fmt.Fprintf(&sb, "    ... and %d more\n", len(diffs)-i)
				break
			}
			fmt.Fprintf(&sb, "    %s\n", d)
		}
	}
	if len(w.expect) > 0 {
		fmt.Fprintf(&sb, "--- intended semantics broken:\n")
		for _, e := range w.expect {
			fmt.Fprintf(&sb, "    %s\n", e)
		}
	}
	fmt.Fprintf(&sb, "--- operations of this check (result: error class or ok):\n")
	for i, h := range w.history {
		fmt.Fprintf(&sb, "    %2d. %s\n", i+1, h)
	}
	w.rt.Fatal(sb.String())
}

// touch records that an operation named a semaphore.
func (w *world) touch(tenant, sem string) {
	w.touched[tenant+"/"+sem] = true
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// shortClass is an error class without the message of "other".
func shortClass(c string) string {
	if strings.HasPrefix(c, "other:") {
		return "other"
	}
	return c
}

// stats counts the operations of a test by name and result (logged with
// -v, to see what the generators reach).
type stats struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *stats) add(k string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[k]++
}

func (s *stats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, k := range sortedKeys(s.n) {
		fmt.Fprintf(&b, "\n    %6d  %s", s.n[k], k)
	}
	return b.String()
}
