package hub

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Write coalescing (STYLE 11). The websocket library flushes every frame
// to the connection on its own, one write system call each (two for a
// frame larger than its buffer). A session's writer corks the connection,
// writes the frame and every frame queued behind it, and uncorks: they
// leave in one system call.

// maxCorked bounds the bytes gathered while corked; past it, writes go
// through at once. keptCorked is the buffer a session keeps between
// bursts; writeBuffer the websocket library's own write buffer, small
// since every write is corked (a frame larger than it still leaves in
// one write).
const (
	maxCorked   = 64 << 10
	keptCorked  = 4 << 10
	writeBuffer = 512
	readBuffer  = 1 << 10
)

// corkConn is the network connection under a websocket. While corked,
// writes gather in memory; uncork sends them in one write. Writes are
// serialized (the library writes control frames from other goroutines).
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked && len(c.buf)+len(p) <= maxCorked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork sends what was gathered, within timeout.
func (c *corkConn) uncork(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(timeout))
	err := c.flushLocked()
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return err
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > keptCorked {
		c.buf = nil // an idle session keeps no burst's buffer
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// corkWriter hands the websocket library a corkConn when it hijacks the
// connection.
type corkWriter struct {
	http.ResponseWriter
	conn *corkConn
}

func (w *corkWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// The handshake's response was flushed to nc by the hijack; what the
	// library writes from now on goes through the cork. It reads through
	// a buffer of its own, smaller than net/http's, holding what the
	// client sent after its handshake.
	w.conn = &corkConn{Conn: nc}
	early, err := brw.Reader.Peek(brw.Reader.Buffered())
	if err != nil {
		return nil, nil, err
	}
	r := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), nc), max(readBuffer, len(early)))
	if _, err := r.Peek(len(early)); err != nil {
		return nil, nil, err
	}
	return w.conn, bufio.NewReadWriter(r, bufio.NewWriterSize(w.conn, writeBuffer)), nil
}

// Conn is an accepted websocket connection, ready for Serve.
type Conn struct {
	ws   *websocket.Conn
	cork *corkConn // nil: writes are not coalesced
}

// Accept upgrades an HTTP request to a websocket connection (as
// websocket.Accept does, with the same options) whose writes the hub can
// coalesce. On error it has answered the request.
func Accept(w http.ResponseWriter, r *http.Request, opts *websocket.AcceptOptions) (*Conn, error) {
	cw := &corkWriter{ResponseWriter: w}
	ws, err := websocket.Accept(cw, r, opts)
	if err != nil {
		return nil, err
	}
	return &Conn{ws: ws, cork: cw.conn}, nil
}
