package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// nSteadyMem is the row of the steady-load memory scenario.
const nSteadyMem = "Redis used_memory under steady load, retention.done 2s: growth from half-time to the end"

// steadyRetention is the retention of the steady-load scenario.
const steadyRetention = 2 * time.Second

// steadyMemory checks bounded storage (README guarantee 8): jobs go through the
// webhook funnel at a fixed rate (cfg.steadyRate jobs/s, enqueued one per
// request) for cfg.steadyFor on a semaphore with retention.done 2s, so
// about rate × 2 s done jobs are kept at any time and every later one is
// deleted. Redis used_memory is read at half-time and at the end (each the
// median of 5 readings 200 ms apart); the row is its growth between the
// two, in percent: flat when deletion keeps up. One round (the scenario is
// its own warm-up: the first half).
func (b *bench) steadyMemory(g string, e *sdEnv) error {
	rate, dur := b.cfg.steadyRate, b.cfg.steadyFor
	logf("%s: Redis memory under steady load (%d jobs/s for %v, retention.done %v)", g, rate, dur, steadyRetention)
	cfg := sdk.SemaphoreConfig{MaxValue: 100, LeaseTimeout: time.Minute,
		Retention: &sdk.Retention{Done: steadyRetention, Failed: steadyRetention}}
	f, err := newFunnelConfig(b.ctx, e, "steady", cfg, b.cfg.clients)
	if err != nil {
		return err
	}
	defer f.close()

	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	// A ticker hands out one token per job; enqueuers take them. Tokens
	// the enqueuers cannot take in time are counted, not queued up.
	tokens := make(chan struct{}, rate)
	var missed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		const tick = 10 * time.Millisecond
		t := time.NewTicker(tick)
		defer t.Stop()
		start, sent := time.Now(), 0
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				due := int(now.Sub(start).Seconds() * float64(rate))
				for ; sent < due; sent++ {
					select {
					case tokens <- struct{}{}:
					default:
						missed.Add(1)
					}
				}
			}
		}
	})
	var enqErr atomic.Value
	for range b.cfg.clients {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-tokens:
				}
				if err := e.enqueue(ctx, "steady", 1, 1); err != nil && ctx.Err() == nil {
					enqErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	memAt := func(at time.Time) (int64, error) {
		select {
		case <-time.After(time.Until(at)):
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
		var vals []float64
		for range 5 {
			v, err := usedMemory(b.ctx, b.rc)
			if err != nil {
				return 0, err
			}
			vals = append(vals, float64(v))
			time.Sleep(200 * time.Millisecond)
		}
		return int64(median(vals)), nil
	}
	start := time.Now()
	half, err := memAt(start.Add(dur / 2))
	if err != nil {
		return err
	}
	releasedHalf := f.released.Load()
	end, err := memAt(start.Add(dur))
	if err != nil {
		return err
	}
	released := f.released.Load()
	cancel()
	wg.Wait()
	if v := enqErr.Load(); v != nil {
		return v.(error)
	}
	f.errMu.Lock()
	ferr := f.err
	f.errMu.Unlock()
	if ferr != nil {
		return ferr
	}
	secondHalf := released - releasedHalf
	if want := int64(float64(rate) * (dur / 2).Seconds() * 0.9); secondHalf < want {
		return fmt.Errorf("the load did not hold: %d jobs released in the second half, want at least %d (%d tokens missed)", secondHalf, want, missed.Load())
	}
	b.add(row{group: g, name: nSteadyMem, unit: "%", vals: []float64{float64(end-half) / float64(half) * 100},
		note: fmt.Sprintf("%d jobs/s through the webhook funnel for %v, %d released; used_memory %.2f MiB at %v, %.2f MiB at the end; one round",
			rate, dur, released, float64(half)/(1<<20), dur/2, float64(end)/(1<<20))})
	return nil
}
