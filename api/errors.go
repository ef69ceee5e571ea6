package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/semaphored/semaphored/semaphore"
	"github.com/semaphored/semaphored/store"
)

// storeErrors maps the store's sentinel errors to wire codes.
var storeErrors = []struct {
	err     error
	code    string
	message string
}{
	{store.ErrSemaphoreNotFound, CodeSemaphoreNotFound, "semaphore not found"},
	{store.ErrLeaseNotFound, CodeLeaseNotFound, "lease not found (unknown, released or expired)"},
	{store.ErrNoPermit, CodeNoPermit, "no permit available within the wait"},
	{store.ErrKeyNotFound, CodeKeyNotFound, "key not found"},
	{store.ErrTenantExists, CodeTenantExists, "a tenant with this name exists"},
	{store.ErrTenantNotFound, CodeNotFound, "tenant not found"},
	{store.ErrWeightTooLarge, CodeWeightTooLarge, "weight exceeds the semaphore's maxValue (or its rate limit)"},
	{store.ErrJobNotFound, CodeJobNotFound, "job not found"},
	{store.ErrInvalidState, CodeInvalidState, "the job's status does not allow this transition"},
	{store.ErrStaleLease, CodeInvalidState, "the job no longer holds that lease"},
	{store.ErrQueueFull, CodeQueueFull, "the semaphore's queue is full"},
	{store.ErrLayoutNewer, CodeStoreUnavailable, "this semaphore's data was written by a newer release of semaphored, which this instance cannot read: upgrade it"},
	{store.ErrUnavailable, CodeStoreUnavailable, "the store is unavailable"},
	{semaphore.ErrForbidden, CodeForbidden, "this key's role may not do this"},
}

// classify maps any error a handler returns to its status, wire code and
// message. It is the one place errors are translated for clients.
func classify(err error) (status int, code, message string) {
	var (
		ae  *apiError
		ve  *semaphore.ValidationError
		re  *semaphore.RateLimitedError
		he  *echo.HTTPError
		mbe *http.MaxBytesError
	)
	switch {
	case errors.As(err, &ae):
		code, message = ae.Code, ae.Message
	case errors.As(err, &ve):
		code, message = ve.Code, ve.Message
	case errors.As(err, &re):
		code, message = CodeNoPermit, re.Error() // names the rate and the wait
	case errors.As(err, &mbe):
		code, message = CodePayloadTooLarge, "request body is larger than "+strconv.FormatInt(mbe.Limit, 10)+" bytes"
	case errors.As(err, &he):
		switch he.Code {
		case http.StatusNotFound:
			code, message = CodeNotFound, "no such route"
		case http.StatusMethodNotAllowed:
			code, message = CodeMethodNotAllowed, "method not allowed on this route"
		case http.StatusRequestEntityTooLarge:
			code, message = CodePayloadTooLarge, "request body too large"
		case http.StatusUnsupportedMediaType:
			code, message = CodeUnsupportedMedia, "send application/json"
		case http.StatusUnauthorized:
			code, message = CodeUnauthorized, "missing or unknown API key"
		case http.StatusForbidden:
			code, message = CodeForbidden, "this key's role may not do this"
		case http.StatusTooManyRequests:
			code, message = CodeRateLimited, "too many requests"
		case http.StatusServiceUnavailable:
			code, message = CodeStoreUnavailable, "service unavailable"
		case http.StatusBadRequest:
			code, message = CodeInvalidRequest, "bad request"
		default:
			code, message = CodeInternal, "internal error"
		}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		code, message = CodeStoreUnavailable, "the request was cancelled or timed out"
	default:
		for _, m := range storeErrors {
			if errors.Is(err, m.err) {
				code, message = m.code, m.message
				break
			}
		}
		if code == "" {
			code, message = CodeInternal, "internal error"
		}
	}
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusBadRequest // a validation code unknown to the table
	}
	return status, code, message
}

// errorHandler renders every error, echo's own included (404, 405), as
// {"error": {"code", "message"}}.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, code, message := classify(err)
	if status >= 500 {
		s.log.LogAttrs(c.Request().Context(), slog.LevelError, "request failed",
			slog.String("method", c.Request().Method), slog.String("route", c.Path()),
			slog.Int("status", status), slog.Any("err", err))
	}
	if secs := retryAfter(err); secs > 0 {
		c.Response().Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	body := ErrorBody{Error: ErrorDetail{Code: code, Message: message}}
	if be := (*semaphore.BatchItemError)(nil); errors.As(err, &be) {
		body.Error.Index = &be.Index
	} else if ae := (*apiError)(nil); errors.As(err, &ae) {
		body.Error.Index = ae.Index
	}
	if c.Request().Method == http.MethodHead {
		err = c.NoContent(status)
	} else {
		err = c.JSON(status, body)
	}
	if err != nil {
		s.log.Debug("writing an error response", "err", err)
	}
}

// retryAfter is the Retry-After of an error, in whole seconds rounded up
// (at least 1), or 0 when it has none: an acquire refused for the
// semaphore's rate. (The per-key rate limit sets its header itself.)
func retryAfter(err error) int64 {
	var re *semaphore.RateLimitedError
	if errors.As(err, &re) {
		return re.RetryAfterSeconds()
	}
	return 0
}
