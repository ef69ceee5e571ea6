package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/storetest"
)

// startCluster starts a three-master Redis Cluster (no replicas) and returns
// its node addresses.
func startCluster(t *testing.T) []string { return testredis.StartCluster(t) }

// TestCluster runs the conformance suite (and the two-node tests) on a
// three-master Redis Cluster through ClusterClient.
func TestCluster(t *testing.T) {
	t.Parallel()
	addrs := startCluster(t)
	newClient := func(t *testing.T) *redis.ClusterClient { return clusterClient(t, addrs) }
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			return newStoreOn(t, newClient(t), testredis.Prefix(t))
		})
	})
	t.Run("Shared", func(t *testing.T) {
		storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
			prefix := testredis.Prefix(t)
			return newStoreOn(t, newClient(t), prefix), newStoreOn(t, newClient(t), prefix)
		})
	})
}

// TestClusterRateRapid runs the randomised rate-window state machine on a
// three-master Redis Cluster.
func TestClusterRateRapid(t *testing.T) {
	t.Parallel()
	addrs := startCluster(t)
	storetest.RunRateRapid(t, func(t *testing.T) store.Store {
		return newStoreOn(t, clusterClient(t, addrs), testredis.Prefix(t))
	})
}

// TestClusterSessionsRapid runs the randomised session state machine on a
// three-master Redis Cluster, through two Stores acting as two nodes (each
// operation goes through either).
func TestClusterSessionsRapid(t *testing.T) {
	t.Parallel()
	addrs := startCluster(t)
	storetest.RunSessionsRapidShared(t, func(t *testing.T) (store.Store, store.Store) {
		prefix := testredis.Prefix(t)
		return newStoreOn(t, clusterClient(t, addrs), prefix), newStoreOn(t, clusterClient(t, addrs), prefix)
	})
}

// clusterClient returns a client of the cluster at addrs that fails the
// test when a script names keys of two hash slots, closed at cleanup.
func clusterClient(t *testing.T, addrs []string) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = c.Close() })
	c.AddHook(&slotCheck{t: t})
	require.Eventually(t, func() bool { return c.Ping(context.Background()).Err() == nil }, 10*time.Second, 50*time.Millisecond)
	return c
}
