package hub

import "slices"

// The order in which the jobs of one semaphore pushed to one session are
// queued to it: their dispatch order (the fencing tokens of their leases),
// so that a worker gets them FIFO (Push).

// orderKey names the jobs that go to one session from one semaphore.
type orderKey struct{ tenant, semaphore, session string }

// queueUp puts a delivery in its key's order by fencing token (the order
// its semaphore dispatched it in).
func (h *Hub) queueUp(k orderKey, token int64) *turn {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.order[k]
	i, _ := slices.BinarySearch(q, token)
	h.order[k] = slices.Insert(q, i, token)
	return &turn{h: h, k: k, token: token}
}

// turn is one delivery's place in its key's order. Its flags are guarded
// by the hub's mutex.
type turn struct {
	h      *Hub
	k      orderKey
	token  int64
	left   bool // placed or given up: out of the order for good
	paused bool // out of the order until rejoin
}

// pause takes the delivery out of the order for a while (rejoin puts it
// back at its place); the ones behind it are woken.
func (t *turn) pause() {
	h := t.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.left || t.paused {
		return
	}
	t.paused = true
	h.dropTokenLocked(t.k, t.token)
}

// rejoin puts a paused delivery back at its place in the order.
func (t *turn) rejoin() {
	h := t.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.left || !t.paused {
		return
	}
	t.paused = false
	q := h.order[t.k]
	i, _ := slices.BinarySearch(q, t.token)
	h.order[t.k] = slices.Insert(q, i, t.token)
}

// first reports whether no earlier delivery of the key waits for room.
func (t *turn) first() bool {
	t.h.mu.Lock()
	defer t.h.mu.Unlock()
	q := t.h.order[t.k]
	return len(q) == 0 || q[0] >= t.token
}

// leave takes the delivery out of the order (it found room, or gave up)
// and wakes the ones behind it. Safe to call more than once.
func (t *turn) leave() {
	h := t.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.left {
		return
	}
	t.left = true
	if !t.paused {
		h.dropTokenLocked(t.k, t.token)
	}
}

// dropTokenLocked removes a token from its key's order and wakes the
// deliveries waiting for their turn. h.mu is held.
func (h *Hub) dropTokenLocked(k orderKey, token int64) {
	q := h.order[k]
	if i, ok := slices.BinarySearch(q, token); ok {
		q = slices.Delete(q, i, i+1)
	}
	if len(q) == 0 {
		delete(h.order, k)
	} else {
		h.order[k] = q
	}
	close(h.capacity)
	h.capacity = make(chan struct{})
}
