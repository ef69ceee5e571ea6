package redisstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/semaphored/semaphored/store"
)

// Jobs (store.JobStore). A job lives in its semaphore's slot:
//
//   - its record is one field of the semaphore's jobs hash, keyed by the
//     job's seq (creation order in the semaphore): a short meta JSON line,
//     then the payload verbatim (lib_*.lua, "jobs");
//   - while scheduled, a 6-byte entry in its channel's queue, a run of
//     chunk strings in the jq hash (lib_*.lua q_push / q_pop);
//   - while inflight, a lease like any other (holders, leases, used, fence),
//     whose record names the job (j), so expiry and the sweep index cover it;
//   - while terminal, a member of the jfin (done, cancelled) or jfail
//     (error, timeout) zset by finish time, deleted once the semaphore's
//     retention for its status has passed (lib_jobs.lua trim_finished),
//     by the next call on the semaphore or the sweep; readers no longer
//     find it from that instant on.
//
// A job id is hex16(salt) + hex16(seq) + "." + base64url(semaphore): the
// salt is random per creation of the semaphore, so ids are never reused
// when a semaphore is deleted and created again.

const (
	// forgetBatch bounds how many terminal jobs of each retention class
	// one call on a semaphore deletes.
	forgetBatch = 256
	// listScan bounds how many job seqs one ListJobs call walks.
	listScan = 5000
	// defaultJobListLimit is ListJobs' page size when none is given.
	defaultJobListLimit = 100
)

// jobMeta is the meta line of a job record (lib_*.lua). Numbers are decoded
// as float64 (cjson's format), exact below 2^53.
type jobMeta struct {
	C  *string  `json:"c"`
	S  string   `json:"s"`
	A  float64  `json:"a"`
	L  string   `json:"l"`
	R  string   `json:"r"`
	E  string   `json:"e"`
	K  string   `json:"k"`
	P  *refJSON `json:"p"`
	H  *refJSON `json:"h"`
	SS string   `json:"ss"` // the session the job is bound to
	SC string   `json:"sc"` // ... through its subscription to this channel
	SN string   `json:"sn"` // ... on this node (bound at dispatch)
	RA float64  `json:"ra"` // runAt ms, while delayed
	CA float64  `json:"ca"`
	UA float64  `json:"ua"`
	FA float64  `json:"fa"`
}

type refJSON struct {
	S string `json:"s"`
	I string `json:"i"`
	H bool   `json:"h,omitempty"`
}

func refToJSON(r *store.JobRef) string {
	if r == nil {
		return ""
	}
	b, _ := json.Marshal(refJSON{S: r.Semaphore, I: r.ID, H: r.Hold}) // cannot fail
	return string(b)
}

func (r *refJSON) ref() *store.JobRef {
	if r == nil {
		return nil
	}
	return &store.JobRef{Semaphore: r.S, ID: r.I, Hold: r.H}
}

func msTime(v float64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(math.Round(v))).UTC()
}

// decodeJob reads a {job id hex32, record, lease JSON or empty} triple of a
// job of tenant's semaphore.
func decodeJob(tenant, semaphore string, v any) (store.Job, error) {
	t, ok := v.([]any)
	if !ok || len(t) != 3 {
		return store.Job{}, fmt.Errorf("redisstore: bad job reply %T", v)
	}
	id, _ := t[0].(string)
	raw, _ := t[1].(string)
	lease, _ := t[2].(string)
	metaRaw, payload, found := bytes.Cut([]byte(raw), []byte{'\n'})
	if !found {
		return store.Job{}, fmt.Errorf("redisstore: bad job record")
	}
	var m jobMeta
	if err := gojson.Unmarshal(metaRaw, &m); err != nil {
		return store.Job{}, fmt.Errorf("redisstore: bad job record: %w", err)
	}
	j := store.Job{
		Tenant:         tenant,
		ID:             id + idSuffix(semaphore),
		Semaphore:      semaphore,
		Channel:        store.DefaultChannel,
		Status:         letterStatus[m.S],
		Attempts:       int(math.Round(m.A)),
		Route:          m.R,
		Error:          m.E,
		IdempotencyKey: m.K,
		Parent:         m.P.ref(),
		Child:          m.H.ref(),
		CreatedAt:      msTime(m.CA),
		UpdatedAt:      msTime(m.UA),
		FinishedAt:     msTime(m.FA),
	}
	if m.C != nil {
		j.Channel = *m.C
	}
	j.RunAt = msTime(m.RA)
	if m.SS != "" {
		j.Worker = &store.Worker{Session: m.SS, Channel: m.SC, Node: m.SN}
	}
	if m.UA == 0 {
		j.UpdatedAt = j.CreatedAt
	}
	if len(payload) > 0 {
		j.Payload = payload
	}
	if lease != "" {
		l, err := decodeLease(semaphore, lease)
		if err != nil {
			return store.Job{}, err
		}
		j.Lease = &l
	}
	return j, nil
}

// decodeJobs reads a list of job triples.
func decodeJobs(tenant, semaphore string, v any) ([]store.Job, error) {
	arr, _ := v.([]any)
	out := make([]store.Job, 0, len(arr))
	for _, t := range arr {
		j, err := decodeJob(tenant, semaphore, t)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// decodeEvents reads the events element of a script reply (lib_*.lua done).
func decodeEvents(tenant, semaphore string, v any) (store.JobEvents, error) {
	var ev store.JobEvents
	arr, _ := v.([]any)
	if len(arr) != 2 {
		return ev, nil
	}
	var err error
	if ev.Dispatched, err = decodeJobs(tenant, semaphore, arr[0]); err != nil {
		return ev, err
	}
	if ev.Finished, err = decodeJobs(tenant, semaphore, arr[1]); err != nil {
		return ev, err
	}
	if len(ev.Dispatched) == 0 {
		ev.Dispatched = nil
	}
	if len(ev.Finished) == 0 {
		ev.Finished = nil
	}
	return ev, nil
}

// SetJobListener sets the listener of JobEvents (nil: none). Events are
// handed to it after the script that produced them, in the calling
// goroutine.
func (s *Store) SetJobListener(fn func(store.JobEvents)) {
	if fn == nil {
		s.listener.Store(nil)
		return
	}
	s.listener.Store(&fn)
}

// emit decodes the events of a script reply and hands them to the
// listener; it returns them.
func (s *Store) emit(tenant, semaphore string, v any) store.JobEvents {
	ev, err := decodeEvents(tenant, semaphore, v)
	if err != nil {
		// A record we cannot read is a bug; the jobs are not lost (an
		// undelivered dispatch expires and is retried).
		s.log.Error("bad job events", "semaphore", semaphore, "err", err)
	}
	if len(ev.Dispatched) > 0 || len(ev.Finished) > 0 {
		if fn := s.listener.Load(); fn != nil {
			(*fn)(ev)
		}
	}
	return ev
}

// parseJobID splits a job id into its semaphore, salt and seq.
func parseJobID(id string) (name, salt string, seq int64, ok bool) {
	name, ok = store.ParseJobID(id)
	if !ok {
		return "", "", 0, false
	}
	seq, err := strconv.ParseInt(id[16:32], 16, 64)
	if err != nil || seq <= 0 {
		return "", "", 0, false
	}
	return name, id[:16], seq, true
}

func newSalt() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// EnqueueJob adds a scheduled job and dispatches what fits, in one call
// (batched with concurrent calls, see batch.go).
// The job is returned as at the end of it (inflight when a permit was
// free); an idempotency key already used by a job of the semaphore returns
// that job, created false.
func (s *Store) EnqueueJob(ctx context.Context, p store.EnqueueParams) (store.Job, bool, error) {
	if p.Channel == "" {
		p.Channel = store.DefaultChannel
	}
	r, err := s.batched(ctx, p.Tenant, p.Semaphore, &batchOp{args: []any{"e",
		newSalt(), p.Channel, string(p.Payload), p.IdempotencyKey, max(p.MaxQueued, 0),
		refToJSON(p.Parent), max(ms(p.Delay), 0)}})
	if err != nil {
		return store.Job{}, false, err
	}
	if len(r.vals) != 3 {
		return store.Job{}, false, fmt.Errorf("redisstore: bad enqueue result %v", r.vals)
	}
	j, err := decodeJob(p.Tenant, p.Semaphore, r.vals[2])
	created, _ := r.vals[1].(int64)
	return j, created == 1, err
}

// EnqueueJobs adds a batch of jobs, all or nothing, in one call (batched
// with concurrent calls, see batch.go).
func (s *Store) EnqueueJobs(ctx context.Context, p store.EnqueueBatchParams) ([]store.EnqueueResult, error) {
	if len(p.Jobs) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 4+4*len(p.Jobs))
	args = append(args, "E", newSalt(), max(p.MaxQueued, 0), len(p.Jobs))
	for _, it := range p.Jobs {
		ch := it.Channel
		if ch == "" {
			ch = store.DefaultChannel
		}
		args = append(args, ch, string(it.Payload), it.IdempotencyKey, max(ms(it.Delay), 0))
	}
	r, err := s.batched(ctx, p.Tenant, p.Semaphore, &batchOp{args: args})
	if err != nil {
		return nil, err
	}
	var created, views []any
	if len(r.vals) == 3 {
		created, _ = r.vals[1].([]any)
		views, _ = r.vals[2].([]any)
	}
	if len(created) != len(p.Jobs) || len(views) != len(p.Jobs) {
		return nil, fmt.Errorf("redisstore: bad batch enqueue result of %d jobs", len(p.Jobs))
	}
	out := make([]store.EnqueueResult, len(p.Jobs))
	for i := range out {
		j, err := decodeJob(p.Tenant, p.Semaphore, views[i])
		if err != nil {
			return nil, err
		}
		c, _ := created[i].(int64)
		out[i] = store.EnqueueResult{Job: j, Created: c == 1}
	}
	return out, nil
}

// DispatchJobs dispatches what fits now.
func (s *Store) DispatchJobs(ctx context.Context, p store.DispatchParams) ([]store.Job, error) {
	_, ev, err := s.runEv(ctx, fnDispatch, p.Tenant, p.Semaphore, p.Max)
	if err != nil {
		return nil, err
	}
	return ev.Dispatched, nil
}

// GetJob reads one job.
func (s *Store) GetJob(ctx context.Context, tenant, id string) (store.Job, error) {
	name, salt, seq, ok := parseJobID(id)
	if !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	res, err := s.run(ctx, fnGetJob, tenant, name, salt, seq)
	if err != nil {
		return store.Job{}, err
	}
	return decodeJob(tenant, name, res[1])
}

// ListJobs lists a semaphore's jobs oldest first. The cursor is the seq of
// the last job walked (a cursor that is not a number lists nothing). One
// call walks at most listScan seqs, so a selective filter over many jobs
// may return a short page with a cursor.
func (s *Store) ListJobs(ctx context.Context, p store.ListJobsParams) ([]store.Job, string, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = defaultJobListLimit
	}
	st := ""
	if p.Status != "" {
		st = statusLetter[p.Status]
		if st == "" {
			st = "?" // matches no job
		}
	}
	res, err := s.run(ctx, fnListJobs, p.Tenant, p.Semaphore, st, p.Channel, p.Cursor, limit, listScan)
	if err != nil {
		return nil, "", err
	}
	jobs, err := decodeJobs(p.Tenant, p.Semaphore, res[1])
	if err != nil {
		return nil, "", err
	}
	return jobs, res[2].(string), nil
}

// TransitionJob applies one action to a job in one script and returns the
// job as at the end of it.
func (s *Store) TransitionJob(ctx context.Context, p store.TransitionParams) (store.Job, error) {
	name, salt, seq, ok := parseJobID(p.JobID)
	if !ok {
		return store.Job{}, store.ErrJobNotFound
	}
	var bindSession, bindChannel string
	if p.Bind != nil {
		bindSession, bindChannel = p.Bind.Session, p.Bind.Channel
	}
	r, err := s.batched(ctx, p.Tenant, name, &batchOp{args: []any{"t", salt, seq, string(p.Action), p.LeaseID,
		p.Route, p.Error, ms(p.HoldTTL), refToJSON(p.Child), bindSession, bindChannel, max(ms(p.MinDelay), 0), quiet(p.Quiet)}})
	if err != nil {
		return store.Job{}, err
	}
	if p.Quiet {
		return store.Job{}, nil
	}
	if len(r.vals) != 2 {
		return store.Job{}, fmt.Errorf("redisstore: bad transition result %v", r.vals)
	}
	return decodeJob(p.Tenant, name, r.vals[1])
}

// quiet is the batch.lua flag of a transition whose job is not read back.
func quiet(q bool) string {
	if q {
		return "1"
	}
	return "0"
}

// PurgeJobs deletes the semaphore's jobs in status (scheduled or terminal;
// inflight jobs hold permits: ErrInvalidState), of one channel or all.
func (s *Store) PurgeJobs(ctx context.Context, p store.PurgeJobsParams) (int, error) {
	if !p.Status.Purgeable() {
		return 0, fmt.Errorf("%w: cannot purge %q jobs", store.ErrInvalidState, p.Status)
	}
	res, err := s.run(ctx, fnPurgeJobs, p.Tenant, p.Semaphore, statusLetter[p.Status], p.Channel)
	if err != nil {
		return 0, err
	}
	return int(res[1].(int64)), nil
}
