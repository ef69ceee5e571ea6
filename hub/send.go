package hub

import (
	"context"
	"encoding/json"
	"time"

	"github.com/coder/websocket"
)

// This file is the send side of a session's connection: the bounded send
// queue with its backpressure, and the writer goroutine that drains it,
// corked (cork.go).

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
			if !s.writing {
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
			t = time.NewTimer(s.hub.cfg.WriteTimeout)
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

		if s.cork != nil {
			s.cork.cork()
		}
		var err error
		for _, msg := range batch {
			if err = s.write(msg); err != nil {
				break
			}
		}
		if s.cork != nil {
			if uerr := s.cork.uncork(s.hub.cfg.WriteTimeout); err == nil {
				err = uerr
			}
		}
		clear(batch)
		s.wmu.Lock()
		if s.spare == nil && cap(batch) <= 2*s.hub.cfg.SendQueue {
			s.spare = batch[:0]
		}
		s.wmu.Unlock()
		if err != nil {
			s.setReason(reasonSlow)
			_ = s.conn.CloseNow()
			s.wmu.Lock()
			s.writing = false
			s.wmu.Unlock()
			return
		}
	}
}

// write writes one frame under WriteTimeout.
func (s *Session) write(msg []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.hub.cfg.WriteTimeout)
	defer cancel()
	return s.conn.Write(ctx, websocket.MessageText, msg)
}
