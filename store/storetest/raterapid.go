package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/store"
)

// Knobs of the randomised rate test.
const (
	// rateRapidWaitBudget bounds the total time RunRateRapid spends in its
	// "sleep" action (letting windows slide and timers fire), whatever
	// -rapid.checks says.
	rateRapidWaitBudget = 2 * time.Second
	// rateRapidResults bounds the background acquires of one check.
	rateRapidResults = 256
)

// RunRateRapid drives one store (a fresh tenant per check) with random
// acquires with and without a wait (waiters run in the background and are
// granted by the store's rate timer), releases, changes of the rate limit
// (raised and lowered) and pauses that let the window slide, on a
// semaphore with a random maxValue, scope and rate. After every step it
// checks, from the AcquiredAt of every grant seen so far, that no window
// of any domain ever held more than the limit in force (at a grant's
// instant, the grants of its domain in the period before sum to at most
// the limit); that an acquire refused by the rate names a NextAt no
// earlier than the grants seen allow; and that State's RateUsed and
// RateNextAt lie between what is certainly and what may be in the window.
// Grants a cancelled waiter gave back are not seen, so the checks use a
// subset of the grants, which can only hide a violation, never invent one.
// The number of checks is rapid's (-rapid.checks, default 100).
func RunRateRapid(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	st := newStore(t)
	var seq atomic.Int64
	budget := &waitBudget{left: rateRapidWaitBudget}
	rapid.Check(t, func(rt *rapid.T) {
		waitCtx, cancel := context.WithCancel(t.Context())
		m := &rateModel{
			ctx:      t.Context(),
			waitCtx:  waitCtx,
			st:       st,
			tenant:   fmt.Sprintf("rate-rapid-%d", seq.Add(1)),
			name:     "s",
			maxValue: rapid.Int64Range(1, 8).Draw(rt, "maxValue"),
			scope:    rapid.SampledFrom([]string{store.ScopeTotal, store.ScopeChannel}).Draw(rt, "scope"),
			period:   rapid.SampledFrom([]time.Duration{40 * time.Millisecond, 100 * time.Millisecond}).Draw(rt, "period"),
			budget:   budget,
			results:  make(chan result, rateRapidResults),
		}
		defer func() { // also when a step fails: no waiter outlives the check
			cancel()
			m.wg.Wait()
		}()
		m.setLimit(rt)
		rt.Repeat(map[string]func(*rapid.T){
			"acquire":  m.acquire,
			"wait":     m.acquireWait,
			"release":  m.release,
			"setLimit": m.setLimit,
			"sleep":    m.sleep,
			"":         m.check,
		})
		cancel()
		m.wg.Wait()
		m.check(rt) // every background acquire has answered
	})
}

// limitSpan is a rate limit and when it may have been in force (test
// clock): from the start of the put that set it to the end of the put
// that replaced it (zero: open).
type limitSpan struct {
	limit    int64
	from, to time.Time
}

// rateModel is the state machine of RunRateRapid.
type rateModel struct {
	ctx      context.Context
	waitCtx  context.Context // of background acquires, cancelled at the end of a check
	st       store.Store
	tenant   string
	name     string
	maxValue int64
	scope    string
	period   time.Duration
	budget   *waitBudget

	limits  []limitSpan // in order; the last is in force now
	grants  []grantSeen // every grant seen
	held    []store.Lease
	results chan result // answers of background acquires
	started int         // background acquires started
	wg      sync.WaitGroup
}

func (m *rateModel) limit() int64 { return m.limits[len(m.limits)-1].limit }

// maxLimit is the largest limit the semaphore ever had.
func (m *rateModel) maxLimit() int64 {
	var n int64
	for _, s := range m.limits {
		n = max(n, s.limit)
	}
	return n
}

// limitAt returns the largest limit that may have been in force at t
// (store clock, clockMargin either side).
func (m *rateModel) limitAt(t time.Time) int64 {
	var n int64
	for _, s := range m.limits {
		if (s.from.IsZero() || !t.Before(s.from.Add(-clockMargin))) && (s.to.IsZero() || !t.After(s.to.Add(clockMargin))) {
			n = max(n, s.limit)
		}
	}
	return n
}

func (m *rateModel) domain(ch string) string { return scopeDomain(m.scope)(ch) }

// inDomain returns the grants seen in ch's domain.
func (m *rateModel) inDomain(ch string) []grantSeen {
	var out []grantSeen
	for _, g := range m.grants {
		if m.domain(g.channel) == m.domain(ch) {
			out = append(out, g)
		}
	}
	return out
}

func (m *rateModel) params(rt *rapid.T, maxWeight int64) store.AcquireParams {
	return store.AcquireParams{
		Tenant: m.tenant, Semaphore: m.name, TTL: rapidLongTTL,
		Channel: rapid.SampledFrom(rapidChannels).Draw(rt, "channel"),
		Weight:  rapid.Int64Range(1, maxWeight).Draw(rt, "weight"),
	}
}

// setLimit puts the semaphore with a new rate limit (raised or lowered).
func (m *rateModel) setLimit(rt *rapid.T) {
	limit := rapid.Int64Range(1, 5).Draw(rt, "limit")
	before := time.Now()
	_, _, err := m.st.PutSemaphore(m.ctx, store.PutSemaphoreParams{
		Tenant: m.tenant, Name: m.name,
		Config: store.SemaphoreConfig{
			MaxValue: m.maxValue, MaxValueScope: m.scope, LeaseTimeout: rapidLongTTL,
			Rate: &store.RateLimit{Limit: limit, Period: m.period},
		},
	})
	require.NoError(rt, err)
	span := limitSpan{limit: limit}
	if len(m.limits) > 0 {
		span.from = before
		m.limits[len(m.limits)-1].to = time.Now()
	}
	m.limits = append(m.limits, span)
}

// acquire tries at once.
func (m *rateModel) acquire(rt *rapid.T) {
	p := m.params(rt, max(m.maxValue, m.limit())+1)
	m.drain(rt)
	prior := m.inDomain(p.Channel) // made before the call (later ones would move the slot)
	before := time.Now()
	l, err := m.st.Acquire(m.ctx, p)
	after := time.Now()
	if p.Weight > m.maxValue || p.Weight > m.limit() {
		require.ErrorIs(rt, err, store.ErrWeightTooLarge, "weight %d, maxValue %d, limit %d", p.Weight, m.maxValue, m.limit())
		return
	}
	if err == nil {
		require.WithinRange(rt, l.AcquiredAt, before.Add(-clockMargin), after.Add(clockMargin))
		m.grants = append(m.grants, seen(l))
		m.held = append(m.held, l)
		return
	}
	require.ErrorIs(rt, err, store.ErrNoPermit)
	var rl *store.RateLimitedError
	if errors.As(err, &rl) {
		slot := rateSlot(prior, p.Weight, m.limit(), m.period)
		require.False(rt, rl.NextAt.Before(before.Add(-clockMargin)), "NextAt %v in the past", rl.NextAt)
		require.False(rt, rl.NextAt.Before(slot), "NextAt %v before the slot %v the grants seen allow (weight %d, limit %d): %v",
			rl.NextAt, slot, p.Weight, m.limit(), prior)
		require.False(rt, rl.NextAt.After(after.Add(m.period+clockMargin)), "NextAt %v beyond a period", rl.NextAt)
	}
}

// acquireWait starts a waiting acquire in the background.
func (m *rateModel) acquireWait(rt *rapid.T) {
	if m.started == rateRapidResults {
		return
	}
	p := m.params(rt, min(m.maxValue, m.limit()))
	p.Wait = time.Duration(rapid.IntRange(1, 4).Draw(rt, "periods")) * m.period
	m.started++
	m.wg.Go(func() {
		l, err := m.st.Acquire(m.waitCtx, p)
		m.results <- result{lease: l, err: err}
	})
}

// drain takes in the answers of background acquires that came.
func (m *rateModel) drain(rt *rapid.T) {
	for {
		select {
		case r := <-m.results:
			switch {
			case r.err == nil:
				m.grants = append(m.grants, seen(r.lease))
				m.held = append(m.held, r.lease)
			case errors.Is(r.err, store.ErrNoPermit), errors.Is(r.err, context.Canceled),
				errors.Is(r.err, store.ErrWeightTooLarge): // the limit was lowered below its weight
			default:
				require.NoError(rt, r.err, "waiting acquire")
			}
		default:
			return
		}
	}
}

// release gives back one held lease.
func (m *rateModel) release(rt *rapid.T) {
	m.drain(rt)
	if len(m.held) == 0 {
		return
	}
	i := rapid.IntRange(0, len(m.held)-1).Draw(rt, "lease")
	_, err := m.st.Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: m.held[i].ID})
	require.NoError(rt, err)
	m.held = append(m.held[:i], m.held[i+1:]...)
}

// sleep lets the window slide (and timers fire), within the budget.
func (m *rateModel) sleep(rt *rapid.T) {
	d := time.Duration(rapid.Int64Range(0, int64(m.period)).Draw(rt, "sleep"))
	if m.budget.take(d) {
		waitUntil(time.Now().Add(d))
	}
}

// check runs after every step.
func (m *rateModel) check(rt *rapid.T) {
	m.drain(rt)
	require.Empty(rt, windowViolation(m.grants, m.domain, m.limitAt, m.period))

	before := time.Now()
	st, err := m.st.State(m.ctx, m.tenant, m.name)
	after := time.Now()
	require.NoError(rt, err)
	chans := map[string]store.ChannelState{store.DefaultChannel: st.ChannelState}
	for _, ch := range rapidChannels {
		if cs, ok := st.Channels[ch]; ok {
			chans[ch] = cs
		}
	}
	for ch, cs := range chans {
		var certain int64 // seen grants surely still in the window
		for _, g := range m.inDomain(ch) {
			if g.at.Add(m.period).After(after.Add(clockMargin)) {
				certain += g.weight
			}
		}
		require.GreaterOrEqual(rt, cs.RateUsed, certain, "channel %s: rateUsed below the grants surely in the window", ch)
		require.LessOrEqual(rt, cs.RateUsed, m.maxLimit(), "channel %s: rateUsed above every limit", ch)
		if cs.RateUsed == 0 {
			require.True(rt, cs.RateNextAt.IsZero(), "channel %s: rateNextAt %v of an empty window", ch, cs.RateNextAt)
			continue
		}
		require.WithinRange(rt, cs.RateNextAt, before.Add(-clockMargin), after.Add(m.period+clockMargin),
			"channel %s: rateNextAt", ch)
	}
}
