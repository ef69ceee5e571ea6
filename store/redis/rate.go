package redisstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/semaphored/semaphored/store"
)

// rateTimers call a semaphore's dispatch function at the instant a domain
// there blocked by its rate window gets room (lib_rate.lua: a script's
// reply carries the delay): the waiters and queued jobs that waited are
// granted then, within milliseconds, not by polling. Every instance that
// saw the block sets one; the first to fire grants, the others find
// nothing more to do. If every such instance dies, the sweep index (the
// semaphore's rn is due there) brings it within a sweep interval.
type rateTimers struct {
	mu     sync.Mutex
	timers map[string]*rateTimer // "tenant/name" -> the earliest pending
	closed bool
	wg     sync.WaitGroup // fired calls in flight
}

type rateTimer struct {
	at    time.Time
	timer *time.Timer
}

// rateSlack delays a timer past the instant Redis gave. None: a timer
// that fires before Redis' clock reaches the instant finds no room yet and
// gets the next delay (at least 1 ms) in its reply.
const rateSlack = 0

// rateTimer arranges a dispatch call for the semaphore d after from (when
// the call whose reply gave d was sent: the script ran after it, so the
// timer is never later than Redis' instant, however long the reply took to
// arrive and be read), keeping the earliest pending one.
func (s *Store) rateTimer(tenant, name string, from time.Time, d time.Duration) {
	rt := &s.rate
	key := semMember(tenant, name)
	at := from.Add(d + rateSlack)
	d = time.Until(at)
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		return
	}
	if old, ok := rt.timers[key]; ok {
		if !old.at.After(at) {
			return // an earlier one is pending
		}
		old.timer.Stop()
	}
	t := &rateTimer{at: at}
	t.timer = time.AfterFunc(d, func() { s.rateFire(tenant, name, key, t) })
	if rt.timers == nil {
		rt.timers = map[string]*rateTimer{}
	}
	rt.timers[key] = t
}

func (s *Store) rateFire(tenant, name, key string, t *rateTimer) {
	rt := &s.rate
	rt.mu.Lock()
	if rt.timers[key] == t {
		delete(rt.timers, key)
	}
	if rt.closed {
		rt.mu.Unlock()
		return
	}
	rt.wg.Add(1)
	rt.mu.Unlock()
	defer rt.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	// dispatch.lua grants the waiters and dispatches the jobs that have
	// room now; a domain still blocked sets the next timer in its reply.
	if _, err := s.run(ctx, fnDispatch, tenant, name, 0); err != nil && !errors.Is(err, store.ErrSemaphoreNotFound) {
		s.log.Warn("rate timer: dispatch failed; the sweep retries", "semaphore", name, "err", err)
	}
}

// stopRateTimers stops every pending timer and waits for fired calls.
func (s *Store) stopRateTimers() {
	rt := &s.rate
	rt.mu.Lock()
	rt.closed = true
	for k, t := range rt.timers {
		t.timer.Stop()
		delete(rt.timers, k)
	}
	rt.mu.Unlock()
	rt.wg.Wait()
}
