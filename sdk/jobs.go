package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// JobStatus is where an async job is in its life.
type JobStatus string

// Job statuses: scheduled → inflight → one terminal status.
const (
	JobScheduled JobStatus = "scheduled" // waiting in its channel's queue for a permit
	JobInflight  JobStatus = "inflight"  // holds a permit, delivered or being delivered
	JobDone      JobStatus = "done"      // released (terminal)
	JobError     JobStatus = "error"     // every route failed, or the mapping failed (terminal)
	JobTimeout   JobStatus = "timeout"   // its lease expired with attempts exhausted (terminal)
	JobCancelled JobStatus = "cancelled" // cancelled (terminal)
)

// Terminal reports whether s is a terminal status (the job holds no
// permit and changes no more, unless requeued).
func (s JobStatus) Terminal() bool {
	return s == JobDone || s == JobError || s == JobTimeout || s == JobCancelled
}

// JobRef points at a related job: the parent of a child job a semaphore
// route created, or the child a parent handed off to.
type JobRef struct {
	ID        string
	Semaphore string
	Hold      bool // the parent keeps its permit until the child ends (route release: false)
}

// Job is an async work item. Its ID is the same on every delivery:
// receivers de-duplicate by it.
type Job struct {
	ID         string
	Semaphore  string
	Channel    string
	Payload    json.RawMessage // the JSON value given at enqueue
	Status     JobStatus
	Attempts   int     // dispatches so far (each takes a permit); reset by RequeueJob
	Lease      *Lease  // the permit, while inflight
	Route      string  // type of the route that accepted it ("websocket", "https", "semaphore"); "" before
	Error      string  // why it ended in error or timeout
	Parent     *JobRef // set on a child job made by a semaphore route
	Child      *JobRef // set on a job handed to a semaphore route
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt time.Time // zero until terminal
	// RunAt: when a scheduled job waiting for its time (a Delay or RunAt at
	// enqueue, or its retry backoff) queues; zero otherwise.
	RunAt time.Time
}

// EnqueueOptions are the optional inputs of Enqueue.
type EnqueueOptions struct {
	Channel string // "" = "default"
	// IdempotencyKey: while the job exists, an Enqueue with the same key
	// returns that job instead of a new one (never ErrQueueFull). It also
	// lets the HTTP transport send the request again when a kept-alive
	// connection turns out to be closed (a server restart): without a key
	// that case is an error, since the job may or may not exist.
	IdempotencyKey string
	// Delay (up to 30 days) or RunAt (at most 30 days ahead), not both:
	// the job waits scheduled until then, then queues in the order of its
	// time.
	Delay time.Duration
	RunAt time.Time
}

// delayWire is the delay and runAt of opts as sent.
func (o EnqueueOptions) delayWire() (*duration, *time.Time) {
	var d *duration
	var at *time.Time
	if o.Delay != 0 {
		x := duration(o.Delay)
		d = &x
	}
	if !o.RunAt.IsZero() {
		x := o.RunAt
		at = &x
	}
	return d, at
}

// ListJobsOptions filter and page ListJobs. Zero values: every status and
// channel, the first page, the server's page size.
type ListJobsOptions struct {
	Status  JobStatus
	Channel string
	Cursor  string // "" = first page; then the previous page's NextCursor
	Limit   int
}

// JobPage is one page of ListJobs, oldest first. NextCursor is "" on the
// last page.
type JobPage struct {
	Jobs       []Job
	NextCursor string
}

// ---- jobs (worker key) ----

// Enqueue hands a job to semaphore: it waits in its channel's queue until a
// permit frees, then is delivered along the semaphore's routes. payload is
// encoded as JSON (a json.RawMessage or []byte of JSON is sent as is; nil is
// null). A full queue → IsQueueFull; a payload over the server's limit
// (256 KiB by default) → ErrPayloadTooLarge.
func (c *Client) Enqueue(ctx context.Context, semaphore string, payload any, opts EnqueueOptions) (Job, error) {
	raw, err := encodePayload(payload)
	if err != nil {
		return Job{}, err
	}
	in := enqueueWire{Channel: opts.Channel, Payload: raw, IdempotencyKey: opts.IdempotencyKey}
	in.Delay, in.RunAt = opts.delayWire()
	return c.jobCall(ctx, http.MethodPost, c.endpoint(nil, "v1", "semaphores", semaphore, "jobs"), in)
}

// MaxEnqueueBatch is the most jobs one EnqueueBatch takes.
const MaxEnqueueBatch = 1000

// BatchJob is one job of EnqueueBatch: its payload (encoded as for
// Enqueue) and options.
type BatchJob struct {
	Payload any
	EnqueueOptions
}

// EnqueueBatch hands 1 to MaxEnqueueBatch jobs to semaphore in one request
// and one atomic operation, all or nothing: it returns the jobs in the
// batch's order (a job whose idempotency key names an existing job, or an
// earlier job of the batch, is that job). A bad job refuses the batch: an
// *APIError with Index set to its place; new jobs that do not all fit in
// the queue → IsQueueFull, and nothing is enqueued. The request body is
// bounded by the server's --max-body (1 MiB by default).
func (c *Client) EnqueueBatch(ctx context.Context, semaphore string, jobs []BatchJob) ([]Job, error) {
	in := batchWire{Jobs: make([]enqueueWire, len(jobs))}
	for i, j := range jobs {
		raw, err := encodePayload(j.Payload)
		if err != nil {
			return nil, fmt.Errorf("jobs[%d]: %w", i, err)
		}
		in.Jobs[i] = enqueueWire{Channel: j.Channel, Payload: raw, IdempotencyKey: j.IdempotencyKey}
		in.Jobs[i].Delay, in.Jobs[i].RunAt = j.delayWire()
	}
	var out struct {
		Jobs []jobWire `json:"jobs"`
	}
	if err := c.do(ctx, http.MethodPost, c.endpoint(nil, "v1", "semaphores", semaphore, "jobs"), in, &out); err != nil {
		return nil, err
	}
	res := make([]Job, len(out.Jobs))
	for i, j := range out.Jobs {
		res[i] = j.toSDK()
	}
	return res, nil
}

// GetJob returns a job of the caller's tenant; an unknown (or forgotten)
// job → IsJobNotFound.
func (c *Client) GetJob(ctx context.Context, id string) (Job, error) {
	return c.jobCall(ctx, http.MethodGet, c.endpoint(nil, "v1", "jobs", id), nil)
}

// ListJobs returns one page of a semaphore's jobs, oldest first.
func (c *Client) ListJobs(ctx context.Context, semaphore string, opts ListJobsOptions) (JobPage, error) {
	q := url.Values{}
	if opts.Status != "" {
		q.Set("status", string(opts.Status))
	}
	if opts.Channel != "" {
		q.Set("channel", opts.Channel)
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	var out struct {
		Jobs       []jobWire `json:"jobs"`
		NextCursor string    `json:"nextCursor"`
	}
	if err := c.do(ctx, http.MethodGet, c.endpoint(q, "v1", "semaphores", semaphore, "jobs"), nil, &out); err != nil {
		return JobPage{}, err
	}
	page := JobPage{Jobs: make([]Job, 0, len(out.Jobs)), NextCursor: out.NextCursor}
	for _, j := range out.Jobs {
		page.Jobs = append(page.Jobs, j.toSDK())
	}
	return page, nil
}

// ReleaseJob ends an inflight job as done and frees its permit: the worker
// calls it when the work is finished. A job that is not inflight →
// IsInvalidState.
func (c *Client) ReleaseJob(ctx context.Context, id string) (Job, error) {
	return c.jobCall(ctx, http.MethodPost, c.endpoint(nil, "v1", "jobs", id, "release"), struct{}{})
}

// CancelJob cancels a scheduled or inflight job (freeing its permit).
// Another status → IsInvalidState.
func (c *Client) CancelJob(ctx context.Context, id string) (Job, error) {
	return c.jobCall(ctx, http.MethodPost, c.endpoint(nil, "v1", "jobs", id, "cancel"), struct{}{})
}

// RequeueJob schedules a terminal job again, at the back of its queue, with
// its attempts reset. A job that is not terminal → IsInvalidState.
func (c *Client) RequeueJob(ctx context.Context, id string) (Job, error) {
	return c.jobCall(ctx, http.MethodPost, c.endpoint(nil, "v1", "jobs", id, "requeue"), struct{}{})
}

// PurgeJobsOptions narrow PurgeJobs. Zero values: every channel.
type PurgeJobsOptions struct {
	Channel string // only this channel's jobs; a name that is not valid → IsInvalidRequest
}

// PurgeJobs deletes a semaphore's jobs in status (JobScheduled or a
// terminal status), of opts.Channel or of every channel, and returns how
// many. Inflight jobs hold permits and cannot be purged (IsInvalidState).
func (c *Client) PurgeJobs(ctx context.Context, semaphore string, status JobStatus, opts PurgeJobsOptions) (int, error) {
	q := url.Values{"status": {string(status)}}
	if opts.Channel != "" {
		q.Set("channel", opts.Channel)
	}
	var out struct {
		Purged int `json:"purged"`
	}
	if err := c.do(ctx, http.MethodDelete, c.endpoint(q, "v1", "semaphores", semaphore, "jobs"), nil, &out); err != nil {
		return 0, err
	}
	return out.Purged, nil
}

func (c *Client) jobCall(ctx context.Context, method, target string, in any) (Job, error) {
	var out struct {
		Job jobWire `json:"job"`
	}
	if err := c.do(ctx, method, target, in, &out); err != nil {
		return Job{}, err
	}
	return out.Job.toSDK(), nil
}

// IsJobNotFound reports whether err says the job is unknown in the tenant.
func IsJobNotFound(err error) bool { return errors.Is(err, ErrJobNotFound) }

// IsInvalidState reports whether err says the job's status does not allow
// the action.
func IsInvalidState(err error) bool { return errors.Is(err, ErrInvalidState) }

// IsQueueFull reports whether err says the semaphore's job queue is full.
func IsQueueFull(err error) bool { return errors.Is(err, ErrQueueFull) }

// ---- wire format (mirrors api/wire.go) ----

type enqueueWire struct {
	Channel        string          `json:"channel,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotencyKey,omitempty"`
	Delay          *duration       `json:"delay,omitempty"`
	RunAt          *time.Time      `json:"runAt,omitempty"`
}

// replayKey: a request with a key is safe to send twice (see replayable).
func (w enqueueWire) replayKey() string { return w.IdempotencyKey }

type batchWire struct {
	Jobs []enqueueWire `json:"jobs"`
}

// replayKey: a batch is safe to send twice when every job has a key.
func (w batchWire) replayKey() string {
	for _, j := range w.Jobs {
		if j.IdempotencyKey == "" {
			return ""
		}
	}
	if len(w.Jobs) == 0 {
		return ""
	}
	return w.Jobs[0].IdempotencyKey
}

type jobRefWire struct {
	ID        string `json:"id"`
	Semaphore string `json:"semaphore"`
	Hold      bool   `json:"hold"`
}

type jobWire struct {
	ID         string          `json:"id"`
	Semaphore  string          `json:"semaphore"`
	Channel    string          `json:"channel"`
	Payload    json.RawMessage `json:"payload"`
	Status     JobStatus       `json:"status"`
	Attempts   int             `json:"attempts"`
	Lease      *leaseWire      `json:"lease"`
	Route      *string         `json:"route"`
	Error      *string         `json:"error"`
	Parent     *jobRefWire     `json:"parent"`
	Child      *jobRefWire     `json:"child"`
	CreatedAt  time.Time       `json:"createdAt"`
	UpdatedAt  time.Time       `json:"updatedAt"`
	FinishedAt *time.Time      `json:"finishedAt"`
	RunAt      *time.Time      `json:"runAt"`
}

func (w jobWire) toSDK() Job {
	j := Job{
		ID: w.ID, Semaphore: w.Semaphore, Channel: w.Channel, Payload: w.Payload,
		Status: w.Status, Attempts: w.Attempts, CreatedAt: w.CreatedAt, UpdatedAt: w.UpdatedAt,
	}
	if w.Lease != nil {
		l := Lease(*w.Lease)
		j.Lease = &l
	}
	if w.Route != nil {
		j.Route = *w.Route
	}
	if w.Error != nil {
		j.Error = *w.Error
	}
	if w.Parent != nil {
		r := JobRef(*w.Parent)
		j.Parent = &r
	}
	if w.Child != nil {
		r := JobRef(*w.Child)
		j.Child = &r
	}
	if w.FinishedAt != nil {
		j.FinishedAt = *w.FinishedAt
	}
	if w.RunAt != nil {
		j.RunAt = *w.RunAt
	}
	return j
}
