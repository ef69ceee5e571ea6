package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/semaphored/semaphored/store"
)

// Acquires, releases, waiter polls, job enqueues and job transitions of one
// semaphore that arrive while calls for that semaphore are in flight
// (batchInflight of them) wait, and then go to Redis together as one
// batch.lua call (group commit): a lone caller goes at once, alone; under
// load one round trip, one clock read, one expiry check and one dispatch of
// queued jobs serve up to batchMax callers. The operations of a call run
// one after the other in arrival order, each as it would alone, within one
// atomic call; as for any concurrent requests, two calls in flight may
// reach Redis in either order.
const (
	// batchMax operations at most per call.
	batchMax = 128
	// batchInflight calls per semaphore at most in flight at once: while
	// one is on the wire or in Redis, the next one fills up.
	batchInflight = 2
	// batchMaxArgs bounds the arguments of one call: it stops taking
	// operations at this many (a batch enqueue of 1,000 jobs alone has
	// 3,006), though it always takes one.
	batchMaxArgs = 8192
	// batchTimeout bounds one call; it runs detached from the callers'
	// contexts (a caller that leaves is cleaned up after, see batchOp).
	batchTimeout = 10 * time.Second
)

// batchOp is one caller's operation: its batch.lua letter and arguments,
// and its result.
type batchOp struct {
	args []any
	// abandoned, if set, undoes a result whose caller's context ended
	// before it came (a granted lease is released, a queued waiter
	// cancelled): a cancelled call leaves nothing behind. The caller does
	// not wait for a call already sent: the result, when it comes, is
	// undone then (state).
	abandoned func(batchResult)
	// state: opPending, then opLeft (the caller's context ended while the
	// call was on its way) or opDelivered (the caller takes the result)
	state atomic.Int32
	// deadline is the caller's context's (zero: none); a call of ops
	// that all have one ends by the latest (see runBatch).
	deadline time.Time

	res  batchResult
	done chan struct{} // closed once res is set
}

const (
	opPending int32 = iota
	opLeft
	opDelivered
)

type batchResult struct {
	status, raw string // status and second element (lease JSON, or an error's message)
	vals        []any  // the whole {status, ...}
	err         error
}

// semBatch is the queue of one semaphore's operations waiting for a call.
type semBatch struct {
	inflight int
	queue    []*batchOp
}

// batched runs op in the next call for the semaphore and returns its
// result. If ctx ends first, an op still queued is taken out; one already
// sent is waited for (a call is bounded by batchTimeout) and undone by
// op.abandoned; ctx's error is returned either way.
func (s *Store) batched(ctx context.Context, tenant, name string, op *batchOp) (batchResult, error) {
	op.done = make(chan struct{})
	op.deadline, _ = ctx.Deadline()
	key := semMember(tenant, name)
	s.bmu.Lock()
	b := s.batches[key]
	if b == nil {
		b = &semBatch{}
		s.batches[key] = b
	}
	if b.inflight < batchInflight {
		// Nothing waits before op (a queue forms only at the limit): send
		// it now, from this goroutine, then hand what queued meanwhile on.
		b.inflight++
		s.bmu.Unlock()
		s.runBatch(tenant, name, []*batchOp{op})
		if next := s.nextBatch(key, b); next != nil {
			go s.drain(key, b, tenant, name, next)
		}
	} else {
		b.queue = append(b.queue, op)
		s.bmu.Unlock()
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		if s.dequeue(key, op) {
			return batchResult{}, ctx.Err()
		}
		if op.state.CompareAndSwap(opPending, opLeft) {
			// Sent already: the runner undoes the result when it comes.
			return batchResult{}, ctx.Err()
		}
		<-op.done
	}
	if op.abandoned != nil && ctx.Err() != nil {
		if op.res.err == nil {
			op.abandoned(op.res)
		}
		return batchResult{}, ctx.Err()
	}
	return op.res, op.res.err
}

// dequeue takes op out of the semaphore's queue; false when it is not
// there (sent already).
func (s *Store) dequeue(key string, op *batchOp) bool {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	b := s.batches[key]
	if b == nil {
		return false
	}
	i := slices.Index(b.queue, op)
	if i < 0 {
		return false
	}
	b.queue = slices.Delete(b.queue, i, i+1)
	return true
}

// nextBatch takes the next batch from the semaphore's queue, or retires
// the caller's in-flight slot when the queue is empty (nil).
func (s *Store) nextBatch(key string, b *semBatch) []*batchOp {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if len(b.queue) == 0 {
		b.inflight--
		if b.inflight == 0 {
			delete(s.batches, key)
		}
		return nil
	}
	n, args := 0, 0
	for n < len(b.queue) && n < batchMax && (n == 0 || args+len(b.queue[n].args) <= batchMaxArgs) {
		args += len(b.queue[n].args)
		n++
	}
	ops := b.queue[:n:n]
	if n == len(b.queue) {
		b.queue = nil
	} else {
		b.queue = append([]*batchOp(nil), b.queue[n:]...)
	}
	return ops
}

// drain sends batches of the semaphore until its queue is empty.
func (s *Store) drain(key string, b *semBatch, tenant, name string, ops []*batchOp) {
	for ops != nil {
		s.runBatch(tenant, name, ops)
		ops = s.nextBatch(key, b)
	}
}

// runBatch sends ops in one batch.lua call and delivers each result. The
// call is bounded by batchTimeout, or sooner by the latest deadline of its
// callers when they all have one: a caller whose deadline passed while
// Redis does not answer is not kept waiting (it is answered at once when
// ctx ends before the call is sent, see batched).
func (s *Store) runBatch(tenant, name string, ops []*batchOp) {
	until := time.Now().Add(batchTimeout)
	latest := time.Time{}
	for _, op := range ops {
		if op.deadline.IsZero() {
			latest = until
			break
		}
		if op.deadline.After(latest) {
			latest = op.deadline
		}
	}
	if latest.Before(until) {
		until = latest
	}
	ctx, cancel := context.WithDeadline(context.Background(), until)
	defer cancel()
	n := 0
	for _, op := range ops {
		n += len(op.args)
	}
	args := make([]any, 0, n)
	for _, op := range ops {
		args = append(args, op.args...)
	}
	res, _, err := s.runEv(ctx, fnBatch, tenant, name, args...)
	var out []any
	if err == nil {
		out, _ = res[1].([]any)
		if len(out) != len(ops) {
			err = fmt.Errorf("redisstore: batch of %d operations got %d results", len(ops), len(out))
		}
	}
	for i, op := range ops {
		if err != nil {
			op.res = batchResult{err: err}
		} else {
			op.res = parseOpResult(out[i])
		}
		close(op.done)
		if !op.state.CompareAndSwap(opPending, opDelivered) && op.abandoned != nil && op.res.err == nil {
			// The caller left while the call was on its way.
			s.abandonWG.Add(1)
			go func(op *batchOp) {
				defer s.abandonWG.Done()
				op.abandoned(op.res)
			}(op)
		}
	}
}

// parseOpResult reads one {status, ...} of batch.lua; a status "SD_..."
// becomes the store error, with the message that follows it if any.
func parseOpResult(v any) batchResult {
	r, _ := v.([]any)
	if len(r) < 2 {
		return batchResult{err: fmt.Errorf("redisstore: bad batch result %v", v)}
	}
	st, _ := r[0].(string)
	raw, _ := r[1].(string)
	if err := codeError(st); err != nil {
		if raw != "" {
			err = fmt.Errorf("%w: %s", err, raw)
		}
		return batchResult{status: st, err: err}
	}
	return batchResult{status: st, raw: raw, vals: r}
}

// releaseAbandoned releases a lease whose caller left before getting it.
func (s *Store) releaseAbandoned(tenant, leaseID string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := s.Release(ctx, store.ReleaseParams{Tenant: tenant, LeaseID: leaseID}); err != nil &&
		!errors.Is(err, store.ErrLeaseNotFound) {
		s.log.Warn("release of an abandoned lease failed; it expires by its ttl", "err", err)
	}
}
