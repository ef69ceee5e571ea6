package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/semaphored/semaphored/sdk"
)

// Websocket scenarios (README "Websocket workers"): worker sessions subscribed to a semaphore
// take jobs pushed to them (ack at once, release when done), and idle
// sessions' server memory.

// dialWS opens a session with the worker key and reads its welcome frame.
func (e *sdEnv) dialWS(ctx context.Context) (*websocket.Conn, error) {
	u := "ws://" + strings.TrimPrefix(e.base, "http://") + "/v1/ws"
	h := http.Header{}
	h.Set("Authorization", "Bearer "+e.secret)
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, HTTPClient: httpClient})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	var f struct {
		Type string `json:"type"`
	}
	if err := readJSON(ctx, c, &f); err != nil || f.Type != "welcome" {
		c.CloseNow()
		return nil, fmt.Errorf("no welcome frame (got %q, %v)", f.Type, err)
	}
	return c, nil
}

func readJSON(ctx context.Context, c *websocket.Conn, v any) error {
	_, b, err := c.Read(ctx)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func writeJSON(ctx context.Context, c *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.Write(ctx, websocket.MessageText, b)
}

// wsFunnel: sessions subscribed with a prefetch; each pushed job is acked
// at once and released right after.
type wsFunnel struct {
	e        *sdEnv
	sem      string
	conns    []*websocket.Conn
	released atomic.Int64
	mu       sync.Mutex
	target   int64
	reached  chan struct{}
	errMu    sync.Mutex
	err      error
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func newWSFunnel(ctx context.Context, e *sdEnv, sem string, maxValue int64, sessions, prefetch int) (*wsFunnel, error) {
	routes, _ := json.Marshal([]map[string]any{{"type": "websocket"}})
	if err := e.put(ctx, sem, sdk.SemaphoreConfig{MaxValue: maxValue, LeaseTimeout: time.Minute, Routes: routes}); err != nil {
		return nil, fmt.Errorf("put ws funnel semaphore: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	f := &wsFunnel{e: e, sem: sem, cancel: cancel}
	for i := range sessions {
		c, err := e.dialWS(ctx)
		if err != nil {
			f.close()
			return nil, err
		}
		f.conns = append(f.conns, c)
		sub := map[string]any{"type": "subscribe", "id": fmt.Sprintf("s%d", i), "semaphore": sem, "prefetch": prefetch}
		if err := writeJSON(ctx, c, sub); err != nil {
			f.close()
			return nil, err
		}
		f.wg.Go(func() { f.worker(rctx, c) })
	}
	return f, nil
}

func (f *wsFunnel) fail(err error) {
	f.errMu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.errMu.Unlock()
}

func (f *wsFunnel) worker(ctx context.Context, c *websocket.Conn) {
	for {
		var fr struct {
			Type  string `json:"type"`
			Job   json.RawMessage
			Error *struct {
				Code, Message string
			} `json:"error"`
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		if err := readJSON(ctx, c, &fr); err != nil {
			if ctx.Err() == nil {
				f.fail(fmt.Errorf("ws read: %w", err))
			}
			return
		}
		switch fr.Type {
		case "job":
			var j struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(fr.Job, &j); err != nil || j.ID == "" {
				f.fail(fmt.Errorf("bad job frame: %v", err))
				return
			}
			if err := writeJSON(ctx, c, map[string]any{"type": "ack", "job": j.ID}); err != nil {
				f.fail(err)
				return
			}
			if err := writeJSON(ctx, c, map[string]any{"type": "release", "id": "r", "job": j.ID}); err != nil {
				f.fail(err)
				return
			}
		case "released":
			n := f.released.Add(1)
			f.mu.Lock()
			if f.reached != nil && n >= f.target {
				close(f.reached)
				f.reached = nil
			}
			f.mu.Unlock()
		case "error", "rejected":
			f.fail(fmt.Errorf("ws %s frame: %s %s %+v", fr.Type, fr.Code, fr.Message, fr.Error))
		}
	}
}

func (f *wsFunnel) close() {
	f.cancel()
	for _, c := range f.conns {
		c.CloseNow()
	}
	f.wg.Wait()
}

// round enqueues n jobs over HTTP and returns jobs/s from the first enqueue
// until the n-th job was released over the websocket.
func (f *wsFunnel) round(ctx context.Context, n, clients int) (float64, error) {
	reached := make(chan struct{})
	f.mu.Lock()
	f.target = f.released.Load() + int64(n)
	f.reached = reached
	f.mu.Unlock()
	start := time.Now()
	if err := f.e.enqueue(ctx, f.sem, n, clients); err != nil {
		return 0, err
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		f.errMu.Lock()
		defer f.errMu.Unlock()
		return 0, fmt.Errorf("ws funnel: %d jobs not released within 60s (first error: %v)", n, f.err)
	}
	f.errMu.Lock()
	err := f.err
	f.errMu.Unlock()
	return float64(n) / time.Since(start).Seconds(), err
}

func (b *bench) wsFunnel(g string, e *sdEnv, cmds bool) error {
	logf("%s: async funnel over websocket", g)
	f, err := newWSFunnel(b.ctx, e, "wsfunnel", 100, 4, 25)
	if err != nil {
		return err
	}
	defer f.close()
	rate, err := f.round(b.ctx, 1000, b.cfg.clients) // warm-up
	if err != nil {
		return err
	}
	n := b.sizeRound(rate)
	r := row{group: g, name: "async funnel over websocket: enqueue (HTTP) → pushed to a session → ack + release (ws)", unit: "jobs/s",
		note: fmt.Sprintf("maxValue 100, 4 sessions × prefetch 25, 100-byte payload, %d jobs/round", n)}
	c := b.costs(g, "async funnel over websocket", "job", cmds)
	for range b.cfg.rounds {
		c.begin()
		v, err := f.round(b.ctx, n, b.cfg.clients)
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

// wsIdleRSS opens rounds × per idle sessions (welcome received, nothing
// subscribed) and records the server's RSS growth per session of each
// round.
func (b *bench) wsIdleRSS(g string, e *sdEnv, pid int) error {
	const per = 200
	logf("%s: server RSS per idle websocket session (%d×%d sessions)", g, b.cfg.rounds, per)
	r := row{group: g, name: "server RSS per idle websocket session", unit: "KiB/session",
		note: fmt.Sprintf("VmRSS delta / %d sessions per round, cumulative to %d", per, per*b.cfg.rounds)}
	var all []*websocket.Conn
	defer func() {
		for _, c := range all {
			c.CloseNow()
		}
	}()
	for range b.cfg.rounds {
		time.Sleep(300 * time.Millisecond)
		before := rss(pid)
		for range per {
			c, err := e.dialWS(b.ctx)
			if err != nil {
				return err
			}
			all = append(all, c)
		}
		time.Sleep(300 * time.Millisecond)
		r.vals = append(r.vals, float64(rss(pid)-before)/per/1024)
	}
	b.add(r)
	return nil
}
