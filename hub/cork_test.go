package hub

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countConn records each write that reaches the network.
type countConn struct {
	net.Conn
	writes [][]byte
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (c *countConn) SetWriteDeadline(time.Time) error { return nil }

func TestCorkConn_CoalescesWrites(t *testing.T) {
	under := &countConn{}
	c := &corkConn{Conn: under}
	_, err := c.Write([]byte("a"))
	require.NoError(t, err)
	require.Len(t, under.writes, 1, "uncorked: straight through")

	c.cork()
	for _, s := range []string{"b", "c", "d"} {
		_, err := c.Write([]byte(s))
		require.NoError(t, err)
	}
	require.Len(t, under.writes, 1, "corked: gathered")
	require.NoError(t, c.uncork(time.Second))
	require.Equal(t, [][]byte{[]byte("a"), []byte("bcd")}, under.writes, "one write, in order")
	require.NoError(t, c.uncork(time.Second), "nothing gathered: no write")
	require.Len(t, under.writes, 2)

	// Past maxCorked, what was gathered goes first, then the big write.
	c.cork()
	_, err = c.Write([]byte("e"))
	require.NoError(t, err)
	big := make([]byte, maxCorked)
	_, err = c.Write(big)
	require.NoError(t, err)
	require.Len(t, under.writes, 4)
	require.Equal(t, []byte("e"), under.writes[2])
	require.Len(t, under.writes[3], maxCorked)
	require.NoError(t, c.uncork(time.Second))
	require.Len(t, under.writes, 4)
}

// hijacker is a ResponseWriter whose connection comes with bytes the
// client sent after its handshake, already buffered.
type hijacker struct {
	http.ResponseWriter
	nc  net.Conn
	brw *bufio.ReadWriter
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) { return h.nc, h.brw, nil }

func TestCorkWriter_KeepsEarlyBytes(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	br := bufio.NewReader(io.MultiReader(strings.NewReader("early|"), server))
	_, err := br.Peek(len("early|"))
	require.NoError(t, err)
	h := &hijacker{nc: server, brw: bufio.NewReadWriter(br, bufio.NewWriter(server))}
	cw := &corkWriter{ResponseWriter: h}
	nc, brw, err := cw.Hijack()
	require.NoError(t, err)
	require.Equal(t, cw.conn, nc)
	go func() { _, _ = client.Write([]byte("later")) }()
	got := make([]byte, len("early|later"))
	_, err = io.ReadFull(brw.Reader, got)
	require.NoError(t, err)
	require.Equal(t, "early|later", string(got), "what was buffered first, then the connection")
}
