package api

import (
	"encoding/json"
	"time"
)

// Wire format of the websocket protocol (README "Websocket workers"), described in
// api/openapi.yaml as WsClientFrame and WsServerFrame. Client frames are
// decoded strictly, one struct per type: an unknown field or a wrong type
// is an error frame invalid_json. Each has the type and the optional id
// its reply echoes.

// TicketResponse is 201 of POST /v1/ws/tickets.
type TicketResponse struct {
	Ticket    string    `json:"ticket"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// WsResumeFrame: {"type":"resume","token"}.
type WsResumeFrame struct {
	Type  string `json:"type"`
	ID    string `json:"id,omitempty"`
	Token string `json:"token"`
}

// WsPingFrame: {"type":"ping"}.
type WsPingFrame struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
}

// WsAcquireFrame: {"type":"acquire","semaphore","channel?","weight?","ttl?","wait?"}.
type WsAcquireFrame struct {
	Type      string    `json:"type"`
	ID        string    `json:"id,omitempty"`
	Semaphore string    `json:"semaphore"`
	Channel   string    `json:"channel,omitempty"`
	Weight    *int64    `json:"weight,omitempty"`
	TTL       *Duration `json:"ttl,omitempty"`
	Wait      *Duration `json:"wait,omitempty"`
}

// WsExtendFrame: {"type":"extend","lease","ttl"}.
type WsExtendFrame struct {
	Type  string    `json:"type"`
	ID    string    `json:"id,omitempty"`
	Lease string    `json:"lease"`
	TTL   *Duration `json:"ttl"`
}

// WsReleaseFrame: {"type":"release","lease"} or {"type":"release","job"}.
type WsReleaseFrame struct {
	Type  string `json:"type"`
	ID    string `json:"id,omitempty"`
	Lease string `json:"lease,omitempty"`
	Job   string `json:"job,omitempty"`
}

// WsFailFrame: {"type":"fail","job","error?","retry?"}: the worker gives up
// this attempt now; retry (default true) lets the job run again while
// attempts remain.
type WsFailFrame struct {
	Type  string `json:"type"`
	ID    string `json:"id,omitempty"`
	Job   string `json:"job"`
	Error string `json:"error,omitempty"`
	Retry *bool  `json:"retry,omitempty"`
}

// WsSubscribeFrame: {"type":"subscribe","semaphore","channel?","prefetch?"};
// no channel: every channel of the semaphore.
type WsSubscribeFrame struct {
	Type      string `json:"type"`
	ID        string `json:"id,omitempty"`
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel,omitempty"`
	Prefetch  *int   `json:"prefetch,omitempty"`
}

// WsUnsubscribeFrame: {"type":"unsubscribe","semaphore","channel?"}.
type WsUnsubscribeFrame struct {
	Type      string `json:"type"`
	ID        string `json:"id,omitempty"`
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel,omitempty"`
}

// WsAckFrame: {"type":"ack","job"}.
type WsAckFrame struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
	Job  string `json:"job"`
}

// WsEnqueueFrame: {"type":"enqueue","semaphore","channel?","payload","idempotencyKey?"}.
type WsEnqueueFrame struct {
	Type           string          `json:"type"`
	ID             string          `json:"id,omitempty"`
	Semaphore      string          `json:"semaphore"`
	Channel        string          `json:"channel,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotencyKey,omitempty"`
	Delay          *Duration       `json:"delay,omitempty"`
	RunAt          *time.Time      `json:"runAt,omitempty"`
}

// WsSubscriptionJSON is a subscription in a resumed frame; channel absent:
// every channel.
type WsSubscriptionJSON struct {
	Semaphore string `json:"semaphore"`
	Channel   string `json:"channel,omitempty"`
	Prefetch  int    `json:"prefetch"`
}

// WsErrorJSON is the error of a rejected frame: an HTTP error's {code,
// message}, with retryAfter (whole seconds, rounded up, at least 1) when an
// acquire without wait was refused for the semaphore's rate, as the HTTP
// API's Retry-After header says.
type WsErrorJSON struct {
	Code       string `json:"code"`
	Message    string `json:"message"`
	RetryAfter int64  `json:"retryAfter,omitempty"`
}

// WsFrame is every frame the server sends but "job" (wire.JobFrame):
// welcome, resumed, pong, acquired, rejected, extended, released,
// subscribed, unsubscribed, enqueued, error. A reply carries the request's
// id.
type WsFrame struct {
	Type          string               `json:"type"`
	ID            string               `json:"id,omitempty"`
	Session       string               `json:"session,omitempty"`     // welcome, resumed
	ResumeToken   string               `json:"resumeToken,omitempty"` // welcome
	Heartbeat     *Duration            `json:"heartbeat,omitempty"`   // welcome, resumed
	Protocol      int                  `json:"protocol,omitempty"`    // welcome
	Leases        []string             `json:"leases,omitempty"`      // resumed: ids of the session's leases
	Jobs          []string             `json:"jobs,omitempty"`        // resumed: ids of its unreleased jobs
	Subscriptions []WsSubscriptionJSON `json:"subscriptions,omitempty"`
	Semaphore     string               `json:"semaphore,omitempty"` // subscribed, unsubscribed
	Channel       string               `json:"channel,omitempty"`
	Prefetch      int                  `json:"prefetch,omitempty"`
	Lease         *LeaseJSON           `json:"lease,omitempty"` // acquired, extended, released
	Job           *JobJSON             `json:"job,omitempty"`   // enqueued, released
	Error         *WsErrorJSON         `json:"error,omitempty"` // rejected
	Code          string               `json:"code,omitempty"`  // error
	Message       string               `json:"message,omitempty"`
	// closed (SSE and long-poll; the hub writes it): the close code a
	// websocket would get, and why.
	CloseCode int    `json:"closeCode,omitempty"`
	Reason    string `json:"reason,omitempty"`
}
