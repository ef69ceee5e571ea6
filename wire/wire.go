// Package wire holds the JSON shapes that more than one transport sends:
// a lease as the HTTP API returns it, in webhook bodies and in websocket
// frames, and a job as a websocket "job" frame pushes it. One type each,
// so the three never drift apart (api/openapi.yaml describes them).
package wire

import (
	"encoding/json"
	"time"

	"github.com/semaphored/semaphored/store"
)

// Lease is a lease as the API returns it.
type Lease struct {
	ID           string    `json:"id"`
	Semaphore    string    `json:"semaphore"`
	Channel      string    `json:"channel"`
	Weight       int64     `json:"weight"`
	FencingToken int64     `json:"fencingToken"`
	AcquiredAt   time.Time `json:"acquiredAt"`
	ExpiresAt    time.Time `json:"expiresAt"`
}

// LeaseFromStore returns the wire form of a stored lease, times in UTC.
func LeaseFromStore(l store.Lease) Lease {
	return Lease{
		ID: l.ID, Semaphore: l.Semaphore, Channel: l.Channel, Weight: l.Weight,
		FencingToken: l.FencingToken, AcquiredAt: l.AcquiredAt.UTC(), ExpiresAt: l.ExpiresAt.UTC(),
	}
}

// JobFrame is the job of a websocket "job" frame, in the shape of the
// API's Job: the job with its lease and the payload to work on (the
// mapping's, when one replaced it).
type JobFrame struct {
	ID         string          `json:"id"`
	Semaphore  string          `json:"semaphore"`
	Channel    string          `json:"channel"`
	Payload    json.RawMessage `json:"payload"`
	Status     string          `json:"status"`
	Attempts   int             `json:"attempts"`
	Lease      Lease           `json:"lease"`
	Route      string          `json:"route"`
	Error      *string         `json:"error"`  // null
	Parent     *JobRef         `json:"parent"` // set on a child job of a semaphore route
	Child      *JobRef         `json:"child"`  // null
	CreatedAt  time.Time       `json:"createdAt"`
	UpdatedAt  time.Time       `json:"updatedAt"`
	FinishedAt *time.Time      `json:"finishedAt"` // null
	RunAt      *time.Time      `json:"runAt"`      // null: a pushed job is inflight
}

// JobRef points at a related job.
type JobRef struct {
	ID        string `json:"id"`
	Semaphore string `json:"semaphore"`
	Hold      bool   `json:"hold"`
}
