package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// adminKey is the fixed bootstrap operator key (--admin-key).
const adminKey = "sk_bench_0123456789abcdefghijklmnopqrstuvwxyz"

// httpClient is shared by every SDK client and raw call of the benchmark:
// enough idle connections per host for 64+ concurrent callers (the
// default transport keeps 2, and 62 callers would reconnect per call).
var httpClient = func() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 1024
	tr.MaxIdleConnsPerHost = 1024
	return &http.Client{Transport: tr}
}()

// sdEnv is a running semaphored with an admin and a worker client.
type sdEnv struct {
	base   string
	admin  *sdk.Client
	worker *sdk.Client
	secret string // worker key
}

func newSDEnv(ctx context.Context, base string) (*sdEnv, error) {
	admin, err := sdk.New(base, adminKey, sdk.WithHTTPClient(httpClient))
	if err != nil {
		return nil, err
	}
	k, err := admin.CreateKey(ctx, sdk.RoleWorker, fmt.Sprintf("bench-%d", time.Now().UnixNano()))
	if err != nil {
		return nil, fmt.Errorf("create worker key: %w", err)
	}
	worker, err := sdk.New(base, k.Secret, sdk.WithHTTPClient(httpClient))
	if err != nil {
		return nil, err
	}
	return &sdEnv{base: base, admin: admin, worker: worker, secret: k.Secret}, nil
}

func (e *sdEnv) put(ctx context.Context, name string, cfg sdk.SemaphoreConfig) error {
	_ = e.admin.DeleteSemaphore(ctx, name)
	_, err := e.admin.PutSemaphore(ctx, name, cfg)
	return err
}

// pair is one acquire + release through the SDK.
// The lease is held for hold (simulated work) before the release.
func (e *sdEnv) pair(ctx context.Context, sem string, wait, hold time.Duration) error {
	l, err := e.worker.Acquire(ctx, sem, sdk.AcquireOptions{TTL: time.Minute, Wait: wait})
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	if hold > 0 {
		time.Sleep(hold)
	}
	if _, err := e.worker.Release(ctx, l.ID); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// call is a raw JSON call (the SDK has no job methods yet) returning the
// status and body.
func (e *sdEnv) call(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.secret)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, b, err
}

// handoffRound measures n hand-offs on sem (maxValue 1) with queued
// acquires waiting: each sample releases the holder and times until the
// head waiter's acquire returns; a new waiter then joins the back, so the
// queue stays at queued.
func (e *sdEnv) handoffRound(ctx context.Context, sem string, n, queued int) ([]time.Duration, error) {
	holder, err := e.worker.Acquire(ctx, sem, sdk.AcquireOptions{TTL: time.Minute})
	if err != nil {
		return nil, fmt.Errorf("first acquire: %w", err)
	}
	type res struct {
		l   sdk.Lease
		at  time.Time
		err error
	}
	got := make(chan res, queued+n)
	spawn := func() {
		go func() {
			l, err := e.worker.Acquire(ctx, sem, sdk.AcquireOptions{TTL: time.Minute, Wait: 30 * time.Second})
			got <- res{l, time.Now(), err}
		}()
	}
	waitQueued := func() error {
		for deadline := time.Now().Add(5 * time.Second); ; {
			s, err := e.admin.GetSemaphore(ctx, sem)
			if err != nil {
				return err
			}
			if s.State != nil && s.State.Waiting == int64(queued) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d waiters not queued after 5s", queued)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	for range queued {
		spawn()
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		if err := waitQueued(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if _, err := e.worker.Release(ctx, holder.ID); err != nil {
			return nil, fmt.Errorf("release: %w", err)
		}
		var r res
		select {
		case r = <-got:
		case <-time.After(15 * time.Second):
			return nil, fmt.Errorf("no waiter answered 15s after the release")
		}
		if r.err != nil {
			return nil, fmt.Errorf("waiting acquire: %w", r.err)
		}
		lat = append(lat, r.at.Sub(t0))
		holder = r.l
		spawn()
	}
	// the queued waiters take the permit in turn: release each
	for range queued {
		if _, err := e.worker.Release(ctx, holder.ID); err != nil {
			return nil, err
		}
		select {
		case r := <-got:
			if r.err != nil {
				return nil, fmt.Errorf("waiting acquire: %w", r.err)
			}
			holder = r.l
		case <-time.After(15 * time.Second):
			return nil, fmt.Errorf("the waiters were not served after the round")
		}
	}
	if _, err := e.worker.Release(ctx, holder.ID); err != nil {
		return nil, err
	}
	slices.Sort(lat)
	return lat, nil
}

// funnel is the async scenario: jobs enqueued over HTTP are delivered by
// webhook to a local receiver, which answers 200 at once and hands the job
// id to releaser goroutines that release it through the API (inflight →
// done). The webhook signature is not verified (the receiver trusts
// loopback).
type funnel struct {
	e        *sdEnv
	sem      string
	srv      *http.Server
	url      string
	ids      chan string
	released atomic.Int64
	dups     atomic.Int64
	mu       sync.Mutex
	target   int64
	reached  chan struct{}
	errMu    sync.Mutex
	err      error
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	batch    int // jobs per enqueue request (0, 1: one job, no batch)
	// autoRelease: the route has releaseOnSuccess, so the 2xx ends the job
	// and the hook counts it (no releasers)
	autoRelease bool
}

// batchEnqueuers send the batches of a batch funnel: a few producers with
// many jobs each, as batch enqueue is meant for.
const batchEnqueuers = 8

func newFunnel(ctx context.Context, e *sdEnv, sem string, maxValue int64, releasers int) (*funnel, error) {
	return newFunnelConfig(ctx, e, sem, sdk.SemaphoreConfig{MaxValue: maxValue, LeaseTimeout: time.Minute}, releasers)
}

// newAutoFunnel is newFunnel with a releaseOnSuccess route: a job is done
// when the webhook answers 2xx.
func newAutoFunnel(ctx context.Context, e *sdEnv, sem string, maxValue int64) (*funnel, error) {
	return newFunnelRoute(ctx, e, sem, sdk.SemaphoreConfig{MaxValue: maxValue, LeaseTimeout: time.Minute}, 0, true)
}

// newFunnelConfig is newFunnel on a semaphore with cfg, its routes set to
// the funnel's webhook.
func newFunnelConfig(ctx context.Context, e *sdEnv, sem string, cfg sdk.SemaphoreConfig, releasers int) (*funnel, error) {
	return newFunnelRoute(ctx, e, sem, cfg, releasers, false)
}

func newFunnelRoute(ctx context.Context, e *sdEnv, sem string, cfg sdk.SemaphoreConfig, releasers int, autoRelease bool) (*funnel, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &funnel{e: e, sem: sem, ids: make(chan string, 1<<20), url: "http://" + ln.Addr().String() + "/hook", autoRelease: autoRelease}
	f.srv = &http.Server{Handler: http.HandlerFunc(f.hook), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = f.srv.Serve(ln) }()
	cfg.Routes, _ = json.Marshal([]map[string]any{{"type": "https", "url": f.url, "timeout": "10s", "attempts": 3, "releaseOnSuccess": autoRelease}})
	if err := e.put(ctx, sem, cfg); err != nil {
		_ = f.srv.Close()
		return nil, fmt.Errorf("put funnel semaphore: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	for range releasers {
		f.wg.Go(func() { f.releaser(rctx) })
	}
	return f, nil
}

func (f *funnel) hook(w http.ResponseWriter, r *http.Request) {
	var msg struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&msg); err != nil || msg.ID == "" {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusOK)
	if f.autoRelease {
		f.done() // the 2xx ended the job (a redelivery would count twice: none here, leases are a minute)
		return
	}
	f.ids <- msg.ID
}

// done counts one finished job and wakes the round that waits for it.
func (f *funnel) done() {
	n := f.released.Add(1)
	f.mu.Lock()
	if f.reached != nil && n >= f.target {
		close(f.reached)
		f.reached = nil
	}
	f.mu.Unlock()
}

func (f *funnel) fail(err error) {
	f.errMu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.errMu.Unlock()
}

func (f *funnel) releaser(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case id := <-f.ids:
			st, body, err := f.e.call(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/release", []byte(`{}`))
			switch {
			case err != nil:
				if ctx.Err() == nil {
					f.fail(err)
				}
				continue
			case st == http.StatusConflict: // a redelivered job, already released
				f.dups.Add(1)
				continue
			case st != http.StatusOK:
				f.fail(fmt.Errorf("release job: %d %s", st, strings.TrimSpace(string(body))))
				continue
			}
			f.done()
		}
	}
}

func (f *funnel) close() {
	f.cancel()
	f.wg.Wait()
	_ = f.srv.Close()
}

// jobBody is an enqueue body with a payload of exactly 100 bytes (a JSON
// string: 98 characters and its quotes).
var jobBody = []byte(`{"payload":"` + strings.Repeat("x", 98) + `"}`)

// enqueue enqueues n jobs on sem from clients goroutines, one per request.
func (e *sdEnv) enqueue(ctx context.Context, sem string, n, clients int) error {
	return e.enqueueBatches(ctx, sem, n, 1, clients)
}

// batchBody is a batch enqueue body of n jobs shaped like jobBody's.
func batchBody(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"jobs":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"payload":"` + strings.Repeat("x", 98) + `"}`)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// enqueueBatches enqueues n jobs on sem from clients goroutines, size per
// request (1: jobBody, the single-job form; above: a batch enqueue, the
// last batch possibly smaller).
func (e *sdEnv) enqueueBatches(ctx context.Context, sem string, n, size, clients int) error {
	body := func(k int) []byte {
		if size == 1 {
			return jobBody
		}
		return batchBody(k)
	}
	full := body(size)
	var next atomic.Int64
	errc := make(chan error, clients)
	for range clients {
		go func() {
			for {
				end := next.Add(int64(size))
				start := end - int64(size)
				if start >= int64(n) {
					break
				}
				b := full
				if end > int64(n) {
					b = body(int(int64(n) - start))
				}
				st, rb, err := e.call(ctx, http.MethodPost, "/v1/semaphores/"+sem+"/jobs", b)
				if err == nil && st != http.StatusAccepted {
					err = fmt.Errorf("enqueue: %d %s", st, strings.TrimSpace(string(rb)))
				}
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	var first error
	for range clients {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// round enqueues n jobs (in batches of f.batch when above 1) and returns
// jobs/s from the first enqueue until the n-th job was released.
func (f *funnel) round(ctx context.Context, n, clients int) (float64, error) {
	reached := make(chan struct{})
	f.mu.Lock()
	f.target = f.released.Load() + int64(n)
	f.reached = reached
	f.mu.Unlock()
	start := time.Now()
	enqueue := func() error { return f.e.enqueue(ctx, f.sem, n, clients) }
	if f.batch > 1 {
		enqueue = func() error { return f.e.enqueueBatches(ctx, f.sem, n, f.batch, batchEnqueuers) }
	}
	if err := enqueue(); err != nil {
		return 0, err
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		f.errMu.Lock()
		defer f.errMu.Unlock()
		return 0, fmt.Errorf("funnel: %d jobs not released within 60s (first error: %v)", n, f.err)
	}
	f.errMu.Lock()
	err := f.err
	f.errMu.Unlock()
	return float64(n) / time.Since(start).Seconds(), err
}
