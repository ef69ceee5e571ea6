// Package testredis gives tests a real redis-server on a free loopback port.
//
// Tests share one server per test binary (started on first use, stopped by
// Stop from TestMain) and isolate themselves by a unique key prefix, so they
// can run in parallel without FLUSHDB. SEMAPHORED_TEST_REDIS_URL points the
// tests at an existing server instead. A test that needs Redis fails (never
// skips) when no redis-server binary is found.
package testredis

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvURL names the environment variable with the URL of an existing Redis.
const EnvURL = "SEMAPHORED_TEST_REDIS_URL"

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
	prefixSeq  atomic.Int64
)

// URL returns the URL of the shared test Redis, starting it if needed.
func URL(tb testing.TB) string {
	tb.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	sharedOnce.Do(func() { shared, sharedErr = start("") })
	if sharedErr != nil {
		tb.Fatalf("testredis: %v", sharedErr)
	}
	return shared.URL()
}

// Stop stops the shared server, if this binary started one. Call it from
// TestMain after m.Run.
func Stop() {
	if shared != nil {
		shared.Stop()
		_ = os.RemoveAll(shared.dir)
	}
}

// Client returns a client of the shared test Redis, closed at cleanup.
func Client(tb testing.TB) *redis.Client {
	tb.Helper()
	opt, err := redis.ParseURL(URL(tb))
	if err != nil {
		tb.Fatalf("testredis: %v", err)
	}
	c := redis.NewClient(opt)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix unique to this test run and test.
func Prefix(tb testing.TB) string {
	return fmt.Sprintf("t%d-%d-%d:", os.Getpid(), time.Now().UnixNano()%1e9, prefixSeq.Add(1))
}

// Server is one redis-server process owned by a test.
type Server struct {
	dir  string
	port int
	mu   sync.Mutex
	cmd  *exec.Cmd
	args []string
}

// StartServer starts a dedicated redis-server (AOF on, so data survives a
// Restart), stopped at cleanup. extra adds redis-server arguments.
func StartServer(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	s, err := start(tb.TempDir(), extra...)
	if err != nil {
		tb.Fatalf("testredis: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Binary returns the path of redis-server, or an error naming the fix.
func Binary() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server not found on PATH: install it (apt-get install -y redis-server) or set %s", EnvURL)
	}
	return p, nil
}

func start(dir string, extra ...string) (*Server, error) {
	if _, err := Binary(); err != nil {
		return nil, err
	}
	var err error
	if dir == "" {
		dir, err = os.MkdirTemp("", "semaphored-redis-")
		if err != nil {
			return nil, err
		}
	}
	// A free port can be taken between FreePort and the server's bind (by
	// another process, or for a cluster node its bus port, port+10000):
	// such a start is tried again on another port.
	for try := 1; ; try++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		s := &Server{dir: dir, port: port}
		s.args = append([]string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--dir", dir, "--appendonly", "yes", "--appendfsync", "everysec",
			"--save", "", "--protected-mode", "no", "--daemonize", "no",
			"--logfile", filepath.Join(dir, "redis.log"),
		}, extra...)
		err = s.launch()
		if err == nil {
			return s, nil
		}
		if try >= 5 || !strings.Contains(err.Error(), "Address already in use") {
			return nil, err
		}
	}
}

func (s *Server) launch() error {
	bin, err := Binary()
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, s.args...)
	cmd.Dir = s.dir
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c := redis.NewClient(&redis.Options{Addr: s.Addr()})
		err = c.Ping(context.Background()).Err()
		_ = c.Close()
		if err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_, _ = cmd.Process.Wait()
	return fmt.Errorf("redis-server on port %d did not answer: %v; log: %s", s.port, err, s.logTail())
}

func (s *Server) logTail() string {
	f, err := os.Open(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 10 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Stop kills the server (SIGKILL: what is not yet in the AOF is lost).
func (s *Server) Stop() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	_, _ = cmd.Process.Wait()
}

// Restart shuts the server down cleanly (fsyncing the AOF) and starts it
// again on the same port and data directory.
func (s *Server) Restart() error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	_ = c.ShutdownSave(context.Background()).Err() // the connection drops: error expected
	_ = c.Close()
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd != nil {
		done := make(chan struct{})
		go func() { _, _ = cmd.Process.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	return s.launch()
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartCluster starts a three-master Redis Cluster (no replicas) on free
// loopback ports, stopped at cleanup, and returns its node addresses
// (host:port) once every node reports cluster_state:ok. It fails the test
// when the cluster does not form within 20 s.
func StartCluster(tb testing.TB) []string {
	tb.Helper()
	ctx := context.Background()
	var addrs []string
	var clients []*redis.Client
	for range 3 {
		srv := StartServer(tb, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--appendonly", "no")
		addrs = append(addrs, srv.Addr())
		c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		tb.Cleanup(func() { _ = c.Close() })
		clients = append(clients, c)
	}
	ranges := [][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}
	host, port, _ := strings.Cut(addrs[0], ":")
	for i, c := range clients {
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", ranges[i][0], ranges[i][1]).Err(); err != nil {
			tb.Fatalf("testredis: CLUSTER ADDSLOTSRANGE on %s: %v", addrs[i], err)
		}
		if i > 0 {
			if err := c.ClusterMeet(ctx, host, port).Err(); err != nil {
				tb.Fatalf("testredis: CLUSTER MEET from %s: %v", addrs[i], err)
			}
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for _, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				ok = false
				break
			}
		}
		if ok {
			return addrs
		}
		if time.Now().After(deadline) {
			tb.Fatalf("testredis: the cluster on %v did not form within 20s", addrs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
