package redisstore

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testredis.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newTestStore returns a Store on the shared test Redis with a unique
// prefix, with every script's keys checked to share one hash slot, closed
// at cleanup.
func newTestStore(t testing.TB) *Store {
	t.Helper()
	c := testredis.Client(t)
	c.AddHook(&slotCheck{t: t})
	return newStoreOn(t, c, testredis.Prefix(t))
}

func newStoreOn(t testing.TB, c redis.UniversalClient, prefix string) *Store {
	t.Helper()
	s, err := New(c, Options{Prefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return newTestStore(t) })
	t.Cleanup(func() { // after the parallel subtests
		require.Positive(t, scriptsChecked.Load(), "the slot check saw the scripts")
	})
}

func TestConformanceShared(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
		prefix := testredis.Prefix(t)
		ca, cb := testredis.Client(t), testredis.Client(t)
		ca.AddHook(&slotCheck{t: t})
		cb.AddHook(&slotCheck{t: t})
		return newStoreOn(t, ca, prefix), newStoreOn(t, cb, prefix)
	})
}

func TestConformanceRapid(t *testing.T) {
	storetest.RunRapid(t, func(t *testing.T) store.Store { return newTestStore(t) })
}

func TestConformanceJobsRapid(t *testing.T) {
	storetest.RunJobsRapid(t, func(t *testing.T) store.Store { return newTestStore(t) })
}

func TestConformanceWorkersRapid(t *testing.T) {
	storetest.RunWorkersRapid(t, func(t *testing.T) store.Store { return newTestStore(t) })
}

func TestConformanceRateRapid(t *testing.T) {
	storetest.RunRateRapid(t, func(t *testing.T) store.Store { return newTestStore(t) })
}

// slotCheck is a go-redis hook failing the test when an EVAL/EVALSHA/FCALL names
// keys of more than one Redis Cluster hash slot.
type slotCheck struct {
	t testing.TB
}

// scriptsChecked counts the script calls slotCheck inspected.
var scriptsChecked atomic.Int64

func (h *slotCheck) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *slotCheck) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.check(cmd)
		return next(ctx, cmd)
	}
}

func (h *slotCheck) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.check(c)
		}
		return next(ctx, cmds)
	}
}

func (h *slotCheck) check(cmd redis.Cmder) {
	name := strings.ToLower(cmd.Name())
	if name != "eval" && name != "evalsha" && name != "fcall" {
		return
	}
	args := cmd.Args()
	n, _ := args[2].(int)
	keys := make([]string, 0, n)
	for _, a := range args[3 : 3+n] {
		keys = append(keys, fmt.Sprint(a))
	}
	scriptsChecked.Add(1)
	if err := sameSlot(keys); err != nil {
		h.t.Errorf("%s: %v", name, err)
	}
}

func sameSlot(keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	for _, k := range keys[1:] {
		if slot(k) != slot(keys[0]) {
			return fmt.Errorf("keys %q (slot %d) and %q (slot %d) differ", keys[0], slot(keys[0]), k, slot(k))
		}
	}
	return nil
}

// slot is the Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash
// tag (the part between the first '{' and the next '}', if not empty) or of
// the whole key, mod 16384.
func slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

func TestSlot(t *testing.T) {
	// Values from the Redis Cluster specification and redis-cli CLUSTER KEYSLOT.
	require.Equal(t, 12182, slot("foo"))
	require.Equal(t, 5061, slot("bar"))
	require.Equal(t, slot("user1000"), slot("{user1000}.following"))
	require.Equal(t, slot("foo{}{bar}"), slot("foo{}{bar}"))
	require.NoError(t, sameSlot(newKeys("sd").sem("t1", "orders")))
	require.Error(t, sameSlot([]string{"a", "b"}))
}
