package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// Rate limit scenarios (issue 11): the cost of a rate that never binds, the
// throughput and slot lateness at a rate that binds, and the Redis memory
// of a full window.
const (
	nUncRate   = "sync acquire + release over HTTP (SDK), uncontended, with a rate that never binds"
	nRateBound = "sync acquire + release at a binding rate of 1,000/s, waiting acquires"
	nRateLate  = "rate-bound grants: lateness after the slot, p99"
	nRateMem   = "Redis memory of a full rate window of 10,000 units"

	rateBoundLimit = 1000
)

// putRaw creates or replaces a semaphore from raw JSON with the admin key
// (the config has fields the SDK of an older checkout may not know).
func (e *sdEnv) putRaw(ctx context.Context, name, cfg string) error {
	_ = e.admin.DeleteSemaphore(ctx, name)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, e.base+"/v1/semaphores/"+name, bytes.NewReader([]byte(cfg)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put %s: %d %s", name, resp.StatusCode, b)
	}
	return nil
}

func (b *bench) rate(g string, e *sdEnv, onRedis bool) error {
	ctx := b.ctx
	// A rate far above what the machine grants: the window's bookkeeping
	// is the whole cost.
	if err := e.putRaw(ctx, "unc-rate", `{"maxValue": 10000, "leaseTimeout": "1m", "rate": {"limit": 1000000, "period": "1s"}}`); err != nil {
		return err
	}
	b.throughput(g, nUncRate, "pairs/s", "64 clients, maxValue 10,000, rate 1,000,000 per 1s", false,
		func(int) (int, error) { return 1, e.pair(ctx, "unc-rate", 0, 0) })

	// A binding rate: 64 clients wait; grants come at the rate. Each
	// grant's lateness is its acquiredAt (Redis' clock) minus its slot, the
	// instant the grant 1,000 before it left the window.
	if err := e.putRaw(ctx, "bound", fmt.Sprintf(`{"maxValue": 10000, "leaseTimeout": "1m", "rate": {"limit": %d, "period": "1s"}}`, rateBoundLimit)); err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		grants []sdk.Lease
	)
	op := func(int) (int, error) {
		l, err := e.worker.Acquire(ctx, "bound", sdk.AcquireOptions{TTL: time.Minute, Wait: 10 * time.Second})
		if err != nil {
			return 0, fmt.Errorf("acquire: %w", err)
		}
		mu.Lock()
		grants = append(grants, l)
		mu.Unlock()
		if _, err := e.worker.Release(ctx, l.ID); err != nil {
			return 0, fmt.Errorf("release: %w", err)
		}
		return 1, nil
	}
	b.throughput(g, nRateBound, "pairs/s", "64 clients, maxValue 10,000, rate 1,000 per 1s (ideal 1,000/s)", false, op)
	// Lateness from one continuous run (the rounds above pause between
	// them, when no waiter is there at a slot): every grant after the first
	// full window, while 64 waiters are always queued.
	logf("%s: rate-bound lateness (one %v run)", g, 4*time.Second)
	mu.Lock()
	grants = nil
	mu.Unlock()
	if _, _, err := runFor(4*time.Second, b.cfg.clients, op); err != nil {
		return err
	}
	mu.Lock()
	late := rateLateness(grants, rateBoundLimit, time.Second)
	mu.Unlock()
	lr := row{group: g, name: nRateLate, unit: "ms", note: fmt.Sprintf("%d grants of one 4 s run, acquiredAt − (acquiredAt of the grant %d before + 1s)", len(late), rateBoundLimit)}
	if len(late) > 0 {
		lr.vals = []float64{msOf(percentile(late, 0.99))}
	}
	b.add(lr)
	b.add(row{group: g, name: "rate-bound grants: lateness after the slot, p50", unit: "ms", note: lr.note,
		vals: func() []float64 {
			if len(late) == 0 {
				return nil
			}
			return []float64{msOf(percentile(late, 0.50))}
		}()})

	if onRedis {
		if err := b.rateMemory(g, e); err != nil {
			b.add(row{group: g, name: nRateMem, unit: "KiB", note: label(err)})
		}
	}
	return nil
}

// rateLateness returns, sorted, how late each grant came after its slot
// in a rate-bound run: grants by fencing token, each one's slot being the
// instant the grant limit before it left the window.
func rateLateness(grants []sdk.Lease, limit int, period time.Duration) []time.Duration {
	slices.SortFunc(grants, func(a, b sdk.Lease) int { return int(a.FencingToken - b.FencingToken) })
	var out []time.Duration
	for i := limit; i < len(grants); i++ {
		slot := grants[i-limit].AcquiredAt.Add(period)
		d := grants[i].AcquiredAt.Sub(slot)
		if d < 0 {
			continue // not bound by the rate here (a gap between rounds)
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// rateMemory fills a window of 10,000 units (an hour-long period, the
// leases released) and reports Redis' used_memory delta.
func (b *bench) rateMemory(g string, e *sdEnv) error {
	logf("%s: Redis memory of a full rate window", g)
	r := row{group: g, name: nRateMem, unit: "KiB", note: "used_memory delta after 10,000 grants of weight 1 (released) on a semaphore with rate 10,000 per 1h"}
	for i := range b.cfg.rounds {
		name := fmt.Sprintf("ratemem%d", i)
		if err := e.putRaw(b.ctx, name, `{"maxValue": 10000, "leaseTimeout": "1m", "rate": {"limit": 10000, "period": "1h"}}`); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
		before, err := usedMemory(b.ctx, b.rc)
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		errs := make(chan error, b.cfg.clients)
		per := 10_000 / b.cfg.clients
		for w := range b.cfg.clients {
			n := per
			if w == 0 {
				n += 10_000 - per*b.cfg.clients
			}
			wg.Go(func() {
				for range n {
					if err := e.pair(b.ctx, name, 0, 0); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
		after, err := usedMemory(b.ctx, b.rc)
		if err != nil {
			return err
		}
		r.vals = append(r.vals, float64(after-before)/1024)
		if err := e.admin.DeleteSemaphore(b.ctx, name); err != nil {
			return err
		}
	}
	b.add(r)
	return nil
}
