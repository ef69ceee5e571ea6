package semaphore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
)

// The dispatcher hands a job to a route through these interfaces; the
// transports implement them (delivery.WebhookSender, hub.Hub) and the
// domain imports none of them.

// WebhookRoute delivers a job to an https route: nil when the target
// accepted it (2xx), an error when the route failed (the chain moves on).
// The dispatcher records the outcome.
type WebhookRoute interface {
	Deliver(ctx context.Context, route routing.Route, job store.Job, payload json.RawMessage) error
}

// WebsocketRoute pushes a job to the websocket session its store bound it
// to at dispatch (store.Job.Worker: that session had room). It returns nil
// once the session acked the job (the delivery is recorded: the binding
// made at dispatch), else an error: the dispatcher then returns the job
// to its queue without counting the attempt, or offers it to the more
// stable routes that follow. Without one the dispatcher uses noWebsocket,
// which always fails.
type WebsocketRoute interface {
	Push(ctx context.Context, job store.Job, payload json.RawMessage) error
}

// ErrNoSubscriber is the failure of a websocket route with no session to
// take the job.
var ErrNoSubscriber = errors.New("no websocket session took the job")

type noWebsocket struct{}

func (noWebsocket) Push(context.Context, store.Job, json.RawMessage) error {
	return fmt.Errorf("%w: no session is subscribed", ErrNoSubscriber)
}

// HoldTTL is how long a parent job keeps its permit while its child job
// (semaphore route with release: false) is not finished. The child's end
// releases it; the TTL only bounds a permit orphaned by a crash between the
// child's end and the parent's release.
const HoldTTL = MaxTTL

// maxDeliveries bounds the deliveries running at once on one instance.
const maxDeliveries = 4096

// configTTL is how long a delivery may use a semaphore's cached config.
const configTTL = time.Second

// dispatcher delivers dispatched jobs down their route chain (SPEC §5) and
// ends parents of finished child jobs. It is the store's job listener: the
// store reports what each atomic operation dispatched, on the instance that
// ran it, and the dispatcher delivers those jobs from there. A job whose
// delivery is cut short (crash, shutdown) keeps its lease until expiry and is
// retried: never lost.
type dispatcher struct {
	store    store.Store
	log      *slog.Logger
	metrics  *metrics
	webhooks WebhookRoute
	ws       WebsocketRoute
	routing  routing.Options
	// maxQueued bounds the queue of a semaphore that child jobs go into.
	maxQueued int64

	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
	slots  chan struct{}

	mu      sync.Mutex
	stopped bool
	configs map[string]cachedConfig
}

type cachedConfig struct {
	sem     store.Semaphore
	routes  routing.Config
	fetched time.Time
}

func newDispatcher(st store.Store, log *slog.Logger, m *metrics, webhooks WebhookRoute, ws WebsocketRoute, ropts routing.Options) *dispatcher {
	ctx, cancel := context.WithCancelCause(context.Background())
	if ws == nil {
		ws = noWebsocket{}
	}
	return &dispatcher{
		store: st, log: log, metrics: m, webhooks: webhooks, ws: ws, routing: ropts,
		ctx: ctx, cancel: cancel, slots: make(chan struct{}, maxDeliveries),
		configs: make(map[string]cachedConfig),
	}
}

// onEvents is the store's job listener. It must not block: every job gets
// its own goroutine, which waits for a delivery slot.
func (d *dispatcher) onEvents(ev store.JobEvents) {
	for _, j := range ev.Dispatched {
		d.spawn(func() { d.deliver(j) })
	}
	for _, j := range ev.Finished {
		d.finished(j)
	}
}

// spawn runs f in a goroutine that stop waits for; after stop it does
// nothing (a job left undelivered keeps its lease until expiry and is
// retried).
func (d *dispatcher) spawn(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
}

// stop cancels running deliveries and waits for them.
func (d *dispatcher) stop() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.cancel(errStopped)
	d.wg.Wait()
}

// finished records a job that reached a terminal state and, for a child
// job holding its parent's permit, ends the parent the same way.
func (d *dispatcher) finished(j store.Job) {
	d.metrics.jobsFinished.WithLabelValues(string(j.Status)).Inc()
	d.endParent(j)
}

// endParent ends the parent a terminal child job holds the permit of, the
// way the child ended.
func (d *dispatcher) endParent(j store.Job) {
	if j.Parent == nil || !j.Parent.Hold || j.Tenant == "" {
		return
	}
	d.spawn(func() {
		// End the parent only while this child is still the one it handed
		// off to, under the parent's current lease: a parent retried after a
		// crash may have a newer child, which must not be cut short.
		parent, err := d.store.GetJob(d.ctx, j.Tenant, j.Parent.ID)
		if err != nil || parent.Status != store.JobInflight || parent.Child == nil || parent.Child.ID != j.ID || parent.Lease == nil {
			return
		}
		p := store.TransitionParams{Tenant: j.Tenant, JobID: j.Parent.ID, Action: store.ActRelease, LeaseID: parent.Lease.ID, Quiet: true}
		if j.Status != store.JobDone {
			p.Action = store.ActFail
			p.Error = fmt.Sprintf("child job %s in semaphore %s ended %s", j.ID, j.Semaphore, j.Status)
		}
		_, err = d.store.TransitionJob(d.ctx, p) // the parent comes back in JobEvents.Finished
		switch {
		case err == nil:
		case errors.Is(err, store.ErrInvalidState), errors.Is(err, store.ErrJobNotFound), errors.Is(err, store.ErrStaleLease):
			// already ended (cancelled, timed out, forgotten): nothing holds
		default:
			d.log.Warn("ending parent job failed", "job", j.Parent.ID, "err", err)
		}
	})
}

// config returns a semaphore and its routing config, cached for configTTL.
func (d *dispatcher) config(ctx context.Context, tenant, name string) (store.Semaphore, routing.Config, error) {
	key := tenant + "/" + name
	d.mu.Lock()
	c, ok := d.configs[key]
	d.mu.Unlock()
	if ok && time.Since(c.fetched) < configTTL {
		return c.sem, c.routes, nil
	}
	sem, err := d.store.GetSemaphore(ctx, tenant, name)
	if err != nil {
		return store.Semaphore{}, routing.Config{}, err
	}
	if ok && c.sem.UpdatedAt.Equal(sem.UpdatedAt) {
		c.sem, c.fetched = sem, time.Now()
	} else {
		rc, err := routing.DecodeExtraOptions(sem.Config.Extra, d.routing)
		if err != nil {
			return store.Semaphore{}, routing.Config{}, err
		}
		c = cachedConfig{sem: sem, routes: rc, fetched: time.Now()}
	}
	d.mu.Lock()
	if len(d.configs) > 10_000 {
		clear(d.configs)
	}
	d.configs[key] = c
	d.mu.Unlock()
	return c.sem, c.routes, nil
}

// deliver offers one dispatched job to its chain.
func (d *dispatcher) deliver(j store.Job) { d.deliverAbove(j, 0) }

// redeliver offers an inflight job, keeping its permit, to the routes of
// its chain more stable than a websocket (onSessionLost "redeliver": its
// websocket session was lost).
func (d *dispatcher) redeliver(j store.Job) {
	d.spawn(func() { d.deliverAbove(j, routing.Stability(routing.TypeWebsocket)) })
}

// deliverAbove offers the job to the routes of its chain whose stability
// is above the given rank (0: every route).
func (d *dispatcher) deliverAbove(j store.Job, above int) {
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
	case <-d.ctx.Done():
		return
	}
	if j.Lease == nil || j.Tenant == "" {
		d.log.Error("dispatched job without lease or tenant", "job", j.ID)
		return
	}
	// A delivery never outlives the job's lease: after it the job is
	// scheduled again and may be delivered elsewhere.
	ctx, cancel := context.WithDeadline(d.ctx, j.Lease.ExpiresAt)
	defer cancel()
	log := d.log.With("job", j.ID, "semaphore", j.Semaphore, "tenant", j.Tenant)

	sem, rc, err := d.config(ctx, j.Tenant, j.Semaphore)
	if err != nil {
		if errors.Is(err, store.ErrSemaphoreNotFound) {
			return // deleted with its jobs
		}
		log.Warn("loading semaphore config failed; the job is retried when its lease expires", "err", err)
		return
	}
	if j.Worker == nil && sem.Config.Workers == nil && workerRoute(rc.Chain()) != nil {
		// A config saved by an earlier build, which did not tell the store
		// that its chain begins with the websocket route: tell it now, and
		// let the job wait for a worker with room like any other.
		d.adoptWorkerRoute(ctx, log, j)
		return
	}
	payload := json.RawMessage(j.Payload)
	chain := rc.Chain()
	res, err := rc.Map(ctx, routing.MapInput{
		Payload: payload, JobID: j.ID, Channel: j.Channel, Attempt: j.Attempts,
		Semaphore: j.Semaphore, MaxValue: sem.Config.MaxValue,
	})
	if err != nil {
		var me *routing.MapError
		if errors.As(err, &me) {
			d.transition(ctx, log, j, store.TransitionParams{Action: store.ActFail, Error: me.Error()})
		}
		return // ctx ended: the lease expires and the job is retried
	}
	if res.Payload != nil {
		payload = res.Payload
	}
	if res.Route != nil {
		chain = routing.Override(chain, *res.Route)
	}
	if above > 0 {
		chain = slices.DeleteFunc(chain, func(r routing.Route) bool { return routing.Stability(r.Type) <= above })
	}

	var failures []string
	var retryAfter time.Duration // the longest Retry-After a route answered
	for i, r := range chain {
		start := time.Now()
		done, err := d.offer(ctx, j, r, payload)
		result := "accepted"
		if err != nil {
			result = "failed"
		}
		d.metrics.deliveryAttempts.WithLabelValues(r.Type, result).Inc()
		d.metrics.deliveryDuration.WithLabelValues(r.Type).Observe(time.Since(start).Seconds())
		if err == nil {
			if done != nil {
				d.transition(ctx, log, j, *done)
				if done.Action == store.ActHandOff && done.Child != nil && done.Child.Hold {
					// The child may have ended before the hand-off was
					// recorded (a route that fails at once): its end found
					// no child on the parent then. Look again now.
					if c, err := d.store.GetJob(ctx, j.Tenant, done.Child.ID); err == nil && c.Status.Terminal() {
						d.endParent(c)
					}
				}
			}
			return
		}
		if r.Type == routing.TypeWebsocket && j.Worker != nil && i == len(chain)-1 {
			// The worker the job was dispatched to never got it, and no
			// route follows: back to the head of its queue, the attempt
			// not counted, for the next worker with room (store.WorkerRoute).
			log.Info("push to its worker failed; the job waits for the next one", "session", j.Worker.Session, "err", err)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			d.transition(rctx, log, j, store.TransitionParams{Action: store.ActReturn})
			cancel()
			return
		}
		if ctx.Err() != nil {
			return // lease over or stopping: retried after expiry
		}
		log.Info("route failed", "route", r.Type, "err", err)
		failures = append(failures, r.Type+": "+err.Error())
		var h retryAfterHint
		if errors.As(err, &h) {
			retryAfter = max(retryAfter, h.RetryAfterHint())
		}
	}
	msg := "every route failed: " + strings.Join(failures, "; ")
	if sem.Config.OnDeliveryError == "suspend" {
		d.transition(ctx, log, j, store.TransitionParams{Action: store.ActSuspend, Error: msg})
		return
	}
	// A failed attempt: retried after its backoff while attempts remain
	// (at least a webhook's Retry-After), else the job ends in error.
	d.transition(ctx, log, j, store.TransitionParams{Action: store.ActFailRetry, Error: msg, MinDelay: retryAfter})
}

// retryAfterHint is an error that says how long to wait before trying
// again (delivery.DeliveryError).
type retryAfterHint interface {
	error
	RetryAfterHint() time.Duration
}

// adoptWorkerRoute saves the semaphore's config with its worker route
// (store.WorkerRoute), read afresh, and returns the job to its queue
// without counting the attempt: the store then dispatches it by room.
func (d *dispatcher) adoptWorkerRoute(ctx context.Context, log *slog.Logger, j store.Job) {
	sem, err := d.store.GetSemaphore(ctx, j.Tenant, j.Semaphore)
	if err == nil && sem.Config.Workers == nil {
		var rc routing.Config
		if rc, err = routing.DecodeExtraOptions(sem.Config.Extra, d.routing); err == nil {
			cfg := sem.Config
			if cfg.Workers = workerRoute(rc.Chain()); cfg.Workers != nil {
				_, _, err = d.store.PutSemaphore(ctx, store.PutSemaphoreParams{Tenant: j.Tenant, Name: j.Semaphore, Config: cfg})
			}
		}
	}
	if err != nil {
		log.Warn("saving the worker route of an earlier build's config failed", "err", err)
	}
	d.mu.Lock()
	delete(d.configs, j.Tenant+"/"+j.Semaphore)
	d.mu.Unlock()
	d.transition(ctx, log, j, store.TransitionParams{Action: store.ActReturn})
}

// offer hands the job to one route. On success it returns the transition
// that records it.
func (d *dispatcher) offer(ctx context.Context, j store.Job, r routing.Route, payload json.RawMessage) (*store.TransitionParams, error) {
	switch r.Type {
	case routing.TypeWebsocket:
		// The store bound the job to a session with room at dispatch (on
		// the first websocket route of the configured chain); without
		// one, no session had room: the chain moves on.
		if j.Worker == nil {
			return nil, fmt.Errorf("%w: no session with room", ErrNoSubscriber)
		}
		if err := d.ws.Push(ctx, j, payload); err != nil {
			return nil, err
		}
		return nil, nil
	case routing.TypeHTTPS:
		if d.webhooks == nil {
			return nil, errors.New("webhook delivery is not configured")
		}
		if err := d.webhooks.Deliver(ctx, r, j, payload); err != nil {
			return nil, err
		}
		if r.ReleaseOnSuccess {
			return &store.TransitionParams{Action: store.ActRelease, Route: r.Type}, nil
		}
		return &store.TransitionParams{Action: store.ActDelivered, Route: r.Type}, nil
	case routing.TypeSemaphore:
		if err := d.checkHops(ctx, j); err != nil {
			return nil, err
		}
		hold := !r.Release
		child, _, err := d.store.EnqueueJob(ctx, store.EnqueueParams{
			Tenant: j.Tenant, Semaphore: r.Target, Channel: j.Channel, Payload: payload,
			// one child per attempt of the parent, also when this hand-off is retried
			IdempotencyKey: fmt.Sprintf("parent:%s:%d", j.ID, j.Attempts),
			MaxQueued:      d.maxQueued,
			Parent:         &store.JobRef{Semaphore: j.Semaphore, ID: j.ID, Hold: hold},
		})
		if errors.Is(err, store.ErrSemaphoreNotFound) {
			return nil, fmt.Errorf("target semaphore %q does not exist", r.Target)
		}
		if err != nil {
			return nil, fmt.Errorf("enqueue into %q: %w", r.Target, err)
		}
		p := &store.TransitionParams{
			Action: store.ActHandOff, Route: r.Type,
			Child: &store.JobRef{Semaphore: r.Target, ID: child.ID, Hold: hold},
		}
		if hold {
			p.HoldTTL = HoldTTL
		}
		return p, nil
	}
	return nil, fmt.Errorf("unknown route type %q", r.Type)
}

// MaxSemaphoreHops bounds how many semaphore routes a job may travel
// through. Configured routes cannot form a cycle (refused at save time),
// but a route a mapping returns is only known at delivery.
const MaxSemaphoreHops = 16

// checkHops fails when j is already MaxSemaphoreHops child jobs deep.
func (d *dispatcher) checkHops(ctx context.Context, j store.Job) error {
	parent := j.Parent
	for hops := 1; parent != nil; hops++ {
		if hops >= MaxSemaphoreHops {
			return fmt.Errorf("job is %d semaphore routes deep, the limit is %d (a cycle through a mapping?)", hops, MaxSemaphoreHops)
		}
		p, err := d.store.GetJob(ctx, j.Tenant, parent.ID)
		if err != nil {
			return nil // the parent is gone (retention): nothing to count further
		}
		parent = p.Parent
	}
	return nil
}

// transition applies p to the job under its current lease. A stale lease
// means the job moved on (expired and retried, cancelled): nothing to do.
func (d *dispatcher) transition(ctx context.Context, log *slog.Logger, j store.Job, p store.TransitionParams) {
	p.Tenant, p.JobID, p.LeaseID = j.Tenant, j.ID, j.Lease.ID
	p.Quiet = true                          // the job is not read back
	_, err := d.store.TransitionJob(ctx, p) // a terminal job comes back in JobEvents.Finished
	switch {
	case err == nil:
	case errors.Is(err, store.ErrStaleLease), errors.Is(err, store.ErrInvalidState), errors.Is(err, store.ErrJobNotFound):
		log.Info("job moved on before its delivery was recorded", "action", p.Action, "err", err)
	default:
		log.Warn("recording delivery failed; the job is retried when its lease expires", "action", p.Action, "err", err)
	}
}
