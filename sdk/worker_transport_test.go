package sdk_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testproxy"
	"github.com/semaphored/semaphored/sdk"
)

// The worker on each transport, and its choice among them (SPEC §6
// "Fallback transports"): fallback behind proxies that refuse or cut
// connections, deaf connections, and the way back to the websocket.

// runJobs enqueues n jobs on sem and waits until the worker's handler
// ran each and they are done.
func runJobs(t *testing.T, c *sdk.Client, log *jobLog, sem string, n int) {
	t.Helper()
	ids := enqueueN(t, c, sem, 0, n)
	log.wait(t, n)
	waitStatus(t, c, ids, sdk.JobDone)
}

func TestWorker_EachTransport(t *testing.T) {
	for _, tr := range []sdk.Transport{sdk.TransportWebsocket, sdk.TransportSSE, sdk.TransportLongPoll} {
		t.Run(string(tr), func(t *testing.T) {
			t.Parallel()
			srv, c := setup(t)
			ctx := t.Context()
			_, err := c.PutSemaphore(ctx, "work", sdk.SemaphoreConfig{MaxValue: 3})
			require.NoError(t, err)
			_, err = c.PutSemaphore(ctx, "gate", sdk.SemaphoreConfig{MaxValue: 1})
			require.NoError(t, err)
			w, connects := newWorker(t, srv.URL, sdk.WithTransport(tr))
			ev := nextConnect(t, connects)
			require.Equal(t, tr, ev.Transport)
			h := w.Health()
			require.True(t, h.Connected)
			require.Equal(t, tr, h.Transport)
			require.Equal(t, ev.Session, h.Session)
			require.WithinDuration(t, time.Now(), h.LastFrame, 5*time.Second)

			log := newJobLog()
			require.NoError(t, w.Subscribe(ctx, "work", "", 2, log.handler(5*time.Millisecond)))
			runJobs(t, c, log, "work", 30)
			require.LessOrEqual(t, log.peak, 2, "prefetch 2 bounds the jobs run at once")

			l, err := w.Acquire(ctx, "gate", sdk.AcquireOptions{TTL: time.Minute})
			require.NoError(t, err)
			// a waiting acquire does not hold up the frames behind it
			waited := make(chan error, 1)
			go func() {
				_, err := w.Acquire(ctx, "gate", sdk.AcquireOptions{Wait: 30 * time.Second})
				waited <- err
			}()
			require.Eventually(t, func() bool {
				s, err := c.GetSemaphore(ctx, "gate")
				return err == nil && s.State.Waiting == 1
			}, 5*time.Second, 5*time.Millisecond, "the acquire waits")
			runJobs(t, c, log, "work", 5)
			_, err = w.Release(ctx, l.ID)
			require.NoError(t, err)
			select {
			case err := <-waited:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("the waiting acquire was not granted")
			}

			require.NoError(t, w.Close())
			require.False(t, w.Health().Connected)
			require.Eventually(t, func() bool {
				s, err := c.GetSemaphore(ctx, "gate")
				return err == nil && s.State.InUse == 0
			}, 5*time.Second, 10*time.Millisecond, "Close gave the session up: its lease was released at once")
		})
	}
}

func TestWorker_BadTransport(t *testing.T) {
	_, err := sdk.NewWorker("http://x", "k", sdk.WithTransport("pigeon"))
	require.ErrorContains(t, err, "pigeon")
}

// Behind a proxy that refuses websockets, auto falls back to SSE; behind
// one that also refuses event streams, to long-poll.
func TestWorker_AutoFallsBack(t *testing.T) {
	for name, want := range map[string]sdk.Transport{"no websocket": sdk.TransportSSE, "no websocket, no SSE": sdk.TransportLongPoll} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv, c := setup(t)
			ctx := t.Context()
			_, err := c.PutSemaphore(ctx, "work", sdk.SemaphoreConfig{MaxValue: 3})
			require.NoError(t, err)
			p := testproxy.StartNoUpgrade(srv.URL, nil)
			t.Cleanup(p.Close)
			if want == sdk.TransportLongPoll {
				p.Refuse = func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/v1/sse") }
			}
			w, connects := newWorker(t, p.URL)
			ev := nextConnect(t, connects)
			require.Equal(t, want, ev.Transport)
			require.Equal(t, want, w.Health().Transport)
			require.Positive(t, p.Refused.Load())
			log := newJobLog()
			require.NoError(t, w.Subscribe(ctx, "work", "", 2, log.handler(0)))
			runJobs(t, c, log, "work", 20)
		})
	}
}

// A worker that fell back probes the better transports and moves its
// session back to the first that answers, with its subscription.
func TestWorker_AutoMovesBack(t *testing.T) {
	t.Parallel()
	srv, c := setup(t)
	ctx := t.Context()
	_, err := c.PutSemaphore(ctx, "work", sdk.SemaphoreConfig{MaxValue: 3})
	require.NoError(t, err)
	var allow atomic.Bool
	p := testproxy.StartNoUpgrade(srv.URL, allow.Load)
	t.Cleanup(p.Close)
	w, connects := newWorker(t, p.URL, sdk.WithTransportRetry(200*time.Millisecond))
	first := nextConnect(t, connects)
	require.Equal(t, sdk.TransportSSE, first.Transport)
	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "work", "", 1, log.handler(0)))
	runJobs(t, c, log, "work", 3)

	allow.Store(true) // the proxy passes websockets again
	ev := nextConnect(t, connects)
	require.Equal(t, sdk.TransportWebsocket, ev.Transport)
	require.True(t, ev.Resumed, "the session moved with its subscription")
	require.Equal(t, first.Session, ev.Session)
	runJobs(t, c, log, "work", 3)
}

// A connection the server is no longer heard on (a proxy that stopped
// passing its bytes without closing) is dropped after 3 heartbeats, and
// the session resumed on a new one.
func TestWorker_DeafConnectionReconnects(t *testing.T) {
	for _, tr := range []sdk.Transport{sdk.TransportWebsocket, sdk.TransportSSE, sdk.TransportLongPoll} {
		t.Run(string(tr), func(t *testing.T) {
			t.Parallel()
			srv := newTestServer(t, serverOptions{heartbeat: 200 * time.Millisecond, grace: time.Minute})
			c, err := sdk.New(srv.URL, adminKey)
			require.NoError(t, err)
			ctx := t.Context()
			_, err = c.PutSemaphore(ctx, "work", sdk.SemaphoreConfig{MaxValue: 3})
			require.NoError(t, err)
			p, err := testproxy.StartCutter(strings.TrimPrefix(srv.URL, "http://"), time.Hour)
			require.NoError(t, err)
			t.Cleanup(p.Close)
			w, connects := newWorker(t, p.URL, sdk.WithTransport(tr))
			first := nextConnect(t, connects)
			log := newJobLog()
			require.NoError(t, w.Subscribe(ctx, "work", "", 1, log.handler(0)))
			runJobs(t, c, log, "work", 2)

			p.MuteAll()
			ev := nextConnect(t, connects)
			require.True(t, ev.Resumed)
			require.Equal(t, first.Session, ev.Session)
			require.Equal(t, tr, ev.Transport)
			runJobs(t, c, log, "work", 2)
		})
	}
}

// Behind a proxy that cuts every connection within the first heartbeat,
// auto ends on long-poll, and no job is lost on the way.
func TestWorker_ConnectionsCutEarly(t *testing.T) {
	t.Parallel()
	srv := newTestServer(t, serverOptions{heartbeat: time.Second, grace: time.Minute})
	c, err := sdk.New(srv.URL, adminKey)
	require.NoError(t, err)
	ctx := t.Context()
	_, err = c.PutSemaphore(ctx, "work", sdk.SemaphoreConfig{MaxValue: 4})
	require.NoError(t, err)
	p, err := testproxy.StartCutter(strings.TrimPrefix(srv.URL, "http://"), 300*time.Millisecond)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	w, _ := newWorker(t, p.URL)
	log := newJobLog()
	require.NoError(t, w.Subscribe(ctx, "work", "", 2, log.handler(time.Millisecond)))
	ids := enqueueN(t, c, "work", 0, 50) // taken while the worker falls back
	require.Eventually(t, func() bool { return w.Health().Transport == sdk.TransportLongPoll }, 15*time.Second, 10*time.Millisecond,
		"fell back to long-poll (now %q)", w.Health().Transport)
	ids = append(ids, enqueueN(t, c, "work", 50, 100)...)
	log.wait(t, len(ids))
	waitStatus(t, c, ids, sdk.JobDone)
	require.Positive(t, p.Cuts.Load())
}

// A worker behind a proxy that breaks websockets: WithTransport picks
// the transport (TransportAuto, the default, falls back by itself), and
// Health reports the one in use.
func ExampleWithTransport() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()
	admin, _ := sdk.New(srv.URL, adminKey)
	if _, err := admin.PutSemaphore(ctx, "reports", sdk.SemaphoreConfig{MaxValue: 2}); err != nil {
		panic(err)
	}

	// Long-poll passes any proxy: plain requests and responses.
	w, err := sdk.NewWorker(srv.URL, adminKey, sdk.WithTransport(sdk.TransportLongPoll))
	if err != nil {
		panic(err)
	}
	defer w.Close()
	handled := make(chan string)
	err = w.Subscribe(ctx, "reports", "", 1, func(ctx context.Context, job sdk.Job) error {
		handled <- string(job.Payload)
		return nil
	})
	if err != nil {
		panic(err)
	}
	if _, err := admin.Enqueue(ctx, "reports", "weekly", sdk.EnqueueOptions{}); err != nil {
		panic(err)
	}
	fmt.Println("handled", <-handled)
	h := w.Health()
	fmt.Println("connected:", h.Connected, "transport:", h.Transport, "heard lately:", time.Since(h.LastFrame) < time.Minute)
	// Output:
	// handled "weekly"
	// connected: true transport: longpoll heard lately: true
}
