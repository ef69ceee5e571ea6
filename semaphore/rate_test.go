package semaphore_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
)

func TestValidateConfig_Rate(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]*store.RateLimit{
		``:                                    nil,
		`null`:                                nil,
		` null `:                              nil,
		`{"limit": 100, "period": "1m"}`:      {Limit: 100, Period: time.Minute},
		`{"limit": 1, "period": "1s"}`:        {Limit: 1, Period: time.Second},
		`{"limit": 1000000, "period": "24h"}`: {Limit: 1_000_000, Period: 24 * time.Hour},
		`{"period": "2m30s", "limit": 7}`:     {Limit: 7, Period: 150 * time.Second},
	} {
		cfg, _, err := semaphore.ValidateConfig("s", semaphore.ConfigInput{MaxValue: ptr[int64](10), Rate: json.RawMessage(in)}, routing.Options{})
		require.NoError(t, err, in)
		require.Equal(t, want, cfg.Rate, in)
		require.NoError(t, cfg.Check(), "a valid rate is one every store accepts")
	}

	for in, field := range map[string]string{
		`1`:     "rate",
		`"1/m"`: "rate",
		`[]`:    "rate",
		`false`: "rate",
		`{"limit": 3, "period": "1m", "x": null}`:  "rate",
		`{"limit": 3, "period": "1m", "Limit": 4}`: "rate",
		`{`:                                  "rate",
		`{}`:                                 "rate.limit",
		`{"period": "1m"}`:                   "rate.limit",
		`{"limit": 0, "period": "1m"}`:       "rate.limit",
		`{"limit": 1000001, "period": "1m"}`: "rate.limit",
		`{"limit": 2.5, "period": "1m"}`:     "rate.limit",
		`{"limit": "3", "period": "1m"}`:     "rate.limit",
		`{"limit": {}, "period": "1m"}`:      "rate.limit",
		`{"limit": 3}`:                       "rate.period",
		`{"limit": 3, "period": null}`:       "rate.period",
		`{"limit": 3, "period": 60}`:         "rate.period",
		`{"limit": 3, "period": "soon"}`:     "rate.period",
		`{"limit": 3, "period": "999ms"}`:    "rate.period",
		`{"limit": 3, "period": "24h1ns"}`:   "rate.period",
	} {
		_, _, err := semaphore.ValidateConfig("s", semaphore.ConfigInput{MaxValue: ptr[int64](10), Rate: json.RawMessage(in)}, routing.Options{})
		var ve *semaphore.ValidationError
		require.ErrorAs(t, err, &ve, in)
		require.Equal(t, semaphore.CodeInvalidConfig, ve.Code, in)
		require.Equal(t, field, ve.Field, in)
		require.True(t, strings.HasPrefix(ve.Message, field+" "), "%s: %q names %s", in, ve.Message, field)
	}
}

// limitedStore refuses every acquire without wait for the rate, NextAt =
// the clock's now + in, and reports rateUsed 3 in State; the rest is the
// memory store's.
type limitedStore struct {
	store.Store
	now func() time.Time
	in  time.Duration
}

func (s *limitedStore) Acquire(ctx context.Context, p store.AcquireParams) (store.Lease, error) {
	if p.Wait > 0 {
		return s.Store.Acquire(ctx, p)
	}
	sem, err := s.Store.GetSemaphore(ctx, p.Tenant, p.Semaphore)
	if err != nil {
		return store.Lease{}, err
	}
	e := &store.RateLimitedError{Limit: sem.Config.Rate.Limit, Period: sem.Config.Rate.Period, NextAt: s.now().Add(s.in), Wait: s.in}
	if sem.Config.MaxValueScope == store.ScopeChannel {
		e.Channel = p.Channel
	}
	return store.Lease{}, e
}

func (s *limitedStore) State(ctx context.Context, tenant, name string) (store.SemaphoreState, error) {
	st, err := s.Store.State(ctx, tenant, name)
	st.RateUsed = 3
	return st, err
}

type fakeSession struct{ used []string }

func (f *fakeSession) ID() string { return "sess-1" }
func (f *fakeSession) UseSemaphore(_ context.Context, name string) error {
	f.used = append(f.used, name)
	return nil
}

// TestService_RateLimited: a store's refusal for the rate becomes a
// *RateLimitedError that still is a store.ErrNoPermit, names the rate and
// the channel (scope channel), says how long until room frees by the
// service's clock (at most a period), and is counted.
func TestService_RateLimited(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	mem := memory.New(memory.Options{Now: clock.Now})
	st := &limitedStore{Store: mem, now: clock.Now, in: 2500 * time.Millisecond}
	reg := prometheus.NewRegistry()
	svc, err := semaphore.New(semaphore.Config{Store: st, Registerer: reg})
	require.NoError(t, err)
	t.Cleanup(func() {
		svc.Stop()
		_ = mem.Close()
	})
	ctx := t.Context()
	_, err = mem.CreateTenant(ctx, store.Tenant{ID: "t", Name: "t"})
	require.NoError(t, err)
	rate := json.RawMessage(`{"limit": 10, "period": "1m"}`)
	_, _, err = svc.PutSemaphore(ctx, "t", "total", semaphore.ConfigInput{MaxValue: ptr[int64](5), Rate: rate})
	require.NoError(t, err)
	_, _, err = svc.PutSemaphore(ctx, "t", "per-channel", semaphore.ConfigInput{MaxValue: ptr[int64](5), MaxValueScope: "channel", Rate: rate})
	require.NoError(t, err)

	_, err = svc.Acquire(ctx, "t", "total", semaphore.AcquireInput{Channel: "c1", Weight: ptr[int64](2)})
	require.ErrorIs(t, err, store.ErrNoPermit)
	var re *semaphore.RateLimitedError
	require.ErrorAs(t, err, &re)
	require.Equal(t, &store.RateLimit{Limit: 10, Period: time.Minute}, re.Rate)
	require.Empty(t, re.Channel, "scope total: one window for every channel")
	require.EqualValues(t, 2, re.Weight)
	require.Equal(t, clock.Now().Add(2500*time.Millisecond), re.NextAt)
	require.Equal(t, 2500*time.Millisecond, re.RetryAfter)
	require.EqualValues(t, 3, re.RetryAfterSeconds())
	require.Equal(t, "rate limit of 10 per 1m0s reached: room for weight 2 frees in 2.5s", re.Error())
	var se *store.RateLimitedError
	require.ErrorAs(t, err, &se, "the store's error is kept")

	sess := &fakeSession{}
	_, err = svc.AcquireOverSession(ctx, "t", "per-channel", semaphore.AcquireInput{Channel: "c1"}, sess)
	require.ErrorAs(t, err, &re)
	require.Equal(t, "c1", re.Channel)
	require.Equal(t, `rate limit of 10 per 1m0s reached in channel "c1": the next unit frees in 2.5s`, re.Error())
	require.Equal(t, []string{"per-channel"}, sess.used)

	st.in = 10 * time.Millisecond
	_, err = svc.Acquire(ctx, "t", "total", semaphore.AcquireInput{})
	require.ErrorAs(t, err, &re)
	require.EqualValues(t, 1, re.RetryAfterSeconds(), "at least 1")
	require.Equal(t, "rate limit of 10 per 1m0s reached: the next unit frees in 10ms", re.Error())

	// Other errors pass through unchanged.
	_, err = svc.Acquire(ctx, "t", "total", semaphore.AcquireInput{Wait: ptr(time.Second), Weight: ptr[int64](6)})
	require.ErrorIs(t, err, store.ErrWeightTooLarge)
	require.False(t, errors.As(err, &re))

	require.Equal(t, 3.0, metricValue(t, reg, "semaphored_rate_limited_total", ""))
	require.Equal(t, 3.0, metricValue(t, reg, "semaphored_acquire_total", "no_permit"), "also a no_permit")

	// The collector shows the rate of semaphores that have one.
	_, _, err = svc.PutSemaphore(ctx, "t", "none", semaphore.ConfigInput{MaxValue: ptr[int64](1)})
	require.NoError(t, err)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP semaphored_rate_limit rate.limit of the semaphore (per channel when scoped by channel); semaphores with a rate only.
# TYPE semaphored_rate_limit gauge
semaphored_rate_limit{semaphore="per-channel",tenant="t"} 10
semaphored_rate_limit{semaphore="total",tenant="t"} 10
# HELP semaphored_rate_used Weight units granted in the current rate window (with maxValueScope channel: the default channel's); semaphores with a rate only.
# TYPE semaphored_rate_used gauge
semaphored_rate_used{semaphore="per-channel",tenant="t"} 3
semaphored_rate_used{semaphore="total",tenant="t"} 3
`), "semaphored_rate_limit", "semaphored_rate_used"))
}
