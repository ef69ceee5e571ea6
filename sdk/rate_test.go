package sdk_test

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

const rateMessage = "rate limit of 1 per 1m0s reached: the next unit frees in 700ms"

// refusingServer is a fake HTTP API whose acquires of semaphore s are
// refused with the answers of refusals, in order, then granted; it
// records when each acquire arrived. Release answers the lease.
type refusingServer struct {
	mu       sync.Mutex
	refusals []refusal
	arrived  []time.Time
}

// refusal is one refused acquire: status, code and Retry-After ("" none).
type refusal struct {
	status     int
	code       string
	retryAfter string
}

func (s *refusingServer) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	lease := map[string]any{
		"id": "l1", "semaphore": "s", "channel": "default", "weight": 1, "fencingToken": 1,
		"acquiredAt": time.Now(), "expiresAt": time.Now().Add(time.Minute),
	}
	switch r.URL.Path {
	case "/v1/semaphores/s/acquire":
		s.mu.Lock()
		s.arrived = append(s.arrived, time.Now())
		var next *refusal
		if len(s.refusals) > 0 {
			next = &s.refusals[0]
			s.refusals = s.refusals[1:]
		}
		s.mu.Unlock()
		if next != nil {
			if next.retryAfter != "" {
				w.Header().Set("Retry-After", next.retryAfter)
			}
			w.WriteHeader(next.status)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": next.code, "message": rateMessage}})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"lease": lease})
	case "/v1/leases/l1/release", "/v1/leases/l1/extend":
		_ = json.NewEncoder(w).Encode(map[string]any{"lease": lease})
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no such route"}}`))
	}
}

func (s *refusingServer) arrivals() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.arrived...)
}

func newRefusingClient(t *testing.T, refusals ...refusal) (*sdk.Client, *refusingServer) {
	t.Helper()
	s := &refusingServer{refusals: refusals}
	c, err := sdk.New(fakeServer(t, s.serve), adminKey)
	require.NoError(t, err)
	return c, s
}

// TestAPIError_RetryAfter: the Retry-After of a 409 no_permit (a rate
// refusal) and of a 429 is in APIError.RetryAfter; none is 0.
func TestAPIError_RetryAfter(t *testing.T) {
	t.Parallel()
	c, _ := newRefusingClient(t,
		refusal{http.StatusConflict, "no_permit", "3"},
		refusal{http.StatusTooManyRequests, "rate_limited", "2"},
		refusal{http.StatusConflict, "no_permit", ""},
		refusal{http.StatusConflict, "no_permit", "soon"},
	)
	ctx := t.Context()
	var apiErr *sdk.APIError

	_, err := c.Acquire(ctx, "s", sdk.AcquireOptions{})
	require.True(t, sdk.IsNoPermit(err), "%v", err)
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusConflict, apiErr.StatusCode)
	require.Equal(t, 3*time.Second, apiErr.RetryAfter)
	require.Equal(t, rateMessage, apiErr.Message)

	_, err = c.Acquire(ctx, "s", sdk.AcquireOptions{})
	require.True(t, sdk.IsRateLimited(err), "%v", err)
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, 2*time.Second, apiErr.RetryAfter)

	for range 2 { // no header, an unparsable one
		_, err = c.Acquire(ctx, "s", sdk.AcquireOptions{})
		require.True(t, sdk.IsNoPermit(err), "%v", err)
		require.ErrorAs(t, err, &apiErr)
		require.Zero(t, apiErr.RetryAfter)
	}
}

// TestDo_RetryAfter: WithRetryAfter makes Do wait a refusal's RetryAfter
// out and acquire again; without it, or beyond its limit, or without a
// RetryAfter, the refusal is Do's error at once; ctx bounds the wait.
func TestDo_RetryAfter(t *testing.T) {
	t.Parallel()
	ran := func(n *int) func(context.Context, sdk.Lease) error {
		return func(context.Context, sdk.Lease) error { *n++; return nil }
	}

	t.Run("waits out 409 and 429", func(t *testing.T) {
		t.Parallel()
		c, s := newRefusingClient(t,
			refusal{http.StatusConflict, "no_permit", "1"},
			refusal{http.StatusTooManyRequests, "rate_limited", "1"},
		)
		n := 0
		require.NoError(t, c.Do(t.Context(), "s", ran(&n), sdk.WithWait(0), sdk.WithRetryAfter(0)))
		require.Equal(t, 1, n)
		at := s.arrivals()
		require.Len(t, at, 3, "two refusals, then the grant")
		for i := 1; i < len(at); i++ {
			require.GreaterOrEqual(t, at[i].Sub(at[i-1]), 950*time.Millisecond, "acquire %d came before the Retry-After passed", i)
			require.Less(t, at[i].Sub(at[i-1]), 5*time.Second)
		}
	})
	t.Run("off by default", func(t *testing.T) {
		t.Parallel()
		c, s := newRefusingClient(t, refusal{http.StatusConflict, "no_permit", "1"})
		n := 0
		err := c.Do(t.Context(), "s", ran(&n), sdk.WithWait(0))
		require.True(t, sdk.IsNoPermit(err), "%v", err)
		require.Zero(t, n)
		require.Len(t, s.arrivals(), 1)
	})
	t.Run("beyond the limit", func(t *testing.T) {
		t.Parallel()
		c, s := newRefusingClient(t,
			refusal{http.StatusConflict, "no_permit", "1"},
			refusal{http.StatusConflict, "no_permit", "1"},
		)
		n := 0
		start := time.Now()
		err := c.Do(t.Context(), "s", ran(&n), sdk.WithWait(0), sdk.WithRetryAfter(1500*time.Millisecond))
		require.True(t, sdk.IsNoPermit(err), "%v", err)
		require.Zero(t, n)
		require.Len(t, s.arrivals(), 2, "one wait of 1s fits in 1.5s, a second does not")
		require.Less(t, time.Since(start), 1900*time.Millisecond, "the second refusal is returned at once")
	})
	t.Run("no Retry-After", func(t *testing.T) {
		t.Parallel()
		c, s := newRefusingClient(t, refusal{http.StatusConflict, "no_permit", ""})
		n := 0
		err := c.Do(t.Context(), "s", ran(&n), sdk.WithWait(0), sdk.WithRetryAfter(0))
		require.True(t, sdk.IsNoPermit(err), "%v", err)
		require.Len(t, s.arrivals(), 1)
	})
	t.Run("ctx ends the wait", func(t *testing.T) {
		t.Parallel()
		c, s := newRefusingClient(t, refusal{http.StatusConflict, "no_permit", "30"})
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		n := 0
		start := time.Now()
		err := c.Do(ctx, "s", ran(&n), sdk.WithWait(0), sdk.WithRetryAfter(0))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.True(t, sdk.IsNoPermit(err), "the refusal is kept: %v", err)
		require.Less(t, time.Since(start), 5*time.Second)
		require.Zero(t, n)
		require.Len(t, s.arrivals(), 1)
	})
}

// TestWorker_RetryAfter: a rejected acquire's retryAfter is the worker's
// APIError.RetryAfter, and Worker.Do waits it out with WithRetryAfter.
func TestWorker_RetryAfter(t *testing.T) {
	t.Parallel()
	var (
		mu      sync.Mutex
		arrived []time.Time
	)
	url := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		send := func(v any) error {
			b, _ := json.Marshal(v)
			return conn.Write(ctx, websocket.MessageText, b)
		}
		if send(map[string]any{"type": "welcome", "session": "s1", "resumeToken": "r1", "heartbeat": "10s", "protocol": 1}) != nil {
			return
		}
		for {
			_, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			var f struct{ Type, ID string }
			_ = json.Unmarshal(data, &f)
			var out map[string]any
			switch f.Type {
			case "acquire":
				mu.Lock()
				arrived = append(arrived, time.Now())
				n := len(arrived)
				mu.Unlock()
				if n%2 == 1 { // every other acquire is refused for the rate
					out = map[string]any{"type": "rejected", "id": f.ID, "error": map[string]any{"code": "no_permit", "message": rateMessage, "retryAfter": 1}}
					break
				}
				now := time.Now()
				out = map[string]any{"type": "acquired", "id": f.ID, "lease": map[string]any{
					"id": "l1", "semaphore": "s", "channel": "default", "weight": 1, "fencingToken": 1,
					"acquiredAt": now, "expiresAt": now.Add(time.Minute),
				}}
			case "release":
				out = map[string]any{"type": "released", "id": f.ID, "lease": map[string]any{"id": "l1"}}
			case "ping":
				out = map[string]any{"type": "pong", "id": f.ID}
			default:
				out = map[string]any{"type": "error", "id": f.ID, "code": "invalid_request", "message": "not in this test"}
			}
			if send(out) != nil {
				return
			}
		}
	})
	w, _ := newWorker(t, url)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	_, err := w.Acquire(ctx, "s", sdk.AcquireOptions{})
	require.True(t, sdk.IsNoPermit(err), "%v", err)
	var apiErr *sdk.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, time.Second, apiErr.RetryAfter)
	require.Equal(t, rateMessage, apiErr.Message)
	l, err := w.Acquire(ctx, "s", sdk.AcquireOptions{})
	require.NoError(t, err)
	_, err = w.Release(ctx, l.ID)
	require.NoError(t, err)

	ran := false
	require.NoError(t, w.Do(ctx, "s", func(context.Context, sdk.Lease) error { ran = true; return nil },
		sdk.WithWait(0), sdk.WithRetryAfter(5*time.Second)))
	require.True(t, ran)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, arrived, 4)
	require.GreaterOrEqual(t, arrived[3].Sub(arrived[2]), 950*time.Millisecond, "Do acquired again before the retryAfter passed")
}

// TestClient_RateConfig: a semaphore's Rate round-trips; nil removes it.
func TestClient_RateConfig(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	rate := &sdk.RateLimit{Limit: 100, Period: time.Minute}
	s, err := c.PutSemaphore(ctx, "api", sdk.SemaphoreConfig{MaxValue: 10, Rate: rate})
	require.NoError(t, err)
	require.Equal(t, rate, s.Rate)
	s, err = c.GetSemaphore(ctx, "api")
	require.NoError(t, err)
	require.Equal(t, rate, s.Rate)
	require.NotNil(t, s.State)
	require.Zero(t, s.State.RateUsed)
	require.True(t, s.State.RateNextAt.IsZero())

	s, err = c.PutSemaphore(ctx, "api", sdk.SemaphoreConfig{MaxValue: 10})
	require.NoError(t, err)
	require.Nil(t, s.Rate, "the config is replaced: no Rate, no rate")

	_, err = c.PutSemaphore(ctx, "api", sdk.SemaphoreConfig{MaxValue: 10, Rate: &sdk.RateLimit{Limit: 0, Period: time.Minute}})
	require.ErrorIs(t, err, sdk.ErrInvalidConfig)
	var apiErr *sdk.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, "rate.limit must be between 1 and 1000000, got 0", apiErr.Message)
	_, err = c.PutSemaphore(ctx, "api", sdk.SemaphoreConfig{MaxValue: 10, Rate: &sdk.RateLimit{Limit: 5, Period: time.Millisecond}})
	require.ErrorIs(t, err, sdk.ErrInvalidConfig)
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, "rate.period must be between 1s and 24h0m0s, got 1ms", apiErr.Message)
}

// TestClient_RateRefusal: against the server (memory store, real clock),
// an acquire without wait beyond the rate is a no_permit with a
// RetryAfter; the state shows the window; Do with WithRetryAfter waits
// for room.
func TestClient_RateRefusal(t *testing.T) {
	_, c := setup(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err := c.PutSemaphore(ctx, "api", sdk.SemaphoreConfig{MaxValue: 10, Rate: &sdk.RateLimit{Limit: 1, Period: time.Minute}})
	require.NoError(t, err)
	l, err := c.Acquire(ctx, "api", sdk.AcquireOptions{})
	require.NoError(t, err)
	_, err = c.Acquire(ctx, "api", sdk.AcquireOptions{})
	require.True(t, sdk.IsNoPermit(err), "%v", err)
	var apiErr *sdk.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, time.Minute, apiErr.RetryAfter, "whole seconds, rounded up")
	require.Regexp(t, `^rate limit of 1 per 1m0s reached: the next unit frees in `, apiErr.Message)

	s, err := c.GetSemaphore(ctx, "api")
	require.NoError(t, err)
	require.EqualValues(t, 1, s.State.RateUsed)
	require.WithinDuration(t, l.AcquiredAt.Add(time.Minute), s.State.RateNextAt, time.Millisecond)

	// A window of 1s: the second Do waits out one Retry-After.
	_, err = c.PutSemaphore(ctx, "fast", sdk.SemaphoreConfig{MaxValue: 10, Rate: &sdk.RateLimit{Limit: 1, Period: time.Second}})
	require.NoError(t, err)
	var grants []time.Time
	for range 2 {
		require.NoError(t, c.Do(ctx, "fast", func(_ context.Context, l sdk.Lease) error {
			grants = append(grants, l.AcquiredAt)
			return nil
		}, sdk.WithWait(0), sdk.WithRetryAfter(10*time.Second)))
	}
	require.GreaterOrEqual(t, grants[1].Sub(grants[0]), time.Second, "at most 1 per second")
}

// TestClient_RetentionConfig: a semaphore's Retention round-trips (0
// included); nil takes the server's defaults, which a returned semaphore
// shows.
func TestClient_RetentionConfig(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	s, err := c.PutSemaphore(ctx, "r", sdk.SemaphoreConfig{MaxValue: 1})
	require.NoError(t, err)
	require.Equal(t, &sdk.Retention{Done: 24 * time.Hour, Failed: 7 * 24 * time.Hour}, s.Retention)
	ret := &sdk.Retention{Done: 0, Failed: 90 * time.Second}
	s, err = c.PutSemaphore(ctx, "r", sdk.SemaphoreConfig{MaxValue: 1, Retention: ret})
	require.NoError(t, err)
	require.Equal(t, ret, s.Retention)
	s, err = c.GetSemaphore(ctx, "r")
	require.NoError(t, err)
	require.Equal(t, ret, s.Retention)

	_, err = c.PutSemaphore(ctx, "r", sdk.SemaphoreConfig{MaxValue: 1, Retention: &sdk.Retention{Done: 31 * 24 * time.Hour}})
	require.ErrorIs(t, err, sdk.ErrInvalidConfig)
	var apiErr *sdk.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, "retention.done must be whole milliseconds between 0s and 720h0m0s (30 days), got 744h0m0s", apiErr.Message)
}
