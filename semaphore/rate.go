package semaphore

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/semaphored/semaphored/store"
)

// RateLimitedError is the error of an acquire without wait that found a
// free permit but no room in the semaphore's rate window (SPEC §4 rate).
// errors.Is(err, store.ErrNoPermit) holds, so it is a no_permit like any
// other; the API adds Retry-After (RetryAfterSeconds) and uses Error as
// the message, which names the rate as the cause:
//
//	rate limit of 100 per 1m0s reached: the next unit frees in 3.2s
type RateLimitedError struct {
	// Rate is the semaphore's rate when it refused (nil: not known).
	Rate *store.RateLimit
	// Channel is the acquire's channel when the rate applies per channel
	// (maxValueScope "channel"), else "".
	Channel string
	Weight  int64 // the weight asked for
	// NextAt is when enough units leave the window for Weight (the
	// store's clock); RetryAfter is how long until then (by the store's
	// clock too), at least a millisecond.
	NextAt     time.Time
	RetryAfter time.Duration

	err *store.RateLimitedError
}

func (e *RateLimitedError) Error() string {
	var b strings.Builder
	b.WriteString("rate limit")
	if e.Rate != nil {
		fmt.Fprintf(&b, " of %d per %s", e.Rate.Limit, e.Rate.Period)
	}
	b.WriteString(" reached")
	if e.Channel != "" {
		fmt.Fprintf(&b, " in channel %q", e.Channel)
	}
	if e.Weight > 1 {
		fmt.Fprintf(&b, ": room for weight %d frees in %s", e.Weight, roundWait(e.RetryAfter))
	} else {
		fmt.Fprintf(&b, ": the next unit frees in %s", roundWait(e.RetryAfter))
	}
	return b.String()
}

// Unwrap returns the store's error, through which errors.Is(err,
// store.ErrNoPermit) holds.
func (e *RateLimitedError) Unwrap() error { return e.err }

// RetryAfterSeconds is RetryAfter in whole seconds, rounded up, at least 1:
// the value of a Retry-After header.
func (e *RateLimitedError) RetryAfterSeconds() int64 {
	return max(1, int64(math.Ceil(e.RetryAfter.Seconds())))
}

// roundWait shows a wait the way a person reads it: tenths of a second
// from a second up ("3.2s"), milliseconds below ("250ms").
func roundWait(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return max(d.Round(time.Millisecond), time.Millisecond)
}

// rateLimited turns the store's refusal of acquire p for the rate into a
// *RateLimitedError; any other error is returned as is. The store's error
// carries the rate, the channel and the wait, read in the refusal's own
// atomic operation, by the store's clock.
func (s *Service) rateLimited(p store.AcquireParams, err error) error {
	var se *store.RateLimitedError
	if !errors.As(err, &se) {
		return err
	}
	e := &RateLimitedError{Weight: p.Weight, Channel: se.Channel, NextAt: se.NextAt, err: se}
	if se.Limit > 0 {
		e.Rate = &store.RateLimit{Limit: se.Limit, Period: se.Period}
	}
	e.RetryAfter = max(se.Wait, time.Millisecond)
	s.metrics.rateLimited.Inc()
	return e
}
