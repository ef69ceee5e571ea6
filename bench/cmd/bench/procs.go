package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// freePort returns a free loopback TCP port other than 6379.
func freePort() (int, error) {
	for range 10 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		if p != 6379 {
			return p, nil
		}
	}
	return 0, errors.New("no free port")
}

// proc is a child process with its log file.
type proc struct {
	cmd *exec.Cmd
	log string
}

// stop sends SIGTERM and waits up to 10 s, then kills.
func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	s := string(b)
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// startRedis starts a throwaway redis-server on a free loopback port with
// AOF on, fsync every second, no RDB snapshots and no AOF rewrites (a fork
// on a 2-core box would disturb the rounds).
func startRedis(dir string) (*proc, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, "", fmt.Errorf("redis-server not found on PATH: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	rdir := filepath.Join(dir, "redis")
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return nil, "", err
	}
	logf := filepath.Join(dir, "redis.log")
	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", rdir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
		"--auto-aof-rewrite-percentage", "0", "--maxclients", "10000",
		"--logfile", logf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	p := &proc{cmd: cmd, log: logf}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c.Ping(context.Background()).Err() == nil {
			return p, addr, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, "", fmt.Errorf("redis-server did not answer on %s: %s", addr, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// buildSemaphored builds repo/cmd/semaphored into dir. A working tree
// may be mid-change: a failing build is retried every 30 s, up to 4 times.
func buildSemaphored(repo, dir string) (string, error) {
	out := filepath.Join(dir, "semaphored")
	var last []byte
	for attempt := range 5 {
		cmd := exec.Command("go", "build", "-o", out, "./cmd/semaphored")
		cmd.Dir = repo
		b, err := cmd.CombinedOutput()
		if err == nil {
			return out, nil
		}
		last = b
		logf("build of ./cmd/semaphored failed (attempt %d), retrying in 30s:\n%s", attempt+1, b)
		time.Sleep(30 * time.Second)
	}
	return "", fmt.Errorf("go build ./cmd/semaphored: %s", last)
}

// exportRev writes git revision rev of repo into dir/src (git archive) and
// returns that directory.
func exportRev(repo, rev, dir string) (string, error) {
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", repo, rev, src)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %v: %s", rev, err, out)
	}
	return src, nil
}

// startSemaphored starts the server binary on a free loopback port, with
// the Redis store when redisURL is set, else the memory store, and waits
// for /readyz.
func startSemaphored(bin, dir, redisURL, tag string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"--addr", addr, "--admin-key", adminKey, "--webhook-allow-private", "--log-level", serverLogLevel}
	if redisURL != "" {
		args = append(args, "--redis-url", redisURL, "--redis-prefix", "sdbench")
	}
	logf := filepath.Join(dir, "semaphored-"+tag+".log")
	f, err := os.Create(logf)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	p := &proc{cmd: cmd, log: logf}
	base := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, base, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, "", fmt.Errorf("semaphored not ready on %s: %s", addr, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanEnv is the environment without SEMAPHORED_* variables, so that only
// the flags above configure the server.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SEMAPHORED_") {
			env = append(env, kv)
		}
	}
	return env
}

// rss returns the resident set size of pid in bytes (Linux).
func rss(pid int) int64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n * 1024
		}
	}
	return 0
}

// cpuTime is the CPU time (user + system) the processes pids have used so
// far: the sum over their threads of the first field of
// /proc/PID/task/TID/schedstat (time on a CPU, ns). /proc/PID/schedstat
// alone is the main thread's; /proc/PID/stat's utime + stime cover every
// thread but in clock ticks (10 ms). A thread that exits takes its time
// out of the sum (the Go runtime keeps its threads).
func cpuTime(pids ...int) (time.Duration, error) {
	var total int64
	for _, pid := range pids {
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		if err != nil {
			return 0, err
		}
		for _, t := range tasks {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/schedstat")
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited since the listing
			}
			if err != nil {
				return 0, err
			}
			v, _, _ := strings.Cut(string(b), " ")
			ns, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: schedstat %q: %w", t.Name(), b, err)
			}
			total += ns
		}
	}
	return time.Duration(total), nil
}
