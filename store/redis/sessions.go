package redisstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

// This file implements store.SessionStore on Redis (keys in keys.go).
//
// Three places hold a session's state, in three kinds of hash slot:
//
//   - its record, P:{sess:<tenant>/<id>}: the source of truth (leases,
//     jobs, subscriptions, node or lost state, token), changed by one
//     sess_*.lua script per operation;
//   - the global session index, tag {nodes}: node heartbeats, the sessions
//     of each node, the lost sessions by end of grace, resume tokens;
//   - the subscriber registry of each semaphore it subscribes to, in the
//     semaphore's slot, next to the semaphore's keys.
//
// No Redis Cluster script can span those slots, so an operation is not
// atomic across them: it runs the record's script first and then brings
// the index and the registries in line with the record (index_sync.lua,
// registry_sync.lua) from the old and new records the script returned.
// Every derived write carries the record's rev and is applied only when
// newer than what it replaces (removed registry entries leave tombstones),
// so concurrent operations on one session converge to its latest record
// whatever order their second steps land in. A process dying between the
// steps leaves the derived state stale until the next operation on the
// session; the record-side guards keep that harmless: a lost or ended
// session is found by its record (resume, expiry check the record and its
// connection id, cid), a stale registry entry on a dead node is filtered
// out by Subscribers (live nodes only), and ExpiredSessions, EndSession,
// LoseSession and ResumeSession always rewrite every registry entry of the
// session (idempotent). If the second step fails, the operation returns
// its error although the record changed; a retry of the same operation
// repairs the derived state (except after EndSession, whose record is
// gone).
//
// ExpiredSessions claims lost sessions in the global index (ZREM: one
// caller wins each) and then deletes each record only if it still holds
// the connection that was lost (cid): a session resumed in between is
// left alone, and a record is deleted by one caller only (also against
// EndSession), so each session is returned exactly once.

// Tunables of the session store.
const (
	// expiredDefault is ExpiredSessions' max when none is given.
	expiredDefault = 100
	// expiredNodes bounds the dead nodes one ExpiredSessions call handles.
	expiredNodes = 16
	// tombstoneAge: registry tombstones older than this are pruned (a
	// delayed write older than this is impossible in practice).
	tombstoneAge = time.Minute
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
	scriptSessMarkLost    = sessScript("sess_mark_lost.lua")
	scriptSessExpire      = sessScript("sess_expire.lua")

	scriptHeartbeat    = plainScript("heartbeat.lua")
	scriptNodes        = plainScript("nodes.lua")
	scriptIndexSync    = plainScript("index_sync.lua")
	scriptResumeLookup = plainScript("resume_lookup.lua")
	scriptExpiredClaim = plainScript("expired_claim.lua")
	scriptRegistrySync = plainScript("registry_sync.lua")
	scriptSubscribers  = plainScript("subscribers.lua")
)

func sessScript(name string) *redis.Script {
	return redis.NewScript(readLua("sesslib.lua") + "\n-- " + name + "\n" + readLua(name))
}

// sessRecord is a session record as sesslib.lua stores it.
type sessRecord struct {
	Tenant  string  `json:"t"`
	ID      string  `json:"id"`
	Node    string  `json:"node"`
	Tok     string  `json:"tok"`
	KeyID   string  `json:"kid,omitempty"`
	Lost    int64   `json:"lost"`  // ms, 0 while connected
	Until   int64   `json:"ends"`  // ms, 0 while connected
	Grace   int64   `json:"grace"` // ms
	Sems    strList `json:"sems"`
	Subs    subList `json:"subs"`
	Created int64   `json:"created"`
	Rev     int64   `json:"rev"`
	Cid     int64   `json:"cid"`
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

func (r *sessRecord) connected() bool { return r.Lost == 0 && r.Node != "" }

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

func decodeRecord(v any) (*sessRecord, error) {
	raw, ok := v.(string)
	if !ok {
		return nil, nil
	}
	var r sessRecord
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return nil, fmt.Errorf("redisstore: bad session record: %w", err)
	}
	return &r, nil
}

// sessResult is the reply of a session-record script.
type sessResult struct {
	skipped  bool
	old, new *sessRecord
	delRev   int64 // the rev of a deletion
}

// runSess runs a session-record script on the session's key.
func (s *Store) runSess(ctx context.Context, sc *redis.Script, tenant, id string, args ...any) (sessResult, error) {
	res, err := sc.Run(ctx, s.client, []string{s.keys.session(tenant, id)}, args...).Slice()
	if err != nil {
		return sessResult{}, translate(err, nil)
	}
	switch st, _ := res[0].(string); st {
	case "OK":
	case "SKIP":
		return sessResult{skipped: true}, nil
	case "SD_SESSION_NOT_FOUND":
		return sessResult{}, store.ErrSessionNotFound
	default:
		return sessResult{}, fmt.Errorf("redisstore: unexpected session script reply %q", st)
	}
	var r sessResult
	if r.old, err = decodeRecord(res[1]); err != nil {
		return sessResult{}, err
	}
	if r.new, err = decodeRecord(res[2]); err != nil {
		return sessResult{}, err
	}
	if len(res) > 3 {
		r.delRev, _ = res[3].(int64)
	}
	return r, nil
}

// idxEntry is a session's entry in the global index (index_sync.lua).
type idxEntry struct {
	Rev    int64  `json:"r"`
	ID     string `json:"i"`
	Node   string `json:"n"`
	Cid    int64  `json:"c"`
	Grace  int64  `json:"g"`
	Token  string `json:"t"`
	LostAt int64  `json:"la"`
	Ends   int64  `json:"e"`
}

func indexEntry(r *sessRecord) idxEntry {
	e := idxEntry{Rev: r.Rev, ID: r.ID, Node: r.Node, Cid: r.Cid, Grace: r.Grace, LostAt: r.Lost}
	if r.Lost > 0 {
		e.Node, e.Ends = "", r.Until
	}
	if r.Tok != "" {
		e.Token = tokenField(r.Tenant, r.Tok)
	}
	return e
}

// regEntry is a subscription's entry in a semaphore's registry
// (registry_sync.lua).
type regEntry struct {
	Rev      int64  `json:"r"`
	Session  string `json:"s"`
	Channel  string `json:"c"`
	Node     string `json:"n"`
	Prefetch int    `json:"p"`
}

func regField(session, channel string) string { return session + "\x00" + channel }

// regFields returns, per semaphore, the registry fields of r's
// subscriptions with their entries (nil entry: none, r is not connected).
func regFields(r *sessRecord) map[string]map[string]*regEntry {
	out := map[string]map[string]*regEntry{}
	if r == nil {
		return out
	}
	for _, sub := range r.Subs {
		m := out[sub.Semaphore]
		if m == nil {
			m = map[string]*regEntry{}
			out[sub.Semaphore] = m
		}
		var e *regEntry
		if r.connected() {
			e = &regEntry{Session: r.ID, Channel: sub.Channel, Node: r.Node, Prefetch: sub.Prefetch}
		}
		m[regField(r.ID, sub.Channel)] = e
	}
	return out
}

// sync brings the global index and the subscriber registries in line with
// a record change (see the top of this file). force rewrites every derived
// entry, not only the changed ones.
func (s *Store) sync(ctx context.Context, r sessResult, force bool) error {
	ref := r.new
	if ref == nil {
		ref = r.old
	}
	if ref == nil {
		return nil
	}
	rev := r.delRev
	if r.new != nil {
		rev = r.new.Rev
	}
	if err := s.syncIndex(ctx, ref.Tenant, ref.ID, r, rev, force); err != nil {
		return err
	}
	return s.syncRegistry(ctx, ref.Tenant, r, rev, force)
}

func (s *Store) syncIndex(ctx context.Context, tenant, id string, r sessResult, rev int64, force bool) error {
	entry := ""
	if r.new != nil {
		ne := indexEntry(r.new)
		if !force && r.old != nil {
			oe := indexEntry(r.old)
			oe.Rev, oe.Cid = ne.Rev, ne.Cid
			if oe == ne && r.old.Cid == r.new.Cid {
				return nil // nothing the index holds changed
			}
		}
		b, err := json.Marshal(ne)
		if err != nil {
			return err
		}
		entry = string(b)
	}
	k := s.keys.sessIndex()
	err := scriptIndexSync.Run(ctx, s.client, []string{k.idx, k.bynode, k.lost, k.tokens},
		sessMember(tenant, id), rev, entry).Err()
	return translate(err, nil)
}

func (s *Store) syncRegistry(ctx context.Context, tenant string, r sessResult, rev int64, force bool) error {
	oldF, newF := regFields(r.old), regFields(r.new)
	sems := make([]string, 0, len(oldF)+len(newF))
	for sem := range oldF {
		sems = append(sems, sem)
	}
	for sem := range newF {
		if _, ok := oldF[sem]; !ok {
			sems = append(sems, sem)
		}
	}
	sort.Strings(sems)
	for _, sem := range sems {
		fields := map[string]bool{}
		for f := range oldF[sem] {
			fields[f] = true
		}
		for f := range newF[sem] {
			fields[f] = true
		}
		args := []any{rev}
		for f := range fields {
			oe, ne := oldF[sem][f], newF[sem][f]
			if !force && ((oe == nil && ne == nil) || (oe != nil && ne != nil && *oe == *ne)) {
				continue
			}
			v := ""
			if ne != nil {
				ne.Rev = rev
				b, err := json.Marshal(ne)
				if err != nil {
					return err
				}
				v = string(b)
			}
			args = append(args, f, v)
		}
		if len(args) == 1 {
			continue
		}
		if err := scriptRegistrySync.Run(ctx, s.client, []string{s.keys.subs(tenant, sem)}, args...).Err(); err != nil {
			return translate(err, nil)
		}
	}
	return nil
}

// sessOp runs a session-record script and its derived updates.
func (s *Store) sessOp(ctx context.Context, force bool, sc *redis.Script, tenant, id string, args ...any) (sessResult, error) {
	r, err := s.runSess(ctx, sc, tenant, id, args...)
	if err != nil || r.skipped {
		return r, err
	}
	return r, s.sync(ctx, r, force)
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
// Prefetch below 1 means 1. Jobs listed again keep the subscription they
// were counted on.
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
	_, err = s.sessOp(ctx, true, scriptSessPut, sess.Tenant, sess.ID, string(b))
	return err
}

// GetSession implements store.SessionStore. It reports the record: the
// sessions of a dead node show as connected on it until ExpiredSessions
// marks them lost.
func (s *Store) GetSession(ctx context.Context, p store.SessionParams) (store.Session, error) {
	r, err := s.runSess(ctx, scriptSessGet, p.Tenant, p.Session)
	if err != nil {
		return store.Session{}, err
	}
	return s.withBindings(ctx, r.new.session())
}

// UseSemaphore implements store.SessionStore.
func (s *Store) UseSemaphore(ctx context.Context, p store.SessionParams, semaphore string) error {
	_, err := s.runSess(ctx, scriptSessUse, p.Tenant, p.Session, semaphore)
	return err
}

// withBindings returns the session with its Leases and Jobs: the
// bindings in each of its semaphores (lib.lua sbind), read in one
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
			kind, id := m[len(sess.ID)+1], m[len(sess.ID)+2:]
			if kind == 'L' {
				sess.Leases = append(sess.Leases, id)
			} else {
				sess.Jobs = append(sess.Jobs, id)
			}
		}
	}
	return sess, nil
}

// Subscribe implements store.SessionStore. The registry takes the node
// from the session's record (p.Node is informational); Prefetch below 1
// means 1; replacing a subscription keeps the jobs counted on it. A lost
// session's subscription becomes active when it resumes.
func (s *Store) Subscribe(ctx context.Context, p store.SubscribeParams) error {
	sub := p.Subscription
	_, err := s.sessOp(ctx, false, scriptSessSubscribe, p.Tenant, p.Session, sub.Semaphore, sub.Channel, max(sub.Prefetch, 1))
	return err
}

// Unsubscribe implements store.SessionStore; an unknown subscription is
// ignored. Jobs counted on it stay bound to the session.
func (s *Store) Unsubscribe(ctx context.Context, p store.SessionParams, sub store.Subscription) error {
	_, err := s.sessOp(ctx, false, scriptSessUnsubscribe, p.Tenant, p.Session, sub.Semaphore, sub.Channel)
	return err
}

// Subscribers implements store.SessionStore: one entry per session (its
// subscription to exactly the channel, else its "" one), only sessions on
// nodes with a live heartbeat, sorted by session id.
func (s *Store) Subscribers(ctx context.Context, tenant, semaphore, channel string) ([]store.Subscriber, error) {
	res, err := scriptSubscribers.Run(ctx, s.client, []string{s.keys.subs(tenant, semaphore), s.keys.sem(tenant, semaphore)[kSInf]},
		channel, tombstoneAge.Milliseconds()).StringSlice()
	if err != nil {
		return nil, translate(err, nil)
	}
	out := []store.Subscriber{}
	if len(res) == 0 {
		return out, nil
	}
	nodes, err := s.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	for i := 0; i+3 < len(res); i += 4 {
		if _, ok := slicesIndex(nodes, res[i+1]); !ok {
			continue
		}
		pf, _ := strconv.Atoi(res[i+2])
		inf, _ := strconv.Atoi(res[i+3])
		out = append(out, store.Subscriber{Session: res[i], Node: res[i+1], Prefetch: pf, Inflight: inf})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Session < out[j].Session })
	return out, nil
}

// slicesIndex finds v in the sorted slice.
func slicesIndex(sorted []string, v string) (int, bool) {
	i := sort.SearchStrings(sorted, v)
	return i, i < len(sorted) && sorted[i] == v
}

// LoseSession implements store.SessionStore. grace ≤ 0 means the session's
// Grace. Losing a lost session changes nothing (its grace is not renewed)
// but repairs its index and registry entries.
func (s *Store) LoseSession(ctx context.Context, p store.SessionParams, grace time.Duration) error {
	_, err := s.sessOp(ctx, true, scriptSessLose, p.Tenant, p.Session, grace.Milliseconds(), p.Node)
	return err
}

// ResumeSession implements store.SessionStore. It also takes over a
// session still connected on another node.
func (s *Store) ResumeSession(ctx context.Context, tenant, resumeTokenHash, node string) (store.Session, error) {
	if resumeTokenHash == "" {
		return store.Session{}, store.ErrSessionNotFound
	}
	k := s.keys.sessIndex()
	res, err := scriptResumeLookup.Run(ctx, s.client, []string{k.nodes, k.idx, k.tokens},
		tokenField(tenant, resumeTokenHash), tenant).Slice()
	if errors.Is(err, redis.Nil) {
		return store.Session{}, store.ErrSessionNotFound
	}
	if err != nil {
		return store.Session{}, translate(err, nil)
	}
	id, _ := res[0].(string)
	deadNode, _ := res[1].(string)
	ends, _ := res[2].(int64)
	r, err := s.sessOp(ctx, true, scriptSessResume, tenant, id, resumeTokenHash, node, deadNode, ends)
	if err != nil {
		return store.Session{}, err
	}
	return s.withBindings(ctx, r.new.session())
}

// EndSession implements store.SessionStore. It ends a session lost past
// its grace too (not yet returned by ExpiredSessions): whichever of the two
// deletes the record returns it.
func (s *Store) EndSession(ctx context.Context, p store.SessionParams) (store.Session, error) {
	r, err := s.sessOp(ctx, true, scriptSessEnd, p.Tenant, p.Session)
	if r.old == nil {
		return store.Session{}, err
	}
	sess, berr := s.withBindings(ctx, r.old.session())
	if err == nil {
		err = berr
	}
	return sess, err
}

// ExpiredSessions implements store.SessionStore (see the top of this
// file). max ≤ 0 means 100.
func (s *Store) ExpiredSessions(ctx context.Context, maxN int) ([]store.LostSession, error) {
	if maxN <= 0 {
		maxN = expiredDefault
	}
	k := s.keys.sessIndex()
	res, err := scriptExpiredClaim.Run(ctx, s.client, []string{k.nodes, k.idx, k.bynode, k.lost},
		maxN, expiredNodes).Slice()
	if err != nil {
		return nil, translate(err, nil)
	}
	moved, claimed := quads(res[0]), quads(res[1])
	var firstErr error
	for _, q := range moved {
		tenant, id, ok := splitSessMember(q.member)
		if !ok {
			continue
		}
		if _, err := s.sessOp(ctx, true, scriptSessMarkLost, tenant, id, q.cid, q.lostAt, q.ends); err != nil && firstErr == nil {
			firstErr = err // the record stays connected on the dead node; it still expires by cid
		}
	}
	out := []store.LostSession{}
	for _, q := range claimed {
		tenant, id, ok := splitSessMember(q.member)
		if !ok {
			continue
		}
		r, err := s.runSess(ctx, scriptSessExpire, tenant, id, q.cid)
		if err != nil {
			// Put the claim back so that a later call takes it.
			_ = s.client.ZAdd(ctx, k.lost, redis.Z{Score: float64(q.ends), Member: q.member}).Err()
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if r.skipped {
			continue // resumed since, or already ended
		}
		sess, berr := s.withBindings(ctx, r.old.session())
		if berr != nil && firstErr == nil {
			firstErr = berr // what it holds expires with its leases
		}
		if sess.LostAt.IsZero() { // on a dead node, not marked lost yet
			sess.Node, sess.LostAt, sess.GraceUntil = "", sessTime(q.lostAt), sessTime(q.ends)
		}
		out = append(out, store.LostSession{Session: sess})
		if err := s.sync(ctx, r, true); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if len(out) > 0 {
		// The sessions are removed: return them even if a derived update
		// failed (their registry entries are tombstoned by rev later or
		// filtered as lost), so their jobs get onSessionLost.
		if firstErr != nil {
			s.log.Warn("expired sessions: derived update failed", "err", firstErr)
		}
		return out, nil
	}
	return out, firstErr
}

type claimQuad struct {
	member            string
	cid, lostAt, ends int64
}

func quads(v any) []claimQuad {
	l, _ := v.([]any)
	var out []claimQuad
	for i := 0; i+3 < len(l); i += 4 {
		q := claimQuad{}
		q.member, _ = l[i].(string)
		q.cid = atoi64(l[i+1])
		q.lostAt = atoi64(l[i+2])
		q.ends = atoi64(l[i+3])
		out = append(out, q)
	}
	return out
}

func atoi64(v any) int64 {
	s, _ := v.(string)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f, _ := strconv.ParseFloat(s, 64)
		return int64(f)
	}
	return n
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
