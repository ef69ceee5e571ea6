package redisstore

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/semaphored/semaphored/store"
)

// PutSemaphore creates or replaces a semaphore's config; a raised maxValue
// grants waiters in the same script. The tenant's list is updated after
// the script (a separate key, possibly another Cluster slot).
func (s *Store) PutSemaphore(ctx context.Context, p store.PutSemaphoreParams) (store.Semaphore, bool, error) {
	c := p.Config
	if err := c.Check(); err != nil {
		return store.Semaphore{}, false, err
	}
	var rl, rp int64
	if c.Rate != nil {
		rl, rp = c.Rate.Limit, ms(c.Rate.Period)
	}
	var rb, rm int64
	if r := c.Retry; r != nil {
		rb, rm = ms(r.Backoff), ms(r.MaxBackoff)
	}
	wr := ""
	if w := c.Workers; w != nil {
		wr = "0" + w.Channel
		if w.Fallback {
			wr = "1" + w.Channel
		}
	}
	res, err := s.run(ctx, fnPutSemaphore, p.Tenant, p.Name,
		p.Name, c.MaxValue, c.MaxValueScope, ms(c.LeaseTimeout), c.MaxAttempts,
		c.OnSessionLost, c.OnDeliveryError, string(c.Extra), rl, rp, wr,
		ms(c.Retention.Done), ms(c.Retention.Failed), rb, rm)
	if err != nil {
		return store.Semaphore{}, false, err
	}
	created := res[1].(int64) == 1
	sem := decodeSemaphore(p.Name, flatMap(res[2]))
	if err := s.client.ZAdd(ctx, s.keys.semList(p.Tenant), redis.Z{Member: p.Name}).Err(); err != nil {
		return store.Semaphore{}, false, translate(err, nil)
	}
	return sem, created, nil
}

// GetSemaphore reads one semaphore.
func (s *Store) GetSemaphore(ctx context.Context, tenant, name string) (store.Semaphore, error) {
	m, err := s.client.HGetAll(ctx, s.keys.sem(tenant, name)[kSem]).Result()
	if err != nil {
		return store.Semaphore{}, translate(err, store.ErrSemaphoreNotFound)
	}
	if len(m) == 0 {
		return store.Semaphore{}, store.ErrSemaphoreNotFound
	}
	return decodeSemaphore(name, m), nil
}

// ListSemaphores pages through a tenant's semaphores by name. The cursor
// is the last name of the previous page. A name whose semaphore vanished
// between the two reads is skipped.
func (s *Store) ListSemaphores(ctx context.Context, p store.ListParams) ([]store.Semaphore, string, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	start := "-"
	if p.Cursor != "" {
		start = "(" + p.Cursor
	}
	names, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: s.keys.semList(p.Tenant), Start: start, Stop: "+", ByLex: true, Count: int64(limit) + 1,
	}).Result()
	if err != nil {
		return nil, "", translate(err, nil)
	}
	next := ""
	if len(names) > limit {
		names = names[:limit]
		next = names[limit-1]
	}
	cmds := make([]*redis.MapStringStringCmd, len(names))
	if len(names) > 0 {
		_, err = s.client.Pipelined(ctx, func(pl redis.Pipeliner) error {
			for i, n := range names {
				cmds[i] = pl.HGetAll(ctx, s.keys.sem(p.Tenant, n)[kSem])
			}
			return nil
		})
		if err != nil {
			return nil, "", translate(err, nil)
		}
	}
	sems := make([]store.Semaphore, 0, len(names))
	for i, n := range names {
		if m := cmds[i].Val(); len(m) > 0 {
			sems = append(sems, decodeSemaphore(n, m))
		}
	}
	return sems, next, nil
}

// DeleteSemaphore removes a semaphore with its leases and waiters, keeping
// its fencing counter, then its index entries.
func (s *Store) DeleteSemaphore(ctx context.Context, tenant, name string) error {
	if err := s.runSem(ctx, fnDeleteSemaphore, tenant, name).Err(); err != nil {
		return translate(err, nil)
	}
	return s.unindex(ctx, tenant, name, true)
}

// SetSuspended suspends or resumes dispatching of queued jobs.
func (s *Store) SetSuspended(ctx context.Context, tenant, name string, suspended bool) (store.Semaphore, error) {
	flag := 0
	if suspended {
		flag = 1
	}
	res, err := s.run(ctx, fnSetSuspended, tenant, name, flag)
	if err != nil {
		return store.Semaphore{}, err
	}
	return decodeSemaphore(name, flatMap(res[1])), nil
}

// State returns a snapshot of usage, taken after dropping expired leases.
func (s *Store) State(ctx context.Context, tenant, name string) (store.SemaphoreState, error) {
	res, err := s.run(ctx, fnState, tenant, name)
	if err != nil {
		return store.SemaphoreState{}, err
	}
	maxValue, scope := res[1].(int64), res[2].(string)
	used, waiting, jobs := flatMap(res[3]), flatMap(res[4]), flatMap(res[6])
	st := store.SemaphoreState{Channels: map[string]store.ChannelState{}}
	st.InUse = atoi(used["t"])
	st.Waiting = res[5].(int64)
	// Queued counts the delayed jobs ("d", "d:<c>") too: they are scheduled.
	st.Queued, st.Inflight = atoi(jobs["q"])+atoi(jobs["d"]), atoi(jobs["i"])
	// Top-level Available: what a request naming no channel could take
	// (the shared remainder for scope total, the default channel's own
	// remainder for scope channel), as in the memory store.
	if scope == store.ScopeChannel {
		st.Available = max(0, maxValue-atoi(used["c:"+store.DefaultChannel]))
	} else {
		st.Available = max(0, maxValue-st.InUse)
	}
	chans := map[string]bool{}
	for f := range used {
		if len(f) > 2 && f[:2] == "c:" {
			chans[f[2:]] = true
		}
	}
	for f := range waiting {
		if len(f) > 2 && f[:2] == "c:" {
			chans[f[2:]] = true
		}
	}
	for f := range jobs {
		if len(f) > 2 && f[1] == ':' {
			chans[f[2:]] = true
		}
	}
	// The rate windows: {channel or "" (the whole semaphore), units, next
	// ms} each (state.lua).
	type window struct {
		used int64
		next time.Time
	}
	windows := map[string]window{}
	rate, _ := res[7].([]any)
	for i := 0; i+2 < len(rate); i += 3 {
		c, _ := rate[i].(string)
		u, _ := rate[i+1].(int64)
		nx, _ := rate[i+2].(int64)
		w := window{used: u}
		if nx > 0 {
			w.next = time.UnixMilli(nx).UTC()
		}
		windows[c] = w
		if c != "" {
			chans[c] = true
		}
	}
	// Each channel shows its capacity domain's window (the shared one for
	// scope total); the top level the default channel's with scope
	// channel, as for Available.
	domain := func(c string) window {
		if scope == store.ScopeChannel {
			return windows[c]
		}
		return windows[""]
	}
	top := domain(store.DefaultChannel)
	st.RateUsed, st.RateNextAt = top.used, top.next
	for c := range chans {
		cs := store.ChannelState{InUse: atoi(used["c:"+c]), Waiting: atoi(waiting["c:"+c]),
			Queued: atoi(jobs["q:"+c]) + atoi(jobs["d:"+c]), Inflight: atoi(jobs["i:"+c])}
		if scope == store.ScopeChannel {
			cs.Available = max(0, maxValue-cs.InUse)
		} else {
			cs.Available = max(0, maxValue-st.InUse)
		}
		w := domain(c)
		cs.RateUsed, cs.RateNextAt = w.used, w.next
		st.Channels[c] = cs
	}
	return st, nil
}

// flatMap turns a flat HGETALL reply from a script into a map.
func flatMap(v any) map[string]string {
	arr, _ := v.([]any)
	m := make(map[string]string, len(arr)/2)
	for i := 0; i+1 < len(arr); i += 2 {
		k, _ := arr[i].(string)
		val, _ := arr[i+1].(string)
		m[k] = val
	}
	return m
}

func atoi(s string) int64 {
	v, _ := strconv.ParseInt(s, 10, 64)
	return v
}

// decodeSemaphore reads the semaphore hash (fields set by put_semaphore.lua).
func decodeSemaphore(name string, m map[string]string) store.Semaphore {
	sem := store.Semaphore{
		Name: name,
		Config: store.SemaphoreConfig{
			MaxValue:        atoi(m["max"]),
			MaxValueScope:   m["scope"],
			LeaseTimeout:    time.Duration(atoi(m["lt"])) * time.Millisecond,
			MaxAttempts:     int(atoi(m["ma"])),
			OnSessionLost:   m["osl"],
			OnDeliveryError: m["ode"],
		},
		Suspended: m["susp"] == "1",
		CreatedAt: time.UnixMilli(atoi(m["ca"])).UTC(),
		UpdatedAt: time.UnixMilli(atoi(m["ua"])).UTC(),
	}
	if e := m["extra"]; e != "" {
		sem.Config.Extra = []byte(e)
	}
	if rb := atoi(m["rb"]); rb > 0 {
		sem.Config.Retry = &store.RetryPolicy{Backoff: time.Duration(rb) * time.Millisecond, MaxBackoff: time.Duration(atoi(m["rm"])) * time.Millisecond}
	}
	if wr, ok := m["wr"]; ok && wr != "" {
		sem.Config.Workers = &store.WorkerRoute{Fallback: wr[0] == '1', Channel: wr[1:]}
	}
	if rl := atoi(m["rl"]); rl > 0 {
		sem.Config.Rate = &store.RateLimit{Limit: rl, Period: time.Duration(atoi(m["rp"])) * time.Millisecond}
	}
	// A semaphore stored by an earlier release has no retention: the
	// defaults (as lib_state.lua's load_conf reads it).
	sem.Config.Retention = store.DefaultRetention
	if v, ok := m["rd"]; ok {
		sem.Config.Retention.Done = time.Duration(atoi(v)) * time.Millisecond
	}
	if v, ok := m["rf"]; ok {
		sem.Config.Retention.Failed = time.Duration(atoi(v)) * time.Millisecond
	}
	return sem
}
