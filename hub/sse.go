package hub

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The SSE transport (GET /v1/sse): server frames as server-sent events on
// one long response, each event written and flushed at once, a ": ping"
// comment every heartbeat. Client frames come posted (Hub.Post), and
// count as the client's heartbeat as a websocket's frames do: none for 3
// heartbeats and the session is lost (resumable within the grace
// period).

var (
	ssePing     = []byte(": ping\n\n")
	sseData     = []byte("data: ")
	sseEventEnd = []byte("\n\n")
)

type sseTransport struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration

	mu      sync.Mutex    // one write at a time: the writer, pings, the closed frame
	started chan struct{} // closed once the response's headers are written
	stop    chan struct{} // closed by closeNow: the stream ends
	once    sync.Once
	silence *time.Timer // fires after 3 heartbeats without posted frames
}

// touch restarts the silence clock.
func (t *sseTransport) touch(silence time.Duration) { t.silence.Reset(silence) }

func (t *sseTransport) kind() string { return TransportSSE }
func (t *sseTransport) pulled() bool { return false }
func (t *sseTransport) closeNow()    { t.once.Do(func() { close(t.stop) }) }

// start writes the response's headers, proxy-friendly: no caching, no
// buffering (X-Accel-Buffering for nginx and its kin).
func (t *sseTransport) start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	t.w.WriteHeader(http.StatusOK)
	err := t.flushLocked()
	close(t.started)
	return err
}

func (t *sseTransport) write(ctx context.Context, batch [][]byte) error {
	select {
	case <-t.started:
	case <-t.stop:
		return errGone
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.rc.SetWriteDeadline(time.Now().Add(t.timeout))
	for _, msg := range batch {
		if err := t.event(msg); err != nil {
			return err
		}
	}
	return t.flushLocked()
}

// event writes one frame as an SSE event (a JSON frame holds no newline).
func (t *sseTransport) event(msg []byte) error {
	if _, err := t.w.Write(sseData); err != nil {
		return err
	}
	if _, err := t.w.Write(msg); err != nil {
		return err
	}
	_, err := t.w.Write(sseEventEnd)
	return err
}

func (t *sseTransport) flushLocked() error {
	err := t.rc.Flush()
	_ = t.rc.SetWriteDeadline(time.Time{})
	return err
}

// ping writes the heartbeat comment.
func (t *sseTransport) ping() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.rc.SetWriteDeadline(time.Now().Add(t.timeout))
	if _, err := t.w.Write(ssePing); err != nil {
		return err
	}
	return t.flushLocked()
}

// close writes a closed frame, then ends the stream.
func (t *sseTransport) close(code websocket.StatusCode, reason string) {
	select {
	case <-t.started:
		t.mu.Lock()
		_ = t.rc.SetWriteDeadline(time.Now().Add(t.timeout))
		if t.event(marshalClosed(code, reason)) == nil {
			_ = t.flushLocked()
		}
		t.mu.Unlock()
	default: // nothing was written: the request answers for itself
	}
	t.closeNow()
}

// ServeSSE opens a session on an SSE stream, the response w, and serves
// it until the stream ends (the client went, or the server closed the
// session), then returns nil. An error returned means the stream never
// opened and w is untouched: p.Open failed (a resume that found no
// session: store.ErrSessionNotFound), or the session could not be
// created (ErrStopped when the hub is stopping). The caller has lifted
// the request's deadlines; ctx is the request's.
func (h *Hub) ServeSSE(ctx context.Context, w http.ResponseWriter, p ServeParams) error {
	t := &sseTransport{
		w: w, rc: http.NewResponseController(w), timeout: h.cfg.WriteTimeout,
		started: make(chan struct{}), stop: make(chan struct{}),
	}
	silence := 3 * h.cfg.Heartbeat
	var s *Session
	ready := make(chan struct{})
	t.silence = time.AfterFunc(silence, func() {
		<-ready
		if s != nil {
			s.close(reasonHeartbeat, ClosePolicy, "no frame for 3 heartbeats")
		}
	})
	defer t.silence.Stop()
	s, err := h.open(ctx, t, p, nil)
	close(ready)
	if err != nil {
		if err == errStopping {
			return ErrStopped
		}
		return err
	}
	if err := t.start(); err != nil {
		s.close(reasonSlow, ClosePolicy, "write failed")
	}
	tick := time.NewTicker(h.cfg.Heartbeat)
	defer tick.Stop()
loop:
	for {
		select {
		case <-t.stop:
			break loop
		case <-ctx.Done():
			break loop
		case <-tick.C:
			if err := t.ping(); err != nil {
				s.setReason(reasonSlow)
				break loop
			}
		}
	}
	h.finish(s, false)
	return nil
}
