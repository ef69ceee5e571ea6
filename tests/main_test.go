// Package tests holds end-to-end tests: they build the semaphored binary
// once, start real processes on free ports against one real Redis, and talk
// to them through the Go SDK.
package tests

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// adminKey is the fixed bootstrap operator key of every instance.
const adminKey = "sk_integration_0123456789abcdef0123456789abcdef"

// binary is the semaphored binary built by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "semaphored-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "semaphored")
	build := exec.Command("go", "build", "-buildvcs=false", "-o", binary, "github.com/semaphored/semaphored/cmd/semaphored")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build semaphored:", err)
		return 1
	}
	code := m.Run()
	testredis.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// instance is one running semaphored process.
type instance struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	base   string
	stdout string // path of the file stdout goes to
	logs   *lockedBuffer
	exited chan struct{}
	err    error // Wait's result, after exited is closed
	admin  *sdk.Client
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cleanEnv is the test process's environment without any SEMAPHORED_
// variable, so that only what a test passes configures an instance.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SEMAPHORED_") {
			env = append(env, kv)
		}
	}
	return env
}

// start runs the binary with args and extra environment (its address comes
// from SEMAPHORED_ADDR, so that args may be empty), and waits until /healthz
// answers. The process is killed at cleanup if still running.
func start(t testing.TB, name string, args []string, env ...string) *instance {
	t.Helper()
	return startBinary(t, binary, name, args, env...)
}

// startBinary is start with another semaphored binary than the one TestMain
// built (the previous release, in the upgrade test).
func startBinary(t testing.TB, bin, name string, args []string, env ...string) *instance {
	t.Helper()
	port, err := testredis.FreePort()
	require.NoError(t, err)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	inst := &instance{
		t:      t,
		name:   name,
		base:   "http://" + addr,
		stdout: filepath.Join(t.TempDir(), name+".stdout"),
		logs:   &lockedBuffer{},
		exited: make(chan struct{}),
	}
	out, err := os.Create(inst.stdout)
	require.NoError(t, err)
	defer out.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(cleanEnv(), "SEMAPHORED_ADDR="+addr, "SEMAPHORED_LOG_LEVEL=debug"), env...)
	cmd.Stdout = out // a file: written synchronously, complete once /healthz answers
	cmd.Stderr = inst.logs
	require.NoError(t, cmd.Start())
	inst.cmd = cmd
	go func() {
		inst.err = cmd.Wait()
		close(inst.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-inst.exited:
		default:
			_ = cmd.Process.Kill()
			<-inst.exited
		}
		t.Logf("--- logs of %s ---\n%s", name, inst.logs.String())
	})

	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-inst.exited:
			t.Fatalf("%s exited before serving: %v\nlogs:\n%s", name, inst.err, inst.logs.String())
		default:
		}
		resp, err := hc.Get(inst.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not become healthy: %v\nlogs:\n%s", name, err, inst.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	inst.admin = inst.client(t, adminKey)
	return inst
}

// client returns an SDK client of the instance, its connections closed at
// cleanup.
func (i *instance) client(t testing.TB, key string) *sdk.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := sdk.New(i.base, key, sdk.WithHTTPClient(&http.Client{Transport: tr}))
	require.NoError(t, err)
	return c
}

// signal sends sig and, with wait, waits (bounded) for the exit and returns
// the exit code.
func (i *instance) signalAndWait(sig syscall.Signal, within time.Duration) int {
	i.t.Helper()
	require.NoError(i.t, i.cmd.Process.Signal(sig))
	select {
	case <-i.exited:
	case <-time.After(within):
		i.t.Fatalf("%s did not exit within %v after %v", i.name, within, sig)
	}
	return i.cmd.ProcessState.ExitCode()
}

// cluster starts two instances sharing one Redis under a fresh prefix.
func cluster(t *testing.T) (a, b *instance) {
	t.Helper()
	url := testredis.URL(t)
	prefix := "e2e-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	args := []string{"--redis-url", url, "--redis-prefix", prefix, "--admin-key", adminKey}
	a = start(t, "A", args)
	b = start(t, "B", args)
	return a, b
}

// putSemaphore creates a semaphore through inst.
func putSemaphore(t *testing.T, inst *instance, name string, maxValue int64) {
	t.Helper()
	_, err := inst.admin.PutSemaphore(t.Context(), name, sdk.SemaphoreConfig{MaxValue: maxValue, LeaseTimeout: 30 * time.Second})
	require.NoError(t, err)
}

// waitWaiting polls the semaphore's state (bounded) until n acquires wait.
func waitWaiting(t *testing.T, c *sdk.Client, name string, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := c.GetSemaphore(t.Context(), name)
		require.NoError(t, err)
		if s.State != nil && s.State.Waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("semaphore %s: want %d waiting, state %+v", name, n, s.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type acquireResult struct {
	lease sdk.Lease
	err   error
	at    time.Time
}

// acquireAsync starts an acquire and returns a channel with its result.
func acquireAsync(ctx context.Context, c *sdk.Client, name string, opts sdk.AcquireOptions) <-chan acquireResult {
	ch := make(chan acquireResult, 1)
	go func() {
		l, err := c.Acquire(ctx, name, opts)
		ch <- acquireResult{lease: l, err: err, at: time.Now()}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan acquireResult, within time.Duration) acquireResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("no acquire result within %v", within)
		return acquireResult{}
	}
}

func TestNoFlags_MemoryStore(t *testing.T) {
	t.Parallel()
	inst := start(t, "solo", nil)

	out, err := os.ReadFile(inst.stdout)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.Len(t, lines, 1, "stdout: %q", out)
	key, ok := strings.CutPrefix(lines[0], "admin key (shown once): ")
	require.True(t, ok, "stdout: %q", out)
	require.True(t, strings.HasPrefix(key, "sk_"), key)
	require.Contains(t, inst.logs.String(), "memory")

	c := inst.client(t, key)
	require.NoError(t, c.Health(t.Context()))
	require.NoError(t, c.Ready(t.Context()))
	keys, err := c.ListKeys(t.Context())
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		require.Empty(t, k.Secret)
	}
	require.Equal(t, 0, inst.signalAndWait(syscall.SIGTERM, 20*time.Second))
	out, err = os.ReadFile(inst.stdout)
	require.NoError(t, err)
	require.Equal(t, 1, strings.Count(string(out), "sk_"), "the key is printed once")
}

func TestTwoInstances_PermitsShared(t *testing.T) {
	t.Parallel()
	a, b := cluster(t)
	putSemaphore(t, a, "shared", 2)
	worker, err := a.admin.CreateKey(t.Context(), sdk.RoleWorker, "e2e worker")
	require.NoError(t, err)
	wa, wb := a.client(t, worker.Secret), b.client(t, worker.Secret)

	for range 2 {
		_, err := wa.Acquire(t.Context(), "shared", sdk.AcquireOptions{})
		require.NoError(t, err)
	}
	_, err = wb.Acquire(t.Context(), "shared", sdk.AcquireOptions{})
	require.True(t, sdk.IsNoPermit(err), "want no_permit from B, got %v", err)
	require.Equal(t, http.StatusConflict, sdk.StatusCode(err))

	s, err := b.admin.GetSemaphore(t.Context(), "shared")
	require.NoError(t, err)
	require.Equal(t, int64(2), s.State.InUse)
	require.Equal(t, int64(0), s.State.Available)
}

func TestTwoInstances_ReleaseWakesWaiterOnOtherInstance(t *testing.T) {
	t.Parallel()
	a, b := cluster(t)
	putSemaphore(t, a, "handoff", 1)

	held, err := a.admin.Acquire(t.Context(), "handoff", sdk.AcquireOptions{})
	require.NoError(t, err)
	waiter := acquireAsync(t.Context(), b.admin, "handoff", sdk.AcquireOptions{Wait: 10 * time.Second})
	waitWaiting(t, a.admin, "handoff", 1)

	released := time.Now()
	_, err = a.admin.Release(t.Context(), held.ID)
	require.NoError(t, err)
	r := receive(t, waiter, 15*time.Second)
	require.NoError(t, r.err)
	require.Greater(t, r.lease.FencingToken, held.FencingToken)
	// Not asserted (timing depends on the machine), but it should be
	// milliseconds: the hand-off is pushed, not polled.
	t.Logf("hand-off from A's release to B's grant took %v", r.at.Sub(released))
}

func TestTwoInstances_FencingTokensIncrease(t *testing.T) {
	t.Parallel()
	a, b := cluster(t)
	putSemaphore(t, a, "fenced", 1)
	var last int64
	for i := range 10 {
		c := a.admin
		if i%2 == 1 {
			c = b.admin
		}
		l, err := c.Acquire(t.Context(), "fenced", sdk.AcquireOptions{})
		require.NoError(t, err)
		require.Greater(t, l.FencingToken, last, "grant %d", i)
		last = l.FencingToken
		_, err = c.Release(t.Context(), l.ID)
		require.NoError(t, err)
	}
}

func TestSIGTERM_GracefulShutdown(t *testing.T) {
	t.Parallel()
	a, b := cluster(t)
	putSemaphore(t, a, "drain", 1)
	held, err := b.admin.Acquire(t.Context(), "drain", sdk.AcquireOptions{})
	require.NoError(t, err)

	// A waiting request in flight on A when it gets SIGTERM.
	waiter := acquireAsync(t.Context(), a.admin, "drain", sdk.AcquireOptions{Wait: 2 * time.Second})
	waitWaiting(t, b.admin, "drain", 1)

	require.Equal(t, 0, a.signalAndWait(syscall.SIGTERM, 30*time.Second), "exit code after SIGTERM")

	// The in-flight request got a clean HTTP answer, not a dropped
	// connection: a grant or no_permit at the end of its wait.
	r := receive(t, waiter, 5*time.Second)
	if r.err != nil {
		require.True(t, sdk.IsNoPermit(r.err), "in-flight acquire: want a lease or no_permit, got %v", r.err)
	}
	require.Contains(t, a.logs.String(), "shutting down")

	// B goes on serving the shared state.
	_, err = b.admin.Release(t.Context(), held.ID)
	require.NoError(t, err)
	l, err := b.admin.Acquire(t.Context(), "drain", sdk.AcquireOptions{})
	require.NoError(t, err)
	require.Greater(t, l.FencingToken, held.FencingToken)
}

func TestSIGKILL_LeaseReturnsByExpiry(t *testing.T) {
	t.Parallel()
	a, b := cluster(t)
	putSemaphore(t, a, "orphan", 1)
	held, err := a.admin.Acquire(t.Context(), "orphan", sdk.AcquireOptions{TTL: time.Second})
	require.NoError(t, err)
	waiter := acquireAsync(t.Context(), b.admin, "orphan", sdk.AcquireOptions{Wait: 10 * time.Second})
	waitWaiting(t, b.admin, "orphan", 1)

	killed := time.Now()
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGKILL))
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("A did not die after SIGKILL")
	}

	r := receive(t, waiter, 15*time.Second)
	require.NoError(t, r.err, "the waiter on B must get the orphaned permit")
	require.Greater(t, r.lease.FencingToken, held.FencingToken)
	t.Logf("permit came back %v after the kill (ttl 1s)", r.at.Sub(killed))

	// The dead holder's lease is gone.
	_, err = b.admin.Release(t.Context(), held.ID)
	require.True(t, sdk.IsLeaseNotFound(err), "got %v", err)
}
