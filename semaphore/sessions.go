package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/semaphored/semaphored/routing"
	"github.com/semaphored/semaphored/store"
)

// This file is the service side of websocket sessions (SPEC §4
// onSessionLost, §6): what happens to the leases and jobs of a session that
// ended, and the tickets browsers open a websocket with. The connections
// themselves live in hub.Hub.

// DefaultSessionInterval is how often the service collects sessions whose
// grace period ran out.
const DefaultSessionInterval = time.Second

// sessionBatch bounds the sessions one ExpiredSessions call returns.
const sessionBatch = 100

// Websocket tickets (SPEC §6): single use, 60 s, stored as the hex SHA-256
// of the secret, like API keys.
const (
	TicketTTL    = 60 * time.Second
	TicketPrefix = "wst_"
)

// sessionLoop ends the sessions whose grace ran out, every interval, until
// ctx ends. Every instance runs it; the store returns each session once.
func (s *Service) sessionLoop(ctx context.Context) {
	t := time.NewTicker(s.sessionInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for ctx.Err() == nil {
			lost, err := s.store.ExpiredSessions(ctx, sessionBatch)
			if err != nil {
				if ctx.Err() == nil {
					s.log.WarnContext(ctx, "collecting expired websocket sessions failed", "err", err)
				}
				break
			}
			for _, l := range lost {
				s.SessionLost(ctx, l.Session)
			}
			if len(lost) < sessionBatch {
				break
			}
		}
	}
}

// SessionLost applies the end of a websocket session to what it held: its
// sync leases are released, and each of its jobs still inflight on the
// websocket route gets its semaphore's onSessionLost: "release" ends the
// delivery (the permit is freed, the attempt counts: the job is scheduled
// again, or ends in timeout when its attempts are used up), "redeliver"
// offers it, keeping its permit, to the routes of its chain more stable
// than a websocket (an https route, a semaphore), "wait" leaves it until its
// lease times out. It runs after the grace period of a dropped connection,
// and at once when the client closed the connection normally (it gave its
// session up).
func (s *Service) SessionLost(ctx context.Context, sess store.Session) {
	log := s.log.With("session", sess.ID, "tenant", sess.Tenant)
	for _, id := range sess.Leases {
		_, err := s.store.Release(ctx, store.ReleaseParams{Tenant: sess.Tenant, LeaseID: id})
		if err != nil && !errors.Is(err, store.ErrLeaseNotFound) {
			log.Warn("releasing a lease of a lost session failed; it expires", "lease", id, "err", err)
		}
	}
	for _, id := range sess.Jobs {
		if err := s.jobSessionLost(ctx, sess, id); err != nil {
			log.Warn("applying onSessionLost failed; the job's lease expires", "job", id, "err", err)
		}
	}
}

func (s *Service) jobSessionLost(ctx context.Context, sess store.Session, id string) error {
	j, err := s.store.GetJob(ctx, sess.Tenant, id)
	if errors.Is(err, store.ErrJobNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	// Only a job still on its websocket delivery: not one that moved on
	// (released, retried and delivered elsewhere, handed to another route),
	// and not one dispatched again after the session was lost.
	if j.Status != store.JobInflight || j.Lease == nil || (j.Route != "" && j.Route != routing.TypeWebsocket) {
		return nil
	}
	// Only while its lease is still bound to this session: a job pushed
	// to another worker since holds that worker's permit.
	if j.Worker == nil || j.Worker.Session != sess.ID {
		return nil
	}
	if !sess.LostAt.IsZero() && j.Lease.AcquiredAt.After(sess.LostAt) {
		return nil
	}
	sem, err := s.store.GetSemaphore(ctx, sess.Tenant, j.Semaphore)
	if errors.Is(err, store.ErrSemaphoreNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	switch sem.Config.OnSessionLost {
	case "wait":
		return nil
	case "release":
		_, err := s.store.TransitionJob(ctx, store.TransitionParams{
			Tenant: sess.Tenant, JobID: j.ID, Action: store.ActRetry, LeaseID: j.Lease.ID,
			Error: "websocket session lost",
		})
		if errors.Is(err, store.ErrStaleLease) || errors.Is(err, store.ErrInvalidState) || errors.Is(err, store.ErrJobNotFound) {
			return nil // it moved on meanwhile
		}
		return err
	default: // "redeliver", the default
		s.disp.redeliver(j)
		return nil
	}
}

// CreateTicket creates a single-use websocket ticket standing for key,
// valid for TicketTTL, and returns its secret (shown once).
func (s *Service) CreateTicket(ctx context.Context, key store.APIKey) (secret string, expiresAt time.Time, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("semaphore: random ticket: %w", err)
	}
	secret = TicketPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	expiresAt = time.Now().Add(TicketTTL).UTC()
	err = s.store.CreateTicket(ctx, store.Ticket{
		Hash: HashSecret(secret), Tenant: key.Tenant, KeyID: key.ID, Role: key.Role, ExpiresAt: expiresAt,
	})
	if err != nil {
		return "", time.Time{}, err
	}
	return secret, expiresAt, nil
}

// RedeemTicket takes a ticket (it cannot be used again) and returns the key
// it stands for; store.ErrKeyNotFound for an unknown, used or expired
// ticket, or when its key was revoked since.
func (s *Service) RedeemTicket(ctx context.Context, secret string) (store.APIKey, error) {
	if len(secret) > maxSecretLen || len(secret) <= len(TicketPrefix) {
		return store.APIKey{}, store.ErrKeyNotFound
	}
	t, err := s.store.TakeTicket(ctx, HashSecret(secret))
	if errors.Is(err, store.ErrSessionNotFound) {
		return store.APIKey{}, store.ErrKeyNotFound
	}
	if err != nil {
		return store.APIKey{}, err
	}
	keys, err := s.store.ListKeys(ctx, t.Tenant)
	if err != nil {
		return store.APIKey{}, err
	}
	i := slices.IndexFunc(keys, func(k store.APIKey) bool { return k.ID == t.KeyID })
	if i < 0 {
		return store.APIKey{}, store.ErrKeyNotFound
	}
	return keys[i], nil
}
