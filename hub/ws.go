package hub

import (
	"context"
	"time"

	"github.com/coder/websocket"
)

// The websocket transport: frames both ways on one connection, writes
// corked (cork.go).

type wsTransport struct {
	conn *websocket.Conn
	cork *corkConn // coalesces the writes of a burst (nil: none)
	// timeout bounds each write.
	timeout time.Duration
}

func (t *wsTransport) kind() string { return TransportWebsocket }
func (t *wsTransport) pulled() bool { return false }
func (t *wsTransport) closeNow()    { _ = t.conn.CloseNow() }
func (t *wsTransport) close(code websocket.StatusCode, reason string) {
	_ = t.conn.Close(code, reason)
}

// write corks the connection, writes the frames and uncorks: they leave
// in one system call.
func (t *wsTransport) write(ctx context.Context, batch [][]byte) error {
	if t.cork != nil {
		t.cork.cork()
	}
	var err error
	for _, msg := range batch {
		wctx, cancel := context.WithTimeout(ctx, t.timeout)
		err = t.conn.Write(wctx, websocket.MessageText, msg)
		cancel()
		if err != nil {
			break
		}
	}
	if t.cork != nil {
		if uerr := t.cork.uncork(t.timeout); err == nil {
			err = uerr
		}
	}
	return err
}

// Serve runs an accepted connection as a new session until it ends, and
// returns then. The session is created in the store, connected on this
// node; a frame over MaxMessageBytes closes the connection (1009), no frame
// for 3 heartbeats closes it (1008). When the connection ends, the session
// is lost (resumable within the grace period) unless the client closed it
// normally (then it is ended and p.End called) or it was resumed by another
// connection.
func (h *Hub) Serve(ctx context.Context, c *Conn, p ServeParams) error {
	conn := c.ws
	conn.SetReadLimit(h.cfg.MaxMessageBytes)
	s, err := h.open(ctx, &wsTransport{conn: conn, cork: c.cork, timeout: h.cfg.WriteTimeout}, p, nil)
	if err != nil {
		if err == errStopping {
			return ErrStopped
		}
		return err
	}
	silence := 3 * h.cfg.Heartbeat
	timer := time.AfterFunc(silence, func() {
		s.close(reasonHeartbeat, ClosePolicy, "no frame for 3 heartbeats")
	})
	var readErr error
	for {
		typ, data, err := conn.Read(s.ctx)
		if err != nil {
			readErr = err
			break
		}
		// The silence clock stops while a frame is handled: a handler
		// waiting for room in the send queue (backpressure) is the
		// server's wait, not the client's silence.
		timer.Stop()
		if p.Handle != nil {
			p.Handle(s.ctx, s, s, data, typ != websocket.MessageText)
		}
		timer.Reset(silence)
	}
	timer.Stop()
	h.finish(s, websocket.CloseStatus(readErr) == websocket.StatusNormalClosure)
	return nil
}
