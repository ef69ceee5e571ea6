package tests

// Multi-instance websocket tests (SPEC §7, §2 guarantees 1 and 3): three
// semaphored processes share one Redis (or one Redis Cluster); SDK
// websocket workers are connected to each; jobs are enqueued through all
// three into a semaphore without routes (the websocket route). The
// workers' own record of concurrency never exceeds maxValue, and every
// accepted job ends done. Then one instance is killed with SIGKILL in the
// middle of the stream: its workers reconnect to a survivor (resuming
// their sessions or starting fresh ones) and no job is lost.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// Shape of the multi-instance tests.
const (
	wsMaxValue       = 6
	wsWorkersPerInst = 2
	wsPrefetch       = 2
	wsJobsBefore     = 150 // enqueued through all three before the kill
	wsJobsAfter      = 150 // enqueued through the survivors after it
	wsKillAfter      = 60  // distinct jobs done before the kill
	wsDeadline       = 40 * time.Second
)

func TestWebsocket_ThreeInstances_Redis(t *testing.T) {
	t.Parallel()
	url := testredis.URL(t)
	prefix := "e2e-ws-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	runThreeInstances(t, []string{"--redis-url", url, "--redis-prefix", prefix})
}

func TestWebsocket_ThreeInstances_RedisCluster(t *testing.T) {
	t.Parallel()
	addrs := testredis.StartCluster(t)
	runThreeInstances(t, []string{"--redis-url", strings.Join(addrs, ","), "--redis-prefix", "e2e-ws"})
}

// wsRecorder is what the workers of a test saw, across all of them.
type wsRecorder struct {
	running    atomic.Int64
	peak       atomic.Int64
	deliveries atomic.Int64
	mu         sync.Mutex
	done       map[string]int // job id → successful handler runs
	changed    chan struct{}  // signalled on every new distinct id
}

func (r *wsRecorder) handler(ctx context.Context, j sdk.Job) error {
	r.deliveries.Add(1)
	n := r.running.Add(1)
	for {
		p := r.peak.Load()
		if n <= p || r.peak.CompareAndSwap(p, n) {
			break
		}
	}
	select {
	case <-time.After(time.Duration(2+rand.IntN(8)) * time.Millisecond):
	case <-ctx.Done():
	}
	r.running.Add(-1) // before the release, which frees the permit
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.mu.Lock()
	r.done[j.ID]++
	first := r.done[j.ID] == 1
	r.mu.Unlock()
	if first {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
	return nil
}

func (r *wsRecorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.done)
}

// waitDistinct waits (bounded) until n distinct jobs were handled.
func (r *wsRecorder) waitDistinct(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for r.distinct() < n {
		select {
		case <-r.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%d of %d distinct jobs handled within %v", r.distinct(), n, within)
		}
	}
}

// wsWorker is one SDK worker and the connections it made.
type wsWorker struct {
	name     string
	w        *sdk.Worker
	mu       sync.Mutex
	connects []sdk.ConnectEvent
}

func (w *wsWorker) events() []sdk.ConnectEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]sdk.ConnectEvent(nil), w.connects...)
}

func runThreeInstances(t *testing.T, redisArgs []string) {
	args := append(redisArgs, "--admin-key", adminKey, "--webhook-allow-private")
	insts := []*instance{start(t, "A", args), start(t, "B", args), start(t, "C", args)}
	a := insts[0]
	ctx := t.Context()
	_, err := a.admin.PutSemaphore(ctx, "ws", sdk.SemaphoreConfig{
		MaxValue: wsMaxValue, LeaseTimeout: 3 * time.Second, MaxAttempts: 20, OnSessionLost: "release",
	})
	require.NoError(t, err)
	key, err := a.admin.CreateKey(ctx, sdk.RoleWorker, "ws workers")
	require.NoError(t, err)

	rec := &wsRecorder{done: map[string]int{}, changed: make(chan struct{}, 1)}
	var workers []*wsWorker
	for i, inst := range insts {
		// each worker knows every instance, its own first
		var others []string
		for k := 1; k < len(insts); k++ {
			others = append(others, insts[(i+k)%len(insts)].base)
		}
		for n := range wsWorkersPerInst {
			ww := &wsWorker{name: fmt.Sprintf("%s%d", inst.name, n)}
			tr := &http.Transport{}
			t.Cleanup(tr.CloseIdleConnections)
			w, err := sdk.NewWorker(inst.base, key.Secret,
				sdk.WithInstances(others...),
				sdk.WithReconnectBackoff(20*time.Millisecond, 500*time.Millisecond),
				sdk.WithWorkerHTTPClient(&http.Client{Transport: tr}),
				sdk.WithConnectHook(func(ev sdk.ConnectEvent) {
					ww.mu.Lock()
					ww.connects = append(ww.connects, ev)
					ww.mu.Unlock()
				}))
			require.NoError(t, err)
			ww.w = w
			t.Cleanup(func() { _ = w.Close() })
			require.NoError(t, w.Subscribe(ctx, "ws", "", wsPrefetch, rec.handler))
			workers = append(workers, ww)
		}
	}
	for _, ww := range workers {
		require.Len(t, ww.events(), 1, ww.name)
	}

	// The server's view of usage, sampled all along.
	var serverPeak atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampleCtx.Err() == nil {
			s, err := insts[1].admin.GetSemaphore(sampleCtx, "ws")
			if err == nil && s.State.InUse > serverPeak.Load() {
				serverPeak.Store(s.State.InUse)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() { stopSampling(); <-sampled }()

	// Enqueue through all three, concurrently.
	accepted := enqueueWS(t, insts, 0, wsJobsBefore)
	rec.waitDistinct(t, wsKillAfter, wsDeadline)
	t.Logf("at the kill: %d distinct jobs done, %d deliveries", rec.distinct(), rec.deliveries.Load())
	killed := sigkill(t, a)
	for id := range enqueueWS(t, insts[1:], wsJobsBefore, wsJobsBefore+wsJobsAfter) {
		accepted[id] = true
	}

	// Every accepted job ends done (status on a survivor), and was handled.
	survivor := insts[1].admin
	deadline := time.Now().Add(wsDeadline)
	pending := make(map[string]bool, len(accepted))
	for id := range accepted {
		pending[id] = true
	}
	for len(pending) > 0 {
		for id := range pending {
			j, err := survivor.GetJob(ctx, id)
			require.NoError(t, err)
			if j.Status == sdk.JobDone {
				delete(pending, id)
				continue
			}
			require.False(t, j.Status.Terminal(), "job %s ended %s: %s", id, j.Status, j.Error)
		}
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var some []string
			for id := range pending {
				j, _ := survivor.GetJob(ctx, id)
				some = append(some, fmt.Sprintf("%s %s attempts=%d", id, j.Status, j.Attempts))
				if len(some) == 5 {
					break
				}
			}
			t.Fatalf("%d of %d jobs not done %v after the kill, e.g. %v", len(pending), len(accepted), time.Since(killed), some)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("all %d jobs done %v after the kill; %d deliveries for %d distinct jobs; worker peak %d, server peak %d",
		len(accepted), time.Since(killed).Round(time.Millisecond), rec.deliveries.Load(), rec.distinct(), rec.peak.Load(), serverPeak.Load())

	rec.mu.Lock()
	for id := range accepted {
		require.GreaterOrEqual(t, rec.done[id], 1, "job %s done but never handled", id)
	}
	require.Len(t, rec.done, len(accepted), "no job handled that was not accepted")
	rec.mu.Unlock()
	require.LessOrEqual(t, rec.peak.Load(), int64(wsMaxValue), "maxValue exceeded (workers' count)")
	require.LessOrEqual(t, serverPeak.Load(), int64(wsMaxValue), "maxValue exceeded (server's inUse)")

	// A's workers reconnected to a survivor, resumed or fresh.
	for _, ww := range workers[:wsWorkersPerInst] {
		evs := ww.events()
		require.GreaterOrEqual(t, len(evs), 2, "%s did not reconnect", ww.name)
		last := evs[len(evs)-1]
		require.NotEqual(t, a.base, last.URL, ww.name)
		require.True(t, last.Reconnect)
		t.Logf("%s reconnected to %s, resumed=%v", ww.name, last.URL, last.Resumed)
	}
}

// enqueueWS enqueues jobs [from, to) round-robin through insts, from one
// goroutine per instance, and returns the accepted ids.
func enqueueWS(t *testing.T, insts []*instance, from, to int) map[string]bool {
	t.Helper()
	var (
		mu       sync.Mutex
		accepted = map[string]bool{}
		wg       sync.WaitGroup
		errs     = make(chan error, len(insts))
	)
	for k, inst := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := from + k; i < to; i += len(insts) {
				j, err := inst.admin.Enqueue(t.Context(), "ws", map[string]int{"n": i}, sdk.EnqueueOptions{})
				if err != nil {
					errs <- fmt.Errorf("enqueue %d through %s: %w", i, inst.name, err)
					return
				}
				mu.Lock()
				accepted[j.ID] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, accepted, to-from)
	return accepted
}
