package hub

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestLedger_Prefetch(t *testing.T) {
	l := newLedger()
	a, b := subKey{"s", ""}, subKey{"s", "c"}
	p1, err := l.reserve(a, 2, "j1", "l1")
	require.NoError(t, err)
	_, err = l.reserve(a, 2, "j1", "l1")
	require.ErrorIs(t, err, errFull, "a job being pushed is not pushed twice")
	_, err = l.reserve(a, 2, "j2", "l2")
	require.NoError(t, err)
	_, err = l.reserve(a, 2, "j3", "l3")
	require.ErrorIs(t, err, errFull, "prefetch 2 of subscription a")
	_, err = l.reserve(b, 1, "j3", "l3")
	require.NoError(t, err, "another subscription has its own prefetch")
	require.Equal(t, 3, l.size())

	// An ack moves the job to held; it still counts.
	require.True(t, l.ack("j1"))
	require.True(t, l.settle("j1", p1))
	require.Equal(t, 2, l.load(a))
	// A push not acked in time is dropped: a late ack is refused.
	p2 := l.pending["j2"]
	require.False(t, l.settle("j2", p2))
	require.False(t, l.ack("j2"))
	require.Equal(t, 1, l.load(a))

	// A held job pushed again (its lease expired) counts once.
	_, err = l.reserve(a, 2, "j1", "l1b")
	require.NoError(t, err)
	require.Equal(t, 1, l.load(a))
	require.Empty(t, l.held)
}

func TestLedger_ReleaseWaitsForTheDeliveryRecord(t *testing.T) {
	l := newLedger()
	k := subKey{"s", ""}
	p, err := l.reserve(k, 1, "j1", "l1")
	require.NoError(t, err)
	require.True(t, isClosed(l.binding("j9")), "nothing to wait for on an unknown job")
	require.True(t, l.ack("j1"))
	require.True(t, l.settle("j1", p))
	w := l.binding("j1")
	require.False(t, isClosed(w), "acked, its delivery not yet recorded")
	l.bound("j1")
	require.True(t, isClosed(w))
	l.bound("j1") // twice is harmless
	require.True(t, l.forget("j1"))
	require.False(t, l.forget("j1"))
	require.Zero(t, l.size())

	// Forgetting a job still binding (it moved on) releases its waiters.
	p, err = l.reserve(k, 1, "j2", "l2")
	require.NoError(t, err)
	require.True(t, l.ack("j2"))
	l.settle("j2", p)
	w = l.binding("j2")
	require.True(t, l.forget("j2"))
	require.True(t, isClosed(w))
}

func TestLedger_Restore(t *testing.T) {
	l := newLedger()
	subs := []subKey{{"a", "x"}, {"b", ""}}
	l.restore([]string{"j1", "j2", "j3"}, subs, func(id string) string {
		return map[string]string{"j1": "a", "j2": "b", "j3": "c"}[id]
	})
	require.Equal(t, 1, l.load(subKey{"a", "x"}))
	require.Equal(t, 1, l.load(subKey{"b", ""}))
	require.Equal(t, 1, l.load(subKey{"c", ""}), "a job of no subscription still counts")
	require.True(t, isClosed(l.binding("j1")), "a restored job's delivery was recorded before")
	l.setLease("j1", "l9")
	require.Equal(t, "l9", l.heldLeases()["j1"])
}
