package redisstore

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
)

// fcallCounter is a go-redis hook counting the FCALLs of the batch function
// and the operations they carried.
type fcallCounter struct {
	calls, ops atomic.Int64
}

func (h *fcallCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *fcallCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if strings.EqualFold(cmd.Name(), "fcall") && len(args) > 2 && args[1] == fnBatch {
			h.calls.Add(1)
			nkeys, _ := args[2].(int)
			for _, a := range args[3+nkeys+4:] { // after KEYS and the 4 common ARGV
				if a == "a" || a == "r" {
					h.ops.Add(1)
				}
			}
		}
		return next(ctx, cmd)
	}
}

func (h *fcallCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestRedis_BatchesConcurrentCalls: 32 goroutines acquiring and releasing
// on one semaphore share calls (fewer calls than operations), and every
// operation still gets its own outcome: each acquire a distinct lease and
// fencing token, each release its lease, nothing left in use.
func TestRedis_BatchesConcurrentCalls(t *testing.T) {
	t.Parallel()
	c := testredis.Client(t)
	h := &fcallCounter{}
	c.AddHook(h)
	s := newStoreOn(t, c, testredis.Prefix(t))
	put(t, s, "b", 1000, store.ScopeTotal)
	const workers, rounds = 32, 40
	var mu sync.Mutex
	tokens := map[int64]bool{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				l, err := s.Acquire(t.Context(), store.AcquireParams{Tenant: testTenant, Semaphore: "b", Weight: 1, TTL: time.Minute})
				if !assertNoError(t, err) {
					return
				}
				mu.Lock()
				dup := tokens[l.FencingToken]
				tokens[l.FencingToken] = true
				mu.Unlock()
				if dup {
					t.Errorf("fencing token %d granted twice", l.FencingToken)
					return
				}
				r, err := s.Release(t.Context(), store.ReleaseParams{Tenant: testTenant, LeaseID: l.ID})
				if !assertNoError(t, err) {
					return
				}
				if r.ID != l.ID {
					t.Errorf("release of %s returned %s", l.ID, r.ID)
					return
				}
			}
		})
	}
	wg.Wait()
	require.Len(t, tokens, workers*rounds)
	require.Equal(t, int64(2*workers*rounds), h.ops.Load())
	require.Less(t, h.calls.Load(), h.ops.Load(), "concurrent operations share calls")
	t.Logf("%d operations in %d calls", h.ops.Load(), h.calls.Load())
	st, err := s.State(t.Context(), testTenant, "b")
	require.NoError(t, err)
	require.Zero(t, st.InUse)
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

// TestRedis_GrantAfterFailedWaitIsReleased: a waiter whose wait ended
// without its lease (its give-up could not reach Redis) stays queued in
// Redis; a grant this Store's own call hands it later is released at once,
// not held until its ttl.
func TestRedis_GrantAfterFailedWaitIsReleased(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	ctx := t.Context()
	put(t, s, "h", 1, store.ScopeTotal)
	holder, err := acquire(t, s, "h", time.Minute, 0)
	require.NoError(t, err)
	id := store.NewLeaseID("h")
	r, err := s.batched(ctx, testTenant, "h", &batchOp{args: []any{"a", id, store.DefaultChannel, 1,
		ms(time.Minute), "", ms(time.Minute), s.nodeID, ms(waiterSlack), ""}})
	require.NoError(t, err)
	require.Equal(t, "wait", r.status)
	s.unregister(testTenant, id, true, time.Now().Add(time.Minute)) // as a failed Acquire does

	_, err = s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: holder.ID})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := s.State(ctx, testTenant, "h")
		return err == nil && st.InUse == 0 && st.Waiting == 0
	}, 5*time.Second, 10*time.Millisecond, "the orphaned grant is released")
	_, err = s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: id})
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
}
