package store

import (
	"context"
	"errors"
	"time"
)

// Errors of the job operations.
var (
	ErrJobNotFound  = errors.New("store: job not found")   // unknown job in the tenant
	ErrInvalidState = errors.New("store: invalid state")   // the transition does not apply to the job's status
	ErrQueueFull    = errors.New("store: queue full")      // MaxQueued scheduled jobs already
	ErrStaleLease   = errors.New("store: stale job lease") // the job is no longer held by that lease (expired and redelivered, released, ...)
)

// Messages both stores give, written once (the Redis store's scripts get
// them generated, see store/redis/consts.go).
const (
	// MsgInvalidTransition formats an ErrInvalidState of a transition:
	// action, then the job's status ("release of a done job").
	MsgInvalidTransition = "%s of a %s job"
	// MsgGaveUp formats the error of a job whose lease expired with its
	// attempts exhausted (ActRetry without a message): the attempts.
	MsgGaveUp = "gave up after %d attempts"
)

// JobStatus is where a job is in its life (SPEC §1).
type JobStatus string

const (
	JobScheduled JobStatus = "scheduled" // waiting in its channel's queue for a permit
	JobInflight  JobStatus = "inflight"  // holds a permit (Lease), being delivered or worked on
	JobDone      JobStatus = "done"      // released by the worker (terminal)
	JobError     JobStatus = "error"     // every route failed, or mapping failed (terminal)
	JobTimeout   JobStatus = "timeout"   // lease expired with attempts exhausted (terminal)
	JobCancelled JobStatus = "cancelled" // cancelled (terminal)
)

// Terminal reports whether s is a terminal status (holds no permit).
func (s JobStatus) Terminal() bool {
	return s == JobDone || s == JobError || s == JobTimeout || s == JobCancelled
}

// Valid reports whether s is one of the six statuses.
func (s JobStatus) Valid() bool { return s == JobScheduled || s == JobInflight || s.Terminal() }

// JobRef points at a job in another semaphore of the same tenant.
type JobRef struct {
	Semaphore string
	ID        string
	// Hold is set on a child job whose parent keeps its permit until the
	// child ends (semaphore route with release: false).
	Hold bool
}

// Job is an async work item. Its id carries its semaphore's name, like a
// lease id (NewJobID), so stores find its slot from the id alone.
type Job struct {
	Tenant         string // the tenant the job belongs to (set on every job a store returns or reports)
	ID             string
	Semaphore      string
	Channel        string
	Payload        []byte // raw JSON, as accepted
	Status         JobStatus
	Attempts       int    // dispatches so far (incremented when the job takes a permit)
	Lease          *Lease // the permit it holds, while inflight
	Route          string // route that accepted it ("websocket", "https", "semaphore"), "" before
	Error          string // why it ended in error or timeout
	IdempotencyKey string
	Parent         *JobRef // set on a child job created by a semaphore route
	Child          *JobRef // set on a parent that handed off to a child job
	// Worker is the session an inflight job is bound to (dispatched to it
	// by room, see WorkerRoute), with the node holding its connection when
	// it was dispatched; nil when the job is not bound to a session.
	Worker     *Worker
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt time.Time // zero until terminal
	// RunAt: a scheduled job that waits for its time (a delay, or its
	// retry backoff) queues at RunAt (store clock); zero otherwise.
	RunAt time.Time
}

// NewJobID returns a fresh job id carrying the semaphore's name.
func NewJobID(semaphore string) string { return NewLeaseID(semaphore) }

// ParseJobID returns the semaphore name carried by a job id.
func ParseJobID(id string) (semaphore string, ok bool) { return ParseLeaseID(id) }

// EnqueueParams are the inputs of EnqueueJob.
type EnqueueParams struct {
	Tenant         string
	Semaphore      string
	Channel        string // "" = DefaultChannel
	Payload        []byte // raw JSON
	IdempotencyKey string // same key while the job exists → the same job, created=false
	MaxQueued      int64  // ErrQueueFull when the semaphore already has this many scheduled jobs (0 = no limit)
	Parent         *JobRef
	// Delay: the job waits scheduled (RunAt = now + Delay, store clock)
	// before it queues; it then queues in the order of its RunAt, ahead of
	// the jobs enqueued after that instant. ≤ 0: it queues now.
	Delay time.Duration
}

// EnqueueItem is one job of EnqueueJobs.
type EnqueueItem struct {
	Channel        string        // "" = DefaultChannel
	Payload        []byte        // raw JSON
	IdempotencyKey string        // as in EnqueueParams; also matches an earlier item of the same batch
	Delay          time.Duration // as in EnqueueParams
}

// EnqueueBatchParams are the inputs of EnqueueJobs.
type EnqueueBatchParams struct {
	Tenant    string
	Semaphore string
	Jobs      []EnqueueItem // at least one
	// MaxQueued: ErrQueueFull, and nothing enqueued, when the jobs the batch
	// creates do not all fit under this many scheduled jobs (0 = no limit).
	MaxQueued int64
}

// EnqueueResult is the outcome of one item of EnqueueJobs.
type EnqueueResult struct {
	Job     Job
	Created bool // false: the item's idempotency key matched an existing job (or an earlier item)
}

// DispatchParams are the inputs of DispatchJobs.
type DispatchParams struct {
	Tenant    string
	Semaphore string
	Max       int // at most this many jobs (≤0: DefaultDispatchBatch)
}

// DefaultDispatchBatch bounds how many jobs one atomic operation dispatches.
const DefaultDispatchBatch = 64

// ListJobsParams pages through a semaphore's jobs, oldest first.
type ListJobsParams struct {
	Tenant    string
	Semaphore string
	Status    JobStatus // "" = any
	Channel   string    // "" = any
	Cursor    string    // opaque, "" = start
	Limit     int       // ≤0: 100
}

// JobAction is a transition of TransitionJob.
type JobAction string

const (
	// ActDelivered records that Route accepted the inflight job (it stays
	// inflight). With HoldTTL > 0 the job's lease is set to expire in
	// HoldTTL (a parent holding its permit for a child job). With Bind the
	// job's lease is bound to a websocket session (TransitionParams.Bind).
	ActDelivered JobAction = "delivered"
	// ActRelease: inflight → done; the permit is freed.
	ActRelease JobAction = "release"
	// ActFail: inflight → error with Error; the permit is freed.
	ActFail JobAction = "fail"
	// ActFailRetry: a worker failed this attempt (the fail frame), or the
	// route chain failed: the permit is freed and Error kept on the job;
	// inflight → scheduled (after its retry backoff, at least MinDelay) if
	// Attempts < maxAttempts, else → error.
	ActFailRetry JobAction = "failretry"
	// ActRetry: inflight → scheduled (after its retry backoff) if Attempts <
	// maxAttempts, else → timeout (Error set); the permit is freed. Used when
	// a websocket session holding the job is lost (onSessionLost release).
	ActRetry JobAction = "retry"
	// ActSuspend: inflight → scheduled at the head of its queue and the
	// semaphore suspended (onDeliveryError suspend); the permit is freed and
	// the attempt not counted.
	ActSuspend JobAction = "suspend"
	// ActCancel: scheduled or inflight → cancelled; an inflight job's permit
	// is freed.
	ActCancel JobAction = "cancel"
	// ActRequeue: a terminal job → scheduled at the back of its queue,
	// attempts reset to 0, error cleared.
	ActRequeue JobAction = "requeue"
	// ActReturn: inflight → scheduled at the head of its queue, the
	// attempt not counted, the permit freed: the delivery never reached a
	// worker (the session it was bound to was gone or did not ack).
	ActReturn JobAction = "return"
	// ActHandOff: the inflight job was handed to Child (semaphore route).
	// With Child.Hold false it ends done at once (permit freed); with Hold
	// true it stays inflight with its lease set to HoldTTL, until
	// ActRelease/ActFail when the child ends.
	ActHandOff JobAction = "handoff"
)

// TransitionParams are the inputs of TransitionJob.
type TransitionParams struct {
	Tenant  string
	JobID   string
	Action  JobAction
	LeaseID string        // when set, the job must still hold this lease, else ErrStaleLease
	Route   string        // ActDelivered, ActHandOff; ActRelease (a route that accepted and released at once)
	Error   string        // ActFail, ActFailRetry
	HoldTTL time.Duration // ActDelivered, ActHandOff with Child.Hold
	// MinDelay, with ActFailRetry: the retry waits at least this long
	// (a webhook's Retry-After), however short its backoff.
	MinDelay time.Duration
	Child    *JobRef // ActHandOff
	// Bind, with ActDelivered: the websocket session that took the job.
	// The job's lease is bound to it in the same atomic operation (it
	// counts on the session's subscription Bind.Channel of the job's
	// semaphore in Subscribers, and the session's end finds it), and
	// unbound by whatever ends the lease (release, expiry, any other
	// transition). ActDelivered without Bind drops an earlier binding. The
	// session has recorded the semaphore (Subscribe or UseSemaphore).
	Bind *SessionBinding
	// Quiet: the caller does not use the returned job, only the error; a
	// store may return a zero Job (and spare reading it back).
	Quiet bool
}

// RouteWebsocket is the route of a job dispatched to a worker session
// (WorkerRoute).
const RouteWebsocket = "websocket"

// Worker is the websocket session a job is bound to.
type Worker struct {
	Session string
	Channel string // the channel of the subscription it came through ("" = every channel)
	Node    string // the node that held the session's connection at dispatch
}

// SessionBinding names the websocket session a job was delivered to and
// the channel of the subscription it came through ("" = every channel).
type SessionBinding struct {
	Session string
	Channel string
}

// JobEvents is what one atomic operation did to jobs beyond its own result.
// A store hands it to the listener set with SetJobListener, synchronously in
// the goroutine that called the operation, after the operation committed and
// outside any lock of the store. A listener must not block.
type JobEvents struct {
	// Dispatched jobs moved scheduled → inflight, each with its new Lease:
	// the caller's instance delivers them. If nobody does (no listener, a
	// crash), the lease expires and the job is retried: never lost.
	Dispatched []Job
	// Finished jobs reached a terminal state inside the operation (timeout
	// by expiry, cancel, ...), for parent bookkeeping and metrics.
	// The operation's own job is included (the target of TransitionJob,
	// the job whose lease Release ended).
	Finished []Job
}

// JobStore is the async half of the storage contract (README "Async jobs"
// and "Guarantees"). Every operation that frees or adds a permit, room or a
// job (Release, Sweep, PutSemaphore, SetSuspended(false), EnqueueJob,
// TransitionJob, Subscribe, ResumeSession) also dispatches, in the same
// atomic operation, up to DefaultDispatchBatch scheduled jobs that now fit,
// and reports them in JobEvents.Dispatched. Dispatch order: channels with
// scheduled jobs served round-robin (a cursor per semaphore), FIFO within a
// channel; a job takes a permit of weight 1 and a lease of the semaphore's
// leaseTimeout; nothing is dispatched while the semaphore is suspended or
// while sync waiters queue in the job's capacity domain (live callers
// first); with a worker route, only to a session with room (WorkerRoute).
// A delayed job (EnqueueParams.Delay, a retry backoff) joins its queue at
// its RunAt, by a timer of the store.
//
// A job's lease expiring counts as an attempt: the job is scheduled again
// (after its RetryPolicy backoff) while Attempts < maxAttempts, else ends in
// timeout. A job in a
// terminal state holds no permit. Terminal jobs are kept for the
// semaphore's Retention of their status, then forgotten (see Retention).
// DeleteSemaphore deletes its jobs.
//
// State counts Queued (scheduled jobs) and Inflight (inflight jobs) per
// channel and in total; an inflight job's permit counts in InUse like any
// lease.
type JobStore interface {
	// EnqueueJob adds a scheduled job at the back of its channel's queue
	// (ErrSemaphoreNotFound, ErrQueueFull).
	// The job is returned as it is at the end of the operation (inflight
	// when dispatched at once); an idempotent replay is never ErrQueueFull.
	EnqueueJob(ctx context.Context, p EnqueueParams) (job Job, created bool, err error)
	// EnqueueJobs adds the jobs of a batch in order, in one atomic
	// operation, all or nothing: ErrSemaphoreNotFound, or ErrQueueFull when
	// the jobs it creates do not all fit under MaxQueued. One result per
	// item, in order, each job as at the end of the operation. An item whose
	// idempotency key matches an existing job, or an earlier item of the
	// batch, creates nothing and returns that job.
	EnqueueJobs(ctx context.Context, p EnqueueBatchParams) ([]EnqueueResult, error)
	// DispatchJobs dispatches what fits now (also reported in JobEvents).
	DispatchJobs(ctx context.Context, p DispatchParams) ([]Job, error)
	// GetJob returns ErrJobNotFound for an unknown (or forgotten) job.
	GetJob(ctx context.Context, tenant, id string) (Job, error)
	// ListJobs lists a semaphore's jobs oldest first.
	ListJobs(ctx context.Context, p ListJobsParams) (jobs []Job, nextCursor string, err error)
	// TransitionJob applies one action atomically (ErrJobNotFound,
	// ErrInvalidState, ErrStaleLease) and returns the job after it.
	// ErrStaleLease is checked before the status, whatever the action.
	TransitionJob(ctx context.Context, p TransitionParams) (Job, error)
	// PurgeJobs deletes the semaphore's jobs in p.Status (scheduled or a
	// terminal one; else ErrInvalidState), of one channel or of all, and
	// returns how many (ErrSemaphoreNotFound).
	PurgeJobs(ctx context.Context, p PurgeJobsParams) (int, error)
	// SetJobListener sets the listener of JobEvents (nil: none).
	SetJobListener(func(JobEvents))
}

// PurgeJobsParams are the inputs of PurgeJobs.
type PurgeJobsParams struct {
	Tenant    string
	Semaphore string
	Status    JobStatus // JobScheduled or a terminal status
	Channel   string    // "" = every channel
}

// Purgeable reports whether jobs in status s can be purged: scheduled
// and terminal ones (inflight jobs hold permits).
func (s JobStatus) Purgeable() bool { return s == JobScheduled || s.Terminal() }
