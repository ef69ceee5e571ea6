-- set_sub.lua: set or remove one entry of the semaphore's subscriber
-- registry (a session subscribed, unsubscribed, was lost or resumed), then
-- dispatch the queued jobs its room lets go (a function of the function
-- library (lib_*.lua)). The registry lives beside a semaphore that does
-- not exist (yet): a subscription may come first.
--
-- KEYS: the 24 semaphore keys listed in lib_state.lua.
-- ARGV[1..4] as in lib_state.lua
-- ARGV[5] field "<session>\0<channel>", ARGV[6] value "<prefetch> <node>"
-- (node '' while the session is lost), '' to remove the entry
--
-- Returns {'ok', due, events, grants}.
layout_guard()
if ARGV[6] == '' then
  redis.call('HDEL', K_SUBS, ARGV[5])
else
  redis.call('HSET', K_SUBS, ARGV[5], ARGV[6])
end
local conf = load_conf()
if not conf then return {'ok', 0, 0, {{}, {}}, {}} end
local now = now_ms()
expire(conf, now)
if conf.wr then dispatch(conf, now, nil, true) end
return done(conf, now, {'ok'}, true)
