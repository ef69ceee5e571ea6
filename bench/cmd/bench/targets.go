package main

import (
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/semaphored/semaphored/sdk"
)

// Names of the rows the performance targets compare.
const (
	gRedis  = "semaphored (redis store)"
	gMemory = "semaphored (memory store)"

	nUnc      = "sync acquire + release over HTTP (SDK), uncontended"
	nCont     = "sync acquire + release over HTTP (SDK), contended, waiting acquires"
	nContCmds = "contended: Redis commands per pair sent by clients"
	nP50      = "hand-off latency p50 (release → next waiter granted)"
	nP99      = "hand-off latency p99"
	nFunnel   = "async funnel: enqueue → webhook delivered → released via API"
	// nFunnelBatch is nFunnel with 100 jobs per enqueue request.
	nFunnelBatch = "async funnel, batch enqueue of 100: enqueue → webhook delivered → released via API"
	nFunnelAuto  = "async funnel, releaseOnSuccess: enqueue → webhook delivered (its 2xx ends the job)"
	nFunnelCmds  = "async funnel: Redis commands per job, in-script included"
	nFunnelCPU   = "async funnel: Redis main-thread CPU per job"
	nAsynqCPU    = "asynq: Redis main-thread CPU per job"
	nWSFunnel    = "async funnel over websocket: enqueue (HTTP) → pushed to a session → ack + release (ws)"
	nMem         = "Redis memory per queued job beyond its 100-byte payload"
	nWSSync      = "sync acquire + release over one websocket (SDK Worker), uncontended"

	nPeerUnc  = "sorted-set semaphore (asynq x/rate algorithm), uncontended"
	nPeerPoll = "sorted-set semaphore, contended, polling 10–50 ms"
	nAsynq    = "asynq enqueue → process (handler returns at once)"
)

type target struct {
	what     string
	measured float64
	unit     string
	ok       func(float64) bool
	want     string
}

func (b *bench) printTargets(w io.Writer) {
	ts := []target{
		{"uncontended HTTP (Redis store) / peer sorted-set straight to Redis", b.find(gRedis, nUnc) / b.find("peer", nPeerUnc), "×",
			func(v float64) bool { return v >= 0.8 }, "≥ 0.8×"},
		{"contended HTTP (Redis store) / polling peer sorted-set", b.find(gRedis, nCont) / b.find("peer", nPeerPoll), "×",
			func(v float64) bool { return v >= 3 }, "≥ 3×"},
		{"contended: Redis commands per grant sent by semaphored", b.find(gRedis, nContCmds), "cmds",
			func(v float64) bool { return v <= 4 }, "≤ 4"},
		{"hand-off p50 (Redis store)", b.find(gRedis, nP50), "ms", func(v float64) bool { return v <= 1 }, "≤ 1 ms"},
		{"hand-off p99 (Redis store, 64 waiting clients)", b.find(gRedis, nP99), "ms", func(v float64) bool { return v <= 1.5 }, "≤ 1.5 ms"},
		{"async funnel (Redis store, webhook) / asynq enqueue→process", b.find(gRedis, nFunnel) / b.find("peer", nAsynq), "×",
			func(v float64) bool { return v >= 1 }, "≥ 1.0×"},
		{"async funnel (Redis store, webhook with releaseOnSuccess) / asynq enqueue→process", b.find(gRedis, nFunnelAuto) / b.find("peer", nAsynq), "×",
			func(v float64) bool { return v >= 1 }, "≥ 1.0×"},
		{"async funnel (webhook): Redis store / memory store", b.find(gRedis, nFunnel) / b.find(gMemory, nFunnel), "×",
			func(v float64) bool { return v >= 0.8 }, "≥ 0.8×"},
		{"async funnel, batch enqueue of 100 (Redis store) / asynq enqueue→process", b.find(gRedis, nFunnelBatch) / b.find("peer", nAsynq), "×",
			func(v float64) bool { return v >= 1.5 }, "≥ 1.5×"},
		{"async funnel: Redis commands per job", b.find(gRedis, nFunnelCmds), "cmds",
			func(v float64) bool { return v <= 20 }, "≤ 20"},
		{"async funnel: Redis CPU per job / asynq's", b.find(gRedis, nFunnelCPU) / b.find("peer", nAsynqCPU), "×",
			func(v float64) bool { return v <= 1 }, "≤ 1.0×"},
		{"async funnel (Redis store, websocket) / asynq enqueue→process", b.find(gRedis, nWSFunnel) / b.find("peer", nAsynq), "×",
			func(v float64) bool { return v >= 1 }, "≥ 1.0×"},
		{"Redis memory per queued job beyond its payload", b.find(gRedis, nMem), "B",
			func(v float64) bool { return v <= 250 }, "≤ 250 B"},
		{"memory store / Redis store, uncontended sync pairs/s", b.find(gMemory, nUnc) / b.find(gRedis, nUnc), "×",
			func(v float64) bool { return v >= 2 }, "≥ 2×"},
		{"uncontended with a rate that never binds / without (Redis store)", b.find(gRedis, nUncRate) / b.find(gRedis, nUnc), "×",
			func(v float64) bool { return v >= 0.9 }, "≥ 0.9×"},
		{"uncontended with a rate that never binds / without (memory store)", b.find(gMemory, nUncRate) / b.find(gMemory, nUnc), "×",
			func(v float64) bool { return v >= 0.9 }, "≥ 0.9×"},
		{"binding rate of 1,000/s: granted pairs/s / the limit (Redis store)", b.find(gRedis, nRateBound) / rateBoundLimit, "×",
			func(v float64) bool { return v >= 0.97 }, "≥ 0.97×"},
		{"binding rate: lateness after the slot p99 (Redis store)", b.find(gRedis, nRateLate), "ms",
			func(v float64) bool { return v <= 2 }, "≤ 2 ms"},
		{"Redis memory of a full window of 10,000 units", b.find(gRedis, nRateMem), "KiB",
			func(v float64) bool { return true }, "reported"},
		{"Redis used_memory under steady load (retention.done 2s): growth from half-time to the end", b.find(gRedis, nSteadyMem), "%",
			func(v float64) bool { return math.Abs(v) <= 5 }, "within ±5%"},
	}
	ts = append(ts,
		target{"memory store sync pairs/s over HTTP / bare net/http", b.find(gMemory, nUnc) / b.find(gBare, nBare), "×",
			func(v float64) bool { return v >= 0.8 }, "≥ 0.8×"},
		target{"Redis store sync pairs/s over HTTP / memory store's", b.find(gRedis, nUnc) / b.find(gMemory, nUnc), "×",
			func(v float64) bool { return v >= 0.9 }, "≥ 0.9×"},
	)
	// Issue 13: the fallback transports against the websocket, each
	// store's rows measured side by side on one server.
	for _, g := range []string{gRedis, gMemory} {
		st := strings.TrimSuffix(strings.TrimPrefix(g, "semaphored ("), ")")
		ws := b.find(g, nTransportFunnel(sdk.TransportWebsocket))
		ts = append(ts,
			target{"funnel to SSE workers / to websocket workers (SDK, " + st + ")", b.find(g, nTransportFunnel(sdk.TransportSSE)) / ws, "×",
				func(v float64) bool { return v >= 0.7 }, "≥ 0.7×"},
			target{"funnel to long-poll workers / to websocket workers (SDK, " + st + ")", b.find(g, nTransportFunnel(sdk.TransportLongPoll)) / ws, "×",
				func(v float64) bool { return v >= 0.4 }, "≥ 0.4×"},
			target{"server RSS of an idle SSE session / of an idle websocket session (" + st + ")", b.find(g, nIdleFresh("SSE")) / b.find(g, nIdleFresh("websocket")), "×",
				func(v float64) bool { return v <= 1.5 }, "≤ 1.5×"},
		)
	}
	fmt.Fprintln(w, "## Targets, from the medians above")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | wanted | met |")
	fmt.Fprintln(w, "| --- | ---: | ---: | --- |")
	for _, t := range ts {
		met := "no"
		switch {
		case math.IsNaN(t.measured) || math.IsInf(t.measured, 0):
			met = "not measured"
		case t.ok(t.measured):
			met = "yes"
		}
		fmt.Fprintf(w, "| %s | %s %s | %s | %s |\n", t.what, fmtNum(t.measured), t.unit, t.want, met)
	}
}

// printBareRatios prints every HTTP pairs/s row as a ratio to the bare
// net/http row: how much of the machine's HTTP limit semaphored reaches.
func (b *bench) printBareRatios(w io.Writer) {
	bare := b.find(gBare, nBare)
	if math.IsNaN(bare) || bare == 0 {
		return
	}
	fmt.Fprintf(w, "## HTTP scenarios against the bare net/http row (%s pairs/s)\n\n", fmtNum(bare))
	fmt.Fprintln(w, "| group | scenario | median | × bare |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: |")
	for _, r := range b.rows {
		if r.unit != "pairs/s" || r.group == gBare || !strings.Contains(r.name, "HTTP") {
			continue
		}
		m := r.median()
		if math.IsNaN(m) {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.group, r.name, fmtNum(m), fmtNum(m/bare))
	}
	fmt.Fprintln(w)
}
