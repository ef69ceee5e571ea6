package semaphore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/semaphored/semaphored/store"
)

// Limits of async jobs (SPEC §3).
const (
	DefaultMaxQueued       = 1_000_000
	DefaultMaxPayloadBytes = 256 << 10
)

// CodePayloadTooLarge is the validation code of a payload over the limit
// (HTTP 413).
const CodePayloadTooLarge = "payload_too_large"

// CodeInvalidState is the code of a request the jobs' status does not
// allow (HTTP 409), such as purging inflight jobs.
const CodeInvalidState = "invalid_state"

// EnqueueInput is an enqueue request as a client sends it.
type EnqueueInput struct {
	Channel        string          // "": store.DefaultChannel
	Payload        json.RawMessage // required: any JSON value (null included)
	IdempotencyKey string
	// Delay (0 to MaxDelay) or RunAt (at most MaxDelay ahead; a past one
	// is now), not both: the job waits scheduled until then.
	Delay *time.Duration
	RunAt *time.Time
}

// MaxDelay is how far ahead a job may be scheduled (delay, runAt).
const MaxDelay = 30 * 24 * time.Hour

// Enqueue accepts a job (SPEC §3): it waits in its channel's queue until a
// permit frees, then goes down the semaphore's route chain. created is false
// when the idempotency key matched an existing job.
func (s *Service) Enqueue(ctx context.Context, tenant, name string, in EnqueueInput) (job store.Job, created bool, err error) {
	if err := checkName("semaphore", name); err != nil {
		return store.Job{}, false, err
	}
	it, err := s.checkEnqueue(in)
	if err != nil {
		return store.Job{}, false, err
	}
	job, created, err = s.store.EnqueueJob(ctx, store.EnqueueParams{
		Tenant: tenant, Semaphore: name, Channel: it.Channel, Payload: it.Payload,
		IdempotencyKey: it.IdempotencyKey, MaxQueued: s.maxQueued, Delay: it.Delay,
	})
	if err == nil && created {
		s.metrics.jobsEnqueued.Inc()
	}
	return job, created, err
}

// MaxEnqueueBatch is the most jobs one batch enqueue takes.
const MaxEnqueueBatch = 1000

// BatchItemError is the refusal of one job of a batch enqueue: Index is
// its place in the batch (from 0). It wraps the job's ValidationError,
// whose field and message name it ("jobs[3].payload").
type BatchItemError struct {
	Index int
	Err   *ValidationError
}

func (e *BatchItemError) Error() string { return e.Err.Error() }
func (e *BatchItemError) Unwrap() error { return e.Err }

// EnqueueBatch accepts up to MaxEnqueueBatch jobs into one semaphore in one
// atomic operation, all or nothing (OpenAPI enqueueJob, the README): every job is
// checked first, and a bad one refuses the batch with a BatchItemError; a
// batch whose new jobs do not all fit under the queue limit is refused
// with store.ErrQueueFull. The results are in the batch's order.
func (s *Service) EnqueueBatch(ctx context.Context, tenant, name string, in []EnqueueInput) ([]store.EnqueueResult, error) {
	if err := checkName("semaphore", name); err != nil {
		return nil, err
	}
	if len(in) == 0 || len(in) > MaxEnqueueBatch {
		return nil, invalid(CodeInvalidRequest, "jobs", "jobs must hold 1 to %d jobs, got %d", MaxEnqueueBatch, len(in))
	}
	items := make([]store.EnqueueItem, len(in))
	for i, x := range in {
		it, err := s.checkEnqueue(x)
		if err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				at := fmt.Sprintf("jobs[%d]", i)
				return nil, &BatchItemError{Index: i, Err: &ValidationError{
					Code: ve.Code, Field: at + "." + ve.Field, Message: at + ": " + ve.Message,
				}}
			}
			return nil, err
		}
		items[i] = it
	}
	res, err := s.store.EnqueueJobs(ctx, store.EnqueueBatchParams{
		Tenant: tenant, Semaphore: name, Jobs: items, MaxQueued: s.maxQueued,
	})
	if err != nil {
		return nil, err
	}
	for _, r := range res {
		if r.Created {
			s.metrics.jobsEnqueued.Inc()
		}
	}
	return res, nil
}

// checkEnqueue validates one job as a client sends it.
func (s *Service) checkEnqueue(in EnqueueInput) (store.EnqueueItem, error) {
	channel, err := channelOrDefault(in.Channel)
	if err != nil {
		return store.EnqueueItem{}, err
	}
	payload := bytes.TrimSpace(in.Payload)
	if len(payload) == 0 {
		return store.EnqueueItem{}, invalid(CodeInvalidRequest, "payload", "payload is required (any JSON value)")
	}
	if !json.Valid(payload) {
		return store.EnqueueItem{}, invalid(CodeInvalidRequest, "payload", "payload is not valid JSON")
	}
	if len(payload) > s.maxPayloadBytes {
		return store.EnqueueItem{}, invalid(CodePayloadTooLarge, "payload", "payload is %d bytes, more than the limit of %d", len(payload), s.maxPayloadBytes)
	}
	if err := checkPayloadNumbers(payload); err != nil {
		return store.EnqueueItem{}, err
	}
	if err := checkIdempotencyKey(in.IdempotencyKey); err != nil {
		return store.EnqueueItem{}, err
	}
	delay, err := checkDelay(in.Delay, in.RunAt)
	if err != nil {
		return store.EnqueueItem{}, err
	}
	return store.EnqueueItem{Channel: channel, Payload: payload, IdempotencyKey: in.IdempotencyKey, Delay: delay}, nil
}

// checkDelay returns how long a job waits before it queues: delay, or the
// time until runAt by this instance's clock (the store then counts from
// its own).
func checkDelay(delay *time.Duration, runAt *time.Time) (time.Duration, error) {
	switch {
	case delay != nil && runAt != nil:
		return 0, invalid(CodeInvalidRequest, "delay", "give delay or runAt, not both")
	case delay != nil:
		if *delay < 0 || *delay > MaxDelay {
			return 0, invalid(CodeInvalidRequest, "delay", "delay must be between 0s and %s (30 days), got %s", MaxDelay, *delay)
		}
		return *delay, nil
	case runAt != nil:
		d := time.Until(*runAt)
		if d > MaxDelay {
			return 0, invalid(CodeInvalidRequest, "runAt", "runAt must be at most 30 days ahead, got %s", runAt.UTC().Format(time.RFC3339))
		}
		return max(d, 0), nil
	}
	return 0, nil
}

// GetJob returns a job of the tenant.
func (s *Service) GetJob(ctx context.Context, tenant, id string) (store.Job, error) {
	if _, ok := store.ParseJobID(id); !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	return s.store.GetJob(ctx, tenant, id)
}

// ListJobsInput filters and pages a semaphore's jobs.
type ListJobsInput struct {
	Status  string
	Channel string
	Cursor  string
	Limit   int
}

// ListJobs lists a semaphore's jobs, oldest first.
func (s *Service) ListJobs(ctx context.Context, tenant, name string, in ListJobsInput) ([]store.Job, string, error) {
	if !ValidName(name) {
		return nil, "", store.ErrSemaphoreNotFound
	}
	limit, err := checkListLimit(in.Limit)
	if err != nil {
		return nil, "", err
	}
	status := store.JobStatus(in.Status)
	if in.Status != "" && !status.Valid() {
		return nil, "", invalid(CodeInvalidRequest, "status", "status must be one of scheduled, inflight, done, error, timeout, cancelled, got %q", truncate(in.Status, 64))
	}
	if in.Channel != "" {
		if err := checkChannel(in.Channel); err != nil {
			return nil, "", err
		}
	}
	after, err := decodeCursor(cursorJobs, in.Cursor, validSeq)
	if err != nil {
		return nil, "", err
	}
	if _, err := s.store.GetSemaphore(ctx, tenant, name); err != nil {
		return nil, "", err
	}
	jobs, next, err := s.store.ListJobs(ctx, store.ListJobsParams{
		Tenant: tenant, Semaphore: name, Status: status, Channel: in.Channel, Cursor: after, Limit: limit,
	})
	return jobs, encodeCursor(cursorJobs, next), err
}

// ReleaseJob ends an inflight job as done, freeing its permit.
func (s *Service) ReleaseJob(ctx context.Context, tenant, id string) (store.Job, error) {
	return s.transitionJob(ctx, tenant, id, store.ActRelease)
}

// ReleaseHeldJob is ReleaseJob of a worker that holds the job under lease
// ("": not known): a job that moved on to another lease is
// store.ErrStaleLease, and nothing changes.
func (s *Service) ReleaseHeldJob(ctx context.Context, tenant, id, lease string) (store.Job, error) {
	if _, ok := store.ParseJobID(id); !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	return s.store.TransitionJob(ctx, store.TransitionParams{Tenant: tenant, JobID: id, Action: store.ActRelease, LeaseID: lease})
}

// MaxFailError bounds the message a worker's fail keeps on its job (bytes;
// a longer one is cut at a character boundary).
const MaxFailError = 1024

// FailJob ends a worker's attempt at an inflight job now (the fail frame),
// under the lease it holds the job by ("": not known):
// its permit frees, msg (cut to MaxFailError) is kept on the job, and the
// job is scheduled again while attempts remain, else it ends in error;
// with retry false it ends in error at once.
func (s *Service) FailJob(ctx context.Context, tenant, id, lease, msg string, retry bool) (store.Job, error) {
	if _, ok := store.ParseJobID(id); !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	act := store.ActFailRetry
	if !retry {
		act = store.ActFail
	}
	if msg == "" {
		msg = "failed by the worker"
	}
	return s.store.TransitionJob(ctx, store.TransitionParams{Tenant: tenant, JobID: id, Action: act, LeaseID: lease, Error: cutUTF8(msg, MaxFailError)})
}

// cutUTF8 returns at most n bytes of s, not splitting a character.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// CancelJob cancels a scheduled or inflight job.
func (s *Service) CancelJob(ctx context.Context, tenant, id string) (store.Job, error) {
	return s.transitionJob(ctx, tenant, id, store.ActCancel)
}

// RequeueJob schedules a terminal job again at the back of its queue.
func (s *Service) RequeueJob(ctx context.Context, tenant, id string) (store.Job, error) {
	return s.transitionJob(ctx, tenant, id, store.ActRequeue)
}

func (s *Service) transitionJob(ctx context.Context, tenant, id string, act store.JobAction) (store.Job, error) {
	if _, ok := store.ParseJobID(id); !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	// a job that ends here comes back to the dispatcher in JobEvents.Finished
	return s.store.TransitionJob(ctx, store.TransitionParams{Tenant: tenant, JobID: id, Action: act})
}

// PurgeJobsInput selects the jobs PurgeJobs deletes.
type PurgeJobsInput struct {
	Status  string // scheduled, or a terminal status
	Channel string // "": every channel
}

// PurgeJobs deletes a semaphore's jobs in one status (scheduled, or a
// terminal one), of one channel or of all, and returns how many. Inflight
// jobs hold permits and are refused (CodeInvalidState).
func (s *Service) PurgeJobs(ctx context.Context, tenant, name string, in PurgeJobsInput) (int, error) {
	if !ValidName(name) {
		return 0, store.ErrSemaphoreNotFound
	}
	st := store.JobStatus(in.Status)
	if st == store.JobInflight {
		return 0, invalid(CodeInvalidState, "status", "inflight jobs hold permits and cannot be purged: release or cancel them")
	}
	if !st.Purgeable() {
		return 0, invalid(CodeInvalidRequest, "status", "status must be scheduled or a terminal status (done, error, timeout, cancelled), got %q", truncate(in.Status, 64))
	}
	if in.Channel != "" {
		if err := checkChannel(in.Channel); err != nil {
			return 0, err
		}
	}
	if _, err := s.store.GetSemaphore(ctx, tenant, name); err != nil {
		return 0, err
	}
	return s.store.PurgeJobs(ctx, store.PurgeJobsParams{Tenant: tenant, Semaphore: name, Status: st, Channel: in.Channel})
}
