package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// Rate limits end to end (SPEC §2.6): three instances on one Redis feed a
// webhook, a websocket worker and sync acquirers from rate-limited
// semaphores. Grant times (the leases' acquiredAt, by Redis' clock) never
// put more than the limit in any window, nothing is lost, and the grants
// keep up with the rate (the timers fire; nothing waits for a poll).
const (
	rateLimit  = 10
	ratePeriod = time.Second
	rateJobs   = 30 // three windows' worth
)

// rateMaxInWindow is the most grants of times (sorted) in any window
// [t, t+period).
func rateMaxInWindow(times []time.Time, period time.Duration) int {
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= period {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func TestRateMaxInWindow(t *testing.T) {
	base := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, base.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	require.Equal(t, 2, rateMaxInWindow(at(0, 999, 1000, 1999), time.Second))
	require.Equal(t, 3, rateMaxInWindow(at(0, 500, 999, 1000), time.Second))
	require.Equal(t, 1, rateMaxInWindow(at(0, 1000, 2000), time.Second))
}

func TestRate_ThreeInstances(t *testing.T) {
	t.Parallel()
	url := testredis.URL(t)
	prefix := "e2e-rate-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	args := []string{"--redis-url", url, "--redis-prefix", prefix, "--admin-key", adminKey, "--webhook-allow-private"}
	insts := []*instance{start(t, "A", args), start(t, "B", args), start(t, "C", args)}
	api := newAPI(t)
	ctx := t.Context()
	rate := map[string]any{"limit": rateLimit, "period": ratePeriod.String()}

	// A webhook route (releaseOnSuccess): the receiver records each job's
	// grant time from the delivery.
	var (
		mu       sync.Mutex
		hookAt   = map[string]time.Time{}
		hookDups int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var d struct {
			ID    string `json:"id"`
			Lease struct {
				AcquiredAt time.Time `json:"acquiredAt"`
			} `json:"lease"`
		}
		if err := json.NewDecoder(r.Body).Decode(&d); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		if _, ok := hookAt[d.ID]; ok {
			hookDups++
		}
		hookAt[d.ID] = d.Lease.AcquiredAt
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	_, err := api.do(ctx, http.MethodPut, insts[0].base+"/v1/semaphores/rated-hook", map[string]any{
		"maxValue": 100, "rate": rate,
		"routes": []any{map[string]any{"type": "https", "url": srv.URL + "/hook", "releaseOnSuccess": true}},
	}, nil)
	require.NoError(t, err)

	// A websocket worker on B, fed by its own semaphore.
	_, err = api.do(ctx, http.MethodPut, insts[0].base+"/v1/semaphores/rated-ws", map[string]any{"maxValue": 100, "rate": rate}, nil)
	require.NoError(t, err)
	var wsAt sync.Map // job id -> grant time
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	worker, err := sdk.NewWorker(insts[1].base, adminKey, sdk.WithWorkerHTTPClient(&http.Client{Transport: tr}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = worker.Close() })
	require.NoError(t, worker.Subscribe(ctx, "rated-ws", "", 50, func(_ context.Context, j sdk.Job) error {
		wsAt.Store(j.ID, j.Lease.AcquiredAt)
		return nil
	}))

	// Jobs enqueued through all three instances at once.
	accepted := map[string]map[string]bool{"rated-hook": {}, "rated-ws": {}}
	for _, sem := range []string{"rated-hook", "rated-ws"} {
		for i := range rateJobs {
			var out struct {
				Job struct {
					ID string `json:"id"`
				} `json:"job"`
			}
			_, err := api.do(ctx, http.MethodPost, insts[i%3].base+"/v1/semaphores/"+sem+"/jobs", map[string]any{"payload": i}, &out)
			require.NoError(t, err)
			accepted[sem][out.Job.ID] = true
		}
	}

	// Sync acquirers on all three instances, waiting, for two periods.
	_, err = api.do(ctx, http.MethodPut, insts[0].base+"/v1/semaphores/rated-sync", map[string]any{"maxValue": 100, "rate": rate}, nil)
	require.NoError(t, err)
	var (
		syncMu sync.Mutex
		syncAt []time.Time
		wg     sync.WaitGroup
	)
	until := time.Now().Add(2 * ratePeriod)
	for i := range 9 {
		c := insts[i%3].client(t, adminKey)
		wg.Go(func() {
			for time.Now().Before(until) {
				l, err := c.Acquire(ctx, "rated-sync", sdk.AcquireOptions{TTL: time.Minute, Wait: 3 * time.Second})
				if err != nil {
					t.Errorf("acquire: %v", err)
					return
				}
				syncMu.Lock()
				syncAt = append(syncAt, l.AcquiredAt)
				syncMu.Unlock()
				if _, err := c.Release(ctx, l.ID); err != nil {
					t.Errorf("release: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()

	// Every job delivered once (webhook) or handled (websocket), by a
	// bounded deadline: 30 jobs at 10 per second take about 3 s.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		wsAt.Range(func(_, _ any) bool { n++; return true })
		return len(hookAt) == rateJobs && n == rateJobs
	}, 20*time.Second, 20*time.Millisecond, "every job delivered")

	check := func(what string, times []time.Time, minCount int) {
		t.Helper()
		most := rateMaxInWindow(times, ratePeriod)
		t.Logf("%s: %d grants, at most %d in any %v window (limit %d)", what, len(times), most, ratePeriod, rateLimit)
		require.LessOrEqual(t, most, rateLimit, "%s: a window holds more than the limit", what)
		require.GreaterOrEqual(t, len(times), minCount, "%s: grants keep up with the rate", what)
	}
	var hookTimes []time.Time
	mu.Lock()
	for id, at := range hookAt {
		require.True(t, accepted["rated-hook"][id], "delivered job %s was accepted", id)
		hookTimes = append(hookTimes, at)
	}
	require.Zero(t, hookDups, "no job delivered twice")
	mu.Unlock()
	check("webhook", hookTimes, rateJobs)
	var wsTimes []time.Time
	wsAt.Range(func(k, v any) bool {
		require.True(t, accepted["rated-ws"][k.(string)], "handled job %v was accepted", k)
		wsTimes = append(wsTimes, v.(time.Time))
		return true
	})
	check("websocket", wsTimes, rateJobs)
	// In two periods at 10 per period, allowing for the start: at least 20.
	check("sync, 3 instances", syncAt, 2*rateLimit)

	// The jobs ended done.
	for sem, ids := range accepted {
		for id := range ids {
			var j struct {
				Job struct {
					Status string `json:"status"`
				} `json:"job"`
			}
			require.Eventually(t, func() bool {
				_, err := api.do(ctx, http.MethodGet, insts[2].base+"/v1/jobs/"+id, nil, &j)
				return err == nil && j.Job.Status == "done"
			}, 5*time.Second, 20*time.Millisecond, fmt.Sprintf("%s job %s done", sem, id))
		}
	}
}
