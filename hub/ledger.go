package hub

import "errors"

// subKey identifies a subscription of a session.
type subKey struct{ semaphore, channel string }

// errFull: the session already holds Prefetch unreleased jobs of the
// subscription (or the job is being pushed to it already).
var errFull = errors.New("session at its prefetch")

// ledger is what one session has been pushed and holds: the jobs pushed
// and not yet acked (pending), and the jobs acked and not yet released
// (held), each counted against the prefetch of the subscription it came
// through. A held job is "binding" from its ack until its delivery is
// recorded in the store (TransitionJob delivered, bound to the session):
// a release of it waits for that, so the store never sees the release
// before the delivery. It is a plain type: the Session guards it with its
// mutex, and it is tested without a socket (ledger_test.go).
type ledger struct {
	pending map[string]*push
	held    map[string]*heldJob
}

// push is a job pushed to the session and not yet acked.
type push struct {
	sub   subKey
	lease string
	acked chan struct{} // closed by the ack
	ack   bool
}

// heldJob is a job the session acked and has not released.
type heldJob struct {
	sub   subKey
	lease string        // the job's lease ("" unknown: restored by resume)
	bound chan struct{} // closed once its delivery is recorded (or given up)
}

func newLedger() ledger {
	return ledger{pending: make(map[string]*push), held: make(map[string]*heldJob)}
}

// closedChan is the bound channel of a job whose delivery needs no
// recording (restored by resume).
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// isHeld reports whether the session acked the job (or got it back by a
// resume) and has not released it.
func (l *ledger) isHeld(jobID string) bool {
	_, ok := l.held[jobID]
	return ok
}

// load counts the jobs pending or held on a subscription.
func (l *ledger) load(k subKey) int {
	n := 0
	for _, p := range l.pending {
		if p.sub == k {
			n++
		}
	}
	for _, h := range l.held {
		if h.sub == k {
			n++
		}
	}
	return n
}

// reserve counts a job about to be pushed on subscription k against its
// prefetch: errFull when the subscription holds prefetch jobs, or when
// the job is being pushed to the session already. A job held from an
// earlier lease (pushed again after its lease expired) counts once.
func (l *ledger) reserve(k subKey, prefetch int, jobID, lease string) (*push, error) {
	if _, ok := l.pending[jobID]; ok {
		return nil, errFull
	}
	delete(l.held, jobID)
	if l.load(k) >= max(prefetch, 1) {
		return nil, errFull
	}
	p := &push{sub: k, lease: lease, acked: make(chan struct{})}
	l.pending[jobID] = p
	return p, nil
}

// ack moves a pending job to held (binding); true when the job was pushed
// to the session (pending, or held already).
func (l *ledger) ack(jobID string) bool {
	if p, ok := l.pending[jobID]; ok {
		p.ack = true
		close(p.acked)
		delete(l.pending, jobID)
		l.held[jobID] = &heldJob{sub: p.sub, lease: p.lease, bound: make(chan struct{})}
		return true
	}
	_, ok := l.held[jobID]
	return ok
}

// settle ends the push p of a job: true when it was acked; else the push
// is dropped (a later ack is refused) and false.
func (l *ledger) settle(jobID string, p *push) bool {
	if !p.ack && l.pending[jobID] == p {
		delete(l.pending, jobID)
	}
	return p.ack
}

// bound marks a held job's delivery as recorded (or given up): a release
// waiting for it goes on.
func (l *ledger) bound(jobID string) {
	if h, ok := l.held[jobID]; ok {
		select {
		case <-h.bound:
		default:
			close(h.bound)
		}
	}
}

// binding returns the channel a release of the job waits on (closed when
// there is nothing to wait for).
func (l *ledger) binding(jobID string) <-chan struct{} {
	if h, ok := l.held[jobID]; ok {
		return h.bound
	}
	return closedChan
}

// forget removes a held job (released, or moved on); true when it was held.
func (l *ledger) forget(jobID string) bool {
	h, ok := l.held[jobID]
	if ok {
		delete(l.held, jobID)
		select {
		case <-h.bound:
		default:
			close(h.bound)
		}
	}
	return ok
}

// restore records the jobs a resumed session held, each on the first
// subscription of its semaphore among subs.
func (l *ledger) restore(jobs []string, subs []subKey, semaphoreOf func(jobID string) string) {
	for _, id := range jobs {
		sem := semaphoreOf(id)
		k := subKey{semaphore: sem}
		for _, s := range subs {
			if s.semaphore == sem {
				k = s
				break
			}
		}
		l.held[id] = &heldJob{sub: k, bound: closedChan}
	}
}

// heldLeases returns the held jobs with the lease each was pushed with.
func (l *ledger) heldLeases() map[string]string {
	out := make(map[string]string, len(l.held))
	for id, h := range l.held {
		out[id] = h.lease
	}
	return out
}

// heldLease is the lease of a held job ("" when not held or unknown).
func (l *ledger) heldLease(jobID string) string {
	if h, ok := l.held[jobID]; ok {
		return h.lease
	}
	return ""
}

// setLease records the lease a held job holds now.
func (l *ledger) setLease(jobID, lease string) {
	if h, ok := l.held[jobID]; ok {
		h.lease = lease
	}
}

// size is the number of jobs pending or held.
func (l *ledger) size() int { return len(l.pending) + len(l.held) }
