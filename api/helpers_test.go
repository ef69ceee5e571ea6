package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/semaphored/semaphored/internal/testredis"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/store/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testredis.Stop() // the shared redis-server of the benchmarks, if started
		os.Exit(code)
	}))
}

// ---- the OpenAPI document, loaded once ----

var spec struct {
	once   sync.Once
	doc    *openapi3.T
	router routers.Router
	err    error
}

func loadSpec(t testing.TB) (*openapi3.T, routers.Router) {
	t.Helper()
	spec.once.Do(func() {
		for _, ct := range []string{"application/yaml", "text/html", "text/javascript", "text/css", "image/svg+xml", "text/plain"} {
			openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
		}
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(OpenAPI)
		if err != nil {
			spec.err = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			spec.err = err
			return
		}
		doc.Servers = nil // match paths on any host (the test server's)
		spec.doc = doc
		spec.router, spec.err = legacy.NewRouter(doc)
	})
	require.NoError(t, spec.err, "api/openapi.yaml")
	return spec.doc, spec.router
}

// checkResponse validates one response against api/openapi.yaml: its status
// must be documented for the operation, its headers and body must match.
// Responses of routes the document does not know must be 404/405 errors.
// Every error body's code must map to the response's status.
func checkResponse(t testing.TB, req *http.Request, status int, header http.Header, body []byte) {
	t.Helper()
	doc, router := loadSpec(t)
	if status >= 400 {
		var eb ErrorBody
		require.NoError(t, json.Unmarshal(body, &eb), "error body %s", body)
		require.Equal(t, statusOf[eb.Error.Code], status, "code %q with status %d: %s", eb.Error.Code, status, body)
		require.NotEmpty(t, eb.Error.Message)
	}
	// Route on the escaped path, as the server does: "a%2Fb" is one segment.
	rreq := req.Clone(context.Background())
	rreq.URL.Path = req.URL.EscapedPath()
	route, params, err := router.FindRoute(rreq)
	if err == nil && strings.HasSuffix(rreq.URL.Path, "/") != strings.HasSuffix(route.Path, "/") {
		// The legacy router ignores a trailing slash; "/console/" and
		// "/console" are different operations.
		if item := doc.Paths.Value(rreq.URL.Path); item != nil && item.GetOperation(req.Method) != nil {
			route = &routers.Route{Spec: doc, Path: rreq.URL.Path, PathItem: item, Method: req.Method, Operation: item.GetOperation(req.Method)}
			params = nil
		}
	}
	if err != nil || isNoRoute(status, body) {
		require.Contains(t, []int{http.StatusNotFound, http.StatusMethodNotAllowed}, status,
			"%s %s is not in openapi.yaml but answered %d", req.Method, req.URL.Path, status)
		var v any
		require.NoError(t, json.Unmarshal(body, &v))
		schema := doc.Components.Schemas["Error"].Value
		require.NoError(t, schema.VisitJSON(v, openapi3.EnableJSONSchema2020()), "error body %s", body)
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: params,
			Route:      route,
		},
		Status:  status,
		Header:  header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	require.NoError(t, openapi3filter.ValidateResponse(context.Background(), in),
		"%s %s → %d %s", req.Method, req.URL.Path, status, shorten(string(body), 2000))
}

// isNoRoute tells whether a response is echo's "no such route" 404, which
// any path may answer (routes of later issues are not served yet).
func isNoRoute(status int, body []byte) bool {
	var eb ErrorBody
	return status == http.StatusNotFound && json.Unmarshal(body, &eb) == nil && eb.Error.Code == CodeNotFound
}

// ---- a fake clock for the memory store ----

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// ---- the test environment ----

type env struct {
	t        *testing.T
	srv      *Server
	url      string
	store    *memory.Store
	svc      *semaphore.Service
	clock    *fakeClock
	reg      *prometheus.Registry
	operator string // operator key of the default tenant
	admin    string // admin key of tenant "acme"
	worker   string // worker key of tenant "acme"
}

// with returns a copy of e that reports to t (for subtests).
func (e *env) with(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

type option func(*Config)

// setup starts a server on a fresh memory store with a fake clock, the
// default tenant (operator key) and tenant "acme" with an admin and a
// worker key.
func setup(t *testing.T, opts ...option) *env {
	t.Helper()
	return setupService(t, nil, opts...)
}

// setupService is setup with svcOpt, when not nil, changing the service's
// config (MaxQueued, ...) before the service is created.
func setupService(t *testing.T, svcOpt func(*semaphore.Config), opts ...option) *env {
	t.Helper()
	clock := &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	st := memory.New(memory.Options{Now: clock.Now})
	reg := prometheus.NewRegistry()
	scfg := semaphore.Config{Store: st, Registerer: reg, SweepInterval: 10 * time.Millisecond}
	if svcOpt != nil {
		svcOpt(&scfg)
	}
	svc, err := semaphore.New(scfg)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, svc.Start(ctx))

	cfg := Config{Service: svc, Registerer: reg, Gatherer: reg}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	require.NoError(t, err)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		svc.Stop()
		_ = st.Close()
	})

	operator, err := svc.Bootstrap(ctx, "")
	require.NoError(t, err)
	require.NotEmpty(t, operator)
	opKey, err := svc.Authenticate(ctx, operator)
	require.NoError(t, err)
	_, _, admin, err := svc.CreateTenant(ctx, opKey, "acme")
	require.NoError(t, err)
	adminKey, err := svc.Authenticate(ctx, admin)
	require.NoError(t, err)
	_, worker, err := svc.CreateKey(ctx, adminKey, store.RoleWorker, "worker")
	require.NoError(t, err)

	return &env{t: t, srv: srv, url: hs.URL, store: st, svc: svc, clock: clock, reg: reg,
		operator: operator, admin: admin, worker: worker}
}

// response is a finished HTTP exchange.
type response struct {
	t      *testing.T
	Status int
	Header http.Header
	Body   []byte
}

// into decodes the body into v.
func (r response) into(v any) {
	r.t.Helper()
	require.NoError(r.t, json.Unmarshal(r.Body, v), "body %s", r.Body)
}

// code is the error code of an error response.
func (r response) code() string {
	r.t.Helper()
	var eb ErrorBody
	r.into(&eb)
	return eb.Error.Code
}

// message is the human text of an error response.
func (r response) message() string {
	r.t.Helper()
	var eb ErrorBody
	r.into(&eb)
	return eb.Error.Message
}

// rawBody is a request body sent as is.
type rawBody string

// do sends a request with key as bearer (none when ""). body: nil (no
// body), rawBody (sent verbatim as application/json) or any value (JSON).
// The response is checked against the OpenAPI document.
func (e *env) do(method, path, key string, body any, hdr ...string) response {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case rawBody:
		r = strings.NewReader(string(b))
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(e.t, err)
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.url+path, r)
	require.NoError(e.t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	checkResponse(e.t, req, resp.StatusCode, resp.Header, data)
	return response{t: e.t, Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// expect sends a request and requires the status (and, for errors, the code).
func (e *env) expect(status int, code, method, path, key string, body any) response {
	e.t.Helper()
	r := e.do(method, path, key, body)
	require.Equal(e.t, status, r.Status, "%s %s: %s", method, path, r.Body)
	if code != "" {
		require.Equal(e.t, code, r.code(), "%s %s: %s", method, path, r.Body)
	}
	return r
}

// put creates a semaphore in tenant acme.
func (e *env) put(name string, cfg map[string]any) SemaphoreJSON {
	e.t.Helper()
	var out SemaphoreResponse
	e.expect(http.StatusOK, "", http.MethodPut, "/v1/semaphores/"+name, e.admin, cfg).into(&out)
	return out.Semaphore
}

// get returns a semaphore of tenant acme with its state.
func (e *env) get(name string) SemaphoreJSON {
	e.t.Helper()
	var out SemaphoreResponse
	e.expect(http.StatusOK, "", http.MethodGet, "/v1/semaphores/"+name, e.admin, nil).into(&out)
	return out.Semaphore
}

// acquire acquires a lease on a semaphore of tenant acme.
func (e *env) acquire(name string, req map[string]any) LeaseJSON {
	e.t.Helper()
	var out LeaseResponse
	e.expect(http.StatusOK, "", http.MethodPost, "/v1/semaphores/"+name+"/acquire", e.worker, req).into(&out)
	return out.Lease
}

// unchanged runs f and requires the semaphore (config and state) to be the
// same afterwards.
func (e *env) unchanged(name string, f func()) {
	e.t.Helper()
	before := e.get(name)
	f()
	require.Equal(e.t, before, e.get(name), "a rejected request changed semaphore %s", name)
}
