package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/semaphored/semaphored/hub"
	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

// ---- async jobs ----

func (s *Server) enqueue(c echo.Context) error {
	var req EnqueueRequest
	if err := decodeBody(c, s.maxBody, &req, false); err != nil {
		return err
	}
	if req.Jobs != nil {
		if req.Payload != nil || req.Channel != "" || req.IdempotencyKey != "" || req.Delay != nil || req.RunAt != nil {
			return errorf(CodeInvalidRequest, "send either payload, channel and idempotencyKey (one job) or jobs (a batch), not both")
		}
		in := make([]semaphore.EnqueueInput, len(req.Jobs))
		for i, raw := range req.Jobs {
			var j EnqueueJob
			if err := decodeJSON(raw, &j); err != nil {
				var ae *apiError
				if errors.As(err, &ae) {
					return &apiError{Code: ae.Code, Message: fmt.Sprintf("jobs[%d]: %s", i, ae.Message), Index: &i}
				}
				return err
			}
			in[i] = enqueueInput(j.Channel, j.Payload, j.IdempotencyKey, j.Delay, j.RunAt)
		}
		res, err := s.svc.EnqueueBatch(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), in)
		if err != nil {
			return err
		}
		out := EnqueueBatchResponse{Jobs: make([]JobJSON, len(res))}
		for i, r := range res {
			out.Jobs[i] = jobJSON(r.Job)
		}
		return c.JSON(http.StatusAccepted, out)
	}
	// a missing payload is refused by the service, as for every caller
	j, _, err := s.svc.Enqueue(c.Request().Context(), callerKey(c).Tenant, c.Param("name"),
		enqueueInput(req.Channel, req.Payload, req.IdempotencyKey, req.Delay, req.RunAt))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusAccepted, JobResponse{Job: jobJSON(j)})
}

func (s *Server) getJob(c echo.Context) error {
	j, err := s.svc.GetJob(c.Request().Context(), callerKey(c).Tenant, c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, JobResponse{Job: jobJSON(j)})
}

func (s *Server) listJobs(c echo.Context) error {
	limit, err := queryLimit(c)
	if err != nil {
		return err
	}
	jobs, next, err := s.svc.ListJobs(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), semaphore.ListJobsInput{
		Status: c.QueryParam("status"), Channel: c.QueryParam("channel"), Cursor: c.QueryParam("cursor"), Limit: limit,
	})
	if err != nil {
		return err
	}
	out := JobListResponse{Jobs: make([]JobJSON, 0, len(jobs)), NextCursor: next}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, jobJSON(j))
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) purgeJobs(c echo.Context) error {
	status := c.QueryParam("status")
	if status == "" {
		return errorf(CodeInvalidRequest, "status is required (scheduled, done, error, timeout or cancelled)")
	}
	n, err := s.svc.PurgeJobs(c.Request().Context(), callerKey(c).Tenant, c.Param("name"), semaphore.PurgeJobsInput{
		Status: status, Channel: c.QueryParam("channel"),
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, PurgeResponse{Purged: n})
}

// jobAction serves release, cancel and requeue (body, if any, must be {}).
func (s *Server) jobAction(act func(svc *semaphore.Service, ctx context.Context, tenant, id string) (store.Job, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := decodeBody(c, s.maxBody, &struct{}{}, true); err != nil {
			return err
		}
		tenant, id := callerKey(c).Tenant, c.Param("id")
		var held []hub.Held
		if s.hub != nil {
			held = s.hub.Holding(tenant, id)
		}
		j, err := act(s.svc, c.Request().Context(), tenant, id)
		if err != nil {
			return err
		}
		if s.hub != nil && j.Status != store.JobInflight {
			// A session of this instance that held the job lets it go at
			// once (its prefetch frees); one elsewhere within a heartbeat.
			s.hub.JobLeft(held)
		}
		return c.JSON(http.StatusOK, JobResponse{Job: jobJSON(j)})
	}
}

func jobJSON(j store.Job) JobJSON {
	out := JobJSON{
		ID: j.ID, Semaphore: j.Semaphore, Channel: j.Channel, Payload: json.RawMessage(j.Payload),
		Status: string(j.Status), Attempts: j.Attempts,
		CreatedAt: j.CreatedAt.UTC(), UpdatedAt: j.UpdatedAt.UTC(),
	}
	if len(out.Payload) == 0 {
		out.Payload = json.RawMessage("null")
	}
	if j.Lease != nil && j.Status == store.JobInflight {
		l := leaseJSON(*j.Lease)
		out.Lease = &l
	}
	if j.Route != "" {
		r := j.Route
		out.Route = &r
	}
	if j.Error != "" {
		e := j.Error
		out.Error = &e
	}
	if j.Parent != nil {
		out.Parent = &JobRefJSON{ID: j.Parent.ID, Semaphore: j.Parent.Semaphore, Hold: j.Parent.Hold}
	}
	if j.Child != nil {
		out.Child = &JobRefJSON{ID: j.Child.ID, Semaphore: j.Child.Semaphore, Hold: j.Child.Hold}
	}
	if !j.FinishedAt.IsZero() {
		f := j.FinishedAt.UTC()
		out.FinishedAt = &f
	}
	if !j.RunAt.IsZero() && j.Status == store.JobScheduled {
		r := j.RunAt.UTC()
		out.RunAt = &r
	}
	return out
}

// enqueueInput is the service's input for one job of any enqueue call.
func enqueueInput(channel string, payload json.RawMessage, key string, delay *Duration, runAt *time.Time) semaphore.EnqueueInput {
	in := semaphore.EnqueueInput{Channel: channel, Payload: payload, IdempotencyKey: key, RunAt: runAt}
	if delay != nil {
		d := time.Duration(*delay)
		in.Delay = &d
	}
	return in
}
