package sdk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrLeaseLost is the cause of the context Do hands to fn when the lease
// could not be kept alive (it expired or was ended by someone else), and is
// wrapped in Do's error in that case.
var ErrLeaseLost = errors.New("semaphored: lease lost")

// DefaultDoWait is how long Do waits for a permit unless WithWait says
// otherwise: the server's maximum.
const DefaultDoWait = 60 * time.Second

// releaseTimeout bounds the release Do makes after fn returns.
const releaseTimeout = 10 * time.Second

// DoOption tunes one call of Do.
type DoOption func(*doConfig)

type doConfig struct {
	acquire AcquireOptions
	// retryAfter: wait out refusals with a RetryAfter (WithRetryAfter),
	// in all at most retryLimit (0: no bound but the context).
	retryAfter bool
	retryLimit time.Duration
}

func newDoConfig(opts []DoOption) doConfig {
	cfg := doConfig{acquire: AcquireOptions{Wait: DefaultDoWait}}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// WithChannel acquires on a channel of the semaphore (default "default").
func WithChannel(channel string) DoOption {
	return func(c *doConfig) { c.acquire.Channel = channel }
}

// WithWeight acquires weight permits at once (default 1).
func WithWeight(weight int64) DoOption {
	return func(c *doConfig) { c.acquire.Weight = weight }
}

// WithTTL sets the lease's time to live (default: the semaphore's
// leaseTimeout). Do extends the lease every TTL/3 while fn runs, so a short
// TTL makes a crashed caller's permit come back sooner.
func WithTTL(ttl time.Duration) DoOption {
	return func(c *doConfig) { c.acquire.TTL = ttl }
}

// WithWait sets how long Do waits for a permit (default DefaultDoWait, at
// most 60 s; 0 answers at once).
func WithWait(wait time.Duration) DoOption {
	return func(c *doConfig) { c.acquire.Wait = wait }
}

// WithIdempotencyKey makes a retried acquire return the same lease.
func WithIdempotencyKey(key string) DoOption {
	return func(c *doConfig) { c.acquire.IdempotencyKey = key }
}

// WithRetryAfter makes Do wait out a refusal that says when to try again
// instead of failing: an acquire answered with a RetryAfter (APIError) is
// made again once that time has passed. Such refusals are 409 no_permit
// when a semaphore's rate has no room for an acquire without wait (with a
// wait, the server itself waits for room, and a wait that runs out has no
// RetryAfter), and 429 rate_limited when the key's request rate is
// exceeded.
//
// limit bounds the total time Do spends waiting so (0: no bound but ctx):
// a RetryAfter beyond what is left of it is not waited for, and Do returns
// that refusal at once. If ctx ends while Do waits, Do returns an error
// that wraps both ctx's error and the refusal.
func WithRetryAfter(limit time.Duration) DoOption {
	return func(c *doConfig) { c.retryAfter, c.retryLimit = true, max(limit, 0) }
}

// acquireRetrying calls acquire until it succeeds or fails with an error
// that cfg does not let Do wait out (see WithRetryAfter).
func (cfg doConfig) acquireRetrying(ctx context.Context, acquire func() error) error {
	var waited time.Duration
	for {
		err := acquire()
		var ae *APIError
		if err == nil || !cfg.retryAfter || !errors.As(err, &ae) || ae.RetryAfter <= 0 {
			return err
		}
		d := ae.RetryAfter
		if cfg.retryLimit > 0 && waited+d > cfg.retryLimit {
			return err
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("sdk: waiting out Retry-After %s: %w; the refusal: %w", d, context.Cause(ctx), err)
		case <-t.C:
		}
		waited += d
	}
}

// Do runs fn while holding a permit of semaphore:
//
//  1. It acquires a lease, waiting up to DefaultDoWait (see WithWait); no
//     permit in time → an error for which IsNoPermit is true, and fn does
//     not run. With WithRetryAfter, a refusal that says when to try again
//     (a semaphore's rate, the key's request rate) is waited out instead.
//  2. While fn runs, it extends the lease every ttl/3. If the lease is lost
//     (it expired, e.g. after a long network partition, or is unknown to the
//     server), fn's context is cancelled with cause ErrLeaseLost and Do's
//     error wraps ErrLeaseLost: the work may have overlapped another holder's.
//     Guard the resource with lease.FencingToken where that matters.
//  3. It releases the lease when fn returns, also when fn panics (the panic
//     goes on after the release). A failed release is not an error of Do: the
//     permit comes back by expiry.
//
// Do returns fn's error, joined with ErrLeaseLost when the lease was lost.
func (c *Client) Do(ctx context.Context, semaphore string, fn func(ctx context.Context, lease Lease) error, opts ...DoOption) error {
	cfg := newDoConfig(opts)
	var (
		sent  time.Time
		lease Lease
	)
	err := cfg.acquireRetrying(ctx, func() (err error) {
		sent = time.Now() // before the request: see keepAlive
		lease, err = c.Acquire(ctx, semaphore, cfg.acquire)
		return err
	})
	if err != nil {
		return err
	}
	l := newHeldLease(ctx, lease.ID, sent, leaseTTL(cfg.acquire.TTL, lease))
	go l.keepAlive(c, nil)
	return holdWhile(ctx, c, lease, l, nil, fn)
}

// The rest of this file is shared by Client.Do and Worker.Do (and the
// worker's session-bound leases and job runs): one keep-alive, one way to
// end Do, behind leaseOps.

// leaseOps is what keeping a lease needs of a transport: the Client
// extends and releases over HTTP, the Worker over its websocket.
type leaseOps interface {
	extendLease(ctx context.Context, leaseID string, ttl time.Duration) error
	releaseLease(ctx context.Context, leaseID string) error
}

func (c *Client) extendLease(ctx context.Context, leaseID string, ttl time.Duration) error {
	_, err := c.Extend(ctx, leaseID, ttl)
	return err
}

func (c *Client) releaseLease(ctx context.Context, leaseID string) error {
	_, err := c.Release(ctx, leaseID)
	return err
}

// leaseTTL is the ttl to keep a lease alive with: the one asked for, else
// the one granted, at least the server's minimum of 1s.
func leaseTTL(asked time.Duration, l Lease) time.Duration {
	ttl := asked
	if ttl <= 0 {
		ttl = l.TTL()
	}
	return max(ttl, time.Second)
}

// heldLease is a lease kept alive by keepAlive until it is stopped (at
// release) or lost.
type heldLease struct {
	id   string
	ctx  context.Context    // ends when the keep-alive is to stop
	stop context.CancelFunc // markStopped
	lost chan struct{}      // closed when the lease is gone, or may have expired
	done chan struct{}      // closed when keepAlive returned
	wake chan struct{}      // extended: keepAlive schedules its next extend again

	lostOnce sync.Once

	mu   sync.Mutex
	ttl  time.Duration // what each extend asks for
	sent time.Time     // when the last grant or extend that succeeded was sent
}

// newHeldLease returns the state of lease id, granted (or last extended)
// with ttl by a request sent at sent. Its keep-alive stops when parent
// ends or at markStopped; start it with go l.keepAlive(...).
func newHeldLease(parent context.Context, id string, sent time.Time, ttl time.Duration) *heldLease {
	l := &heldLease{id: id, lost: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1), ttl: ttl, sent: sent}
	l.ctx, l.stop = context.WithCancel(parent)
	return l
}

func (l *heldLease) markLost()    { l.lostOnce.Do(func() { close(l.lost) }) }
func (l *heldLease) markStopped() { l.stop() }

func (l *heldLease) isLost() bool {
	select {
	case <-l.lost:
		return true
	default:
		return false
	}
}

// extended records an extend of the lease to ttl that succeeded, sent at
// sent (by keepAlive, or by the holder, e.g. Worker.Extend: a shorter ttl
// brings the next extend forward). Of two extends in flight at once the
// one sent last is taken as the one the server applied last.
func (l *heldLease) extended(sent time.Time, ttl time.Duration) {
	l.mu.Lock()
	l.ttl = ttl
	if sent.After(l.sent) {
		l.sent = sent
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// state returns the ttl to extend with and when the last grant or extend
// that succeeded was sent.
func (l *heldLease) state() (ttl time.Duration, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ttl, l.sent
}

// deadline is when the lease may expire, as far as this process knows:
// see keepAlive.
func (l *heldLease) deadline() time.Time {
	ttl, sent := l.state()
	return sent.Add(ttl)
}

// keepAlive extends the lease a third of its ttl after the last grant or
// extend that succeeded was sent, until the lease is stopped. It marks the
// lease lost, calls onLost (when not nil) and returns when the server says
// the lease is gone, or when an extend fails after the lease's deadline.
//
// The deadline is the send time of the last request that succeeded (the
// acquire, then each extend) plus its ttl: the server starts the ttl when
// it handles the request, after it was sent, so the lease lives at least
// until then, whatever the server's clock says (expiresAt is judged by the
// store's clock, which may disagree with this one) and however long the
// reply took. Counting from the reply instead would be too late by the
// round trip, and by the whole wait of an acquire that waited. A failed
// extend is retried a third of the ttl later, at the latest at the
// deadline, so a lease that may have expired is given up close to its
// deadline rather than a whole interval after it.
func (l *heldLease) keepAlive(ops leaseOps, onLost func()) {
	defer close(l.done)
	var retry time.Time // after a failed extend: when to try again
	for {
		ttl, sent := l.state()
		interval := ttl / 3
		at := sent.Add(interval)
		if !retry.IsZero() {
			at = retry
		}
		if d := time.Until(at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-l.ctx.Done():
				t.Stop()
				return
			case <-l.wake:
				t.Stop()
				continue
			case <-t.C:
			}
		} else if l.ctx.Err() != nil {
			return
		}
		sent = time.Now()
		ectx, cancel := context.WithTimeout(l.ctx, interval)
		err := ops.extendLease(ectx, l.id, ttl)
		cancel()
		switch {
		case err == nil:
			l.extended(sent, ttl)
			retry = time.Time{}
		case l.ctx.Err() != nil:
			return // stopped (released) meanwhile: not lost
		case IsLeaseNotFound(err), time.Now().After(l.deadline()):
			l.markLost()
			if onLost != nil {
				onLost()
			}
			return
		default:
			retry = time.Now().Add(interval)
			if d := l.deadline(); d.After(time.Now()) && d.Before(retry) {
				retry = d
			}
		}
	}
}

// holdWhile runs fn while l keeps lease alive, then stops the keep-alive
// and releases the lease; the end of Client.Do and Worker.Do. fn's context
// ends with cause ErrLeaseLost when the lease is lost, and with cause
// ErrWorkerClosed when closing (nil for none) ends.
func holdWhile(ctx context.Context, ops leaseOps, lease Lease, l *heldLease, closing context.Context, fn func(ctx context.Context, lease Lease) error) (err error) {
	fnCtx, cancel := context.WithCancelCause(ctx)
	lostErr := fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID)
	watched := make(chan struct{})
	go func() {
		select {
		case <-l.lost:
			cancel(lostErr)
		case <-watched:
		}
	}()
	if closing != nil {
		stop := context.AfterFunc(closing, func() { cancel(ErrWorkerClosed) })
		defer stop()
	}
	defer func() {
		close(watched)
		l.markStopped()
		<-l.done
		cancel(context.Canceled)
		// Release even when the keep-alive gave up on the lease: after a
		// partition it may still be live, and releasing it frees the permit
		// now instead of at expiry.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		rerr := ops.releaseLease(rctx, lease.ID)
		rcancel()
		if IsLeaseNotFound(rerr) || l.isLost() {
			err = errors.Join(lostErr, err)
		}
	}()
	return fn(fnCtx, lease)
}
