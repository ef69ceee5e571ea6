package memory

import (
	"container/heap"
	"container/list"
	"time"

	"github.com/semaphored/semaphored/store"
)

// semKey identifies a semaphore: names are unique per tenant only.
type semKey struct {
	tenant string
	name   string
}

// semaphore is the in-memory state of one semaphore. Every method expects the
// Store's mutex to be held by the caller.
type semaphore struct {
	key  semKey
	info store.Semaphore

	leases      map[string]*leaseEntry // live (or not yet dropped) leases by id
	byExpiry    expiryHeap             // the same leases, soonest expiry first
	inUse       int64                  // sum of weights of leases
	inUseByChan map[string]int64       // sum of weights per channel
	idem        map[string]string      // idempotency key -> lease id

	waiters       *list.List       // *waiter in arrival order (FIFO)
	waitingByChan map[string]int64 // number of waiters per channel

	jobs jobQueues // async jobs (jobs.go)

	rate *rateState // the rate limit and its windows (rate.go); nil: none

	dtimer delayTimer // at the earliest RunAt of its delayed jobs (delay.go)

	// unbind is called with every removed lease bound to a session
	// (sessions.go): what ends a lease ends its binding.
	unbind func(*leaseEntry)
}

// leaseEntry is a lease held in a semaphore, with its heap position.
type leaseEntry struct {
	lease   store.Lease
	idemKey string
	index   int       // position in byExpiry
	job     *jobEntry // the inflight job holding this lease, if any
	// session the lease is bound to ("" none): a sync lease acquired over
	// it, or the lease of a job delivered to it, counted on its
	// subscription to bindChannel (sessions.go)
	session     string
	bindChannel string
	bindNode    string // the session's node when the job was bound to it
}

func newSemaphore(key semKey, info store.Semaphore) *semaphore {
	return &semaphore{
		key:           key,
		info:          info,
		leases:        make(map[string]*leaseEntry),
		inUseByChan:   make(map[string]int64),
		idem:          make(map[string]string),
		waiters:       list.New(),
		waitingByChan: make(map[string]int64),
		jobs:          newJobQueues(),
	}
}

// maxValue returns the configured maximum.
func (s *semaphore) maxValue() int64 { return s.info.Config.MaxValue }

// channelScoped reports whether every channel has its own maxValue.
func (s *semaphore) channelScoped() bool {
	return s.info.Config.MaxValueScope == store.ScopeChannel
}

// domainOf returns the capacity domain of a channel: the channel itself for
// scope "channel", and "" (the whole semaphore) for scope "total".
func (s *semaphore) domainOf(channel string) string {
	if s.channelScoped() {
		return channel
	}
	return ""
}

// inUseOf returns the permits in use in the domain of channel.
func (s *semaphore) inUseOf(channel string) int64 {
	if s.channelScoped() {
		return s.inUseByChan[channel]
	}
	return s.inUse
}

// fits reports whether weight more permits fit into channel's domain now.
func (s *semaphore) fits(channel string, weight int64) bool {
	return s.inUseOf(channel)+weight <= s.maxValue()
}

// grantable reports whether weight can be granted in channel's domain at
// now: a free permit and room in the rate window.
func (s *semaphore) grantable(channel string, weight int64, now time.Time) bool {
	return s.fits(channel, weight) && s.rateRoom(channel, weight, now)
}

// hasWaiters reports whether any waiter is queued in channel's domain.
func (s *semaphore) hasWaiters(channel string) bool {
	if s.channelScoped() {
		return s.waitingByChan[channel] > 0
	}
	return s.waiters.Len() > 0
}

// addLease records a granted lease.
func (s *semaphore) addLease(e *leaseEntry) {
	s.leases[e.lease.ID] = e
	heap.Push(&s.byExpiry, e)
	s.inUse += e.lease.Weight
	s.inUseByChan[e.lease.Channel] += e.lease.Weight
	if e.idemKey != "" {
		s.idem[e.idemKey] = e.lease.ID
	}
}

// removeLease forgets a lease (released or expired).
func (s *semaphore) removeLease(e *leaseEntry) {
	delete(s.leases, e.lease.ID)
	heap.Remove(&s.byExpiry, e.index)
	s.inUse -= e.lease.Weight
	if n := s.inUseByChan[e.lease.Channel] - e.lease.Weight; n > 0 {
		s.inUseByChan[e.lease.Channel] = n
	} else {
		delete(s.inUseByChan, e.lease.Channel)
	}
	if e.idemKey != "" && s.idem[e.idemKey] == e.lease.ID {
		delete(s.idem, e.idemKey)
	}
	if e.session != "" && s.unbind != nil {
		s.unbind(e)
	}
}

// setExpiry moves a lease's expiry and keeps the heap ordered.
func (s *semaphore) setExpiry(e *leaseEntry, expiresAt time.Time, ttl time.Duration) {
	e.lease.ExpiresAt = expiresAt
	e.lease.TTL = ttl
	heap.Fix(&s.byExpiry, e.index)
}

// dropExpired removes every lease whose expiresAt is at or before now,
// calling gone with each after its removal, and returns how many it removed.
func (s *semaphore) dropExpired(now time.Time, gone func(*leaseEntry)) int {
	n := 0
	for len(s.byExpiry) > 0 && expired(s.byExpiry[0].lease, now) {
		e := s.byExpiry[0]
		s.removeLease(e)
		gone(e)
		n++
	}
	return n
}

// expired reports whether a lease has expired at now: a lease is live for
// times strictly before its expiresAt.
func expired(l store.Lease, now time.Time) bool {
	return !now.Before(l.ExpiresAt)
}

// enqueue appends a waiter to the FIFO queue.
func (s *semaphore) enqueue(w *waiter) {
	w.elem = s.waiters.PushBack(w)
	s.waitingByChan[w.channel]++
}

// dequeue removes a waiter from the queue; a no-op if it already left.
func (s *semaphore) dequeue(w *waiter) {
	if w.elem == nil {
		return
	}
	s.waiters.Remove(w.elem)
	w.elem = nil
	if n := s.waitingByChan[w.channel] - 1; n > 0 {
		s.waitingByChan[w.channel] = n
	} else {
		delete(s.waitingByChan, w.channel)
	}
}

// state returns the usage snapshot of the semaphore at now. For scope
// "total" each channel's Available (and rate window) is the shared one; for
// scope "channel" it is the channel's own, and the top-level one is that
// of the default channel (what a request naming no channel could take).
// Under scope "channel", channels with grants in their rate window are
// listed even when nothing else is left of them.
func (s *semaphore) state(now time.Time) store.SemaphoreState {
	st := store.SemaphoreState{Channels: make(map[string]store.ChannelState)}
	st.InUse = s.inUse
	st.Waiting = int64(s.waiters.Len())
	st.Available = floor0(s.maxValue() - s.inUseOf(store.DefaultChannel))
	st.RateUsed = s.rateUsed(store.DefaultChannel, now)
	st.RateNextAt = s.rateOldestOut(store.DefaultChannel, now)
	for _, ch := range s.rateChannels(now) {
		st.Channels[ch] = store.ChannelState{}
	}
	for ch, n := range s.inUseByChan {
		cs := st.Channels[ch]
		cs.InUse = n
		st.Channels[ch] = cs
	}
	for ch, n := range s.waitingByChan {
		cs := st.Channels[ch]
		cs.Waiting = n
		st.Channels[ch] = cs
	}
	for ch, l := range s.jobs.queues {
		cs := st.Channels[ch]
		cs.Queued = int64(l.Len())
		st.Channels[ch] = cs
		st.Queued += cs.Queued
	}
	for _, j := range s.jobs.delayed {
		cs := st.Channels[j.job.Channel]
		cs.Queued++
		st.Channels[j.job.Channel] = cs
		st.Queued++
	}
	for ch, n := range s.jobs.inflight {
		cs := st.Channels[ch]
		cs.Inflight = n
		st.Channels[ch] = cs
		st.Inflight += n
	}
	for ch, cs := range st.Channels {
		cs.Available = floor0(s.maxValue() - s.inUseOf(ch))
		cs.RateUsed = s.rateUsed(ch, now)
		cs.RateNextAt = s.rateOldestOut(ch, now)
		st.Channels[ch] = cs
	}
	return st
}

func floor0(n int64) int64 {
	if n < 0 {
		return 0
	}
	return n
}

// expiryHeap is a min-heap of leases by expiresAt (container/heap).
type expiryHeap []*leaseEntry

func (h expiryHeap) Len() int { return len(h) }
func (h expiryHeap) Less(i, j int) bool {
	return h[i].lease.ExpiresAt.Before(h[j].lease.ExpiresAt)
}
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

// Push implements heap.Interface.
func (h *expiryHeap) Push(x any) {
	e := x.(*leaseEntry)
	e.index = len(*h)
	*h = append(*h, e)
}

// Pop implements heap.Interface.
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}
