package api

// Benchmarks through the whole HTTP stack: a real net/http server on a
// loopback port (httptest.NewServer), a real http.Client with keep-alive
// connections, JSON bodies and bearer auth, the service with its sweeper
// running, on the memory store and on a real redis-server (internal/testredis).
//
//	go test -run '^$' -bench 'BenchmarkHTTPAcquireRelease' -benchtime 5s -count 5 ./api/
//	go test -run '^$' -bench 'BenchmarkHTTPHandoff' -benchtime 200x -count 5 ./api/
//	go test -run '^$' -bench 'BenchmarkFunnel' -benchtime 5000x -count 5 ./api/
//	go test -run '^$' -bench 'BenchmarkRedisBytesPerJob' -benchtime 1x -count 5 ./api/

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/delivery"
	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
	redisstore "github.com/semaphored/semaphored/store/redis"
)

// benchClients is the number of concurrent HTTP clients of
// BenchmarkHTTPAcquireRelease.
const benchClients = 64

// benchStore is a store under benchmark: open returns a fresh one, closed at
// the benchmark's cleanup.
type benchStore struct {
	name string
	open func(b *testing.B) store.Store
}

var benchStores = []benchStore{
	{"memory", func(b *testing.B) store.Store {
		st := memory.New(memory.Options{})
		b.Cleanup(func() { _ = st.Close() })
		return st
	}},
	{"redis", func(b *testing.B) store.Store {
		c := testredis.Client(b) // closed at cleanup, after the store
		st, err := redisstore.New(c, redisstore.Options{Prefix: testredis.Prefix(b), Logger: slog.New(slog.DiscardHandler)})
		require.NoError(b, err)
		b.Cleanup(func() { require.NoError(b, st.Close()) })
		return st
	}},
}

// benchEnv is a running server and a client with the keys of tenant "bench".
type benchEnv struct {
	url    string
	client *http.Client
	admin  string // admin key of tenant "bench"
	worker string // worker key of tenant "bench"
}

// newBenchEnv starts the service (sweeper on) and the HTTP server on st,
// with logs discarded, and creates tenant "bench" with an admin and a worker
// key. Everything stops at the benchmark's cleanup, before st is closed.
// opts adjust the service's config (webhooks, routing options).
func newBenchEnv(b *testing.B, st store.Store, opts ...func(*semaphore.Config)) *benchEnv {
	b.Helper()
	ctx := context.Background()
	discard := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	cfg := semaphore.Config{Store: st, Logger: discard, Registerer: reg}
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := semaphore.New(cfg)
	require.NoError(b, err)
	require.NoError(b, svc.Start(ctx))
	srv, err := New(Config{Service: svc, Logger: discard, Registerer: reg, Gatherer: reg})
	require.NoError(b, err)
	hs := httptest.NewServer(srv.Handler())

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 2 * benchClients
	tr.MaxIdleConnsPerHost = 2 * benchClients
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	b.Cleanup(func() { // runs before the store's cleanup (LIFO)
		client.CloseIdleConnections()
		hs.Close()
		svc.Stop()
	})

	operator, err := svc.Bootstrap(ctx, "")
	require.NoError(b, err)
	opKey, err := svc.Authenticate(ctx, operator)
	require.NoError(b, err)
	_, _, admin, err := svc.CreateTenant(ctx, opKey, "bench")
	require.NoError(b, err)
	adminKey, err := svc.Authenticate(ctx, admin)
	require.NoError(b, err)
	_, worker, err := svc.CreateKey(ctx, adminKey, store.RoleWorker, "bench-worker")
	require.NoError(b, err)
	return &benchEnv{url: hs.URL, client: client, admin: admin, worker: worker}
}

// call sends a JSON request with key as bearer and decodes a 200 answer into
// out (when not nil). at is when the whole response had arrived (before
// decoding). Any other status is an error. Safe to call from any goroutine.
func (e *benchEnv) call(method, path, key string, body []byte, out any) (at time.Time, err error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, r)
	if err != nil {
		return time.Time{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := e.client.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	data, err := io.ReadAll(resp.Body) // read to the end: the connection is reused
	_ = resp.Body.Close()
	at = time.Now()
	if err != nil {
		return at, err
	}
	if resp.StatusCode != http.StatusOK {
		return at, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return at, fmt.Errorf("%s %s: %w: %s", method, path, err, data)
		}
	}
	return at, nil
}

func (e *benchEnv) put(b *testing.B, name, config string) {
	b.Helper()
	_, err := e.call(http.MethodPut, "/v1/semaphores/"+name, e.admin, []byte(config), nil)
	require.NoError(b, err)
}

func (e *benchEnv) acquire(name string, body []byte) (LeaseJSON, time.Time, error) {
	var out LeaseResponse
	at, err := e.call(http.MethodPost, "/v1/semaphores/"+name+"/acquire", e.worker, body, &out)
	return out.Lease, at, err
}

var releaseBody = []byte(`{}`)

func (e *benchEnv) release(id string) error {
	_, err := e.call(http.MethodPost, "/v1/leases/"+url.PathEscape(id)+"/release", e.worker, releaseBody, nil)
	return err
}

// BenchmarkHTTPAcquireRelease: acquire+release pairs by exactly 64
// concurrent clients (goroutines sharing b.N) on a semaphore that never
// fills. One op is one pair; reports pairs/s.
func BenchmarkHTTPAcquireRelease(b *testing.B) {
	for _, bs := range benchStores {
		b.Run(bs.name, func(b *testing.B) {
			e := newBenchEnv(b, bs.open(b))
			e.put(b, "pairs", `{"maxValue": 1000000, "leaseTimeout": "60s"}`)
			acquireBody := []byte(`{"ttl": "60s"}`)

			var next atomic.Int64
			var failed atomic.Bool
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for range benchClients {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) && !failed.Load() {
						l, _, err := e.acquire("pairs", acquireBody)
						if err == nil {
							err = e.release(l.ID)
						}
						if err != nil {
							failed.Store(true)
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
		})
	}
}

// BenchmarkHTTPHandoff: a holder holds the only permit, a waiter is queued
// (acquire with wait "10s", seen as state.waiting == 1); the time from just
// before the holder's release is sent until the waiter's acquire response has
// arrived. The waiter then holds the permit for the next round. Reports p50
// and p99 over the b.N samples; ns/op is their mean.
func BenchmarkHTTPHandoff(b *testing.B) {
	for _, bs := range benchStores {
		b.Run(bs.name, func(b *testing.B) {
			e := newBenchEnv(b, bs.open(b))
			e.put(b, "handoff", `{"maxValue": 1, "leaseTimeout": "60s"}`)
			holder, _, err := e.acquire("handoff", []byte(`{"ttl": "60s"}`))
			require.NoError(b, err)
			waitBody := []byte(`{"ttl": "60s", "wait": "10s"}`)

			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				got := make(chan handoffResult, 1)
				go func() {
					l, at, err := e.acquire("handoff", waitBody)
					got <- handoffResult{l, at, err}
				}()
				e.waitQueued(b, "handoff", got)
				b.StartTimer()

				t0 := time.Now()
				require.NoError(b, e.release(holder.ID))
				var r handoffResult
				select {
				case r = <-got:
				case <-time.After(15 * time.Second):
					b.Fatal("the waiter got no answer 15s after the release")
				}
				require.NoError(b, r.err)
				lat = append(lat, r.at.Sub(t0))
				holder = r.lease
			}
			b.StopTimer()
			require.NoError(b, e.release(holder.ID))

			slices.Sort(lat)
			b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
			b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
		})
	}
}

// handoffResult is the answer to a waiting acquire and when it arrived.
type handoffResult struct {
	lease LeaseJSON
	at    time.Time
	err   error
}

// waitQueued polls GET /v1/semaphores/{name} until state.waiting == 1, for
// at most 5s. It fails when the waiter is answered before being seen queued.
func (e *benchEnv) waitQueued(b *testing.B, name string, got <-chan handoffResult) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out SemaphoreResponse
		_, err := e.call(http.MethodGet, "/v1/semaphores/"+name, e.admin, nil, &out)
		require.NoError(b, err)
		if out.Semaphore.State != nil && out.Semaphore.State.Waiting == 1 {
			return
		}
		select {
		case r := <-got:
			b.Fatalf("the waiter was answered before it was seen queued: %+v", r)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("no waiter queued on %s after 5s (state %+v)", name, out.Semaphore.State)
		}
		time.Sleep(200 * time.Microsecond) // a bounded poll, not a wait for the measured event
	}
}

// percentile is the nearest-rank p-quantile of sorted samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// funnelMaxValue is the permits of BenchmarkFunnel's semaphore.
const funnelMaxValue = 100

// BenchmarkFunnel: jobs per second end to end. 16 clients enqueue b.N jobs
// over HTTP into a semaphore of maxValue 100 with one https route to an
// httptest receiver on loopback (--webhook-allow-private); the receiver
// answers 200 and releases the job over HTTP at once (no work, signature not
// verified), which dispatches the next queued job. The timer covers the
// first enqueue to the last release. Reports jobs/s, and conns/job: TCP
// connections the receiver accepted per job (the webhook sender keeps few
// idle connections per host, so a busy route opens new ones).
func BenchmarkFunnel(b *testing.B) {
	for _, bs := range benchStores {
		b.Run(bs.name, func(b *testing.B) {
			webhooks, err := delivery.NewWebhookSender(delivery.WebhookConfig{AllowPrivate: true, Logger: slog.New(slog.DiscardHandler)})
			require.NoError(b, err)
			b.Cleanup(webhooks.Close)
			e := newBenchEnv(b, bs.open(b), func(c *semaphore.Config) {
				c.Webhooks = webhooks
				c.Routing.AllowPrivate = true
			})

			var (
				released atomic.Int64
				conns    atomic.Int64
				failed   atomic.Pointer[error]
				wg       sync.WaitGroup
				finished = make(chan struct{})
				target   = int64(b.N)
			)
			fail := func(err error) {
				if failed.CompareAndSwap(nil, &err) {
					close(finished)
				}
			}
			recv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				id := r.Header.Get("webhook-id")
				w.WriteHeader(http.StatusOK)
				wg.Go(func() {
					if err := e.releaseJob(id); err != nil {
						fail(err)
						return
					}
					if released.Add(1) == target {
						close(finished)
					}
				})
			}))
			recv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			recv.Start()
			b.Cleanup(func() { // before the env's cleanup (LIFO): no release in flight
				wg.Wait()
				recv.Close()
			})
			e.put(b, "funnel", fmt.Sprintf(`{"maxValue": %d, "leaseTimeout": "60s", "routes": [{"type": "https", "url": %q}]}`,
				funnelMaxValue, recv.URL+"/hook"))

			body := []byte(`{"payload": {"order": 12345, "customer": "c-42"}}`)
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			var enq sync.WaitGroup
			for range 16 {
				enq.Go(func() {
					for next.Add(1) <= target && failed.Load() == nil {
						if _, err := e.enqueue("funnel", body); err != nil {
							fail(err)
							return
						}
					}
				})
			}
			enq.Wait()
			select {
			case <-finished:
			case <-time.After(2 * time.Minute):
				b.Fatalf("%d of %d jobs released after 2 minutes", released.Load(), target)
			}
			b.StopTimer()
			if err := failed.Load(); err != nil {
				b.Fatal(*err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
			b.ReportMetric(float64(conns.Load())/float64(b.N), "conns/job")
		})
	}
}

// enqueue posts a job and returns its id (202 expected).
func (e *benchEnv) enqueue(name string, body []byte) (string, error) {
	req, err := http.NewRequest(http.MethodPost, e.url+"/v1/semaphores/"+name+"/jobs", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.worker)
	resp, err := e.client.Do(req)
	if err != nil {
		return "", err
	}
	data, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("enqueue: %d %s", resp.StatusCode, data)
	}
	var out JobResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return "", err
	}
	return out.Job.ID, nil
}

func (e *benchEnv) releaseJob(id string) error {
	_, err := e.call(http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/release", e.worker, releaseBody, nil)
	return err
}

// BenchmarkRedisBytesPerJob: Redis memory per queued job with a 100-byte
// payload (payload included), on a dedicated redis-server: the growth of
// used_memory (less the client buffers, mem_clients_normal) while 10,000
// jobs are enqueued over HTTP by 8 clients (a small, warmed-up connection
// pool: client buffers of many connections would drown the signal) into a
// suspended semaphore. key-bytes/job is the same growth measured as the
// sum of MEMORY USAGE (SAMPLES 0) of every key. Then the semaphore is
// resumed; with no route and no websocket subscriber every job ends in
// error and is kept as a terminal job for its retention.failed (7d):
// bytes/terminal-job is used_memory then, per job, against the same
// baseline (the record carries the error text). One op is one round of
// 10,000 jobs into a fresh semaphore; run with -benchtime 1x.
func BenchmarkRedisBytesPerJob(b *testing.B) {
	const jobs = 10_000
	srv := testredis.StartServer(b, "--appendonly", "no")
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 8})
	b.Cleanup(func() { _ = rc.Close() })
	st, err := redisstore.New(rc, redisstore.Options{Prefix: "sd", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, st.Close()) })
	e := newBenchEnv(b, st)

	used := func() int64 {
		info, err := rc.InfoMap(context.Background(), "memory").Result()
		require.NoError(b, err)
		m := info["Memory"]
		var n, clients int64
		_, err = fmt.Sscan(m["used_memory"], &n)
		require.NoError(b, err)
		_, err = fmt.Sscan(m["mem_clients_normal"], &clients)
		require.NoError(b, err)
		return n - clients
	}
	enqueueAll := func(name string, n int, body []byte) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					if _, err := e.enqueue(name, body); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
	}
	payload := `{"p":"` + strings.Repeat("x", 100-8) + `"}`
	require.Len(b, payload, 100)
	body := []byte(`{"payload": ` + payload + `}`)

	keyBytes := func() int64 {
		ctx := context.Background()
		var sum int64
		iter := rc.Scan(ctx, 0, "*", 1000).Iterator()
		for iter.Next(ctx) {
			v, err := rc.MemoryUsage(ctx, iter.Val(), 0).Result()
			require.NoError(b, err)
			sum += v
		}
		require.NoError(b, iter.Err())
		return sum
	}

	var queued, queuedKeys, terminal float64
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("mem-%d", i)
		e.put(b, name, `{"maxValue": 1000, "leaseTimeout": "60s", "maxAttempts": 1}`)
		_, err := e.call(http.MethodPost, "/v1/semaphores/"+name+"/suspend", e.admin, []byte(`{}`), nil)
		require.NoError(b, err)
		enqueueAll(name, benchClients, body) // warm-up: scripts loaded, connection pool grown
		before, keysBefore := used(), keyBytes()
		enqueueAll(name, jobs, body)
		queued += float64(used()-before) / jobs
		queuedKeys += float64(keyBytes()-keysBefore) / jobs

		_, err = e.call(http.MethodPost, "/v1/semaphores/"+name+"/resume", e.admin, []byte(`{}`), nil)
		require.NoError(b, err)
		deadline := time.Now().Add(time.Minute)
		for {
			var out SemaphoreResponse
			_, err := e.call(http.MethodGet, "/v1/semaphores/"+name, e.admin, nil, &out)
			require.NoError(b, err)
			if s := out.Semaphore.State; s != nil && s.Queued == 0 && s.Inflight == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: jobs not all ended after a minute: %+v", name, out.Semaphore.State)
			}
			time.Sleep(10 * time.Millisecond) // a bounded poll
		}
		terminal += float64(used()-before) / jobs
	}
	b.StopTimer()
	b.ReportMetric(queued/float64(b.N), "bytes/job")
	b.ReportMetric(queuedKeys/float64(b.N), "key-bytes/job")
	b.ReportMetric(terminal/float64(b.N), "bytes/terminal-job")
}
