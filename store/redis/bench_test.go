package redisstore

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
)

// BenchmarkAcquireRelease: parallel acquire+release pairs, each goroutine on
// its own semaphore channel of a scope-channel semaphore (no contention on
// permits, only on Redis).
func BenchmarkAcquireRelease(b *testing.B) {
	s := newStoreOn(b, testredis.Client(b), testredis.Prefix(b))
	ctx := context.Background()
	_, _, err := s.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "bench",
		Config: store.SemaphoreConfig{MaxValue: 1, MaxValueScope: store.ScopeChannel, LeaseTimeout: time.Minute}})
	require.NoError(b, err)
	var seq atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ch := fmt.Sprintf("c%d", seq.Add(1))
		for pb.Next() {
			l, err := s.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "bench", Channel: ch, TTL: time.Minute})
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := s.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: l.ID}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHandoff measures release → waiter grant latency: a waiter on
// Store A, the release on Store B; the time from the release call to the
// waiting Acquire's return. Reports p50 and p99.
func BenchmarkHandoff(b *testing.B) {
	prefix := testredis.Prefix(b)
	a := newStoreOn(b, testredis.Client(b), prefix)
	bs := newStoreOn(b, testredis.Client(b), prefix)
	ctx := context.Background()
	_, _, err := a.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: testTenant, Name: "h",
		Config: store.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Minute}})
	require.NoError(b, err)
	holder, err := bs.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "h", TTL: time.Minute})
	require.NoError(b, err)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		got := make(chan outcome, 1)
		go func() {
			l, err := a.Acquire(ctx, store.AcquireParams{Tenant: testTenant, Semaphore: "h", TTL: time.Minute, Wait: 30 * time.Second})
			got <- outcome{l, err, time.Now()}
		}()
		for {
			st, err := bs.State(ctx, testTenant, "h")
			require.NoError(b, err)
			if st.Waiting == 1 {
				break
			}
		}
		b.StartTimer()
		t0 := time.Now()
		_, err := bs.Release(ctx, store.ReleaseParams{Tenant: testTenant, LeaseID: holder.ID})
		require.NoError(b, err)
		o := <-got
		require.NoError(b, o.err)
		lat = append(lat, o.at.Sub(t0))
		holder = o.lease
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
