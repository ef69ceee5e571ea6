package sdk

import (
	"context"
	"errors"
	"fmt"
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

// Do runs fn while holding a permit of semaphore:
//
//  1. It acquires a lease, waiting up to DefaultDoWait (see WithWait); no
//     permit in time → an error for which IsNoPermit is true, and fn does
//     not run.
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
func (c *Client) Do(ctx context.Context, semaphore string, fn func(ctx context.Context, lease Lease) error, opts ...DoOption) (err error) {
	cfg := doConfig{acquire: AcquireOptions{Wait: DefaultDoWait}}
	for _, o := range opts {
		o(&cfg)
	}
	sent := time.Now()
	lease, err := c.Acquire(ctx, semaphore, cfg.acquire)
	if err != nil {
		return err
	}
	ttl := cfg.acquire.TTL
	if ttl <= 0 {
		ttl = lease.TTL()
	}
	if ttl < time.Second {
		ttl = time.Second // the server's minimum
	}

	fnCtx, cancel := context.WithCancelCause(ctx)
	keeperDone := make(chan struct{})
	stop := make(chan struct{})
	lost := make(chan struct{}) // closed by the keeper when the lease is lost
	go func() {
		defer close(keeperDone)
		c.keepAlive(ctx, lease.ID, sent, ttl, stop, func() {
			close(lost)
			cancel(fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID))
		})
	}()

	defer func() {
		close(stop)
		<-keeperDone
		cancel(context.Canceled)
		// Release even when the keeper gave up on the lease: after a
		// partition it may still be live, and releasing it frees the permit
		// now instead of at expiry.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		_, rerr := c.Release(rctx, lease.ID)
		rcancel()
		isLost := IsLeaseNotFound(rerr)
		select {
		case <-lost:
			isLost = true
		default:
		}
		if isLost {
			err = errors.Join(fmt.Errorf("%w: %s", ErrLeaseLost, lease.ID), err)
		}
	}()
	return fn(fnCtx, lease)
}

// keepAlive extends the lease every ttl/3 until stop is closed. It calls
// onLost (once, then returns) when the server says the lease is gone, or when
// no extend succeeded for a whole ttl (the lease has surely expired). since
// is a local time no later than the grant, so since+ttl is no later than the
// lease's expiry whatever the server's clock says.
func (c *Client) keepAlive(ctx context.Context, leaseID string, since time.Time, ttl time.Duration, stop <-chan struct{}, onLost func()) {
	interval := ttl / 3
	deadline := since.Add(ttl)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return // fn sees ctx's own cancellation
		case <-t.C:
		}
		sent := time.Now()
		ectx, ecancel := context.WithTimeout(ctx, interval)
		_, err := c.Extend(ectx, leaseID, ttl)
		ecancel()
		switch {
		case err == nil:
			deadline = sent.Add(ttl)
		case IsLeaseNotFound(err), time.Now().After(deadline):
			onLost()
			return
		}
	}
}
