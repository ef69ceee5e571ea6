package tests

// Benchmarks of websocket workers. Run them with, e.g.:
//
//	go test -run '^$' -bench 'BenchmarkWebsocketJobs' -benchtime 5000x -count 5 ./tests/
//	go test -run '^$' -bench 'BenchmarkWebsocketIdleSession' -benchtime 1x -count 5 ./tests/
//
// BenchmarkWebsocketJobs reports jobs/s: jobs queued beforehand (the
// semaphore suspended), then resumed and delivered to SDK websocket
// workers, which release each one (a no-op handler); the clock stops when
// every job is done. BenchmarkWebsocketIdleSession reports the memory an
// idle websocket session costs one semaphored process (embedded store):
// RSS and Go heap in use, before and after opening the sessions.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/api"
	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// Shape of BenchmarkWebsocketJobs: the same workers whatever the number of
// instances (spread evenly over them).
const (
	benchWorkers  = 6
	benchPrefetch = 16
	benchMaxValue = 64
	benchEnqueuer = 16 // concurrent enqueue calls while the queue fills
)

func BenchmarkWebsocketJobs(b *testing.B) {
	b.Run("inprocess-1-memory", func(b *testing.B) {
		st := memory.New(memory.Options{})
		b.Cleanup(func() { _ = st.Close() })
		benchWSJobs(b, []string{inProcessNode(b, st, "bench-node")})
	})
	b.Run("inprocess-1-redis", func(b *testing.B) {
		st, err := redisstore.New(testredis.Client(b), redisstore.Options{
			Prefix: testredis.Prefix(b), NodeID: "bench-node", Logger: slog.New(slog.DiscardHandler),
		})
		require.NoError(b, err)
		b.Cleanup(func() { _ = st.Close() })
		benchWSJobs(b, []string{inProcessNode(b, st, "bench-node")})
	})
	for _, n := range []int{1, 3} {
		var bases []string
		parent := b // the processes serve every run of the sub-benchmark
		b.Run(fmt.Sprintf("processes-%d-redis", n), func(b *testing.B) {
			if bases == nil {
				args := []string{"--redis-url", testredis.URL(parent), "--redis-prefix", "bench-" + strings.TrimSuffix(testredis.Prefix(parent), ":"),
					"--admin-key", adminKey, "--log-level", "error"}
				for i := range n {
					bases = append(bases, start(parent, fmt.Sprintf("P%d", i), args, "SEMAPHORED_LOG_LEVEL=error").base)
				}
			}
			benchWSJobs(b, bases)
		})
	}
}

// inProcessNode serves a service, a hub and the API on st with logs
// discarded, its operator key adminKey, until the benchmark's cleanup.
func inProcessNode(b *testing.B, st store.Store, node string) string {
	b.Helper()
	ctx := context.Background()
	discard := slog.New(slog.DiscardHandler)
	wsHub, err := hub.New(hub.Config{Store: st, Node: node, Logger: discard})
	require.NoError(b, err)
	reg := prometheus.NewRegistry()
	svc, err := semaphore.New(semaphore.Config{Store: st, Logger: discard, Registerer: reg, Websocket: wsHub})
	require.NoError(b, err)
	_, err = svc.Bootstrap(ctx, adminKey)
	require.NoError(b, err)
	require.NoError(b, svc.Start(ctx))
	require.NoError(b, wsHub.Start(ctx))
	srv, err := api.New(api.Config{Service: svc, Hub: wsHub, Logger: discard, Registerer: reg, Gatherer: reg})
	require.NoError(b, err)
	hs := httptest.NewServer(srv.Handler())
	b.Cleanup(func() { // before the store's cleanup (LIFO)
		wsHub.Stop()
		hs.Close()
		svc.Stop()
	})
	return hs.URL
}

var benchSeq atomic.Int64

// benchWSJobs queues b.N jobs in a suspended semaphore, resumes it and
// times until workers connected to the instances at bases (spread evenly)
// have taken and released every one.
func benchWSJobs(b *testing.B, bases []string) {
	ctx := context.Background()
	name := fmt.Sprintf("bench-ws-%d", benchSeq.Add(1))
	tr := &http.Transport{MaxIdleConnsPerHost: 2 * benchEnqueuer}
	b.Cleanup(tr.CloseIdleConnections)
	var clients []*sdk.Client
	for _, base := range bases {
		c, err := sdk.New(base, adminKey, sdk.WithHTTPClient(&http.Client{Transport: tr}))
		require.NoError(b, err)
		clients = append(clients, c)
	}
	admin := clients[0]
	_, err := admin.PutSemaphore(ctx, name, sdk.SemaphoreConfig{MaxValue: benchMaxValue, LeaseTimeout: time.Minute})
	require.NoError(b, err)
	_, err = admin.Suspend(ctx, name)
	require.NoError(b, err)

	var handled atomic.Int64
	for i := range benchWorkers {
		w, err := sdk.NewWorker(bases[i%len(bases)], adminKey, sdk.WithWorkerHTTPClient(&http.Client{Transport: tr}))
		require.NoError(b, err)
		b.Cleanup(func() { _ = w.Close() })
		require.NoError(b, w.Subscribe(ctx, name, "", benchPrefetch, func(context.Context, sdk.Job) error {
			handled.Add(1)
			return nil
		}))
	}

	// Fill the queue, spread over the instances.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchEnqueuer)
	for k := range benchEnqueuer {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[k%len(clients)]
			for next.Add(1) <= int64(b.N) {
				if _, err := c.Enqueue(ctx, name, 1, sdk.EnqueueOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(b, err)
	}

	b.ResetTimer()
	began := time.Now()
	_, err = admin.Resume(ctx, name)
	require.NoError(b, err)
	deadline := began.Add(5 * time.Minute)
	for {
		if handled.Load() >= int64(b.N) {
			s, err := admin.GetSemaphore(ctx, name)
			require.NoError(b, err)
			if s.State.Queued == 0 && s.State.Inflight == 0 {
				break // every job released: done
			}
		}
		require.True(b, time.Now().Before(deadline), "jobs not done in time: %d of %d handled", handled.Load(), b.N)
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(began)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
}

// benchSessions is how many idle sessions BenchmarkWebsocketIdleSession
// opens.
const benchSessions = 2000

// BenchmarkWebsocketIdleSession opens benchSessions idle websocket
// sessions against one semaphored process (embedded store: the session
// records are in the process too) and reports, per session, the growth of
// the process's RSS and of its Go heap in use (go_memstats_heap_inuse_bytes),
// and how many sessions 1 GiB of RSS holds. b.N is ignored: use
// -benchtime 1x.
func BenchmarkWebsocketIdleSession(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchIdle(b, nil) })
	b.Run("redis", func(b *testing.B) {
		benchIdle(b, []string{"--redis-url", testredis.URL(b), "--redis-prefix", "idle-" + strings.TrimSuffix(testredis.Prefix(b), ":")})
	})
}

// benchIdle opens benchSessions idle sessions on a semaphored started with
// extra flags and reports the server's RSS and heap growth per session.
func benchIdle(b *testing.B, extra []string) {
	inst := start(b, "idle", append([]string{"--admin-key", adminKey, "--log-level", "error"}, extra...), "SEMAPHORED_LOG_LEVEL=error")
	pid := inst.cmd.Process.Pid
	settle := func() (rss, heap int64) {
		time.Sleep(2 * time.Second) // let the process's GC settle (idle: little garbage)
		return readRSS(b, pid), readHeapInuse(b, inst.base)
	}
	rss0, heap0 := settle()

	b.ResetTimer()
	conns := make([]*websocket.Conn, 0, benchSessions)
	b.Cleanup(func() {
		for _, c := range conns {
			_ = c.CloseNow()
		}
	})
	hdr := http.Header{"Authorization": {"Bearer " + adminKey}}
	url := "ws" + strings.TrimPrefix(inst.base, "http") + "/v1/ws"
	for range benchSessions {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
		require.NoError(b, err)
		_, msg, err := c.Read(ctx) // welcome: the session exists
		cancel()
		require.NoError(b, err)
		require.Contains(b, string(msg), `"welcome"`)
		conns = append(conns, c)
	}
	b.StopTimer()
	rss1, heap1 := settle()

	perRSS := float64(rss1-rss0) / benchSessions
	perHeap := float64(heap1-heap0) / benchSessions
	b.ReportMetric(perRSS, "B-rss/session")
	b.ReportMetric(perHeap, "B-heap/session")
	b.ReportMetric(float64(1<<30)/perRSS, "sessions/GiB")
	b.Logf("%d sessions: RSS %d → %d KiB, heap in use %d → %d KiB", benchSessions, rss0>>10, rss1>>10, heap0>>10, heap1>>10)
}

// readRSS returns the resident set size of a process, from /proc.
func readRSS(tb testing.TB, pid int) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(tb, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(tb, err)
			return kb << 10
		}
	}
	tb.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// readHeapInuse reads go_memstats_heap_inuse_bytes from an instance's
// /metrics.
func readHeapInuse(tb testing.TB, base string) int64 {
	tb.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	require.NoError(tb, err)
	req.Header.Set("Authorization", "Bearer "+adminKey) // an operator key
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	require.NoError(tb, err)
	require.Equal(tb, http.StatusOK, resp.StatusCode)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(tb, err)
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(tb, err)
			return int64(f)
		}
	}
	tb.Fatal("no go_memstats_heap_inuse_bytes in /metrics")
	return 0
}
