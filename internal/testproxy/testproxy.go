// Package testproxy holds the proxies tests put between a worker and
// semaphored: a reverse proxy that refuses websockets, as corporate
// proxies do, and a TCP proxy that cuts every connection after a while,
// as load balancers with idle or age limits do. Loopback only.
package testproxy

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// NoUpgrade is a reverse proxy to target that answers 501 to every
// request asking for a protocol upgrade (a websocket) and passes the
// rest, flushing each write at once (it buffers nothing: SSE passes).
// Refuse, when set, also refuses the requests for which it returns true.
type NoUpgrade struct {
	URL     string
	Refused atomic.Int64 // upgrade (and Refuse) requests answered 501
	Refuse  func(*http.Request) bool

	srv *httptest.Server
}

// StartNoUpgrade starts a NoUpgrade proxy to target (http://host:port).
// allowUpgrade, when it returns true, lets upgrades through (a proxy
// whose websocket support comes back).
func StartNoUpgrade(target string, allowUpgrade func() bool) *NoUpgrade {
	u, err := url.Parse(target)
	if err != nil {
		panic(err)
	}
	p := &NoUpgrade{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0) // clients that go away mid-stream are expected
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upgrade := r.Header.Get("Upgrade") != "" || strings.EqualFold(r.Header.Get("Connection"), "upgrade")
		if (upgrade && (allowUpgrade == nil || !allowUpgrade())) || (p.Refuse != nil && p.Refuse(r)) {
			p.Refused.Add(1)
			http.Error(w, "this proxy does not pass websockets", http.StatusNotImplemented)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	p.URL = p.srv.URL
	return p
}

// Close stops the proxy and drops its connections.
func (p *NoUpgrade) Close() {
	p.srv.CloseClientConnections()
	p.srv.Close()
}

// Cutter is a TCP proxy to a target address that closes every
// connection (both sides) a while after its accept, whatever runs on it
// (StartCutter), and can go deaf (MuteAll).
type Cutter struct {
	URL  string // http://its address
	Cuts atomic.Int64

	ln     net.Listener
	target string
	after  time.Duration
	mu     sync.Mutex
	conns  map[net.Conn]bool
	muted  map[net.Conn]bool // server → client bytes dropped
	closed bool
	wg     sync.WaitGroup
}

// StartCutter starts a Cutter to target (host:port).
func StartCutter(target string, after time.Duration) (*Cutter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &Cutter{URL: "http://" + ln.Addr().String(), ln: ln, target: target, after: after, conns: map[net.Conn]bool{}, muted: map[net.Conn]bool{}}
	c.wg.Add(1)
	go c.accept()
	return c, nil
}

func (c *Cutter) accept() {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", c.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !c.track(in, out) {
			return
		}
		cut := time.AfterFunc(c.after, func() {
			c.Cuts.Add(1)
			_ = in.Close()
			_ = out.Close()
		})
		c.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer c.wg.Done()
			if dst == in {
				_, _ = io.Copy(muteWriter{c, dst}, src)
			} else {
				_, _ = io.Copy(dst, src)
			}
			cut.Stop()
			_ = dst.Close()
			_ = src.Close()
			c.untrack(dst, src)
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// MuteAll stops passing what the server sends on every connection open
// now, without closing them: to the client they go deaf. Connections
// accepted later pass as before.
func (c *Cutter) MuteAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n := range c.conns {
		c.muted[n] = true
	}
}

// muteWriter writes to a client connection unless it is muted.
type muteWriter struct {
	c    *Cutter
	conn net.Conn
}

func (w muteWriter) Write(p []byte) (int, error) {
	w.c.mu.Lock()
	muted := w.c.muted[w.conn]
	w.c.mu.Unlock()
	if muted {
		return len(p), nil
	}
	return w.conn.Write(p)
}

func (c *Cutter) track(conns ...net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		for _, n := range conns {
			_ = n.Close()
		}
		return false
	}
	for _, n := range conns {
		c.conns[n] = true
	}
	return true
}

func (c *Cutter) untrack(conns ...net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range conns {
		delete(c.conns, n)
		delete(c.muted, n)
	}
}

// Close stops the proxy and closes its connections.
func (c *Cutter) Close() {
	c.mu.Lock()
	c.closed = true
	for n := range c.conns {
		_ = n.Close()
	}
	c.mu.Unlock()
	_ = c.ln.Close()
	c.wg.Wait()
}
