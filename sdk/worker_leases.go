package sdk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Session-bound leases over the worker's websocket: Acquire, Extend,
// Release and Do.

// heldLease is a session-bound lease the worker keeps alive.
type heldLease struct {
	id       string
	ttl      time.Duration
	stop     chan struct{} // closed at release
	lost     chan struct{} // closed when the lease is gone
	stopOnce sync.Once
	lostOnce sync.Once
}

func (l *heldLease) markLost()    { l.lostOnce.Do(func() { close(l.lost) }) }
func (l *heldLease) markStopped() { l.stopOnce.Do(func() { close(l.stop) }) }

// Acquire takes a permit over the websocket. The lease is bound to the
// session: the worker extends it every ttl/3 until Release (or until the
// worker closes), and if the worker's process dies, the server releases it
// once the session's grace period is over. AcquireOptions.IdempotencyKey is
// not used on the websocket. When the connection drops before the reply
// the error is ErrConnectionLost; a lease granted meanwhile is released by
// the worker.
func (w *Worker) Acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, error) {
	l, _, err := w.acquire(ctx, semaphore, opts)
	return l, err
}

func (w *Worker) acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, *heldLease, error) {
	req := acquireFrame{Type: "acquire", Semaphore: semaphore, Channel: opts.Channel, TTL: durPtr(opts.TTL), Wait: durPtr(opts.Wait)}
	if opts.Weight != 0 {
		req.Weight = &opts.Weight
	}
	f, err := w.call(ctx, req)
	if err != nil {
		return Lease{}, nil, err
	}
	if f.Lease == nil {
		return Lease{}, nil, fmt.Errorf("sdk: websocket: %q reply without lease", f.Type)
	}
	l := Lease(*f.Lease)
	ttl := opts.TTL
	if ttl <= 0 {
		ttl = l.TTL()
	}
	hl := &heldLease{id: l.ID, ttl: max(ttl, time.Second), stop: make(chan struct{}), lost: make(chan struct{})}
	w.mu.Lock()
	w.leases[l.ID] = hl
	w.mu.Unlock()
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		w.keepAlive(w.ctx, hl.id, hl.ttl, hl.stop, func() {
			hl.markLost()
			w.mu.Lock()
			if w.leases[hl.id] == hl {
				delete(w.leases, hl.id)
			}
			w.mu.Unlock()
		})
	}()
	return l, hl, nil
}

// Extend sets a lease's time to live to ttl from now (also a job's lease).
// The worker's keep-alive of a lease it acquired goes on with the new ttl.
func (w *Worker) Extend(ctx context.Context, leaseID string, ttl time.Duration) (Lease, error) {
	f, _, err := w.retry(ctx, extendFrame{Type: "extend", Lease: leaseID, TTL: duration(ttl)})
	if err != nil {
		return Lease{}, err
	}
	w.mu.Lock()
	if hl := w.leases[leaseID]; hl != nil {
		hl.ttl = max(ttl, time.Second)
	}
	w.mu.Unlock()
	if f.Lease == nil {
		return Lease{}, nil
	}
	return Lease(*f.Lease), nil
}

// Release ends a lease acquired over the websocket (or any lease of the
// tenant) and stops its keep-alive. It is retried across a reconnection; a
// lease found gone on the retry counts as released.
func (w *Worker) Release(ctx context.Context, leaseID string) (Lease, error) {
	w.mu.Lock()
	hl := w.leases[leaseID]
	delete(w.leases, leaseID)
	w.mu.Unlock()
	if hl != nil {
		hl.markStopped()
	}
	f, retried, err := w.retry(ctx, map[string]string{"type": "release", "lease": leaseID})
	if err != nil {
		if retried && IsLeaseNotFound(err) {
			return Lease{ID: leaseID}, nil
		}
		return Lease{}, err
	}
	if f.Lease == nil {
		return Lease{ID: leaseID}, nil
	}
	return Lease(*f.Lease), nil
}

// keepAlive extends a lease every ttl/3 until stop is closed or ctx ends,
// and calls onLost (then returns) when the server says the lease is gone
// or no extend succeeded for a whole ttl.
func (w *Worker) keepAlive(ctx context.Context, leaseID string, ttl time.Duration, stop <-chan struct{}, onLost func()) {
	deadline := time.Now().Add(ttl)
	for {
		interval := ttl / 3
		w.mu.Lock()
		if hl := w.leases[leaseID]; hl != nil {
			ttl, interval = hl.ttl, hl.ttl/3
		}
		w.mu.Unlock()
		t := time.NewTimer(interval)
		select {
		case <-stop:
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		sent := time.Now()
		ectx, cancel := context.WithTimeout(ctx, interval)
		_, err := w.call(ectx, extendFrame{Type: "extend", Lease: leaseID, TTL: duration(ttl)})
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(ttl)
		case IsLeaseNotFound(err), time.Now().After(deadline):
			select {
			case <-stop:
				return // released meanwhile
			default:
			}
			onLost()
			return
		}
	}
}

// Do runs fn while holding a permit taken over the websocket, like
// Client.Do: it acquires (waiting up to DefaultDoWait, see WithWait), keeps
// the lease alive, cancels fn's context with cause ErrLeaseLost if the lease
// is lost, and releases it when fn returns, also when fn panics.
func (w *Worker) Do(ctx context.Context, semaphore string, fn func(ctx context.Context, lease Lease) error, opts ...DoOption) (err error) {
	cfg := doConfig{acquire: AcquireOptions{Wait: DefaultDoWait}}
	for _, o := range opts {
		o(&cfg)
	}
	lease, hl, err := w.acquire(ctx, semaphore, cfg.acquire)
	if err != nil {
		return err
	}
	fnCtx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(w.jobCtx, func() { cancel(ErrWorkerClosed) })
	watch := make(chan struct{})
	go func() {
		select {
		case <-hl.lost:
			cancel(fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID))
		case <-watch:
		}
	}()
	defer func() {
		close(watch)
		stop()
		cancel(context.Canceled)
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		_, rerr := w.Release(rctx, lease.ID)
		rcancel()
		isLost := IsLeaseNotFound(rerr)
		select {
		case <-hl.lost:
			isLost = true
		default:
		}
		if isLost {
			err = errors.Join(fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID), err)
		}
	}()
	return fn(fnCtx, lease)
}
