package hub

import (
	"context"
	"encoding/json"
	"time"

	"github.com/coder/websocket"
)

// A session's connection is its transport: a websocket (ws.go), an SSE
// stream (sse.go) or a run of long polls (poll.go). The session itself
// (session.go: its leases, subscriptions, pushed and held jobs, its send
// queue with backpressure) is the same on each; a transport only carries
// frames. Client frames reach a session through its websocket's reader,
// or posted over HTTP to whichever instance (Hub.Post, post.go).

// Transport kinds, as Session.Transport reports them.
const (
	TransportWebsocket = "websocket"
	TransportSSE       = "sse"
	TransportLongPoll  = "longpoll"
)

// transport carries the frames of one session's connection.
type transport interface {
	// kind is one of the Transport constants.
	kind() string
	// pulled reports whether the client takes its frames from the send
	// queue (long-poll) instead of a writer pushing them (write).
	pulled() bool
	// write writes a batch of frames, in order; only the session's writer
	// calls it, one batch at a time. ctx ends with the connection; each
	// frame is written within the hub's WriteTimeout.
	write(ctx context.Context, batch [][]byte) error
	// close ends the connection and tells the client why where it can:
	// the code and reason of a websocket close frame, a closed frame on an
	// SSE stream or to a waiting poll. It may block (a close handshake).
	close(code websocket.StatusCode, reason string)
	// closeNow drops the connection.
	closeNow()
}

// closedFrame tells an SSE or long-poll client why the server ended its
// connection, with the close code a websocket would have got.
type closedFrame struct {
	Type   string `json:"type"` // "closed"
	Code   int    `json:"closeCode"`
	Reason string `json:"reason"`
}

func marshalClosed(code websocket.StatusCode, reason string) []byte {
	b, _ := json.Marshal(closedFrame{Type: "closed", Code: int(code), Reason: reason})
	return b
}

// silenceClock is the heartbeat rule of a transport whose client is heard
// through calls (posted frames, polls): a timer that closes the session
// after 3 heartbeats unless it is reset. The transport holds the timer
// from before the session opens (a call may come at once); bind hands it
// the session once open returned (nil when open failed).
func (h *Hub) silenceClock(why string) (timer *time.Timer, bind func(*Session)) {
	var s *Session
	ready := make(chan struct{})
	timer = time.AfterFunc(3*h.cfg.Heartbeat, func() {
		<-ready
		if s != nil {
			s.close(reasonHeartbeat, ClosePolicy, why)
		}
	})
	return timer, func(sess *Session) {
		s = sess
		close(ready)
	}
}

// Transport is the kind of connection the session is on now.
func (s *Session) Transport() string { return s.tr.kind() }

// InBody is false: replies sent to the session go on its stream.
func (s *Session) InBody() bool { return false }
