package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// The fallback transports (README "Behind a proxy"): the async funnel to SDK
// workers on each transport, side by side on one server, and the server's
// memory per idle SSE session beside an idle websocket session, each on a
// server of its own.

// kTransports is the -only key of these scenarios (after the group).
const kTransports = "transports"

// nTransportFunnel names the funnel row of a transport.
func nTransportFunnel(tr sdk.Transport) string {
	return "async funnel to SDK workers over " + string(tr) + ": enqueue (HTTP) → pushed → ack + release"
}

// hasFallback reports whether the checkout serves SSE and long-poll.
func (b *bench) hasFallback() bool {
	_, err := os.Stat(filepath.Join(b.cfg.repo, "hub/sse.go"))
	return err == nil
}

// transportFunnel runs the funnel through 4 SDK workers (prefetch 25) on
// transport tr; a handler returns at once.
func (b *bench) transportFunnel(g string, e *sdEnv, tr sdk.Transport) error {
	logf("%s: async funnel to SDK workers over %s", g, tr)
	sem := "tfunnel-" + string(tr)
	routes, _ := json.Marshal([]map[string]any{{"type": "websocket"}})
	if err := e.put(b.ctx, sem, sdk.SemaphoreConfig{MaxValue: 100, LeaseTimeout: time.Minute, Routes: routes}); err != nil {
		return err
	}
	var done atomic.Int64
	var workers []*sdk.Worker
	defer func() {
		for _, w := range workers {
			_ = w.Close()
		}
	}()
	for range 4 {
		w, err := sdk.NewWorker(e.base, e.secret, sdk.WithTransport(tr), sdk.WithWorkerHTTPClient(httpClient))
		if err != nil {
			return err
		}
		workers = append(workers, w)
		if err := w.Subscribe(b.ctx, sem, "", 25, func(context.Context, sdk.Job) error {
			done.Add(1)
			return nil
		}); err != nil {
			return err
		}
	}
	round := func(n int) (float64, error) {
		target := done.Load() + int64(n)
		start := time.Now()
		if err := e.enqueue(b.ctx, sem, n, b.cfg.clients); err != nil {
			return 0, err
		}
		deadline := time.Now().Add(60 * time.Second)
		for done.Load() < target {
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("%s funnel: %d of %d jobs within 60s", tr, n-int(target-done.Load()), n)
			}
			time.Sleep(time.Millisecond)
		}
		// the handler's return is followed by the release: count the
		// round when the semaphore is empty again
		for {
			s, err := e.admin.GetSemaphore(b.ctx, sem)
			if err != nil {
				return 0, err
			}
			if s.State.InUse == 0 {
				break
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("%s funnel: permits still held after 60s", tr)
			}
			time.Sleep(time.Millisecond)
		}
		return float64(n) / time.Since(start).Seconds(), nil
	}
	rate, err := round(1000) // warm-up
	if err != nil {
		return err
	}
	n := b.sizeRound(rate)
	r := row{group: g, name: nTransportFunnel(tr), unit: "jobs/s",
		note: fmt.Sprintf("maxValue 100, 4 SDK workers × prefetch 25, 100-byte payload, %d jobs/round", n)}
	c := b.costs(g, "async funnel to SDK workers over "+string(tr), "job", false)
	for range b.cfg.rounds {
		c.begin()
		v, err := round(n)
		if err != nil {
			return err
		}
		c.end(int64(n))
		r.vals = append(r.vals, v)
	}
	b.add(r)
	for _, cr := range c.rows() {
		b.add(cr)
	}
	return nil
}

// nIdleFresh names the idle session row of a transport kind.
func nIdleFresh(kind string) string {
	return "server RSS per idle " + kind + " session, on a fresh server"
}

// idleFresh measures the server memory of idle sessions of one kind
// ("websocket" or "SSE") on a server of their own, started for it, so
// that memory a scenario before left to the runtime does not hide their
// cost: 100 sessions to warm up, then rounds × 200, the RSS growth per
// session of each round.
func (b *bench) idleFresh(g, kind string) error {
	const per = 200
	logf("%s: server RSS per idle %s session on a fresh server (%d×%d sessions)", g, kind, b.cfg.rounds, per)
	sp, base, err := b.fresh("idle-" + strings.ToLower(kind))
	if err != nil {
		return err
	}
	defer sp.stop()
	e, err := newSDEnv(b.ctx, base)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	// one connection per session, as separate workers have
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	open := func() error {
		if kind == "websocket" {
			c, err := e.dialWS(ctx)
			if err != nil {
				return err
			}
			closers = append(closers, func() { c.CloseNow() })
			return nil
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/v1/sse", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+e.secret)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		closers = append(closers, func() { resp.Body.Close() })
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v1/sse: %s", resp.Status)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || !strings.Contains(line, `"welcome"`) {
			return fmt.Errorf("no welcome event (%q, %v)", line, err)
		}
		return nil
	}
	for range 100 {
		if err := open(); err != nil {
			return err
		}
	}
	r := row{group: g, name: nIdleFresh(kind), unit: "KiB/session",
		note: fmt.Sprintf("VmRSS delta / %d sessions per round, after 100, cumulative to %d; a server of their own", per, 100+per*b.cfg.rounds)}
	pid := sp.cmd.Process.Pid
	for range b.cfg.rounds {
		time.Sleep(300 * time.Millisecond)
		before := rss(pid)
		for range per {
			if err := open(); err != nil {
				return err
			}
		}
		time.Sleep(300 * time.Millisecond)
		r.vals = append(r.vals, float64(rss(pid)-before)/per/1024)
	}
	b.add(r)
	return nil
}
