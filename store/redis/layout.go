package redisstore

import (
	"sync"
	"sync/atomic"
	"time"
)

// layoutRefusals counts and logs the calls refused because their
// semaphore's data was written by a newer release (SD_LAYOUT_NEWER, see
// lib_state.lua layout_check): during a rolling upgrade or a rollback an
// older instance refuses such a semaphore rather than misread it.
type layoutRefusals struct {
	n      atomic.Int64
	logged sync.Map // "tenant/name" -> time.Time of its last log line
}

// layoutLogEvery bounds the log lines of one refused semaphore (the sweep
// and every caller may run into it).
const layoutLogEvery = time.Minute

// noteRefusal counts err when it is a layout refusal of tenant's semaphore
// name, and logs it at most once per layoutLogEvery per semaphore.
func (s *Store) noteRefusal(tenant, name string, err error) {
	if !isLayoutNewer(err) {
		return
	}
	s.refusals.n.Add(1)
	key, now := tenant+"/"+name, time.Now()
	if last, ok := s.refusals.logged.Load(key); ok && now.Sub(last.(time.Time)) < layoutLogEvery {
		return
	}
	s.refusals.logged.Store(key, now)
	s.log.Error("refusing a semaphore whose data a newer release of semaphored wrote: upgrade this instance",
		"tenant", tenant, "semaphore", name, "err", err)
}

// LayoutRefusals is how many calls this Store refused because their
// semaphore's data was written by a newer release, in a layout this build
// cannot read (store.ErrLayoutNewer).
func (s *Store) LayoutRefusals() int64 { return s.refusals.n.Load() }
