package redisstore

import (
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/semaphored/semaphored/internal/testredis"
)

// TestLibCache runs lib_cache.lua's helpers in a script of their own and
// checks what they read back and what reaches Redis, before and after the
// flush: the write-back cache the whole function library stands on.
func TestLibCache(t *testing.T) {
	c := testredis.Client(t)
	ctx := t.Context()
	k, other := testredis.Prefix(t)+"{c}:h", testredis.Prefix(t)+"{c}:o"
	require.NoError(t, c.HSet(ctx, k, "old", "1", "gone", "x", "five", "5").Err())
	require.NoError(t, c.HSet(ctx, other, "f", "v").Err())

	script := redis.NewScript(readLua("lib_cache.lua") + `
cache_reset()
local k, o, out = KEYS[1], KEYS[2], {}
local function put(name, v) out[#out + 1] = name; out[#out + 1] = tostring(v) end
hset(k, 'new', 'n')
put('cached new', hget(k, 'new'))
put('redis new before flush', redis.call('HGET', k, 'new'))
hdel(k, 'gone')
put('cached gone', hget(k, 'gone'))
put('exists gone', hexists(k, 'gone'))
put('redis gone before flush', redis.call('HGET', k, 'gone'))
put('incr missing', hincrby(k, 'cnt', 3))
put('incr five', hincrby(k, 'five', -2))
put('setnx old', hsetnx(k, 'old', 'z'))
put('setnx fresh', hsetnx(k, 'fresh', 'y'))
local m = hmget(k, 'old', 'new', 'gone', 'nothing')
put('hmget', table.concat({tostring(m[1]), tostring(m[2]), tostring(m[3]), tostring(m[4])}, ','))
hset(k, 'big', 1764640000123)
hset(k, 'half', 0.5)
put('hdel1 fresh', hdel1(k, 'fresh'))
put('hdel1 fresh again', hdel1(k, 'fresh'))
local all = hall('HGETALL', k)
put('hgetall fields', #all / 2)
hset(o, 'g', 'w')
hdrop('DEL', o)
put('after drop', hget(o, 'g'))
for i = 1, 5000 do hset(k, 'm' .. i, i) end
put('redis fields mid-call', redis.call('HLEN', k))
hflush()
put('redis fields after flush', redis.call('HLEN', k))
return out
`)
	res, err := script.Run(ctx, c, []string{k, other}).StringSlice()
	require.NoError(t, err)
	got := map[string]string{}
	for i := 0; i+1 < len(res); i += 2 {
		got[res[i]] = res[i+1]
	}
	require.Equal(t, "n", got["cached new"])
	require.Equal(t, "false", got["redis new before flush"], "writes wait for the flush")
	require.Equal(t, "false", got["cached gone"])
	require.Equal(t, "0", got["exists gone"])
	require.Equal(t, "x", got["redis gone before flush"])
	require.Equal(t, "3", got["incr missing"])
	require.Equal(t, "3", got["incr five"])
	require.Equal(t, "0", got["setnx old"])
	require.Equal(t, "1", got["setnx fresh"])
	require.Equal(t, "1,n,false,false", got["hmget"], "cached and uncached fields together")
	require.Equal(t, "1", got["hdel1 fresh"])
	require.Equal(t, "0", got["hdel1 fresh again"])
	// old, five, new, cnt, big, half (gone and fresh deleted)
	require.Equal(t, "6", got["hgetall fields"], "a whole-hash read sees the cached writes")
	require.Equal(t, "false", got["after drop"], "a deleted key forgets its cached fields")
	require.Equal(t, "4102", got["redis fields mid-call"], "4,096 pending writes are sent mid-call")
	require.Equal(t, "5006", got["redis fields after flush"])

	h, err := c.HGetAll(ctx, k).Result()
	require.NoError(t, err)
	require.Equal(t, "1764640000123", h["big"], "an integer is stored as Redis would format it")
	require.Equal(t, "0.5", h["half"])
	require.Equal(t, "3", h["five"])
	require.NotContains(t, h, "gone")
	require.Equal(t, "5000", h["m5000"])
	require.Zero(t, c.Exists(ctx, other).Val())
}
