package tests

// Fault tests between semaphored and Redis (SPEC §2 guarantees 1–4, §3
// /readyz): two instances reach Redis only through faultProxy, a TCP proxy
// the test drives. Sync traffic (acquire with wait, hold, release on the
// other instance) and async traffic (enqueue → webhook → release) run while
// the proxy adds latency, drops connections, drops only the pub/sub
// connections, refuses or blackholes Redis, or while a dedicated Redis with
// `appendfsync always` is killed and restarted. Afterwards:
//
//   - every acquire was answered: 200, or 409 no_permit, or 503
//     store_unavailable overlapping an outage, by its wait plus a bounded
//     slack (a transport error, i.e. no HTTP answer, fails);
//   - fencing tokens are unique and follow real time: a grant asked for after
//     another was answered has a larger token (this spans the Redis restart);
//   - the holders the clients saw never exceed maxValue at once;
//   - no acknowledged grant is lost: a lease granted (200) and not released
//     is still live (an extend answers 200) until its expiry; a release of
//     an unexpired lease of ours is never answered 404; a lease released
//     (200) never comes back;
//   - no accepted job (202) vanishes: each ends done once the faults stop,
//     and one accepted enqueue makes one job (no second job with its
//     payload under another id);
//   - /readyz answers 503 while Redis is unreachable and 200 again after;
//   - inUse returns to what the live leases explain (0 once ours are
//     released) by the last possible expiry of a lease nobody saw (an
//     acquire whose answer was a 503) plus one sweep.
//
// The listing of live leases (GET /v1/semaphores/{name}/leases, SPEC §3) is
// not served by this version, so liveness is probed by an extend.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/sdk"
)

// Shape of the fault tests.
const (
	faultSyncMax     = 3               // maxValue of "sync"
	faultSyncWorkers = 3               // sync workers per instance
	faultWait        = 2 * time.Second // wait of every traffic acquire
	faultSyncTTL     = 3 * time.Second // ttl of every traffic lease
	faultHeldTTL     = time.Minute     // leases held across the faults
	faultOrphanTTL   = time.Second     // leases never released
	faultEnqueuePace = 30 * time.Millisecond
	faultErrPace     = 50 * time.Millisecond // pause after an error answer, not to spin during an outage
	// faultSlack bounds how late after its wait an acquire may be answered:
	// the waiter's give-up (its cancel in Redis) is bounded by the store's
	// waiterSlack (2 s), plus 1.5 s of scheduling on a loaded machine.
	faultSlack = 3500 * time.Millisecond
	// faultWaiterSlack is the store's waiterSlack (redisstore): a waiter
	// whose caller got no lease stays queued in Redis at most wait + this.
	faultWaiterSlack = 2 * time.Second
	// faultSweep is the bound SPEC §2.4 puts on an expiry's lateness.
	faultSweep = time.Second
	// faultReadyWithin bounds how long /readyz may take to change after
	// Redis goes away or comes back.
	faultReadyWithin  = 4 * time.Second // its 2 s ping timeout, and the poll
	faultJobsDeadline = 30 * time.Second
)

// ---------------------------------------------------------------------------
// The proxy.

// Proxy modes for new connections.
const (
	faultPass      int32 = iota // forward to Redis
	faultRefuse                 // accept and reset at once
	faultBlackhole              // accept and never answer
)

// faultSniffBytes of a connection's client side are searched for a
// SUBSCRIBE command (go-redis sends HELLO, CLIENT SETINFO, then SUBSCRIBE).
const faultSniffBytes = 8 << 10

// faultProxy forwards TCP connections from semaphored to Redis and injects
// faults on command.
type faultProxy struct {
	ln       net.Listener
	upstream string // host:port of Redis

	latency     atomic.Int64 // ns added before forwarding each chunk, both ways
	mode        atomic.Int32
	blockPubSub atomic.Bool // drop a pub/sub connection as soon as it is recognised

	mu     sync.Mutex
	conns  map[*faultConn]struct{}
	held   map[net.Conn]struct{} // blackholed
	closed bool
	wg     sync.WaitGroup

	accepted, refused, blackholed, dropped, pubsubSeen, pubsubDropped atomic.Int64
}

type faultConn struct {
	client, server net.Conn
	pubsub         atomic.Bool
	once           sync.Once
}

// drop closes both sides; with rst the client gets a reset, otherwise EOF.
func (c *faultConn) drop(rst bool) {
	c.once.Do(func() {
		if rst {
			faultReset(c.client)
		}
		_ = c.client.Close()
		_ = c.server.Close()
	})
}

func faultReset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// newFaultProxy listens on a free loopback port and forwards to the Redis
// of redisURL; it returns the proxy and the URL to give semaphored.
func newFaultProxy(t testing.TB, redisURL string) (*faultProxy, string) {
	t.Helper()
	u, err := url.Parse(redisURL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &faultProxy{ln: ln, upstream: u.Host, conns: map[*faultConn]struct{}{}, held: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *faultProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		switch p.mode.Load() {
		case faultRefuse:
			p.refused.Add(1)
			faultReset(c)
			_ = c.Close()
			continue
		case faultBlackhole:
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			p.held[c] = struct{}{}
			p.mu.Unlock()
			p.blackholed.Add(1)
			continue
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *faultProxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.upstream, 2*time.Second)
	if err != nil { // Redis is down: the client sees a reset
		faultReset(client)
		_ = client.Close()
		return
	}
	fc := &faultConn{client: client, server: server}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		fc.drop(true)
		return
	}
	p.conns[fc] = struct{}{}
	p.mu.Unlock()
	up := make(chan struct{})
	go func() {
		defer close(up)
		p.pump(server, client, fc, true)
		fc.drop(false)
	}()
	p.pump(client, server, fc, false)
	fc.drop(false)
	<-up
	p.mu.Lock()
	delete(p.conns, fc)
	p.mu.Unlock()
}

// pump copies src to dst chunk by chunk, each delayed by the current
// latency. sniff: src is the client; look for a SUBSCRIBE.
func (p *faultProxy) pump(dst, src net.Conn, fc *faultConn, sniff bool) {
	buf := make([]byte, 32<<10)
	var seen []byte
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if sniff && !fc.pubsub.Load() && len(seen) < faultSniffBytes {
				seen = append(seen, buf[:n]...)
				if faultIsSubscribe(seen) {
					fc.pubsub.Store(true)
					p.pubsubSeen.Add(1)
					if p.blockPubSub.Load() {
						p.pubsubDropped.Add(1)
						fc.drop(true)
						return
					}
				}
			}
			if d := time.Duration(p.latency.Load()); d > 0 {
				time.Sleep(d) // the injected latency
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// faultIsSubscribe: b holds a RESP SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE
// command name (as a bulk string, so a script naming one does not count).
func faultIsSubscribe(b []byte) bool {
	l := bytes.ToLower(b)
	for _, cmd := range []string{"$9\r\nsubscribe\r\n", "$10\r\npsubscribe\r\n", "$10\r\nssubscribe\r\n"} {
		if bytes.Contains(l, []byte(cmd)) {
			return true
		}
	}
	return false
}

// dropAll closes every current connection and returns how many.
func (p *faultProxy) dropAll(rst bool) int {
	return p.dropIf(rst, func(*faultConn) bool { return true })
}

// dropPubSub closes the pub/sub connections only.
func (p *faultProxy) dropPubSub() int {
	n := p.dropIf(true, func(c *faultConn) bool { return c.pubsub.Load() })
	p.pubsubDropped.Add(int64(n))
	return n
}

func (p *faultProxy) dropIf(rst bool, match func(*faultConn) bool) int {
	p.mu.Lock()
	var cs []*faultConn
	for c := range p.conns {
		if match(c) {
			cs = append(cs, c)
		}
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.drop(rst)
	}
	p.dropped.Add(int64(len(cs)))
	return len(cs)
}

// pubsubLive counts the forwarded connections recognised as pub/sub.
func (p *faultProxy) pubsubLive() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.pubsub.Load() {
			n++
		}
	}
	return n
}

// setMode sets what happens to new connections; leaving blackhole closes
// the connections it held.
func (p *faultProxy) setMode(m int32) {
	p.mode.Store(m)
	if m == faultBlackhole {
		return
	}
	p.mu.Lock()
	held := p.held
	p.held = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range held {
		_ = c.Close()
	}
}

func (p *faultProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.setMode(faultPass)
	p.dropAll(true)
	p.wg.Wait()
}

func (p *faultProxy) String() string {
	return fmt.Sprintf("proxy: %d connections forwarded, %d refused, %d blackholed, %d dropped; %d pub/sub connections seen, %d of them dropped",
		p.accepted.Load(), p.refused.Load(), p.blackholed.Load(), p.dropped.Load(), p.pubsubSeen.Load(), p.pubsubDropped.Load())
}

// ---------------------------------------------------------------------------
// What the clients saw.

// faultCall is one acquire with a wait.
type faultCall struct {
	inst       int
	wait       time.Duration
	ttl        time.Duration
	start, end time.Time
	status     int // HTTP status; 0: no HTTP answer
	code       string
	err        error
}

// faultGrant is one lease granted (200) to the test.
type faultGrant struct {
	sem       string
	lease     sdk.Lease
	start, at time.Time // request sent, answer received
	relSent   time.Time // zero: no release sent
	relEnd    time.Time // its answer (or error) came
	relStatus int       // answer of the release (0: none)
	relCode   string
}

// faultHistory is everything the traffic saw.
type faultHistory struct {
	mu       sync.Mutex
	calls    []faultCall
	grants   []*faultGrant
	outages  [][2]time.Time    // Redis unreachable: /readyz must say so
	flaky    [][2]time.Time    // connections dropped: a 503 may be answered
	accepted map[string]string // job id → its payload's "inst/n"
	enqOther map[int]int       // enqueue answers other than 202, by status
	ops      map[string]int
}

func newFaultHistory() *faultHistory {
	return &faultHistory{accepted: map[string]string{}, enqOther: map[int]int{}, ops: map[string]int{}}
}

func (h *faultHistory) op(kind string) {
	h.mu.Lock()
	h.ops[kind]++
	h.mu.Unlock()
}

func (h *faultHistory) addCall(c faultCall) {
	h.mu.Lock()
	h.calls = append(h.calls, c)
	h.mu.Unlock()
}

func (h *faultHistory) addGrant(g *faultGrant) {
	h.mu.Lock()
	h.grants = append(h.grants, g)
	h.mu.Unlock()
}

func (h *faultHistory) setRelease(g *faultGrant, sent time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g.relSent, g.relEnd = sent, time.Now()
	g.relStatus, g.relCode = faultStatus(err)
}

// outage records a window [from, to] when Redis was unreachable.
func (h *faultHistory) outage(from, to time.Time) {
	h.mu.Lock()
	h.outages = append(h.outages, [2]time.Time{from, to})
	h.mu.Unlock()
}

// flakyWindow records a window [from, to] when connections to Redis were
// dropped.
func (h *faultHistory) flakyWindow(from, to time.Time) {
	h.mu.Lock()
	h.flaky = append(h.flaky, [2]time.Time{from, to})
	h.mu.Unlock()
}

func (h *faultHistory) grantsOf(sem string) []*faultGrant {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*faultGrant
	for _, g := range h.grants {
		if g.sem == sem {
			out = append(out, g)
		}
	}
	return out
}

// faultStatus is the HTTP status and error code of an SDK call's error
// (200 for nil, 0 without an HTTP answer).
func faultStatus(err error) (int, string) {
	if err == nil {
		return http.StatusOK, ""
	}
	var ae *sdk.APIError
	if errors.As(err, &ae) {
		return ae.StatusCode, ae.Code
	}
	return 0, ""
}

// ---------------------------------------------------------------------------
// The environment: proxy, instances, clients, semaphores, receiver.

type faultEnv struct {
	t       *testing.T
	proxy   *faultProxy
	insts   []*instance
	clients []*sdk.Client // admin key, one per instance, no client-side timeout below 45 s
	api     *apiClient
	recv    *receiver
	hist    *faultHistory
	ready   []*faultReady
}

// newFaultEnv starts n instances on redisURL through a proxy, creates the
// semaphores "sync" (traffic), "held" (long leases), "orphan" (leases never
// released) and "funnel" (jobs to a webhook receiver), and starts a /readyz
// monitor on every instance.
func newFaultEnv(t *testing.T, redisURL string, n int) *faultEnv {
	t.Helper()
	proxy, purl := newFaultProxy(t, redisURL)
	prefix := "e2e-fault-" + strings.TrimSuffix(testredis.Prefix(t), ":")
	args := []string{"--redis-url", purl, "--redis-prefix", prefix, "--admin-key", adminKey, "--webhook-allow-private"}
	e := &faultEnv{t: t, proxy: proxy, hist: newFaultHistory()}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 45 * time.Second}
	e.api = &apiClient{hc: hc}
	var bases []string
	for i := range n {
		inst := start(t, string(rune('A'+i)), args)
		e.insts = append(e.insts, inst)
		bases = append(bases, inst.base)
		c, err := sdk.New(inst.base, adminKey, sdk.WithHTTPClient(hc))
		require.NoError(t, err)
		e.clients = append(e.clients, c)
	}
	admin := e.clients[0]
	ctx := t.Context()
	_, err := admin.PutSemaphore(ctx, "sync", sdk.SemaphoreConfig{MaxValue: faultSyncMax, LeaseTimeout: faultSyncTTL})
	require.NoError(t, err)
	_, err = admin.PutSemaphore(ctx, "held", sdk.SemaphoreConfig{MaxValue: 4, LeaseTimeout: faultHeldTTL})
	require.NoError(t, err)
	_, err = admin.PutSemaphore(ctx, "orphan", sdk.SemaphoreConfig{MaxValue: 4, LeaseTimeout: faultOrphanTTL})
	require.NoError(t, err)
	e.recv = newReceiver(t, e.api)
	e.recv.setTargets(bases...)
	createFunnel(t, e.api, e.insts[0].base, "funnel", e.recv)
	for _, inst := range e.insts {
		e.ready = append(e.ready, startFaultReady(t, inst))
	}
	return e
}

// grantDirect acquires a lease (no wait) that must be granted, and records it.
func (e *faultEnv) grantDirect(inst int, sem string, ttl time.Duration) *faultGrant {
	e.t.Helper()
	st := time.Now()
	l, err := e.clients[inst].Acquire(e.t.Context(), sem, sdk.AcquireOptions{TTL: ttl})
	require.NoError(e.t, err)
	g := &faultGrant{sem: sem, lease: l, start: st, at: time.Now()}
	e.hist.addGrant(g)
	return g
}

// faultTraffic is the running traffic; stop ends it and waits.
type faultTraffic struct {
	stopping chan struct{}
	wg       sync.WaitGroup
}

func (f *faultTraffic) stopped() bool {
	select {
	case <-f.stopping:
		return true
	default:
		return false
	}
}

func (f *faultTraffic) stop() {
	close(f.stopping)
	f.wg.Wait()
}

// traffic starts faultSyncWorkers sync workers and one enqueuer per
// instance. Requests run on a context of their own: stopping lets each
// finish (a cancelled request would look like a dropped answer).
func (e *faultEnv) traffic() *faultTraffic {
	f := &faultTraffic{stopping: make(chan struct{})}
	n := len(e.insts)
	for i := range n {
		for range faultSyncWorkers {
			f.wg.Go(func() { e.syncWorker(f, i) })
		}
		f.wg.Go(func() { e.enqueuer(f, i) })
	}
	return f
}

func (e *faultEnv) syncWorker(f *faultTraffic, inst int) {
	ctx := context.Background()
	for !f.stopped() {
		st := time.Now()
		l, err := e.clients[inst].Acquire(ctx, "sync", sdk.AcquireOptions{Wait: faultWait, TTL: faultSyncTTL})
		end := time.Now()
		status, code := faultStatus(err)
		e.hist.addCall(faultCall{inst: inst, wait: faultWait, ttl: faultSyncTTL, start: st, end: end, status: status, code: code, err: err})
		e.hist.op(fmt.Sprintf("acquire %d", status))
		if err != nil {
			if status != http.StatusConflict {
				sleepCtx(ctx, faultErrPace)
			}
			continue
		}
		g := &faultGrant{sem: "sync", lease: l, start: st, at: end}
		e.hist.addGrant(g)
		sleepCtx(ctx, time.Duration(5+rand.IntN(20))*time.Millisecond) // the work
		sent := time.Now()
		_, err = e.clients[(inst+1)%len(e.clients)].Release(ctx, l.ID)
		e.hist.setRelease(g, sent, err)
		rs, _ := faultStatus(err)
		e.hist.op(fmt.Sprintf("release %d", rs))
		if err != nil {
			sleepCtx(ctx, faultErrPace)
		}
	}
}

func (e *faultEnv) enqueuer(f *faultTraffic, inst int) {
	ctx := context.Background()
	for k := 0; !f.stopped(); k++ {
		var out struct {
			Job jobJSON `json:"job"`
		}
		status, _ := e.api.do(ctx, http.MethodPost, e.insts[inst].base+"/v1/semaphores/funnel/jobs",
			map[string]any{"payload": map[string]any{"inst": inst, "n": k}}, &out)
		e.hist.mu.Lock()
		if status == http.StatusAccepted && out.Job.ID != "" {
			e.hist.accepted[out.Job.ID] = fmt.Sprintf("%d/%d", inst, k)
		} else {
			e.hist.enqOther[status]++
		}
		e.hist.ops[fmt.Sprintf("enqueue %d", status)]++
		e.hist.mu.Unlock()
		sleepCtx(ctx, faultEnqueuePace)
	}
}

// ---------------------------------------------------------------------------
// /readyz monitor.

type faultReadySample struct {
	sent, answered time.Time
	status         int
}

type faultReady struct {
	inst    *instance
	mu      sync.Mutex
	samples []faultReadySample
	cancel  context.CancelFunc
	done    chan struct{}
}

// startFaultReady polls inst's /readyz every 100 ms until stopped (at the
// latest at cleanup).
func startFaultReady(t *testing.T, inst *instance) *faultReady {
	ctx, cancel := context.WithCancel(context.Background())
	r := &faultReady{inst: inst, cancel: cancel, done: make(chan struct{})}
	tr := &http.Transport{}
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	go func() {
		defer close(r.done)
		defer tr.CloseIdleConnections()
		for ctx.Err() == nil {
			sent := time.Now()
			status := 0
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, inst.base+"/readyz", nil)
			if resp, err := hc.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.samples = append(r.samples, faultReadySample{sent: sent, answered: time.Now(), status: status})
			r.mu.Unlock()
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *faultReady) stop() {
	r.cancel()
	<-r.done
}

func (r *faultReady) snapshot() []faultReadySample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.samples)
}

// ---------------------------------------------------------------------------
// Checks.

// checkWaiters: every acquire got an HTTP answer by its wait + slack: 200,
// 409 no_permit, or 503 store_unavailable overlapping an outage.
func (e *faultEnv) checkWaiters(slack time.Duration) {
	t := e.t
	t.Helper()
	h := e.hist
	h.mu.Lock()
	calls := slices.Clone(h.calls)
	outages := append(slices.Clone(h.outages), h.flaky...)
	h.mu.Unlock()
	require.NotEmpty(t, calls)
	counts := map[string]int{}
	var longest time.Duration
	bad := 0
	for _, c := range calls {
		took := c.end.Sub(c.start)
		longest = max(longest, took)
		key := fmt.Sprintf("%d %s", c.status, c.code)
		counts[key]++
		ok := false
		switch {
		case c.status == http.StatusOK:
			ok = true
		case c.status == http.StatusConflict && c.code == "no_permit":
			ok = true
		case c.status == http.StatusServiceUnavailable && c.code == "store_unavailable":
			ok = faultOverlaps(outages, c.start, c.end, time.Second)
		}
		if !ok {
			bad++
			if bad <= 5 {
				t.Errorf("acquire on instance %d at +%v: answer %d %q not allowed (outages %v): %v",
					c.inst, c.start.Sub(calls[0].start).Round(time.Millisecond), c.status, c.code, len(outages), c.err)
			}
		}
		if took > c.wait+slack {
			bad++
			if bad <= 5 {
				t.Errorf("acquire on instance %d answered %v after it was sent (wait %v, slack %v): %d %v",
					c.inst, took.Round(time.Millisecond), c.wait, slack, c.status, c.err)
			}
		}
	}
	t.Logf("waiters: %d acquires with wait %v, answers %v; the longest took %v (bound: wait + %v); %d not allowed", len(calls), faultWait, counts, longest.Round(time.Millisecond), slack, bad)
}

// faultOverlaps: [from, to] meets an outage widened by grace.
func faultOverlaps(outages [][2]time.Time, from, to time.Time, grace time.Duration) bool {
	for _, o := range outages {
		if !to.Before(o[0]) && !from.After(o[1].Add(grace)) {
			return true
		}
	}
	return false
}

// checkFencing: the tokens of sem are unique, and a grant asked for after
// another was answered carries a larger token.
func (e *faultEnv) checkFencing(sem string) {
	t := e.t
	t.Helper()
	gs := e.hist.grantsOf(sem)
	seen := map[int64]*faultGrant{}
	for _, g := range gs {
		if prev, dup := seen[g.lease.FencingToken]; dup {
			t.Errorf("%s: fencing token %d granted twice: leases %s and %s", sem, g.lease.FencingToken, prev.lease.ID, g.lease.ID)
		}
		seen[g.lease.FencingToken] = g
	}
	byAnswer := slices.Clone(gs)
	sort.Slice(byAnswer, func(i, j int) bool { return byAnswer[i].at.Before(byAnswer[j].at) })
	byAsk := slices.Clone(gs)
	sort.Slice(byAsk, func(i, j int) bool { return byAsk[i].start.Before(byAsk[j].start) })
	var top *faultGrant
	j, bad := 0, 0
	for _, b := range byAsk {
		for j < len(byAnswer) && byAnswer[j].at.Before(b.start) {
			if top == nil || byAnswer[j].lease.FencingToken > top.lease.FencingToken {
				top = byAnswer[j]
			}
			j++
		}
		if top != nil && b.lease.FencingToken <= top.lease.FencingToken {
			bad++
			if bad <= 5 {
				t.Errorf("%s: fencing went backwards: lease %s asked at %s got token %d, but lease %s answered at %s before it had token %d",
					sem, b.lease.ID, b.start.Format("15:04:05.000"), b.lease.FencingToken, top.lease.ID, top.at.Format("15:04:05.000"), top.lease.FencingToken)
			}
		}
	}
	var lo, hi int64
	for i, g := range gs {
		if i == 0 || g.lease.FencingToken < lo {
			lo = g.lease.FencingToken
		}
		hi = max(hi, g.lease.FencingToken)
	}
	t.Logf("fencing %s: %d grants, tokens %d..%d, %d out of real-time order", sem, len(gs), lo, hi, bad)
}

// checkHolders: the leases of sem the clients held at once never exceed
// maxValue. A lease is surely held by the server from its answer until the
// earliest of its release being sent and its expiry.
func (e *faultEnv) checkHolders(sem string, maxValue int) {
	t := e.t
	t.Helper()
	type ev struct {
		at    time.Time
		delta int
	}
	var evs []ev
	now := time.Now()
	for _, g := range e.hist.grantsOf(sem) {
		end := g.lease.ExpiresAt
		if !g.relSent.IsZero() && g.relSent.Before(end) {
			end = g.relSent
		} else if g.relSent.IsZero() && now.Before(end) {
			end = now
		}
		if !g.at.Before(end) {
			continue
		}
		evs = append(evs, ev{g.at, +1}, ev{end, -1})
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].at.Equal(evs[j].at) {
			return evs[i].delta < evs[j].delta // an end before a start at the same instant
		}
		return evs[i].at.Before(evs[j].at)
	})
	cur, peak := 0, 0
	var peakAt time.Time
	for _, x := range evs {
		cur += x.delta
		if cur > peak {
			peak, peakAt = cur, x.at
		}
	}
	if peak > maxValue {
		t.Errorf("%s oversubscribed: %d leases held at once at %s, maxValue %d", sem, peak, peakAt.Format("15:04:05.000"), maxValue)
	}
	t.Logf("holders %s: peak %d of maxValue %d", sem, peak, maxValue)
}

// checkLeases: every lease granted to us and released 200 is gone; every
// lease not released and not expired is live (extend with its ttl answers
// 200); no release of an unexpired lease was answered 404.
func (e *faultEnv) checkLeases(sems ...string) {
	t := e.t
	t.Helper()
	var live, gone, expired, unknown, released int
	for _, sem := range sems {
		for _, g := range e.hist.grantsOf(sem) {
			switch {
			case g.relSent.IsZero():
				if time.Until(g.lease.ExpiresAt) < 500*time.Millisecond {
					expired++
					continue
				}
				l, err := e.clients[0].Extend(t.Context(), g.lease.ID, g.lease.TTL())
				if err != nil {
					t.Errorf("%s: lease %s (granted %s, expires %s) is not live: %v", sem, g.lease.ID,
						g.at.Format("15:04:05.000"), g.lease.ExpiresAt.Format("15:04:05.000"), err)
					gone++
					continue
				}
				g.lease.ExpiresAt = l.ExpiresAt
				live++
			case g.relStatus == http.StatusOK:
				released++
				_, err := e.clients[0].Extend(t.Context(), g.lease.ID, time.Second)
				switch {
				case err == nil:
					t.Errorf("%s: lease %s, released (200 at %s), is live again: an extend succeeded", sem, g.lease.ID, g.relEnd.Format("15:04:05.000"))
				case !sdk.IsLeaseNotFound(err):
					t.Errorf("%s: extend of released lease %s: want 404 lease_not_found, got %v", sem, g.lease.ID, err)
				}
			case g.relStatus == http.StatusNotFound:
				// The release may reach Redis any time until its answer:
				// answered before the expiry, the lease was gone early.
				if g.relEnd.Before(g.lease.ExpiresAt.Add(-100 * time.Millisecond)) {
					t.Errorf("%s: lease %s asked for at %s, granted (200) at %s, expiring at %s: its release sent at %s was answered 404 %s at %s, "+
						"before the expiry: the grant was lost, or the release was applied twice",
						sem, g.lease.ID, g.start.Format("15:04:05.000"), g.at.Format("15:04:05.000"), g.lease.ExpiresAt.Format("15:04:05.000"),
						g.relSent.Format("15:04:05.000"), g.relCode, g.relEnd.Format("15:04:05.000"))
					gone++
				} else {
					expired++
				}
			default:
				unknown++ // release answered 503 or not at all: either way is fine
			}
		}
	}
	t.Logf("leases: %d released (200, and gone), %d still live, %d expired, %d with a release of unknown outcome, %d lost",
		released, live, expired, unknown, gone)
}

// releaseHeld releases the leases of sem we never released; each must be
// live (200).
func (e *faultEnv) releaseHeld(sem string) {
	t := e.t
	t.Helper()
	for _, g := range e.hist.grantsOf(sem) {
		if !g.relSent.IsZero() || time.Until(g.lease.ExpiresAt) < 500*time.Millisecond {
			continue
		}
		sent := time.Now()
		_, err := e.clients[len(e.clients)-1].Release(t.Context(), g.lease.ID)
		e.hist.setRelease(g, sent, err)
		require.NoError(t, err, "release of held lease %s", g.lease.ID)
	}
}

// unseenLeaseDeadline is when every lease nobody saw (an acquire answered
// 503, whose grant may still have happened in Redis; a waiter left queued
// in Redis) has expired: after it, inUse is explained by our leases.
func (e *faultEnv) unseenLeaseDeadline() time.Time {
	h := e.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	d := time.Now()
	for _, c := range h.calls {
		if c.status != http.StatusOK && !(c.status == http.StatusConflict && c.code == "no_permit") {
			d = faultLater(d, c.end.Add(c.wait+faultWaiterSlack+c.ttl))
		} else if c.status == http.StatusConflict {
			// give-up reached Redis, but a grant handed over meanwhile is
			// released asynchronously
			d = faultLater(d, c.end.Add(c.ttl))
		}
	}
	for _, g := range h.grants {
		if g.relStatus != http.StatusOK {
			d = faultLater(d, g.lease.ExpiresAt)
		}
	}
	return d
}

func faultLater(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// checkInUseReturns waits (bounded) until the inUse of every sem is 0 (we
// released all our leases; the others expired), which must happen by the
// last possible expiry of an unseen lease plus one sweep.
func (e *faultEnv) checkInUseReturns(sems ...string) {
	t := e.t
	t.Helper()
	deadline := e.unseenLeaseDeadline().Add(faultSweep)
	began := time.Now()
	ok := true
	for _, sem := range sems {
		for {
			s, err := e.clients[0].GetSemaphore(t.Context(), sem)
			require.NoError(t, err)
			if s.State.InUse == 0 {
				break
			}
			if time.Now().After(deadline.Add(500 * time.Millisecond)) { // + the poll's own lateness
				t.Errorf("%s: inUse %d at %s, after every lease of ours was released and every other one expired (by %s, plus one sweep)",
					sem, s.State.InUse, time.Now().Format("15:04:05.000"), deadline.Add(-faultSweep).Format("15:04:05.000"))
				ok = false
				break
			}
			time.Sleep(50 * time.Millisecond) // a bounded poll of the state
		}
	}
	if ok {
		t.Logf("inUse back to 0 on %v %v after the check began (bound: %v)", sems, time.Since(began).Round(time.Millisecond), deadline.Sub(began).Round(time.Millisecond))
	}
}

// checkJobs waits (bounded) until every accepted job is done; a job that
// is missing is lost. Jobs enqueued with an answer other than 202 may
// exist or not; those that exist must end too.
func (e *faultEnv) checkJobs() {
	t := e.t
	t.Helper()
	e.hist.mu.Lock()
	accepted := maps.Clone(e.hist.accepted)
	byPayload := make(map[string]string, len(accepted))
	for id, p := range accepted {
		byPayload[p] = id
	}
	other := fmt.Sprint(e.hist.enqOther)
	e.hist.mu.Unlock()
	require.NotEmpty(t, accepted, "no job accepted")
	base := e.insts[0].base
	deadline := time.Now().Add(faultJobsDeadline)
	var jobs map[string]jobJSON
	for {
		jobs = e.api.jobs(t, base, "funnel")
		pending := 0
		for _, j := range jobs {
			if j.Status == "scheduled" || j.Status == "inflight" {
				pending++
			}
		}
		missing := 0
		for id := range accepted {
			if _, ok := jobs[id]; !ok {
				missing++
			}
		}
		if pending == 0 || missing > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // a bounded poll of the job list
	}
	statuses := map[string]int{}
	lost, notDone := 0, 0
	for id := range accepted {
		j, ok := jobs[id]
		if !ok {
			lost++
			if lost <= 5 {
				t.Errorf("accepted job %s vanished", id)
			}
			continue
		}
		statuses[j.Status]++
		if j.Status != "done" {
			notDone++
			if notDone <= 5 {
				t.Errorf("accepted job %s not done %v after the faults: %+v", id, faultJobsDeadline, j)
			}
		}
	}
	// A job nobody was answered 202 for comes from an enqueue answered
	// otherwise (its outcome unknown to the client): fine. One with the
	// payload of an accepted job is a second job for one accepted enqueue:
	// its deliveries carry another id, so receivers cannot de-duplicate.
	extra := map[string]int{}
	dups := 0
	for id, j := range jobs {
		if _, ok := accepted[id]; ok {
			continue
		}
		extra[j.Status]++
		if j.Status == "scheduled" || j.Status == "inflight" {
			t.Errorf("job %s (enqueue not answered 202) still %s", id, j.Status)
		}
		var got struct {
			Job struct {
				Payload struct {
					Inst int `json:"inst"`
					N    int `json:"n"`
				} `json:"payload"`
			} `json:"job"`
		}
		_, err := e.api.do(t.Context(), http.MethodGet, base+"/v1/jobs/"+url.PathEscape(id), nil, &got)
		require.NoError(t, err)
		if orig, dup := byPayload[fmt.Sprintf("%d/%d", got.Job.Payload.Inst, got.Job.Payload.N)]; dup {
			dups++
			if dups <= 5 {
				t.Errorf("job %s duplicates accepted job %s (payload inst %d n %d): one enqueue answered 202 once made two jobs",
					id, orig, got.Job.Payload.Inst, got.Job.Payload.N)
			}
		}
	}
	delivered, deliveries, badSigs := e.recv.snapshot()
	require.Zero(t, badSigs)
	undelivered := 0
	for id := range accepted {
		if delivered[id] == 0 {
			undelivered++
		}
	}
	if undelivered > 0 {
		t.Errorf("%d accepted jobs never delivered", undelivered)
	}
	st := e.api.state(t, base, "funnel")
	if st.InUse != 0 || st.Inflight != 0 || st.Queued != 0 {
		t.Errorf("funnel not idle after every job ended: %+v", st)
	}
	t.Logf("jobs: %d accepted (202) → %v; %d lost; enqueues not accepted by status %s; %d jobs never answered 202 → %v, %d of them duplicates of accepted ones; %d deliveries of %d distinct jobs, %d releases answered 409",
		len(accepted), statuses, lost, other, len(jobs)-len(accepted)+lost, extra, dups, deliveries, len(delivered), e.recv.stale.Load())
}

// checkReady: for each outage, every instance's /readyz answered 503
// within faultReadyWithin of its start (and before its end), and 200
// within faultReadyWithin of its end. Without outages, /readyz answered
// 200 only, unless connections were dropped (flaky windows: logged only).
func (e *faultEnv) checkReady() {
	t := e.t
	t.Helper()
	e.hist.mu.Lock()
	outages := slices.Clone(e.hist.outages)
	flaky := len(e.hist.flaky) > 0
	e.hist.mu.Unlock()
	for _, r := range e.ready {
		r.stop()
		ss := r.snapshot()
		require.NotEmpty(t, ss)
		if len(outages) == 0 {
			n := 0
			var slowest time.Duration
			for _, s := range ss {
				slowest = max(slowest, s.answered.Sub(s.sent))
				if s.status != http.StatusOK {
					n++
				}
			}
			if n > 0 && !flaky {
				t.Errorf("%s: /readyz answered other than 200 %d times of %d while Redis was reachable", r.inst.name, n, len(ss))
			}
			t.Logf("%s: /readyz other than 200 in %d of %d polls; the slowest took %v", r.inst.name, n, len(ss), slowest.Round(time.Millisecond))
			continue
		}
		for k, o := range outages {
			var down, up *faultReadySample
			var slowest time.Duration
			for i := range ss {
				s := &ss[i]
				if !s.sent.Before(o[0]) && !s.sent.After(o[1]) {
					slowest = max(slowest, s.answered.Sub(s.sent))
				}
				// The first 503 answered after the outage began, also to a
				// poll sent just before it: a poll in flight at the start
				// waits out its own ping timeout, and one sent after it
				// would only be answered a second timeout later.
				if down == nil && !s.answered.Before(o[0]) && s.status == http.StatusServiceUnavailable {
					down = s
				}
				if up == nil && !s.sent.Before(o[1]) && s.status == http.StatusOK {
					up = s
				}
			}
			switch {
			case down == nil:
				t.Errorf("%s: /readyz never answered 503 during outage %d (%s..%s)", r.inst.name, k, o[0].Format("15:04:05.000"), o[1].Format("15:04:05.000"))
			case down.answered.After(o[1]) || down.answered.Sub(o[0]) > faultReadyWithin:
				t.Errorf("%s: /readyz answered its first 503 %v after outage %d began (it lasted %v; polls sent during it took up to %v)",
					r.inst.name, down.answered.Sub(o[0]).Round(time.Millisecond), k, o[1].Sub(o[0]).Round(time.Millisecond), slowest.Round(time.Millisecond))
			}
			switch {
			case up == nil:
				t.Errorf("%s: /readyz never answered 200 again after outage %d", r.inst.name, k)
			case up.answered.Sub(o[1]) > faultReadyWithin:
				t.Errorf("%s: /readyz answered 200 again only %v after outage %d ended", r.inst.name, up.answered.Sub(o[1]).Round(time.Millisecond), k)
			}
			if down != nil && up != nil {
				t.Logf("%s: outage %d: /readyz 503 %v after it began (polls took up to %v), 200 %v after it ended", r.inst.name, k,
					down.answered.Sub(o[0]).Round(time.Millisecond), slowest.Round(time.Millisecond), up.answered.Sub(o[1]).Round(time.Millisecond))
			}
		}
	}
}

// checkAll runs every check after the traffic stopped and the faults ended.
func (e *faultEnv) checkAll() {
	e.t.Helper()
	e.checkWaiters(faultSlack)
	e.checkFencing("sync")
	e.checkFencing("held")
	e.checkHolders("sync", faultSyncMax)
	e.checkLeases("sync", "held", "orphan")
	e.releaseHeld("held")
	e.checkInUseReturns("sync", "held", "orphan")
	e.checkJobs()
	e.checkReady()
	e.hist.mu.Lock()
	ops := fmt.Sprint(e.hist.ops)
	e.hist.mu.Unlock()
	e.t.Logf("ops: %s; %v", ops, e.proxy)
}

// prelude holds leases across the faults: 3 long ones on "held", 2 of ttl
// 1 s on "orphan" never released.
func (e *faultEnv) prelude() {
	for i := range 3 {
		e.grantDirect(i%len(e.insts), "held", faultHeldTTL)
	}
	for i := range 2 {
		e.grantDirect(i%len(e.insts), "orphan", faultOrphanTTL)
	}
}

// hold keeps a fault on for d (the fault's duration, not a wait for an
// event).
func faultHold(d time.Duration) { time.Sleep(d) }

// ---------------------------------------------------------------------------
// The scenarios.

// TestFault_Latency: Redis answers slowly (30 ms, then 250 ms per chunk
// each way) while sync and async traffic runs on two instances.
func TestFault_Latency(t *testing.T) {
	t.Parallel()
	e := newFaultEnv(t, testredis.URL(t), 2)
	e.prelude()
	tr := e.traffic()
	faultHold(time.Second)
	for _, lat := range []time.Duration{30 * time.Millisecond, 250 * time.Millisecond} {
		e.proxy.latency.Store(int64(lat))
		faultHold(2500 * time.Millisecond)
	}
	e.proxy.latency.Store(0)
	faultHold(time.Second)
	tr.stop()
	e.checkAll()
}

// TestFault_DroppedConnections: every connection between the instances
// and Redis is dropped every 250 ms for 4 s (alternately by reset and by
// close), while traffic runs.
func TestFault_DroppedConnections(t *testing.T) {
	t.Parallel()
	e := newFaultEnv(t, testredis.URL(t), 2)
	e.prelude()
	tr := e.traffic()
	faultHold(time.Second)
	from := time.Now()
	drops := 0
	for i := 0; time.Since(from) < 4*time.Second; i++ {
		drops += e.proxy.dropAll(i%2 == 0)
		faultHold(250 * time.Millisecond)
	}
	e.hist.flakyWindow(from, time.Now())
	t.Logf("%d connections dropped in %v", drops, time.Since(from).Round(time.Millisecond))
	faultHold(time.Second)
	tr.stop()
	e.checkAll()
}

// TestFault_RedisUnreachable: Redis is unreachable twice while traffic
// runs: 9 s with every connection reset and new ones refused, then, after
// 2 s of recovery, 9 s with connections dropped and new ones accepted but
// never answered (a blackhole, as in a network partition).
func TestFault_RedisUnreachable(t *testing.T) {
	t.Parallel()
	e := newFaultEnv(t, testredis.URL(t), 2)
	e.prelude()
	tr := e.traffic()
	faultHold(time.Second)
	for _, mode := range []int32{faultRefuse, faultBlackhole} {
		from := time.Now()
		e.proxy.setMode(mode)
		e.proxy.dropAll(true)
		// Longer than faultWait + faultSlack: a waiter answered only when
		// Redis is back is seen late.
		faultHold(faultWait + faultSlack + time.Second)
		e.proxy.setMode(faultPass)
		e.hist.outage(from, time.Now())
		t.Logf("Redis unreachable (mode %d) %s..%s", mode, from.Format("15:04:05.000"), time.Now().Format("15:04:05.000"))
		faultHold(2 * time.Second)
	}
	tr.stop()
	e.checkAll()
}

// TestFault_RedisRestartAOF: a dedicated Redis with appendfsync always is
// killed (SIGKILL) while traffic runs, stays down 2 s and is restarted on
// its data: nothing acknowledged is lost, fencing goes on from where it
// was.
func TestFault_RedisRestartAOF(t *testing.T) {
	t.Parallel()
	rs := testredis.StartServer(t, "--appendfsync", "always")
	e := newFaultEnv(t, rs.URL(), 2)
	e.prelude()
	tr := e.traffic()
	faultHold(1500 * time.Millisecond)
	from := time.Now()
	rs.Stop() // SIGKILL
	e.proxy.dropAll(true)
	faultHold(2 * time.Second)
	require.NoError(t, rs.Restart()) // Stop left no process: this only starts it again
	e.hist.outage(from, time.Now())
	t.Logf("Redis down %v", time.Since(from).Round(time.Millisecond))
	faultHold(3 * time.Second)
	tr.stop()
	e.checkAll()
}

// TestFault_PubSubDropWhileWaiting: six acquires wait on two instances
// while the pub/sub connections of both are dropped and kept from
// resubscribing for 3 s; meanwhile the permits are released and passed
// down the chain of waiters. Grants pushed during that time are lost
// messages: each waiter must still get its lease within its wait. After
// the block the instances resubscribe and hand-offs are pushed again.
func TestFault_PubSubDropWhileWaiting(t *testing.T) {
	t.Parallel()
	e := newFaultEnv(t, testredis.URL(t), 2)
	a, b := e.clients[0], e.clients[1]
	ctx := t.Context()
	_, err := a.PutSemaphore(ctx, "ps", sdk.SemaphoreConfig{MaxValue: 2, LeaseTimeout: 10 * time.Second})
	require.NoError(t, err)

	// The instances' pub/sub connections exist (grants to waiters, node bus).
	deadline := time.Now().Add(10 * time.Second)
	for e.proxy.pubsubLive() < 2*len(e.insts) {
		require.True(t, time.Now().Before(deadline), "pub/sub connections: %d, want %d", e.proxy.pubsubLive(), 2*len(e.insts))
		time.Sleep(20 * time.Millisecond) // a bounded poll of the proxy
	}
	before := e.proxy.pubsubLive()

	holders := []*faultGrant{e.grantDirect(0, "ps", 10*time.Second), e.grantDirect(0, "ps", 10*time.Second)}
	const waiters = 6
	const wait = 8 * time.Second
	type result struct {
		call  faultCall
		lease sdk.Lease
	}
	results := make(chan result, waiters)
	var wg sync.WaitGroup
	for i := range waiters {
		inst := 1
		if i >= 4 {
			inst = 0
		}
		wg.Go(func() {
			st := time.Now()
			l, err := e.clients[inst].Acquire(context.Background(), "ps", sdk.AcquireOptions{Wait: wait, TTL: 5 * time.Second})
			end := time.Now()
			status, code := faultStatus(err)
			c := faultCall{inst: inst, wait: wait, ttl: 5 * time.Second, start: st, end: end, status: status, code: code, err: err}
			e.hist.addCall(c)
			if err == nil {
				g := &faultGrant{sem: "ps", lease: l, start: st, at: end}
				e.hist.addGrant(g)
				sleepCtx(context.Background(), 100*time.Millisecond) // the work
				sent := time.Now()
				_, rerr := e.clients[1-inst].Release(context.Background(), l.ID)
				e.hist.setRelease(g, sent, rerr)
			}
			results <- result{call: c, lease: l}
		})
	}
	waitWaiting(t, a, "ps", waiters)

	from := time.Now()
	e.proxy.blockPubSub.Store(true)
	dropped := e.proxy.dropPubSub()
	require.GreaterOrEqual(t, dropped, 2*len(e.insts), "pub/sub connections dropped")
	for _, g := range holders {
		sent := time.Now()
		_, err := a.Release(ctx, g.lease.ID)
		e.hist.setRelease(g, sent, err)
		require.NoError(t, err)
	}
	faultHold(3 * time.Second)
	e.proxy.blockPubSub.Store(false)
	blockedFor := time.Since(from)

	wg.Wait()
	close(results)
	var lateness []time.Duration
	for r := range results {
		require.NoError(t, r.call.err, "waiter on instance %d", r.call.inst)
		require.LessOrEqual(t, r.call.end.Sub(r.call.start), wait, "waiter answered after its wait")
		lateness = append(lateness, r.call.end.Sub(from).Round(time.Millisecond))
	}
	slices.Sort(lateness)
	t.Logf("pub/sub blocked %v (%d connections dropped, %d resubscriptions refused meanwhile); the %d waiters got their leases %v after the block began",
		blockedFor.Round(time.Millisecond), dropped, e.proxy.pubsubDropped.Load()-int64(dropped), waiters, lateness)

	// The instances resubscribe; then a release on A wakes a waiter on B by push.
	deadline = time.Now().Add(15 * time.Second)
	for e.proxy.pubsubLive() < before {
		require.True(t, time.Now().Before(deadline), "pub/sub connections after the block: %d, want %d", e.proxy.pubsubLive(), before)
		time.Sleep(20 * time.Millisecond) // a bounded poll of the proxy
	}
	t.Logf("resubscribed %v after the block ended", time.Since(from.Add(blockedFor)).Round(time.Millisecond))
	var handoffs []time.Duration
	for range 3 {
		held := e.grantDirect(0, "ps", 10*time.Second)
		held2 := e.grantDirect(0, "ps", 10*time.Second)
		st := time.Now()
		ch := acquireAsync(ctx, b, "ps", sdk.AcquireOptions{Wait: 5 * time.Second, TTL: 5 * time.Second})
		waitWaiting(t, a, "ps", 1)
		released := time.Now()
		_, err := a.Release(ctx, held.lease.ID)
		e.hist.setRelease(held, released, err)
		require.NoError(t, err)
		r := receive(t, ch, 10*time.Second)
		require.NoError(t, r.err)
		handoffs = append(handoffs, r.at.Sub(released).Round(time.Millisecond))
		g := &faultGrant{sem: "ps", lease: r.lease, start: st, at: r.at}
		e.hist.addGrant(g)
		for _, x := range []*faultGrant{held2, g} {
			sent := time.Now()
			_, err := a.Release(ctx, x.lease.ID)
			e.hist.setRelease(x, sent, err)
			require.NoError(t, err)
		}
	}
	t.Logf("hand-offs A → B after resubscription: %v", handoffs)
	slices.Sort(handoffs)
	require.Less(t, handoffs[1], 500*time.Millisecond, "hand-offs after resubscription are pushed, not polled (median)")

	e.checkFencing("ps")
	e.checkLeases("ps")
	e.checkInUseReturns("ps")
	e.checkReady()
	t.Logf("%v", e.proxy)
}
