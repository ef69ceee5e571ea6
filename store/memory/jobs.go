package memory

import (
	"bytes"
	"container/list"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/semaphored/semaphored/store"
)

// jobEntry is a job held in a semaphore. Its fields are guarded by the
// Store's mutex.
type jobEntry struct {
	job   store.Job     // job.Lease is always nil here: see lease
	seq   int64         // creation order within the semaphore (ListJobs cursor)
	lease *leaseEntry   // the permit it holds, while inflight
	elem  *list.Element // in its channel's queue while scheduled, in finished[class] while terminal
	gone  bool          // deleted (purged or forgotten); a hole in jobQueues.order
	// delayed: scheduled, waiting for job.RunAt in jobQueues.delayed (at
	// dindex) instead of its channel's queue (delay.go)
	delayed bool
	dindex  int
}

// snapshot returns a copy of the job that shares no memory with the store.
func (j *jobEntry) snapshot() store.Job {
	job := j.job
	job.Payload = bytes.Clone(job.Payload)
	job.Parent = copyRef(job.Parent)
	job.Child = copyRef(job.Child)
	if j.lease != nil {
		l := j.lease.lease
		job.Lease = &l
		if e := j.lease; e.session != "" {
			job.Worker = &store.Worker{Session: e.session, Channel: e.bindChannel, Node: e.bindNode}
		}
	}
	return job
}

func copyRef(r *store.JobRef) *store.JobRef {
	if r == nil {
		return nil
	}
	c := *r
	return &c
}

// jobQueues is the async state of one semaphore: every job it knows, the
// FIFO queue of scheduled jobs per channel, and the round-robin cursor.
//
// Round-robin: the channels with scheduled jobs are kept sorted by name;
// each dispatch serves the first channel after the cursor (the channel
// served last), wrapping around, whose capacity domain has a free permit
// and no sync waiter.
type jobQueues struct {
	byID     map[string]*jobEntry
	order    []*jobEntry // by seq (creation order), with holes (gone)
	holes    int
	seq      int64
	idem     map[string]string     // idempotency key -> job id
	queues   map[string]*list.List // channel -> scheduled *jobEntry, FIFO
	channels []string              // sorted channels with scheduled jobs
	cursor   string                // channel served last
	inflight map[string]int64      // channel -> inflight jobs
	// finished holds the terminal *jobEntry of each retention class
	// (finishedClass), in order of finishing: one retention applies to a
	// whole list, so its front is the next one due.
	finished [2]*list.List
	delayed  delayHeap // scheduled jobs waiting for their RunAt (delay.go)
}

// Retention classes of terminal jobs (store.Retention): done and
// cancelled, error and timeout.
const (
	classDone = iota
	classFailed
)

func finishedClass(s store.JobStatus) int {
	if s == store.JobError || s == store.JobTimeout {
		return classFailed
	}
	return classDone
}

func newJobQueues() jobQueues {
	return jobQueues{
		byID:     make(map[string]*jobEntry),
		idem:     make(map[string]string),
		queues:   make(map[string]*list.List),
		inflight: make(map[string]int64),
		finished: [2]*list.List{list.New(), list.New()},
	}
}

// add records a new job (not yet queued).
func (q *jobQueues) add(j *jobEntry) {
	q.seq++
	j.seq = q.seq
	q.byID[j.job.ID] = j
	q.order = append(q.order, j)
	if k := j.job.IdempotencyKey; k != "" {
		q.idem[k] = j.job.ID
	}
}

// push puts a scheduled job at the back (or the front) of its channel's queue.
func (q *jobQueues) push(j *jobEntry, front bool) {
	ch := j.job.Channel
	l, ok := q.queues[ch]
	if !ok {
		l = list.New()
		q.queues[ch] = l
		i, _ := slices.BinarySearch(q.channels, ch)
		q.channels = slices.Insert(q.channels, i, ch)
	}
	if front {
		j.elem = l.PushFront(j)
	} else {
		j.elem = l.PushBack(j)
	}
}

// unqueue takes a scheduled job out of its channel's queue (or out of
// the delayed jobs).
func (q *jobQueues) unqueue(j *jobEntry) {
	if j.delayed {
		q.undelay(j)
		return
	}
	ch := j.job.Channel
	l := q.queues[ch]
	l.Remove(j.elem)
	j.elem = nil
	if l.Len() == 0 {
		delete(q.queues, ch)
		if i, ok := slices.BinarySearch(q.channels, ch); ok {
			q.channels = slices.Delete(q.channels, i, i+1)
		}
	}
}

// queued returns the number of scheduled jobs.
func (q *jobQueues) queued() int64 {
	var n int64
	for _, l := range q.queues {
		n += int64(l.Len())
	}
	return n + int64(len(q.delayed))
}

// leaveInflight forgets that j holds a permit (its lease is already gone).
func (q *jobQueues) leaveInflight(j *jobEntry) {
	j.lease = nil
	ch := j.job.Channel
	if n := q.inflight[ch] - 1; n > 0 {
		q.inflight[ch] = n
	} else {
		delete(q.inflight, ch)
	}
}

// remove deletes a job that is scheduled or terminal.
func (q *jobQueues) remove(j *jobEntry) {
	switch {
	case j.job.Status == store.JobScheduled:
		q.unqueue(j)
	case j.job.Status.Terminal():
		q.unfinish(j)
	}
	delete(q.byID, j.job.ID)
	if k := j.job.IdempotencyKey; k != "" && q.idem[k] == j.job.ID {
		delete(q.idem, k)
	}
	j.gone = true
	q.holes++
	if q.holes > len(q.order)/2 {
		q.order = slices.DeleteFunc(q.order, func(j *jobEntry) bool { return j.gone })
		q.holes = 0
	}
}

// unfinish takes a terminal job out of its finished list.
func (q *jobQueues) unfinish(j *jobEntry) {
	q.finished[finishedClass(j.job.Status)].Remove(j.elem)
	j.elem = nil
}

// nextChannel returns the channel to dispatch from next at now, if any: its
// head job has a free permit and room in the rate window. A head that has
// no room blocks its own domain only; channels in skip (whose head waits
// for a worker with room) are passed over.
func (s *semaphore) nextChannel(now time.Time, skip map[string]bool) (string, bool) {
	chans := s.jobs.channels
	n := len(chans)
	start, found := slices.BinarySearch(chans, s.jobs.cursor)
	if found {
		start++
	}
	for i := range n {
		ch := chans[(start+i)%n]
		if skip[ch] {
			continue
		}
		if !s.hasWaiters(ch) && s.grantable(ch, 1, now) {
			return ch, true
		}
		if !s.channelScoped() {
			return "", false // one capacity domain: if one cannot, none can
		}
	}
	return "", false
}

// maxAttempts returns the semaphore's maxAttempts (≤ 0 behaves like 1).
func (s *semaphore) maxAttempts() int { return s.info.Config.MaxAttempts }

// dispatch moves up to limit (≤ 0: DefaultDispatchBatch) scheduled jobs
// that fit to inflight, records them as Dispatched events and returns them.
// With a worker route (store.WorkerRoute) a job goes only to a subscribed
// session with room, bound to it. Every operation on a semaphore ends with
// it, so it also sets the rate timer for what the rate still holds back
// (rate.go).
func (s *Store) dispatch(sem *semaphore, limit int, now time.Time) []store.Job {
	defer s.armRateTimer(sem, now)
	defer s.armDelayTimer(sem, now)
	if limit <= 0 {
		limit = store.DefaultDispatchBatch
	}
	var out []store.Job
	var noRoom map[string]bool // channels whose head waits for a worker
	wr := sem.info.Config.Workers
	for len(out) < limit && !sem.info.Suspended {
		ch, ok := sem.nextChannel(now, noRoom)
		if !ok {
			break
		}
		var w *roomEntry
		if wr != nil {
			rc := wr.Channel
			if rc == "" {
				rc = ch
			}
			if w = s.roomFor(sem.key, rc); w == nil && !wr.Fallback {
				if noRoom == nil {
					noRoom = make(map[string]bool)
				}
				noRoom[ch] = true
				continue
			}
		}
		j := sem.jobs.queues[ch].Front().Value.(*jobEntry)
		sem.jobs.unqueue(j)
		sem.jobs.cursor = ch
		e := s.grantEntry(sem, ch, 1, leaseTTL(0, sem), "", now)
		e.job = j
		j.lease = e
		sem.jobs.inflight[ch]++
		j.job.Status = store.JobInflight
		j.job.Attempts++
		j.job.UpdatedAt = now
		if w != nil {
			j.job.Route = store.RouteWebsocket
			s.bindLease(sem.key.tenant, e, w.session, w.channel)
		}
		snap := j.snapshot()
		out = append(out, snap)
		s.pending.Dispatched = append(s.pending.Dispatched, snap)
	}
	return out
}

// schedule puts a job (no longer inflight or terminal) into its queue.
func (s *Store) schedule(sem *semaphore, j *jobEntry, front bool, now time.Time) {
	j.job.Status = store.JobScheduled
	j.job.UpdatedAt = now
	sem.jobs.push(j, front)
}

// finishJob ends a job (no longer inflight or queued) in a terminal status
// and records a Finished event. With a retention of 0 for the status the
// job is deleted at once (the event and the caller's entry still have it).
func (s *Store) finishJob(sem *semaphore, j *jobEntry, status store.JobStatus, msg string, now time.Time) {
	j.job.Status = status
	j.job.Error = msg
	j.job.UpdatedAt = now
	j.job.FinishedAt = now
	j.elem = sem.jobs.finished[finishedClass(status)].PushBack(j)
	s.pending.Finished = append(s.pending.Finished, j.snapshot())
	if sem.info.Config.Retention.Of(status) <= 0 {
		sem.jobs.remove(j)
	}
}

// retryOrTimeout schedules a job that lost its permit again, after its
// retry backoff, while it has attempts left, else ends it in timeout with
// msg.
func (s *Store) retryOrTimeout(sem *semaphore, j *jobEntry, msg string, now time.Time) {
	if j.job.Attempts < sem.maxAttempts() {
		s.scheduleIn(sem, j, s.backoff(sem, j), now)
		return
	}
	s.finishJob(sem, j, store.JobTimeout, msg, now)
}

// backoff is the wait of a job after its failed attempts (full jitter).
func (s *Store) backoff(sem *semaphore, j *jobEntry) time.Duration {
	return sem.info.Config.Retry.Delay(j.job.Attempts, rand.Float64())
}

// jobLeaseExpired handles a job whose lease expired (already removed).
func (s *Store) jobLeaseExpired(sem *semaphore, j *jobEntry, now time.Time) {
	sem.jobs.leaveInflight(j)
	s.retryOrTimeout(sem, j, fmt.Sprintf("lease expired after %d attempts", j.job.Attempts), now)
}

// dropJobLease frees the permit of an inflight job.
func (s *Store) dropJobLease(sem *semaphore, j *jobEntry) {
	if e := j.lease; e != nil {
		sem.removeLease(e)
		sem.jobs.leaveInflight(j)
	}
}

// forgetJobs deletes the terminal jobs whose retention has passed at now.
func (s *Store) forgetJobs(sem *semaphore, now time.Time) {
	ret := sem.info.Config.Retention
	for class, l := range sem.jobs.finished {
		keep := ret.Done
		if class == classFailed {
			keep = ret.Failed
		}
		for e := l.Front(); e != nil; e = l.Front() {
			j := e.Value.(*jobEntry)
			if now.Before(j.job.FinishedAt.Add(keep)) {
				break
			}
			sem.jobs.remove(j)
		}
	}
}

// jobSemaphore finds the semaphore of a job id; ErrJobNotFound when the id
// or its semaphore is unknown in the tenant.
func (s *Store) jobSemaphore(tenant, id string) (*semaphore, error) {
	name, ok := store.ParseJobID(id)
	if !ok {
		return nil, store.ErrJobNotFound
	}
	sem, ok := s.sems[semKey{tenant, name}]
	if !ok {
		return nil, store.ErrJobNotFound
	}
	return sem, nil
}

// EnqueueJob implements store.JobStore. The returned job is its state at
// the end of the operation: inflight, with its lease, when a permit was
// free. A replay of an idempotency key returns the existing job.
func (s *Store) EnqueueJob(ctx context.Context, p store.EnqueueParams) (store.Job, bool, error) {
	item := store.EnqueueItem{Channel: p.Channel, Payload: p.Payload, IdempotencyKey: p.IdempotencyKey, Delay: p.Delay}
	res, err := s.enqueue(ctx, p.Tenant, p.Semaphore, []store.EnqueueItem{item}, p.MaxQueued, p.Parent)
	if err != nil {
		return store.Job{}, false, err
	}
	return res[0].Job, res[0].Created, nil
}

// EnqueueJobs implements store.JobStore: all the batch's jobs are added
// under one lock, after the queue limit is checked for all of them.
func (s *Store) EnqueueJobs(ctx context.Context, p store.EnqueueBatchParams) ([]store.EnqueueResult, error) {
	return s.enqueue(ctx, p.Tenant, p.Semaphore, p.Jobs, p.MaxQueued, nil)
}

// enqueue adds items in order under one lock, all or nothing: an item
// whose idempotency key names an existing job (or an earlier item) returns
// that job; ErrQueueFull when the jobs it creates do not all fit under
// maxQueued (0: no limit). New jobs get parent. What fits is dispatched
// after the last one.
func (s *Store) enqueue(ctx context.Context, tenant, name string, items []store.EnqueueItem, maxQueued int64, parent *store.JobRef) ([]store.EnqueueResult, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	sem, err := s.semaphore(tenant, name)
	if err != nil {
		return nil, err
	}
	now := s.now()
	s.refresh(sem, now)
	seen := make(map[string]bool)
	fresh := int64(0)
	for _, it := range items {
		if k := it.IdempotencyKey; k != "" {
			if _, ok := sem.jobs.idem[k]; ok || seen[k] {
				continue
			}
			seen[k] = true
		}
		fresh++
	}
	if maxQueued > 0 && fresh > 0 && sem.jobs.queued()+fresh > maxQueued {
		return nil, store.ErrQueueFull
	}
	out := make([]store.EnqueueResult, len(items))
	added := make([]*jobEntry, len(items))
	for i, it := range items {
		if id, ok := sem.jobs.idem[it.IdempotencyKey]; ok && it.IdempotencyKey != "" {
			added[i] = sem.jobs.byID[id]
			continue
		}
		ch := it.Channel
		if ch == "" {
			ch = store.DefaultChannel
		}
		j := &jobEntry{job: store.Job{
			Tenant:         tenant,
			ID:             store.NewJobID(sem.key.name),
			Semaphore:      sem.key.name,
			Channel:        ch,
			Payload:        bytes.Clone(it.Payload),
			IdempotencyKey: it.IdempotencyKey,
			Parent:         copyRef(parent),
			CreatedAt:      now,
		}}
		sem.jobs.add(j) // registers its key for the items after it
		s.scheduleIn(sem, j, it.Delay.Truncate(time.Millisecond), now)
		added[i], out[i].Created = j, true
	}
	s.dispatch(sem, 0, now)
	for i, j := range added {
		out[i].Job = j.snapshot()
	}
	return out, nil
}

// DispatchJobs implements store.JobStore.
func (s *Store) DispatchJobs(ctx context.Context, p store.DispatchParams) ([]store.Job, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	sem, err := s.semaphore(p.Tenant, p.Semaphore)
	if err != nil {
		return nil, err
	}
	now := s.now()
	s.settle(sem, now)
	return s.dispatch(sem, p.Max, now), nil
}

// GetJob implements store.JobStore.
func (s *Store) GetJob(ctx context.Context, tenant, id string) (store.Job, error) {
	if err := s.lock(ctx); err != nil {
		return store.Job{}, err
	}
	defer s.unlock()
	sem, err := s.jobSemaphore(tenant, id)
	if err != nil {
		return store.Job{}, err
	}
	s.refresh(sem, s.now())
	j, ok := sem.jobs.byID[id]
	if !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	return j.snapshot(), nil
}

// defaultJobListLimit is the page size of ListJobs when none is given.
const defaultJobListLimit = 100

// ListJobs implements store.JobStore. The cursor is the creation sequence
// number of the last job of the previous page; a cursor that is not one
// lists nothing.
func (s *Store) ListJobs(ctx context.Context, p store.ListJobsParams) ([]store.Job, string, error) {
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
			return []store.Job{}, "", nil // not a cursor ListJobs gave: nothing, as in Redis
		}
	}
	limit := p.Limit
	if limit <= 0 {
		limit = defaultJobListLimit
	}
	order := sem.jobs.order
	i := sort.Search(len(order), func(i int) bool { return order[i].seq > after })
	jobs := []store.Job{}
	var last int64
	for ; i < len(order); i++ {
		j := order[i]
		if j.gone || (p.Status != "" && j.job.Status != p.Status) || (p.Channel != "" && j.job.Channel != p.Channel) {
			continue
		}
		if len(jobs) == limit {
			return jobs, strconv.FormatInt(last, 10), nil
		}
		jobs = append(jobs, j.snapshot())
		last = j.seq
	}
	return jobs, "", nil
}

// TransitionJob implements store.JobStore. The returned job is its state
// at the end of the operation (a requeued job may be inflight already).
func (s *Store) TransitionJob(ctx context.Context, p store.TransitionParams) (store.Job, error) {
	if err := s.lock(ctx); err != nil {
		return store.Job{}, err
	}
	defer s.unlock()
	sem, err := s.jobSemaphore(p.Tenant, p.JobID)
	if err != nil {
		return store.Job{}, err
	}
	now := s.now()
	s.settle(sem, now) // an expired lease is stale before anything is judged
	j, err := s.transition(sem, p, now)
	s.grantWaiters(sem, now) // a freed permit goes to sync waiters first
	s.dispatch(sem, 0, now)  // then to queued jobs
	if err != nil {
		return store.Job{}, err
	}
	return j.snapshot(), nil
}

// transition finds the job and applies one action to it.
func (s *Store) transition(sem *semaphore, p store.TransitionParams, now time.Time) (*jobEntry, error) {
	j, ok := sem.jobs.byID[p.JobID]
	if !ok {
		return nil, store.ErrJobNotFound
	}
	if p.LeaseID != "" && (j.lease == nil || j.lease.lease.ID != p.LeaseID) {
		return nil, store.ErrStaleLease
	}
	return j, s.apply(sem, j, p, now)
}

// apply applies one action to a job.
func (s *Store) apply(sem *semaphore, j *jobEntry, p store.TransitionParams, now time.Time) error {
	status := j.job.Status
	inflight := status == store.JobInflight
	switch p.Action {
	case store.ActDelivered:
		if !inflight {
			return invalidState(p.Action, status)
		}
		if p.Route != "" {
			j.job.Route = p.Route
		}
		j.job.UpdatedAt = now
		s.hold(sem, j, p.HoldTTL, now)
		if e := j.lease; e != nil {
			if e.session != "" {
				s.unbindLease(sem.key.tenant, e)
			}
			if p.Bind != nil && p.Bind.Session != "" {
				s.bindLease(sem.key.tenant, e, p.Bind.Session, p.Bind.Channel)
			}
		}
	case store.ActHandOff:
		if !inflight {
			return invalidState(p.Action, status)
		}
		j.job.Route = p.Route
		if j.job.Route == "" {
			j.job.Route = "semaphore"
		}
		j.job.Child = copyRef(p.Child)
		j.job.UpdatedAt = now
		if p.Child != nil && p.Child.Hold {
			s.hold(sem, j, p.HoldTTL, now)
			return nil
		}
		s.dropJobLease(sem, j)
		s.finishJob(sem, j, store.JobDone, "", now)
	case store.ActRelease, store.ActFail:
		if !inflight {
			return invalidState(p.Action, status)
		}
		s.dropJobLease(sem, j)
		if p.Action == store.ActRelease {
			if p.Route != "" {
				j.job.Route = p.Route // accepted and released at once (releaseOnSuccess)
			}
			s.finishJob(sem, j, store.JobDone, "", now)
		} else {
			s.finishJob(sem, j, store.JobError, p.Error, now)
		}
	case store.ActFailRetry:
		if !inflight {
			return invalidState(p.Action, status)
		}
		s.dropJobLease(sem, j)
		if j.job.Attempts < sem.maxAttempts() {
			j.job.Error = p.Error
			s.scheduleIn(sem, j, max(s.backoff(sem, j), p.MinDelay), now)
			break
		}
		s.finishJob(sem, j, store.JobError, p.Error, now)
	case store.ActRetry:
		if !inflight {
			return invalidState(p.Action, status)
		}
		s.dropJobLease(sem, j)
		msg := p.Error
		if msg == "" {
			msg = fmt.Sprintf(store.MsgGaveUp, j.job.Attempts)
		}
		s.retryOrTimeout(sem, j, msg, now)
	case store.ActSuspend, store.ActReturn:
		if !inflight {
			return invalidState(p.Action, status)
		}
		s.dropJobLease(sem, j)
		j.job.Attempts = max(j.job.Attempts-1, 0)
		if p.Action == store.ActReturn {
			j.job.Route = ""
			s.schedule(sem, j, true, now)
			break
		}
		s.schedule(sem, j, true, now)
		sem.info.Suspended = true
		sem.info.UpdatedAt = now
	case store.ActCancel:
		switch status {
		case store.JobScheduled:
			sem.jobs.unqueue(j)
		case store.JobInflight:
			s.dropJobLease(sem, j)
		default:
			return invalidState(p.Action, status)
		}
		s.finishJob(sem, j, store.JobCancelled, "", now)
	case store.ActRequeue:
		if !status.Terminal() {
			return invalidState(p.Action, status)
		}
		sem.jobs.unfinish(j)
		j.job.Attempts = 0
		j.job.Error = ""
		j.job.Route = ""
		j.job.Child = nil
		j.job.FinishedAt = time.Time{}
		s.schedule(sem, j, false, now)
	default:
		return fmt.Errorf("%w: unknown action %q", store.ErrInvalidState, p.Action)
	}
	return nil
}

// hold moves an inflight job's lease expiry to now+ttl when ttl > 0.
func (s *Store) hold(sem *semaphore, j *jobEntry, ttl time.Duration, now time.Time) {
	if ttl > 0 {
		sem.setExpiry(j.lease, now.Add(ttl), ttl)
	}
}

func invalidState(a store.JobAction, s store.JobStatus) error {
	return fmt.Errorf("%w: "+store.MsgInvalidTransition, store.ErrInvalidState, a, s)
}

// PurgeJobs implements store.JobStore. Inflight jobs hold permits and
// cannot be purged (ErrInvalidState, as is a status that is not one).
func (s *Store) PurgeJobs(ctx context.Context, p store.PurgeJobsParams) (int, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.unlock()
	if !p.Status.Purgeable() {
		return 0, fmt.Errorf("%w: cannot purge %q jobs", store.ErrInvalidState, p.Status)
	}
	sem, err := s.semaphore(p.Tenant, p.Semaphore)
	if err != nil {
		return 0, err
	}
	s.refresh(sem, s.now())
	n := 0
	for _, j := range slices.Clone(sem.jobs.order) {
		if !j.gone && j.job.Status == p.Status && (p.Channel == "" || j.job.Channel == p.Channel) {
			sem.jobs.remove(j)
			n++
		}
	}
	return n, nil
}

// SetJobListener implements store.JobStore.
func (s *Store) SetJobListener(fn func(store.JobEvents)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listener = fn
}
