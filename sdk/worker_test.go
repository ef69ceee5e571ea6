package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
	"github.com/semaphored/semaphored/store"
)

// jobLog records what handlers saw, across workers.
type jobLog struct {
	mu      sync.Mutex
	done    map[string]int // job id → successful runs
	running int
	peak    int
	ch      chan string // ids of jobs whose handler succeeded
	debug   func()
}

func newJobLog() *jobLog { return &jobLog{done: map[string]int{}, ch: make(chan string, 1000)} }

// handler counts concurrency, works for d and succeeds.
func (l *jobLog) handler(d time.Duration) sdk.Handler {
	return func(ctx context.Context, j sdk.Job) error {
		l.mu.Lock()
		l.running++
		l.peak = max(l.peak, l.running)
		l.mu.Unlock()
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
		l.mu.Lock()
		l.running--
		l.done[j.ID]++
		l.mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		l.ch <- j.ID
		return nil
	}
}

// wait waits (bounded) for n successful runs.
func (l *jobLog) wait(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	timeout := time.After(15 * time.Second)
	for len(ids) < n {
		select {
		case id := <-l.ch:
			ids = append(ids, id)
		case <-timeout:
			if l.debug != nil {
				l.debug()
			}
			t.Fatalf("%d of %d jobs handled in time", len(ids), n)
		}
	}
	return ids
}

// newWorker starts a worker of srv closed at cleanup; connects receives
// its connection events.
func newWorker(t *testing.T, url string, opts ...sdk.WorkerOption) (*sdk.Worker, chan sdk.ConnectEvent) {
	t.Helper()
	connects, done := make(chan sdk.ConnectEvent, 16), make(chan struct{})
	if os.Getenv("SDK_TEST_LOG") != "" {
		opts = append(opts, sdk.WithWorkerLogger(slog.New(slog.NewTextHandler(os.Stderr, nil)).With("worker", t.Name())))
	}
	if tr := os.Getenv("SDK_TEST_TRANSPORT"); tr != "" {
		opts = append(opts, sdk.WithTransport(sdk.Transport(tr)))
	}
	opts = append([]sdk.WorkerOption{
		sdk.WithReconnectBackoff(10*time.Millisecond, 200*time.Millisecond),
		// a hook that blocks holds up the worker, and Close with it: once
		// the test ends, events nobody reads are dropped
		sdk.WithConnectHook(func(ev sdk.ConnectEvent) {
			select {
			case connects <- ev:
			case <-done:
			}
		}),
	}, opts...)
	w, err := sdk.NewWorker(url, adminKey, opts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		close(done)
		_ = w.Close()
	})
	return w, connects
}

func nextConnect(t *testing.T, ch <-chan sdk.ConnectEvent) sdk.ConnectEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(15 * time.Second):
		t.Fatal("the worker did not connect in time")
		return sdk.ConnectEvent{}
	}
}

// waitStatus polls (bounded) until every job is in status st.
func waitStatus(t *testing.T, c *sdk.Client, ids []string, st sdk.JobStatus) {
	t.Helper()
	for _, id := range ids {
		require.Eventually(t, func() bool {
			j, err := c.GetJob(t.Context(), id)
			return err == nil && j.Status == st
		}, 10*time.Second, 10*time.Millisecond, "job %s never %s", id, st)
	}
}

var enqueueSeq atomic.Int64

func enqueueN(t *testing.T, c *sdk.Client, sem string, from, to int) []string {
	t.Helper()
	var ids []string
	for i := from; i < to; i++ {
		// the key (one per call) lets a request cut by a restarted
		// server's closed keep-alive connection be sent again
		key := fmt.Sprintf("%s-%d-%d", sem, i, enqueueSeq.Add(1))
		j, err := c.Enqueue(t.Context(), sem, map[string]int{"n": i}, sdk.EnqueueOptions{IdempotencyKey: key})
		require.NoError(t, err)
		ids = append(ids, j.ID)
	}
	return ids
}

func TestNewWorker_BadInput(t *testing.T) {
	for _, bad := range []string{"localhost:8080", "ftp://x", "http://", "http://%zz"} {
		_, err := sdk.NewWorker(bad, "k")
		require.Error(t, err, bad)
	}
	_, err := sdk.NewWorker("http://x", "")
	require.Error(t, err)
	_, err = sdk.NewWorker("http://x", "k", sdk.WithInstances("ftp://y"))
	require.Error(t, err)
}

func TestWorker_SubscribeRunsAndReleases(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "work", sdk.SemaphoreConfig{MaxValue: 3})
	require.NoError(t, err)
	w, connects := newWorker(t, srv.URL)
	ev := nextConnect(t, connects)
	require.False(t, ev.Resumed)
	require.False(t, ev.Reconnect)
	require.Equal(t, srv.URL, ev.URL)
	require.Equal(t, ev.Session, w.Session())

	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "work", "", 2, log.handler(20*time.Millisecond)))
	ids := enqueueN(t, c, "work", 0, 20)
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
	require.LessOrEqual(t, log.peak, 2, "prefetch 2 bounds the jobs run at once")
	s, err := c.GetSemaphore(ctx, "work")
	require.NoError(t, err)
	require.Zero(t, s.State.InUse)

	require.NoError(t, w.Unsubscribe(ctx, "work", ""))
	require.ErrorIs(t, w.Unsubscribe(ctx, "work", ""), sdk.ErrNotSubscribed)
	require.ErrorIs(t, w.Subscribe(ctx, "nope", "", 1, log.handler(0)), sdk.ErrSemaphoreNotFound)
	require.Error(t, w.Subscribe(ctx, "work", "", 5000, log.handler(0)), "prefetch over the limit")
}

func TestWorker_HandlerErrorFailsTheAttempt(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	// A lease of a minute: the retry comes from the fail frame, not from
	// an expiry.
	_, err := c.PutSemaphore(ctx, "flaky", sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Minute, MaxAttempts: 3})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	var calls atomic.Int32
	done := make(chan sdk.Job, 1)
	require.NoError(t, w.Subscribe(ctx, "flaky", "", 1, func(ctx context.Context, j sdk.Job) error {
		if string(j.Payload) == `"bad"` {
			return sdk.NoRetry(errors.New("bad input"))
		}
		if calls.Add(1) == 1 {
			return errors.New("transient failure")
		}
		done <- j
		return nil
	}))
	enq, err := c.Enqueue(ctx, "flaky", "x", sdk.EnqueueOptions{})
	require.NoError(t, err)
	select {
	case j := <-done:
		require.Equal(t, enq.ID, j.ID)
		require.Equal(t, 2, j.Attempts, "the failed attempt counts, once")
	case <-time.After(10 * time.Second):
		t.Fatal("the failed job was not delivered again")
	}
	waitStatus(t, c, []string{enq.ID}, sdk.JobDone)
	// NoRetry: error at once, with the handler's message.
	bad, err := c.Enqueue(ctx, "flaky", "bad", sdk.EnqueueOptions{})
	require.NoError(t, err)
	waitStatus(t, c, []string{bad.ID}, sdk.JobError)
	j := jobIs(t, c, bad.ID, sdk.JobError, 1)
	require.Equal(t, "bad input", j.Error)
}

func TestWorker_PanickingHandlerDoesNotKillTheWorker(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "panics", sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Second, MaxAttempts: 3})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	var calls atomic.Int32
	require.NoError(t, w.Subscribe(ctx, "panics", "", 1, func(ctx context.Context, j sdk.Job) error {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		return nil
	}))
	enq, err := c.Enqueue(ctx, "panics", "x", sdk.EnqueueOptions{})
	require.NoError(t, err)
	waitStatus(t, c, []string{enq.ID}, sdk.JobDone)
	require.Equal(t, int32(2), calls.Load())
}

func TestWorker_AcquireKeepsLeaseAlive(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "pool", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)

	l, err := w.Acquire(ctx, "pool", sdk.AcquireOptions{TTL: time.Second})
	require.NoError(t, err)
	require.Equal(t, "pool", l.Semaphore)
	_, err = w.Acquire(ctx, "pool", sdk.AcquireOptions{})
	require.True(t, sdk.IsNoPermit(err), "got %v", err)

	// Three ttls later the lease is still held: the worker extends it.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		s, err := c.GetSemaphore(ctx, "pool")
		require.NoError(t, err)
		require.Equal(t, int64(1), s.State.InUse)
		time.Sleep(100 * time.Millisecond)
	}
	ext, err := w.Extend(ctx, l.ID, 2*time.Second)
	require.NoError(t, err)
	require.True(t, ext.ExpiresAt.After(l.ExpiresAt))
	_, err = w.Release(ctx, l.ID)
	require.NoError(t, err)
	_, err = w.Release(ctx, l.ID)
	require.True(t, sdk.IsLeaseNotFound(err), "got %v", err)

	// A waiting acquire gets the permit when the holder releases.
	held, err := c.Acquire(ctx, "pool", sdk.AcquireOptions{})
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		_, err := w.Acquire(ctx, "pool", sdk.AcquireOptions{Wait: 5 * time.Second})
		got <- err
	}()
	require.Eventually(t, func() bool {
		s, err := c.GetSemaphore(ctx, "pool")
		return err == nil && s.State.Waiting == 1
	}, 5*time.Second, 10*time.Millisecond)
	_, err = c.Release(ctx, held.ID)
	require.NoError(t, err)
	require.NoError(t, <-got)
}

func TestWorker_Do(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "do", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	err = w.Do(ctx, "do", func(ctx context.Context, l sdk.Lease) error {
		s, err := c.GetSemaphore(ctx, "do")
		require.NoError(t, err)
		require.Equal(t, int64(1), s.State.InUse)
		return errors.New("fn failed")
	}, sdk.WithTTL(time.Second))
	require.EqualError(t, err, "fn failed")
	s, err := c.GetSemaphore(ctx, "do")
	require.NoError(t, err)
	require.Zero(t, s.State.InUse, "released after fn")

	// Released on panic too.
	require.Panics(t, func() {
		_ = w.Do(ctx, "do", func(context.Context, sdk.Lease) error { panic("boom") })
	})
	s, err = c.GetSemaphore(ctx, "do")
	require.NoError(t, err)
	require.Zero(t, s.State.InUse)

	// A lease released behind Do's back is lost: fn's context ends.
	err = w.Do(ctx, "do", func(ctx context.Context, l sdk.Lease) error {
		_, err := c.Release(ctx, l.ID)
		require.NoError(t, err)
		<-ctx.Done()
		require.ErrorIs(t, context.Cause(ctx), sdk.ErrLeaseLost)
		return nil
	}, sdk.WithTTL(time.Second))
	require.ErrorIs(t, err, sdk.ErrLeaseLost)
}

func TestWorker_Enqueue(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "enq", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	_, err = c.Suspend(ctx, "enq")
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	j, err := w.Enqueue(ctx, "enq", map[string]int{"n": 1}, sdk.EnqueueOptions{Channel: "eu", IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.Equal(t, "eu", j.Channel)
	require.Equal(t, sdk.JobScheduled, j.Status)
	require.JSONEq(t, `{"n":1}`, string(j.Payload))
	again, err := w.Enqueue(ctx, "enq", 2, sdk.EnqueueOptions{Channel: "eu", IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.Equal(t, j.ID, again.ID)
	_, err = w.Enqueue(ctx, "missing", 1, sdk.EnqueueOptions{})
	require.ErrorIs(t, err, sdk.ErrSemaphoreNotFound)
	_, err = w.Enqueue(ctx, "enq", json.RawMessage(`{`), sdk.EnqueueOptions{})
	require.Error(t, err)
}

// TestWorker_ResumesAfterServerRestart: the server process restarts on the
// same address and store within the grace period; the worker reconnects,
// resumes its session (its lease and its subscription come back) and goes
// on receiving jobs, also one it held across the restart is released.
func TestWorker_ResumesAfterServerRestart(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, serverOptions{grace: 10 * time.Second})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	ctx := t.Context()
	_, err = c.PutSemaphore(ctx, "restart", sdk.SemaphoreConfig{MaxValue: 2, LeaseTimeout: 5 * time.Second})
	require.NoError(t, err)
	w, connects := newWorker(t, srv.URL)
	first := nextConnect(t, connects)

	log := newJobLog()
	started, release := make(chan struct{}), make(chan struct{})
	var slow atomic.Bool
	require.NoError(t, w.Subscribe(ctx, "restart", "", 1, func(ctx context.Context, j sdk.Job) error {
		if slow.CompareAndSwap(false, true) {
			close(started)
			<-release // held across the restart
		}
		return log.handler(0)(ctx, j)
	}))
	lease, err := w.Acquire(ctx, "restart", sdk.AcquireOptions{TTL: 2 * time.Second})
	require.NoError(t, err)
	held := enqueueN(t, c, "restart", 0, 1)
	<-started

	require.NoError(t, srv.Restart())
	ev := nextConnect(t, connects)
	require.True(t, ev.Resumed, "the session is resumed")
	require.True(t, ev.Reconnect)
	require.Equal(t, first.Session, ev.Session)
	close(release)

	ids := append(held, enqueueN(t, c, "restart", 1, 10)...)
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
	// the lease survived the restart, kept alive
	_, err = w.Release(ctx, lease.ID)
	require.NoError(t, err)
}

// TestWorker_FreshSessionAfterGrace: the server is down longer than the
// grace period; the worker's resume fails, it starts a fresh session,
// subscribes again and goes on receiving jobs; its lease is reported lost.
func TestWorker_FreshSessionAfterGrace(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, serverOptions{grace: 200 * time.Millisecond})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	ctx := t.Context()
	_, err = c.PutSemaphore(ctx, "fresh", sdk.SemaphoreConfig{MaxValue: 2, LeaseTimeout: 5 * time.Second})
	require.NoError(t, err)
	w, connects := newWorker(t, srv.URL)
	first := nextConnect(t, connects)
	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "fresh", "", 1, log.handler(0)))
	lost := make(chan error, 1)
	running := make(chan struct{})
	go func() {
		lost <- w.Do(ctx, "fresh", func(ctx context.Context, l sdk.Lease) error {
			close(running)
			<-ctx.Done()
			return nil
		})
	}()
	<-running

	srv.Down()
	// Wait until the session's grace ran out (the store forgets it).
	require.Eventually(t, func() bool {
		_, err := srv.st.GetSession(ctx, store.SessionParams{Tenant: store.DefaultTenant, Session: first.Session})
		if errors.Is(err, store.ErrSessionNotFound) {
			return true
		}
		// with no server running, nothing collects expired sessions
		_, _ = srv.st.ExpiredSessions(ctx, 100)
		return false
	}, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, srv.Up())

	ev := nextConnect(t, connects)
	require.False(t, ev.Resumed)
	require.NotEqual(t, first.Session, ev.Session)
	select {
	case err := <-lost:
		require.ErrorIs(t, err, sdk.ErrLeaseLost)
	case <-time.After(10 * time.Second):
		t.Fatal("Do's lease was not reported lost")
	}
	// The connect hook runs before the worker subscribes again (see
	// WithConnectHook): wait for the fresh session's subscription.
	require.Eventually(t, func() bool {
		subs, err := srv.st.Subscribers(ctx, store.DefaultTenant, "fresh", store.DefaultChannel)
		return err == nil && len(subs) == 1 && subs[0].Session == ev.Session
	}, 5*time.Second, 10*time.Millisecond)
	ids := enqueueN(t, c, "fresh", 0, 5)
	log.debug = func() {
		for _, id := range ids {
			j, err := c.GetJob(ctx, id)
			t.Logf("%s %+v %v", id, j, err)
		}
	}
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
}

// TestWorker_FailsOverToAnotherInstance: two servers on one store; the
// first goes away for good; the worker resumes on the second.
func TestWorker_FailsOverToAnotherInstance(t *testing.T) {
	t.Parallel()
	a := newTestServer(t, serverOptions{grace: 10 * time.Second})
	b := a.second(t)
	c, err := sdk.New(b.URL, adminKey)
	require.NoError(t, err)
	ctx := t.Context()
	_, err = c.PutSemaphore(ctx, "failover", sdk.SemaphoreConfig{MaxValue: 2})
	require.NoError(t, err)
	w, connects := newWorker(t, a.URL, sdk.WithInstances(b.URL))
	first := nextConnect(t, connects)
	require.Equal(t, a.URL, first.URL)
	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "failover", "", 1, log.handler(0)))

	a.Down()
	ev := nextConnect(t, connects)
	require.Equal(t, b.URL, ev.URL)
	require.True(t, ev.Resumed)
	ids := enqueueN(t, c, "failover", 0, 5)
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
}

func TestWorker_CloseGivesTheSessionUp(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "bye", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	w, connects := newWorker(t, srv.URL)
	ev := nextConnect(t, connects)
	_, err = w.Acquire(ctx, "bye", sdk.AcquireOptions{})
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, w.Close(), "a second Close does nothing")
	<-w.Done()
	// the server ends the session as soon as it reads the close (no grace)
	require.Eventually(t, func() bool {
		_, err := srv.st.GetSession(ctx, store.SessionParams{Tenant: store.DefaultTenant, Session: ev.Session})
		return errors.Is(err, store.ErrSessionNotFound)
	}, 2*time.Second, 5*time.Millisecond, "a clean close ends the session at once")
	require.Eventually(t, func() bool {
		s, err := c.GetSemaphore(ctx, "bye")
		return err == nil && s.State.InUse == 0
	}, 2*time.Second, 5*time.Millisecond, "and releases its leases")
	_, err = w.Acquire(ctx, "bye", sdk.AcquireOptions{})
	require.ErrorIs(t, err, sdk.ErrWorkerClosed)
}

func TestWorker_UnauthorizedStops(t *testing.T) {
	t.Parallel()
	srv, _ := setup(t)
	w, err := sdk.NewWorker(srv.URL, "sk_not_a_key_0123456789abcdef0123456789")
	require.NoError(t, err)
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not stop")
	}
	require.True(t, sdk.IsUnauthorized(w.Err()), "got %v", w.Err())
	require.True(t, sdk.IsUnauthorized(w.Close()))
	_, err = w.Acquire(t.Context(), "x", sdk.AcquireOptions{})
	require.ErrorIs(t, err, sdk.ErrWorkerClosed)
}

func TestWorker_CallsWaitForAConnection(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "later", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	srv.Down()
	w, connects := newWorker(t, srv.URL)
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = w.Acquire(cctx, "later", sdk.AcquireOptions{})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	got := make(chan error, 1)
	go func() {
		_, err := w.Acquire(ctx, "later", sdk.AcquireOptions{})
		got <- err
	}()
	require.NoError(t, srv.Up())
	nextConnect(t, connects)
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the acquire did not go through after the server came up")
	}
}

func ExampleWorker_Subscribe() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()
	admin, _ := sdk.New(srv.URL, adminKey)
	// No routes: jobs go to the websocket workers subscribed to it.
	if _, err := admin.PutSemaphore(ctx, "thumbnails", sdk.SemaphoreConfig{MaxValue: 1}); err != nil {
		panic(err)
	}

	w, err := sdk.NewWorker(srv.URL, adminKey) // a worker key in real life
	if err != nil {
		panic(err)
	}
	defer w.Close()
	handled := make(chan string)
	err = w.Subscribe(ctx, "thumbnails", "", 1, func(ctx context.Context, job sdk.Job) error {
		var p struct {
			Image string `json:"image"`
		}
		if err := json.Unmarshal(job.Payload, &p); err != nil {
			return err // not released: retried after the lease expires
		}
		handled <- p.Image
		return nil // released: the job is done, the permit frees
	})
	if err != nil {
		panic(err)
	}

	var last sdk.Job
	for _, img := range []string{"a.png", "b.png", "c.png"} {
		last, _ = admin.Enqueue(ctx, "thumbnails", map[string]string{"image": img}, sdk.EnqueueOptions{})
	}
	for range 3 {
		fmt.Println("resized", <-handled)
	}
	// The release follows the handler's return: poll briefly for it.
	var j sdk.Job
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if j, _ = admin.GetJob(ctx, last.ID); j.Status == sdk.JobDone {
			break
		}
	}
	fmt.Println("last job:", j.Status)
	// Output:
	// resized a.png
	// resized b.png
	// resized c.png
	// last job: done
}

func ExampleWorker_Do() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()
	admin, _ := sdk.New(srv.URL, adminKey)
	if _, err := admin.PutSemaphore(ctx, "gpu", sdk.SemaphoreConfig{MaxValue: 1}); err != nil {
		panic(err)
	}
	w, _ := sdk.NewWorker(srv.URL, adminKey)
	defer w.Close()

	// The lease is bound to the worker's session: if the process dies, the
	// server releases it after the grace period.
	err := w.Do(ctx, "gpu", func(ctx context.Context, lease sdk.Lease) error {
		s, _ := admin.GetSemaphore(ctx, "gpu")
		fmt.Println("in use while running:", s.State.InUse)
		return nil
	})
	fmt.Println("error:", err)
	s, _ := admin.GetSemaphore(ctx, "gpu")
	fmt.Println("in use afterwards:", s.State.InUse)
	// Output:
	// in use while running: 1
	// error: <nil>
	// in use afterwards: 0
}
