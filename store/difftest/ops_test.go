package difftest

import (
	"encoding/base64"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/store"
)

// Edge-case categories: inputs the generators draw only while their
// category is not excluded (-difftest.exclude=cat,cat; "known" stands for
// the four disagreements known when this test was written), to look past
// a disagreement that is already known.
const (
	// The four known disagreements (the intended semantics, which this
	// test also checks on each store on its own):
	catDeliveredEmptyRoute = "delivered-empty-route" // #1 ActDelivered with Route "" keeps the job's route
	catExtendTTL0          = "extend-ttl0"           // #2 Extend with TTL <= 0 uses leaseTimeout, else 60s
	catKeyDupID            = "key-dup-id"            // #3 CreateKey of an id the tenant has fails and changes nothing
	catScopeUnknown        = "scope-unknown"         // #4 PutSemaphore with an unknown maxValueScope fails alike

	// Other edge inputs.
	catScopeEmpty          = "scope-empty"             // PutSemaphore with maxValueScope ""
	catLeaseTimeoutNeg     = "lease-timeout-negative"  // PutSemaphore with leaseTimeout < 0
	catMaxValueZero        = "max-value-zero"          // PutSemaphore with maxValue 0
	catMaxAttemptsNeg      = "max-attempts-negative"   // PutSemaphore with maxAttempts < 0
	catKeyDupIDOtherTenant = "key-dup-id-other-tenant" // CreateKey of an id another tenant has
	catKeyDupHash          = "key-dup-hash"            // CreateKey of a hash a live key has
	catKeyEmpty            = "key-empty-id-or-hash"    // CreateKey with id or hash ""
	catTenantEmptyName     = "tenant-empty-name"       // CreateTenant with Name ""
	catTenantIDNotName     = "tenant-id-not-name"      // CreateTenant with an ID other than its Name
	catActionUnknown       = "action-unknown"          // TransitionJob with an unknown action
	catJobsCursorBad       = "jobs-cursor-bad"         // ListJobs with a cursor no store made
	catPurgeBadStatus      = "purge-bad-status"        // PurgeJobs of status inflight, "" or unknown
	catAcquireReplayHeavy  = "acquire-replay-heavy"    // Acquire replaying a key with a weight > maxValue
	catHandOffNoChild      = "handoff-no-child"        // ActHandOff with Child nil
	catRetentionBad        = "retention-bad"           // PutSemaphore with a retention < 0, > 30 days or not whole ms
)

// catNever marks an option left out.
const catNever = "-"

var (
	knownCats = []string{catDeliveredEmptyRoute, catExtendTTL0, catKeyDupID, catScopeUnknown}
	otherCats = []string{catScopeEmpty, catLeaseTimeoutNeg, catMaxValueZero, catMaxAttemptsNeg,
		catKeyDupIDOtherTenant, catKeyDupHash, catKeyEmpty, catTenantEmptyName, catTenantIDNotName,
		catActionUnknown, catJobsCursorBad, catPurgeBadStatus, catAcquireReplayHeavy, catHandOffNoChild,
		catRetentionBad}
)

var excludeFlag = flag.String("difftest.exclude", "",
	"comma-separated edge-case categories the generators leave out (see ops_test.go); "+
		"\"known\": the four known disagreements, \"others\": every other category")

// excluded returns the categories -difftest.exclude names.
func excluded() (map[string]bool, error) {
	out := map[string]bool{}
	for _, c := range strings.Split(*excludeFlag, ",") {
		switch c = strings.TrimSpace(c); {
		case c == "":
		case c == "known":
			for _, k := range knownCats {
				out[k] = true
			}
		case c == "others":
			for _, k := range otherCats {
				out[k] = true
			}
		case slices.Contains(knownCats, c) || slices.Contains(otherCats, c):
			out[c] = true
		default:
			return nil, fmt.Errorf("-difftest.exclude: unknown category %q (known: %s; others: %s)",
				c, strings.Join(knownCats, ","), strings.Join(otherCats, ","))
		}
	}
	return out, nil
}

// opt is a value a generator may draw, in an edge-case category or none.
type opt[T any] struct {
	v   T
	cat string
}

func o[T any](v T) opt[T]                { return opt[T]{v: v} }
func edge[T any](cat string, v T) opt[T] { return opt[T]{v: v, cat: cat} }

// pick draws one of the options whose category is not excluded.
func pick[T any](w *world, label string, opts ...opt[T]) T {
	var vs []T
	for _, x := range opts {
		if x.cat == "" || (x.cat != catNever && !w.excl[x.cat]) {
			vs = append(vs, x.v)
		}
	}
	return rapid.SampledFrom(vs).Draw(w.rt, label)
}

// mostly draws true n-1 times out of n (true first: rapid favours and
// shrinks towards the first option).
func (w *world) mostly(label string, n int) bool {
	return rapid.SampledFrom(append(slices.Repeat([]bool{true}, n-1), false)).Draw(w.rt, label)
}

// drawSem draws a semaphore: usually one that exists (as far as the
// memory store says), else any of t1/s1, t1/s2, t2/s1, t2/s2.
func (w *world) drawSem() (tenant, sem string) {
	if live := sortedKeys(w.live); len(live) > 0 && w.mostly("liveSemaphore", 5) {
		tenant, sem, _ = strings.Cut(rapid.SampledFrom(live).Draw(w.rt, "semaphore"), "/")
		return tenant, sem
	}
	tenant = pick(w, "tenant", o("t1"), o("t1"), o("t1"), o("t2"))
	sem = pick(w, "semaphore", o("s1"), o("s1"), o("s2"))
	return tenant, sem
}

func otherTenant(t string) string {
	if t == "t1" {
		return "t2"
	}
	return "t1"
}

// fakeID is a well-formed lease or job id of sem that no store made (job
// seq 1 for Redis, with a salt no semaphore has).
func fakeID(sem string) string {
	return strings.Repeat("0", 31) + "1." + base64.RawURLEncoding.EncodeToString([]byte(sem))
}

// drawLease draws a lease id: a known lease (live or not, usually of its
// own tenant), a well-formed unknown one, or garbage.
func (w *world) drawLease() (ref idRef, tenant string) {
	var kinds []string
	if len(w.leases) > 0 {
		kinds = slices.Repeat([]string{"known"}, 10)
	}
	kinds = append(kinds, "unknown", "garbage")
	switch rapid.SampledFrom(kinds).Draw(w.rt, "leaseKind") {
	case "known":
		// usually a lease of a semaphore that exists
		leases := w.leases
		var live []leaseInfo
		for _, l := range w.leases {
			if w.current(l.tenant, l.sem, l.gen) {
				live = append(live, l)
			}
		}
		if len(live) > 0 && w.mostly("liveLease", 10) {
			leases = live
		}
		l := rapid.SampledFrom(leases).Draw(w.rt, "lease")
		tenant = l.tenant
		if !w.mostly("leaseOwnTenant", 8) {
			tenant = otherTenant(tenant)
		}
		return idRef{name: l.name}, tenant
	case "unknown":
		return idRef{raw: fakeID(pick(w, "unknownLeaseSem", o("s1"), o("s2")))}, "t1"
	default:
		return idRef{raw: pick(w, "garbageLease", o(""), o("nope"), o("0123.czE"))}, "t1"
	}
}

// drawJob draws a job id like drawLease.
func (w *world) drawJob() (ref idRef, tenant string) {
	var kinds []string
	if len(w.jobs) > 0 {
		kinds = slices.Repeat([]string{"known"}, 20)
	}
	kinds = append(kinds, "unknown", "garbage")
	switch rapid.SampledFrom(kinds).Draw(w.rt, "jobKind") {
	case "known":
		// usually a job of a semaphore that exists
		jobs := w.jobs
		var live []jobInfo
		for _, j := range w.jobs {
			if w.current(j.tenant, j.sem, j.gen) {
				live = append(live, j)
			}
		}
		if len(live) > 0 && w.mostly("liveJob", 10) {
			jobs = live
			// often an inflight one: most actions apply to those only
			var inflight []jobInfo
			for _, j := range live {
				if w.mem.lastJob[j.name].Status == store.JobInflight {
					inflight = append(inflight, j)
				}
			}
			if len(inflight) > 0 && w.mostly("inflightJob", 2) {
				jobs = inflight
			}
		}
		j := rapid.SampledFrom(jobs).Draw(w.rt, "job")
		tenant = j.tenant
		if !w.mostly("jobOwnTenant", 16) {
			tenant = otherTenant(tenant)
		}
		return idRef{name: j.name}, tenant
	case "unknown":
		return idRef{raw: fakeID(pick(w, "unknownJobSem", o("s1"), o("s2")))}, "t1"
	default:
		return idRef{raw: pick(w, "garbageJob", o(""), o("nope"))}, "t1"
	}
}

// ---------------------------------------------------------------- semaphores

// drawConfig draws a semaphore's config; edge values (invalid ones) only
// with edges.
func (w *world) drawConfig(edges bool) store.SemaphoreConfig {
	e := func(cat string) string {
		if !edges {
			return catNever
		}
		return cat
	}
	return store.SemaphoreConfig{
		MaxValue: pick(w, "maxValue", o[int64](1), o[int64](2), o[int64](3), o[int64](1), o[int64](5),
			edge(e(catMaxValueZero), int64(0))),
		MaxValueScope: pick(w, "scope", o(store.ScopeTotal), o(store.ScopeChannel), o(store.ScopeTotal), o(store.ScopeChannel),
			edge(e(catScopeEmpty), ""), edge(e(catScopeUnknown), "bogus")),
		LeaseTimeout: pick(w, "leaseTimeout", o(time.Duration(0)), o(3*time.Minute), o(10*time.Minute), o(time.Duration(0)),
			edge(e(catLeaseTimeoutNeg), -time.Second)),
		MaxAttempts:     pick(w, "maxAttempts", o(1), o(2), o(3), o(0), edge(e(catMaxAttemptsNeg), -1)),
		OnSessionLost:   pick(w, "onSessionLost", o(""), o("release")),
		OnDeliveryError: pick(w, "onDeliveryError", o(""), o("suspend")),
		Extra:           pick(w, "extra", o([]byte(nil)), o([]byte(`{"routes":[{"type":"https"}]}`))),
		// 0 (deleted at once) or longer than a run, so the stores' clocks
		// need not agree on an instant
		Retention: store.Retention{
			Done: pick(w, "retentionDone", o(time.Duration(0)), o(time.Hour), o(store.MaxRetention),
				edge(e(catRetentionBad), -time.Millisecond), edge(e(catRetentionBad), store.MaxRetention+time.Millisecond)),
			Failed: pick(w, "retentionFailed", o(time.Duration(0)), o(time.Hour), o(time.Hour),
				edge(e(catRetentionBad), time.Microsecond)),
		},
	}
}

func scopeKnown(s string) bool { return s == store.ScopeTotal || s == store.ScopeChannel || s == "" }

// semSnapshot reads a semaphore and its state, for "nothing changed".
func (w *world) semSnapshot(s *side, tenant, name string) *rec {
	r := w.newRec(s)
	if sem, err := s.st.GetSemaphore(w.ctx, tenant, name); r.err("get.", err) {
		r.semaphore("get.", sem)
	}
	if st, err := s.st.State(w.ctx, tenant, name); r.err("state.", err) {
		r.state("state.", st)
	}
	return r
}

func (w *world) putSemaphore() {
	tenant, name := w.drawSem()
	w.putSemaphoreOf(tenant, name, true)
}

// putSemaphoreOf puts a semaphore with a drawn config (edges: maybe an
// invalid one).
func (w *world) putSemaphoreOf(tenant, name string, edges bool) {
	cfg := w.drawConfig(edges)
	w.touch(tenant, name)
	desc := fmt.Sprintf("PutSemaphore(%s/%s maxValue=%d scope=%q leaseTimeout=%v maxAttempts=%d onSessionLost=%q onDeliveryError=%q extra=%q retention=%v/%v)",
		tenant, name, cfg.MaxValue, cfg.MaxValueScope, cfg.LeaseTimeout, cfg.MaxAttempts, cfg.OnSessionLost, cfg.OnDeliveryError, cfg.Extra,
		cfg.Retention.Done, cfg.Retention.Failed)
	w.op(desc, func(s *side, r *rec) {
		var before *rec
		if !scopeKnown(cfg.MaxValueScope) {
			before = w.semSnapshot(s, tenant, name)
		}
		sem, created, err := s.st.PutSemaphore(w.ctx, store.PutSemaphoreParams{Tenant: tenant, Name: name, Config: cfg})
		if err == nil && s == w.mem {
			w.maxValue[tenant+"/"+name] = cfg.MaxValue
			w.live[tenant+"/"+name] = true
		}
		if r.err("", err) {
			r.semaphore("sem.", sem)
			r.add("created", created)
		}
		if before != nil {
			if err == nil {
				w.expectf(s, "#4 PutSemaphore with the unknown maxValueScope %q must fail; it was accepted", cfg.MaxValueScope)
			}
			if d := sameRec(before, w.semSnapshot(s, tenant, name)); len(d) > 0 {
				w.expectf(s, "#4 a rejected PutSemaphore must change nothing; changed: %s", strings.Join(d, "; "))
			}
		}
	})
}

func (w *world) getSemaphore() {
	tenant, name := w.drawSem()
	w.touch(tenant, name)
	w.op(fmt.Sprintf("GetSemaphore(%s/%s)", tenant, name), func(s *side, r *rec) {
		if sem, err := s.st.GetSemaphore(w.ctx, tenant, name); r.err("", err) {
			r.semaphore("sem.", sem)
		}
	})
}

func (w *world) listSemaphores() {
	tenant := pick(w, "tenant", o("t1"), o("t2"), o("t3"))
	limit := pick(w, "limit", o(0), o(1), o(2))
	cursor := pick(w, "cursor", o(""), o(""), o("s1"), o("a"), o("s9"))
	w.op(fmt.Sprintf("ListSemaphores(%s limit=%d cursor=%q)", tenant, limit, cursor), func(s *side, r *rec) {
		sems, next, err := s.st.ListSemaphores(w.ctx, store.ListParams{Tenant: tenant, Cursor: cursor, Limit: limit})
		if r.err("", err) {
			r.add("len", len(sems))
			for i, sem := range sems {
				r.semaphore(fmt.Sprintf("sems[%d].", i), sem)
			}
			r.add("next", strconv.Quote(next))
		}
	})
}

func (w *world) deleteSemaphore() {
	tenant, name := w.drawSem()
	w.touch(tenant, name)
	w.op(fmt.Sprintf("DeleteSemaphore(%s/%s)", tenant, name), func(s *side, r *rec) {
		err := s.st.DeleteSemaphore(w.ctx, tenant, name)
		if err == nil && s == w.mem {
			delete(w.live, tenant+"/"+name)
			w.semGen[tenant+"/"+name]++
		}
		r.err("", err)
	})
	// usually created again at once (fencing tokens and job ids across a
	// re-creation; and later operations have a semaphore to work on)
	if w.mostly("recreate", 4) {
		w.putSemaphoreOf(tenant, name, false)
	}
}

func (w *world) setSuspended() {
	tenant, name := w.drawSem()
	susp := pick(w, "suspended", o(true), o(false))
	w.touch(tenant, name)
	w.op(fmt.Sprintf("SetSuspended(%s/%s %v)", tenant, name, susp), func(s *side, r *rec) {
		if sem, err := s.st.SetSuspended(w.ctx, tenant, name, susp); r.err("", err) {
			r.semaphore("sem.", sem)
		}
	})
}

func (w *world) sweep() {
	w.op("Sweep()", func(s *side, r *rec) {
		if n, err := s.st.Sweep(w.ctx); r.err("", err) {
			r.add("expired", n)
		}
	})
}

// ---------------------------------------------------------------- leases

func (w *world) acquire() {
	tenant, name := w.drawSem()
	p := store.AcquireParams{
		Tenant: tenant, Semaphore: name,
		Channel:        pick(w, "channel", o(""), o(store.DefaultChannel), o("a"), o("b")),
		Weight:         pick(w, "weight", o[int64](1), o[int64](1), o[int64](2), o[int64](3), o[int64](0), o[int64](-1), o[int64](6)),
		TTL:            pick(w, "ttl", o(time.Duration(0)), o(2*time.Minute), o(5*time.Minute), o(-time.Second)),
		IdempotencyKey: pick(w, "idempotencyKey", o(""), o(""), o("k1"), o("k2")),
	}
	if mv, ok := w.maxValue[tenant+"/"+name]; ok && p.IdempotencyKey != "" && max(p.Weight, 1) > mv && w.excl[catAcquireReplayHeavy] {
		p.IdempotencyKey = "" // a key's replay with a weight > maxValue is the edge case
	}
	w.touch(tenant, name)
	desc := fmt.Sprintf("Acquire(%s/%s channel=%q weight=%d ttl=%v key=%q wait=0)", tenant, name, p.Channel, p.Weight, p.TTL, p.IdempotencyKey)
	w.op(desc, func(s *side, r *rec) {
		if l, err := s.st.Acquire(w.ctx, p); r.err("", err) {
			r.lease("lease.", l, tenant)
		}
	})
}

// expectedTTL is the ttl an Extend with TTL <= 0 must give a lease of
// the semaphore named in id: its leaseTimeout, else 60 s (#2).
func (w *world) expectedTTL(s *side, tenant, id string) (time.Duration, bool) {
	name, ok := store.ParseLeaseID(id)
	if !ok {
		return 0, false
	}
	sem, err := s.st.GetSemaphore(w.ctx, tenant, name)
	if err != nil {
		return 0, false
	}
	if lt := sem.Config.LeaseTimeout; lt > 0 {
		return lt, true
	}
	return 60 * time.Second, true
}

func (w *world) extend() {
	if len(w.leases) == 0 && w.mostly("acquireFirst", 4) {
		w.acquire() // nothing to act on yet
		return
	}
	ref, tenant := w.drawLease()
	ttl := pick(w, "ttl", o(3*time.Minute), o(7*time.Minute),
		edge(catExtendTTL0, time.Duration(0)), edge(catExtendTTL0, -time.Second))
	w.op(fmt.Sprintf("Extend(%s lease=%s ttl=%v)", tenant, ref, ttl), func(s *side, r *rec) {
		id := s.raw(ref)
		want, wantOK := w.expectedTTL(s, tenant, id)
		l, err := s.st.Extend(w.ctx, store.ExtendParams{Tenant: tenant, LeaseID: id, TTL: ttl})
		if r.err("", err) {
			r.lease("lease.", l, tenant)
			if ttl <= 0 && wantOK && l.TTL != want {
				w.expectf(s, "#2 Extend with TTL %v must use the semaphore's leaseTimeout (else 60s): got ttl %v, want %v", ttl, l.TTL, want)
			}
		}
	})
}

func (w *world) release() {
	if len(w.leases) == 0 && w.mostly("acquireFirst", 4) {
		w.acquire() // nothing to act on yet
		return
	}
	ref, tenant := w.drawLease()
	w.op(fmt.Sprintf("Release(%s lease=%s)", tenant, ref), func(s *side, r *rec) {
		if l, err := s.st.Release(w.ctx, store.ReleaseParams{Tenant: tenant, LeaseID: s.raw(ref)}); r.err("", err) {
			r.lease("lease.", l, tenant)
		}
	})
}

// ---------------------------------------------------------------- jobs

func (w *world) enqueue() {
	tenant, name := w.drawSem()
	p := store.EnqueueParams{
		Tenant: tenant, Semaphore: name,
		Channel:        pick(w, "channel", o(""), o(store.DefaultChannel), o("a"), o("b")),
		Payload:        pick(w, "payload", o([]byte(`{"n":1}`)), o([]byte(nil)), o([]byte(`[1,2]`))),
		IdempotencyKey: pick(w, "idempotencyKey", o(""), o(""), o("j1"), o("j2")),
		MaxQueued:      pick(w, "maxQueued", o[int64](0), o[int64](0), o[int64](1), o[int64](2), o[int64](-1)),
		Parent:         pick(w, "parent", o[*store.JobRef](nil), o(&store.JobRef{Semaphore: "p", ID: "parent-1", Hold: true})),
	}
	w.touch(tenant, name)
	desc := fmt.Sprintf("EnqueueJob(%s/%s channel=%q payload=%q key=%q maxQueued=%d parent=%v)",
		tenant, name, p.Channel, p.Payload, p.IdempotencyKey, p.MaxQueued, p.Parent != nil)
	w.op(desc, func(s *side, r *rec) {
		j, created, err := s.st.EnqueueJob(w.ctx, p)
		if r.err("", err) {
			r.job("job.", j)
			r.add("created", created)
		}
	})
}

func (w *world) enqueueBatch() {
	tenant, name := w.drawSem()
	p := store.EnqueueBatchParams{
		Tenant: tenant, Semaphore: name,
		MaxQueued: pick(w, "batchMaxQueued", o[int64](0), o[int64](0), o[int64](2), o[int64](4)),
	}
	n := pick(w, "batchSize", o(1), o(2), o(3), o(5))
	for range n {
		p.Jobs = append(p.Jobs, store.EnqueueItem{
			Channel:        pick(w, "channel", o(""), o(store.DefaultChannel), o("a"), o("b")),
			Payload:        pick(w, "payload", o([]byte(`{"n":1}`)), o([]byte(`[1,2]`))),
			IdempotencyKey: pick(w, "idempotencyKey", o(""), o(""), o("j1"), o("j2")),
		})
	}
	w.touch(tenant, name)
	items := make([]string, len(p.Jobs))
	for i, it := range p.Jobs {
		items[i] = fmt.Sprintf("{channel=%q payload=%s key=%q}", it.Channel, it.Payload, it.IdempotencyKey)
	}
	desc := fmt.Sprintf("EnqueueJobs(%s/%s maxQueued=%d jobs=%s)", tenant, name, p.MaxQueued, strings.Join(items, " "))
	w.op(desc, func(s *side, r *rec) {
		res, err := s.st.EnqueueJobs(w.ctx, p)
		if r.err("", err) {
			r.add("results", len(res))
			for i, x := range res {
				r.job(fmt.Sprintf("job%d.", i), x.Job)
				r.add(fmt.Sprintf("created%d", i), x.Created)
			}
		}
	})
}

func (w *world) transition() {
	if len(w.jobs) == 0 && w.mostly("enqueueFirst", 4) {
		w.enqueue() // nothing to act on yet
		return
	}
	ref, tenant := w.drawJob()
	action := pick(w, "action",
		o(store.ActDelivered), o(store.ActDelivered), o(store.ActDelivered), o(store.ActRelease), o(store.ActFail), o(store.ActRetry),
		o(store.ActSuspend), o(store.ActCancel), o(store.ActRequeue), o(store.ActHandOff), o(store.ActHandOff),
		edge(catActionUnknown, store.JobAction("bogus")))
	var route string
	if action == store.ActDelivered {
		if w.mem.lastJob[ref.name].Route != "" {
			// delivered again: does an empty Route keep the route?
			route = pick(w, "route", edge(catDeliveredEmptyRoute, ""), o("websocket"))
		} else {
			route = pick(w, "route", o("https"), o("websocket"), edge(catDeliveredEmptyRoute, ""))
		}
	} else {
		route = pick(w, "route", o(""), o("https"))
	}
	p := store.TransitionParams{
		Tenant: tenant, Action: action, Route: route,
		Error:   pick(w, "error", o(""), o("boom")),
		HoldTTL: pick(w, "holdTTL", o(time.Duration(0)), o(4*time.Minute), o(-time.Second)),
		Quiet:   pick(w, "quiet", o(false), o(false), o(false), o(true)),
	}
	if action == store.ActHandOff {
		child1 := &store.JobRef{Semaphore: "c", ID: "child-1"}
		child2 := &store.JobRef{Semaphore: "c", ID: "child-2", Hold: true}
		if w.mem.lastJob[ref.name].Child != nil {
			// handed off again: what does a nil Child do to the earlier one?
			p.Child = pick(w, "child", edge[*store.JobRef](catHandOffNoChild, nil), o(child1), o(child2))
		} else {
			p.Child = pick(w, "child", o(child1), o(child2), edge[*store.JobRef](catHandOffNoChild, nil))
		}
	}
	// The lease the job must still hold: none, the job's current one (per
	// store), one of its leases (maybe stale), a sync lease, an unknown one.
	leaseMode := pick(w, "leaseMode", o("none"), o("none"), o("current"), o("current"), o("history"), o("other"), o("unknown"))
	var leaseRef idRef
	switch leaseMode {
	case "history":
		if h := w.jobLeases[ref.name]; len(h) > 0 {
			leaseRef = idRef{name: rapid.SampledFrom(h).Draw(w.rt, "historyLease")}
		}
	case "other":
		if len(w.leases) > 0 {
			leaseRef = idRef{name: rapid.SampledFrom(w.leases).Draw(w.rt, "otherLease").name}
		}
	case "unknown":
		leaseRef = idRef{raw: fakeID("s1")}
	}
	leaseDesc := leaseMode
	if leaseRef != (idRef{}) {
		leaseDesc = leaseRef.String()
	}
	desc := fmt.Sprintf("TransitionJob(%s job=%s action=%s lease=%s route=%q error=%q holdTTL=%v child=%s quiet=%v)",
		tenant, ref, action, leaseDesc, p.Route, p.Error, p.HoldTTL, fmtRef(p.Child), p.Quiet)
	w.op(desc, func(s *side, r *rec) {
		p := p
		p.JobID = s.raw(ref)
		before, known := s.lastJob[ref.name]
		switch {
		case leaseMode == "current":
			if known && before.Lease != nil {
				p.LeaseID = before.Lease.ID
			}
		case leaseRef != (idRef{}):
			p.LeaseID = s.raw(leaseRef)
		}
		j, err := s.st.TransitionJob(w.ctx, p)
		if r.err("", err) && !p.Quiet { // a quiet transition may return a zero Job
			r.job("job.", j)
		}
		// the affected job's record
		after, err2 := s.st.GetJob(w.ctx, tenant, p.JobID)
		if r.err("after.job.", err2) {
			r.job("after.job.", after)
		}
		if err == nil && err2 == nil && action == store.ActDelivered && p.Route == "" && known && after.Route != before.Route {
			w.expectf(s, "#1 ActDelivered with an empty Route must keep the job's route %q; it is now %q", before.Route, after.Route)
		}
	})
}

// fmtTime shows a time the test passes: zero or one of fixedTimes.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "zero"
	}
	for n, ft := range fixedTimes {
		if ft.Equal(t) {
			return n
		}
	}
	return t.String()
}

func fmtRef(j *store.JobRef) string {
	if j == nil {
		return "nil"
	}
	return fmt.Sprintf("{%s %s hold=%v}", j.Semaphore, j.ID, j.Hold)
}

func (w *world) dispatchJobs() {
	tenant, name := w.drawSem()
	n := pick(w, "max", o(0), o(1), o(2), o(-1))
	w.touch(tenant, name)
	w.op(fmt.Sprintf("DispatchJobs(%s/%s max=%d)", tenant, name, n), func(s *side, r *rec) {
		if jobs, err := s.st.DispatchJobs(w.ctx, store.DispatchParams{Tenant: tenant, Semaphore: name, Max: n}); r.err("", err) {
			r.jobs("dispatched", jobs)
		}
	})
}

func (w *world) getJob() {
	ref, tenant := w.drawJob()
	w.op(fmt.Sprintf("GetJob(%s job=%s)", tenant, ref), func(s *side, r *rec) {
		if j, err := s.st.GetJob(w.ctx, tenant, s.raw(ref)); r.err("", err) {
			r.job("job.", j)
		}
	})
}

func (w *world) listJobs() {
	tenant, name := w.drawSem()
	status := pick(w, "status", o(store.JobStatus("")), o(store.JobStatus("")), o(store.JobScheduled), o(store.JobInflight),
		o(store.JobDone), o(store.JobError), o(store.JobTimeout), o(store.JobCancelled), o(store.JobStatus("bogus")))
	channel := pick(w, "channel", o(""), o(""), o("a"), o("b"), o(store.DefaultChannel))
	limit := pick(w, "limit", o(0), o(1), o(2))
	cursor := pick(w, "cursor", o(""), o(""), o(""), edge(catJobsCursorBad, "x"), edge(catJobsCursorBad, "-1"))
	w.touch(tenant, name)
	desc := fmt.Sprintf("ListJobs(%s/%s status=%q channel=%q limit=%d cursor=%q, all pages)", tenant, name, status, channel, limit, cursor)
	w.op(desc, func(s *side, r *rec) {
		// Cursors are opaque: each store pages with its own.
		cur := cursor
		r.add("err", "ok") // the first error of a page, if any
		for page := 0; page < 20; page++ {
			p := fmt.Sprintf("page[%d].", page)
			jobs, next, err := s.st.ListJobs(w.ctx, store.ListJobsParams{
				Tenant: tenant, Semaphore: name, Status: status, Channel: channel, Cursor: cur, Limit: limit,
			})
			if !r.err(p, err) {
				r.add("err", errClass(err))
				break
			}
			r.jobs(p+"jobs", jobs)
			r.add(p+"more", next != "")
			if next == "" {
				break
			}
			cur = next
		}
	})
}

func (w *world) purgeJobs() {
	tenant, name := w.drawSem()
	status := pick(w, "status", o(store.JobScheduled), o(store.JobDone), o(store.JobError), o(store.JobTimeout),
		o(store.JobCancelled), edge(catPurgeBadStatus, store.JobInflight), edge(catPurgeBadStatus, store.JobStatus("")),
		edge(catPurgeBadStatus, store.JobStatus("bogus")))
	w.touch(tenant, name)
	ch := pick(w, "purgeChannel", o(""), o(""), o("a"), o("b"), o(store.DefaultChannel))
	w.op(fmt.Sprintf("PurgeJobs(%s/%s status=%q channel=%q)", tenant, name, status, ch), func(s *side, r *rec) {
		if n, err := s.st.PurgeJobs(w.ctx, store.PurgeJobsParams{Tenant: tenant, Semaphore: name, Status: status, Channel: ch}); r.err("", err) {
			r.add("purged", n)
		}
	})
}

// ---------------------------------------------------------------- tenants and keys

func (w *world) createTenant() {
	name := pick(w, "tenantName", o("t1"), o("t2"), o("t3"), edge(catTenantEmptyName, ""))
	id := pick(w, "tenantID", o(""), o(name), edge(catTenantIDNotName, "tid"))
	created := pick(w, "createdAt", o(time.Time{}), o(fixedTimes["fixed-1"]))
	w.op(fmt.Sprintf("CreateTenant(id=%q name=%q createdAt=%s)", id, name, fmtTime(created)), func(s *side, r *rec) {
		if t, err := s.st.CreateTenant(w.ctx, store.Tenant{ID: id, Name: name, CreatedAt: created}); r.err("", err) {
			r.tenant("tenant.", t)
		}
	})
}

func (w *world) listTenants() {
	w.op("ListTenants()", func(s *side, r *rec) {
		if ts, err := s.st.ListTenants(w.ctx); r.err("", err) {
			r.add("len", len(ts))
			for i, t := range ts {
				r.tenant(fmt.Sprintf("tenants[%d].", i), t)
			}
		}
	})
}

var keyIDPool = []string{"k1", "k2", "k3"}

// keysSnapshot reads every key of both tenants and every hash used so far.
func (w *world) keysSnapshot(s *side) *rec {
	r := w.newRec(s)
	for _, t := range []string{"t1", "t2"} {
		p := "keys[" + t + "]."
		if ks, err := s.st.ListKeys(w.ctx, t); r.err(p, err) {
			r.add(p+"len", len(ks))
			for i, k := range ks {
				r.key(fmt.Sprintf("%s[%d].", p, i), k)
			}
		}
	}
	for _, h := range w.hashesUsed() {
		p := "byHash[" + h + "]."
		if k, err := s.st.KeyByHash(w.ctx, h); r.err(p, err) {
			r.key(p, k)
		}
	}
	return r
}

func (w *world) hashesUsed() []string {
	out := []string{"h-unknown"}
	for i := 1; i <= w.nKey; i++ {
		out = append(out, "h"+strconv.Itoa(i))
	}
	return out
}

func (w *world) createKey() {
	tenant := pick(w, "tenant", o("t1"), o("t1"), o("t2"))
	// ids: one the tenant has (#3), one another tenant has, a new one
	var ids []opt[string]
	for _, id := range keyIDPool {
		switch {
		case w.keyIDs[tenant][id]:
			ids = append(ids, edge(catKeyDupID, id))
		case w.keyIDs[otherTenant(tenant)][id]:
			ids = append(ids, edge(catKeyDupIDOtherTenant, id))
		default:
			ids = append(ids, o(id))
		}
	}
	ids = append(ids, o("k-new"), edge(catKeyEmpty, ""))
	id := pick(w, "keyID", ids...)
	if id == "k-new" {
		w.nKeyID++
		id = "k-new" + strconv.Itoa(w.nKeyID)
	}
	hashes := []opt[string]{o("new"), o("new"), o("new"), edge(catKeyEmpty, "")}
	for _, h := range sortedKeys(w.keyHashes) {
		hashes = append(hashes, edge(catKeyDupHash, h))
	}
	hash := pick(w, "keyHash", hashes...)
	if hash == "new" {
		w.nKey++
		hash = "h" + strconv.Itoa(w.nKey)
	}
	k := store.APIKey{
		ID: id, Tenant: tenant, Name: "ci", Prefix: "sd_" + hash, Hash: hash,
		Role:      pick(w, "role", o(store.RoleWorker), o(store.RoleAdmin), o(store.RoleOperator)),
		CreatedAt: pick(w, "createdAt", o(time.Time{}), o(time.Time{}), o(fixedTimes["fixed-1"]), o(fixedTimes["fixed-2"])),
	}
	dupID := id != "" && w.keyIDs[tenant][id]
	var errs [2]error
	desc := fmt.Sprintf("CreateKey(tenant=%s id=%q hash=%q role=%s createdAt=%s)", tenant, id, hash, k.Role, fmtTime(k.CreatedAt))
	w.op(desc, func(s *side, r *rec) {
		var before *rec
		if dupID {
			before = w.keysSnapshot(s)
		}
		err := s.st.CreateKey(w.ctx, k)
		r.err("", err)
		if s == w.red {
			errs[1] = err
		} else {
			errs[0] = err
		}
		if dupID {
			if err == nil {
				w.expectf(s, "#3 CreateKey of the id %q that tenant %s already has must fail; it succeeded", id, tenant)
			}
			if d := sameRec(before, w.keysSnapshot(s)); len(d) > 0 {
				w.expectf(s, "#3 a CreateKey of an existing id must change nothing; changed: %s", strings.Join(d, "; "))
			}
		}
	})
	if errs[0] == nil && errs[1] == nil {
		if w.keyIDs[tenant] == nil {
			w.keyIDs[tenant] = map[string]bool{}
		}
		w.keyIDs[tenant][id] = true
		w.keyHashes[hash] = true
		w.keyHash[tenant+"/"+id] = hash
	}
}

func (w *world) keyByHash() {
	hash := rapid.SampledFrom(w.hashesUsed()).Draw(w.rt, "hash")
	w.op(fmt.Sprintf("KeyByHash(%q)", hash), func(s *side, r *rec) {
		if k, err := s.st.KeyByHash(w.ctx, hash); r.err("", err) {
			r.key("key.", k)
		}
	})
}

func (w *world) listKeys() {
	tenant := pick(w, "tenant", o("t1"), o("t2"), o("t3"))
	w.op(fmt.Sprintf("ListKeys(%s)", tenant), func(s *side, r *rec) {
		if ks, err := s.st.ListKeys(w.ctx, tenant); r.err("", err) {
			r.add("len", len(ks))
			for i, k := range ks {
				r.key(fmt.Sprintf("keys[%d].", i), k)
			}
		}
	})
}

func (w *world) deleteKey() {
	tenant := pick(w, "tenant", o("t1"), o("t1"), o("t2"))
	id := pick(w, "keyID", o("k1"), o("k2"), o("k3"), o("k-unknown"))
	var errs [2]error
	w.op(fmt.Sprintf("DeleteKey(tenant=%s id=%q)", tenant, id), func(s *side, r *rec) {
		err := s.st.DeleteKey(w.ctx, tenant, id)
		r.err("", err)
		if s == w.red {
			errs[1] = err
		} else {
			errs[0] = err
		}
	})
	if errs[0] == nil && errs[1] == nil {
		delete(w.keyIDs[tenant], id)
		delete(w.keyHashes, w.keyHash[tenant+"/"+id])
	}
}

// checkKeys compares tenants and keys (after an operation on them).
func (w *world) checkKeys() {
	recs := make([]*rec, len(w.sides))
	for i, s := range w.sides {
		r := w.keysSnapshot(s)
		if ts, err := s.st.ListTenants(w.ctx); r.err("tenants.", err) {
			r.add("tenants.len", len(ts))
			for i, t := range ts {
				r.tenant(fmt.Sprintf("tenants[%d].", i), t)
			}
		}
		recs[i] = r
	}
	w.fail("tenants and keys after the operation", recs[0], recs[1])
}
