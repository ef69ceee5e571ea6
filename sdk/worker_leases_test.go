package sdk_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

// TestWorker_ConcurrentLeasesOnOneConnection: 64 goroutines acquire and
// release through one Worker, that is one websocket connection, at once.
// All their acquires are in flight on it together (the server sees 64
// waiters; a worker that held a lock across a round trip would show one,
// and no holder could release while another acquire waited), every lease
// is granted and released, the server never has more than maxValue in use,
// and the connection is the same from start to end.
func TestWorker_ConcurrentLeasesOnOneConnection(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	// The server runs at most 64 waiting acquires of one connection at once
	// (more are refused as rate_limited), so 64 goroutines is its maximum.
	const goroutines, rounds, maxValue = 64, 5, 4
	_, err := c.PutSemaphore(ctx, "shared", sdk.SemaphoreConfig{MaxValue: maxValue})
	require.NoError(t, err)
	w, connects := newWorker(t, srv.URL)
	session := nextConnect(t, connects).Session

	// The test holds every permit until all the goroutines wait.
	var held []sdk.Lease
	for range maxValue {
		l, err := c.Acquire(ctx, "shared", sdk.AcquireOptions{})
		require.NoError(t, err)
		held = append(held, l)
	}

	var holding, peak atomic.Int64
	tokens := make(chan int64, goroutines*rounds)
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range rounds {
				l, err := w.Acquire(ctx, "shared", sdk.AcquireOptions{Wait: 30 * time.Second})
				if err != nil {
					errs <- fmt.Errorf("acquire: %w", err)
					return
				}
				n := holding.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				tokens <- l.FencingToken
				holding.Add(-1)
				if _, err := w.Release(ctx, l.ID); err != nil {
					errs <- fmt.Errorf("release %s: %w", l.ID, err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()

	require.Eventually(t, func() bool {
		s, err := c.GetSemaphore(ctx, "shared")
		return err == nil && s.State.Waiting == goroutines
	}, 10*time.Second, 5*time.Millisecond, "the worker's acquires are not all in flight at once")
	for _, l := range held {
		_, err := c.Release(ctx, l.ID)
		require.NoError(t, err)
	}

	// Until the goroutines are done, the server's count stays within
	// maxValue.
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(60 * time.Second)
	for running := true; running; {
		select {
		case <-done:
			running = false
		case err := <-errs:
			t.Fatal(err)
		case <-timeout:
			t.Fatalf("%d of %d leases granted in 60s", len(tokens), goroutines*rounds)
		case <-tick.C:
			s, err := c.GetSemaphore(ctx, "shared")
			require.NoError(t, err)
			require.LessOrEqual(t, s.State.InUse, int64(maxValue), "the server is oversubscribed")
		}
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	require.LessOrEqual(t, peak.Load(), int64(maxValue), "more holders at once than maxValue")
	require.Len(t, tokens, goroutines*rounds, "every acquire got a lease")
	close(tokens)
	seen := map[int64]bool{}
	for tok := range tokens {
		require.False(t, seen[tok], "fencing token %d granted twice", tok)
		seen[tok] = true
	}
	s, err := c.GetSemaphore(ctx, "shared")
	require.NoError(t, err)
	require.Zero(t, s.State.InUse, "every lease was released")
	require.Zero(t, s.State.Waiting)

	require.Equal(t, session, w.Session(), "one session throughout")
	select {
	case ev := <-connects:
		t.Fatalf("the worker connected again: %+v", ev)
	default:
	}
}

// TestWorker_AcquireGivenUpReturnsThePermit: an acquire whose caller gave
// up (its context ended) while the server still had it waiting is granted
// later; the worker gives that permit back at once instead of holding it
// until it expires.
func TestWorker_AcquireGivenUpReturnsThePermit(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "given-up", sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Hour})
	require.NoError(t, err)
	w, _ := newWorker(t, srv.URL)
	holder, err := c.Acquire(ctx, "given-up", sdk.AcquireOptions{})
	require.NoError(t, err)

	actx, cancel := context.WithCancel(ctx)
	got := make(chan error, 1)
	go func() {
		_, err := w.Acquire(actx, "given-up", sdk.AcquireOptions{Wait: 30 * time.Second})
		got <- err
	}()
	require.Eventually(t, func() bool {
		s, err := c.GetSemaphore(ctx, "given-up")
		return err == nil && s.State.Waiting == 1
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	select {
	case err := <-got:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("the acquire did not return when its context ended")
	}

	_, err = c.Release(ctx, holder.ID) // the server grants the abandoned acquire
	require.NoError(t, err)
	var l sdk.Lease
	require.Eventually(t, func() bool {
		l, err = w.Acquire(ctx, "given-up", sdk.AcquireOptions{})
		return err == nil
	}, 10*time.Second, 5*time.Millisecond, "the abandoned grant is still held")
	require.Greater(t, l.FencingToken, holder.FencingToken+1, "the abandoned acquire was granted in between")
	_, err = w.Release(ctx, l.ID)
	require.NoError(t, err)
}
