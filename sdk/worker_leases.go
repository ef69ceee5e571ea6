package sdk

import (
	"context"
	"fmt"
	"time"
)

// Session-bound leases over the worker's websocket: Acquire, Extend,
// Release and Do.

// Acquire takes a permit over the websocket. The lease is bound to the
// session: the worker extends it every ttl/3 until Release (or until the
// worker closes), and if the worker's process dies, the server releases it
// once the session's grace period is over. AcquireOptions.IdempotencyKey is
// not used on the websocket. When the connection drops before the reply
// the error is ErrConnectionLost; a lease granted meanwhile is released by
// the worker, as is one granted after ctx ended. The server runs a bounded
// number of waiting acquires (opts.Wait > 0) per connection at once and
// refuses more with an error for which IsRateLimited is true.
func (w *Worker) Acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, error) {
	l, _, err := w.acquire(ctx, semaphore, opts)
	return l, err
}

func (w *Worker) acquire(ctx context.Context, semaphore string, opts AcquireOptions) (Lease, *heldLease, error) {
	req := acquireFrame{Type: "acquire", Semaphore: semaphore, Channel: opts.Channel, TTL: durPtr(opts.TTL), Wait: durPtr(opts.Wait)}
	if opts.Weight != 0 {
		req.Weight = &opts.Weight
	}
	sent := time.Now() // before the request: see keepAlive
	f, err := w.call(ctx, req)
	if err != nil {
		return Lease{}, nil, err
	}
	if f.Lease == nil {
		return Lease{}, nil, fmt.Errorf("sdk: websocket: %q reply without lease", f.Type)
	}
	l := Lease(*f.Lease)
	hl := newHeldLease(w.ctx, l.ID, sent, leaseTTL(opts.TTL, l))
	w.mu.Lock()
	w.leases[l.ID] = hl
	w.mu.Unlock()
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		hl.keepAlive(w, func() {
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
// The worker's keep-alive of a lease it holds (acquired, or of a job it
// runs) goes on with the new ttl.
func (w *Worker) Extend(ctx context.Context, leaseID string, ttl time.Duration) (Lease, error) {
	sent := time.Now()
	f, _, err := w.retry(ctx, extendFrame{Type: "extend", Lease: leaseID, TTL: duration(ttl)})
	if err != nil {
		return Lease{}, err
	}
	if hl := w.held(leaseID); hl != nil {
		hl.extended(sent, max(ttl, time.Second))
	}
	if f.Lease == nil {
		return Lease{}, nil
	}
	return Lease(*f.Lease), nil
}

// held returns the keep-alive state of a lease the worker holds: acquired,
// or of a job it runs. nil if none.
func (w *Worker) held(leaseID string) *heldLease {
	w.mu.Lock()
	defer w.mu.Unlock()
	if hl := w.leases[leaseID]; hl != nil {
		return hl
	}
	for _, run := range w.running {
		if run.job.Lease.ID == leaseID && run.lease != nil {
			return run.lease
		}
	}
	return nil
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

// extendLease and releaseLease make the Worker a leaseOps: its keep-alive
// sends one extend (no retry across a reconnection: keepAlive tries again
// on its own schedule), and Do's release is Release.
func (w *Worker) extendLease(ctx context.Context, leaseID string, ttl time.Duration) error {
	_, err := w.call(ctx, extendFrame{Type: "extend", Lease: leaseID, TTL: duration(ttl)})
	return err
}

func (w *Worker) releaseLease(ctx context.Context, leaseID string) error {
	_, err := w.Release(ctx, leaseID)
	return err
}

// Do runs fn while holding a permit taken over the websocket, like
// Client.Do: it acquires (waiting up to DefaultDoWait, see WithWait), keeps
// the lease alive, cancels fn's context with cause ErrLeaseLost if the lease
// is lost (and with cause ErrWorkerClosed when the worker closes), and
// releases it when fn returns, also when fn panics. WithRetryAfter waits
// out a rejected acquire's retryAfter as for Client.Do. The lease is bound to
// the worker's session. The keep-alive and the release are Client.Do's.
func (w *Worker) Do(ctx context.Context, semaphore string, fn func(ctx context.Context, lease Lease) error, opts ...DoOption) error {
	cfg := newDoConfig(opts)
	var (
		lease Lease
		hl    *heldLease
	)
	err := cfg.acquireRetrying(ctx, func() (err error) {
		lease, hl, err = w.acquire(ctx, semaphore, cfg.acquire)
		return err
	})
	if err != nil {
		return err
	}
	return holdWhile(ctx, w, lease, hl, w.jobCtx, fn)
}
