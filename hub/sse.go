package hub

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The SSE transport (GET /v1/sse): server frames as server-sent events on
// one long response, each batch written and flushed at once, a ": ping"
// comment every heartbeat. Client frames come posted (Hub.Post), and
// count as the client's heartbeat as a websocket's frames do: none for 3
// heartbeats and the session is lost (resumable within the grace
// period).
//
// Over HTTP/1.1 the stream takes the connection over (hijacked, as a
// websocket does): the request's goroutine and net/http's buffers are
// freed, and one small goroutine per session reads the connection, which
// tells when the client goes, and writes the pings. Over HTTP/2 the
// request's handler serves the stream.

var (
	ssePing     = []byte(": ping\n\n")
	sseData     = []byte("data: ")
	sseEventEnd = []byte("\n\n")
)

// sseOut is where a stream's bytes go: the response (HTTP/2), or the
// hijacked connection (HTTP/1.1), in chunked encoding.
type sseOut interface {
	// write sends p and flushes it, within timeout.
	write(p []byte, timeout time.Duration) error
	// end finishes the response (the last chunk) and closes the
	// connection, where it is the stream's own.
	end()
}

// respOut streams through the http.ResponseWriter.
type respOut struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (o *respOut) write(p []byte, timeout time.Duration) error {
	_ = o.rc.SetWriteDeadline(time.Now().Add(timeout))
	defer func() { _ = o.rc.SetWriteDeadline(time.Time{}) }()
	if _, err := o.w.Write(p); err != nil {
		return err
	}
	return o.rc.Flush()
}

func (o *respOut) end() {}

// connOut writes chunks to a hijacked HTTP/1.1 connection.
type connOut struct {
	conn net.Conn
	head []byte // chunk size line, reused
}

func (o *connOut) write(p []byte, timeout time.Duration) error {
	_ = o.conn.SetWriteDeadline(time.Now().Add(timeout))
	o.head = strconv.AppendInt(o.head[:0], int64(len(p)), 16)
	o.head = append(o.head, '\r', '\n')
	bufs := net.Buffers{o.head, p, []byte("\r\n")}
	_, err := bufs.WriteTo(o.conn)
	return err
}

func (o *connOut) end() {
	_ = o.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = o.conn.Write([]byte("0\r\n\r\n"))
	_ = o.conn.Close()
}

type sseTransport struct {
	timeout time.Duration

	mu      sync.Mutex // one write at a time: the writer, pings, the closed frame
	out     sseOut     // set before started is closed
	buf     []byte     // a batch's events, reused while small
	started chan struct{}
	// done ends when the stream ends (closeNow); a context, so that what
	// waits for it (context.AfterFunc) costs no goroutine.
	done    context.Context
	stop    context.CancelFunc
	silence *time.Timer // fires after 3 heartbeats without posted frames
}

func (t *sseTransport) kind() string { return TransportSSE }
func (t *sseTransport) pulled() bool { return false }
func (t *sseTransport) closeNow()    { t.stop() }

// touch restarts the silence clock.
func (t *sseTransport) touch(silence time.Duration) { t.silence.Reset(silence) }

// sseHeader is the head of an SSE response: proxy-friendly, no caching,
// no buffering (X-Accel-Buffering for nginx and its kin).
func sseHeader(h http.Header) {
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
}

func (t *sseTransport) write(ctx context.Context, batch [][]byte) error {
	select {
	case <-t.started:
	case <-t.done.Done():
		return errGone
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf[:0]
	for _, msg := range batch {
		b = append(append(append(b, sseData...), msg...), sseEventEnd...)
	}
	err := t.out.write(b, t.timeout)
	if cap(b) <= keptCorked {
		t.buf = b[:0]
	} else {
		t.buf = nil // an idle session keeps no burst's buffer
	}
	return err
}

// ping writes the heartbeat comment.
func (t *sseTransport) ping() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.out.write(ssePing, t.timeout)
}

// close writes a closed frame, then ends the stream.
func (t *sseTransport) close(code websocket.StatusCode, reason string) {
	select {
	case <-t.started:
		t.mu.Lock()
		b := append(append(append([]byte(nil), sseData...), marshalClosed(code, reason)...), sseEventEnd...)
		_ = t.out.write(b, t.timeout)
		t.mu.Unlock()
	default: // nothing was written: the request answers for itself
	}
	t.closeNow()
}

// ServeSSE opens a session on an SSE stream, the response to r, and
// serves it until the stream ends (the client went, or the server closed
// the session). An error returned means the stream never opened and w is
// untouched: p.Open failed (a resume that found no session:
// store.ErrSessionNotFound), or the session could not be created
// (ErrStopped when the hub is stopping). Over HTTP/1.1 it returns as soon
// as the stream runs on the hijacked connection; the caller must not
// touch w then. The caller has lifted the request's deadlines.
func (h *Hub) ServeSSE(w http.ResponseWriter, r *http.Request, p ServeParams) error {
	t := &sseTransport{timeout: h.cfg.WriteTimeout, started: make(chan struct{})}
	t.done, t.stop = context.WithCancel(context.Background())
	hijack := r.ProtoMajor == 1
	ctx := r.Context()
	if hijack {
		// the session outlives the handler, as a websocket's does
		ctx = context.WithoutCancel(ctx)
	}
	var bind func(*Session)
	t.silence, bind = h.silenceClock("no frame for 3 heartbeats")
	s, err := h.open(ctx, t, p, nil)
	bind(s)
	if err != nil {
		t.silence.Stop()
		t.stop()
		if err == errStopping {
			return ErrStopped
		}
		return err
	}
	var (
		conn net.Conn
		brw  *bufio.ReadWriter
	)
	if hijack {
		if conn, brw, err = http.NewResponseController(w).Hijack(); err != nil {
			hijack = false // w is untouched: stream through it
		}
	}
	if !hijack {
		rc := http.NewResponseController(w)
		sseHeader(w.Header())
		w.WriteHeader(http.StatusOK)
		t.out = &respOut{w: w, rc: rc}
		if err := rc.Flush(); err != nil {
			s.setReason(reasonSlow)
			t.closeNow()
		}
		close(t.started)
		tick := time.NewTicker(h.cfg.Heartbeat)
		defer tick.Stop()
		h.serveSSE(s, t, func() (bool, error) {
			select {
			case <-t.done.Done():
				return false, nil
			case <-r.Context().Done():
				return false, nil
			case <-tick.C:
				return true, nil
			}
		})
		return nil
	}

	// What the client sent after its request (nothing, for an SSE
	// client) is dropped with net/http's buffers.
	_ = brw
	hdr := http.Header{}
	sseHeader(hdr)
	hdr.Set("Transfer-Encoding", "chunked")
	_ = conn.SetWriteDeadline(time.Now().Add(h.cfg.WriteTimeout))
	bw := bufio.NewWriterSize(conn, 256)
	_, _ = bw.WriteString("HTTP/1.1 200 OK\r\n")
	_ = hdr.Write(bw)
	_, _ = bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		s.setReason(reasonSlow)
		t.closeNow()
	}
	_ = conn.SetWriteDeadline(time.Time{})
	out := &connOut{conn: conn}
	t.out = out
	close(t.started)
	// The end of the stream ends the read below at once.
	context.AfterFunc(t.done, func() { _ = conn.SetReadDeadline(time.Now()) })
	go func() {
		var one [1]byte
		h.serveSSE(s, t, func() (bool, error) {
			// The read returns when the client goes (or sends bytes, which
			// an SSE client does not); a heartbeat without either is the
			// time to ping.
			_ = conn.SetReadDeadline(time.Now().Add(h.cfg.Heartbeat))
			_, err := conn.Read(one[:])
			if t.done.Err() != nil {
				return false, nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return true, nil
			}
			if err == nil {
				return false, errors.New("hub: an SSE client sent bytes on its stream")
			}
			return false, err
		})
		out.end()
	}()
	return nil
}

// serveSSE runs a stream until wait says it is over: wait blocks until
// it is time to ping (true) or the stream ended (false).
func (h *Hub) serveSSE(s *Session, t *sseTransport, wait func() (ping bool, err error)) {
	for {
		ping, err := wait()
		if err != nil && !errors.Is(err, io.EOF) {
			h.log.Debug("SSE stream ended", "session", s.ID(), "err", err)
		}
		if !ping {
			break
		}
		if err := t.ping(); err != nil {
			s.setReason(reasonSlow)
			break
		}
	}
	t.silence.Stop()
	h.finish(s, false)
}
