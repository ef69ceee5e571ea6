package hub

import (
	"encoding/json"
	"time"
)

// This file is the send side of a session's connection: the bounded send
// queue with its backpressure, and the writer goroutine that drains it,
// each batch in one write of its transport (corked on a websocket). A
// pulled transport (long-poll) has no writer: its polls take the queue
// (take).

// Send queues a frame (marshalled to JSON). When the connection's send
// queue is full it waits for room (the caller, often the connection's
// reader, stops meanwhile: backpressure); a client that lets the queue
// stay full for WriteTimeout has stopped reading and is closed (1008).
// false when the frame was not queued.
func (s *Session) Send(frame any) bool {
	b, err := json.Marshal(frame)
	if err != nil {
		s.hub.log.Error("marshalling a websocket frame", "err", err)
		return false
	}
	return s.sendRaw(b)
}

func (s *Session) sendRaw(b []byte) bool {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		s.wmu.Lock()
		if s.ended || s.ctx.Err() != nil {
			s.wmu.Unlock()
			return false
		}
		if len(s.queue) < s.hub.cfg.SendQueue {
			s.queue = append(s.queue, b)
			if s.tr.pulled() {
				close(s.queued) // a waiting poll takes it
				s.queued = make(chan struct{})
			} else if !s.writing {
				s.writing = true
				s.writers.Add(1)
				go s.writer()
			}
			s.wmu.Unlock()
			return true
		}
		room := s.room
		s.wmu.Unlock()
		if t == nil {
			t = time.NewTimer(s.stallLimit())
		}
		select {
		case <-room:
		case <-s.ctx.Done():
			return false
		case <-t.C:
			s.close(reasonSlow, ClosePolicy, "send queue full: the client stopped reading")
			return false
		}
	}
}

// stallLimit is how long a full send queue may stay full before the
// client counts as one that stopped reading: WriteTimeout, and for a
// pulled transport (long-poll), whose client comes back for its frames
// once per round trip, at least a heartbeat.
func (s *Session) stallLimit() time.Duration {
	if s.tr.pulled() {
		return max(s.hub.cfg.WriteTimeout, s.hub.cfg.Heartbeat)
	}
	return s.hub.cfg.WriteTimeout
}

// writer writes the queued frames until the queue is empty, then ends.
// The frames it finds queued leave together, in one write to the
// connection (corked), each under WriteTimeout.
func (s *Session) writer() {
	defer s.writers.Done()
	for {
		s.wmu.Lock()
		batch := s.queue
		if len(batch) == 0 || s.ctx.Err() != nil {
			s.writing = false
			s.wmu.Unlock()
			return
		}
		s.queue, s.spare = s.spare[:0], nil
		close(s.room) // senders waiting for room go on
		s.room = make(chan struct{})
		s.wmu.Unlock()

		err := s.tr.write(s.ctx, batch)
		clear(batch)
		s.wmu.Lock()
		if s.spare == nil && cap(batch) <= 2*s.hub.cfg.SendQueue {
			s.spare = batch[:0]
		}
		s.wmu.Unlock()
		if err != nil {
			s.setReason(reasonSlow)
			s.tr.closeNow()
			s.wmu.Lock()
			s.writing = false
			s.wmu.Unlock()
			return
		}
	}
}

// take empties the send queue for a poll: the frames, and a channel that
// is closed when the next frame is queued (when there were none).
func (s *Session) take() ([][]byte, <-chan struct{}) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if len(s.queue) == 0 {
		return nil, s.queued
	}
	batch := s.queue
	s.queue = nil
	close(s.room) // senders waiting for room go on
	s.room = make(chan struct{})
	return batch, nil
}
