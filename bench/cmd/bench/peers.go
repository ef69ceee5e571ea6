package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// zsetSem is a sorted-set counting semaphore reproducing the algorithm of
// github.com/hibiken/asynq/x/rate (semaphore.go, NewSemaphore/Acquire/
// Release): the holders are a sorted set scored by their deadline; Acquire
// is one script (ZREMRANGEBYSCORE of expired holders, ZCARD, ZADD when
// below the limit, else "false"); Release is a plain ZREM. Like the
// original, "now" comes from the client's clock (time.Now), which is one of
// the things semaphored does differently (Redis TIME). The original needs
// an asynq task context for its member; here each acquire gets a unique id.
type zsetSem struct {
	c   *redis.Client
	key string
	max int
	seq atomic.Int64
}

// Same script text as asynq x/rate acquireCmd.
//
// KEYS[1] -> semaphore key; ARGV[1] max tokens; ARGV[2] now (unix s);
// ARGV[3] deadline (unix s); ARGV[4] member.
var zsetAcquire = redis.NewScript(`
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", tonumber(ARGV[2])-1)
local count = redis.call("ZCARD", KEYS[1])

if (count < tonumber(ARGV[1])) then
     redis.call("ZADD", KEYS[1], ARGV[3], ARGV[4])
     return 'true'
else
     return 'false'
end
`)

func newZsetSem(ctx context.Context, c *redis.Client, key string, max int) (*zsetSem, error) {
	if err := c.Del(ctx, key).Err(); err != nil {
		return nil, err
	}
	if err := zsetAcquire.Load(ctx, c).Err(); err != nil {
		return nil, err
	}
	return &zsetSem{c: c, key: key, max: max}, nil
}

// tryAcquire returns the member on success, "" when full.
func (z *zsetSem) tryAcquire(ctx context.Context) (string, error) {
	member := "t" + strconv.FormatInt(z.seq.Add(1), 36) + "-" + strconv.FormatUint(rand.Uint64(), 36)
	now := time.Now()
	ok, err := zsetAcquire.Run(ctx, z.c, []string{z.key}, z.max, now.Unix(), now.Add(time.Minute).Unix(), member).Bool()
	if err != nil || !ok {
		return "", err
	}
	return member, nil
}

func (z *zsetSem) release(ctx context.Context, member string) error {
	n, err := z.c.ZRem(ctx, z.key, member).Result()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no token found for %q", member)
	}
	return nil
}

// backoff sleeps a uniformly random 10–50 ms, the polling interval users
// put in a try-acquire loop.
func backoff() { time.Sleep(10*time.Millisecond + rand.N(40*time.Millisecond)) }

// pollingPair acquires by polling (try, sleep 10–50 ms, try again) and
// releases after hold (simulated work). It returns the number of tries.
func (z *zsetSem) pollingPair(ctx context.Context, hold time.Duration) (int, error) {
	for tries := 1; ; tries++ {
		m, err := z.tryAcquire(ctx)
		if err != nil {
			return tries, err
		}
		if m != "" {
			if hold > 0 {
				time.Sleep(hold)
			}
			return tries, z.release(ctx, m)
		}
		backoff()
	}
}

// lockPair obtains a bsm/redislock lock on key and releases it; with
// poll, a busy lock is retried after a 10–50 ms sleep (redislock's own
// RetryStrategy does the same; the loop is written out to share backoff).
func lockPair(ctx context.Context, lc *redislock.Client, key string, poll bool) error {
	for {
		l, err := lc.Obtain(ctx, key, time.Minute, nil)
		if errors.Is(err, redislock.ErrNotObtained) && poll {
			backoff()
			continue
		}
		if err != nil {
			return err
		}
		return l.Release(ctx)
	}
}

// asynqBench runs an asynq server (Concurrency = the funnel's maxValue,
// TaskCheckInterval 10 ms so an idle processor never sleeps the default
// 1 s) whose handler returns at once, and enqueues through an asynq client.
type asynqBench struct {
	client    *asynq.Client
	srv       *asynq.Server
	processed atomic.Int64
	mu        sync.Mutex
	target    int64
	reached   chan struct{}
}

func newAsynqBench(addr string, concurrency int) (*asynqBench, error) {
	opt := asynq.RedisClientOpt{Addr: addr, PoolSize: 128}
	a := &asynqBench{client: asynq.NewClient(opt)}
	a.srv = asynq.NewServer(opt, asynq.Config{
		Concurrency:       concurrency,
		TaskCheckInterval: 10 * time.Millisecond,
		Queues:            map[string]int{"bench": 1},
		LogLevel:          asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("bench", func(context.Context, *asynq.Task) error {
		n := a.processed.Add(1)
		a.mu.Lock()
		if a.reached != nil && n >= a.target {
			close(a.reached)
			a.reached = nil
		}
		a.mu.Unlock()
		return nil
	})
	if err := a.srv.Start(mux); err != nil {
		_ = a.client.Close()
		return nil, err
	}
	return a, nil
}

func (a *asynqBench) close() {
	a.srv.Shutdown()
	_ = a.client.Close()
}

// round enqueues n tasks with a 100-byte payload from clients goroutines
// and returns jobs/s from the first enqueue until the n-th task was
// processed.
func (a *asynqBench) round(ctx context.Context, n, clients int) (float64, error) {
	payload := make([]byte, 100)
	for i := range payload {
		payload[i] = 'x'
	}
	reached := make(chan struct{})
	a.mu.Lock()
	a.target = a.processed.Load() + int64(n)
	a.reached = reached
	a.mu.Unlock()
	start := time.Now()
	var next atomic.Int64
	errc := make(chan error, clients)
	for range clients {
		go func() {
			for next.Add(1) <= int64(n) {
				if _, err := a.client.EnqueueContext(ctx, asynq.NewTask("bench", payload), asynq.Queue("bench"), asynq.MaxRetry(0)); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range clients {
		if err := <-errc; err != nil {
			return 0, err
		}
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		return 0, fmt.Errorf("asynq: %d tasks not processed within 60s", n)
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
