package redisstore

import (
	"sync"
	"time"

	"github.com/semaphored/semaphored/store"
)

// keyCache keeps API keys found by KeyByHash, so that authenticating a
// request costs no Redis round trip. A revoke (DeleteKey on any instance)
// publishes the key's hash on the keys-revoked channel that every Store
// subscribes to, and each Store evicts it when the message arrives
// (milliseconds). keyCacheTTL bounds how long an entry lives in case that
// message is lost; the cache is also cleared whenever the pub/sub connection
// (re)subscribes, since messages may have been missed while it was down.
type keyCache struct {
	mu      sync.Mutex
	gen     uint64 // bumped by every eviction: a lookup that began before one does not fill the cache
	entries map[string]keyCacheEntry
}

type keyCacheEntry struct {
	key     store.APIKey
	expires time.Time
}

const (
	keyCacheTTL = 10 * time.Second
	keyCacheMax = 10_000
)

func newKeyCache() *keyCache { return &keyCache{entries: make(map[string]keyCacheEntry)} }

// get returns a cached key, and the generation to pass to put after a miss.
func (c *keyCache) get(hash string, now time.Time) (store.APIKey, bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[hash]
	if ok && now.Before(e.expires) {
		return e.key, true, c.gen
	}
	return store.APIKey{}, false, c.gen
}

// put caches a key looked up at generation gen, unless an eviction happened
// since (the key may have been revoked meanwhile).
func (c *keyCache) put(hash string, k store.APIKey, gen uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if len(c.entries) >= keyCacheMax {
		clear(c.entries)
	}
	c.entries[hash] = keyCacheEntry{key: k, expires: now.Add(keyCacheTTL)}
}

// evict drops one key ("" = all of them).
func (c *keyCache) evict(hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if hash == "" {
		clear(c.entries)
		return
	}
	delete(c.entries, hash)
}
