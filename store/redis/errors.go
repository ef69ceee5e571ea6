package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

// This file is the one place where go-redis errors are interpreted, with
// go-redis' own helpers (redis.HasErrorPrefix, redis.IsLoadingError, ...),
// never by matching error text elsewhere.

// translate maps a driver error to the store's errors. notFound is
// returned for redis.Nil (a missing key), or nil when the caller handles
// that itself.
func translate(err error, notFound error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.Nil):
		if notFound != nil {
			return notFound
		}
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	// A script's redis.error_reply carrying one of our codes.
	for code, se := range scriptErrors {
		if redis.HasErrorPrefix(err, code) {
			return se
		}
	}
	if isUnavailable(err) {
		return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		// A reply we did not expect (a script bug, a wrong server): not a
		// reachability problem.
		return fmt.Errorf("redisstore: %w", err)
	}
	// Anything else (net.Error, io.EOF, redis.ErrClosed, pool timeouts)
	// is a failure to talk to Redis.
	return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
}

// isUnavailable reports a Redis error reply that says the server cannot
// serve now (loading, failing over, busy), as opposed to a wrong request.
func isUnavailable(err error) bool {
	return redis.IsLoadingError(err) || redis.IsClusterDownError(err) || redis.IsTryAgainError(err) ||
		redis.IsMasterDownError(err) || redis.IsReadOnlyError(err) || redis.IsNoReplicasError(err) ||
		redis.IsMaxClientsError(err) || redis.HasErrorPrefix(err, "BUSY")
}

// codeError is the store error of an in-band status of a script reply
// (an error code "SD_...", see consts.go; lib_*.lua done), or nil for a
// status that is not an error code.
func codeError(status string) error {
	if err, ok := scriptErrors[status]; ok {
		return err
	}
	if strings.HasPrefix(status, "SD_") {
		return fmt.Errorf("redisstore: unknown error code %q in a script reply", status)
	}
	return nil
}

// isLayoutNewer reports a call refused because its semaphore's data was
// written by a newer release (layout.go).
func isLayoutNewer(err error) bool {
	return redis.HasErrorPrefix(err, codeLayoutNewer)
}

// isNoFunction reports that a function of the library is missing (FUNCTION
// FLUSH, a Redis restarted without persistence, a new cluster master).
func isNoFunction(err error) bool {
	return redis.HasErrorPrefix(err, "Function not found")
}

// isNoScript reports a NOSCRIPT reply (the script cache was flushed, e.g.
// by a restart), after which a pipelined EVALSHA is sent again as EVAL.
func isNoScript(err error) bool {
	return redis.HasErrorPrefix(err, "NOSCRIPT")
}
