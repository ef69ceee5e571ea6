package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// The HTTP limit of this machine (issue 12): a bare net/http server that
// answers the two requests of a sync pair (acquire, release) with a fixed
// lease after decoding the body, measured with the same SDK client and
// clients as semaphored. It runs in a process of its own (this binary,
// -bare-serve), as semaphored does, so both share the cores alike.
const (
	gBare = "bare net/http"
	nBare = "acquire + release over HTTP (SDK) against a handler that decodes the body and writes a fixed lease"
)

// bareLease is the fixed reply.
var bareLease = []byte(`{"lease":{"id":"00000000000000000000000000000000.YmFyZQ","semaphore":"bare","channel":"default","weight":1,"fencingToken":1,"acquiredAt":"2026-01-01T00:00:00Z","expiresAt":"2026-01-01T00:01:00Z"}}` + "\n")

// serveBare serves the bare handler on addr until killed.
func serveBare(addr string) error {
	reply := func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil && err != io.EOF {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(bareLease)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/semaphores/{name}/acquire", reply)
	mux.HandleFunc("POST /v1/leases/{id}/release", reply)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("{}")) })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

// bare measures the bare row.
func (b *bench) bare() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(exe, "-bare-serve", addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &proc{cmd: cmd}
	defer p.stop()
	base := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bare server not up on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := sdk.New(base, adminKey, sdk.WithHTTPClient(httpClient))
	if err != nil {
		return err
	}
	ctx := context.Background()
	b.srv = servers{what: "bare server", pids: []int{cmd.Process.Pid}}
	defer func() { b.srv = servers{} }()
	b.throughput(gBare, nBare, "pairs/s", "64 clients, the same SDK calls as semaphored's sync pairs", false, func(int) (int, error) {
		l, err := c.Acquire(ctx, "bare", sdk.AcquireOptions{TTL: time.Minute})
		if err != nil {
			return 0, err
		}
		if _, err := c.Release(ctx, l.ID); err != nil {
			return 0, err
		}
		return 1, nil
	})
	return nil
}
