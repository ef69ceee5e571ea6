package store_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// The delay of a retry is RetryPolicy.Delay: exponential, capped, jittered.
func TestRetryPolicyDelay(t *testing.T) {
	r := &store.RetryPolicy{Backoff: time.Second, MaxBackoff: 5 * time.Second}
	require.Zero(t, (*store.RetryPolicy)(nil).Delay(3, 0.5))
	require.Zero(t, r.Delay(0, 0.5))
	require.Equal(t, 500*time.Millisecond, r.Delay(1, 0.5))
	require.Equal(t, time.Second, r.Delay(2, 0.5))
	require.Equal(t, 2*time.Second, r.Delay(3, 0.5))
	require.Equal(t, 2500*time.Millisecond, r.Delay(4, 0.5), "capped at MaxBackoff")
	require.Equal(t, 2500*time.Millisecond, r.Delay(40, 0.5))
	require.Zero(t, r.Delay(5, 0))
}
