package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/semaphored/semaphored/store"
)

// leaseJSON is a lease as the scripts store it (lib_*.lua new_lease). Numbers
// are decoded as float64 (cjson's format) and are exact below 2^53.
type leaseJSON struct {
	ID  string  `json:"id"`
	C   string  `json:"c"`
	W   float64 `json:"w"`
	F   float64 `json:"f"`
	TTL float64 `json:"ttl"`
	A   float64 `json:"a"`
	E   float64 `json:"e"`
}

// decodeLease reads a lease record of semaphore. It and decodeJob use
// goccy/go-json: records are decoded on every acquire and every job reply,
// and it is quicker than encoding/json on these flat objects (written by
// cjson, never by a client).
func decodeLease(semaphore, raw string) (store.Lease, error) {
	var l leaseJSON
	if err := gojson.Unmarshal([]byte(raw), &l); err != nil {
		return store.Lease{}, fmt.Errorf("redisstore: bad lease record: %w", err)
	}
	return store.Lease{
		ID:           l.ID,
		Semaphore:    semaphore,
		Channel:      l.C,
		Weight:       int64(math.Round(l.W)),
		FencingToken: int64(math.Round(l.F)),
		TTL:          time.Duration(math.Round(l.TTL)) * time.Millisecond,
		AcquiredAt:   time.UnixMilli(int64(math.Round(l.A))).UTC(),
		ExpiresAt:    time.UnixMilli(int64(math.Round(l.E))).UTC(),
	}, nil
}

func ms(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	v := d.Milliseconds()
	if v == 0 {
		v = 1
	}
	return v
}

// Acquire grants a lease, or waits in the FIFO queue of its capacity
// domain (see store.Store).
func (s *Store) Acquire(ctx context.Context, p store.AcquireParams) (_ store.Lease, err error) {
	if p.Channel == "" {
		p.Channel = store.DefaultChannel
	}
	if p.Weight <= 0 {
		p.Weight = 1
	}
	id := store.NewLeaseID(p.Semaphore)
	var w *waiter
	if p.Wait > 0 {
		// Registered before the script runs: a grant can be pushed before
		// the script's reply arrives.
		w = s.register(id)
		// The waiter stays queued in Redis at most until now + wait +
		// slack (its deadline there, set after this).
		until := time.Now().Add(p.Wait + waiterSlack + time.Second)
		defer func() { s.unregister(p.Tenant, id, err != nil, until) }()
	}
	op := &batchOp{
		args: []any{"a", id, p.Channel, p.Weight, ms(p.TTL), p.IdempotencyKey, ms(p.Wait), s.nodeID, ms(waiterSlack), p.Session},
		abandoned: func(r batchResult) {
			switch {
			case r.status == "ok" && p.IdempotencyKey == "":
				// (With a key the lease may be an earlier call's: kept.)
				s.releaseAbandoned(p.Tenant, id)
			case r.status == "wait":
				_, _ = s.giveUp(context.Background(), p, id, context.Canceled) // releases a grant
			}
		},
	}
	callCtx := ctx
	if p.Wait > 0 {
		// A waiting acquire is answered by its wait (and slack) even when
		// Redis does not answer at all.
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, p.Wait+waiterSlack)
		defer cancel()
	}
	r, err := s.batched(callCtx, p.Tenant, p.Semaphore, op)
	if err != nil {
		// If the reply was lost after an enqueue, the waiter expires at
		// its deadline; if after a grant, the lease expires at its TTL.
		if ctx.Err() == nil && callCtx.Err() != nil {
			err = fmt.Errorf("%w: no reply from Redis within the wait", store.ErrUnavailable)
		}
		return store.Lease{}, err
	}
	switch r.status {
	case "ok":
		return decodeLease(p.Semaphore, r.raw)
	case "wait":
		return s.await(ctx, p, id, w)
	case "no_rate":
		// a permit, but no room in the rate window until then
		// ({'no_rate', instant, limit, period ms, wait ms, channel},
		// lib_lease_ops.lua)
		e := &store.RateLimitedError{NextAt: time.UnixMilli(atoi(r.raw)).UTC()}
		if len(r.vals) >= 6 {
			limit, _ := r.vals[2].(int64)
			period, _ := r.vals[3].(int64)
			wait, _ := r.vals[4].(int64)
			e.Limit, e.Period, e.Wait = limit, time.Duration(period)*time.Millisecond, time.Duration(wait)*time.Millisecond
			e.Channel, _ = r.vals[5].(string)
		}
		return store.Lease{}, e
	default:
		return store.Lease{}, store.ErrNoPermit
	}
}

// await blocks a waiting acquire until its grant is pushed (or found by
// the fallback poll), its wait passes, ctx ends or the Store closes.
func (s *Store) await(ctx context.Context, p store.AcquireParams, id string, w *waiter) (store.Lease, error) {
	waitEnd := time.Now().Add(p.Wait)
	deadline := time.NewTimer(p.Wait)
	defer deadline.Stop()
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	for {
		select {
		case <-w.wake:
			if raw := s.handedOver(w); raw != "" {
				return decodeLease(p.Semaphore, raw)
			}
		case <-poll.C:
		case <-deadline.C:
			return s.giveUp(ctx, p, id, store.ErrNoPermit)
		case <-ctx.Done():
			return s.giveUp(ctx, p, id, ctx.Err())
		case <-s.closing:
			return s.giveUp(ctx, p, id, fmt.Errorf("%w: store closed", store.ErrUnavailable))
		}
		// The poll ends with the wait: a Redis that does not answer
		// cannot hold the caller past it.
		pctx, cancel := context.WithDeadline(ctx, waitEnd)
		r, err := s.batched(pctx, p.Tenant, p.Semaphore, &batchOp{
			args: []any{"p", id},
			abandoned: func(r batchResult) {
				if r.status == "granted" {
					s.releaseAbandoned(p.Tenant, id)
				}
			},
		})
		cancel()
		switch {
		case errors.Is(err, store.ErrSemaphoreNotFound), errors.Is(err, store.ErrWeightTooLarge):
			return store.Lease{}, err
		case err != nil:
			// Transient: keep waiting; the deadline or ctx ends the wait.
			s.log.Debug("poll of waiter failed", "err", err)
			continue
		}
		switch r.status {
		case "granted":
			return decodeLease(p.Semaphore, r.raw)
		case "gone":
			return store.Lease{}, store.ErrNoPermit
		}
	}
}

// giveUp cancels the waiter. A lease granted in the meantime is returned
// when the wait merely ran out, and released when the caller is gone (ctx
// ended, Store closing): it never leaks.
func (s *Store) giveUp(ctx context.Context, p store.AcquireParams, id string, cause error) (store.Lease, error) {
	// Bounded by the slack the waiter has in Redis past its wait: a cancel
	// that cannot reach Redis by then is answered 503, and Redis drops the
	// waiter (or its unclaimed grant) at its deadline.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), waiterSlack)
	defer cancel()
	res, err := s.run(cctx, fnCancelWait, p.Tenant, p.Semaphore, id)
	if err != nil {
		if errors.Is(err, store.ErrSemaphoreNotFound) || errors.Is(err, store.ErrWeightTooLarge) {
			return store.Lease{}, err
		}
		// The waiter (or its unclaimed lease) is dropped by the sweep at its
		// deadline in Redis. Whether it was granted meanwhile is unknown:
		// with Redis unreachable say so (503), not "no permit".
		s.log.Warn("cancel of waiter failed", "err", err)
		if errors.Is(err, store.ErrUnavailable) {
			return store.Lease{}, err
		}
		return store.Lease{}, cause
	}
	if res[0].(string) != "granted" {
		return store.Lease{}, cause
	}
	l, err := decodeLease(p.Semaphore, res[1].(string))
	if err != nil {
		return store.Lease{}, err
	}
	if errors.Is(cause, store.ErrNoPermit) {
		return l, nil
	}
	if _, err := s.Release(cctx, store.ReleaseParams{Tenant: p.Tenant, LeaseID: l.ID}); err != nil &&
		!errors.Is(err, store.ErrLeaseNotFound) {
		s.log.Warn("release of abandoned grant failed; it expires by its ttl", "err", err)
	}
	return store.Lease{}, cause
}

// Release ends a live lease and grants freed permits to head waiters.
func (s *Store) Release(ctx context.Context, p store.ReleaseParams) (store.Lease, error) {
	name, ok := store.ParseLeaseID(p.LeaseID)
	if !ok {
		return store.Lease{}, store.ErrLeaseNotFound
	}
	r, err := s.batched(ctx, p.Tenant, name, &batchOp{args: []any{"r", p.LeaseID}})
	if err != nil {
		return store.Lease{}, err
	}
	return decodeLease(name, r.raw)
}

// Extend moves a live lease's expiry to now+TTL (Redis time).
func (s *Store) Extend(ctx context.Context, p store.ExtendParams) (store.Lease, error) {
	name, ok := store.ParseLeaseID(p.LeaseID)
	if !ok {
		return store.Lease{}, store.ErrLeaseNotFound
	}
	res, err := s.run(ctx, fnExtend, p.Tenant, name, p.LeaseID, ms(p.TTL))
	if err != nil {
		return store.Lease{}, err
	}
	return decodeLease(name, res[1].(string))
}

// ListLeases pages through the semaphore's live leases by fencing token
// (see store.Store).
func (s *Store) ListLeases(ctx context.Context, p store.ListLeasesParams) ([]store.Lease, string, error) {
	var after int64
	if p.Cursor != "" {
		n, err := strconv.ParseInt(p.Cursor, 10, 64)
		if err != nil || n < 0 {
			return []store.Lease{}, "", nil
		}
		after = n
	}
	limit := p.Limit
	if limit <= 0 {
		limit = defaultLeaseListLimit
	}
	res, err := s.run(ctx, fnListLeases, p.Tenant, p.Semaphore, p.Channel, after, limit)
	if err != nil {
		return nil, "", err
	}
	raws, _ := res[1].([]any)
	out := make([]store.Lease, 0, len(raws))
	for _, r := range raws {
		raw, _ := r.(string)
		l, err := decodeLease(p.Semaphore, raw)
		if err != nil {
			return nil, "", err
		}
		out = append(out, l)
	}
	next, _ := res[2].(string)
	return out, next, nil
}

// defaultLeaseListLimit is ListLeases' page size when none is given.
const defaultLeaseListLimit = 100
