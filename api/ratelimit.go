package api

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// defaultMaxLimiters bounds how many per-key limiters a server keeps.
const defaultMaxLimiters = 10_000

// keyLimiter holds one token bucket per API key, in this process only: the
// limit is per server instance, not shared through the store.
//
// The map is bounded. When it is full, limiters whose bucket has refilled
// completely are dropped first (such a limiter behaves exactly like a new
// one, so nothing is forgotten); if none has, the least recently used one is.
type keyLimiter struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*keyBucket
}

type keyBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newKeyLimiter(perSecond float64, burst, maxKeys int, now func() time.Time) *keyLimiter {
	return &keyLimiter{
		limit: rate.Limit(perSecond),
		burst: burst,
		max:   maxKeys,
		now:   now,
		keys:  make(map[string]*keyBucket),
	}
}

// allow takes a token for key. When none is left it returns false and how
// long until one is.
func (l *keyLimiter) allow(key string) (time.Duration, bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.keys[key]
	if !ok {
		if len(l.keys) >= l.max {
			l.evict(now)
		}
		b = &keyBucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.keys[key] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Second, false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// evict makes room for one more key. Called with mu held.
func (l *keyLimiter) evict(now time.Time) {
	var (
		oldestKey  string
		oldestSeen time.Time
	)
	for k, b := range l.keys {
		if b.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.keys, k)
			continue
		}
		if oldestKey == "" || b.seen.Before(oldestSeen) {
			oldestKey, oldestSeen = k, b.seen
		}
	}
	if len(l.keys) >= l.max && oldestKey != "" {
		delete(l.keys, oldestKey)
	}
}

func (l *keyLimiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
