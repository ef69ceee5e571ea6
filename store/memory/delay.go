package memory

import (
	"container/heap"
	"time"

	"github.com/semaphored/semaphored/store"
)

// Delayed jobs: scheduled jobs that wait for their RunAt (a delay given at
// enqueue, or a retry backoff) outside their channel's queue, soonest
// first. Every operation on the semaphore first queues the ones whose
// time has come (promote), in RunAt order, so they go ahead of the jobs
// enqueued after that instant; a timer per semaphore runs that operation
// at the earliest RunAt, so a due job is pushed, not polled for.

// delayHeap orders delayed jobs by RunAt, then by creation.
type delayHeap []*jobEntry

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(a, b int) bool {
	if !h[a].job.RunAt.Equal(h[b].job.RunAt) {
		return h[a].job.RunAt.Before(h[b].job.RunAt)
	}
	return h[a].seq < h[b].seq
}
func (h delayHeap) Swap(a, b int) {
	h[a], h[b] = h[b], h[a]
	h[a].dindex, h[b].dindex = a, b
}
func (h *delayHeap) Push(x any) {
	j := x.(*jobEntry)
	j.dindex, j.delayed = len(*h), true
	*h = append(*h, j)
}
func (h *delayHeap) Pop() any {
	old := *h
	j := old[len(old)-1]
	*h = old[:len(old)-1]
	j.dindex, j.delayed = -1, false
	return j
}

// undelay takes a delayed job out (cancelled, purged, forgotten).
func (q *jobQueues) undelay(j *jobEntry) {
	heap.Remove(&q.delayed, j.dindex)
	j.job.RunAt = time.Time{}
}

// scheduleIn schedules a job (no longer inflight or terminal) to queue
// after d: at once when d ≤ 0, else as a delayed job.
func (s *Store) scheduleIn(sem *semaphore, j *jobEntry, d time.Duration, now time.Time) {
	if d <= 0 {
		s.schedule(sem, j, false, now)
		return
	}
	j.job.Status = store.JobScheduled
	j.job.UpdatedAt = now
	j.job.RunAt = now.Add(d)
	heap.Push(&sem.jobs.delayed, j)
}

// promote queues the delayed jobs whose RunAt has come, in RunAt order.
func (s *Store) promote(sem *semaphore, now time.Time) {
	q := &sem.jobs
	for len(q.delayed) > 0 && !q.delayed[0].job.RunAt.After(now) {
		j := heap.Pop(&q.delayed).(*jobEntry)
		j.job.RunAt = time.Time{}
		q.push(j, false)
	}
}

// delayTimer runs a semaphore's operation at the earliest RunAt of its
// delayed jobs.
type delayTimer struct {
	timer *time.Timer
	at    time.Time
	gen   int64
}

func (t *delayTimer) stop() {
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
}

// armDelayTimer sets sem's delay timer to its earliest delayed job, or
// stops it when there is none.
func (s *Store) armDelayTimer(sem *semaphore, now time.Time) {
	t := &sem.dtimer
	if len(sem.jobs.delayed) == 0 {
		t.stop()
		return
	}
	at := sem.jobs.delayed[0].job.RunAt
	if t.timer != nil && t.at.Equal(at) {
		return
	}
	t.stop()
	t.gen++
	gen := t.gen
	t.at = at
	t.timer = time.AfterFunc(at.Sub(now), func() { s.delayFired(sem, gen) })
}

// delayFired queues the due jobs and dispatches what fits, as any
// operation does; a timer replaced meanwhile does nothing.
func (s *Store) delayFired(sem *semaphore, gen int64) {
	s.mu.Lock()
	if s.closed || s.sems[sem.key] != sem || sem.dtimer.gen != gen {
		s.mu.Unlock()
		return
	}
	defer s.unlock()
	sem.dtimer.timer = nil
	s.refresh(sem, s.now())
}
