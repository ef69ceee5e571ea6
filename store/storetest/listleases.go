package storetest

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/store"
)

// testListLeases: ListLeases pages through the live leases by fencing
// token, per channel on request, including a job's lease; released and
// expired leases are not listed; a cursor that is not one lists nothing.
func testListLeases(t *testing.T, f *fixture) {
	f.put("s", 10, store.ScopeChannel)
	var want []store.Lease
	for i := range 5 {
		p := f.params("s")
		p.Channel = "a"
		if i%2 == 1 {
			p.Channel = "b"
		}
		want = append(want, f.acquire(p))
	}
	p := f.params("s")
	p.TTL = shortTTL
	short := f.acquire(p)
	f.release(want[2])
	want = append(want[:2], want[3:]...)
	job := f.enqueue("s", "b") // dispatched at once: its lease is live
	require.NotNil(t, job.Lease)
	want = append(want, *job.Lease)

	require.Eventually(t, func() bool {
		_, _, err := f.st.ListLeases(f.ctx, store.ListLeasesParams{Tenant: f.tenant, Semaphore: "s"})
		require.NoError(t, err)
		return time.Now().After(short.ExpiresAt.Add(10 * time.Millisecond))
	}, eventually, tick)

	var got []store.Lease
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10)
		page, next, err := f.st.ListLeases(f.ctx, store.ListLeasesParams{Tenant: f.tenant, Semaphore: "s", Cursor: cursor, Limit: 2})
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), 2)
		got = append(got, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].ID, got[i].ID, "lease %d in grant order", i)
		require.Equal(t, want[i].FencingToken, got[i].FencingToken)
		require.Equal(t, want[i].Channel, got[i].Channel)
		require.Equal(t, want[i].Weight, got[i].Weight)
	}

	b, next, err := f.st.ListLeases(f.ctx, store.ListLeasesParams{Tenant: f.tenant, Semaphore: "s", Channel: "b"})
	require.NoError(t, err)
	require.Empty(t, next)
	require.Len(t, b, 3, "two sync leases and the job's")
	for _, l := range b {
		require.Equal(t, "b", l.Channel)
	}

	last := strconv.FormatInt(want[len(want)-1].FencingToken, 10)
	for _, c := range []string{last, "-1", "x"} {
		none, next, err := f.st.ListLeases(f.ctx, store.ListLeasesParams{Tenant: f.tenant, Semaphore: "s", Cursor: c})
		require.NoError(t, err)
		require.Empty(t, none, c)
		require.Empty(t, next, c)
	}
	_, _, err = f.st.ListLeases(f.ctx, store.ListLeasesParams{Tenant: f.tenant, Semaphore: "nope"})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound)
	_, _, err = f.withTenant("t2").st.ListLeases(f.ctx, store.ListLeasesParams{Tenant: "t2", Semaphore: "s"})
	require.ErrorIs(t, err, store.ErrSemaphoreNotFound, "another tenant's")
}
