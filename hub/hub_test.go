package hub

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
)

// The websocket protocol is tested through a real server in api/ws_test.go;
// these are the hub's own edges.

func TestNewHub_Config(t *testing.T) {
	st := memory.New(memory.Options{})
	defer st.Close()
	for name, cfg := range map[string]Config{
		"no store":          {Node: "n"},
		"no node":           {Store: st},
		"negative duration": {Store: st, Node: "n", Grace: -time.Second},
		"negative queue":    {Store: st, Node: "n", SendQueue: -1},
	} {
		_, err := New(cfg)
		require.Error(t, err, name)
	}
	h, err := New(Config{Store: st, Node: "n"})
	require.NoError(t, err)
	require.Equal(t, DefaultHeartbeat, h.Heartbeat())
	require.Equal(t, DefaultGrace, h.Grace())
	require.EqualValues(t, DefaultMaxMessageBytes, h.MaxMessageBytes())
	h.Stop() // without Start
}

func TestHub_StartStop(t *testing.T) {
	st := memory.New(memory.Options{})
	defer st.Close()
	h, err := New(Config{Store: st, Node: "n1", Heartbeat: 30 * time.Millisecond})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, h.Start(ctx))
	require.Error(t, h.Start(ctx), "twice")
	nodes, err := st.Nodes(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"n1"}, nodes, "heartbeat recorded before Start returns")
	h.Stop()
	h.Stop()
	require.Eventually(t, func() bool {
		nodes, err := st.Nodes(ctx)
		return err == nil && len(nodes) == 0
	}, 5*time.Second, 10*time.Millisecond, "the node's heartbeat expires after Stop")
}

func TestHub_PushWithoutSession(t *testing.T) {
	st := memory.New(memory.Options{})
	defer st.Close()
	h, err := New(Config{Store: st, Node: "n1"})
	require.NoError(t, err)
	require.NoError(t, h.Start(context.Background()))
	defer h.Stop()
	job := store.Job{Tenant: "t", ID: store.NewJobID("s"), Semaphore: "s", Channel: "default",
		Lease:  &store.Lease{ID: store.NewLeaseID("s"), Semaphore: "s"},
		Worker: &store.Worker{Session: "gone", Node: "n1"}}
	err = h.Push(context.Background(), job, nil)
	require.ErrorIs(t, err, ErrNotPushed, "a session not connected here")
	job.Worker = nil
	require.Error(t, h.Push(context.Background(), job, nil), "a job bound to no worker")
}
