package memory

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/semaphored/semaphored/store"
)

// waiter is a blocked Acquire in a semaphore's FIFO queue. Its fields are
// guarded by the Store's mutex; done is closed once it is settled (granted
// or failed), after lease and err are set.
type waiter struct {
	sem     *semaphore
	channel string
	weight  int64
	ttl     time.Duration
	idemKey string
	session string // AcquireParams.Session

	elem    *list.Element // position in sem.waiters; nil once dequeued
	done    chan struct{}
	settled bool
	owned   bool // the lease was granted for this waiter (not an idempotent replay)
	lease   store.Lease
	err     error
}

// acquireRequest is a normalized AcquireParams.
type acquireRequest struct {
	store.AcquireParams
}

// normalize fills the documented defaults of AcquireParams.
func normalize(p store.AcquireParams) acquireRequest {
	if p.Channel == "" {
		p.Channel = store.DefaultChannel
	}
	if p.Weight <= 0 {
		p.Weight = 1
	}
	return acquireRequest{p}
}

// leaseTTL returns ttl, else the semaphore's LeaseTimeout, else store.DefaultLeaseTTL.
func leaseTTL(ttl time.Duration, sem *semaphore) time.Duration {
	if ttl > 0 {
		return ttl
	}
	if lt := sem.info.Config.LeaseTimeout; lt > 0 {
		return lt
	}
	return store.DefaultLeaseTTL
}

// Acquire implements store.Store.
func (s *Store) Acquire(ctx context.Context, p store.AcquireParams) (store.Lease, error) {
	if err := s.lock(ctx); err != nil {
		return store.Lease{}, err
	}
	w, lease, err := s.tryAcquire(normalize(p))
	s.unlock()
	if w == nil {
		return lease, err
	}
	return s.await(ctx, w, p.Wait)
}

// tryAcquire grants at once if it can; otherwise, with a Wait, it queues and
// returns the waiter. Queued jobs are dispatched only after the caller is
// served (live callers first). Called with the mutex held.
func (s *Store) tryAcquire(r acquireRequest) (*waiter, store.Lease, error) {
	sem, err := s.semaphore(r.Tenant, r.Semaphore)
	if err != nil {
		return nil, store.Lease{}, err
	}
	now := s.now()
	s.settle(sem, now)
	defer s.dispatch(sem, 0, now)
	if l, ok := idempotentLease(sem, r.IdempotencyKey); ok {
		return nil, l, nil
	}
	if r.Weight > sem.maxValue() || sem.rateTooHeavy(r.Weight) {
		return nil, store.Lease{}, store.ErrWeightTooLarge
	}
	ttl := leaseTTL(r.TTL, sem)
	if !sem.hasWaiters(r.Channel) && sem.fits(r.Channel, r.Weight) {
		if sem.rateRoom(r.Channel, r.Weight, now) {
			return nil, s.grantSession(sem, r.Channel, r.Weight, ttl, r.IdempotencyKey, r.Session, now), nil
		}
		if r.Wait <= 0 {
			return nil, store.Lease{}, sem.rateLimitedError(r.Channel, r.Weight, now)
		}
	}
	if r.Wait <= 0 {
		return nil, store.Lease{}, store.ErrNoPermit
	}
	w := &waiter{
		sem: sem, channel: r.Channel, weight: r.Weight, ttl: ttl,
		idemKey: r.IdempotencyKey, session: r.Session, done: make(chan struct{}),
	}
	sem.enqueue(w)
	return w, store.Lease{}, nil
}

// idempotentLease returns the live lease acquired with key, if any.
func idempotentLease(sem *semaphore, key string) (store.Lease, bool) {
	if key == "" {
		return store.Lease{}, false
	}
	id, ok := sem.idem[key]
	if !ok {
		return store.Lease{}, false
	}
	return sem.leases[id].lease, true
}

// grant creates a lease. The caller has checked that it fits.
func (s *Store) grant(sem *semaphore, channel string, weight int64, ttl time.Duration, idemKey string, now time.Time) store.Lease {
	return s.grantEntry(sem, channel, weight, ttl, idemKey, now).lease
}

// grantSession creates a lease bound to session ("" none).
func (s *Store) grantSession(sem *semaphore, channel string, weight int64, ttl time.Duration, idemKey, session string, now time.Time) store.Lease {
	e := s.grantEntry(sem, channel, weight, ttl, idemKey, now)
	if session != "" {
		s.bindLease(sem.key.tenant, e, session, "")
	}
	return e.lease
}

// grantEntry creates a lease, records it in the rate window, and returns
// its entry. Every grant goes through here; the caller has checked that it
// fits (semaphore.grantable).
func (s *Store) grantEntry(sem *semaphore, channel string, weight int64, ttl time.Duration, idemKey string, now time.Time) *leaseEntry {
	l := store.Lease{
		ID:           store.NewLeaseID(sem.key.name),
		Semaphore:    sem.key.name,
		Channel:      channel,
		Weight:       weight,
		FencingToken: s.nextToken(sem.key, now),
		TTL:          ttl,
		AcquiredAt:   now,
		ExpiresAt:    now.Add(ttl),
	}
	e := &leaseEntry{lease: l, idemKey: idemKey}
	sem.addLease(e)
	sem.rateRecord(channel, weight, now)
	return e
}

// await blocks until the waiter is settled, wait passes or ctx ends.
func (s *Store) await(ctx context.Context, w *waiter, wait time.Duration) (store.Lease, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-w.done:
		return w.lease, w.err
	case <-timer.C:
		return s.abandon(w, store.ErrNoPermit)
	case <-ctx.Done():
		return s.abandon(w, ctx.Err())
	}
}

// abandon ends a wait that timed out (cause ErrNoPermit) or whose ctx ended.
// A waiter still queued leaves the queue (which may unblock those behind
// it). A waiter granted at the same moment keeps its lease on a timeout, and
// gives it back when its ctx ended (its caller is gone).
func (s *Store) abandon(w *waiter, cause error) (store.Lease, error) {
	s.mu.Lock()
	defer s.unlock()
	now := s.now()
	if !w.settled {
		w.sem.dequeue(w)
		w.settled = true
		close(w.done)
		s.refresh(w.sem, now)
		return store.Lease{}, cause
	}
	if w.err != nil || errors.Is(cause, store.ErrNoPermit) {
		return w.lease, w.err
	}
	if e, ok := w.sem.leases[w.lease.ID]; ok && w.owned {
		w.sem.removeLease(e)
		s.refresh(w.sem, now)
	}
	return store.Lease{}, cause
}

// settle ends a waiter's wait with a lease or an error and wakes it.
func settle(w *waiter, l store.Lease, owned bool, err error) {
	w.sem.dequeue(w)
	w.settled = true
	w.lease, w.owned, w.err = l, owned, err
	close(w.done)
}

// grantWaiters grants permits to head waiters, in FIFO order per capacity
// domain: once the head of a domain does not fit (no free permit, or no
// room in the rate window), nobody behind it in that domain is granted. A
// waiter that can never fit (maxValue or the rate limit was lowered below
// its weight) fails with ErrWeightTooLarge.
func (s *Store) grantWaiters(sem *semaphore, now time.Time) {
	blocked := make(map[string]bool)
	for e := sem.waiters.Front(); e != nil; {
		next := e.Next()
		w := e.Value.(*waiter)
		d := sem.domainOf(w.channel)
		switch {
		case blocked[d]:
		case w.idemKey != "" && sem.idem[w.idemKey] != "":
			l, _ := idempotentLease(sem, w.idemKey)
			settle(w, l, false, nil)
		case w.weight > sem.maxValue() || sem.rateTooHeavy(w.weight):
			settle(w, store.Lease{}, false, store.ErrWeightTooLarge)
		case sem.grantable(w.channel, w.weight, now):
			settle(w, s.grantSession(sem, w.channel, w.weight, w.ttl, w.idemKey, w.session, now), true, nil)
		default:
			blocked[d] = true
			if !sem.channelScoped() {
				return
			}
		}
		e = next
	}
}

// failWaiters settles every waiter of sem with err.
func (s *Store) failWaiters(sem *semaphore, err error) {
	for e := sem.waiters.Front(); e != nil; {
		next := e.Next()
		settle(e.Value.(*waiter), store.Lease{}, false, err)
		e = next
	}
}

// leaseEntry finds a live lease of the tenant by id, after settling the
// semaphore (dropping its expired leases). Expired, released and unknown leases, and
// leases of other tenants, are ErrLeaseNotFound.
func (s *Store) leaseEntry(tenant, id string, now time.Time) (*semaphore, *leaseEntry, error) {
	name, ok := store.ParseLeaseID(id)
	if !ok {
		return nil, nil, store.ErrLeaseNotFound
	}
	sem, ok := s.sems[semKey{tenant, name}]
	if !ok {
		return nil, nil, store.ErrLeaseNotFound
	}
	s.settle(sem, now)
	e, ok := sem.leases[id]
	if !ok {
		s.dispatch(sem, 0, now) // what the settle freed
		return nil, nil, store.ErrLeaseNotFound
	}
	return sem, e, nil
}

// Release implements store.Store. Releasing the lease of an inflight job
// ends the job done.
func (s *Store) Release(ctx context.Context, p store.ReleaseParams) (store.Lease, error) {
	if err := s.lock(ctx); err != nil {
		return store.Lease{}, err
	}
	defer s.unlock()
	now := s.now()
	sem, e, err := s.leaseEntry(p.Tenant, p.LeaseID, now)
	if err != nil {
		return store.Lease{}, err
	}
	sem.removeLease(e)
	if j := e.job; j != nil {
		sem.jobs.leaveInflight(j)
		s.finishJob(sem, j, store.JobDone, "", now)
	}
	s.grantWaiters(sem, now)
	s.dispatch(sem, 0, now)
	return e.lease, nil
}

// Extend implements store.Store.
func (s *Store) Extend(ctx context.Context, p store.ExtendParams) (store.Lease, error) {
	if err := s.lock(ctx); err != nil {
		return store.Lease{}, err
	}
	defer s.unlock()
	now := s.now()
	sem, e, err := s.leaseEntry(p.Tenant, p.LeaseID, now)
	if err != nil {
		return store.Lease{}, err
	}
	defer s.dispatch(sem, 0, now) // what the settle freed
	ttl := leaseTTL(p.TTL, sem)
	sem.setExpiry(e, now.Add(ttl), ttl)
	return e.lease, nil
}

// ListLeases implements store.Store: live leases by fencing token.
func (s *Store) ListLeases(ctx context.Context, p store.ListLeasesParams) ([]store.Lease, string, error) {
	if err := s.lock(ctx); err != nil {
		return nil, "", err
	}
	defer s.unlock()
	sem, err := s.semaphore(p.Tenant, p.Semaphore)
	if err != nil {
		return nil, "", err
	}
	s.refresh(sem, s.now())
	var after int64
	if p.Cursor != "" {
		if after, err = strconv.ParseInt(p.Cursor, 10, 64); err != nil || after < 0 {
			return []store.Lease{}, "", nil // not a cursor ListLeases gave: nothing, as in Redis
		}
	}
	limit := p.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	var sel []store.Lease
	for _, e := range sem.leases {
		if e.lease.FencingToken > after && (p.Channel == "" || e.lease.Channel == p.Channel) {
			sel = append(sel, e.lease)
		}
	}
	slices.SortFunc(sel, func(a, b store.Lease) int { return cmp.Compare(a.FencingToken, b.FencingToken) })
	next := ""
	if len(sel) > limit {
		sel = sel[:limit]
		next = strconv.FormatInt(sel[limit-1].FencingToken, 10)
	}
	out := make([]store.Lease, len(sel))
	copy(out, sel)
	return out, next, nil
}
