package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Jobs over the worker's websocket: Enqueue, subscriptions, and the runs
// of pushed jobs (ack, handler, keep-alive, release).

// Handler works on one job pushed to a subscription. Its context ends when
// the worker closes, or with cause ErrLeaseLost when the job's lease could
// not be kept alive (another worker may get the job).
//
// A job is pushed only when the subscription has room (fewer than its
// prefetch unreleased jobs): the server binds it to this worker when it
// grants its permit, so its lease runs from the push.
//
// Returning nil releases the job: it ends done and its permit frees.
// Returning an error (or panicking) fails this attempt (the fail frame): the
// permit frees at once, the error's text is kept on the job, and the job is
// scheduled again while attempts remain, else it ends in error. An error
// wrapped with NoRetry ends the job in error at once.
type Handler func(ctx context.Context, job Job) error

type subKey struct{ semaphore, channel string }

type subscription struct {
	semaphore, channel string
	prefetch           int
	handler            Handler
}

// Enqueue hands a job to semaphore over the websocket, like Client.Enqueue.
// When the connection drops before the reply the error is
// ErrConnectionLost and the job may have been accepted: give an
// IdempotencyKey to retry safely.
func (w *Worker) Enqueue(ctx context.Context, semaphore string, payload any, opts EnqueueOptions) (Job, error) {
	raw, err := encodePayload(payload)
	if err != nil {
		return Job{}, err
	}
	fr := enqueueFrame{Type: "enqueue", Semaphore: semaphore, Channel: opts.Channel, Payload: raw, IdempotencyKey: opts.IdempotencyKey}
	fr.Delay, fr.RunAt = opts.delayWire()
	f, err := w.call(ctx, fr)
	if err != nil {
		return Job{}, err
	}
	if f.Job == nil {
		return Job{}, fmt.Errorf("sdk: websocket: %q reply without job", f.Type)
	}
	return f.Job.toSDK(), nil
}

// Subscribe asks for the jobs of semaphore (channel "" = every channel) and
// runs handler on each, at most prefetch (1..1000; 0 = 1) at a time. For
// each job the worker acks at once, runs handler, keeps the job's lease
// alive while it runs, and releases the job when handler returns nil (see
// Handler for errors). Subscribing again replaces the prefetch and handler.
// The subscription survives reconnections: a resumed session keeps it, a
// fresh one gets it again.
func (w *Worker) Subscribe(ctx context.Context, semaphore, channel string, prefetch int, handler Handler) error {
	if handler == nil {
		return errors.New("sdk: Subscribe needs a handler")
	}
	if prefetch == 0 {
		prefetch = 1
	}
	k := subKey{semaphore, channel}
	s := &subscription{semaphore: semaphore, channel: channel, prefetch: prefetch, handler: handler}
	// registered first: the server may push a job before its reply
	w.mu.Lock()
	prev := w.subs[k]
	w.subs[k] = s
	w.mu.Unlock()
	_, _, err := w.retry(ctx, subscribeFrame{Type: "subscribe", Semaphore: semaphore, Channel: channel, Prefetch: prefetch})
	if err != nil {
		w.mu.Lock()
		if w.subs[k] == s {
			if prev != nil {
				w.subs[k] = prev
			} else {
				delete(w.subs, k)
			}
		}
		w.mu.Unlock()
	}
	return err
}

// Unsubscribe stops the jobs of semaphore and channel. Jobs already pushed
// run to their end.
func (w *Worker) Unsubscribe(ctx context.Context, semaphore, channel string) error {
	k := subKey{semaphore, channel}
	w.mu.Lock()
	s, ok := w.subs[k]
	delete(w.subs, k)
	w.mu.Unlock()
	_, retried, err := w.retry(ctx, map[string]string{"type": "unsubscribe", "semaphore": semaphore, "channel": channel})
	if err != nil && !(retried && errors.Is(err, ErrNotSubscribed)) {
		if ok && !errors.Is(err, ErrNotSubscribed) {
			w.mu.Lock()
			if _, again := w.subs[k]; !again {
				w.subs[k] = s
			}
			w.mu.Unlock()
		}
		return err
	}
	return nil
}

// jobRun is one delivery of a job the worker runs.
type jobRun struct {
	job     Job
	ctx     context.Context
	cancel  context.CancelCauseFunc
	lease   *heldLease  // the keep-alive of the job's lease
	refused atomic.Bool // the server refused the ack
}

// ackPrefix starts the id of an ack frame: "ack:<job>:<lease>", so that an
// error reply names the delivery it refuses.
const ackPrefix = "ack:"

// onJob acks a pushed job and runs it.
func (w *Worker) onJob(c *wsConn, f inFrame) {
	if f.Job == nil || f.Job.Lease == nil {
		return
	}
	j := f.Job.toSDK()
	// The lease was granted before the server pushed the job, at a time
	// this process cannot know: the frame's arrival is the earliest time
	// it has to count the lease's deadline from (see keepAlive).
	received := time.Now()
	w.mu.Lock()
	s := w.subs[subKey{j.Semaphore, j.Channel}]
	if s == nil {
		s = w.subs[subKey{j.Semaphore, ""}]
	}
	if s == nil || w.closing {
		w.mu.Unlock()
		return // no ack: the server offers it elsewhere
	}
	var run *jobRun
	if prev := w.running[j.ID]; prev == nil || prev.job.Lease.ID != j.Lease.ID {
		run = &jobRun{job: j}
		run.ctx, run.cancel = context.WithCancelCause(w.jobCtx)
		run.lease = newHeldLease(w.ctx, j.Lease.ID, received, leaseTTL(0, *j.Lease))
		w.running[j.ID] = run
		w.jobs.Add(1)
	}
	w.mu.Unlock()
	err := c.write(map[string]string{"type": "ack", "id": ackPrefix + j.ID + ":" + j.Lease.ID, "job": j.ID})
	if run == nil {
		return // pushed again while it runs: acked again
	}
	if err != nil {
		// not acked: the server offers it elsewhere
		w.forget(run)
		run.cancel(context.Canceled)
		run.lease.markStopped()
		w.jobs.Done()
		return
	}
	go w.runJob(s.handler, run)
}

// onAckRefused stops the run of a delivery whose ack the server refused.
func (w *Worker) onAckRefused(id string) {
	jobID, leaseID, ok := strings.Cut(strings.TrimPrefix(id, ackPrefix), ":")
	if !ok {
		return
	}
	w.mu.Lock()
	run := w.running[jobID]
	w.mu.Unlock()
	if run != nil && run.job.Lease.ID == leaseID {
		run.refused.Store(true)
		run.cancel(ErrAckRefused)
	}
}

func (w *Worker) forget(run *jobRun) {
	w.mu.Lock()
	if w.running[run.job.ID] == run {
		delete(w.running, run.job.ID)
	}
	w.mu.Unlock()
}

// runJob runs the handler of a job, keeping its lease alive, and releases
// the job when the handler returns nil.
func (w *Worker) runJob(h Handler, run *jobRun) {
	defer w.jobs.Done()
	defer w.forget(run)
	j, kl := run.job, run.lease
	defer run.cancel(context.Canceled)
	go kl.keepAlive(w, func() { run.cancel(fmt.Errorf("%w: %s", ErrLeaseLost, j.Lease.ID)) })
	stop := func() {
		kl.markStopped()
		<-kl.done
	}
	err := runHandler(run.ctx, h, j)
	if !kl.isLost() && !run.refused.Load() {
		// keep the lease alive until the release (or fail) went through
		ttl, _ := kl.state()
		frame := map[string]any{"type": "release", "job": j.ID}
		if err != nil {
			w.cfg.log.Warn("semaphored worker: handler failed; the job is failed for this attempt", "job", j.ID, "err", err)
			frame = map[string]any{"type": "fail", "job": j.ID, "error": err.Error(), "retry": !errors.Is(err, errNoRetry)}
		}
		err = w.settleJob(j, ttl, frame)
		stop()
		if err != nil {
			w.cfg.log.Warn("semaphored worker: settling a job failed; its lease expires", "job", j.ID, "type", frame["type"], "err", err)
		}
		return
	}
	stop()
	switch {
	case run.refused.Load():
		w.cfg.log.Warn("semaphored worker: the server refused the ack of a job; not released", "job", j.ID)
	default:
		w.cfg.log.Warn("semaphored worker: job lease lost while its handler ran", "job", j.ID, "err", err)
	}
}

// errNoRetry marks a handler's error that ends its job for good (NoRetry).
var errNoRetry = errors.New("no retry")

type noRetryError struct{ err error }

func (e noRetryError) Error() string   { return e.err.Error() }
func (e noRetryError) Unwrap() []error { return []error{e.err, errNoRetry} }

// NoRetry wraps a handler's error so that the job ends in error at once
// (fail with retry false), however many attempts it has left.
func NoRetry(err error) error {
	if err == nil {
		return nil
	}
	return noRetryError{err}
}

func runHandler(ctx context.Context, h Handler, j Job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sdk: handler panicked: %v", r)
		}
	}()
	return h(ctx, j)
}

// settleJob sends the release (handler succeeded) or fail (handler
// failed) frame of a job. After a lost connection it first checks, by
// extending the job's lease, that the job still has the lease of this
// delivery, so that a late frame never ends a delivery to another worker.
func (w *Worker) settleJob(j Job, ttl time.Duration, frame map[string]any) error {
	check := false
	for {
		if check {
			_, err := w.call(w.ctx, extendFrame{Type: "extend", Lease: j.Lease.ID, TTL: duration(ttl)})
			switch {
			case errors.Is(err, ErrConnectionLost):
				continue
			case IsLeaseNotFound(err):
				return nil // it moved on: retried, or ended by onSessionLost
			case err != nil:
				return err
			}
		}
		_, err := w.call(w.ctx, frame)
		switch {
		case err == nil, IsJobNotFound(err), IsInvalidState(err):
			return nil
		case errors.Is(err, ErrConnectionLost):
			check = true
		default:
			return err
		}
	}
}

func encodePayload(payload any) (json.RawMessage, error) {
	var raw json.RawMessage
	switch p := payload.(type) {
	case json.RawMessage:
		raw = p
	case []byte:
		raw = p
	default:
		b, err := json.Marshal(payload)
		if err != nil {
			return nil, fmt.Errorf("sdk: encode payload: %w", err)
		}
		raw = b
	}
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	if !json.Valid(raw) {
		return nil, errors.New("sdk: payload is not valid JSON")
	}
	return raw, nil
}
