package sdk

import (
	"encoding/json"
	"time"
)

// Wire format of the websocket (mirrors api/ws_wire.go).

type acquireFrame struct {
	Type      string    `json:"type"`
	Semaphore string    `json:"semaphore"`
	Channel   string    `json:"channel,omitempty"`
	Weight    *int64    `json:"weight,omitempty"`
	TTL       *duration `json:"ttl,omitempty"`
	Wait      *duration `json:"wait,omitempty"`
}

type extendFrame struct {
	Type  string   `json:"type"`
	Lease string   `json:"lease"`
	TTL   duration `json:"ttl"`
}

type subscribeFrame struct {
	Type      string `json:"type"`
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel,omitempty"`
	Prefetch  int    `json:"prefetch"`
}

type enqueueFrame struct {
	Type           string          `json:"type"`
	Semaphore      string          `json:"semaphore"`
	Channel        string          `json:"channel,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotencyKey,omitempty"`
	Delay          *duration       `json:"delay,omitempty"`
	RunAt          *time.Time      `json:"runAt,omitempty"`
}

type subscriptionWire struct {
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel"`
	Prefetch  int    `json:"prefetch"`
}

// inFrame is every frame the server sends.
type inFrame struct {
	Type          string             `json:"type"`
	ID            string             `json:"id"`
	Session       string             `json:"session"`
	ResumeToken   string             `json:"resumeToken"`
	Heartbeat     *duration          `json:"heartbeat"`
	Protocol      int                `json:"protocol"`
	Leases        []string           `json:"leases"`
	Jobs          []string           `json:"jobs"`
	Subscriptions []subscriptionWire `json:"subscriptions"`
	Lease         *leaseWire         `json:"lease"`
	Job           *jobWire           `json:"job"`
	Error         *struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		RetryAfter int64  `json:"retryAfter"` // seconds; a refusal for the rate
	} `json:"error"`
	Code    string `json:"code"`
	Message string `json:"message"`
}
