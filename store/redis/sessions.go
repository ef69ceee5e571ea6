package redisstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

// This file implements store.SessionStore on Redis (keys in keys.go).
//
// A session's record and the indexes of every session (node heartbeats,
// the sessions of each node, the lost ones by end of grace, the resume
// tokens) share one hash tag, {nodes}: each session operation is one
// atomic sess_*.lua script there, on Redis Cluster too (sesslib.lua). A
// session's liveness is its node's presence, so the two live together;
// the price is that every session record sits in one Cluster slot, which
// session operations (connects, subscriptions, losses) touch, never the
// per-job path.
//
// What a session holds is not in its record: the operation that grants a
// lease or records a job's delivery binds it in the semaphore's own slot
// (lib_*.lua sbind), and whatever ends the lease unbinds it. The
// record lists the semaphores to look in (sems); GetSession, ResumeSession,
// EndSession and ExpiredSessions read the bindings there in one pipeline.
//
// Two things stay outside the {nodes} slot, written after the record's
// script, and neither needs to agree with the record at every instant:
//
//   - each semaphore's subscriber registry (its slot): only a hint of
//     which sessions subscribed. Subscribers looks every entry up in the
//     records (sess_live.lua) and keeps only connected sessions on live
//     nodes whose record holds that subscription, with its prefetch. An
//     entry left behind (a process died between the two writes, a late
//     write of a displaced connection) is filtered out there, and removed
//     when its session no longer exists; a subscription whose entry is
//     missing is written again when the session resumes.
//   - the node bus (pub/sub), best effort by nature (Publish).

// Tunables of the session store.
const (
	// expiredDefault is ExpiredSessions' max when none is given.
	expiredDefault = 100
	// expiredNodes bounds the dead nodes one ExpiredSessions call handles.
	expiredNodes = 16
	// busBuffer is the pub/sub buffer of one SubscribeNode subscription.
	busBuffer = 10000
)

var (
	scriptSessPut         = sessScript("sess_put.lua")
	scriptSessGet         = sessScript("sess_get.lua")
	scriptSessUse         = sessScript("sess_use.lua")
	scriptSessSubscribe   = sessScript("sess_subscribe.lua")
	scriptSessUnsubscribe = sessScript("sess_unsubscribe.lua")
	scriptSessLose        = sessScript("sess_lose.lua")
	scriptSessResume      = sessScript("sess_resume.lua")
	scriptSessEnd         = sessScript("sess_end.lua")
	scriptSessExpired     = sessScript("sess_expired.lua")
	scriptSessLive        = sessScript("sess_live.lua")

	scriptHeartbeat   = plainScript("heartbeat.lua")
	scriptNodes       = plainScript("nodes.lua")
	scriptSubscribers = plainScript("subscribers.lua")
)

func sessScript(name string) *redis.Script {
	return redis.NewScript(readLua("consts.lua") + "\n-- sesslib.lua\n" + readLua("sesslib.lua") + "\n-- " + name + "\n" + readLua(name))
}

// sessRecord is a session record as sesslib.lua stores it.
type sessRecord struct {
	Tenant  string  `json:"t"`
	ID      string  `json:"id"`
	Node    string  `json:"node"`
	Tok     string  `json:"tok"`
	KeyID   string  `json:"kid"`
	Lost    int64   `json:"lost"`  // ms, 0 while connected
	Until   int64   `json:"ends"`  // ms, 0 while connected
	Grace   int64   `json:"grace"` // ms
	Sems    strList `json:"sems"`
	Subs    subList `json:"subs"`
	Created int64   `json:"created"`
}

type subRecord struct {
	Semaphore string `json:"s"`
	Channel   string `json:"c"`
	Prefetch  int    `json:"p"`
}

// strList and subList decode the "{}" that Lua's cjson writes for an
// empty array.
type strList []string

func (l *strList) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("{}")) {
		*l = nil
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

type subList []subRecord

func (l *subList) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("{}")) {
		*l = nil
		return nil
	}
	return json.Unmarshal(b, (*[]subRecord)(l))
}

func sessTime(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func (r *sessRecord) session() store.Session {
	s := store.Session{
		Tenant:          r.Tenant,
		ID:              r.ID,
		Node:            r.Node,
		ResumeTokenHash: r.Tok,
		KeyID:           r.KeyID,
		LostAt:          sessTime(r.Lost),
		GraceUntil:      sessTime(r.Until),
		Grace:           time.Duration(r.Grace) * time.Millisecond,
		Semaphores:      []string(r.Sems),
		CreatedAt:       sessTime(r.Created),
	}
	for _, sub := range r.Subs {
		s.Subscriptions = append(s.Subscriptions, store.Subscription{Semaphore: sub.Semaphore, Channel: sub.Channel, Prefetch: sub.Prefetch})
	}
	return s
}

func decodeRecord(raw string) (*sessRecord, error) {
	var r sessRecord
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return nil, fmt.Errorf("redisstore: bad session record: %w", err)
	}
	return &r, nil
}

// sessKeys are the KEYS of every session script (sesslib.lua).
func (s *Store) sessKeys() []string {
	k := s.keys.sessIndex()
	return []string{k.nodes, k.sess, k.bynode, k.lost, k.tokens}
}

// runSess runs a session script that replies {'OK', record JSON} and
// returns the record.
func (s *Store) runSess(ctx context.Context, sc *redis.Script, args ...any) (*sessRecord, error) {
	res, err := s.runOnce(ctx, sc, s.sessKeys(), args...).Slice()
	if err != nil {
		return nil, translate(err, nil)
	}
	switch st, _ := res[0].(string); st {
	case "OK":
	case codeSessionNotFound:
		return nil, store.ErrSessionNotFound
	default:
		return nil, fmt.Errorf("redisstore: unexpected session script reply %q", st)
	}
	raw, _ := res[1].(string)
	return decodeRecord(raw)
}

// Heartbeat implements store.SessionStore, by Redis TIME.
func (s *Store) Heartbeat(ctx context.Context, node string, ttl time.Duration) error {
	err := scriptHeartbeat.Run(ctx, s.client, []string{s.keys.sessIndex().nodes}, node, ttl.Milliseconds()).Err()
	return translate(err, nil)
}

// Nodes implements store.SessionStore, sorted by id.
func (s *Store) Nodes(ctx context.Context) ([]string, error) {
	nodes, err := scriptNodes.Run(ctx, s.client, []string{s.keys.sessIndex().nodes}).StringSlice()
	if err != nil {
		return nil, translate(err, nil)
	}
	sort.Strings(nodes)
	return nodes, nil
}

// PutSession implements store.SessionStore. A zero CreatedAt is set to
// Redis time; LostAt and GraceUntil are cleared (connected on sess.Node);
// Prefetch below 1 means 1; Leases and Jobs are ignored (bound by the
// lease and job operations). The subscriptions are written to their
// semaphores' registries.
func (s *Store) PutSession(ctx context.Context, sess store.Session) error {
	r := sessRecord{
		Tenant: sess.Tenant, ID: sess.ID, Node: sess.Node, Tok: sess.ResumeTokenHash, KeyID: sess.KeyID,
		Grace: sess.Grace.Milliseconds(),
		Sems:  append(strList{}, sess.Semaphores...),
		Subs:  subList{},
	}
	if !sess.CreatedAt.IsZero() {
		r.Created = sess.CreatedAt.UnixMilli()
	}
	for _, sub := range sess.Subscriptions {
		r.Subs = append(r.Subs, subRecord{Semaphore: sub.Semaphore, Channel: sub.Channel, Prefetch: max(sub.Prefetch, 1)})
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	rec, err := s.runSess(ctx, scriptSessPut, sessMember(sess.Tenant, sess.ID), string(b))
	if err != nil {
		return err
	}
	return s.registerSubs(ctx, rec)
}

// GetSession implements store.SessionStore. It reports the record: the
// sessions of a dead node show as connected on it until ExpiredSessions
// marks them lost.
func (s *Store) GetSession(ctx context.Context, p store.SessionParams) (store.Session, error) {
	r, err := s.runSess(ctx, scriptSessGet, sessMember(p.Tenant, p.Session))
	if err != nil {
		return store.Session{}, err
	}
	return s.withBindings(ctx, r.session())
}

// UseSemaphore implements store.SessionStore.
func (s *Store) UseSemaphore(ctx context.Context, p store.SessionParams, semaphore string) error {
	_, err := s.runSess(ctx, scriptSessUse, sessMember(p.Tenant, p.Session), semaphore)
	return err
}

// withBindings returns the session with its Leases and Jobs: the
// bindings in each of its semaphores (lib_*.lua sbind), read in one
// pipeline (one round trip per master in Cluster).
func (s *Store) withBindings(ctx context.Context, sess store.Session) (store.Session, error) {
	if len(sess.Semaphores) == 0 {
		return sess, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(sess.Semaphores))
	for i, sem := range sess.Semaphores {
		cmds[i] = pipe.ZRangeByLex(ctx, s.keys.sem(sess.Tenant, sem)[kSBind], &redis.ZRangeBy{
			Min: "[" + sess.ID + "\x00", Max: "(" + sess.ID + "\x01",
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return sess, translate(err, nil)
	}
	for _, c := range cmds {
		for _, m := range c.Val() {
			// "<session>\0L<lease id>" or "<session>\0J<channel>\0<job id>"
			kind, rest := m[len(sess.ID)+1], m[len(sess.ID)+2:]
			if kind == 'L' {
				sess.Leases = append(sess.Leases, rest)
			} else if _, id, ok := strings.Cut(rest, "\x00"); ok {
				sess.Jobs = append(sess.Jobs, id)
			}
		}
	}
	return sess, nil
}

// regField is a subscription's field in its semaphore's registry.
func regField(session, channel string) string { return session + "\x00" + channel }

// registerSubs writes the record's subscriptions to their semaphores'
// registries with the session's node as the record has it ("" while lost),
// each in its semaphore's own function (set_sub.lua), which dispatches the
// jobs the session's room lets go.
func (s *Store) registerSubs(ctx context.Context, r *sessRecord) error {
	for _, sub := range r.Subs {
		if err := s.setSub(ctx, r.Tenant, sub.Semaphore, regField(r.ID, sub.Channel), regValue(sub.Prefetch, r.Node)); err != nil {
			return err
		}
	}
	return nil
}

// regValue is a subscription's value in its semaphore's registry.
func regValue(prefetch int, node string) string { return strconv.Itoa(max(prefetch, 1)) + " " + node }

// setSub sets (value "" removes) one registry entry (set_sub.lua).
func (s *Store) setSub(ctx context.Context, tenant, semaphore, field, value string) error {
	_, err := s.run(ctx, fnSetSub, tenant, semaphore, field, value)
	return err
}

// unregisterSubs removes the record's subscriptions from their semaphores'
// registries, best effort (a leftover entry is filtered by Subscribers).
func (s *Store) unregisterSubs(ctx context.Context, r *sessRecord) {
	if len(r.Subs) == 0 {
		return
	}
	pipe := s.client.Pipeline()
	for _, sub := range r.Subs {
		pipe.HDel(ctx, s.keys.subs(r.Tenant, sub.Semaphore), regField(r.ID, sub.Channel))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		s.log.Warn("removing an ended session's registry entries failed; Subscribers filters them", "session", r.ID, "err", err)
	}
}

// Subscribe implements store.SessionStore. Prefetch below 1 means 1;
// replacing a subscription keeps the jobs counted on it. A lost session's
// subscription becomes active when it resumes. p.Node is informational
// (the record knows the session's node).
func (s *Store) Subscribe(ctx context.Context, p store.SubscribeParams) error {
	sub := p.Subscription
	r, err := s.runSess(ctx, scriptSessSubscribe, sessMember(p.Tenant, p.Session), sub.Semaphore, sub.Channel, max(sub.Prefetch, 1))
	if err != nil {
		return err
	}
	return s.setSub(ctx, p.Tenant, sub.Semaphore, regField(p.Session, sub.Channel), regValue(sub.Prefetch, r.Node))
}

// Unsubscribe implements store.SessionStore; an unknown subscription is
// ignored. Jobs counted on it stay bound to the session.
func (s *Store) Unsubscribe(ctx context.Context, p store.SessionParams, sub store.Subscription) error {
	if _, err := s.runSess(ctx, scriptSessUnsubscribe, sessMember(p.Tenant, p.Session), sub.Semaphore, sub.Channel); err != nil {
		return err
	}
	return s.setSub(ctx, p.Tenant, sub.Semaphore, regField(p.Session, sub.Channel), "")
}

// Subscribers implements store.SessionStore: the registry's entries that
// match the channel, checked against the sessions' records (connected,
// on a live node, holding that subscription: the record gives its
// prefetch); one entry per session, its subscription to exactly the
// channel preferred over its "" one; sorted by session id. Entries of
// sessions that no longer exist are removed on the way.
func (s *Store) Subscribers(ctx context.Context, tenant, semaphore, channel string) ([]store.Subscriber, error) {
	regKey := s.keys.subs(tenant, semaphore)
	res, err := scriptSubscribers.Run(ctx, s.client, []string{regKey, s.keys.sem(tenant, semaphore)[kSBind]}, channel).StringSlice()
	if err != nil {
		return nil, translate(err, nil)
	}
	out := []store.Subscriber{}
	if len(res) == 0 {
		return out, nil
	}
	bySession := map[string][]regHit{}
	var members []any
	var ids []string
	for i := 0; i+2 < len(res); i += 3 {
		id := res[i]
		inf, _ := strconv.Atoi(res[i+2])
		if _, ok := bySession[id]; !ok {
			ids = append(ids, id)
			members = append(members, sessMember(tenant, id))
		}
		bySession[id] = append(bySession[id], regHit{channel: res[i+1], inflight: inf})
	}
	recs, err := scriptSessLive.Run(ctx, s.client, s.sessKeys(), members...).StringSlice()
	if err != nil {
		return nil, translate(err, nil)
	}
	var gone []string // sessions with no record: ended or expired
	for i, id := range ids {
		if i >= len(recs) || recs[i] == "" || recs[i] == "-" {
			if i < len(recs) && recs[i] == "-" {
				gone = append(gone, id)
			}
			continue
		}
		r, err := decodeRecord(recs[i])
		if err != nil {
			return nil, err
		}
		best, found := store.Subscriber{}, false
		for _, e := range bySession[id] {
			for _, sub := range r.Subs {
				if sub.Semaphore != semaphore || sub.Channel != e.channel {
					continue
				}
				if !found || e.channel == channel {
					best, found = store.Subscriber{Session: id, Node: r.Node, Prefetch: sub.Prefetch, Inflight: e.inflight, Lost: r.Lost != 0}, true
				}
			}
		}
		if found {
			out = append(out, best)
		}
	}
	s.pruneRegistry(ctx, regKey, gone, bySession)
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return out, nil
}

// regHit is a registry entry of a session that matched a channel.
type regHit struct {
	channel  string
	inflight int
}

// pruneRegistry removes the registry entries of sessions that no longer
// exist (best effort).
func (s *Store) pruneRegistry(ctx context.Context, regKey string, gone []string, bySession map[string][]regHit) {
	var fields []string
	for _, id := range gone {
		for _, e := range bySession[id] {
			fields = append(fields, regField(id, e.channel))
		}
	}
	if len(fields) > 0 {
		_ = s.client.HDel(ctx, regKey, fields...).Err()
	}
}

// LoseSession implements store.SessionStore. grace ≤ 0 means the session's
// Grace. Losing a lost session changes nothing (its grace is not
// renewed); with p.Node set, a session connected on another node is left
// as it is.
func (s *Store) LoseSession(ctx context.Context, p store.SessionParams, grace time.Duration) error {
	r, err := s.runSess(ctx, scriptSessLose, sessMember(p.Tenant, p.Session), grace.Milliseconds(), p.Node)
	if err != nil {
		return err
	}
	// Its subscriptions offer no room while it is lost.
	return s.registerSubs(ctx, r)
}

// ResumeSession implements store.SessionStore. It also takes over a
// session still connected on another node. Its subscriptions are
// written to their registries again (in case an earlier write was lost).
func (s *Store) ResumeSession(ctx context.Context, tenant, resumeTokenHash, node string) (store.Session, error) {
	if resumeTokenHash == "" {
		return store.Session{}, store.ErrSessionNotFound
	}
	r, err := s.runSess(ctx, scriptSessResume, tenant, resumeTokenHash, node)
	if err != nil {
		return store.Session{}, err
	}
	if err := s.registerSubs(ctx, r); err != nil {
		return store.Session{}, err
	}
	return s.withBindings(ctx, r.session())
}

// EndSession implements store.SessionStore. It ends a session lost past
// its grace too (not yet returned by ExpiredSessions): whichever of the two
// removes it returns it.
func (s *Store) EndSession(ctx context.Context, p store.SessionParams) (store.Session, error) {
	r, err := s.runSess(ctx, scriptSessEnd, sessMember(p.Tenant, p.Session))
	if err != nil {
		return store.Session{}, err
	}
	s.unregisterSubs(ctx, r)
	return s.withBindings(ctx, r.session())
}

// ExpiredSessions implements store.SessionStore (sess_expired.lua: one
// atomic script; each session is returned once). max ≤ 0 means 100. A
// session whose bindings could not be read is returned all the same (its
// leases and jobs then end by expiry).
func (s *Store) ExpiredSessions(ctx context.Context, maxN int) ([]store.LostSession, error) {
	if maxN <= 0 {
		maxN = expiredDefault
	}
	raws, err := scriptSessExpired.Run(ctx, s.client, s.sessKeys(), maxN, expiredNodes).StringSlice()
	if err != nil {
		return nil, translate(err, nil)
	}
	out := make([]store.LostSession, 0, len(raws))
	for _, raw := range raws {
		r, err := decodeRecord(raw)
		if err != nil {
			s.log.Warn("expired sessions: a bad record was dropped", "err", err)
			continue
		}
		s.unregisterSubs(ctx, r)
		sess, err := s.withBindings(ctx, r.session())
		if err != nil {
			s.log.Warn("expired sessions: reading what a session held failed; its leases expire", "session", r.ID, "err", err)
		}
		out = append(out, store.LostSession{Session: sess})
	}
	return out, nil
}

type ticketJSON struct {
	Hash      string     `json:"hash"`
	Tenant    string     `json:"tenant"`
	KeyID     string     `json:"keyId"`
	Role      store.Role `json:"role"`
	ExpiresAt time.Time  `json:"expiresAt"`
}

// CreateTicket implements store.SessionStore: a key expiring at ExpiresAt
// by Redis time (PXAT); a ticket with the same hash is replaced.
func (s *Store) CreateTicket(ctx context.Context, t store.Ticket) error {
	b, err := json.Marshal(ticketJSON(t))
	if err != nil {
		return err
	}
	ms := t.ExpiresAt.UnixMilli()
	if ms <= 0 {
		return nil // expired already
	}
	return translate(s.client.Do(ctx, "SET", s.keys.ticket(t.Hash), b, "PXAT", ms).Err(), nil)
}

// TakeTicket implements store.SessionStore (GETDEL: single use).
func (s *Store) TakeTicket(ctx context.Context, hash string) (store.Ticket, error) {
	raw, err := s.client.GetDel(ctx, s.keys.ticket(hash)).Bytes()
	if err != nil {
		return store.Ticket{}, translate(err, store.ErrSessionNotFound)
	}
	var t ticketJSON
	if err := json.Unmarshal(raw, &t); err != nil {
		return store.Ticket{}, fmt.Errorf("redisstore: bad ticket record: %w", err)
	}
	return store.Ticket(t), nil
}

// envelope is a NodeMessage on the wire: JSON, Body as base64.
type envelope struct {
	V    int    `json:"v"`
	From string `json:"from"`
	To   string `json:"to,omitempty"`
	Type string `json:"type"`
	Body []byte `json:"body,omitempty"`
}

// busVersion is the envelope version this store writes and reads.
const busVersion = 1

// Publish implements store.SessionStore: PUBLISH on the channel of m.To,
// or on the channel every node listens to. In Cluster the PUBLISH goes to
// the master of the channel's slot, so the messages of one channel keep
// their order (messages to one node and to all may interleave).
func (s *Store) Publish(ctx context.Context, m store.NodeMessage) error {
	if m.Version == 0 {
		m.Version = busVersion
	}
	b, err := json.Marshal(envelope{V: m.Version, From: m.From, To: m.To, Type: m.Type, Body: m.Body})
	if err != nil {
		return err
	}
	ch := s.keys.busAll()
	if m.To != "" {
		ch = s.keys.busNode(m.To)
	}
	var c redis.Cmdable = s.client
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		if c, err = cc.MasterForKey(ctx, ch); err != nil {
			return translate(err, nil)
		}
	}
	return translate(c.Publish(ctx, ch, b).Err(), nil)
}

// SubscribeNode implements store.SessionStore. It returns once Redis
// confirmed the subscription (a message published after it returns is
// delivered) and delivers from its own goroutine, on its own pub/sub
// connection (a slow handler never delays the grants of waiters), until
// ctx ends or the Store is closed. A message of an unknown version is
// dropped.
func (s *Store) SubscribeNode(ctx context.Context, node string, h func(store.NodeMessage)) error {
	chans := []string{s.keys.busNode(node), s.keys.busAll()}
	ps := s.client.Subscribe(ctx, chans...)
	var early []*redis.Message // published between the two confirmations
	for confirmed := 0; confirmed < len(chans); {
		msg, err := ps.Receive(ctx)
		if err != nil {
			_ = ps.Close()
			return translate(err, nil)
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			confirmed++
		case *redis.Message:
			early = append(early, m)
		}
	}
	msgs := ps.Channel(redis.WithChannelSize(busBuffer))
	deliver := func(m *redis.Message) {
		var e envelope
		if err := json.Unmarshal([]byte(m.Payload), &e); err != nil || e.V != busVersion {
			s.log.Warn("node bus: dropped a message", "channel", m.Channel, "err", err, "version", e.V)
			return
		}
		h(store.NodeMessage{Version: e.V, From: e.From, To: e.To, Type: e.Type, Body: e.Body})
	}
	go func() {
		defer ps.Close()
		for _, m := range early {
			if ctx.Err() != nil {
				return
			}
			deliver(m)
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.closing:
				return
			case m, ok := <-msgs:
				if !ok || ctx.Err() != nil {
					return
				}
				deliver(m)
			}
		}
	}()
	return nil
}
