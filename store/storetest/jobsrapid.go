package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/store"
)

// RunJobsRapid drives one store (a fresh tenant per check) with random
// enqueues (channels, idempotency keys, a queue limit), every job action on
// jobs in every status, releases of job leases, sync acquires and releases,
// maxValue and retention changes, suspend/resume, purges (of one channel or
// all) and DispatchJobs, and checks each answer and each operation's
// JobEvents against a model. Leases never expire here (the example tests
// cover expiry), and a retention is 0 or longer than any check, so the
// model is exact:
//
//   - every accepted job is in exactly one status, the model's;
//   - a job that ends with a retention of 0 is reported (result and
//     Finished event) and gone: not found, not listed, its key free;
//   - a dispatched job is the head of its channel's queue and fits
//     (inflight + sync permits ≤ maxValue in its capacity domain), and after
//     every operation nothing more fits unless the semaphore is suspended;
//   - terminal and scheduled jobs hold no permit; State agrees.
//
// The number of checks is rapid's (-rapid.checks, default 100).
func RunJobsRapid(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	st := newStore(t)
	var seq atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		m := &jobModel{
			ctx:         t.Context(),
			st:          st,
			tenant:      fmt.Sprintf("jobs-rapid-%d", seq.Add(1)),
			name:        "s",
			maxValue:    rapid.Int64Range(1, 3).Draw(rt, "maxValue"),
			scope:       rapid.SampledFrom([]string{store.ScopeTotal, store.ScopeChannel}).Draw(rt, "scope"),
			maxAttempts: rapid.IntRange(1, 3).Draw(rt, "maxAttempts"),
			retention:   drawRetention(rt),
			rec:         newBareRecorder(),
			jobs:        map[string]*modelJob{},
			queues:      map[string][]string{},
			keys:        map[string]string{},
		}
		st.SetJobListener(m.rec.listen)
		defer st.SetJobListener(nil)
		m.putConfig(rt)
		rt.Repeat(map[string]func(*rapid.T){
			"enqueue":      m.enqueue,
			"transition":   m.transition,
			"releaseLease": m.releaseLease,
			"acquire":      m.acquire,
			"releaseSync":  m.releaseSync,
			"setMaxValue":  m.setMaxValue,
			"setRetention": m.setRetention,
			"suspend":      m.suspend,
			"purge":        m.purge,
			"dispatch":     m.dispatch,
			"":             m.check,
		})
	})
}

// modelJob is a job as the model knows it.
type modelJob struct {
	id       string
	delayed  bool // scheduled with a delay (an hour: it never comes due in a check)
	channel  string
	status   store.JobStatus
	attempts int
	lease    string   // lease id while inflight
	leases   []string // every lease it was given
	key      string
}

// jobModel is the state machine of RunJobsRapid.
type jobModel struct {
	ctx         context.Context
	st          store.Store
	tenant      string
	name        string
	maxValue    int64
	scope       string
	maxAttempts int
	retention   store.Retention
	suspended   bool
	rec         *recorder

	jobs   map[string]*modelJob
	order  []string            // job ids, creation order
	queues map[string][]string // channel -> scheduled job ids, FIFO
	keys   map[string]string   // idempotency key -> job id
	sync   []store.Lease       // held sync leases (weight 1, long TTL)
	gone   []string            // ids of jobs deleted by a retention of 0
}

// drawRetention draws each class's retention: 0 (deleted at once) or
// longer than any check.
func drawRetention(rt *rapid.T) store.Retention {
	d := []time.Duration{0, time.Hour}
	return store.Retention{
		Done:   rapid.SampledFrom(d).Draw(rt, "retentionDone"),
		Failed: rapid.SampledFrom(d).Draw(rt, "retentionFailed"),
	}
}

// forgetEnded deletes the model's terminal jobs whose retention is 0.
func (m *jobModel) forgetEnded() {
	m.order = slices.DeleteFunc(m.order, func(id string) bool {
		j := m.jobs[id]
		if !j.status.Terminal() || m.retention.Of(j.status) > 0 {
			return false
		}
		if j.key != "" {
			delete(m.keys, j.key)
		}
		delete(m.jobs, id)
		m.gone = append(m.gone, id)
		return true
	})
}

var rapidJobChannels = []string{"a", "b"}

func (m *jobModel) domain(ch string) string {
	if m.scope == store.ScopeChannel {
		return ch
	}
	return ""
}

// inUse returns the permits held in ch's capacity domain.
func (m *jobModel) inUse(ch string) int64 {
	var n int64
	for _, l := range m.sync {
		if m.domain(l.Channel) == m.domain(ch) {
			n++
		}
	}
	for _, j := range m.jobs {
		if j.status == store.JobInflight && m.domain(j.channel) == m.domain(ch) {
			n++
		}
	}
	return n
}

func (m *jobModel) putConfig(rt *rapid.T) {
	_, _, err := m.st.PutSemaphore(m.ctx, store.PutSemaphoreParams{
		Tenant: m.tenant, Name: m.name,
		Config: store.SemaphoreConfig{
			MaxValue: m.maxValue, MaxValueScope: m.scope, LeaseTimeout: rapidLongTTL, MaxAttempts: m.maxAttempts,
			Retention: m.retention,
		},
	})
	require.NoError(rt, err)
}

// push schedules a job at the back (or front) of its queue.
func (m *jobModel) push(j *modelJob, front bool) {
	j.status, j.lease = store.JobScheduled, ""
	if front {
		m.queues[j.channel] = slices.Insert(m.queues[j.channel], 0, j.id)
	} else {
		m.queues[j.channel] = append(m.queues[j.channel], j.id)
	}
}

// unqueue removes a scheduled job from its queue (or from the delayed).
func (m *jobModel) unqueue(j *modelJob) {
	if j.delayed {
		j.delayed = false
		return
	}
	q := m.queues[j.channel]
	i := slices.Index(q, j.id)
	m.queues[j.channel] = slices.Delete(q, i, i+1)
}

// settle applies the events of the last operation: finished must be
// exactly the jobs the model finished in it, dispatched jobs must be heads
// of their queues and fit. Then nothing more may fit unless suspended.
func (m *jobModel) settle(rt *rapid.T, finished ...string) {
	d, f := m.rec.take()
	require.ElementsMatch(rt, finished, jobIDs(f), "finished events")
	for _, fj := range f {
		require.Equal(rt, m.jobs[fj.ID].status, fj.Status, "finished event status")
		require.Nil(rt, fj.Lease)
	}
	for _, dj := range d {
		require.False(rt, m.suspended, "dispatched while suspended")
		j, ok := m.jobs[dj.ID]
		require.True(rt, ok, "dispatched an unknown job %s", dj.ID)
		require.Equal(rt, store.JobScheduled, j.status, "dispatched a %s job", j.status)
		require.Equal(rt, j.id, m.queues[j.channel][0], "dispatched job is the head of its channel's queue")
		require.Less(rt, m.inUse(j.channel), m.maxValue, "dispatched without a free permit")
		require.Equal(rt, store.JobInflight, dj.Status)
		require.Equal(rt, j.attempts+1, dj.Attempts)
		require.NotNil(rt, dj.Lease)
		require.Equal(rt, j.channel, dj.Lease.Channel)
		m.unqueue(j)
		j.status, j.attempts, j.lease = store.JobInflight, dj.Attempts, dj.Lease.ID
		j.leases = append(j.leases, j.lease)
	}
	if m.suspended {
		return
	}
	for ch, q := range m.queues {
		if len(q) > 0 {
			require.GreaterOrEqual(rt, m.inUse(ch), m.maxValue, "job left queued on %s although a permit is free", ch)
		}
	}
}

// requireJob checks a returned job against the model.
func (m *jobModel) requireJob(rt *rapid.T, got store.Job) {
	j := m.jobs[got.ID]
	require.Equal(rt, j.status, got.Status, "job %s", got.ID)
	require.Equal(rt, j.attempts, got.Attempts, "job %s attempts", got.ID)
	require.Equal(rt, j.status == store.JobInflight, got.Lease != nil, "a lease exactly while inflight")
	if got.Lease != nil {
		require.Equal(rt, j.lease, got.Lease.ID)
	}
	require.Equal(rt, j.channel, got.Channel)
}

func (m *jobModel) enqueue(rt *rapid.T) {
	ch := rapid.SampledFrom(rapidJobChannels).Draw(rt, "channel")
	key := rapid.SampledFrom([]string{"", "", "k1", "k2"}).Draw(rt, "key")
	limit := rapid.SampledFrom([]int64{0, 3}).Draw(rt, "maxQueued")
	var delay time.Duration
	if rapid.IntRange(0, 4).Draw(rt, "delayed") == 0 {
		delay = time.Hour
	}
	got, created, err := m.st.EnqueueJob(m.ctx, store.EnqueueParams{
		Tenant: m.tenant, Semaphore: m.name, Channel: ch, Payload: []byte(`{}`), IdempotencyKey: key, MaxQueued: limit, Delay: delay,
	})
	if id, ok := m.keys[key]; ok && key != "" {
		require.NoError(rt, err)
		require.False(rt, created)
		require.Equal(rt, id, got.ID)
		m.settle(rt)
		m.requireJob(rt, got)
		return
	}
	queued := m.delayedCount("")
	for _, q := range m.queues {
		queued += int64(len(q))
	}
	if limit > 0 && queued >= limit {
		require.ErrorIs(rt, err, store.ErrQueueFull)
		m.settle(rt)
		return
	}
	require.NoError(rt, err)
	require.True(rt, created)
	j := &modelJob{id: got.ID, channel: ch, key: key}
	m.jobs[j.id] = j
	m.order = append(m.order, j.id)
	if key != "" {
		m.keys[key] = j.id
	}
	if delay > 0 {
		j.status, j.delayed = store.JobScheduled, true
		require.False(rt, got.RunAt.IsZero(), "a delayed job shows its runAt")
	} else {
		m.push(j, false)
	}
	m.settle(rt)
	m.requireJob(rt, got)
}

// delayedCount is the number of delayed jobs of channel ch ("" = all).
func (m *jobModel) delayedCount(ch string) int64 {
	var n int64
	for _, j := range m.jobs {
		if j.delayed && (ch == "" || j.channel == ch) {
			n++
		}
	}
	return n
}

// pickJob draws a known job, or nil.
func (m *jobModel) pickJob(rt *rapid.T) *modelJob {
	if len(m.order) == 0 {
		return nil
	}
	return m.jobs[rapid.SampledFrom(m.order).Draw(rt, "job")]
}

func (m *jobModel) transition(rt *rapid.T) {
	if len(m.gone) > 0 && rapid.IntRange(0, 7).Draw(rt, "pickGone") == 0 {
		id := rapid.SampledFrom(m.gone).Draw(rt, "goneJob")
		_, err := m.st.TransitionJob(m.ctx, store.TransitionParams{Tenant: m.tenant, JobID: id, Action: store.ActRequeue})
		require.ErrorIs(rt, err, store.ErrJobNotFound, "requeue of a job deleted by its retention")
		_, err = m.st.GetJob(m.ctx, m.tenant, id)
		require.ErrorIs(rt, err, store.ErrJobNotFound, "a job deleted by its retention")
		m.settle(rt)
		return
	}
	j := m.pickJob(rt)
	if j == nil {
		return
	}
	action := rapid.SampledFrom([]store.JobAction{
		store.ActRelease, store.ActFail, store.ActFailRetry, store.ActRetry, store.ActCancel, store.ActRequeue,
		store.ActDelivered, store.ActSuspend, store.ActReturn, store.ActHandOff,
	}).Draw(rt, "action")
	p := store.TransitionParams{Tenant: m.tenant, JobID: j.id, Action: action, Error: "e", Route: "https"}
	if action == store.ActHandOff {
		p.Child = &store.JobRef{Semaphore: "t", ID: store.NewJobID("t"), Hold: rapid.Bool().Draw(rt, "hold")}
	}
	var stale []string
	for _, l := range j.leases {
		if l != j.lease {
			stale = append(stale, l)
		}
	}
	switch lease := rapid.IntRange(0, 2).Draw(rt, "lease"); {
	case lease == 1: // the current lease, if any ("" = unconditional)
		p.LeaseID = j.lease
	case lease == 2 && len(stale) > 0:
		p.LeaseID = rapid.SampledFrom(stale).Draw(rt, "staleLease")
	}
	got, err := m.st.TransitionJob(m.ctx, p)
	if p.LeaseID != "" && p.LeaseID != j.lease {
		require.ErrorIs(rt, err, store.ErrStaleLease, "%s of a %s job with an earlier lease", action, j.status)
		m.settle(rt)
		return
	}

	inflight := j.status == store.JobInflight
	valid := inflight
	switch action {
	case store.ActCancel:
		valid = inflight || j.status == store.JobScheduled
	case store.ActRequeue:
		valid = j.status.Terminal()
	}
	if !valid {
		require.ErrorIs(rt, err, store.ErrInvalidState, "%s of a %s job", action, j.status)
		m.settle(rt)
		return
	}
	require.NoError(rt, err, "%s of a %s job", action, j.status)
	var finished []string
	finish := func(s store.JobStatus) {
		j.status, j.lease = s, ""
		finished = append(finished, j.id)
	}
	switch action {
	case store.ActRelease:
		finish(store.JobDone)
	case store.ActFail:
		finish(store.JobError)
	case store.ActRetry, store.ActFailRetry: // no retry backoff here: at once
		switch {
		case j.attempts < m.maxAttempts:
			m.push(j, false)
		case action == store.ActRetry:
			finish(store.JobTimeout)
		default:
			finish(store.JobError)
		}
	case store.ActReturn:
		j.attempts = max(j.attempts-1, 0)
		m.push(j, true)
	case store.ActCancel:
		if j.status == store.JobScheduled {
			m.unqueue(j)
		}
		finish(store.JobCancelled)
	case store.ActRequeue:
		j.attempts = 0
		m.push(j, false)
	case store.ActDelivered:
	case store.ActSuspend:
		j.attempts = max(j.attempts-1, 0)
		m.push(j, true)
		m.suspended = true
	case store.ActHandOff:
		if !p.Child.Hold {
			finish(store.JobDone)
		}
	}
	m.settle(rt, finished...)
	m.requireJob(rt, got) // also a job its retention deletes at once
	m.forgetEnded()
}

func (m *jobModel) releaseLease(rt *rapid.T) {
	j := m.pickJob(rt)
	if j == nil || j.status != store.JobInflight {
		return
	}
	_, err := m.st.Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: j.lease})
	require.NoError(rt, err)
	j.status, j.lease = store.JobDone, ""
	m.settle(rt, j.id)
	m.forgetEnded()
}

func (m *jobModel) acquire(rt *rapid.T) {
	ch := rapid.SampledFrom(rapidJobChannels).Draw(rt, "channel")
	l, err := m.st.Acquire(m.ctx, store.AcquireParams{
		Tenant: m.tenant, Semaphore: m.name, Channel: ch, Weight: 1, TTL: rapidLongTTL,
	})
	if m.inUse(ch) >= m.maxValue {
		require.ErrorIs(rt, err, store.ErrNoPermit)
	} else {
		require.NoError(rt, err)
		m.sync = append(m.sync, l)
	}
	m.settle(rt)
}

func (m *jobModel) releaseSync(rt *rapid.T) {
	if len(m.sync) == 0 {
		return
	}
	i := rapid.IntRange(0, len(m.sync)-1).Draw(rt, "sync")
	_, err := m.st.Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: m.sync[i].ID})
	require.NoError(rt, err)
	m.sync = slices.Delete(m.sync, i, i+1)
	m.settle(rt)
}

func (m *jobModel) setMaxValue(rt *rapid.T) {
	m.maxValue = rapid.Int64Range(1, 4).Draw(rt, "newMaxValue")
	m.putConfig(rt)
	m.settle(rt)
}

// setRetention changes the retention: a class set to 0 loses its
// terminal jobs at once.
func (m *jobModel) setRetention(rt *rapid.T) {
	m.retention = drawRetention(rt)
	m.putConfig(rt)
	m.settle(rt)
	m.forgetEnded()
}

func (m *jobModel) suspend(rt *rapid.T) {
	m.suspended = rapid.Bool().Draw(rt, "suspended")
	sem, err := m.st.SetSuspended(m.ctx, m.tenant, m.name, m.suspended)
	require.NoError(rt, err)
	require.Equal(rt, m.suspended, sem.Suspended)
	m.settle(rt)
}

func (m *jobModel) purge(rt *rapid.T) {
	status := rapid.SampledFrom([]store.JobStatus{
		store.JobScheduled, store.JobInflight, store.JobDone, store.JobError, store.JobTimeout, store.JobCancelled,
	}).Draw(rt, "status")
	ch := rapid.SampledFrom(append([]string{""}, rapidJobChannels...)).Draw(rt, "purgeChannel")
	n, err := m.st.PurgeJobs(m.ctx, store.PurgeJobsParams{Tenant: m.tenant, Semaphore: m.name, Status: status, Channel: ch})
	if status == store.JobInflight {
		require.ErrorIs(rt, err, store.ErrInvalidState)
		m.settle(rt)
		return
	}
	require.NoError(rt, err)
	want := 0
	m.order = slices.DeleteFunc(m.order, func(id string) bool {
		j := m.jobs[id]
		if j.status != status || (ch != "" && j.channel != ch) {
			return false
		}
		want++
		if j.status == store.JobScheduled {
			m.unqueue(j)
		}
		if j.key != "" {
			delete(m.keys, j.key)
		}
		delete(m.jobs, id)
		return true
	})
	require.Equal(rt, want, n, "purged %s jobs of channel %q", status, ch)
	m.settle(rt)
}

func (m *jobModel) dispatch(rt *rapid.T) {
	jobs, err := m.st.DispatchJobs(m.ctx, store.DispatchParams{Tenant: m.tenant, Semaphore: m.name})
	require.NoError(rt, err)
	require.Empty(rt, jobs, "every operation already dispatched what fits")
	m.settle(rt)
}

// check compares State and ListJobs with the model after every action.
func (m *jobModel) check(rt *rapid.T) {
	st, err := m.st.State(m.ctx, m.tenant, m.name)
	require.NoError(rt, err)
	m.settle(rt)
	var queued, inflight int64
	for _, ch := range rapidJobChannels {
		var q, in, use int64
		q = int64(len(m.queues[ch]))
		for _, j := range m.jobs {
			if j.channel == ch && j.status == store.JobInflight {
				in++
			}
		}
		for _, l := range m.sync {
			if l.Channel == ch {
				use++
			}
		}
		q += m.delayedCount(ch)
		cs := st.Channels[ch]
		require.Equal(rt, q, cs.Queued, "queued on %s", ch)
		require.Equal(rt, in, cs.Inflight, "inflight on %s", ch)
		require.Equal(rt, in+use, cs.InUse, "a job's permit counts in InUse (%s)", ch)
		queued, inflight = queued+q, inflight+in
	}
	require.Equal(rt, queued, st.Queued)
	require.Equal(rt, inflight, st.Inflight)
	require.Equal(rt, inflight+int64(len(m.sync)), st.InUse)

	jobs, next, err := m.st.ListJobs(m.ctx, store.ListJobsParams{Tenant: m.tenant, Semaphore: m.name, Limit: 1000})
	require.NoError(rt, err)
	require.Empty(rt, next)
	require.Equal(rt, append([]string{}, m.order...), jobIDs(jobs), "every job listed once, oldest first")
	for _, j := range jobs {
		m.requireJob(rt, j)
	}
}
