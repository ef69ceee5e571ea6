package sdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

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

// A semaphore with a Rate limits grants per sliding window besides
// MaxValue at once. An acquire without wait beyond the rate is a
// no_permit whose RetryAfter says when room frees; Do can wait it out
// (WithRetryAfter).
func ExampleRateLimit() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()

	c, _ := sdk.New(srv.URL, adminKey)
	// At most 10 at once and 2 per minute.
	_, err := c.PutSemaphore(ctx, "partner-api", sdk.SemaphoreConfig{
		MaxValue: 10, Rate: &sdk.RateLimit{Limit: 2, Period: time.Minute},
	})
	if err != nil {
		panic(err)
	}
	_, err1 := c.Acquire(ctx, "partner-api", sdk.AcquireOptions{})
	_, err2 := c.Acquire(ctx, "partner-api", sdk.AcquireOptions{})
	fmt.Println("two acquires:", err1, err2)

	_, err = c.Acquire(ctx, "partner-api", sdk.AcquireOptions{}) // no wait: answered at once
	var apiErr *sdk.APIError
	errors.As(err, &apiErr)
	fmt.Println("third, no permit:", sdk.IsNoPermit(err))
	fmt.Println("retry after:", apiErr.RetryAfter)

	s, _ := c.GetSemaphore(ctx, "partner-api")
	fmt.Printf("rate used: %d of %d\n", s.State.RateUsed, s.Rate.Limit)
	// Output:
	// two acquires: <nil> <nil>
	// third, no permit: true
	// retry after: 1m0s
	// rate used: 2 of 2
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

// Enqueue hands a job over and goes away: the server delivers it, with its
// permit, to the semaphore's webhook when a permit frees. The receiver
// checks the signature, does the work and releases the job.
func ExampleClient_Enqueue() {
	srv := mustStartServerWith(serverOptions{webhooks: true}) // admits http:// receivers on loopback
	defer srv.Close()
	ctx := context.Background()
	c, _ := sdk.New(srv.URL, adminKey)

	// The webhook receiver hands each delivery to the worker below.
	type delivery struct {
		header http.Header
		body   []byte
	}
	deliveries := make(chan delivery, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		select {
		case deliveries <- delivery{r.Header.Clone(), body}:
		default: // a redelivery while the worker is busy: answered below, de-duplicated by id
		}
		w.WriteHeader(http.StatusOK) // accepted: the job holds its permit until released
	}))
	defer hook.Close()

	sem, err := c.PutSemaphore(ctx, "invoices", sdk.SemaphoreConfig{
		MaxValue: 2,
		Routes:   json.RawMessage(fmt.Sprintf(`[{"type": "https", "url": %q}]`, hook.URL)),
	})
	if err != nil {
		panic(err)
	}
	var routes []struct {
		Secret string `json:"secret"` // generated per route, shown to admins
	}
	_ = json.Unmarshal(sem.Routes, &routes)

	job, err := c.Enqueue(ctx, "invoices", map[string]int{"invoice": 42}, sdk.EnqueueOptions{})
	if err != nil {
		panic(err)
	}

	// The worker.
	d := <-deliveries
	wh, _ := standardwebhooks.NewWebhook(routes[0].Secret)
	fmt.Println("signature valid:", wh.Verify(d.body, d.header) == nil)
	var msg struct {
		ID      string          `json:"id"`
		Attempt int             `json:"attempt"`
		Payload json.RawMessage `json:"payload"`
	}
	_ = json.Unmarshal(d.body, &msg)
	fmt.Println("delivered:", string(msg.Payload), "attempt", msg.Attempt, "same id:", msg.ID == job.ID)
	// ... the work ...
	released, err := c.ReleaseJob(ctx, msg.ID)
	fmt.Println("released:", released.Status, err)

	job, _ = c.GetJob(ctx, job.ID)
	fmt.Println("status:", job.Status)
	// Output:
	// signature valid: true
	// delivered: {"invoice":42} attempt 1 same id: true
	// released: done <nil>
	// status: done
}

// A burst of jobs goes in one request, all or nothing: a bad job refuses
// the batch and names its place; a repeated idempotency key is the same job.
func ExampleClient_EnqueueBatch() {
	srv := mustStartServer()
	defer srv.Close()
	ctx := context.Background()
	c, _ := sdk.New(srv.URL, adminKey)
	if _, err := c.PutSemaphore(ctx, "emails", sdk.SemaphoreConfig{MaxValue: 1}); err != nil {
		panic(err)
	}
	_, _ = c.Suspend(ctx, "emails") // nothing is delivered in this example: the jobs stay queued

	batch := []sdk.BatchJob{
		{Payload: map[string]string{"to": "a@example.com"}, EnqueueOptions: sdk.EnqueueOptions{IdempotencyKey: "mail-1"}},
		{Payload: map[string]string{"to": "b@example.com"}, EnqueueOptions: sdk.EnqueueOptions{Channel: "eu"}},
		{Payload: map[string]string{"to": "a@example.com"}, EnqueueOptions: sdk.EnqueueOptions{IdempotencyKey: "mail-1"}},
	}
	jobs, err := c.EnqueueBatch(ctx, "emails", batch)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(jobs), "answers;", "first and third the same job:", jobs[0].ID == jobs[2].ID)

	_, err = c.EnqueueBatch(ctx, "emails", []sdk.BatchJob{{Payload: 1}, {Payload: 2, EnqueueOptions: sdk.EnqueueOptions{Channel: "not a name"}}})
	var ae *sdk.APIError
	if errors.As(err, &ae) {
		fmt.Println(ae.StatusCode, ae.Code, "at index", ae.Index)
	}
	page, _ := c.ListJobs(ctx, "emails", sdk.ListJobsOptions{})
	fmt.Println("queued:", len(page.Jobs))
	// Output:
	// 3 answers; first and third the same job: true
	// 400 invalid_request at index 1
	// queued: 2
}
