package sdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The worker's transports (SPEC §6): a link carries the frames of one
// connection to a session, over a websocket, an SSE stream or long polls.
// The worker above it (worker_conn.go) is the same on each: it reads
// frames, matches replies to requests by id, and resumes.

// Transport chooses how a Worker connects (WithTransport).
type Transport string

// Transports. TransportAuto (the default) tries the websocket first, then
// SSE, then long-poll (see WithTransport).
const (
	TransportAuto      Transport = "auto"
	TransportWebsocket Transport = "websocket"
	TransportSSE       Transport = "sse"
	TransportLongPoll  Transport = "longpoll"
)

// link is one connection to a session.
type link interface {
	kind() Transport
	// send writes one client frame. alone: a request whose reply may wait
	// long (an acquire with wait), which must not hold up the frames
	// behind it.
	send(ctx context.Context, frame []byte, alone bool) error
	// recv returns the next frame from the server: pushed, or a reply.
	recv(ctx context.Context) ([]byte, error)
	// heard is when the server was last heard on the stream (a frame, a
	// ping, a poll's answer): what tells a live link from a deaf one.
	heard() time.Time
	// setSession names the session the link carries after a resume.
	setSession(id string)
	// closeNow drops the connection: the session is lost, resumable.
	closeNow()
	// end gives the session up (websocket close 1000, DELETE).
	end(ctx context.Context)
}

// closedError ends a link the server closed with a code (the websocket
// close code, or the closed frame of SSE and long-poll).
type closedError struct {
	code   int
	reason string
}

func (e *closedError) Error() string {
	return fmt.Sprintf("sdk: connection closed by the server: %d %s", e.code, e.reason)
}

// closeCode is the code the server closed a link with (-1 if none).
func closeCode(err error) int {
	var ce *closedError
	if errors.As(err, &ce) {
		return ce.code
	}
	return int(websocket.CloseStatus(err))
}

// ---- websocket ----

type wsLink struct {
	conn     *websocket.Conn
	lastRead atomic.Int64
}

func (l *wsLink) kind() Transport   { return TransportWebsocket }
func (l *wsLink) setSession(string) {}
func (l *wsLink) closeNow()         { _ = l.conn.CloseNow() }
func (l *wsLink) heard() time.Time  { return time.Unix(0, l.lastRead.Load()) }
func (l *wsLink) end(context.Context) {
	_ = l.conn.Close(websocket.StatusNormalClosure, "worker closed")
}
func (l *wsLink) send(ctx context.Context, b []byte, _ bool) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return l.conn.Write(ctx, websocket.MessageText, b)
}

func (l *wsLink) recv(ctx context.Context) ([]byte, error) {
	_, data, err := l.conn.Read(ctx)
	if err == nil {
		l.lastRead.Store(time.Now().UnixNano())
	}
	return data, err
}

func dialWebsocket(ctx context.Context, w *Worker, tg target) (link, error) {
	conn, resp, err := websocket.Dial(ctx, tg.ws, &websocket.DialOptions{HTTPClient: w.cfg.httpClient, HTTPHeader: w.header})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode >= 400 {
			err = decodeError(resp)
		}
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		return nil, err
	}
	conn.SetReadLimit(maxFrameBytes)
	l := &wsLink{conn: conn}
	l.lastRead.Store(time.Now().UnixNano())
	return l, nil
}

// ---- SSE and long-poll ----

// httpLink is a session over plain HTTP: frames from the server come on
// an SSE stream or from polls; client frames are posted, in order, those
// queued while a post runs going together in the next one.
type httpLink struct {
	w     *Worker
	base  string
	which Transport

	ctx    context.Context // ends with the link
	cancel context.CancelFunc
	in     chan []byte
	last   atomic.Int64 // unix nanos the server was last heard on the stream
	body   *http.Response

	mu     sync.Mutex
	sid    string
	err    error    // why the link ended
	queue  [][]byte // frames waiting for the next post
	busy   bool     // a post runs
	ending bool
}

func (l *httpLink) kind() Transport  { return l.which }
func (l *httpLink) heard() time.Time { return time.Unix(0, l.last.Load()) }
func (l *httpLink) hear()            { l.last.Store(time.Now().UnixNano()) }

func (l *httpLink) setSession(id string) {
	l.mu.Lock()
	l.sid = id
	l.mu.Unlock()
}

func (l *httpLink) session() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sid
}

// fail ends the link on err (the first one is kept).
func (l *httpLink) fail(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	l.cancel()
}

func (l *httpLink) closeNow() { l.fail(ErrConnectionLost) }

func (l *httpLink) end(ctx context.Context) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, l.url("/v1/sessions/"+url.PathEscape(l.session())), nil)
	if err == nil {
		l.w.setHeaders(req)
		if resp, err := l.w.cfg.httpClient.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}
	l.fail(ErrConnectionLost)
}

func (l *httpLink) url(path string) string { return l.base + path }

func (l *httpLink) recv(ctx context.Context) ([]byte, error) {
	select {
	case f := <-l.in:
		return f, nil
	default:
	}
	select {
	case f := <-l.in:
		return f, nil
	case <-l.ctx.Done():
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// deliver hands a frame from the server to recv; a closed frame ends the
// link with its code instead.
func (l *httpLink) deliver(f []byte) bool {
	if bytes.HasPrefix(f, []byte(`{"type":"closed"`)) {
		var c struct {
			Code   int    `json:"closeCode"`
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(f, &c)
		l.fail(&closedError{code: c.Code, reason: c.Reason})
		return false
	}
	select {
	case l.in <- f:
		return true
	case <-l.ctx.Done():
		return false
	}
}

func (l *httpLink) send(ctx context.Context, b []byte, alone bool) error {
	if l.ctx.Err() != nil {
		return ErrConnectionLost
	}
	if alone {
		go l.post([][]byte{b})
		return nil
	}
	l.mu.Lock()
	l.queue = append(l.queue, b)
	start := !l.busy
	l.busy = true
	l.mu.Unlock()
	if start {
		go l.poster()
	}
	return nil
}

// maxPostFrames bounds the frames of one post (the server takes 1,000).
const maxPostFrames = 500

// poster posts the queued frames until none is left, in order.
func (l *httpLink) poster() {
	for {
		l.mu.Lock()
		n := min(len(l.queue), maxPostFrames)
		if n == 0 || l.ctx.Err() != nil {
			l.busy = false
			l.mu.Unlock()
			return
		}
		batch := l.queue[:n:n]
		l.queue = l.queue[n:]
		l.mu.Unlock()
		l.post(batch)
	}
}

// post sends frames to the session and hands their replies to recv. A
// failed post ends the link: the frames may or may not have taken effect,
// as with a websocket that broke.
func (l *httpLink) post(frames [][]byte) {
	body := append([]byte{'['}, bytes.Join(frames, []byte{','})...)
	body = append(body, ']')
	req, err := http.NewRequestWithContext(l.ctx, http.MethodPost, l.url("/v1/sessions/"+url.PathEscape(l.session())+"/frames"), bytes.NewReader(body))
	if err != nil {
		l.fail(err)
		return
	}
	l.w.setHeaders(req)
	req.Header.Set("Content-Type", "application/json")
	replies, err := l.w.framesCall(req)
	if err != nil {
		l.fail(err)
		return
	}
	for _, f := range replies {
		if !l.deliver(f) {
			return
		}
	}
}

// setHeaders puts the worker's auth and user agent on a request.
func (w *Worker) setHeaders(req *http.Request) {
	for k, v := range w.header {
		req.Header[k] = v
	}
}

// framesCall runs a request answered {"frames": [...]}.
func (w *Worker) framesCall(req *http.Request) ([]json.RawMessage, error) {
	resp, err := w.cfg.httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	var out struct {
		Frames []json.RawMessage `json:"frames"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("sdk: malformed frames from the server: %w", err)
	}
	return out.Frames, nil
}

func newHTTPLink(w *Worker, tg target, which Transport) *httpLink {
	ctx, cancel := context.WithCancel(w.ctx)
	l := &httpLink{w: w, base: tg.base, which: which, ctx: ctx, cancel: cancel, in: make(chan []byte, 64)}
	l.hear()
	return l
}

// dialSSE opens GET /v1/sse (resuming the session of token, if set); the
// stream's frames go to recv.
func dialSSE(ctx context.Context, w *Worker, tg target, token string) (link, error) {
	l := newHTTPLink(w, tg, TransportSSE)
	u := l.url("/v1/sse")
	if token != "" {
		u += "?resume=" + url.QueryEscape(token)
	}
	req, err := http.NewRequestWithContext(l.ctx, http.MethodGet, u, nil)
	if err != nil {
		l.cancel()
		return nil, err
	}
	w.setHeaders(req)
	req.Header.Set("Accept", "text/event-stream")
	// the dial's deadline bounds the response's headers, not the stream
	stop := context.AfterFunc(ctx, l.cancel)
	resp, err := w.cfg.httpClient.Do(req)
	opened := stop()
	if err != nil || !opened {
		l.cancel()
		if err == nil {
			_ = resp.Body.Close()
			err = ctx.Err()
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		l.cancel()
		return nil, decodeError(resp)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		_ = resp.Body.Close()
		l.cancel()
		return nil, fmt.Errorf("sdk: GET /v1/sse answered %q, not an event stream", ct)
	}
	l.body = resp
	go l.readSSE(resp)
	return l, nil
}

// readSSE reads the stream's events until it ends.
func (l *httpLink) readSSE(resp *http.Response) {
	defer resp.Body.Close()
	stop := context.AfterFunc(l.ctx, func() { _ = resp.Body.Close() })
	defer stop()
	r := bufio.NewReaderSize(resp.Body, 16<<10)
	var data []byte
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// a long line: gather it whole
			rest, rerr := r.ReadBytes('\n')
			line, err = append(append([]byte(nil), line...), rest...), rerr
		}
		if err != nil {
			l.fail(ErrConnectionLost)
			return
		}
		l.hear()
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0: // the event ends
			if data != nil {
				f := data
				data = nil
				if !l.deliver(f) {
					return
				}
			}
		case line[0] == ':': // a comment: the server's ping
		case bytes.HasPrefix(line, []byte("data:")):
			v := bytes.TrimPrefix(line[5:], []byte(" "))
			if data == nil {
				data = append([]byte(nil), v...)
			} else {
				data = append(append(data, '\n'), v...)
			}
		}
		if len(data) > maxFrameBytes {
			l.fail(fmt.Errorf("sdk: an SSE event over %d bytes", maxFrameBytes))
			return
		}
	}
}

// dialLongPoll opens POST /v1/sessions (resuming the session of token, if
// set); polls fetch the frames.
func dialLongPoll(ctx context.Context, w *Worker, tg target, token string) (link, error) {
	l := newHTTPLink(w, tg, TransportLongPoll)
	var body []byte
	if token != "" {
		body, _ = json.Marshal(map[string]string{"resume": token})
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url("/v1/sessions"), bytes.NewReader(body))
	if err != nil {
		l.cancel()
		return nil, err
	}
	w.setHeaders(req)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := w.cfg.httpClient.Do(req)
	if err != nil {
		l.cancel()
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		l.cancel()
		return nil, decodeError(resp)
	}
	var welcome json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&welcome); err != nil {
		l.cancel()
		return nil, fmt.Errorf("sdk: malformed welcome: %w", err)
	}
	var head inFrame
	_ = json.Unmarshal(welcome, &head)
	l.sid = head.Session
	heartbeat := defaultHeartbeat
	if head.Heartbeat != nil && *head.Heartbeat > 0 {
		heartbeat = time.Duration(*head.Heartbeat)
	}
	l.in <- welcome
	go l.pollLoop(heartbeat)
	return l, nil
}

// pollLoop polls until the link ends, each poll waiting up to a
// heartbeat, so that the server is heard at least that often.
func (l *httpLink) pollLoop(heartbeat time.Duration) {
	wait := max(heartbeat, time.Second)
	for l.ctx.Err() == nil {
		u := l.url("/v1/sessions/" + url.PathEscape(l.session()) + "/frames?wait=" + wait.String())
		req, err := http.NewRequestWithContext(l.ctx, http.MethodGet, u, nil)
		if err != nil {
			l.fail(err)
			return
		}
		l.w.setHeaders(req)
		frames, err := l.w.framesCall(req)
		if err != nil {
			l.fail(err)
			return
		}
		l.hear()
		for _, f := range frames {
			if !l.deliver(f) {
				return
			}
		}
	}
}
