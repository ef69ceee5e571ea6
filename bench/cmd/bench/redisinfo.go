package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// commandCalls is the sum of calls over INFO commandstats: every command
// Redis executed, including those a Lua script ran (redis.call counts).
func commandCalls(ctx context.Context, c *redis.Client) (int64, error) {
	s, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	var total int64
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(line, "cmdstat_info:") {
			continue
		}
		_, rest, _ := strings.Cut(line, "calls=")
		v, _, _ := strings.Cut(rest, ",")
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
	}
	return total, nil
}

// usedMemory is INFO memory used_memory in bytes.
func usedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	s, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO memory")
}

// monitor counts the commands Redis logs by MONITOR while it runs, split
// into commands sent by clients (round trips, one per FCALL or EVALSHA however much
// the script does) and commands run inside Lua scripts ("[0 lua]").
type monitor struct {
	conn          net.Conn
	client, inLua atomic.Int64
	byName        map[string]int64 // client commands by name, read after stop
	done          chan struct{}
}

func startMonitor(addr string) (*monitor, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		conn.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(conn, 1<<20)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		conn.Close()
		return nil, fmt.Errorf("MONITOR: %q %v", line, err)
	}
	m := &monitor{conn: conn, byName: map[string]int64{}, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			// +1700000000.123456 [0 127.0.0.1:5000] "evalsha" ...
			_, rest, ok := strings.Cut(line, " [")
			if !ok {
				continue
			}
			src, cmd, _ := strings.Cut(rest, "] ")
			if strings.HasSuffix(src, " lua") {
				m.inLua.Add(1)
				continue
			}
			m.client.Add(1)
			name, _, _ := strings.Cut(strings.TrimPrefix(cmd, `"`), `"`)
			m.byName[strings.ToLower(name)]++
		}
	}()
	return m, nil
}

// stop ends MONITOR after letting the log drain for a moment.
func (m *monitor) stop() {
	time.Sleep(200 * time.Millisecond)
	_ = m.conn.Close()
	<-m.done
}

// top lists the client commands seen, most frequent first.
func (m *monitor) top(per float64) string {
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range m.byName {
		all = append(all, kv{k, v})
	}
	for i := range all { // tiny n: selection sort
		for j := i + 1; j < len(all); j++ {
			if all[j].v > all[i].v {
				all[i], all[j] = all[j], all[i]
			}
		}
	}
	var parts []string
	for i, e := range all {
		if i == 5 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", e.k, float64(e.v)/per))
	}
	return strings.Join(parts, ", ")
}

// redisCPU is the CPU time (user + sys, seconds) of Redis's main thread,
// the one that runs commands and scripts.
func redisCPU(ctx context.Context, c *redis.Client) (float64, error) {
	s, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		for _, k := range []string{"used_cpu_user_main_thread:", "used_cpu_sys_main_thread:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
	}
	return total, nil
}
