package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

// Error replies of the scripts (redis.error_reply), mapped in translate.
var scriptErrors = map[string]error{
	"SD_SEMAPHORE_NOT_FOUND": store.ErrSemaphoreNotFound,
	"SD_LEASE_NOT_FOUND":     store.ErrLeaseNotFound,
	"SD_WEIGHT_TOO_LARGE":    store.ErrWeightTooLarge,
	"SD_JOB_NOT_FOUND":       store.ErrJobNotFound,
	"SD_INVALID_STATE":       store.ErrInvalidState,
	"SD_QUEUE_FULL":          store.ErrQueueFull,
	"SD_STALE_LEASE":         store.ErrStaleLease,
}

// translate maps a driver error to the store's errors; it is the only place
// go-redis errors are interpreted. notFound is returned for redis.Nil (a
// missing key), or nil when the caller handles that itself.
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
	msg := err.Error()
	// Redis 7 may prefix a script's error_reply with "ERR ".
	if se, ok := scriptErrors[firstWord(strings.TrimPrefix(msg, "ERR "))]; ok {
		return se
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		switch firstWord(msg) {
		case "LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY", "BUSY", "NOREPLICAS":
			return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
		}
		// A reply we did not expect (a script bug, a wrong server): not a
		// reachability problem.
		return fmt.Errorf("redisstore: %w", err)
	}
	// Anything else (net.Error, io.EOF, redis.ErrClosed, pool timeouts)
	// is a failure to talk to Redis.
	return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
}

func firstWord(s string) string {
	if i := strings.IndexByte(s, ' '); i >= 0 {
		return s[:i]
	}
	return s
}
