package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/semaphored/semaphored/sdk"
)

// Do runs a function while holding a permit: it acquires (waiting if
// needed), keeps the lease alive while the function runs, and releases it
// afterwards, also on error or panic.
func ExampleClient_Do() {
	srv := mustStartServer() // a real semaphored, in-process
	defer srv.Close()
	ctx := context.Background()

	admin, _ := sdk.New(srv.URL, adminKey)
	_, err := admin.PutSemaphore(ctx, "payments-api", sdk.SemaphoreConfig{MaxValue: 3, LeaseTimeout: 30 * time.Second})
	if err != nil {
		panic(err)
	}

	err = admin.Do(ctx, "payments-api", func(ctx context.Context, lease sdk.Lease) error {
		// Call the guarded resource here, passing lease.FencingToken along
		// so that it can refuse a stale holder.
		s, _ := admin.GetSemaphore(ctx, "payments-api")
		fmt.Println("in use while running:", s.State.InUse)
		return nil
	})
	fmt.Println("error:", err)

	s, _ := admin.GetSemaphore(ctx, "payments-api")
	fmt.Println("in use afterwards:", s.State.InUse)
	// Output:
	// in use while running: 1
	// error: <nil>
	// in use afterwards: 0
}

// Acquire and Release give full control over a lease; a full semaphore
// answers with an error for which IsNoPermit is true.
func ExampleClient_Acquire() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()

	c, _ := sdk.New(srv.URL, adminKey)
	if _, err := c.PutSemaphore(ctx, "licences", sdk.SemaphoreConfig{MaxValue: 1}); err != nil {
		panic(err)
	}

	first, err := c.Acquire(ctx, "licences", sdk.AcquireOptions{TTL: time.Minute})
	fmt.Println("first acquire:", err)

	_, err = c.Acquire(ctx, "licences", sdk.AcquireOptions{}) // no wait: answered at once
	fmt.Println("second acquire, no permit:", sdk.IsNoPermit(err))

	_, err = c.Release(ctx, first.ID)
	fmt.Println("release:", err)

	second, err := c.Acquire(ctx, "licences", sdk.AcquireOptions{Wait: 5 * time.Second})
	fmt.Println("third acquire:", err)
	fmt.Println("fencing token increased:", second.FencingToken > first.FencingToken)

	_, err = c.Release(ctx, first.ID)
	fmt.Println("released twice, lease not found:", sdk.IsLeaseNotFound(err))
	// Output:
	// first acquire: <nil>
	// second acquire, no permit: true
	// release: <nil>
	// third acquire: <nil>
	// fencing token increased: true
	// released twice, lease not found: true
}

// An admin key creates worker keys for the processes that only take
// permits; the secret is shown once, in the reply.
func ExampleClient_CreateKey() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()

	admin, _ := sdk.New(srv.URL, adminKey)
	key, err := admin.CreateKey(ctx, sdk.RoleWorker, "billing worker")
	if err != nil {
		panic(err)
	}
	fmt.Println("role:", key.Role)

	worker, _ := sdk.New(srv.URL, key.Secret)
	_, err = worker.PutSemaphore(ctx, "db", sdk.SemaphoreConfig{MaxValue: 5})
	fmt.Println("worker may not configure semaphores:", sdk.IsForbidden(err))

	_, err = admin.DeleteKey(ctx, key.ID)
	fmt.Println("revoked:", err)
	_, err = worker.Acquire(ctx, "db", sdk.AcquireOptions{})
	fmt.Println("revoked key is refused:", sdk.IsUnauthorized(err))
	// Output:
	// role: worker
	// worker may not configure semaphores: true
	// revoked: <nil>
	// revoked key is refused: true
}

// Every error the server answers is an *APIError carrying the status and
// the stable code.
func ExampleAPIError() {
	srv := mustStartServer()
	defer srv.Close()

	c, _ := sdk.New(srv.URL, adminKey)
	_, err := c.GetSemaphore(context.Background(), "missing")
	var apiErr *sdk.APIError
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.StatusCode, apiErr.Code)
	}
	fmt.Println(errors.Is(err, sdk.ErrSemaphoreNotFound))
	// Output:
	// 404 semaphore_not_found
	// true
}
