package redisstore

import (
	"context"
	"strings"
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
func startCluster(t *testing.T) []string {
	t.Helper()
	ctx := t.Context()
	var addrs []string
	var clients []*redis.Client
	for range 3 {
		srv := testredis.StartServer(t, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
			"--appendonly", "no")
		addrs = append(addrs, srv.Addr())
		c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { _ = c.Close() })
		clients = append(clients, c)
	}
	ranges := [][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}
	for i, c := range clients {
		require.NoError(t, c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", ranges[i][0], ranges[i][1]).Err())
		if i > 0 {
			host, port, _ := strings.Cut(addrs[0], ":")
			require.NoError(t, c.ClusterMeet(ctx, host, port).Err())
		}
	}
	require.Eventually(t, func() bool {
		for _, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "cluster did not form")
	return addrs
}

// TestCluster runs the conformance suite (and the two-node tests) on a
// three-master Redis Cluster through ClusterClient.
func TestCluster(t *testing.T) {
	t.Parallel()
	addrs := startCluster(t)
	newClient := func(t *testing.T) *redis.ClusterClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { _ = c.Close() })
		c.AddHook(&slotCheck{t: t})
		require.Eventually(t, func() bool { return c.Ping(context.Background()).Err() == nil }, 10*time.Second, 50*time.Millisecond)
		return c
	}
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
