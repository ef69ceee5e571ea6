package api

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/wire"
)

// OpenAPI is api/openapi.yaml, the OpenAPI 3.1 description of this API.
//
//go:embed openapi.yaml
var OpenAPI []byte

// ---- semaphores ----

func (s *Server) putSemaphore(c echo.Context) error {
	var req SemaphoreConfigJSON
	if err := decodeBody(c, s.maxBody, &req, false); err != nil {
		return err
	}
	sem, _, err := s.svc.PutSemaphore(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), req.input())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, SemaphoreResponse{Semaphore: semaphoreJSON(sem, nil)})
}

// input converts the wire config to the service's input.
func (r SemaphoreConfigJSON) input() semaphore.ConfigInput {
	in := semaphore.ConfigInput{
		MaxValue:        r.MaxValue,
		MaxValueScope:   r.MaxValueScope,
		MaxAttempts:     r.MaxAttempts,
		OnSessionLost:   r.OnSessionLost,
		OnDeliveryError: r.OnDeliveryError,
		Routes:          r.Routes,
		Mapping:         r.Mapping,
		Rate:            r.Rate,
		Retention:       r.Retention,
		Retry:           r.Retry,
	}
	if r.LeaseTimeout != nil {
		d := time.Duration(*r.LeaseTimeout)
		in.LeaseTimeout = &d
	}
	return in
}

func (s *Server) getSemaphore(c echo.Context) error {
	sem, st, err := s.svc.GetSemaphore(c.Request().Context(), callerKey(c).Tenant, c.Param("name"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, SemaphoreResponse{Semaphore: semaphoreJSON(sem, &st)})
}

func (s *Server) listSemaphores(c echo.Context) error {
	limit, err := queryLimit(c)
	if err != nil {
		return err
	}
	withState, err := queryBool(c, "state")
	if err != nil {
		return err
	}
	ctx, tenant := c.Request().Context(), callerKey(c).Tenant
	sems, next, err := s.svc.ListSemaphores(ctx, tenant, c.QueryParam("cursor"), limit)
	if err != nil {
		return err
	}
	out := SemaphoreListResponse{Semaphores: make([]SemaphoreJSON, 0, len(sems)), NextCursor: next}
	for _, sem := range sems {
		if !withState {
			out.Semaphores = append(out.Semaphores, semaphoreJSON(sem, nil))
			continue
		}
		st, err := s.svc.State(ctx, tenant, sem.Name)
		if errors.Is(err, store.ErrSemaphoreNotFound) {
			continue // deleted since the page was read
		}
		if err != nil {
			return err
		}
		out.Semaphores = append(out.Semaphores, semaphoreJSON(sem, &st))
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) deleteSemaphore(c echo.Context) error {
	ctx, tenant, name := c.Request().Context(), callerKey(c).Tenant, c.Param("name")
	sem, _, err := s.svc.GetSemaphore(ctx, tenant, name)
	if err != nil {
		return err
	}
	if err := s.svc.DeleteSemaphore(ctx, tenant, name); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, SemaphoreResponse{Semaphore: semaphoreJSON(sem, nil)})
}

func (s *Server) suspend(suspended bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := decodeBody(c, s.maxBody, &struct{}{}, true); err != nil {
			return err
		}
		sem, err := s.svc.SetSuspended(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), suspended)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, SemaphoreResponse{Semaphore: semaphoreJSON(sem, nil)})
	}
}

// ---- sync leases ----

func (s *Server) acquire(c echo.Context) error {
	var req AcquireRequest
	if err := decodeBody(c, s.maxBody, &req, true); err != nil {
		return err
	}
	l, err := s.svc.Acquire(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), req.input())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, LeaseResponse{Lease: leaseJSON(l)})
}

func (r AcquireRequest) input() semaphore.AcquireInput {
	return semaphore.AcquireInput{
		Channel:        r.Channel,
		Weight:         r.Weight,
		TTL:            (*time.Duration)(r.TTL),
		Wait:           (*time.Duration)(r.Wait),
		IdempotencyKey: r.IdempotencyKey,
	}
}

func (s *Server) extend(c echo.Context) error {
	var req ExtendRequest
	if err := decodeBody(c, s.maxBody, &req, false); err != nil {
		return err
	}
	if req.TTL == nil {
		return &semaphore.ValidationError{Code: CodeInvalidRequest, Field: "ttl", Message: "ttl is required"}
	}
	l, err := s.svc.Extend(c.Request().Context(), callerKey(c).Tenant, c.Param("id"), time.Duration(*req.TTL))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, LeaseResponse{Lease: leaseJSON(l)})
}

func (s *Server) release(c echo.Context) error {
	if err := decodeBody(c, s.maxBody, &struct{}{}, true); err != nil {
		return err
	}
	l, err := s.svc.Release(c.Request().Context(), callerKey(c).Tenant, c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, LeaseResponse{Lease: leaseJSON(l)})
}

// ---- tenants ----

func (s *Server) createTenant(c echo.Context) error {
	var req TenantRequest
	if err := decodeBody(c, s.maxBody, &req, false); err != nil {
		return err
	}
	t, k, secret, err := s.svc.CreateTenant(c.Request().Context(), callerKey(c), req.Name)
	if err != nil {
		return err
	}
	key := keyJSON(k)
	key.Secret = secret
	return c.JSON(http.StatusCreated, TenantCreatedResponse{Tenant: tenantJSON(t), Key: key})
}

func (s *Server) listTenants(c echo.Context) error {
	ts, err := s.svc.ListTenants(c.Request().Context(), callerKey(c))
	if err != nil {
		return err
	}
	out := TenantListResponse{Tenants: make([]TenantJSON, 0, len(ts))}
	for _, t := range ts {
		out.Tenants = append(out.Tenants, tenantJSON(t))
	}
	return c.JSON(http.StatusOK, out)
}

// ---- keys ----

func (s *Server) createKey(c echo.Context) error {
	var req KeyRequest
	if err := decodeBody(c, s.maxBody, &req, false); err != nil {
		return err
	}
	k, secret, err := s.svc.CreateKey(c.Request().Context(), callerKey(c), store.Role(req.Role), req.Name)
	if err != nil {
		return err
	}
	key := keyJSON(k)
	key.Secret = secret
	return c.JSON(http.StatusCreated, KeyResponse{Key: key})
}

// whoami answers the caller's own key, for any role: a client (the
// console) learns what it may show.
func (s *Server) whoami(c echo.Context) error {
	return c.JSON(http.StatusOK, KeyResponse{Key: keyJSON(callerKey(c))})
}

func (s *Server) listKeys(c echo.Context) error {
	ks, err := s.svc.ListKeys(c.Request().Context(), callerKey(c))
	if err != nil {
		return err
	}
	out := KeyListResponse{Keys: make([]KeyJSON, 0, len(ks))}
	for _, k := range ks {
		out.Keys = append(out.Keys, keyJSON(k))
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) deleteKey(c echo.Context) error {
	k, err := s.svc.DeleteKey(c.Request().Context(), callerKey(c), c.Param("id"))
	if err != nil {
		return err
	}
	if s.hub != nil {
		// Sessions opened with it close now on every instance (README "Guarantees").
		if err := s.hub.RevokeKey(c.Request().Context(), k.Tenant, k.ID); err != nil {
			s.log.Warn("announcing a key revocation failed; instances close its sessions within a heartbeat", "err", err)
		}
	}
	return c.JSON(http.StatusOK, KeyResponse{Key: keyJSON(k)})
}

// ---- other ----

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, HealthResponse{Status: "ok"})
}

// readyzTimeout bounds the store ping of /readyz.
const readyzTimeout = 2 * time.Second

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), readyzTimeout)
	defer cancel()
	if err := s.svc.Ping(ctx); err != nil {
		s.log.Warn("readyz: store unreachable", "err", err)
		return errorf(CodeStoreUnavailable, "the store is unreachable")
	}
	return c.JSON(http.StatusOK, HealthResponse{Status: "ok"})
}

func (s *Server) openapi(c echo.Context) error {
	return c.Blob(http.StatusOK, "application/yaml", OpenAPI)
}

// ---- conversions ----

func semaphoreJSON(sem store.Semaphore, st *store.SemaphoreState) SemaphoreJSON {
	routes, mapping := semaphore.ConfigExtra(sem.Config)
	out := SemaphoreJSON{
		Name:            sem.Name,
		MaxValue:        sem.Config.MaxValue,
		MaxValueScope:   sem.Config.MaxValueScope,
		LeaseTimeout:    Duration(sem.Config.LeaseTimeout),
		MaxAttempts:     sem.Config.MaxAttempts,
		OnSessionLost:   sem.Config.OnSessionLost,
		OnDeliveryError: sem.Config.OnDeliveryError,
		Routes:          routes,
		Mapping:         mapping,
		Retention:       RetentionJSON{Done: Duration(sem.Config.Retention.Done), Failed: Duration(sem.Config.Retention.Failed)},
		Retry:           retryJSON(sem.Config.Retry),
		Suspended:       sem.Suspended,
		CreatedAt:       sem.CreatedAt.UTC(),
		UpdatedAt:       sem.UpdatedAt.UTC(),
	}
	if r := sem.Config.Rate; r != nil {
		out.Rate = &RateJSON{Limit: r.Limit, Period: Duration(r.Period)}
	}
	if st != nil {
		js := &StateJSON{
			ChannelStateJSON: channelStateJSON(st.ChannelState),
			Channels:         make(map[string]ChannelStateJSON, len(st.Channels)),
		}
		for name, ch := range st.Channels {
			js.Channels[name] = channelStateJSON(ch)
		}
		out.State = js
	}
	return out
}

func channelStateJSON(ch store.ChannelState) ChannelStateJSON {
	out := ChannelStateJSON{
		InUse: ch.InUse, Available: ch.Available, Waiting: ch.Waiting, Queued: ch.Queued, Inflight: ch.Inflight,
		RateUsed: ch.RateUsed,
	}
	if !ch.RateNextAt.IsZero() {
		out.RateNextAt = new(ch.RateNextAt.UTC())
	}
	return out
}

func leaseJSON(l store.Lease) LeaseJSON { return wire.LeaseFromStore(l) }

func (s *Server) listLeases(c echo.Context) error {
	limit, err := queryLimit(c)
	if err != nil {
		return err
	}
	leases, next, err := s.svc.ListLeases(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), semaphore.ListLeasesInput{
		Channel: c.QueryParam("channel"), Cursor: c.QueryParam("cursor"), Limit: limit,
	})
	if err != nil {
		return err
	}
	out := LeaseListResponse{Leases: make([]LeaseJSON, 0, len(leases)), NextCursor: next}
	for _, l := range leases {
		out.Leases = append(out.Leases, leaseJSON(l))
	}
	return c.JSON(http.StatusOK, out)
}

func tenantJSON(t store.Tenant) TenantJSON {
	return TenantJSON{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt.UTC()}
}

func keyJSON(k store.APIKey) KeyJSON {
	return KeyJSON{ID: k.ID, Name: k.Name, Role: string(k.Role), Prefix: k.Prefix, Tenant: k.Tenant, CreatedAt: k.CreatedAt.UTC()}
}

// queryLimit reads ?limit= (absent: 0, the service's default). An explicit
// value must be 1 to semaphore.MaxListLimit.
// queryBool reads an optional boolean query parameter: "true" or "false",
// absent or empty meaning false.
func queryBool(c echo.Context, name string) (bool, error) {
	switch v := c.QueryParam(name); v {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	default:
		return false, &semaphore.ValidationError{Code: CodeInvalidRequest, Field: name,
			Message: fmt.Sprintf("%s must be true or false, got %q", name, shorten(v, 64))}
	}
}

func queryLimit(c echo.Context) (int, error) {
	v := c.QueryParam("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > semaphore.MaxListLimit {
		return 0, &semaphore.ValidationError{Code: CodeInvalidRequest, Field: "limit",
			Message: fmt.Sprintf("limit must be an integer between 1 and %d, got %q", semaphore.MaxListLimit, shorten(v, 64))}
	}
	return n, nil
}

// retryJSON shows a semaphore's retry backoff ("0s" both when none).
func retryJSON(r *store.RetryPolicy) RetryJSON {
	if r == nil {
		return RetryJSON{}
	}
	return RetryJSON{Backoff: Duration(r.Backoff), MaxBackoff: Duration(r.MaxBackoff)}
}
