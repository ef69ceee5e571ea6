package tests

// The rolling-upgrade test (README "Upgrading"): instances of the
// previous release and of this build run on one Redis at once, as during a
// rolling deploy, and a rollback to the previous release works. The
// previous release is built from git (the commit named in
// testdata/previous-release). Under sync traffic (acquire, hold, release)
// and async traffic (enqueue → webhook → release through the API) the test
// walks
//
//	A  prev + prev
//	B  prev + new    (one prev stopped with SIGTERM, a new one started)
//	C  new  + new
//	D  new  + prev   (rollback: a new one replaced by a prev one)
//	E  prev + prev
//
// and checks:
//
//   - never over maxValue: the leases the clients held at once (a shared
//     counter, and afterwards the history), and inUse in every sampled
//     semaphore state;
//   - fencing: tokens are unique, a grant asked for after another was
//     answered has a larger token, and each phase's largest token is larger
//     than the one before;
//   - every job answered 202 ends done (GET /v1/jobs/{id}) and was
//     delivered to the receiver at least once, and no other id was;
//   - every SIGTERM ends its instance with exit code 0;
//   - no instance logged an error, nor a warning about a record or message
//     it could not read.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// previousReleaseFile names (full hash) the commit of the previous release,
// the one TestRollingUpgrade runs beside this build. Bump it at each
// release: write the released commit's hash there, so that the next
// release is tested against it.
const previousReleaseFile = "testdata/previous-release"

// Shape of the upgrade test.
const (
	upgradeSyncMax      = 3
	upgradeSyncClients  = 6
	upgradeEnqueuers    = 2
	upgradeSyncTTL      = 10 * time.Second // far beyond a hold: a lease never expires under its holder
	upgradeWait         = time.Second      // wait of every acquire (a SIGTERM lets it finish)
	upgradeEnqueuePace  = 25 * time.Millisecond
	upgradeSamplePace   = 100 * time.Millisecond
	upgradeCallTimeout  = 15 * time.Second
	upgradeCallTries    = 10
	upgradePhaseMin     = 2 * time.Second  // traffic per phase, at least
	upgradePhaseMax     = 20 * time.Second // bound on a phase reaching its minimum traffic
	upgradeJobsDeadline = 30 * time.Second // for every accepted job to end after the traffic stops
	upgradeStopWithin   = 30 * time.Second // bound on an instance's exit after SIGTERM
	// Minimum traffic of a phase: per instance up, grants and enqueues it
	// answered; in all, deliveries to the receiver.
	upgradeMinPerNode    = 5
	upgradeMinDeliveries = 10
)

func TestRollingUpgrade_PreviousAndNewBuildOnOneRedis(t *testing.T) {
	t.Parallel()
	began := time.Now()
	prevBinary, prevCommit := buildPreviousRelease(t)
	built := time.Now()
	t.Logf("previous release %.12s built in %v", prevCommit, built.Sub(began).Round(time.Millisecond))

	e := newUpgradeEnv(t)
	e.beginPhase("A prev+prev")
	p1 := e.startNode("prev-1", prevBinary, "prev")
	p2 := e.startNode("prev-2", prevBinary, "prev")
	// The previous release writes the configs.
	_, err := p1.inst.admin.PutSemaphore(t.Context(), "sync", sdk.SemaphoreConfig{MaxValue: upgradeSyncMax, LeaseTimeout: upgradeSyncTTL})
	require.NoError(t, err)
	createFunnel(t, e.api, p1.inst.base, "funnel", e.recv)
	e.startTraffic()
	e.awaitTraffic()

	e.beginPhase("B prev+new")
	e.stopNode(p1)
	n1 := e.startNode("new-1", binary, "new")
	e.awaitTraffic()

	e.beginPhase("C new+new")
	e.stopNode(p2)
	n2 := e.startNode("new-2", binary, "new")
	e.awaitTraffic()

	e.beginPhase("D new+prev (rollback)")
	e.stopNode(n1)
	p3 := e.startNode("prev-3", prevBinary, "prev")
	e.awaitTraffic()

	e.beginPhase("E prev+prev")
	e.stopNode(n2)
	p4 := e.startNode("prev-4", prevBinary, "prev")
	e.awaitTraffic()
	e.stopTraffic()
	stopped := time.Now()

	e.checkJobs()
	drained := time.Now()
	e.checkSync()
	e.checkInUseReturns()
	e.stopNode(p3)
	e.stopNode(p4)
	e.checkLogs()
	e.report(began, built, stopped, drained)
}

// ---------------------------------------------------------------------------
// The previous release.

// buildPreviousRelease extracts the commit named in previousReleaseFile
// from the repository (git archive) into a temporary directory and builds
// semaphored there. It fails, never skips, when the commit is not in the
// clone.
func buildPreviousRelease(t *testing.T) (bin, commit string) {
	t.Helper()
	raw, err := os.ReadFile(previousReleaseFile)
	require.NoError(t, err)
	for line := range strings.Lines(string(raw)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			commit = line
			break
		}
	}
	require.Regexp(t, `^[0-9a-f]{40}$`, commit, "%s must hold the full hash of the previous release's commit", previousReleaseFile)

	root, err := gitOutput("", "rev-parse", "--show-toplevel")
	require.NoError(t, err, "the upgrade test builds the previous release from git: it must run inside a git clone of semaphored")
	root = strings.TrimSpace(root)
	if _, err := gitOutput(root, "cat-file", "-e", commit+"^{commit}"); err != nil {
		// A clone made with --depth or --single-branch may lack it: ask its
		// origin once (by hash, then the whole history) before failing.
		_, _ = gitOutput(root, "fetch", "--quiet", "origin", commit)
		if shallow, _ := gitOutput(root, "rev-parse", "--is-shallow-repository"); strings.TrimSpace(shallow) == "true" {
			_, _ = gitOutput(root, "fetch", "--quiet", "--unshallow", "origin")
		}
	}
	if _, err := gitOutput(root, "cat-file", "-e", commit+"^{commit}"); err != nil {
		how := "Fetch it (git fetch origin " + commit + ")"
		if shallow, _ := gitOutput(root, "rev-parse", "--is-shallow-repository"); strings.TrimSpace(shallow) == "true" {
			how = "This clone is shallow: fetch the history with git fetch --unshallow (in CI, check out the full history, e.g. actions/checkout with fetch-depth: 0)"
		}
		t.Fatalf("the previous release %s (named in tests/%s) is not in the clone at %s, and the rolling-upgrade test builds it from git. %s and run the test again.",
			commit, previousReleaseFile, root, how)
	}

	src := filepath.Join(t.TempDir(), "src")
	require.NoError(t, gitArchive(root, commit, src))
	bin = filepath.Join(t.TempDir(), "semaphored-prev")
	// As TestMain builds this build: the dependencies compiled for it come
	// from the build cache, and only the release's own packages compile.
	build := exec.Command("go", "build", "-buildvcs=false", "-o", bin, "./cmd/semaphored")
	build.Dir = src
	// The test's environment (GOFLAGS, module and build caches), but no
	// workspace: a go.work naming this checkout would build it instead of
	// the extracted release.
	build.Env = append(os.Environ(), "GOWORK=off")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the previous release %s:\n%s", commit, out)
	return bin, commit
}

func gitOutput(dir string, args ...string) (string, error) {
	// bounded: a fetch from an origin out of reach gives up rather than hang
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// gitArchive writes the tree of commit into dir.
func gitArchive(root, commit, dir string) error {
	cmd := exec.Command("git", "archive", "--format=tar", commit)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	extractErr := extractTar(pipe, dir)
	_, _ = io.Copy(io.Discard, pipe)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("git archive %s: %w: %s", commit, err, strings.TrimSpace(stderr.String()))
	}
	return extractErr
}

func extractTar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if !filepath.IsLocal(name) {
			return fmt.Errorf("archive entry %q leaves the directory", h.Name)
		}
		path := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o755)
		case tar.TypeReg:
			err = writeFile(path, tr, h.FileInfo().Mode().Perm())
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
				err = os.Symlink(h.Linkname, path)
			}
		default: // the pax global header naming the commit
		}
		if err != nil {
			return err
		}
	}
}

func writeFile(path string, r io.Reader, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm|0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	return errors.Join(err, f.Close())
}

// ---------------------------------------------------------------------------
// The environment: instances up, traffic, what it saw.

// upgradeNode is one running instance and its build ("prev" or "new").
type upgradeNode struct {
	inst  *instance
	name  string
	build string
}

// upgradePhase counts what one phase saw, by the instance that answered.
type upgradePhase struct {
	name            string
	began, ended    time.Time
	nodes           []string // the instances up once the phase's switch was done
	grants          map[string]int
	enqueued        map[string]int
	noPermit        int
	deliveredBefore int // the receiver's deliveries when the phase began
	deliveries      int
	maxToken        int64
	calls           map[string]int           // calls answered (or not), by instance
	slowest         map[string]time.Duration // the longest of them, by instance
}

type upgradeEnv struct {
	t    *testing.T
	args []string
	api  *apiClient
	recv *receiver
	hist *faultHistory // grants, their asks, answers and releases

	stopping chan struct{}
	wg       sync.WaitGroup

	held, peakHeld atomic.Int64 // leases of "sync" the clients hold now, and at most
	transportErrs  atomic.Int64 // calls sent again after no HTTP answer

	mu        sync.Mutex
	up        []*upgradeNode
	all       []*upgradeNode
	phases    []*upgradePhase
	accepted  map[string]int // job id → phase of its 202
	failures  []string
	peakInUse map[string]int64 // by semaphore, from the sampled states
	samples   int
}

func newUpgradeEnv(t *testing.T) *upgradeEnv {
	prefix := "e2e-upgrade-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	e := &upgradeEnv{
		t:         t,
		args:      []string{"--redis-url", testredis.URL(t), "--redis-prefix", prefix, "--admin-key", adminKey, "--webhook-allow-private", "--log-format", "json"},
		api:       newAPI(t),
		hist:      newFaultHistory(),
		stopping:  make(chan struct{}),
		accepted:  map[string]int{},
		peakInUse: map[string]int64{},
	}
	e.recv = newReceiver(t, e.api)
	t.Cleanup(func() {
		select {
		case <-e.stopping:
		default:
			e.stopTraffic() // the test failed midway
		}
	})
	return e
}

func (e *upgradeEnv) fail(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failures = append(e.failures, fmt.Sprintf(format, args...))
}

// setUp sets the instances the traffic and the receiver's releases go to.
func (e *upgradeEnv) setUp(nodes []*upgradeNode) {
	e.mu.Lock()
	e.up = nodes
	e.mu.Unlock()
	var bases []string
	for _, n := range nodes {
		bases = append(bases, n.inst.base)
	}
	e.recv.setTargets(bases...)
}

func (e *upgradeEnv) upNodes() []*upgradeNode {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.up)
}

func (e *upgradeEnv) startNode(name, bin, build string) *upgradeNode {
	e.t.Helper()
	st := time.Now()
	n := &upgradeNode{inst: startBinary(e.t, bin, name, e.args), name: name, build: build}
	e.t.Logf("%s (%s build) serving %v after its start", name, build, time.Since(st).Round(time.Millisecond))
	e.mu.Lock()
	e.all = append(e.all, n)
	ph := e.phases[len(e.phases)-1]
	ph.nodes = append(ph.nodes, name)
	e.mu.Unlock()
	e.setUp(append(e.upNodes(), n))
	return n
}

// stopNode takes n out of the traffic (as a load balancer would), then
// stops it with SIGTERM: its calls in flight finish, and it must exit 0.
func (e *upgradeEnv) stopNode(n *upgradeNode) {
	e.t.Helper()
	e.setUp(slices.DeleteFunc(e.upNodes(), func(x *upgradeNode) bool { return x == n }))
	e.mu.Lock()
	ph := e.phases[len(e.phases)-1]
	ph.nodes = slices.DeleteFunc(ph.nodes, func(x string) bool { return x == n.name })
	e.mu.Unlock()
	st := time.Now()
	code := n.inst.signalAndWait(syscall.SIGTERM, upgradeStopWithin)
	// Not asserted: net/http's Shutdown waits up to 5 s for a connection
	// opened but never used (golang/go#22682), which a client's pool may
	// leave behind.
	e.t.Logf("%s (%s build) exited %v after SIGTERM", n.name, n.build, time.Since(st).Round(time.Millisecond))
	require.Equal(e.t, 0, code, "exit code of %s after SIGTERM", n.name)
}

// beginPhase starts counting into a new phase. Its instances are those up
// now, and those started before awaitTraffic.
func (e *upgradeEnv) beginPhase(name string) {
	e.endPhase()
	deliveries := e.recv.deliveryCount()
	e.mu.Lock()
	defer e.mu.Unlock()
	var nodes []string
	for _, n := range e.up {
		nodes = append(nodes, n.name)
	}
	e.phases = append(e.phases, &upgradePhase{
		name: name, began: time.Now(), nodes: nodes, grants: map[string]int{}, enqueued: map[string]int{},
		calls: map[string]int{}, slowest: map[string]time.Duration{}, deliveredBefore: deliveries,
	})
}

// endPhase closes the current phase's counts, if there is one.
func (e *upgradeEnv) endPhase() {
	deliveries := e.recv.deliveryCount()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.phases) > 0 {
		last := e.phases[len(e.phases)-1]
		last.ended, last.deliveries = time.Now(), deliveries-last.deliveredBefore
	}
}

// awaitTraffic waits until the current phase has run upgradePhaseMin and
// each of its instances has answered upgradeMinPerNode grants and enqueues,
// and the receiver has had upgradeMinDeliveries deliveries in it.
func (e *upgradeEnv) awaitTraffic() {
	e.t.Helper()
	deadline := time.Now().Add(upgradePhaseMax)
	for {
		e.mu.Lock()
		ph := e.phases[len(e.phases)-1]
		ok := time.Since(ph.began) >= upgradePhaseMin && e.recv.deliveryCount()-ph.deliveredBefore >= upgradeMinDeliveries
		for _, n := range ph.nodes {
			ok = ok && ph.grants[n] >= upgradeMinPerNode && ph.enqueued[n] >= upgradeMinPerNode
		}
		status := fmt.Sprintf("grants %v, enqueued %v, deliveries %d", ph.grants, ph.enqueued, e.recv.deliveryCount()-ph.deliveredBefore)
		e.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("phase %s: not enough traffic after %v: %s", ph.name, upgradePhaseMax, status)
		}
		time.Sleep(50 * time.Millisecond) // a bounded poll of the counters
	}
}

func (e *upgradeEnv) startTraffic() {
	for c := range upgradeSyncClients {
		e.wg.Go(func() { e.syncClient(c) })
	}
	for c := range upgradeEnqueuers {
		e.wg.Go(func() { e.enqueuer(c) })
	}
	e.wg.Go(e.sampler)
}

func (e *upgradeEnv) stopTraffic() {
	close(e.stopping)
	e.wg.Wait()
	e.endPhase()
}

func (e *upgradeEnv) stopped() bool {
	select {
	case <-e.stopping:
		return true
	default:
		return false
	}
}

// call runs f on a random instance up until it gets an HTTP answer. A call
// without one (the instance was taken out between the pick and the call)
// is sent again to another: every call sent again is keyed (acquire,
// enqueue) or says so by its answer (a release: 404).
func (e *upgradeEnv) call(f func(ctx context.Context, n *upgradeNode) error) (*upgradeNode, int, error) {
	for try := 1; ; try++ {
		up := e.upNodes()
		n := up[rand.IntN(len(up))]
		ctx, cancel := context.WithTimeout(context.Background(), upgradeCallTimeout)
		st := time.Now()
		err := f(ctx, n)
		took := time.Since(st)
		cancel()
		e.count(func(ph *upgradePhase) {
			ph.calls[n.name]++
			ph.slowest[n.name] = max(ph.slowest[n.name], took)
		})
		if err == nil || sdk.StatusCode(err) != 0 || try == upgradeCallTries {
			return n, try, err
		}
		e.transportErrs.Add(1)
		time.Sleep(50 * time.Millisecond)
	}
}

// syncClient acquires a permit of "sync" (keyed, with a wait), holds it a
// few milliseconds, and releases it, until the traffic stops. While it
// holds the lease it counts in e.held, which must never exceed maxValue.
func (e *upgradeEnv) syncClient(c int) {
	for k := 0; !e.stopped(); k++ {
		key := fmt.Sprintf("sync-%d-%d", c, k)
		var l sdk.Lease
		st := time.Now()
		n, _, err := e.call(func(ctx context.Context, n *upgradeNode) (err error) {
			l, err = n.inst.admin.Acquire(ctx, "sync", sdk.AcquireOptions{Wait: upgradeWait, TTL: upgradeSyncTTL, IdempotencyKey: key})
			return err
		})
		at := time.Now()
		if sdk.IsNoPermit(err) {
			e.count(func(ph *upgradePhase) { ph.noPermit++ })
			continue
		}
		if err != nil {
			e.fail("acquire %s on %s: %v", key, n.name, err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		h := e.held.Add(1)
		for p := e.peakHeld.Load(); h > p && !e.peakHeld.CompareAndSwap(p, h); p = e.peakHeld.Load() {
		}
		if h > upgradeSyncMax {
			e.fail("%d leases of sync held at once (maxValue %d), the last granted by %s", h, upgradeSyncMax, n.name)
		}
		g := &faultGrant{sem: "sync", lease: l, start: st, at: at}
		e.hist.addGrant(g)
		e.count(func(ph *upgradePhase) {
			ph.grants[n.name]++
			ph.maxToken = max(ph.maxToken, l.FencingToken)
		})
		time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond) // the work
		e.held.Add(-1)
		sent := time.Now()
		rn, tries, err := e.call(func(ctx context.Context, n *upgradeNode) error {
			_, err := n.inst.admin.Release(ctx, l.ID)
			return err
		})
		e.hist.setRelease(g, sent, err)
		if err != nil && !(tries > 1 && sdk.IsLeaseNotFound(err)) { // 404 after a call without answer: that one released it
			e.fail("release of lease %s (token %d, granted by %s) on %s: %v", l.ID, l.FencingToken, n.name, rn.name, err)
		}
	}
}

// enqueuer enqueues keyed jobs into "funnel" at a steady pace.
func (e *upgradeEnv) enqueuer(c int) {
	for k := 0; !e.stopped(); k++ {
		key := fmt.Sprintf("job-%d-%d", c, k)
		var j sdk.Job
		n, _, err := e.call(func(ctx context.Context, n *upgradeNode) (err error) {
			j, err = n.inst.admin.Enqueue(ctx, "funnel", map[string]any{"c": c, "k": k}, sdk.EnqueueOptions{IdempotencyKey: key})
			return err
		})
		if err != nil {
			e.fail("enqueue %s on %s: %v", key, n.name, err)
		} else {
			e.mu.Lock()
			if _, dup := e.accepted[j.ID]; dup {
				e.failures = append(e.failures, fmt.Sprintf("enqueue %s on %s: job id %s returned for another key", key, n.name, j.ID))
			}
			e.accepted[j.ID] = len(e.phases) - 1
			e.phases[len(e.phases)-1].enqueued[n.name]++
			e.mu.Unlock()
		}
		time.Sleep(upgradeEnqueuePace)
	}
}

// sampler reads the state of both semaphores from a random instance up
// every upgradeSamplePace: inUse must never exceed maxValue.
func (e *upgradeEnv) sampler() {
	limits := map[string]int64{"sync": upgradeSyncMax, "funnel": killMaxValue}
	for !e.stopped() {
		for _, sem := range []string{"sync", "funnel"} {
			var s sdk.Semaphore
			n, _, err := e.call(func(ctx context.Context, n *upgradeNode) (err error) {
				s, err = n.inst.admin.GetSemaphore(ctx, sem)
				return err
			})
			if err != nil || s.State == nil {
				e.fail("state of %s on %s: %v (state %v)", sem, n.name, err, s.State)
				continue
			}
			e.mu.Lock()
			e.samples++
			e.peakInUse[sem] = max(e.peakInUse[sem], s.State.InUse)
			if s.State.InUse > limits[sem] {
				e.failures = append(e.failures, fmt.Sprintf("%s: inUse %d > maxValue %d in the state read from %s", sem, s.State.InUse, limits[sem], n.name))
			}
			e.mu.Unlock()
		}
		time.Sleep(upgradeSamplePace)
	}
}

func (e *upgradeEnv) count(f func(*upgradePhase)) {
	e.mu.Lock()
	f(e.phases[len(e.phases)-1])
	e.mu.Unlock()
}

// ---------------------------------------------------------------------------
// The checks, after the traffic stopped.

// checkJobs waits (bounded) until every accepted job is terminal, reading
// each with GET /v1/jobs/{id} from the instances up, then asserts that each
// is done and was delivered, and that nothing else was.
func (e *upgradeEnv) checkJobs() {
	t := e.t
	t.Helper()
	e.mu.Lock()
	pending := maps.Clone(e.accepted)
	e.mu.Unlock()
	final := make(map[string]sdk.Job, len(pending))
	deadline := time.Now().Add(upgradeJobsDeadline)
	for len(pending) > 0 {
		for id := range pending {
			var j sdk.Job
			n, _, err := e.call(func(ctx context.Context, n *upgradeNode) (err error) {
				j, err = n.inst.admin.GetJob(ctx, id)
				return err
			})
			require.NoError(t, err, "GET job %s on %s", id, n.name)
			if j.Status.Terminal() {
				final[id] = j
				delete(pending, id)
			}
		}
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var some []string
			for id := range pending {
				if len(some) < 5 {
					some = append(some, id)
				}
			}
			t.Fatalf("%d of %d accepted jobs not terminal %v after the traffic stopped, e.g. %v", len(pending), len(final)+len(pending), upgradeJobsDeadline, some)
		}
		time.Sleep(100 * time.Millisecond) // a bounded poll of the jobs left
	}

	delivered, _, badSigs := e.recv.snapshot()
	require.Zero(t, badSigs, "deliveries with a bad signature")
	for id, j := range final {
		if j.Status != sdk.JobDone {
			t.Errorf("job %s (accepted in phase %s) ended %s after %d attempts: %s", id, e.phases[e.accepted[id]].name, j.Status, j.Attempts, j.Error)
		}
		if delivered[id] == 0 {
			t.Errorf("job %s (accepted in phase %s) ended %s but never reached the receiver", id, e.phases[e.accepted[id]].name, j.Status)
		}
	}
	for id := range delivered {
		if _, ok := final[id]; !ok {
			t.Errorf("the receiver got job %s, which was never accepted", id)
		}
	}
}

// checkSync asserts what the sync traffic saw: no failure recorded by the
// traffic, holders never over maxValue, fencing tokens in order, each
// phase's largest token above the previous phase's.
func (e *upgradeEnv) checkSync() {
	t := e.t
	t.Helper()
	e.mu.Lock()
	failures := slices.Clone(e.failures)
	e.mu.Unlock()
	for i, f := range failures {
		if i == 20 {
			t.Errorf("… and %d more failures", len(failures)-i)
			break
		}
		t.Error(f)
	}
	require.LessOrEqual(t, e.peakHeld.Load(), int64(upgradeSyncMax), "leases held at once")
	fe := &faultEnv{t: t, hist: e.hist}
	fe.checkFencing("sync")
	fe.checkHolders("sync", upgradeSyncMax)
	for i := 1; i < len(e.phases); i++ {
		prev, cur := e.phases[i-1], e.phases[i]
		if cur.maxToken <= prev.maxToken {
			t.Errorf("phase %s: largest fencing token %d, not above phase %s's %d", cur.name, cur.maxToken, prev.name, prev.maxToken)
		}
	}
}

// checkInUseReturns: with the traffic stopped and every job done, no
// permit is held (bounded: a lease whose grant nobody saw would come back
// by expiry).
func (e *upgradeEnv) checkInUseReturns() {
	t := e.t
	t.Helper()
	deadline := time.Now().Add(upgradeSyncTTL + 2*time.Second)
	for _, sem := range []string{"sync", "funnel"} {
		for {
			var s sdk.Semaphore
			_, _, err := e.call(func(ctx context.Context, n *upgradeNode) (err error) {
				s, err = n.inst.admin.GetSemaphore(ctx, sem)
				return err
			})
			require.NoError(t, err)
			if s.State.InUse == 0 && s.State.Queued == 0 && s.State.Inflight == 0 && s.State.Waiting == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: state %+v after the traffic stopped, want nothing held, queued or waiting", sem, *s.State)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// upgradeLogSuspect matches a warning about something an instance could
// not read (a record, a node-bus message of another version).
var upgradeLogSuspect = regexp.MustCompile(`(?i)unread|decod|unmarshal|version|corrupt|unknown field|invalid character|dropped a message`)

// checkLogs reads every instance's JSON log: no error-level line, no
// warning about something it could not read, no line that is not JSON (a
// panic).
func (e *upgradeEnv) checkLogs() {
	t := e.t
	t.Helper()
	for _, n := range e.all {
		levels := map[string]int{}
		sc := bufio.NewScanner(strings.NewReader(n.inst.logs.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			var rec struct {
				Level string `json:"level"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				t.Errorf("%s logged a line that is not JSON: %s", n.name, line)
				continue
			}
			levels[rec.Level]++
			switch {
			case rec.Level == "ERROR":
				t.Errorf("%s logged an error: %s", n.name, line)
			case rec.Level == "WARN" && upgradeLogSuspect.MatchString(line):
				t.Errorf("%s logged a warning about something it could not read: %s", n.name, line)
			}
		}
		require.NoError(t, sc.Err())
		t.Logf("log of %s (%s): %v", n.name, n.build, levels)
	}
}

func (e *upgradeEnv) report(began, built, stopped, drained time.Time) {
	t := e.t
	e.mu.Lock()
	defer e.mu.Unlock()
	byBuild := func(counts map[string]int) string {
		sums := map[string]int{}
		for _, n := range e.all {
			if c := counts[n.name]; c > 0 {
				sums[n.build] += c
			}
		}
		var parts []string
		for _, b := range slices.Sorted(maps.Keys(sums)) {
			parts = append(parts, fmt.Sprintf("%s %d", b, sums[b]))
		}
		return strings.Join(parts, ", ")
	}
	var grants, enqueued, noPermit, deliveries int
	for _, ph := range e.phases {
		g, q := 0, 0
		for _, c := range ph.grants {
			g += c
		}
		for _, c := range ph.enqueued {
			q += c
		}
		grants, enqueued, noPermit, deliveries = grants+g, enqueued+q, noPermit+ph.noPermit, deliveries+ph.deliveries
		t.Logf("phase %-22s %5v: %4d leases (%s), %3d no_permit, %4d jobs accepted (%s), %4d deliveries, largest token %d",
			ph.name, ph.ended.Sub(ph.began).Round(10*time.Millisecond), g, byBuild(ph.grants), ph.noPermit, q, byBuild(ph.enqueued), ph.deliveries, ph.maxToken)
		for _, name := range slices.Sorted(maps.Keys(ph.calls)) {
			t.Logf("    %s: %d calls, slowest %v", name, ph.calls[name], ph.slowest[name].Round(time.Millisecond))
		}
	}
	_, allDeliveries, _ := e.recv.snapshot()
	t.Logf("in all: %d leases, %d no_permit, %d jobs accepted and done, %d deliveries (%d after the traffic stopped), %d releases answered 409 (job moved on); "+
		"%d calls sent again after no answer; peak %d leases held at once (maxValue %d); peak inUse %v in %d sampled states",
		grants, noPermit, len(e.accepted), allDeliveries, allDeliveries-deliveries, e.recv.stale.Load(),
		e.transportErrs.Load(), e.peakHeld.Load(), upgradeSyncMax, e.peakInUse, e.samples)
	t.Logf("time: build of the previous release %v, phases %v, jobs ended %v after the traffic stopped, total %v",
		built.Sub(began).Round(time.Millisecond), stopped.Sub(built).Round(time.Millisecond),
		drained.Sub(stopped).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}
