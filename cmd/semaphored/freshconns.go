package main

import (
	"net"
	"net/http"
	"sync"
)

// freshConns tracks the connections that have not sent a request yet. On
// Shutdown, net/http takes such a connection for idle only once it is 5 s
// old (golang/go#22682), so one a client opened and kept in its pool held
// every exit, and every instance of a rolling deploy, up to 5 s. They are
// closed as Shutdown begins (after it closed the listeners), and one
// accepted just before is closed as soon as it is seen: with no request on
// them, nothing is lost.
type freshConns struct {
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closing bool
}

func newFreshConns() *freshConns {
	return &freshConns{conns: map[net.Conn]struct{}{}}
}

// track is the server's ConnState hook.
func (f *freshConns) track(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case st != http.StateNew:
		delete(f.conns, c)
	case f.closing:
		_ = c.Close()
	default:
		f.conns[c] = struct{}{}
	}
}

// closeAll closes the connections that never sent a request, and from now
// on each new one as it comes (Shutdown calls it).
func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closing = true
	for c := range f.conns {
		_ = c.Close()
		delete(f.conns, c)
	}
}
