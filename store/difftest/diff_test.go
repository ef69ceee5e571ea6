// Package difftest drives the memory store and the Redis store with the
// same random sequences of operations (pgregory.net/rapid) and compares
// every reply, every job event and the resulting state, field by field.
//
// What is compared, normalized where the two may legitimately differ:
//
//   - errors by class: the store sentinel an error matches, or
//     "other:<message>" (errclass_test.go); a failed call's reply is not
//     compared (it is unspecified);
//   - generated lease and job ids by stable names given in order of first
//     sight per store (L1, J1, ...); fencing tokens by their rank among the
//     tokens of their semaphore (memory seeds them from the clock, Redis
//     counts from 1);
//   - times by the operation they were set in: the run's timeline is cut
//     at the start and end of every operation, and a time must fall in the
//     same interval in both stores (Redis' ms granularity allowed for). A
//     lease's expiresAt is compared as its ttl plus the time it was set;
//   - maps (State's channels) in key order; a nil and an empty payload or
//     Extra as the same; ListJobs cursors only as "more pages or not" (each
//     store pages with its own).
//
// After every operation the state of every semaphore operated on so far
// is compared (State, and every job by ListJobs), and for tenant and key
// operations every key (ListKeys, KeyByHash) and tenant. Nothing expires
// during a check: every ttl is minutes long.
//
// Besides the differential comparison, four intended semantics (where
// the two stores were known to disagree) are checked on each store on its
// own:
//
//  1. TransitionJob ActDelivered with an empty Route keeps the job's route;
//  2. Extend with TTL <= 0 uses the semaphore's leaseTimeout, else 60 s;
//  3. CreateKey with an id the tenant already has fails in both stores,
//     with the same error class, and changes nothing;
//  4. PutSemaphore with an unknown maxValueScope fails in both stores,
//     with the same error class, and changes nothing.
//
// A failure names the operation, every field that differs (memory's and
// redis' value) or the intended semantics broken, and the operations of
// the (shrunk) check. -difftest.exclude=cat,... leaves edge-case inputs
// out, to look past a known disagreement (ops_test.go lists them).
package difftest

import (
	"context"
	"flag"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// area selects the operations a test draws.
type area int

const (
	areaSem  area = 1 << iota // semaphores and sync leases
	areaJobs                  // jobs
	areaAuth                  // tenants and API keys
)

// TestDiffSemaphores: semaphore configs, suspend, delete, acquire,
// extend, release, sweep.
func TestDiffSemaphores(t *testing.T) {
	runDiff(t, testredis.Client(t), areaSem)
}

// TestDiffJobs: the above with jobs: enqueue, every transition, dispatch,
// get, list, purge.
func TestDiffJobs(t *testing.T) {
	runDiff(t, testredis.Client(t), areaSem|areaJobs)
}

// TestDiffTenantsKeys: tenants and API keys.
func TestDiffTenantsKeys(t *testing.T) {
	runDiff(t, testredis.Client(t), areaAuth)
}

// TestDiffCluster: everything, with Redis a three-master Redis Cluster;
// fewer checks (see clusterChecks).
func TestDiffCluster(t *testing.T) {
	addrs := testredis.StartCluster(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = c.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(t.Context()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the cluster does not answer")
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer withDefaultChecks(clusterChecks)()
	runDiff(t, c, areaSem|areaJobs|areaAuth)
}

// clusterChecks is the default number of rapid checks of TestDiffCluster
// (-rapid.checks, when given, applies instead).
const clusterChecks = 50

// withDefaultChecks sets rapid's number of checks to n unless the command
// line set it, and returns the function that restores it.
func withDefaultChecks(n int) func() {
	if flagSet("rapid.checks") {
		return func() {}
	}
	f := flag.Lookup("rapid.checks")
	old := f.Value.String()
	_ = f.Value.Set(itoa(n))
	return func() { _ = f.Value.Set(old) }
}

// runDiff runs the rapid checks: each on a fresh memory store and a fresh
// Redis store (a new key prefix) on client.
func runDiff(t *testing.T, client redis.UniversalClient, areas area) {
	loadSentinels(t)
	excl, err := excluded()
	if err != nil {
		t.Fatal(err)
	}
	if len(excl) > 0 {
		t.Logf("edge cases left out: %v", sortedKeys(excl))
	}
	st := &stats{}
	defer func() { t.Logf("operations run (in every check, and in shrinking), by result:%s", st) }()
	rapid.Check(t, func(rt *rapid.T) {
		mem := memory.New(memory.Options{})
		defer mem.Close()
		red, err := redisstore.New(client, redisstore.Options{Prefix: testredis.Prefix(t)})
		if err != nil {
			rt.Fatalf("redis store: %v", err)
		}
		defer red.Close()
		w := newWorld(t.Context(), rt, mem, red, areas, excl, st)
		w.run()
	})
}

func newWorld(ctx context.Context, rt *rapid.T, mem, red store.Store, areas area, excl map[string]bool, st *stats) *world {
	w := &world{
		rt: rt, ctx: ctx, areas: areas, excl: excl, stats: st,
		jobLeases: map[string][]string{}, touched: map[string]bool{}, maxValue: map[string]int64{},
		live: map[string]bool{}, semGen: map[string]int{},
		keyIDs: map[string]map[string]bool{}, keyHashes: map[string]bool{}, keyHash: map[string]string{},
	}
	w.mem, w.red = newSide("memory", mem, false), newSide("redis", red, true)
	w.sides = []*side{w.mem, w.red}
	return w
}

// run draws and runs the operations of one check.
func (w *world) run() {
	type action struct {
		name   string
		weight int
		areas  area
		fn     func()
	}
	actions := []action{
		{"PutSemaphore", 3, areaSem, w.putSemaphore},
		{"GetSemaphore", 1, areaSem, w.getSemaphore},
		{"ListSemaphores", 1, areaSem, w.listSemaphores},
		{"DeleteSemaphore", 1, areaSem, w.deleteSemaphore},
		{"SetSuspended", 1, areaSem, w.setSuspended},
		{"Sweep", 1, areaSem, w.sweep},
		{"Acquire", 5, areaSem, w.acquire},
		{"Extend", 3, areaSem, w.extend},
		{"Release", 3, areaSem, w.release},
		{"EnqueueJob", 6, areaJobs, w.enqueue},
		{"EnqueueJobs", 3, areaJobs, w.enqueueBatch},
		{"TransitionJob", 14, areaJobs, w.transition},
		{"DispatchJobs", 1, areaJobs, w.dispatchJobs},
		{"GetJob", 1, areaJobs, w.getJob},
		{"ListJobs", 1, areaJobs, w.listJobs},
		{"PurgeJobs", 1, areaJobs, w.purgeJobs},
		{"CreateTenant", 2, areaAuth, w.createTenant},
		{"ListTenants", 1, areaAuth, w.listTenants},
		{"CreateKey", 5, areaAuth, w.createKey},
		{"KeyByHash", 2, areaAuth, w.keyByHash},
		{"ListKeys", 1, areaAuth, w.listKeys},
		{"DeleteKey", 2, areaAuth, w.deleteKey},
	}
	// rapid's Repeat draws the actions (-rapid.steps of them on average)
	// and shrinks a failure by deleting whole actions; an action's weight
	// is the number of names it has there.
	repeat := map[string]func(*rapid.T){}
	for _, a := range actions {
		if a.areas&w.areas == 0 {
			continue
		}
		for i := range a.weight {
			name := a.name
			if i > 0 {
				name += "#" + itoa(i+1)
			}
			repeat[name] = func(*rapid.T) { a.fn() }
		}
	}
	if w.areas&areaSem != 0 {
		// most operations want a semaphore
		w.putSemaphoreOf("t1", "s1", false)
	}
	w.rt.Repeat(repeat)
}
