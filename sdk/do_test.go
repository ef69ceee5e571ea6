package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/sdk"
)

// slowGrant is a fake server's lease: granted when the acquire arrives,
// with ttl, but answered only replyDelay later (a slow network or proxy).
// Every extend fails with a transient error (the store is unavailable),
// and the release finds the lease gone.
type slowGrant struct {
	ttl, replyDelay time.Duration
	granted         chan time.Time
}

func newSlowGrant(ttl, replyDelay time.Duration) *slowGrant {
	return &slowGrant{ttl: ttl, replyDelay: replyDelay, granted: make(chan time.Time, 1)}
}

// grant records the grant, waits replyDelay (or until ctx ends) and
// returns the lease's JSON.
func (g *slowGrant) grant(ctx context.Context) json.RawMessage {
	now := time.Now()
	g.granted <- now
	select {
	case <-time.After(g.replyDelay):
	case <-ctx.Done():
	}
	b, _ := json.Marshal(map[string]any{
		"id": "l1", "semaphore": "s", "channel": "default", "weight": 1, "fencingToken": 1,
		"acquiredAt": now, "expiresAt": now.Add(g.ttl),
	})
	return b
}

// http serves the HTTP API's acquire, extend and release of lease l1.
func (g *slowGrant) http(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/v1/semaphores/s/acquire":
		lease := g.grant(r.Context())
		_ = json.NewEncoder(w).Encode(map[string]any{"lease": lease})
	case "/v1/leases/l1/extend":
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"code":"store_unavailable","message":"the store is down"}}`))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"lease_not_found","message":"lease not found"}}`))
	}
}

// ws serves the same over the websocket protocol.
func (g *slowGrant) ws(w http.ResponseWriter, r *http.Request) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer conn.CloseNow()
	ctx := r.Context()
	send := func(v any) error {
		b, _ := json.Marshal(v)
		return conn.Write(ctx, websocket.MessageText, b)
	}
	if send(map[string]any{"type": "welcome", "session": "s1", "resumeToken": "r1", "heartbeat": "10s", "protocol": 1}) != nil {
		return
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return
		}
		var f struct{ Type, ID string }
		_ = json.Unmarshal(data, &f)
		var out map[string]any
		switch f.Type {
		case "acquire":
			out = map[string]any{"type": "acquired", "id": f.ID, "lease": g.grant(ctx)}
		case "extend":
			out = map[string]any{"type": "error", "id": f.ID, "code": "store_unavailable", "message": "the store is down"}
		case "ping":
			out = map[string]any{"type": "pong", "id": f.ID}
		default:
			out = map[string]any{"type": "error", "id": f.ID, "code": "lease_not_found", "message": "lease not found"}
		}
		if send(out) != nil {
			return
		}
	}
}

// TestDo_LeaseDeadlineCountsFromTheAcquireRequest: the server grants a
// lease of ttl 2s as the acquire arrives, but its reply takes 3s; then
// every extend fails. The lease has expired before Do even sees it, so
// the first failed extend must end fn at once. A keep-alive that counted
// the ttl from the reply would let fn run on for another ttl, with a
// permit another holder may have been granted meanwhile.
func TestDo_LeaseDeadlineCountsFromTheAcquireRequest(t *testing.T) {
	t.Parallel()
	const ttl, replyDelay = 2 * time.Second, 3 * time.Second

	// run runs do with fn waiting for its context, and checks that fn's
	// context ended with ErrLeaseLost well before a whole ttl had passed
	// since the reply.
	run := func(t *testing.T, g *slowGrant, do func(fn func(ctx context.Context, l sdk.Lease) error) error) {
		ended := make(chan time.Time, 1)
		err := do(func(ctx context.Context, l sdk.Lease) error {
			select {
			case <-ctx.Done():
				ended <- time.Now()
				return context.Cause(ctx)
			case <-time.After(20 * time.Second):
				return errors.New("fn's context did not end")
			}
		})
		require.ErrorIs(t, err, sdk.ErrLeaseLost)
		grantedAt, endedAt := <-g.granted, <-ended
		// reply at grant+3s, lease expired at grant+2s: lost at the first
		// extend, about grant+3s. Counting from the reply: about grant+5s.
		require.Less(t, endedAt.Sub(grantedAt), replyDelay+ttl/2,
			"fn ran %v after the grant of a lease of ttl %v", endedAt.Sub(grantedAt), ttl)
	}

	t.Run("client", func(t *testing.T) {
		t.Parallel()
		g := newSlowGrant(ttl, replyDelay)
		c, err := sdk.New(fakeServer(t, g.http), adminKey)
		require.NoError(t, err)
		run(t, g, func(fn func(ctx context.Context, l sdk.Lease) error) error {
			return c.Do(t.Context(), "s", fn, sdk.WithTTL(ttl))
		})
	})
	t.Run("worker", func(t *testing.T) {
		t.Parallel()
		g := newSlowGrant(ttl, replyDelay)
		w, _ := newWorker(t, fakeServer(t, g.ws))
		run(t, g, func(fn func(ctx context.Context, l sdk.Lease) error) error {
			return w.Do(t.Context(), "s", fn, sdk.WithTTL(ttl))
		})
	})
}
