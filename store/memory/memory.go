// Package memory is the embedded in-memory store of semaphored, the
// zero-config default. All state lives in one process and is lost when it
// exits, except that fencing tokens are seeded from the clock so that they
// keep increasing across restarts.
//
// Every operation is one critical section under a single mutex. Waiting
// acquires park on a Go channel and are granted by push: the operation that
// frees permits (a release, an expiry found by Sweep or by any other
// operation, a raise of maxValue, a waiter leaving the head of the queue)
// grants the head waiters inside its own critical section, and then
// dispatches the queued async jobs that still fit (jobs.go). With a rate
// limit (rate.go) a grant also needs room in its domain's sliding window;
// what the window holds back is granted by a timer set to the instant room
// frees, which runs under the mutex like any operation. The job events an
// operation produces are collected under the mutex and handed to the job
// listener after it is unlocked, in the calling goroutine (the timer's for
// a timer).
package memory

import (
	"bytes"
	"context"
	"sort"
	"sync"
	"time"

	"github.com/semaphored/semaphored/store"
)

// defaultListLimit is the page size of ListSemaphores when none is given.
const defaultListLimit = 100

// Options configures a Store. The zero value is ready to use.
type Options struct {
	// Now is the store's clock, by which lease expiry is judged and from
	// which fencing counters are seeded. nil means time.Now. Waiting (the
	// Wait of an acquire) always uses real timers.
	Now func() time.Time
}

// Store is the in-memory implementation of store.Store. Create it with New.
type Store struct {
	now func() time.Time

	mu          sync.Mutex
	closed      bool
	sems        map[semKey]*semaphore
	fencing     map[semKey]int64 // last token per semaphore; survives deletes
	tenants     map[string]store.Tenant
	keys        map[keyRef]store.APIKey // ids are unique per tenant
	keyIDByHash map[string]keyRef

	sessState *sessionState // sessions.go, created on first use

	listener func(store.JobEvents) // set by SetJobListener
	pending  store.JobEvents       // events of the running operation
}

var _ store.Store = (*Store)(nil)

// New returns an empty store.
func New(opts Options) *Store {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Store{
		now:         now,
		sems:        make(map[semKey]*semaphore),
		fencing:     make(map[semKey]int64),
		tenants:     make(map[string]store.Tenant),
		keys:        make(map[keyRef]store.APIKey),
		keyIDByHash: make(map[string]keyRef),
	}
}

// lock takes the store's mutex unless ctx has ended or the store is closed.
// On success the caller must call s.mu.Unlock.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return store.ErrUnavailable
	}
	return nil
}

// unlock ends a critical section taken with lock: it unlocks the mutex and
// then hands the job events of the operation, if any, to the listener.
func (s *Store) unlock() {
	ev, listener := s.pending, s.listener
	s.pending = store.JobEvents{}
	s.mu.Unlock()
	if listener != nil && (len(ev.Dispatched) > 0 || len(ev.Finished) > 0) {
		listener(ev)
	}
}

// semaphore returns the semaphore or ErrSemaphoreNotFound.
func (s *Store) semaphore(tenant, name string) (*semaphore, error) {
	sem, ok := s.sems[semKey{tenant, name}]
	if !ok {
		return nil, store.ErrSemaphoreNotFound
	}
	return sem, nil
}

// refresh settles the semaphore and dispatches the queued jobs that fit.
// It returns how many leases expired.
func (s *Store) refresh(sem *semaphore, now time.Time) int {
	n := s.settle(sem, now)
	s.dispatch(sem, 0, now)
	return n
}

// settle drops the semaphore's expired leases (an expired job lease sends
// its job back to its queue or to timeout), forgets terminal jobs past
// their retention and grants freed permits to waiters. It returns how many
// leases expired.
func (s *Store) settle(sem *semaphore, now time.Time) int {
	s.promote(sem, now)
	n := sem.dropExpired(now, func(e *leaseEntry) {
		if e.job != nil {
			s.jobLeaseExpired(sem, e.job, now)
		}
	})
	s.forgetJobs(sem, now)
	s.grantWaiters(sem, now)
	return n
}

// nextToken returns the next fencing token of a semaphore: greater than every
// earlier one, and at least the clock in unix microseconds, so tokens keep
// increasing across a restart of the process.
func (s *Store) nextToken(key semKey, now time.Time) int64 {
	t := max(s.fencing[key]+1, now.UnixMicro())
	s.fencing[key] = t
	return t
}

// PutSemaphore implements store.Store.
func (s *Store) PutSemaphore(ctx context.Context, p store.PutSemaphoreParams) (store.Semaphore, bool, error) {
	if err := s.lock(ctx); err != nil {
		return store.Semaphore{}, false, err
	}
	defer s.unlock()
	if err := p.Config.Check(); err != nil {
		return store.Semaphore{}, false, err
	}
	now := s.now()
	cfg := copySemaphore(store.Semaphore{Config: p.Config}).Config
	key := semKey{p.Tenant, p.Name}
	sem, ok := s.sems[key]
	if !ok {
		sem = newSemaphore(key, store.Semaphore{Name: p.Name, CreatedAt: now})
		sem.unbind = func(e *leaseEntry) { s.unbindLease(key.tenant, e) }
		s.sems[key] = sem
	}
	old := sem.info.Config
	sem.info.Config = cfg
	sem.info.UpdatedAt = now
	sem.setRate(old, now)
	s.refresh(sem, now) // a raised maxValue or rate limit (or a new scope) grants waiters at once
	return copySemaphore(sem.info), !ok, nil
}

// GetSemaphore implements store.Store.
func (s *Store) GetSemaphore(ctx context.Context, tenant, name string) (store.Semaphore, error) {
	if err := s.lock(ctx); err != nil {
		return store.Semaphore{}, err
	}
	defer s.mu.Unlock()
	sem, err := s.semaphore(tenant, name)
	if err != nil {
		return store.Semaphore{}, err
	}
	return copySemaphore(sem.info), nil
}

// ListSemaphores implements store.Store. The cursor is the last name of the
// previous page.
func (s *Store) ListSemaphores(ctx context.Context, p store.ListParams) ([]store.Semaphore, string, error) {
	if err := s.lock(ctx); err != nil {
		return nil, "", err
	}
	defer s.mu.Unlock()
	limit := p.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	var names []string
	for key := range s.sems {
		if key.tenant == p.Tenant && key.name > p.Cursor {
			names = append(names, key.name)
		}
	}
	sort.Strings(names)
	next := ""
	if len(names) > limit {
		names = names[:limit]
		next = names[limit-1]
	}
	sems := make([]store.Semaphore, 0, len(names))
	for _, name := range names {
		sems = append(sems, copySemaphore(s.sems[semKey{p.Tenant, name}].info))
	}
	return sems, next, nil
}

// DeleteSemaphore implements store.Store.
func (s *Store) DeleteSemaphore(ctx context.Context, tenant, name string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	sem, err := s.semaphore(tenant, name)
	if err != nil {
		return err
	}
	delete(s.sems, sem.key) // with its jobs
	if sem.rate != nil {
		sem.rate.stopTimer()
	}
	for _, e := range sem.leases {
		if e.session != "" {
			s.unbindLease(tenant, e)
		}
	}
	s.failWaiters(sem, store.ErrSemaphoreNotFound)
	return nil
}

// SetSuspended implements store.Store.
func (s *Store) SetSuspended(ctx context.Context, tenant, name string, suspended bool) (store.Semaphore, error) {
	if err := s.lock(ctx); err != nil {
		return store.Semaphore{}, err
	}
	defer s.unlock()
	sem, err := s.semaphore(tenant, name)
	if err != nil {
		return store.Semaphore{}, err
	}
	now := s.now()
	sem.info.Suspended = suspended
	sem.info.UpdatedAt = now
	s.refresh(sem, now) // a resume dispatches queued jobs
	return copySemaphore(sem.info), nil
}

// State implements store.Store.
func (s *Store) State(ctx context.Context, tenant, name string) (store.SemaphoreState, error) {
	if err := s.lock(ctx); err != nil {
		return store.SemaphoreState{}, err
	}
	defer s.unlock()
	sem, err := s.semaphore(tenant, name)
	if err != nil {
		return store.SemaphoreState{}, err
	}
	now := s.now()
	s.refresh(sem, now)
	return sem.state(now), nil
}

// Sweep implements store.Store: it checks every semaphore.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.unlock()
	now := s.now()
	n := 0
	for _, sem := range s.sems {
		n += s.refresh(sem, now)
	}
	return n, nil
}

// Ping implements store.Store: it fails only after Close.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	s.mu.Unlock()
	return nil
}

// Close implements store.Store: blocked waiters return ErrUnavailable, and
// so does every later call. Closing twice is harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for _, sem := range s.sems {
		s.failWaiters(sem, store.ErrUnavailable)
		if sem.rate != nil {
			sem.rate.stopTimer()
		}
		sem.dtimer.stop()
	}
	return nil
}

// copySemaphore returns a copy that shares no memory with the store.
func copySemaphore(sem store.Semaphore) store.Semaphore {
	sem.Config.Extra = bytes.Clone(sem.Config.Extra)
	if r := sem.Config.Rate; r != nil {
		c := *r
		sem.Config.Rate = &c
	}
	if w := sem.Config.Workers; w != nil {
		c := *w
		sem.Config.Workers = &c
	}
	return sem
}
