package hub

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The long-poll transport (POST /v1/sessions, GET /v1/sessions/{id}/
// frames): no connection at all. Pushed frames wait in the session's
// send queue (bounded: SendQueue, then backpressure, then the session is
// closed as slow) until a poll takes them; a poll, or posted frames,
// count as the client's heartbeat: none for 3 heartbeats and the session
// is lost (resumable within the grace period).

// MaxPollWait bounds the wait of one poll.
const MaxPollWait = 60 * time.Second

type pollTransport struct {
	stop chan struct{} // closed by closeNow: the session's connection ends
	once sync.Once

	mu      sync.Mutex
	closed  []byte        // the closed frame, for the poll that waits or comes next
	polling int           // polls running
	current chan struct{} // closed when a newer poll replaces the running one
	silence *time.Timer   // fires after 3 heartbeats without a poll
}

func (t *pollTransport) kind() string { return TransportLongPoll }
func (t *pollTransport) pulled() bool { return true }
func (t *pollTransport) closeNow()    { t.once.Do(func() { close(t.stop) }) }

func (t *pollTransport) write(context.Context, [][]byte) error {
	return errors.New("hub: a long-poll session has no writer")
}

func (t *pollTransport) close(code websocket.StatusCode, reason string) {
	t.mu.Lock()
	t.closed = marshalClosed(code, reason)
	t.mu.Unlock()
	t.closeNow()
}

// begin marks a poll running: the silence clock stops, and a poll that
// was waiting returns (empty) to make way. done is closed when a newer
// poll comes.
func (t *pollTransport) begin() (done <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.polling++
	t.silence.Stop()
	if t.current != nil {
		close(t.current)
	}
	t.current = make(chan struct{})
	return t.current
}

// end marks a poll over; the silence clock starts again when none runs.
func (t *pollTransport) end(done <-chan struct{}, silence time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.polling--
	if t.current != nil && (<-chan struct{})(t.current) == done {
		t.current = nil
	}
	if t.polling == 0 {
		t.silence.Reset(silence)
	}
}

// touch restarts the silence clock (posted frames count as a heartbeat).
func (t *pollTransport) touch(silence time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.polling == 0 {
		t.silence.Reset(silence)
	}
}

// OpenPoll opens a long-poll session and returns it. Its first reply
// (welcome, or resumed when p.Open resumes) goes to out. The session
// lives on until it is closed, or 3 heartbeats pass without a poll or
// posted frames.
func (h *Hub) OpenPoll(ctx context.Context, p ServeParams, out Replier) (*Session, error) {
	t := &pollTransport{stop: make(chan struct{})}
	var bind func(*Session)
	t.silence, bind = h.silenceClock("no poll for 3 heartbeats")
	s, err := h.open(context.WithoutCancel(ctx), t, p, out)
	bind(s)
	if err != nil {
		t.silence.Stop()
		if err == errStopping {
			return nil, ErrStopped
		}
		return nil, err
	}
	go func() {
		<-t.stop
		t.silence.Stop()
		h.finish(s, false)
	}()
	return s, nil
}

// poll returns the frames queued for the session: at once when there are
// any, else the first ones queued within wait; none when wait passes, ctx
// ends, or a newer poll of the session takes over. A closed session's
// last poll gets its closed frame.
func (s *Session) poll(ctx context.Context, wait time.Duration) [][]byte {
	t, ok := s.tr.(*pollTransport)
	if !ok {
		return nil
	}
	done := t.begin()
	defer t.end(done, 3*s.hub.cfg.Heartbeat)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		batch, more := s.take()
		if batch != nil {
			return batch
		}
		select {
		case <-more:
		case <-t.stop:
			// frames queued before the close go first
			if batch, _ := s.take(); batch != nil {
				return batch
			}
			t.mu.Lock()
			closed := t.closed
			t.closed = nil
			t.mu.Unlock()
			if closed != nil {
				return [][]byte{closed}
			}
			return nil
		case <-timer.C:
			return nil
		case <-done:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}
