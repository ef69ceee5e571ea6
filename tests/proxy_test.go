package tests

// Workers behind proxies that break websockets (SPEC §6 "Fallback
// transports", issue 13): a semaphored process on Redis, a Go SDK worker
// in auto mode behind a proxy, 1,000 jobs enqueued directly. Behind a
// reverse proxy that refuses upgrades and buffers nothing, the worker
// runs on SSE; behind a TCP proxy that cuts every connection after 5 s
// (within the first heartbeat, 10 s), it falls back to long-poll on the
// way. Either way every job ends done: none is lost.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testproxy"
	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

const (
	proxyJobs     = 1000
	proxyDeadline = 90 * time.Second
)

func TestProxy_RefusesWebsockets(t *testing.T) {
	t.Parallel()
	inst := startProxied(t, "norupgrade")
	p := testproxy.StartNoUpgrade(inst.base, nil)
	t.Cleanup(p.Close)
	events := runBehindProxy(t, inst, p.URL, 0)
	require.Positive(t, p.Refused.Load(), "the proxy refused the websocket")
	for _, ev := range events {
		require.NotEqual(t, sdk.TransportWebsocket, ev.Transport, "no websocket passes this proxy")
	}
	require.Equal(t, sdk.TransportSSE, events[0].Transport, "SSE passes: the worker stays on it")
}

func TestProxy_CutsConnections(t *testing.T) {
	t.Parallel()
	inst := startProxied(t, "cutter")
	p, err := testproxy.StartCutter(strings.TrimPrefix(inst.base, "http://"), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	events := runBehindProxy(t, inst, p.URL, 50*time.Millisecond) // about 12 s: several cuts
	require.GreaterOrEqual(t, p.Cuts.Load(), int64(2), "the run outlived several connections")
	t.Logf("%d connections cut; connects: %v", p.Cuts.Load(), transportsOf(events))
}

func transportsOf(events []sdk.ConnectEvent) []string {
	var out []string
	for _, ev := range events {
		s := string(ev.Transport)
		if ev.Resumed {
			s += "(resumed)"
		}
		out = append(out, s)
	}
	return out
}

// startProxied starts one instance on Redis.
func startProxied(t *testing.T, name string) *instance {
	prefix := "e2e-proxy-" + name + "-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	return start(t, name, []string{"--redis-url", testredis.URL(t), "--redis-prefix", prefix, "--admin-key", adminKey})
}

// runBehindProxy runs proxyJobs jobs through a worker connected through
// the proxy at proxyURL, each handled for work, and requires every one
// done. It returns the worker's connections.
func runBehindProxy(t *testing.T, inst *instance, proxyURL string, work time.Duration) []sdk.ConnectEvent {
	ctx := t.Context()
	_, err := inst.admin.PutSemaphore(ctx, "jobs", sdk.SemaphoreConfig{MaxValue: 8, LeaseTimeout: 30 * time.Second, MaxAttempts: 50})
	require.NoError(t, err)
	key, err := inst.admin.CreateKey(ctx, sdk.RoleWorker, "proxied worker")
	require.NoError(t, err)

	var (
		mu     sync.Mutex
		events []sdk.ConnectEvent
		runs   = map[string]int{}
		done   = make(chan struct{})
	)
	w, err := sdk.NewWorker(proxyURL, key.Secret,
		sdk.WithReconnectBackoff(10*time.Millisecond, 500*time.Millisecond),
		sdk.WithConnectHook(func(ev sdk.ConnectEvent) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	require.NoError(t, w.Subscribe(ctx, "jobs", "", 4, func(ctx context.Context, j sdk.Job) error {
		select {
		case <-time.After(work):
		case <-ctx.Done():
			return ctx.Err()
		}
		mu.Lock()
		runs[j.ID]++
		if len(runs) == proxyJobs {
			close(done)
		}
		mu.Unlock()
		return nil
	}))

	var ids []string
	for len(ids) < proxyJobs {
		batch := make([]sdk.BatchJob, min(200, proxyJobs-len(ids)))
		for i := range batch {
			batch[i] = sdk.BatchJob{Payload: map[string]int{"n": len(ids) + i}}
		}
		jobs, err := inst.admin.EnqueueBatch(ctx, "jobs", batch)
		require.NoError(t, err)
		for _, j := range jobs {
			ids = append(ids, j.ID)
		}
	}
	select {
	case <-done:
	case <-time.After(proxyDeadline):
		mu.Lock()
		n := len(runs)
		mu.Unlock()
		t.Fatalf("%d of %d jobs handled within %s; connects %v", n, proxyJobs, proxyDeadline, transportsOf(events))
	}
	// every job ends done: none lost (a job handled twice, after a cut
	// took its ack, is counted)
	require.Eventually(t, func() bool {
		page, err := inst.admin.ListJobs(ctx, "jobs", sdk.ListJobsOptions{Status: sdk.JobDone, Limit: 1000})
		return err == nil && len(page.Jobs) == proxyJobs
	}, 30*time.Second, 50*time.Millisecond, "all %d jobs done", proxyJobs)
	mu.Lock()
	defer mu.Unlock()
	twice := 0
	for _, id := range ids {
		require.Positive(t, runs[id], "job %s never handled", id)
		if runs[id] > 1 {
			twice++
		}
	}
	t.Logf("%d jobs, %d handled more than once; connects: %v", proxyJobs, twice, transportsOf(events))
	require.NotEmpty(t, events)
	return append([]sdk.ConnectEvent(nil), events...)
}
