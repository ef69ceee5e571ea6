package main

import (
	"fmt"
	"math"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// kWSSync is the -only key of the websocket sync scenario (after the
// group: "semaphored (redis store) sync websocket").
const kWSSync = "sync websocket"

// wantWSSync reports whether the websocket sync scenario runs on either
// store.
func (b *bench) wantWSSync() bool {
	return b.hasHub() && (b.want(gRedis+" "+kWSSync) || b.want(gMemory+" "+kWSSync))
}

// wsSync: all the clients share one sdk.Worker, that is one websocket
// connection, and each does Worker.Acquire then Worker.Release on a
// semaphore with room for all (the HTTP uncontended scenario, with one
// frame per operation instead of one HTTP request). Its rows are printed
// next to the sorted-set peer called straight from Go with as many
// goroutines on the same Redis, with the ratio of the medians.
func (b *bench) wsSync(g string, e *sdEnv) error {
	ctx := b.ctx
	if err := e.put(ctx, "wsunc", sdk.SemaphoreConfig{MaxValue: 10_000, LeaseTimeout: time.Minute}); err != nil {
		return err
	}
	connected := make(chan struct{}, 1)
	w, err := sdk.NewWorker(e.base, e.secret, sdk.WithWorkerHTTPClient(httpClient),
		sdk.WithConnectHook(func(sdk.ConnectEvent) {
			select {
			case connected <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		return err
	}
	defer w.Close()
	select {
	case <-connected:
	case <-w.Done():
		return fmt.Errorf("websocket worker stopped: %w", w.Err())
	case <-time.After(10 * time.Second):
		return fmt.Errorf("websocket worker not connected after 10s")
	}
	opts := sdk.AcquireOptions{TTL: time.Minute}
	op := func(int) (int, error) {
		l, err := w.Acquire(ctx, "wsunc", opts)
		if err != nil {
			return 0, fmt.Errorf("acquire: %w", err)
		}
		if _, err := w.Release(ctx, l.ID); err != nil {
			return 0, fmt.Errorf("release: %w", err)
		}
		return 1, nil
	}
	rows := b.measure(g, nWSSync, "pairs/s",
		fmt.Sprintf("%d goroutines share one sdk.Worker (one connection), maxValue 10,000", b.cfg.clients), g == gRedis, op)
	ratio := row{group: g, name: nWSSync + ": ratio to the sorted-set peer, uncontended", unit: "×",
		note: "median / the peer's median in this run (the peer: straight to Redis from Go, same clients)"}
	if v := rows[0].median() / b.find("peer", nPeerUnc); !math.IsNaN(v) && !math.IsInf(v, 0) {
		ratio.vals = []float64{v}
	} else {
		ratio.note = "not measured: the scenario or the peer has no median"
	}
	b.addNear(nPeerUnc, append(rows, ratio)...)
	return nil
}
