// Command bench measures semaphored against the raw limit of its Redis and
// against the Go peers a user would pick instead, in one run on one
// machine. It starts a throwaway redis-server, builds and starts
// semaphored (Redis store, then memory store), runs every scenario with a
// warm-up and several measured rounds, and prints a Markdown table of
// medians with min–max and the target ratios.
//
//	cd bench && go run ./cmd/bench
//
// See bench/README.md for what each scenario measures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/sdk"
)

// serverLogLevel is the --log-level of the server under test.
var serverLogLevel = "warn"

// workHold is the simulated work of the "5 ms held" contended variants.
const workHold = 5 * time.Millisecond

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

type config struct {
	repo     string
	rev      string
	rounds   int
	round    time.Duration
	warmup   time.Duration
	clients  int
	only     *regexp.Regexp
	keep     bool
	handoffN int
	cmdstats bool
	memJobs  int
	// the steady-load memory scenario (retention.go)
	steadyFor  time.Duration
	steadyRate int
}

// bench collects the rows of one run.
type bench struct {
	cfg  config
	rows []row
	ctx  context.Context
	rc   *redis.Client // to the benchmark's Redis
	addr string        // of that Redis
	// fresh starts another server like the one being measured (same
	// binary and store), for scenarios that need a process of their own.
	fresh func(tag string) (*proc, string, error)
	// srv are the server processes of the scenarios now running.
	srv servers
}

func (b *bench) add(r row) *row {
	b.rows = append(b.rows, r)
	return &b.rows[len(b.rows)-1]
}

// addNear adds rows right after the rows of the peer scenario named peer
// (its own and those added near it before), so that the table shows them
// side by side whatever the order they ran in; at the end when that peer
// did not run.
func (b *bench) addNear(peer string, rs ...row) {
	at := len(b.rows)
	for i, r := range b.rows {
		if (r.group == "peer" && strings.HasPrefix(r.name, peer)) || r.near == peer {
			at = i + 1
		}
	}
	for i := range rs {
		rs[i].near = peer
	}
	b.rows = slices.Insert(b.rows, at, rs...)
}

// find returns the median of a row by group and name (NaN when absent).
func (b *bench) find(group, name string) float64 {
	for _, r := range b.rows {
		if r.group == group && r.name == name {
			return r.median()
		}
	}
	return median(nil)
}

func (b *bench) want(name string) bool { return b.cfg.only == nil || b.cfg.only.MatchString(name) }

// throughput runs op in cfg.clients goroutines: a warm-up, then the
// measured rounds. With cmds, it also records INFO commandstats deltas
// per op of each round (every command Redis ran, in-script ones included).
func (b *bench) throughput(group, name, unit, note string, cmds bool, op func(w int) (int, error)) {
	for _, r := range b.measure(group, name, unit, note, cmds, op) {
		b.add(r)
	}
}

// measure is throughput returning its rows (the scenario's, then its
// costs per op: with cmds Redis commands and CPU, with servers running
// their CPU) instead of adding them.
func (b *bench) measure(group, name, unit, note string, cmds bool, op func(w int) (int, error)) []row {
	logf("%s: %s (warm-up %v, %d×%v)", group, name, b.cfg.warmup, b.cfg.rounds, b.cfg.round)
	r := row{group: group, name: name, unit: unit, note: note}
	per := "pair"
	if unit == "jobs/s" {
		per = "job"
	}
	c := b.costs(group, name, per, cmds)
	if _, _, err := runFor(b.cfg.warmup, b.cfg.clients, op); err != nil {
		r.note = label(err)
		return []row{r}
	}
	for range b.cfg.rounds {
		c.begin()
		v, n, err := runFor(b.cfg.round, b.cfg.clients, op)
		if err != nil {
			r.note = label(err)
			break
		}
		r.vals = append(r.vals, v)
		logf("  round %d: %.1f %s", len(r.vals), v, unit)
		c.end(n)
	}
	return append([]row{r}, c.rows()...)
}

// monitored runs op for cfg.rounds rounds of 1 s under MONITOR and records
// the commands clients sent to Redis per op (round trips: one per FCALL, EVALSHA,
// PUBLISH, ZADD… however much a script does inside).
func (b *bench) monitored(group, name string, op func(w int) (int, error)) {
	logf("%s: %s under MONITOR (%d×1s)", group, name, b.cfg.rounds)
	r := row{group: group, name: name + ": Redis commands per pair sent by clients", unit: "cmds/pair"}
	var tops []string
	for range b.cfg.rounds {
		m, err := startMonitor(b.addr)
		if err != nil {
			r.note = label(err)
			break
		}
		_, n, err := runFor(time.Second, b.cfg.clients, op)
		m.stop()
		if err != nil {
			r.note = label(err)
			break
		}
		if n > 0 {
			r.vals = append(r.vals, float64(m.client.Load())/float64(n))
			tops = append(tops, m.top(float64(n)))
		}
	}
	if len(tops) > 0 && r.note == "" {
		r.note = "MONITOR, last round per pair: " + tops[len(tops)-1]
	}
	b.add(r)
}

func main() {
	var cfg config
	var only string
	flag.StringVar(&cfg.repo, "repo", "", "semaphored checkout (default: the parent of the bench module)")
	flag.StringVar(&cfg.rev, "rev", "", "build the server from this git revision of the checkout (git archive) instead of its working tree (the raw-limit rows use the library compiled into the bench)")
	flag.IntVar(&cfg.rounds, "rounds", 5, "measured rounds per scenario")
	flag.DurationVar(&cfg.round, "round", 2*time.Second, "length of one throughput round")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "warm-up before the rounds")
	flag.IntVar(&cfg.clients, "clients", 64, "concurrent clients")
	flag.StringVar(&only, "only", "", `run only the sections matching this regexp: "raw limit", "peer", "peer asynq", "bare net/http", "semaphored (<redis|memory> store) <uncontended|contended|hand-off|funnel|release-on-success funnel|batch funnel|sync websocket|websocket|transports|rate|memory per queued job|memory under steady load>"`)
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temp dir (logs, binary, redis data)")
	flag.IntVar(&cfg.handoffN, "handoff-samples", 100, "hand-off samples per round")
	flag.BoolVar(&cfg.cmdstats, "cmdstats", false, "log Redis INFO commandstats (reset per section) to stderr after each section")
	flag.StringVar(&serverLogLevel, "server-log-level", "warn", "--log-level of the semaphored under test (its log is in the temp dir; see -keep)")
	flag.IntVar(&cfg.memJobs, "mem-jobs", 5000, "queued jobs per round of the memory-per-job scenario")
	flag.DurationVar(&cfg.steadyFor, "steady-for", time.Minute, "length of the steady-load memory scenario (used_memory compared at half of it and at its end)")
	flag.IntVar(&cfg.steadyRate, "steady-rate", 500, "jobs/s enqueued in the steady-load memory scenario")
	bareServe := flag.String("bare-serve", "", "internal: serve the bare net/http handler on this address (the bench starts itself so)")
	flag.Parse()
	if *bareServe != "" {
		if err := serveBare(*bareServe); err != nil {
			logf("bare server: %v", err)
			os.Exit(1)
		}
		return
	}
	if only != "" {
		cfg.only = regexp.MustCompile(only)
	}
	if err := run(cfg); err != nil {
		logf("bench: %v", err)
		os.Exit(1)
	}
}

func findRepo(flagRepo string) (string, error) {
	cands := []string{flagRepo}
	if flagRepo == "" {
		cands = []string{"..", "."}
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(c, "cmd", "semaphored")); err == nil {
			return filepath.Abs(c)
		}
	}
	return "", errors.New("cannot find the semaphored checkout (cmd/semaphored); run from bench/ or pass -repo")
}

func run(cfg config) error {
	start := time.Now()
	repo, err := findRepo(cfg.repo)
	if err != nil {
		return err
	}
	cfg.repo = repo
	dir, err := os.MkdirTemp("", "semaphored-bench-")
	if err != nil {
		return err
	}
	if cfg.keep {
		logf("temp dir kept: %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx := context.Background()

	if cfg.rev != "" {
		src, err := exportRev(repo, cfg.rev, dir)
		if err != nil {
			return err
		}
		b0 := cfg.rev
		cfg.repo, repo = src, src
		logf("using %s of the checkout, exported to %s", b0, src)
	}
	logf("building semaphored from %s", repo)
	bin, err := buildSemaphored(repo, dir)
	if err != nil {
		return err
	}
	rp, addr, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer rp.stop()
	logf("redis-server on %s (AOF everysec)", addr)
	rc := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 128})
	defer rc.Close()
	b := &bench{cfg: cfg, ctx: ctx, rc: rc, addr: addr}
	machine := machineInfo(ctx, rc)
	loadBefore := loadavg()

	if b.want(gBare) {
		if err := b.bare(); err != nil {
			b.add(row{group: gBare, name: nBare, unit: "pairs/s", note: label(err)})
		}
	}
	b.resetStats()
	if err := b.direct(); err != nil {
		return err
	}
	b.logStats("direct scenarios")
	for _, st := range []string{"redis", "memory"} {
		url := ""
		if st == "redis" {
			url = "redis://" + addr
		}
		sp, base, err := startSemaphored(bin, dir, url, st)
		for attempt := 1; err != nil && attempt <= 3 && cfg.rev == ""; attempt++ {
			// The working tree may be mid-change: rebuild and retry.
			logf("semaphored (%s store) did not start (%v); rebuilding in 30s (attempt %d of 3)", st, err, attempt)
			time.Sleep(30 * time.Second)
			if bin, err = buildSemaphored(repo, dir); err == nil {
				sp, base, err = startSemaphored(bin, dir, url, st)
			}
		}
		if err != nil {
			b.add(row{group: "semaphored (" + st + " store)", name: "server start", unit: "—", note: label(err)})
			continue
		}
		b.resetStats()
		b.fresh = func(tag string) (*proc, string, error) { return startSemaphored(bin, dir, url, st+"-"+tag) }
		b.srv = servers{what: "semaphored", pids: []int{sp.cmd.Process.Pid}}
		err = b.semaphored(st, base, sp)
		b.srv = servers{}
		b.logStats("semaphored " + st)
		sp.stop()
		if err != nil {
			b.add(row{group: "semaphored (" + st + " store)", name: "scenarios aborted", unit: "—", note: label(err)})
			logf("semaphored (%s store): %v (log: %s)", st, err, sp.tail())
		}
	}
	if !b.hasHub() {
		b.add(row{group: "semaphored", name: "async funnel over websocket; server RSS per idle websocket session", unit: "—",
			note: "not measured yet: websocket workers not implemented (no hub/hub.go)"})
	}

	out := os.Stdout
	fmt.Fprintf(out, "## Machine\n\n%s- load average before: %s, after: %s\n- total run time: %v\n\n",
		machine, loadBefore, loadavg(), time.Since(start).Round(time.Second))
	fmt.Fprintf(out, "## Results (%d clients, warm-up %v, %d measured rounds of %v; medians)\n\n",
		cfg.clients, cfg.warmup, cfg.rounds, cfg.round)
	printTable(out, b.rows)
	fmt.Fprintln(out)
	b.printBareRatios(out)
	b.printTargets(out)
	return nil
}

// direct runs the scenarios that talk to Redis straight from Go.
func (b *bench) direct() error {
	ctx := b.ctx
	const g0, g1 = "raw limit", "peer"

	if b.want(g0) {
		raw, err := newRawSem(ctx, b.rc, "raw", 10_000)
		if err != nil {
			return fmt.Errorf("raw scripts: %w", err)
		}
		b.throughput(g0, "batch function, one acquire / one release per FCALL, no pipelining", "pairs/s", "maxValue 10,000", true,
			func(int) (int, error) { return 1, raw.pair(ctx) })
		b.throughput(g0, "batch function, one op per FCALL, pipelines of 16", "pairs/s", "16 acquire FCALLs in one pipeline, then 16 releases", false,
			func(int) (int, error) { return 16, raw.pipelined(ctx, 16) })
		b.throughput(g0, "batch function, 16 ops per FCALL", "pairs/s", "16 acquires in one FCALL, then 16 releases in one", true,
			func(int) (int, error) { return 16, raw.batched(ctx, 16) })
		sd, err := newStoreDirect(ctx, b.rc, "direct", 10_000)
		if err != nil {
			return fmt.Errorf("store direct: %w", err)
		}
		b.throughput(g0, "store direct: redisstore Acquire + Release (Go API, no HTTP)", "pairs/s", "maxValue 10,000", true,
			func(int) (int, error) { return 1, sd.pair(ctx) })
		_ = sd.st.Close()
	}

	// The websocket sync scenarios are compared with this peer: it runs for
	// them too.
	if b.want(g1) || b.wantWSSync() {
		z, err := newZsetSem(ctx, b.rc, "peerbench:sema:unc", 10_000)
		if err != nil {
			return err
		}
		b.throughput(g1, nPeerUnc, "pairs/s", "maxTokens 10,000", true,
			func(int) (int, error) {
				m, err := z.tryAcquire(ctx)
				if err == nil && m == "" {
					err = errors.New("no token on an uncontended semaphore")
				}
				if err != nil {
					return 0, err
				}
				return 1, z.release(ctx, m)
			})
	}
	if b.want(g1) {
		zc, err := newZsetSem(ctx, b.rc, "peerbench:sema:cont", 8)
		if err != nil {
			return err
		}
		pollOp := func(int) (int, error) { _, err := zc.pollingPair(ctx, 0); return 1, err }
		b.throughput(g1, "sorted-set semaphore, contended, polling 10–50 ms", "pairs/s", "maxTokens 8, try → sleep 10–50 ms → retry", true, pollOp)
		b.monitored(g1, "sorted-set semaphore, contended, polling 10–50 ms", pollOp)
		b.throughput(g1, "sorted-set semaphore, contended, polling 10–50 ms, 5 ms held", "pairs/s", "as above, each permit held 5 ms (ideal 1,600/s)", false,
			func(int) (int, error) { _, err := zc.pollingPair(ctx, workHold); return 1, err })

		lc := redislock.New(b.rc)
		b.throughput(g1, "bsm/redislock Obtain + Release, one lock per client", "pairs/s", "maxValue-1 locks, uncontended", false,
			func(w int) (int, error) { return 1, lockPair(ctx, lc, fmt.Sprintf("peerbench:lock:%d", w), false) })
		b.throughput(g1, "bsm/redislock, one lock shared by all clients, polling 10–50 ms", "pairs/s", "maxValue 1, contended", false,
			func(int) (int, error) { return 1, lockPair(ctx, lc, "peerbench:lock:shared", true) })
	}
	if b.want(g1 + " asynq") { // "peer asynq" runs it alone
		if err := b.asynq(); err != nil {
			b.add(row{group: g1, name: "asynq enqueue → process", unit: "jobs/s", note: label(err)})
		}
	}
	return nil
}

// sizeRound picks the jobs per round so that a round lasts about
// cfg.round at the warm-up's rate.
func (b *bench) sizeRound(rate float64) int {
	n := int(rate * b.cfg.round.Seconds())
	return min(max(n, 300), 50_000)
}

func (b *bench) asynq() error {
	logf("peer: asynq enqueue → process")
	a, err := newAsynqBench(b.addr, 100)
	if err != nil {
		return err
	}
	defer a.close()
	rate, err := a.round(b.ctx, 1000, b.cfg.clients) // warm-up
	if err != nil {
		return err
	}
	n := b.sizeRound(rate)
	r := row{group: "peer", name: "asynq enqueue → process (handler returns at once)", unit: "jobs/s",
		note: fmt.Sprintf("Concurrency 100, TaskCheckInterval 10ms, 100-byte payload, %d jobs/round", n)}
	c := b.costs("peer", "asynq", "job", true)
	c.rcpu.note += " (includes asynq's idle polling)"
	for range b.cfg.rounds {
		c.begin()
		v, err := a.round(b.ctx, n, b.cfg.clients)
		if err != nil {
			return err
		}
		c.end(int64(n))
		r.vals = append(r.vals, v)
	}
	b.add(r)
	for _, cr := range c.rows() {
		b.add(cr)
	}
	return nil
}

// semaphored runs the HTTP scenarios against one running server.
func (b *bench) semaphored(st, base string, sp *proc) error {
	ctx := b.ctx
	g := "semaphored (" + st + " store)"
	onRedis := st == "redis"
	e, err := newSDEnv(ctx, base)
	if err != nil {
		return err
	}

	if b.want(g + " uncontended") {
		if err := e.put(ctx, "unc", sdk.SemaphoreConfig{MaxValue: 10_000, LeaseTimeout: time.Minute}); err != nil {
			return err
		}
		op := func(int) (int, error) { return 1, e.pair(ctx, "unc", 0, 0) }
		b.throughput(g, "sync acquire + release over HTTP (SDK), uncontended", "pairs/s", "64 clients, maxValue 10,000", onRedis, op)
		if onRedis {
			b.monitored(g, "uncontended", op)
		}
	}
	if b.want(g + " contended") {
		if err := e.put(ctx, "cont", sdk.SemaphoreConfig{MaxValue: 8, LeaseTimeout: time.Minute}); err != nil {
			return err
		}
		op := func(int) (int, error) { return 1, e.pair(ctx, "cont", 10*time.Second, 0) }
		b.throughput(g, "sync acquire + release over HTTP (SDK), contended, waiting acquires", "pairs/s", `64 clients, maxValue 8, wait "10s"`, onRedis, op)
		if onRedis {
			b.monitored(g, "contended", op)
		}
		b.throughput(g, "contended, waiting acquires, 5 ms held", "pairs/s", "as above, each permit held 5 ms (ideal 1,600/s)", false,
			func(int) (int, error) { return 1, e.pair(ctx, "cont", 10*time.Second, workHold) })
	}
	if b.want(g + " hand-off") {
		logf("%s: hand-off latency (%d×%d samples)", g, b.cfg.rounds, b.cfg.handoffN)
		if err := e.put(ctx, "handoff", sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Minute}); err != nil {
			return err
		}
		p50 := row{group: g, name: "hand-off latency p50 (release → next waiter granted)", unit: "ms",
			note: fmt.Sprintf("%d samples/round, %d acquires waiting, from release sent to the head waiter's reply", b.cfg.handoffN, handoffQueued)}
		p99 := row{group: g, name: "hand-off latency p99", unit: "ms", note: p50.note}
		if _, err := e.handoffRound(ctx, "handoff", 10, handoffQueued); err != nil { // warm-up
			p50.note = label(err)
		} else {
			for range b.cfg.rounds {
				lat, err := e.handoffRound(ctx, "handoff", b.cfg.handoffN, handoffQueued)
				if err != nil {
					p50.note = label(err)
					break
				}
				p50.vals = append(p50.vals, msOf(percentile(lat, 0.50)))
				p99.vals = append(p99.vals, msOf(percentile(lat, 0.99)))
			}
		}
		b.add(p50)
		b.add(p99)
	}
	if b.want(g + " funnel") {
		if err := b.funnel(g, e, onRedis, 1, false); err != nil {
			b.add(row{group: g, name: nFunnel, unit: "jobs/s", note: label(err)})
		}
	}
	if b.want(g + " release-on-success funnel") {
		if err := b.funnel(g, e, onRedis, 1, true); err != nil {
			b.add(row{group: g, name: nFunnelAuto, unit: "jobs/s", note: label(err)})
		}
	}
	if b.want(g + " batch funnel") {
		if err := b.funnel(g, e, onRedis, 100, false); err != nil {
			b.add(row{group: g, name: nFunnelBatch, unit: "jobs/s", note: label(err)})
		}
	}
	if b.hasHub() && b.want(g+" "+kWSSync) {
		if err := b.wsSync(g, e); err != nil {
			b.addNear(nPeerUnc, row{group: g, name: nWSSync, unit: "pairs/s", note: label(err)})
		}
	}
	if b.hasHub() && b.want(g+" websocket") {
		if err := b.wsFunnel(g, e, onRedis); err != nil {
			b.add(row{group: g, name: "async funnel over websocket", unit: "jobs/s", note: label(err)})
		}
		if err := b.wsIdleRSS(g, e, sp.cmd.Process.Pid); err != nil {
			b.add(row{group: g, name: "server RSS per idle websocket session", unit: "KiB/session", note: label(err)})
		}
	}
	if b.hasFallback() && b.want(g+" "+kTransports) {
		for _, tr := range []sdk.Transport{sdk.TransportWebsocket, sdk.TransportSSE, sdk.TransportLongPoll} {
			if err := b.transportFunnel(g, e, tr); err != nil {
				b.add(row{group: g, name: nTransportFunnel(tr), unit: "jobs/s", note: label(err)})
			}
		}
		for _, kind := range []string{"websocket", "SSE"} {
			if err := b.idleFresh(g, kind); err != nil {
				b.add(row{group: g, name: nIdleFresh(kind), unit: "KiB/session", note: label(err)})
			}
		}
	}
	if b.want(g + " rate") {
		if err := b.rate(g, e, onRedis); err != nil {
			b.add(row{group: g, name: nRateBound, unit: "pairs/s", note: label(err)})
		}
	}
	if onRedis && b.want(g+" memory per queued job") {
		if err := b.memPerJob(g, e); err != nil {
			b.add(row{group: g, name: "Redis memory per queued job", unit: "B/job", note: label(err)})
		}
	}
	if onRedis && b.want(g+" memory under steady load") {
		if err := b.steadyMemory(g, e); err != nil {
			b.add(row{group: g, name: nSteadyMem, unit: "%", note: label(err)})
		}
	}
	b.add(row{group: g, name: "server RSS after the scenarios", unit: "MiB", vals: []float64{float64(rss(sp.cmd.Process.Pid)) / (1 << 20)}, note: "one reading"})
	return nil
}

// funnel measures the webhook funnel: jobs enqueued one per request, or
// with batch > 1 that many per request (batch enqueue).
// handoffQueued acquires wait during the hand-off scenario.
const handoffQueued = 64

// With autoRelease the route has releaseOnSuccess: the webhook's 2xx ends
// the job, with no release call.
func (b *bench) funnel(g string, e *sdEnv, cmds bool, batch int, autoRelease bool) error {
	name, sem, prefix, how := nFunnel, "funnel", "async funnel", fmt.Sprintf("%d enqueuers, %d releasers", b.cfg.clients, b.cfg.clients)
	switch {
	case batch > 1:
		name, sem, prefix = nFunnelBatch, "funnelbatch", "async funnel, batch enqueue"
		how = fmt.Sprintf("%d enqueuers sending %d jobs per request, %d releasers", batchEnqueuers, batch, b.cfg.clients)
	case autoRelease:
		name, sem, prefix = nFunnelAuto, "funnelauto", "async funnel, releaseOnSuccess"
		how = fmt.Sprintf("%d enqueuers", b.cfg.clients)
	}
	logf("%s: %s over webhook", g, prefix)
	var f *funnel
	var err error
	if autoRelease {
		f, err = newAutoFunnel(b.ctx, e, sem, 100)
	} else {
		f, err = newFunnel(b.ctx, e, sem, 100, b.cfg.clients)
	}
	if err != nil {
		return err
	}
	f.batch = batch
	defer f.close()
	rate, err := f.round(b.ctx, 1000, b.cfg.clients) // warm-up
	if err != nil {
		return err
	}
	n := b.sizeRound(rate)
	r := row{group: g, name: name, unit: "jobs/s",
		note: fmt.Sprintf("maxValue 100, 100-byte payload, %d jobs/round, %s", n, how)}
	c := b.costs(g, prefix, "job", cmds)
	for range b.cfg.rounds {
		c.begin()
		v, err := f.round(b.ctx, n, b.cfg.clients)
		if err != nil {
			return err
		}
		c.end(int64(n))
		r.vals = append(r.vals, v)
	}
	if d := f.dups.Load(); d > 0 {
		r.note += fmt.Sprintf("; %d redeliveries seen", d)
	}
	b.add(r)
	for _, cr := range c.rows() {
		b.add(cr)
	}
	return nil
}

// memPerJob measures Redis used_memory growth per scheduled job (100-byte
// payload) on a suspended semaphore, minus the payload.
func (b *bench) memPerJob(g string, e *sdEnv) error {
	logf("%s: Redis memory per queued job (%d×%d jobs)", g, b.cfg.rounds, b.cfg.memJobs)
	r := row{group: g, name: "Redis memory per queued job beyond its 100-byte payload", unit: "B/job",
		note: fmt.Sprintf("used_memory delta / %d jobs − 100, suspended semaphore", b.cfg.memJobs)}
	for i := range b.cfg.rounds {
		name := fmt.Sprintf("memjobs%d", i)
		if err := e.put(b.ctx, name, sdk.SemaphoreConfig{MaxValue: 1, LeaseTimeout: time.Minute}); err != nil {
			return err
		}
		if _, err := e.admin.Suspend(b.ctx, name); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
		before, err := usedMemory(b.ctx, b.rc)
		if err != nil {
			return err
		}
		if err := e.enqueue(b.ctx, name, b.cfg.memJobs, b.cfg.clients); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
		after, err := usedMemory(b.ctx, b.rc)
		if err != nil {
			return err
		}
		r.vals = append(r.vals, float64(after-before)/float64(b.cfg.memJobs)-100)
		if err := e.admin.DeleteSemaphore(b.ctx, name); err != nil {
			return err
		}
	}
	b.add(r)
	return nil
}

// hasHub reports whether the checkout has the websocket hub (websocket
// workers implemented).
func (b *bench) hasHub() bool {
	for _, p := range []string{"hub/hub.go", "delivery/hub.go"} { // its home, and its home before
		if _, err := os.Stat(filepath.Join(b.cfg.repo, p)); err == nil {
			return true
		}
	}
	return false
}

func (b *bench) resetStats() {
	if b.cfg.cmdstats {
		_ = b.rc.ConfigResetStat(b.ctx).Err()
	}
}

func (b *bench) logStats(section string) {
	if !b.cfg.cmdstats {
		return
	}
	s, err := b.rc.Info(b.ctx, "commandstats").Result()
	if err != nil {
		return
	}
	logf("INFO commandstats after %s:\n%s", section, s)
}

func loadavg() string {
	bs, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(bs))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machineInfo(ctx context.Context, rc *redis.Client) string {
	model := "?"
	if bs, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(bs), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	rv := "?"
	if s, err := rc.Info(ctx, "server").Result(); err == nil {
		for _, line := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				rv = v
			}
		}
	}
	kernel := "?"
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("- CPUs: %d (runtime.NumCPU), model: %s\n- kernel: %s\n- Go: %s\n- Redis: %s (throwaway, loopback, AOF everysec, no RDB, no AOF rewrite)\n",
		runtime.NumCPU(), model, kernel, runtime.Version(), rv)
}
