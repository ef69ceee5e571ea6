package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/semaphored/semaphored/store"
)

// Knobs of the randomised state-machine test.
const (
	// rapidShortTTL is the lifetime of short leases, waited out by the
	// "expire" action.
	rapidShortTTL = 60 * time.Millisecond
	// rapidLongTTL outlives every check.
	rapidLongTTL = time.Minute
	// clockMargin is the uncertainty allowed between the store's clock and
	// the test's: a lease is judged alive or expired only outside
	// expiresAt ± clockMargin.
	clockMargin = 25 * time.Millisecond
	// rapidWaitBudget bounds the total time RunRapid spends waiting for
	// short leases to expire, so its runtime stays modest whatever
	// -rapid.checks says. Once spent, "expire" only sweeps.
	rapidWaitBudget = 3 * time.Second
)

// RunRapid drives one store (a fresh tenant per check) with random
// acquires (short and long TTL, weights, channels, both scopes), extends,
// releases and "wait until short leases expired, then Sweep", and checks the
// answers against a model that asserts only what is certain: a lease is
// taken as alive or expired only when the test's clock is clearly before or
// after its returned expiresAt. The number of checks is rapid's
// (-rapid.checks, default 100).
func RunRapid(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	st := newStore(t)
	var seq atomic.Int64
	budget := &waitBudget{left: rapidWaitBudget}
	rapid.Check(t, func(rt *rapid.T) {
		m := &model{
			ctx:      t.Context(),
			st:       st,
			tenant:   fmt.Sprintf("rapid-%d", seq.Add(1)),
			name:     "s",
			maxValue: rapid.Int64Range(1, 4).Draw(rt, "maxValue"),
			scope:    rapid.SampledFrom([]string{store.ScopeTotal, store.ScopeChannel}).Draw(rt, "scope"),
			budget:   budget,
		}
		_, _, err := st.PutSemaphore(m.ctx, store.PutSemaphoreParams{
			Tenant: m.tenant, Name: m.name,
			Config: store.SemaphoreConfig{MaxValue: m.maxValue, MaxValueScope: m.scope, LeaseTimeout: rapidLongTTL},
		})
		require.NoError(rt, err)
		rt.Repeat(map[string]func(*rapid.T){
			"acquire": m.acquire,
			"release": m.release,
			"extend":  m.extend,
			"expire":  m.expire,
			"":        m.check,
		})
	})
}

// waitBudget is the time RunRapid may still spend waiting.
type waitBudget struct {
	mu   sync.Mutex
	left time.Duration
}

// take reserves d of waiting time; false once the budget is spent.
func (b *waitBudget) take(d time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d > b.left {
		b.left = 0
		return false
	}
	b.left -= d
	return true
}

// modelLease is a lease as the model knows it.
type modelLease struct {
	store.Lease
	gone bool // released, or reported not found: certainly not in the store
}

// aliveAt reports that the lease is certainly live at the store at every
// instant up to t (t taken after the call that is judged).
func (l *modelLease) aliveAt(t time.Time) bool {
	return !l.gone && t.Add(clockMargin).Before(l.ExpiresAt)
}

// expiredAt reports that the lease is certainly expired at the store at
// every instant from t on (t taken before the call that is judged).
func (l *modelLease) expiredAt(t time.Time) bool {
	return !l.gone && t.After(l.ExpiresAt.Add(clockMargin))
}

// possiblyLive reports that the store may still hold the lease at t.
func (l *modelLease) possiblyLive(t time.Time) bool {
	return !l.gone && !l.expiredAt(t)
}

// model is the state machine of RunRapid.
type model struct {
	ctx       context.Context
	st        store.Store
	tenant    string
	name      string
	maxValue  int64
	scope     string
	budget    *waitBudget
	leases    []*modelLease
	lastToken int64
}

var rapidChannels = []string{"a", "b"}

// domain returns the capacity domain of a channel.
func (m *model) domain(ch string) string {
	if m.scope == store.ScopeChannel {
		return ch
	}
	return ""
}

// weightIn sums the weights of the leases in ch's domain that pass keep.
func (m *model) weightIn(ch string, keep func(*modelLease) bool) int64 {
	var n int64
	for _, l := range m.leases {
		if m.domain(l.Channel) == m.domain(ch) && keep(l) {
			n += l.Weight
		}
	}
	return n
}

func (m *model) acquire(rt *rapid.T) {
	ch := rapid.SampledFrom(rapidChannels).Draw(rt, "channel")
	w := rapid.Int64Range(1, m.maxValue+1).Draw(rt, "weight")
	ttl := rapidLongTTL
	if rapid.Bool().Draw(rt, "short") {
		ttl = rapidShortTTL
	}
	before := time.Now()
	l, err := m.st.Acquire(m.ctx, store.AcquireParams{
		Tenant: m.tenant, Semaphore: m.name, Channel: ch, Weight: w, TTL: ttl,
	})
	after := time.Now()
	if w > m.maxValue {
		require.ErrorIs(rt, err, store.ErrWeightTooLarge)
		return
	}
	if err != nil {
		require.ErrorIs(rt, err, store.ErrNoPermit)
		possible := m.weightIn(ch, func(l *modelLease) bool { return l.possiblyLive(before) })
		require.Greater(rt, possible+w, m.maxValue, "refused although %d+%d fits in %d", possible, w, m.maxValue)
		return
	}
	certain := m.weightIn(ch, func(l *modelLease) bool { return l.aliveAt(after) })
	require.LessOrEqual(rt, certain+w, m.maxValue, "oversubscribed: %d live + %d granted", certain, w)
	require.Greater(rt, l.FencingToken, m.lastToken, "fencing token")
	require.Equal(rt, ch, l.Channel)
	require.Equal(rt, w, l.Weight)
	require.WithinRange(rt, l.ExpiresAt, before.Add(ttl-clockMargin), after.Add(ttl+clockMargin))
	m.lastToken = l.FencingToken
	m.leases = append(m.leases, &modelLease{Lease: l})
}

// pick draws one known lease (possibly gone), or nil when there is none.
func (m *model) pick(rt *rapid.T) *modelLease {
	if len(m.leases) == 0 {
		return nil
	}
	return m.leases[rapid.IntRange(0, len(m.leases)-1).Draw(rt, "lease")]
}

func (m *model) release(rt *rapid.T) {
	l := m.pick(rt)
	if l == nil {
		return
	}
	before := time.Now()
	_, err := m.st.Release(m.ctx, store.ReleaseParams{Tenant: m.tenant, LeaseID: l.ID})
	m.judge(rt, l, before, time.Now(), err, "release")
	l.gone = true
}

func (m *model) extend(rt *rapid.T) {
	l := m.pick(rt)
	if l == nil {
		return
	}
	before := time.Now()
	ext, err := m.st.Extend(m.ctx, store.ExtendParams{Tenant: m.tenant, LeaseID: l.ID, TTL: rapidLongTTL})
	after := time.Now()
	m.judge(rt, l, before, after, err, "extend")
	if err != nil {
		l.gone = true
		return
	}
	require.Equal(rt, l.FencingToken, ext.FencingToken)
	require.WithinRange(rt, ext.ExpiresAt, before.Add(rapidLongTTL-clockMargin), after.Add(rapidLongTTL+clockMargin))
	l.ExpiresAt = ext.ExpiresAt
}

// judge checks the outcome of a release or extend of l made between before
// and after.
func (m *model) judge(rt *rapid.T, l *modelLease, before, after time.Time, err error, op string) {
	switch {
	case l.gone:
		require.ErrorIs(rt, err, store.ErrLeaseNotFound, "%s of a released lease", op)
	case l.expiredAt(before):
		require.ErrorIs(rt, err, store.ErrLeaseNotFound, "%s of an expired lease", op)
	case l.aliveAt(after):
		require.NoError(rt, err, "%s of a live lease", op)
	default: // too close to expiresAt to know
		if err != nil {
			require.ErrorIs(rt, err, store.ErrLeaseNotFound, op)
		}
	}
}

// expire waits until every short lease is certainly expired (within the
// budget), sweeps, and then checks the usage exactly.
func (m *model) expire(rt *rapid.T) {
	var deadline time.Time
	for _, l := range m.leases {
		if !l.gone && l.ExpiresAt.Before(time.Now().Add(rapidLongTTL/2)) && l.ExpiresAt.After(deadline) {
			deadline = l.ExpiresAt
		}
	}
	exact := true
	if !deadline.IsZero() {
		deadline = deadline.Add(2 * clockMargin)
		exact = m.budget.take(max(time.Until(deadline), 0))
		if exact {
			waitUntil(deadline)
		}
	}
	_, err := m.st.Sweep(m.ctx)
	require.NoError(rt, err)
	if !exact {
		return
	}
	now := time.Now()
	for _, l := range m.leases {
		if l.expiredAt(now) {
			l.gone = true
		}
	}
	st, err := m.st.State(m.ctx, m.tenant, m.name)
	require.NoError(rt, err)
	var total int64
	for _, ch := range rapidChannels {
		var n int64
		for _, l := range m.leases {
			if !l.gone && l.Channel == ch {
				n += l.Weight
			}
		}
		total += n
		require.Equal(rt, n, st.Channels[ch].InUse, "channel %s in use after expiry", ch)
	}
	require.Equal(rt, total, st.InUse, "in use after expiry")
}

// check runs after every action: usage lies between what is certainly live
// and what may be live, and never exceeds maxValue.
func (m *model) check(rt *rapid.T) {
	before := time.Now()
	st, err := m.st.State(m.ctx, m.tenant, m.name)
	after := time.Now()
	require.NoError(rt, err)
	require.Zero(rt, st.Waiting)
	var certain, possible int64
	for _, l := range m.leases {
		if l.aliveAt(after) {
			certain += l.Weight
		}
		if l.possiblyLive(before) {
			possible += l.Weight
		}
	}
	require.GreaterOrEqual(rt, st.InUse, certain, "in use below the certainly live leases")
	require.LessOrEqual(rt, st.InUse, possible, "in use above the possibly live leases")
	if m.scope == store.ScopeTotal {
		require.LessOrEqual(rt, st.InUse, m.maxValue)
	}
	for ch, cs := range st.Channels {
		if m.scope == store.ScopeChannel {
			require.LessOrEqual(rt, cs.InUse, m.maxValue, "channel %s", ch)
		}
		require.Contains(rt, rapidChannels, ch)
	}
}
