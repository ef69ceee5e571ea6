// Package delivery sends jobs to their routes' targets. WebhookSender is the
// https route (README "The webhook"): a signed POST per Standard Webhooks,
// retried with backoff, to targets checked against private addresses at
// connect time.
package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"code.dny.dev/ssrf"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
	"github.com/semaphored/semaphored/wire"
)

// Defaults of WebhookConfig.
const (
	DefaultMaxResponseBytes = 64 << 10
	DefaultBackoffBase      = 500 * time.Millisecond
	DefaultBackoffMax       = 30 * time.Second

	// UserAgent is sent with every webhook.
	UserAgent = "semaphored-webhook/1"
)

// WebhookConfig configures a WebhookSender. The zero value is the safe
// production setup.
type WebhookConfig struct {
	// AllowPrivate lets webhooks reach loopback, private, link-local and
	// other special addresses, and plain http:// URLs
	// (--webhook-allow-private). Off: such targets are refused when the
	// connection is made, after DNS resolution, so DNS rebinding cannot
	// get around it.
	AllowPrivate bool
	// Logger receives one record per failed attempt (nil: discard).
	Logger *slog.Logger
	// MaxResponseBytes is how much of a response body is read (and
	// discarded) before the connection is dropped (0: 64 KiB).
	MaxResponseBytes int64
	// Client replaces the safe client; for tests only. Redirects are never
	// followed, whatever its CheckRedirect.
	Client *http.Client
	// BackoffBase and BackoffMax shape the wait before retry n (n ≥ 1): a
	// uniformly random duration in [0, min(BackoffMax, BackoffBase·2^(n-1))]
	// ("full jitter"). A Retry-After header replaces it, capped at
	// BackoffMax. Zero: 500ms and 30s.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Sleep waits d or until ctx ends (nil: a timer). Tests inject it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// WebhookSender delivers jobs to https routes. It is safe for concurrent
// use and has no goroutine of its own; Close drops its idle connections.
type WebhookSender struct {
	cfg       WebhookConfig
	log       *slog.Logger
	client    *http.Client
	transport *http.Transport // nil with an injected Client
}

// NewWebhookSender returns a sender configured by cfg.
func NewWebhookSender(cfg WebhookConfig) (*WebhookSender, error) {
	switch {
	case cfg.MaxResponseBytes < 0:
		return nil, fmt.Errorf("delivery: MaxResponseBytes must not be negative, got %d", cfg.MaxResponseBytes)
	case cfg.BackoffBase < 0 || cfg.BackoffMax < 0:
		return nil, fmt.Errorf("delivery: BackoffBase and BackoffMax must not be negative")
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.BackoffBase == 0 {
		cfg.BackoffBase = DefaultBackoffBase
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffBase {
		return nil, fmt.Errorf("delivery: BackoffMax %s is below BackoffBase %s", cfg.BackoffMax, cfg.BackoffBase)
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	s := &WebhookSender{cfg: cfg, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Client != nil {
		c := *cfg.Client
		c.CheckRedirect = noRedirect
		s.client = &c
	} else {
		s.transport = newSafeTransport(cfg.AllowPrivate)
		s.client = &http.Client{Transport: s.transport, CheckRedirect: noRedirect}
	}
	return s, nil
}

// Close closes the sender's idle connections. Sends may still run.
func (s *WebhookSender) Close() {
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	} else {
		s.client.CloseIdleConnections()
	}
}

// newSafeTransport is the production transport: no proxy from the
// environment, TLS 1.2 at least, bounded idle connections and, unless
// allowPrivate, the ssrf Guardian judging every address the dialer is about
// to connect to (after DNS resolution, so rebinding cannot get around it).
// Any port is allowed: the address is what matters.
func newSafeTransport(allowPrivate bool) *http.Transport {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		dialer.Control = ssrf.New(ssrf.WithAnyPort()).Safe
	}
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    10 * time.Second,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    256, // one host may take maxValue deliveries at once
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Deliver sends a dispatched job to an https route (Send with the job's
// message): it implements the dispatcher's semaphore.WebhookRoute.
func (s *WebhookSender) Deliver(ctx context.Context, route routing.Route, job store.Job, payload json.RawMessage) error {
	if job.Lease == nil {
		return errors.New("webhook: job without lease")
	}
	return s.Send(ctx, route, WebhookMessage{
		ID: job.ID, Semaphore: job.Semaphore, Channel: job.Channel, Attempt: job.Attempts,
		Lease: wire.LeaseFromStore(*job.Lease), Payload: payload,
	})
}

// WebhookMessage is one delivery of a job.
type WebhookMessage struct {
	ID        string // the job id: webhook-id, the same on every retry and redelivery
	Semaphore string
	Channel   string
	Attempt   int // the job's attempt (README "Life cycle"), not the HTTP retry
	Lease     wire.Lease
	Payload   json.RawMessage // nil: null
}

// webhookBody is the JSON body of a webhook (README "The webhook").
type webhookBody struct {
	ID        string          `json:"id"`
	Semaphore string          `json:"semaphore"`
	Channel   string          `json:"channel"`
	Attempt   int             `json:"attempt"`
	Lease     wire.Lease      `json:"lease"`
	Payload   json.RawMessage `json:"payload"`
}

// DeliveryError is an https route that failed: every attempt got a non-2xx
// status, timed out or could not connect, or the target was refused.
type DeliveryError struct {
	Attempts   int   // attempts made
	LastStatus int   // HTTP status of the last attempt; 0 when it got none
	Err        error // what went wrong on the last attempt
	// RetryAfter is the last answer's Retry-After (0: none): the job's
	// next attempt waits at least that long.
	RetryAfter time.Duration
}

// RetryAfterHint is RetryAfter (the dispatcher reads it through an
// interface, without importing this package).
func (e *DeliveryError) RetryAfterHint() time.Duration { return e.RetryAfter }

func (e *DeliveryError) Error() string {
	return fmt.Sprintf("webhook failed after %d attempt(s): %v", e.Attempts, e.Err)
}

func (e *DeliveryError) Unwrap() error { return e.Err }

// ErrRefusedAddress is wrapped by the error of a webhook whose target
// resolved to an address the sender may not connect to. Such a target is
// not retried.
var ErrRefusedAddress = errors.New("webhook target address refused")

// Send delivers msg to an https route: a POST of {id, semaphore, channel,
// attempt, lease, payload} signed per Standard Webhooks with route.Secret
// (webhook-id = msg.ID, a fresh webhook-timestamp and signature per
// attempt). A 2xx answer returns nil. Any other status (redirects are not
// followed), a timeout (route.Timeout per attempt, body read included) or a
// connection error is retried up to route.Attempts times with backoff,
// honouring Retry-After; then Send returns a *DeliveryError describing the
// last failure. A config problem (no secret, bad URL) or a refused target
// address is a *DeliveryError at once. When ctx ends Send returns at once
// with ctx's error (not a *DeliveryError: the route is not to blame).
func (s *WebhookSender) Send(ctx context.Context, route routing.Route, msg WebhookMessage) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	u, wh, err := s.checkRoute(route)
	if err != nil {
		return &DeliveryError{Err: err}
	}
	payload := msg.Payload
	if len(bytes.TrimSpace(payload)) == 0 {
		payload = json.RawMessage("null")
	}
	body, err := json.Marshal(webhookBody{ID: msg.ID, Semaphore: msg.Semaphore, Channel: msg.Channel, Attempt: msg.Attempt, Lease: msg.Lease, Payload: payload})
	if err != nil {
		return &DeliveryError{Err: fmt.Errorf("encoding the webhook body: %w", err)}
	}
	attempts := route.Attempts
	if attempts <= 0 {
		attempts = routing.DefaultAttempts
	}
	timeout := route.Timeout
	if timeout <= 0 {
		timeout = routing.DefaultTimeout
	}

	var last DeliveryError
	for n := 1; n <= attempts; n++ {
		status, retryAfter, err := s.attempt(ctx, u, wh, msg.ID, body, timeout)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		last = DeliveryError{Attempts: n, LastStatus: status, Err: err, RetryAfter: max(retryAfter, 0)}
		refused := errors.Is(err, ErrRefusedAddress)
		s.log.LogAttrs(ctx, slog.LevelWarn, "webhook attempt failed",
			slog.String("job", msg.ID), slog.String("host", u.Host), slog.Int("attempt", n),
			slog.Int("attempts", attempts), slog.Int("status", status), slog.String("error", err.Error()))
		if refused || n == attempts {
			break
		}
		wait := s.backoff(n)
		if retryAfter >= 0 {
			wait = min(retryAfter, s.cfg.BackoffMax)
		}
		if err := s.cfg.Sleep(ctx, wait); err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return err
		}
	}
	return &last
}

// checkRoute checks what Parse checked, again: the sender may run with a
// different AllowPrivate than the config was saved under.
func (s *WebhookSender) checkRoute(route routing.Route) (*url.URL, *standardwebhooks.Webhook, error) {
	if route.Type != routing.TypeHTTPS {
		return nil, nil, fmt.Errorf("route type %q is not https", route.Type)
	}
	u, err := url.Parse(route.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid webhook URL: %w", err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && s.cfg.AllowPrivate:
	case u.Scheme == "http":
		return nil, nil, fmt.Errorf("%w: http:// URLs need --webhook-allow-private", ErrRefusedAddress)
	default:
		return nil, nil, fmt.Errorf("webhook URL scheme %q is not https", u.Scheme)
	}
	if u.Host == "" {
		return nil, nil, errors.New("webhook URL has no host")
	}
	if !strings.HasPrefix(route.Secret, routing.SecretPrefix) {
		return nil, nil, errors.New("the route has no webhook secret")
	}
	wh, err := standardwebhooks.NewWebhook(route.Secret)
	if err != nil {
		return nil, nil, errors.New("the route's webhook secret is not valid base64")
	}
	return u, wh, nil
}

// attempt makes one POST. It returns the status (0 when none came), the
// Retry-After delay (-1 when absent or unparsable) and nil for a 2xx.
func (s *WebhookSender) attempt(ctx context.Context, u *url.URL, wh *standardwebhooks.Webhook, id string, body []byte, timeout time.Duration) (int, time.Duration, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, -1, err
	}
	now := time.Now()
	sig, err := wh.Sign(id, now, body)
	if err != nil {
		return 0, -1, fmt.Errorf("signing the webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(standardwebhooks.HeaderWebhookID, id)
	req.Header.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(standardwebhooks.HeaderWebhookSignature, sig)

	resp, err := s.client.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return 0, -1, context.Cause(ctx)
		case errors.Is(err, ssrf.ErrProhibitedIP), errors.Is(err, ssrf.ErrProhibitedPort), errors.Is(err, ssrf.ErrProhibitedNetwork), errors.Is(err, ssrf.ErrInvalidHostPort):
			return 0, -1, fmt.Errorf("%w: %w (loopback, private and special addresses need --webhook-allow-private)", ErrRefusedAddress, guardError(err))
		case actx.Err() != nil:
			return 0, -1, fmt.Errorf("no response within %s", timeout)
		}
		return 0, -1, fmt.Errorf("connecting: %w", unwrapURLError(err))
	}
	// Drain (a bounded part of) the body so that the connection can be
	// reused; a dripping body is cut by the attempt's timeout.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, s.cfg.MaxResponseBytes))
	_ = resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return resp.StatusCode, -1, nil
	}
	retryAfter := time.Duration(-1)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "" {
		retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		return resp.StatusCode, retryAfter, fmt.Errorf("HTTP status %d (redirects are not followed)", resp.StatusCode)
	}
	return resp.StatusCode, retryAfter, fmt.Errorf("HTTP status %d", resp.StatusCode)
}

// guardError returns the ssrf Guardian's own error from a client error
// ("prohibited IP address: 127.0.0.1 is not a permitted destination
// (denied by: 127.0.0.0/8)").
func guardError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return unwrapURLError(err)
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// parseRetryAfter parses a Retry-After value, delay-seconds or an HTTP date,
// and returns -1 when it is absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return -1
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return -1
		}
		if n > int64(24*time.Hour/time.Second) {
			n = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return -1
}

// backoff returns the full-jitter wait before retry n (n ≥ 1).
func (s *WebhookSender) backoff(n int) time.Duration {
	ceil := s.cfg.BackoffMax
	if n-1 < 32 {
		if d := s.cfg.BackoffBase << (n - 1); d > 0 && d < ceil {
			ceil = d
		}
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}
