package sdk_test

// The sync path through the SDK: a Client shared by 64 goroutines, each
// doing Acquire then Release against an in-process server (memory store) on
// a loopback port. It measures the SDK and the server together, like
// api's BenchmarkHTTPAcquireRelease does with a bare http.Client.
//
//	go test -run '^$' -bench 'BenchmarkSDKAcquireRelease' -benchtime 3s -count 5 -benchmem ./sdk/

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

// BenchmarkSDKAcquireRelease: acquire+release pairs by 64 concurrent
// goroutines sharing one sdk.Client and b.N. One op is one pair; reports
// pairs/s, and conns/pair: TCP connections the client dialled per pair
// (about 0 when keep-alive connections are reused).
func BenchmarkSDKAcquireRelease(b *testing.B) {
	const clients = 64
	srv, err := startServer(serverOptions{})
	require.NoError(b, err)
	b.Cleanup(srv.Close)
	ctx := context.Background()
	op, err := sdk.New(srv.URL, adminKey, sdk.WithHTTPClient(http.DefaultClient))
	require.NoError(b, err)
	_, err = op.PutSemaphore(ctx, "pairs", sdk.SemaphoreConfig{MaxValue: 1_000_000})
	require.NoError(b, err)
	k, err := op.CreateKey(ctx, sdk.RoleWorker, "bench-worker")
	require.NoError(b, err)
	// The SDK's default transport settings, with dials counted and idle
	// connections closed at cleanup (for goleak).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 256, 128
	var conns atomic.Int64
	dialer := &net.Dialer{}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conns.Add(1)
		return dialer.DialContext(ctx, network, addr)
	}
	b.Cleanup(tr.CloseIdleConnections)
	c, err := sdk.New(srv.URL, k.Secret, sdk.WithHTTPClient(&http.Client{Transport: tr}))
	require.NoError(b, err)
	opts := sdk.AcquireOptions{TTL: 60e9}

	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	conns.Store(0)
	b.ReportAllocs()
	b.ResetTimer()
	for range clients {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) && !failed.Load() {
				l, err := c.Acquire(ctx, "pairs", opts)
				if err == nil {
					_, err = c.Release(ctx, l.ID)
				}
				if err != nil {
					failed.Store(true)
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	b.ReportMetric(float64(conns.Load())/float64(b.N), "conns/pair")
}
