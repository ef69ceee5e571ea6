package hub

import (
	"context"
	"time"

	"github.com/semaphored/semaphored/store"
)

// The subscribers of a semaphore channel, as Deliver picks a session
// from them: read from the store at most every subsTTL, the loads of this
// instance's sessions taken from their ledgers.

// subsTTL is how long the hub uses a semaphore channel's list of
// subscribers before it reads it again from the store (subscribers): the
// sessions of this instance are known better locally, and a list that
// turns out too old (no session left to try, every one full) is read
// again at once.
const subsTTL = 250 * time.Millisecond

type cachedSubs struct {
	subs    []store.Subscriber
	fetched time.Time
}

// subscribers returns the subscribers of key from the cache, or from the
// store when refresh is set, the cached list is older than subsTTL, or a
// local subscription changed since; fresh reports a list read now.
func (h *Hub) subscribers(ctx context.Context, key orderKey, refresh bool) (subs []store.Subscriber, fresh bool, err error) {
	h.mu.Lock()
	c, ok := h.subsCache[key]
	h.mu.Unlock()
	if ok && !refresh && time.Since(c.fetched) < subsTTL {
		return c.subs, false, nil
	}
	subs, err = h.store.Subscribers(ctx, key.tenant, key.semaphore, key.channel)
	if err != nil {
		return nil, false, err
	}
	h.mu.Lock()
	if len(h.subsCache) > 10_000 {
		clear(h.subsCache)
	}
	h.subsCache[key] = cachedSubs{subs: subs, fetched: time.Now()}
	h.mu.Unlock()
	return subs, true, nil
}

// forgetSubscribers drops the cached lists of a semaphore (a local
// session subscribed or unsubscribed).
func (h *Hub) forgetSubscribers(tenant, semaphore string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.subsCache {
		if k.tenant == tenant && k.semaphore == semaphore {
			delete(h.subsCache, k)
		}
	}
}

// withLocalLoads returns subs with the load of each session of this
// instance taken from its ledger (exact, pushes not yet acked included)
// instead of the store's count.
func (h *Hub) withLocalLoads(subs []store.Subscriber, key orderKey) []store.Subscriber {
	out := make([]store.Subscriber, len(subs))
	copy(out, subs)
	for i, c := range out {
		if c.Node != h.node {
			continue
		}
		if s := h.session(c.Session); s != nil && s.tenant == key.tenant {
			if load, prefetch, ok := s.loadFor(key.semaphore, key.channel); ok {
				out[i].Inflight, out[i].Prefetch = load, prefetch
			}
		}
	}
	return out
}
