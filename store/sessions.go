package store

import (
	"context"
	"errors"
	"time"
)

// This file is the storage contract of websocket sessions (SPEC §6) and of
// the nodes (semaphored instances) that hold them: presence, the subscriber
// registry the websocket route picks a session from, session loss and
// resume, and the node-to-node bus that carries a job from the instance
// that dispatched it to the instance that holds the chosen session.

// Errors of the session operations.
var (
	ErrSessionNotFound = errors.New("store: session not found") // unknown, expired (lost past grace) or wrong token
)

// Session is a websocket session. It outlives its connection for the
// grace period, so a client can resume it, through any instance.
type Session struct {
	Tenant          string
	ID              string
	Node            string        // instance holding the connection; "" while lost
	ResumeTokenHash string        // hex SHA-256 of the resume token
	LostAt          time.Time     // zero while connected
	GraceUntil      time.Time     // when lost: the session ends at this time (store clock)
	Grace           time.Duration // the grace period, also applied when its node dies
	KeyID           string        // the API key that opened it (its revocation closes the session)
	Leases          []string      // live sync leases bound to it (AcquireParams.Session); read only
	Jobs            []string      // jobs whose live lease is bound to it (TransitionParams.Bind); read only
	Semaphores      []string      // semaphores it may hold leases or jobs in (UseSemaphore, Subscribe)
	Subscriptions   []Subscription
	CreatedAt       time.Time
}

// Subscription is a session's subscription to a semaphore (and channel).
type Subscription struct {
	Semaphore string
	Channel   string // "" = every channel
	Prefetch  int    // at most this many unreleased jobs pushed at a time (≥1)
}

// Subscriber is one candidate session of the websocket route, with its load.
type Subscriber struct {
	Session  string
	Node     string // "" when Lost
	Prefetch int
	Inflight int // jobs pushed to it on this subscription and not yet released
	// Lost: the session is lost and within its grace period: it is not
	// connected, but may be resumed (the route waits for it rather than
	// failing while it is the only one).
	Lost bool
}

// SessionParams identifies a session.
type SessionParams struct {
	Tenant  string
	Session string
	// Node, for LoseSession only: when set, the session is marked lost only
	// while it is connected on this node (a resume through another node
	// that came first is left alone).
	Node string
}

// SubscribeParams adds (or replaces) a session's subscription.
type SubscribeParams struct {
	Tenant       string
	Session      string
	Node         string
	Subscription Subscription
}

// LostSession is a session whose grace period ran out: what it held, so the
// service applies onSessionLost to its jobs (and releases its leases).
type LostSession struct {
	Session Session
}

// Ticket is a single-use credential for browsers opening a websocket
// (SPEC §6): it stands for the API key that created it.
type Ticket struct {
	Hash      string // hex SHA-256 of the ticket secret
	Tenant    string
	KeyID     string
	Role      Role
	ExpiresAt time.Time
}

// NodeMessage is one envelope on the node bus (STYLE 12): versioned,
// addressed to one node or to all ("").
type NodeMessage struct {
	Version int    // 1
	From    string // sender node id
	To      string // node id, "" = every node
	Type    string // e.g. "deliver", "ack", "nack", "session_closed"
	Body    []byte // JSON of the message type
}

// SessionStore is the session half of the storage contract. Every method is
// atomic. Session ids and node ids are opaque strings made by the caller.
//
// What a session holds is bound to it by the operations that grant it, in
// the semaphore's own atomic operation: a sync lease by Acquire with
// AcquireParams.Session, a delivered job by TransitionJob ActDelivered with
// Bind; whatever ends the lease unbinds it. A Session's Leases and Jobs
// (read by GetSession, ResumeSession, EndSession and ExpiredSessions) are
// the live bindings in its Semaphores; PutSession ignores them.
type SessionStore interface {
	// Heartbeat records that node is alive until now+ttl (store clock).
	Heartbeat(ctx context.Context, node string, ttl time.Duration) error
	// Nodes lists the nodes whose heartbeat has not expired.
	Nodes(ctx context.Context) ([]string, error)

	// PutSession creates or replaces a session (connected on s.Node).
	PutSession(ctx context.Context, s Session) error
	// GetSession returns ErrSessionNotFound for an unknown or ended one.
	GetSession(ctx context.Context, p SessionParams) (Session, error)
	// UseSemaphore records that the session may hold leases in the
	// semaphore, before its first session-bound acquire there (Subscribe
	// records its semaphore itself). The session's end looks for what it
	// holds in these semaphores only.
	UseSemaphore(ctx context.Context, p SessionParams, semaphore string) error
	// Subscribe adds or replaces the session's subscription to a semaphore
	// and channel; Unsubscribe removes it.
	Subscribe(ctx context.Context, p SubscribeParams) error
	Unsubscribe(ctx context.Context, p SessionParams, sub Subscription) error
	// Subscribers lists the connected sessions subscribed to the semaphore
	// whose subscription matches the channel (its own channel or ""), with
	// their load, for the websocket route to pick the least loaded. Only
	// sessions on nodes with a live Heartbeat are listed, and, marked
	// Lost, the lost sessions still within their grace period (not those
	// connected on a dead node); a session has one entry, its
	// exact-channel subscription preferred over "".
	Subscribers(ctx context.Context, tenant, semaphore, channel string) ([]Subscriber, error)
	// LoseSession marks a connected session lost (its connection dropped):
	// it leaves the subscriber registry and ends at now+grace unless resumed.
	// With p.Node set, a session connected on another node is left as it is.
	LoseSession(ctx context.Context, p SessionParams, grace time.Duration) error
	// ResumeSession finds the lost (or still connected elsewhere) session
	// with this resume token, moves it to node, and returns it with
	// everything it held. ErrSessionNotFound after the grace period.
	ResumeSession(ctx context.Context, tenant, resumeTokenHash, node string) (Session, error)
	// EndSession removes a session at once (clean close) and returns what
	// it held.
	EndSession(ctx context.Context, p SessionParams) (Session, error)
	// ExpiredSessions removes and returns sessions whose grace ran out, at
	// most max per call. A session whose node's heartbeat expired (a crashed
	// instance) counts as lost since then: it can be resumed elsewhere
	// within its Grace, and is returned here after. Safe to call from every
	// instance: each session is returned once.
	ExpiredSessions(ctx context.Context, max int) ([]LostSession, error)

	// CreateTicket stores a single-use websocket ticket (by the hash of its
	// secret) until t.ExpiresAt; TakeTicket returns and deletes it
	// atomically (ErrSessionNotFound when unknown, used or expired).
	CreateTicket(ctx context.Context, t Ticket) error
	TakeTicket(ctx context.Context, hash string) (Ticket, error)

	// Publish sends an envelope on the node bus (at most once, best effort:
	// a message to a dead node is lost, callers time out and move on).
	Publish(ctx context.Context, m NodeMessage) error
	// SubscribeNode delivers the envelopes addressed to node (and to all)
	// to h, in order, until ctx ends. One subscription per node.
	SubscribeNode(ctx context.Context, node string, h func(NodeMessage)) error
}
