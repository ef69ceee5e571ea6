package redisstore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// The sweep index (keys.sweep) is a sorted set of semaphores ("tenant/name")
// scored by the Redis time (ms) they must next be checked. Why no expiry
// is missed:
//
//   - A semaphore's due time is the earliest of its lease expiries and
//     waiter deadlines (lib_*.lua next_due). Job leases are leases like any
//     other (in holders), so the due time covers them. The semaphore's hash
//     keeps ix (lib_*.lua IX), at or below every such due time. A script that
//     adds or moves an item due before ix (acquire, extend, a grant or a
//     job dispatch inside any script, a job hold) lowers ix and returns it;
//     a script that finds ix passed (ix <= now), and every sweep.lua, sets
//     ix from the exact earliest due time and returns it; a returned time
//     is never later than now + sweepRecheck. The caller then sends ZADD
//     LT: a score only ever goes down, and a new member is added.
//   - The only thing that raises a score is a sweep's claim
//     (sweep_claim.lua: score := now + sweepRecheck). After a claim the
//     sweeper runs sweep.lua on the member and sends ZADD LT with the due
//     time that script returned.
//   - Take any live item x and the last claim C of its semaphore, and the
//     sweep.lua S run for it. Every value ix takes from S on is sent by a
//     ZADD LT that lands after C (S's own, then each lowering and each
//     recompute). If x existed at S, S's ix is at or below x's due time.
//     If x came later, either it lowered ix to its own due time, or ix was
//     already at or below it. Either way a ZADD LT at or below x's due
//     time lands after the last raise, so a sweep reaches x in time.
//   - A ZADD that never lands (the caller died after its script) leaves ix
//     lowered in Redis but not in the index. Since a reported time is at
//     most sweepRecheck ahead, ix passes within sweepRecheck, and the next
//     script on the semaphore recomputes it and reports it again; a member
//     already in the index is claimed at least every sweepRecheck anyway
//     (see below).
//   - If a sweeper dies between claim and update, the claim's score
//     (now + sweepRecheck) still brings the member back: the delay is
//     bounded by sweepRecheck, never infinite. An idle semaphore is left in
//     the index and re-checked every sweepRecheck: removing it could race
//     with a concurrent ZADD whose due time is later than the claim.
//   - Members are removed only when the semaphore is gone (DeleteSemaphore,
//     or a sweep finding it missing), by ZREM followed by an EXISTS check
//     that puts the member back (score 0, due now) if the semaphore exists
//     again: any item added after the delete has its creator's ZADD land
//     after the ZREM or the semaphore exist at the EXISTS check.
//
// Besides, every script drops expired leases of its semaphore before
// counting (and dispatches queued jobs at its end), and a waiting call's
// ~1 s poll grants freed permits itself, so a late sweep delays nothing a
// client is blocked on by more than that. Terminal jobs are deleted once
// their retention has passed by every batch.lua call and by sweep.lua,
// which reaches a semaphore at least every sweepRecheck since it stays in
// the index.

// indexDue lowers the semaphore's score in the sweep index to due (ms,
// Redis time) when due > 0. A failure is logged: the item is still found
// at the semaphore's current score, at worst when a script reports ix
// again (within sweepRecheck of the lost report, see above).
func (s *Store) indexDue(ctx context.Context, tenant, name string, due int64) {
	if due <= 0 {
		return
	}
	err := s.client.ZAddArgs(context.WithoutCancel(ctx), s.keys.sweep(), redis.ZAddArgs{
		LT:      true,
		Members: []redis.Z{{Score: float64(due), Member: semMember(tenant, name)}},
	}).Err()
	if err != nil {
		s.log.Warn("sweep index update failed", "semaphore", semMember(tenant, name), "err", err)
	}
}

// unindex removes a deleted semaphore from the sweep index (and, with
// list, from its tenant's list), then puts it back if it exists again by
// now (a concurrent PutSemaphore), so no live semaphore is left out.
func (s *Store) unindex(ctx context.Context, tenant, name string, list bool) error {
	m := semMember(tenant, name)
	_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, s.keys.sweep(), m)
		if list {
			p.ZRem(ctx, s.keys.semList(tenant), name)
		}
		return nil
	})
	if err != nil {
		return translate(err, nil)
	}
	n, err := s.client.Exists(ctx, s.keys.sem(tenant, name)[kSem]).Result()
	if err != nil || n == 0 {
		return translate(err, nil)
	}
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAddArgs(ctx, s.keys.sweep(), redis.ZAddArgs{LT: true, Members: []redis.Z{{Score: 0, Member: m}}})
		if list {
			p.ZAdd(ctx, s.keys.semList(tenant), redis.Z{Score: 0, Member: name})
		}
		return nil
	})
	return translate(err, nil)
}

// Sweep claims the semaphores due for a check and runs sweep.lua on each
// (pipelined), then records their next due times. Safe to run concurrently
// from many instances: a claimed member is not due for the others.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	expired := 0
	for range sweepMaxRounds {
		members, err := scriptSweepClaim.Run(ctx, s.client, []string{s.keys.sweep()},
			sweepBatch, ms(sweepRecheck)).StringSlice()
		if err != nil {
			return expired, translate(err, nil)
		}
		if len(members) == 0 {
			return expired, nil
		}
		n, err := s.sweepMembers(ctx, members)
		expired += n
		if err != nil || len(members) < sweepBatch {
			return expired, err
		}
	}
	return expired, nil
}

func (s *Store) sweepMembers(ctx context.Context, members []string) (int, error) {
	type item struct {
		tenant, name string
		cmd          *redis.Cmd
		due          int64
	}
	items := make([]item, 0, len(members))
	for _, m := range members {
		if t, n, ok := splitSemMember(m); ok {
			items = append(items, item{tenant: t, name: n})
		}
	}
	run := func(only func(*redis.Cmd) bool) error {
		_, err := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range items {
				if only != nil && !only(items[i].cmd) {
					continue
				}
				items[i].cmd = p.FCall(ctx, fnSweep, s.keys.sem(items[i].tenant, items[i].name),
					s.semArgs(items[i].name, nil)...)
			}
			return nil
		})
		return err
	}
	sent := time.Now() // before the pipeline: see rateTimer
	err := run(nil)
	if err != nil {
		retry := false
		for _, it := range items {
			retry = retry || isNoFunction(it.cmd.Err())
		}
		if retry {
			if lerr := s.loadLibrary(ctx); lerr != nil {
				return 0, translate(lerr, nil)
			}
			err = run(func(c *redis.Cmd) bool { return isNoFunction(c.Err()) })
		}
	}
	expired := 0
	var firstErr error
	var dues []item
	for _, it := range items {
		res, err := it.cmd.Slice()
		if err != nil {
			s.noteRefusal(it.tenant, it.name, err)
			if firstErr == nil {
				firstErr = translate(err, nil)
			}
			continue
		}
		// {'ok', expired, gone, rate delay, due, events, grants}
		s.handOverAll(it.tenant, res[6])
		s.emit(it.tenant, it.name, res[5])
		expired += int(res[1].(int64))
		if in, _ := res[3].(int64); in > 0 {
			s.rateTimer(it.tenant, it.name, sent, time.Duration(in)*time.Millisecond)
		}
		if res[2].(int64) == 1 {
			if err := s.unindex(ctx, it.tenant, it.name, false); err != nil && firstErr == nil {
				firstErr = err
			}
			continue
		}
		if due := res[4].(int64); due > 0 {
			it.due = due
			dues = append(dues, it)
		}
	}
	if len(dues) > 0 {
		_, perr := s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, it := range dues {
				p.ZAddArgs(ctx, s.keys.sweep(), redis.ZAddArgs{
					LT:      true,
					Members: []redis.Z{{Score: float64(it.due), Member: semMember(it.tenant, it.name)}},
				})
			}
			return nil
		})
		if perr != nil && firstErr == nil {
			firstErr = translate(perr, nil)
		}
	}
	if firstErr == nil && err != nil && !errors.Is(err, redis.Nil) {
		firstErr = translate(err, nil)
	}
	return expired, firstErr
}
