// Package redisstore is the Redis implementation of store.Store, for Redis 7
// standalone or Redis Cluster.
//
// Every domain operation is one Lua script (lua/*.lua, embedded). The
// per-semaphore ones are the functions of one Redis function library
// (loaded by New, reloaded if Redis loses it, called by FCALL); the others
// run by EVALSHA with an EVAL fallback. Every key a script touches is
// passed in KEYS and carries the semaphore's hash tag (keys.go). Time is Redis TIME
// inside the scripts, never the local clock: a lease is live while Redis
// time is before its expiry.
//
// Waiting acquires join a FIFO queue in Redis. A release, expiry or raise
// grants head waiters inside its script and pushes each grant by PUBLISH on
// the owning Store's node channel; the blocked Acquire (a Go channel per
// waiter id) then claims its lease. A lost message costs at most the ~1 s
// fallback poll, and a waiter whose node crashed expires at its deadline.
//
// Async jobs (jobs.go) live in their semaphore's slot too. Every script
// that frees or adds a permit or a job dispatches queued jobs that fit in
// the same script (lib_*.lua dispatch) and returns them; the Store hands them
// to the JobEvents listener after the script, in the calling goroutine.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

var _ store.Store = (*Store)(nil)

// Tunables. Not options: nothing outside tests has needed to change them.
const (
	// pollInterval is the waiting call's fallback re-check, in case a push
	// was lost (pub/sub reconnect).
	pollInterval = time.Second
	// waiterSlack is added to a waiter's deadline in Redis (now + wait +
	// slack): long enough for the waiting call to cancel itself at its own
	// deadline, short enough that the waiters of a crashed node vanish soon.
	waiterSlack = 2 * time.Second
	// sweepRecheck: a claimed sweep index member is re-checked this long
	// after the claim unless the sweep sets an earlier due time; it bounds
	// the damage of a sweeper that dies between claim and update, and is
	// the re-check period of idle semaphores.
	sweepRecheck = 5 * time.Second
	// sweepBatch members are claimed per round; sweepMaxRounds bounds one
	// Sweep call.
	sweepBatch     = 128
	sweepMaxRounds = 16
	// cleanupTimeout bounds the cancel/release a waiting call sends after
	// its context ended.
	cleanupTimeout = 5 * time.Second
)

// Options configure a Store. The zero value is valid.
type Options struct {
	// Prefix of every key (default "sd"). Stores sharing a Redis with the
	// same prefix share all data.
	Prefix string
	// NodeID names this Store's pub/sub channel for grants to its waiters
	// (default: random). It must be unique among live Stores.
	NodeID string
	// Logger (default: discard).
	Logger *slog.Logger
}

// Store is the Redis store. Create it with New; Close it to stop its
// pub/sub listener (the client is the caller's, and stays open).
type Store struct {
	client redis.UniversalClient
	keys   keys
	nodeID string
	log    *slog.Logger

	ps       *redis.PubSub
	listened chan struct{} // closed when the listener goroutine ends
	closing  chan struct{} // closed by Close
	closeOne sync.Once

	mu      sync.Mutex
	waiters map[string]*waiter // waiter id -> its waiting Acquire
	// failedWaits: waiter id -> its deadline in Redis, for waits that
	// ended without their lease (unregister)
	failedWaits map[string]time.Time

	listener atomic.Pointer[func(store.JobEvents)] // SetJobListener

	bmu     sync.Mutex
	batches map[string]*semBatch // "tenant/name" -> operations waiting for a call (batch.go)

	authKeys *keyCache // KeyByHash results, evicted by revokes on any instance

	rate rateTimers // rate.go

	refusals layoutRefusals // layout.go

	abandonWG sync.WaitGroup // undoing results whose callers left (batch.go)
}

// New returns a Store on client and subscribes to its node channel before
// returning, so no grant pushed to it is missed.
func New(client redis.UniversalClient, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("redisstore: nil client")
	}
	if opts.Prefix == "" {
		opts.Prefix = "sd"
	}
	if opts.NodeID == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		opts.NodeID = hex.EncodeToString(b[:])
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		client:      client,
		keys:        newKeys(opts.Prefix),
		nodeID:      opts.NodeID,
		log:         opts.Logger.With("component", "redisstore", "node", opts.NodeID),
		listened:    make(chan struct{}),
		closing:     make(chan struct{}),
		waiters:     make(map[string]*waiter),
		failedWaits: make(map[string]time.Time),
		batches:     make(map[string]*semBatch),
		authKeys:    newKeyCache(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.loadLibrary(ctx); err != nil {
		return nil, fmt.Errorf("redisstore: loading the function library (Redis 7 or later is needed): %w", translate(err, nil))
	}
	s.ps = client.Subscribe(ctx, s.keys.nodeChannel(s.nodeID), s.keys.keysRevokedChannel())
	for range 2 { // the two subscription confirmations
		if _, err := s.ps.Receive(ctx); err != nil {
			_ = s.ps.Close()
			return nil, translate(err, nil)
		}
	}
	msgs := s.ps.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	go s.listen(msgs)
	return s, nil
}

// listen delivers pushed grants (the message is the waiter id) to the
// waiting calls of this Store, and revoked keys' hashes to the key cache.
// A (re)subscription after a dropped connection clears the key cache:
// revokes may have been published while it was down.
func (s *Store) listen(msgs <-chan any) {
	defer close(s.listened)
	revoked := s.keys.keysRevokedChannel()
	for m := range msgs {
		switch m := m.(type) {
		case *redis.Message:
			if m.Channel == revoked {
				s.authKeys.evict(m.Payload)
				continue
			}
			s.wake(m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == revoked {
				s.authKeys.evict("")
			}
		}
	}
}

// waiter is a waiting Acquire of this Store.
type waiter struct {
	wake  chan struct{} // buffered 1: a grant was pushed or handed over
	lease string        // the lease JSON handed over in a reply (under Store.mu)
}

func (s *Store) register(id string) *waiter {
	w := &waiter{wake: make(chan struct{}, 1)}
	s.mu.Lock()
	s.waiters[id] = w
	s.mu.Unlock()
	return w
}

// handOver gives a waiter of this Store the lease a script granted it in
// its reply (lib_*.lua grant_domain). A waiter no longer registered has
// ended its wait: with a lease (its poll or give-up found this one by the
// waiter's id: nothing to do), or without one (its give-up could not reach
// Redis, see unregister): then the lease is released.
func (s *Store) handOver(tenant, id, raw string) {
	s.mu.Lock()
	w := s.waiters[id]
	_, failed := s.failedWaits[id]
	if w != nil {
		w.lease = raw
	} else if failed {
		delete(s.failedWaits, id)
	}
	s.mu.Unlock()
	if w == nil {
		if failed {
			go s.releaseAbandoned(tenant, id)
		}
		return
	}
	select {
	case w.wake <- struct{}{}:
	default: // already signalled
	}
}

// handedOver returns the lease handed over to w, if any.
func (s *Store) handedOver(w *waiter) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return w.lease
}

// unregister ends a wait. A wait that ended without its lease (failed)
// while it may still be queued in Redis (until, its deadline there) is
// remembered until then, so that a grant handed over later is released
// (handOver); a lease handed over but not taken is released at once.
func (s *Store) unregister(tenant, id string, failed bool, until time.Time) {
	s.mu.Lock()
	w := s.waiters[id]
	delete(s.waiters, id)
	orphan := failed && w != nil && w.lease != ""
	if failed && !orphan {
		now := time.Now()
		for k, t := range s.failedWaits { // few: waits whose give-up failed
			if now.After(t) {
				delete(s.failedWaits, k)
			}
		}
		s.failedWaits[id] = until
	}
	s.mu.Unlock()
	if orphan {
		go s.releaseAbandoned(tenant, id)
	}
}

func (s *Store) wake(id string) {
	s.mu.Lock()
	w := s.waiters[id]
	s.mu.Unlock()
	if w != nil {
		select {
		case w.wake <- struct{}{}:
		default: // already signalled
		}
	}
}

// Ping checks Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	return translate(s.client.Ping(ctx).Err(), nil)
}

// Close stops the pub/sub listener; waiting calls give up (cancelling their
// waiters) with store.ErrUnavailable. It does not close the client.
func (s *Store) Close() error {
	var err error
	s.closeOne.Do(func() {
		close(s.closing)
		s.stopRateTimers()
		s.abandonWG.Wait()
		err = s.ps.Close()
		<-s.listened
	})
	return translate(err, nil)
}
