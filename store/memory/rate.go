package memory

import (
	"time"

	"github.com/semaphored/semaphored/store"
)

// The rate limit of a semaphore (store.RateLimit): an exact sliding window
// per capacity domain. Each domain keeps the log of its grants still in the
// window, oldest first, with their sum; a grant of weight w at t occupies w
// units during [t, t+Period), and grants that left the window are dropped
// whenever a log is looked at.
//
// Memory: 16 bytes per grant in the window (rateGrant), in a ring buffer
// of a power of two at most twice the grants it holds (it shrinks when a
// quarter full). Since a grant is at least 1 unit and is only recorded when
// used + w <= Limit, a domain holds at most Limit grants; only two changes
// leave more in a log for at most one Period, during which nothing is
// added to it: a lowered Limit (the old Limit bounds it). A change of scope
// starts the windows anew.

// rateGrant is one grant in a window: its time in nanoseconds since the
// window's epoch (the store's clock) and its weight.
type rateGrant struct {
	at     int64
	weight int64
}

// rateLog is one capacity domain's grants in the window, oldest first: a
// ring buffer with the sum of their weights.
type rateLog struct {
	buf  []rateGrant
	head int
	n    int
	sum  int64
}

// minRateBuf is the smallest ring buffer a log keeps.
const minRateBuf = 4

// get returns the i-th oldest grant.
func (l *rateLog) get(i int) rateGrant { return l.buf[(l.head+i)%len(l.buf)] }

// push appends a grant. The grants of a domain are recorded in time order
// (one mutex, one clock); one from a clock set back is moved to the newest
// grant's time, which only delays what it makes room for.
func (l *rateLog) push(g rateGrant) {
	if l.n > 0 {
		g.at = max(g.at, l.get(l.n-1).at)
	}
	if l.n == len(l.buf) {
		l.resize(max(minRateBuf, 2*len(l.buf)))
	}
	l.buf[(l.head+l.n)%len(l.buf)] = g
	l.n++
	l.sum += g.weight
}

// prune drops the grants made at or before cutoff (now - Period): they
// have left the window.
func (l *rateLog) prune(cutoff int64) {
	for l.n > 0 && l.buf[l.head].at <= cutoff {
		l.sum -= l.buf[l.head].weight
		l.buf[l.head] = rateGrant{}
		l.head = (l.head + 1) % len(l.buf)
		l.n--
	}
	if size := len(l.buf); size > minRateBuf && l.n <= size/4 {
		for size > minRateBuf && l.n <= size/4 {
			size /= 2
		}
		l.resize(size)
	}
}

// resize moves the grants into a fresh buffer of size (≥ n).
func (l *rateLog) resize(size int) {
	buf := make([]rateGrant, size)
	for i := range l.n {
		buf[i] = l.get(i)
	}
	l.buf, l.head = buf, 0
}

// all returns the grants, oldest first.
func (l *rateLog) all() []rateGrant {
	out := make([]rateGrant, l.n)
	for i := range l.n {
		out[i] = l.get(i)
	}
	return out
}

// rateState is the rate limit of one semaphore and its windows.
type rateState struct {
	limit  int64
	period int64     // nanoseconds
	epoch  time.Time // origin of rateGrant.at (store clock)
	// logs by capacity domain (semaphore.domainOf); a change of scope
	// empties them
	logs map[string]*rateLog

	// timer grants waiters and dispatches jobs at timerAt, the earliest
	// instant a domain blocked by the rate gets room (nil: none set).
	timer    *time.Timer
	timerAt  time.Time
	timerGen int64 // identifies the timer last set
}

func newRateState(r *store.RateLimit, now time.Time) *rateState {
	return &rateState{limit: r.Limit, period: int64(r.Period), epoch: now, logs: make(map[string]*rateLog)}
}

// tick converts a store time into the logs' unit.
func (r *rateState) tick(t time.Time) int64 { return int64(t.Sub(r.epoch)) }

// time converts a tick back into a store time.
func (r *rateState) time(tick int64) time.Time { return r.epoch.Add(time.Duration(tick)) }

// stopTimer disarms the timer.
func (r *rateState) stopTimer() {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// log returns the domain's log after dropping what left the window, or
// nil when it is empty (an empty log is forgotten).
func (r *rateState) log(domain string, now int64) *rateLog {
	l, ok := r.logs[domain]
	if !ok {
		return nil
	}
	l.prune(now - r.period)
	if l.n == 0 {
		delete(r.logs, domain)
		return nil
	}
	return l
}

// setRate applies a new config's rate (the config is already set, old is
// the previous one). Grants in the window are kept across changes of
// Limit and Period; a change of scope starts the windows anew; rate nil
// drops them.
func (s *semaphore) setRate(old store.SemaphoreConfig, now time.Time) {
	cfg := s.info.Config
	switch {
	case cfg.Rate == nil:
		if s.rate != nil {
			s.rate.stopTimer()
			s.rate = nil
		}
		return
	case s.rate == nil:
		s.rate = newRateState(cfg.Rate, now)
		return
	}
	r, tick := s.rate, s.rate.tick(now)
	for d := range r.logs {
		r.log(d, tick) // judged by the old period
	}
	r.limit, r.period = cfg.Rate.Limit, int64(cfg.Rate.Period)
	if old.MaxValueScope != cfg.MaxValueScope {
		// The domains changed: the windows start anew, as in the Redis
		// store (a burst up to the limit may follow the change).
		r.logs = make(map[string]*rateLog)
	}
}

// rateLog returns channel's domain log, pruned at now (nil: empty).
func (s *semaphore) rateLog(channel string, now int64) *rateLog {
	return s.rate.log(s.domainOf(channel), now)
}

// rateUsed returns the units granted in channel's domain in the window
// ending at now (0 without a rate).
func (s *semaphore) rateUsed(channel string, now time.Time) int64 {
	if s.rate == nil {
		return 0
	}
	if l := s.rateLog(channel, s.rate.tick(now)); l != nil {
		return l.sum
	}
	return 0
}

// rateRoom reports whether weight more units may be granted in channel's
// domain at now.
func (s *semaphore) rateRoom(channel string, weight int64, now time.Time) bool {
	return s.rate == nil || s.rateUsed(channel, now)+weight <= s.rate.limit
}

// rateTooHeavy reports whether weight exceeds the rate limit: it could
// never be granted.
func (s *semaphore) rateTooHeavy(weight int64) bool {
	return s.rate != nil && weight > s.rate.limit
}

// rateNextAt returns the instant at which weight units fit in channel's
// window (now if they do). weight must not exceed the limit.
func (s *semaphore) rateNextAt(channel string, weight int64, now time.Time) time.Time {
	if s.rate == nil {
		return now
	}
	r := s.rate
	l := s.rateLog(channel, r.tick(now))
	if l == nil {
		return now
	}
	need := l.sum + weight - r.limit // units that must leave first
	for i := 0; need > 0 && i < l.n; i++ {
		g := l.get(i)
		if need -= g.weight; need <= 0 {
			return r.time(g.at + r.period)
		}
	}
	return now // they fit already
}

// rateLimitedError is the refusal of weight in channel's full window.
func (s *semaphore) rateLimitedError(channel string, weight int64, now time.Time) *store.RateLimitedError {
	next := s.rateNextAt(channel, weight, now)
	e := &store.RateLimitedError{Limit: s.rate.limit, Period: time.Duration(s.rate.period), NextAt: next, Wait: next.Sub(now)}
	if s.channelScoped() {
		e.Channel = channel
	}
	return e
}

// rateOldestOut returns when the oldest grant of channel's window leaves
// it (zero: the window is empty, or there is no rate).
func (s *semaphore) rateOldestOut(channel string, now time.Time) time.Time {
	if s.rate == nil {
		return time.Time{}
	}
	l := s.rateLog(channel, s.rate.tick(now))
	if l == nil {
		return time.Time{}
	}
	return s.rate.time(l.get(0).at + s.rate.period)
}

// rateRecord records a grant of weight in channel's domain at now.
func (s *semaphore) rateRecord(channel string, weight int64, now time.Time) {
	if s.rate == nil {
		return
	}
	d := s.domainOf(channel)
	l, ok := s.rate.logs[d]
	if !ok {
		l = &rateLog{}
		s.rate.logs[d] = l
	}
	l.push(rateGrant{at: s.rate.tick(now), weight: weight})
}

// rateChannels returns the channels with grants of their own in the
// window (scope channel only), so that State lists them.
func (s *semaphore) rateChannels(now time.Time) []string {
	if s.rate == nil || !s.channelScoped() {
		return nil
	}
	var chans []string
	tick := s.rate.tick(now)
	for d := range s.rate.logs {
		if s.rate.log(d, tick) != nil {
			chans = append(chans, d)
		}
	}
	return chans
}

// rateWake returns the earliest instant at which a capacity domain blocked
// only by the rate gets room for its head: the head waiter of the domain,
// or its next queued job when no waiter queues there (zero: none is).
// A head without a free permit waits for a release, not for the rate.
func (s *semaphore) rateWake(now time.Time) time.Time {
	if s.rate == nil {
		return time.Time{}
	}
	var wake time.Time
	consider := func(channel string, weight int64) {
		if s.fits(channel, weight) && !s.rateRoom(channel, weight, now) {
			if at := s.rateNextAt(channel, weight, now); wake.IsZero() || at.Before(wake) {
				wake = at
			}
		}
	}
	seen := make(map[string]bool)
	for e := s.waiters.Front(); e != nil; e = e.Next() {
		w := e.Value.(*waiter)
		d := s.domainOf(w.channel)
		if seen[d] {
			continue
		}
		seen[d] = true
		if w.weight <= s.maxValue() && !s.rateTooHeavy(w.weight) {
			consider(w.channel, w.weight)
		}
		if !s.channelScoped() {
			break
		}
	}
	if !s.info.Suspended {
		for _, ch := range s.jobs.channels {
			d := s.domainOf(ch)
			if seen[d] {
				continue // waiters go first
			}
			seen[d] = true
			consider(ch, 1)
		}
	}
	return wake
}

// armRateTimer sets sem's rate timer to the earliest instant a domain
// blocked by the rate gets room, or stops it when none is. The timer runs
// the same refresh as every operation, under the mutex.
func (s *Store) armRateTimer(sem *semaphore, now time.Time) {
	r := sem.rate
	if r == nil {
		return
	}
	at := sem.rateWake(now)
	if at.IsZero() {
		r.stopTimer()
		return
	}
	if r.timer != nil && r.timerAt.Equal(at) {
		return
	}
	r.stopTimer()
	r.timerGen++
	gen := r.timerGen
	r.timerAt = at
	r.timer = time.AfterFunc(at.Sub(now), func() { s.rateTimerFired(sem, r, gen) })
}

// rateTimerFired grants what the rate now lets through (waiters, then
// jobs) and sets the timer again if a domain is still blocked. r and gen
// identify the timer: one replaced while it fired leaves the newer in place.
func (s *Store) rateTimerFired(sem *semaphore, r *rateState, gen int64) {
	s.mu.Lock()
	if s.closed || s.sems[sem.key] != sem || sem.rate == nil {
		s.mu.Unlock()
		return
	}
	defer s.unlock()
	if sem.rate == r && r.timerGen == gen {
		r.timer = nil
	}
	s.refresh(sem, s.now())
}
