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

// RunWorkersRapid drives a semaphore with a worker route (jobs dispatched
// by the room of subscribed sessions, store.WorkerRoute) with random
// sessions that connect, subscribe (random channel, prefetch), unsubscribe,
// are lost, resumed and ended, random enqueues, sync acquires, and random
// ends of inflight jobs (release, fail with retry, return, retry), and
// checks after every step:
//
//   - never more than maxValue in use;
//   - every inflight job is bound to a session (no permit without a
//     worker), and no subscription holds more bound jobs than its
//     prefetch;
//   - no job waits in its queue while a permit is free and a connected
//     session's matching subscription has room: the store picks the room
//     right (the State read that checks it dispatches too, so whether each
//     operation dispatches at once is the Workers_* tests' to check).
func RunWorkersRapid(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	st := newStore(t)
	var seq atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		m := &workerModel{
			ctx: t.Context(), st: st,
			tenant:   fmt.Sprintf("workers-rapid-%d", seq.Add(1)),
			maxValue: rapid.Int64Range(1, 4).Draw(rt, "maxValue"),
			sessions: map[string]*modelSession{},
		}
		require.NoError(rt, st.Heartbeat(m.ctx, "n1", time.Hour))
		cfg := jobConfig(m.maxValue)
		cfg.Workers = &store.WorkerRoute{}
		_, _, err := st.PutSemaphore(m.ctx, store.PutSemaphoreParams{Tenant: m.tenant, Name: "w", Config: cfg})
		require.NoError(rt, err)
		rt.Repeat(map[string]func(*rapid.T){
			"connect":     m.connect,
			"subscribe":   m.subscribe,
			"unsubscribe": m.unsubscribe,
			"lose":        m.lose,
			"resume":      m.resume,
			"end":         m.end,
			"enqueue":     m.enqueue,
			"finish":      m.finish,
			"acquire":     m.acquire,
			"releaseSync": m.releaseSync,
			"":            m.check,
		})
	})
}

var rapidWorkerChannels = []string{"a", "b"}

type modelSession struct {
	id    string
	lost  bool
	ended bool
	subs  map[string]int // channel ("" = every channel) -> prefetch
	// over: jobs bound on a subscription when its prefetch was lowered
	// below them (a lower prefetch revokes nothing, as a lower maxValue);
	// the bound ceiling until they drop to the prefetch
	over map[string]int
}

type workerModel struct {
	ctx      context.Context
	st       store.Store
	tenant   string
	maxValue int64
	sessions map[string]*modelSession
	nsess    int
	sync     []store.Lease
}

func (m *workerModel) sp(id string) store.SessionParams {
	return store.SessionParams{Tenant: m.tenant, Session: id}
}

// pick returns a session that has not ended, or nil.
func (m *workerModel) pick(rt *rapid.T) *modelSession {
	var ids []string
	for id, s := range m.sessions {
		if !s.ended {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	return m.sessions[rapid.SampledFrom(ids).Draw(rt, "session")]
}

func (m *workerModel) connect(rt *rapid.T) {
	m.nsess++
	s := &modelSession{id: fmt.Sprintf("s%d", m.nsess), subs: map[string]int{}, over: map[string]int{}}
	require.NoError(rt, m.st.PutSession(m.ctx, store.Session{
		Tenant: m.tenant, ID: s.id, Node: "n1", ResumeTokenHash: "tok-" + s.id, Grace: time.Hour,
	}))
	m.sessions[s.id] = s
}

func (m *workerModel) subscribe(rt *rapid.T) {
	s := m.pick(rt)
	if s == nil {
		return
	}
	ch := rapid.SampledFrom(append([]string{""}, rapidWorkerChannels...)).Draw(rt, "channel")
	p := rapid.IntRange(1, 3).Draw(rt, "prefetch")
	n := 0
	for _, j := range m.inflight(rt) {
		if j.Worker != nil && j.Worker.Session == s.id && j.Worker.Channel == ch {
			n++
		}
	}
	if n > p {
		s.over[ch] = n
	}
	require.NoError(rt, m.st.Subscribe(m.ctx, store.SubscribeParams{
		Tenant: m.tenant, Session: s.id, Node: "n1",
		Subscription: store.Subscription{Semaphore: "w", Channel: ch, Prefetch: p},
	}))
	s.subs[ch] = p
}

func (m *workerModel) unsubscribe(rt *rapid.T) {
	s := m.pick(rt)
	if s == nil || len(s.subs) == 0 {
		return
	}
	var chans []string
	for ch := range s.subs {
		chans = append(chans, ch)
	}
	slices.Sort(chans)
	ch := rapid.SampledFrom(chans).Draw(rt, "unsubChannel")
	require.NoError(rt, m.st.Unsubscribe(m.ctx, m.sp(s.id), store.Subscription{Semaphore: "w", Channel: ch}))
	delete(s.subs, ch)
}

func (m *workerModel) lose(rt *rapid.T) {
	s := m.pick(rt)
	if s == nil {
		return
	}
	require.NoError(rt, m.st.LoseSession(m.ctx, m.sp(s.id), time.Hour))
	s.lost = true
}

func (m *workerModel) resume(rt *rapid.T) {
	s := m.pick(rt)
	if s == nil {
		return
	}
	_, err := m.st.ResumeSession(m.ctx, m.tenant, "tok-"+s.id, "n1")
	require.NoError(rt, err)
	s.lost = false
}

// end ends a session and, as the service does with onSessionLost
// release, retries the jobs it held.
func (m *workerModel) end(rt *rapid.T) {
	s := m.pick(rt)
	if s == nil {
		return
	}
	got, err := m.st.EndSession(m.ctx, m.sp(s.id))
	require.NoError(rt, err)
	s.ended = true
	for _, id := range got.Jobs {
		_, err := m.st.TransitionJob(m.ctx, store.TransitionParams{Tenant: m.tenant, JobID: id, Action: store.ActRetry})
		if err != nil {
			require.ErrorIs(rt, err, store.ErrInvalidState)
		}
	}
}

func (m *workerModel) enqueue(rt *rapid.T) {
	ch := rapid.SampledFrom(rapidWorkerChannels).Draw(rt, "jobChannel")
	_, _, err := m.st.EnqueueJob(m.ctx, store.EnqueueParams{Tenant: m.tenant, Semaphore: "w", Channel: ch, Payload: []byte(`1`)})
	require.NoError(rt, err)
}

func (m *workerModel) inflight(rt *rapid.T) []store.Job {
	jobs, _, err := m.st.ListJobs(m.ctx, store.ListJobsParams{Tenant: m.tenant, Semaphore: "w", Status: store.JobInflight, Limit: 1000})
	require.NoError(rt, err)
	return jobs
}

func (m *workerModel) finish(rt *rapid.T) {
	jobs := m.inflight(rt)
	if len(jobs) == 0 {
		return
	}
	j := jobs[rapid.IntRange(0, len(jobs)-1).Draw(rt, "job")]
	act := rapid.SampledFrom([]store.JobAction{store.ActRelease, store.ActFailRetry, store.ActReturn, store.ActRetry}).Draw(rt, "action")
	_, err := m.st.TransitionJob(m.ctx, store.TransitionParams{Tenant: m.tenant, JobID: j.ID, Action: act, LeaseID: j.Lease.ID})
	require.NoError(rt, err)
}

func (m *workerModel) acquire(rt *rapid.T) {
	ch := rapid.SampledFrom(rapidWorkerChannels).Draw(rt, "syncChannel")
	l, err := m.st.Acquire(m.ctx, store.AcquireParams{Tenant: m.tenant, Semaphore: "w", Channel: ch, Weight: 1, TTL: time.Hour})
	if err == nil {
		m.sync = append(m.sync, l)
		return
	}
	require.ErrorIs(rt, err, store.ErrNoPermit)
}

func (m *workerModel) releaseSync(rt *rapid.T) {
	if len(m.sync) == 0 {
		return
	}
	i := rapid.IntRange(0, len(m.sync)-1).Draw(rt, "sync")
	_, err := m.st.Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: m.sync[i].ID})
	require.NoError(rt, err)
	m.sync = slices.Delete(m.sync, i, i+1)
}

// subFor is the subscription of s a job of channel ch counts on: its own
// channel's, else its every-channel one ("", false when none).
func (s *modelSession) subFor(ch string) (string, bool) {
	if _, ok := s.subs[ch]; ok {
		return ch, true
	}
	_, ok := s.subs[""]
	return "", ok
}

func (m *workerModel) check(rt *rapid.T) {
	state, err := m.st.State(m.ctx, m.tenant, "w")
	require.NoError(rt, err)
	require.LessOrEqual(rt, state.InUse, m.maxValue, "never more than maxValue")
	bound := map[[2]string]int{} // (session, subscription channel) -> inflight jobs
	for _, j := range m.inflight(rt) {
		require.NotNil(rt, j.Worker, "inflight job %s holds a permit without a worker", j.ID)
		_, known := m.sessions[j.Worker.Session]
		require.True(rt, known, "job %s bound to an unknown session %s", j.ID, j.Worker.Session)
		bound[[2]string{j.Worker.Session, j.Worker.Channel}]++
	}
	room := map[string]bool{} // job channel -> a connected subscription has room
	for _, s := range m.sessions {
		for ch, p := range s.subs {
			n := bound[[2]string{s.id, ch}]
			if n <= p {
				delete(s.over, ch)
			}
			if !s.ended && !s.lost {
				require.LessOrEqual(rt, n, max(p, s.over[ch]), "session %s's subscription to %q over its prefetch", s.id, ch)
			}
		}
		if s.ended || s.lost {
			continue
		}
		for _, ch := range rapidWorkerChannels {
			if sub, ok := s.subFor(ch); ok && bound[[2]string{s.id, sub}] < s.subs[sub] {
				room[ch] = true
			}
		}
	}
	if state.InUse < m.maxValue {
		for _, ch := range rapidWorkerChannels {
			if room[ch] {
				require.Zero(rt, state.Channels[ch].Queued, "jobs of %s wait though a permit is free and a worker has room", ch)
			}
		}
	}
}
