package main

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// servers are the processes that serve the scenarios now running (none
// for the scenarios that talk to Redis straight from Go); their CPU per
// operation is a row of every throughput scenario.
type servers struct {
	what string // "semaphored", "bare server": who, in the row's note
	pids []int
}

// costs records what one operation of a throughput scenario cost, round
// by round: with Redis, the commands Redis ran and its main-thread CPU;
// with server processes, their CPU. begin and end bracket each measured
// round.
type costs struct {
	ctx  context.Context
	rc   *redis.Client // nil: no Redis rows
	srv  servers
	cmds row // Redis commands per op, in-script included
	rcpu row // Redis main-thread CPU per op
	scpu row // the servers' CPU per op

	cmd0  int64
	rcpu0 float64
	scpu0 time.Duration
	serr  error
}

// costs returns the cost rows of the scenario named prefix, per op ("pair"
// or "job"): Redis rows when withRedis, a server CPU row when servers run.
func (b *bench) costs(group, prefix, per string, withRedis bool) *costs {
	c := &costs{ctx: b.ctx, srv: b.srv,
		cmds: row{group: group, name: prefix + ": Redis commands per " + per + ", in-script included", unit: "cmds/" + per,
			note: "INFO commandstats delta / " + per + "s"},
		rcpu: row{group: group, name: prefix + ": Redis main-thread CPU per " + per, unit: "µs/" + per,
			note: "INFO cpu *_main_thread delta / " + per + "s"},
		scpu: row{group: group, name: prefix + ": server CPU per " + per, unit: "µs/" + per,
			note: "user + sys CPU of the " + b.srv.what + " process, all threads (/proc/PID/task/*/schedstat), delta / " + per + "s; its background work included"},
	}
	if withRedis {
		c.rc = b.rc
	}
	return c
}

// begin takes the readings at the start of a round.
func (c *costs) begin() {
	if c.rc != nil {
		c.cmd0, _ = commandCalls(c.ctx, c.rc)
		c.rcpu0, _ = redisCPU(c.ctx, c.rc)
	}
	if len(c.srv.pids) > 0 && c.serr == nil {
		c.scpu0, c.serr = cpuTime(c.srv.pids...)
	}
}

// end takes the readings at the end of a round of n ops and records the
// costs per op.
func (c *costs) end(n int64) {
	if n <= 0 {
		return
	}
	if c.rc != nil {
		cmd1, _ := commandCalls(c.ctx, c.rc)
		rcpu1, _ := redisCPU(c.ctx, c.rc)
		c.cmds.vals = append(c.cmds.vals, float64(cmd1-c.cmd0)/float64(n))
		c.rcpu.vals = append(c.rcpu.vals, (rcpu1-c.rcpu0)*1e6/float64(n))
	}
	if len(c.srv.pids) > 0 && c.serr == nil {
		var scpu1 time.Duration
		if scpu1, c.serr = cpuTime(c.srv.pids...); c.serr == nil {
			c.scpu.vals = append(c.scpu.vals, float64(scpu1-c.scpu0)/float64(time.Microsecond)/float64(n))
		}
	}
}

// rows are the cost rows: Redis commands and CPU with Redis, then the
// servers' CPU when servers run.
func (c *costs) rows() []row {
	var rs []row
	if c.rc != nil {
		rs = append(rs, c.cmds, c.rcpu)
	}
	if len(c.srv.pids) > 0 {
		if c.serr != nil {
			c.scpu.note = label(c.serr)
		}
		rs = append(rs, c.scpu)
	}
	return rs
}
