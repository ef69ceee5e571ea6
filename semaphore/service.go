// Package semaphore is the domain service of semaphored: it validates what
// clients ask for, fills the defaults of SPEC §3 and §4, and runs it against
// a store.Store. It also owns the sweeper that expires orphaned leases, the
// domain metrics, and API keys and tenants.
package semaphore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
)

// ErrForbidden is returned when the calling key's role may not do what it
// asks (an admin creating an operator key, say).
var ErrForbidden = errors.New("semaphore: forbidden")

// Config configures a Service. Zero values take the documented defaults.
type Config struct {
	Store         store.Store           // required
	Logger        *slog.Logger          // nil: discard
	Registerer    prometheus.Registerer // nil: metrics are kept but not registered
	SweepInterval time.Duration         // default 250ms
	// SessionInterval is how often sessions whose grace ran out are
	// collected and onSessionLost applied (default 1s).
	SessionInterval time.Duration

	// Webhooks delivers jobs to https routes (delivery.NewWebhookSender);
	// nil: https routes fail.
	Webhooks WebhookRoute
	// Websocket delivers jobs to websocket routes (hub.Hub); nil:
	// they fail (no subscriber), and the chain moves on.
	Websocket WebsocketRoute
	// Routing are the routing knobs: AllowPrivate (--webhook-allow-private),
	// the mapping's cost limit and timeout.
	Routing routing.Options
	// MaxQueued bounds the scheduled jobs of one semaphore (default
	// DefaultMaxQueued); MaxPayloadBytes a job's payload (default
	// DefaultMaxPayloadBytes).
	MaxQueued       int64
	MaxPayloadBytes int
}

// DefaultSweepInterval is how often the sweeper runs by default.
const DefaultSweepInterval = 250 * time.Millisecond

// Service is the domain service. Safe for concurrent use.
type Service struct {
	store    store.Store
	log      *slog.Logger
	interval time.Duration
	metrics  *metrics
	disp     *dispatcher
	routing  routing.Options

	maxQueued       int64
	maxPayloadBytes int
	sessionInterval time.Duration

	// adminKeyHash is the hash of the fixed bootstrap key (--admin-key),
	// "" for none: Authenticate registers it again when the store lost it.
	adminKeyHash atomic.Pointer[string]

	mu      sync.Mutex
	cancel  context.CancelCauseFunc // set while the sweeper runs
	done    chan struct{}
	started bool
}

// New returns a Service. It registers the metrics on cfg.Registerer.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("semaphore: Config.Store is required")
	}
	if cfg.SweepInterval < 0 || cfg.SessionInterval < 0 {
		return nil, fmt.Errorf("semaphore: Config.SweepInterval and SessionInterval must not be negative, got %s and %s", cfg.SweepInterval, cfg.SessionInterval)
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SessionInterval == 0 {
		cfg.SessionInterval = DefaultSessionInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = DefaultMaxQueued
	}
	if cfg.MaxPayloadBytes <= 0 {
		cfg.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	s := &Service{
		store: cfg.Store, log: cfg.Logger, interval: cfg.SweepInterval, routing: cfg.Routing,
		maxQueued: cfg.MaxQueued, maxPayloadBytes: cfg.MaxPayloadBytes, sessionInterval: cfg.SessionInterval,
	}
	m, err := newMetrics(cfg.Registerer, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.disp = newDispatcher(cfg.Store, cfg.Logger, m, cfg.Webhooks, cfg.Websocket, cfg.Routing)
	s.disp.maxQueued = cfg.MaxQueued
	cfg.Store.SetJobListener(s.disp.onEvents)
	return s, nil
}

var errStopped = errors.New("semaphore: service stopped")

// Start starts the sweeper, a goroutine that calls store.Sweep every
// SweepInterval, and the session collector (sessions.go), until ctx ends or
// Stop is called. It returns an error when called twice.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("semaphore: service already started")
	}
	s.started = true
	ctx, s.cancel = context.WithCancelCause(ctx)
	s.done = make(chan struct{})
	go func(done chan<- struct{}) {
		defer close(done)
		var wg sync.WaitGroup
		wg.Go(func() { s.sweepLoop(ctx) })
		wg.Go(func() { s.sessionLoop(ctx) })
		wg.Wait()
	}(s.done)
	return nil
}

// Stop stops the sweeper and waits for it to return. Safe to call more than
// once, and without Start.
func (s *Service) Stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	s.disp.stop()
	if cancel == nil {
		return
	}
	cancel(errStopped)
	<-done
}

func (s *Service) sweepLoop(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.store.Sweep(ctx)
		if n > 0 {
			s.metrics.leasesExpired.Add(float64(n))
		}
		if err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "sweep failed", "err", err)
		}
	}
}

// Ping checks that the store is reachable.
func (s *Service) Ping(ctx context.Context) error { return s.store.Ping(ctx) }

// ---- semaphores ----

// PutSemaphore validates a config and creates or replaces the semaphore.
func (s *Service) PutSemaphore(ctx context.Context, tenant, name string, in ConfigInput) (store.Semaphore, bool, error) {
	if err := checkName("name", name); err != nil {
		return store.Semaphore{}, false, err
	}
	cfg, rc, err := ValidateConfig(name, in, s.routing)
	if err != nil {
		return store.Semaphore{}, false, err
	}
	var prev routing.Config
	switch old, err := s.store.GetSemaphore(ctx, tenant, name); {
	case err == nil:
		if prev, err = routing.DecodeExtraOptions(old.Config.Extra, s.routing); err != nil {
			return store.Semaphore{}, false, err
		}
	case !errors.Is(err, store.ErrSemaphoreNotFound):
		return store.Semaphore{}, false, err
	}
	if err := routing.AssignSecrets(&rc, prev); err != nil {
		return store.Semaphore{}, false, err
	}
	lookup := func(ctx context.Context, other string) (routing.Config, bool, error) {
		sem, err := s.store.GetSemaphore(ctx, tenant, other)
		if errors.Is(err, store.ErrSemaphoreNotFound) {
			return routing.Config{}, false, nil
		}
		if err != nil {
			return routing.Config{}, false, err
		}
		oc, err := routing.DecodeExtraOptions(sem.Config.Extra, s.routing)
		return oc, err == nil, err
	}
	if err := routing.CheckTargets(ctx, name, rc, lookup); err != nil {
		return store.Semaphore{}, false, configError(err)
	}
	if err := routing.CheckCycles(ctx, name, rc, lookup); err != nil {
		return store.Semaphore{}, false, configError(err)
	}
	if cfg.Extra, err = rc.EncodeExtra(); err != nil {
		return store.Semaphore{}, false, err
	}
	return s.store.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: tenant, Name: name, Config: cfg})
}

// GetSemaphore returns a semaphore and a snapshot of its usage.
func (s *Service) GetSemaphore(ctx context.Context, tenant, name string) (store.Semaphore, store.SemaphoreState, error) {
	if !ValidName(name) {
		return store.Semaphore{}, store.SemaphoreState{}, store.ErrSemaphoreNotFound
	}
	sem, err := s.store.GetSemaphore(ctx, tenant, name)
	if err != nil {
		return store.Semaphore{}, store.SemaphoreState{}, err
	}
	st, err := s.store.State(ctx, tenant, name)
	if err != nil {
		return store.Semaphore{}, store.SemaphoreState{}, err
	}
	return sem, st, nil
}

// State returns a snapshot of a semaphore's usage (ErrSemaphoreNotFound
// when it does not exist).
func (s *Service) State(ctx context.Context, tenant, name string) (store.SemaphoreState, error) {
	if !ValidName(name) {
		return store.SemaphoreState{}, store.ErrSemaphoreNotFound
	}
	return s.store.State(ctx, tenant, name)
}

// ListSemaphores pages through the tenant's semaphores by name. limit 0
// means DefaultListLimit; at most MaxListLimit.
func (s *Service) ListSemaphores(ctx context.Context, tenant, cursor string, limit int) ([]store.Semaphore, string, error) {
	limit, err := checkListLimit(limit)
	if err != nil {
		return nil, "", err
	}
	after, err := decodeCursor(cursorSemaphores, cursor, ValidName)
	if err != nil {
		return nil, "", err
	}
	sems, next, err := s.store.ListSemaphores(ctx, store.ListParams{Tenant: tenant, Cursor: after, Limit: limit})
	return sems, encodeCursor(cursorSemaphores, next), err
}

// ListLeasesInput filters and pages a semaphore's live leases.
type ListLeasesInput struct {
	Channel string
	Cursor  string
	Limit   int
}

// ListLeases lists a semaphore's live leases, oldest grant first.
func (s *Service) ListLeases(ctx context.Context, tenant, name string, in ListLeasesInput) ([]store.Lease, string, error) {
	if !ValidName(name) {
		return nil, "", store.ErrSemaphoreNotFound
	}
	limit, err := checkListLimit(in.Limit)
	if err != nil {
		return nil, "", err
	}
	if in.Channel != "" {
		if err := checkChannel(in.Channel); err != nil {
			return nil, "", err
		}
	}
	after, err := decodeCursor(cursorLeases, in.Cursor, validSeq)
	if err != nil {
		return nil, "", err
	}
	leases, next, err := s.store.ListLeases(ctx, store.ListLeasesParams{
		Tenant: tenant, Semaphore: name, Channel: in.Channel, Cursor: after, Limit: limit,
	})
	return leases, encodeCursor(cursorLeases, next), err
}

// DeleteSemaphore deletes a semaphore with its leases and waiters.
func (s *Service) DeleteSemaphore(ctx context.Context, tenant, name string) error {
	if !ValidName(name) {
		return store.ErrSemaphoreNotFound
	}
	return s.store.DeleteSemaphore(ctx, tenant, name)
}

// SetSuspended suspends (true) or resumes (false) dispatching of queued jobs.
func (s *Service) SetSuspended(ctx context.Context, tenant, name string, suspended bool) (store.Semaphore, error) {
	if !ValidName(name) {
		return store.Semaphore{}, store.ErrSemaphoreNotFound
	}
	return s.store.SetSuspended(ctx, tenant, name, suspended)
}

// ---- sync leases ----

// Acquire validates the request, fills the defaults (ttl: the semaphore's
// leaseTimeout) and acquires a lease, waiting up to in.Wait. Without a
// wait, a refusal for the semaphore's rate is a *RateLimitedError (a
// store.ErrNoPermit too).
func (s *Service) Acquire(ctx context.Context, tenant, name string, in AcquireInput) (store.Lease, error) {
	p, err := ValidateAcquire(tenant, name, in)
	if err != nil {
		return store.Lease{}, err
	}
	start := time.Now()
	// in.TTL nil leaves p.TTL 0: the store takes the semaphore's
	// leaseTimeout inside the acquire itself.
	l, err := s.store.Acquire(ctx, p)
	s.metrics.observeAcquire(start, err)
	if err != nil {
		return l, s.rateLimited(p, err)
	}
	return l, nil
}

// SessionHolder is a websocket session that leases can be bound to
// (hub.Session).
type SessionHolder interface {
	ID() string
	// UseSemaphore records in the store that the session may hold leases
	// in the semaphore (store.SessionStore.UseSemaphore), once.
	UseSemaphore(ctx context.Context, semaphore string) error
}

// AcquireOverSession is Acquire for a request that came over a websocket
// session: the lease is bound to the session in the same atomic operation
// that grants it, so the session's end releases it.
func (s *Service) AcquireOverSession(ctx context.Context, tenant, name string, in AcquireInput, sess SessionHolder) (store.Lease, error) {
	p, err := ValidateAcquire(tenant, name, in)
	if err != nil {
		return store.Lease{}, err
	}
	// The session's end looks for its leases in the semaphores it
	// recorded: record this one before the lease can exist.
	if err := sess.UseSemaphore(ctx, name); err != nil {
		return store.Lease{}, err
	}
	p.Session = sess.ID()
	start := time.Now()
	l, err := s.store.Acquire(ctx, p)
	s.metrics.observeAcquire(start, err)
	if err != nil {
		return l, s.rateLimited(p, err)
	}
	return l, nil
}

// MaxPrefetch bounds a websocket subscription's prefetch; DefaultPrefetch
// is the prefetch of a subscription that names none.
const (
	MaxPrefetch     = 1000
	DefaultPrefetch = 1
)

// CheckSubscription validates a websocket subscription (SPEC §6) and
// checks that its semaphore exists; it returns the subscription with its
// defaults.
func (s *Service) CheckSubscription(ctx context.Context, tenant, name, channel string, prefetch *int) (store.Subscription, error) {
	sub := store.Subscription{Semaphore: name, Channel: channel, Prefetch: DefaultPrefetch}
	if prefetch != nil {
		sub.Prefetch = *prefetch
	}
	switch {
	case name == "":
		return sub, invalid(CodeInvalidRequest, "semaphore", "semaphore is required")
	case channel != "" && !ValidName(channel):
		return sub, invalid(CodeInvalidRequest, "channel", "channel %q does not match %s", truncate(channel, 140), NamePattern)
	case sub.Prefetch < 1 || sub.Prefetch > MaxPrefetch:
		return sub, invalid(CodeInvalidRequest, "prefetch", "prefetch must be between 1 and %d, got %d", MaxPrefetch, sub.Prefetch)
	}
	if _, _, err := s.GetSemaphore(ctx, tenant, name); err != nil {
		return sub, err
	}
	return sub, nil
}

// Extend moves a live lease's expiry to now+ttl.
func (s *Service) Extend(ctx context.Context, tenant, leaseID string, ttl time.Duration) (store.Lease, error) {
	if err := checkTTL(ttl); err != nil {
		return store.Lease{}, err
	}
	if _, ok := store.ParseLeaseID(leaseID); !ok {
		return store.Lease{}, store.ErrLeaseNotFound
	}
	return s.store.Extend(ctx, store.ExtendParams{Tenant: tenant, LeaseID: leaseID, TTL: ttl})
}

// Release ends a live lease and returns it as it was.
func (s *Service) Release(ctx context.Context, tenant, leaseID string) (store.Lease, error) {
	if _, ok := store.ParseLeaseID(leaseID); !ok {
		return store.Lease{}, store.ErrLeaseNotFound
	}
	return s.store.Release(ctx, store.ReleaseParams{Tenant: tenant, LeaseID: leaseID})
}
