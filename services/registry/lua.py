"""Lua scripts that change the catalog atomically inside Redis.

Every write to an agent (its hash, load hash, index sets, the health, agents
and deadline sorted sets, the status counts and the event stream) happens in
one script, so a reader never sees half an update and two registry replicas
never interleave inside one. Scripts read the clock with Redis `TIME` (the
runtime's CLOCK_PRELUDE, `now_ms`), so all replicas share one clock. The
reaper's sweep is fenced on the reaper lease (agentmesh.runtime.lease). Key
names are built from the prefix passed in ARGV[1] (see
services/registry/README.md for the schema). The prefix carries the catalog's
hash tag (`am:reg:{catalog}:`), so every key a script touches is in one slot;
KEYS[1] of every catalog script is the catalog's revision counter (`<p>rev`),
which is what routes the script to that slot's master on Redis Cluster.

ARGV[2] of every agent script is a JSON config:
{stale_factor, stale_penalty, ttl_factor, slow_response_ms, slow_penalty,
 cpu_threshold, cpu_penalty, active_threshold, inactive_threshold,
 flap_threshold, event_step, maxlen, dereg_ms}.
"""

from __future__ import annotations

from agentmesh.runtime.lease import CLOCK_PRELUDE, LEASE_LUA, fence_check

PRELUDE = CLOCK_PRELUDE + r"""
local p = ARGV[1]
local c = cjson.decode(ARGV[2])

local function fmt(x) return string.format('%.6f', x) end

local function emit(typ, id, prev, reason, pb, status, health, now)
  local rev = redis.call('INCR', p .. 'rev')
  redis.call('XADD', p .. 'events', 'MAXLEN', '~', c.maxlen, rev .. '-0',
    't', typ, 'id', id, 'prev', prev, 'reason', reason, 'pb', pb,
    'status', status, 'health', health, 'ts', now)
  return rev
end

local function index(id, caps, stypes, tags, op)
  for _, v in ipairs(cjson.decode(caps)) do redis.call(op, p .. 'idx:cap:' .. v, id) end
  for _, v in ipairs(cjson.decode(stypes)) do redis.call(op, p .. 'idx:stype:' .. v, id) end
  for _, v in ipairs(cjson.decode(tags)) do redis.call(op, p .. 'idx:tag:' .. v, id) end
end

local function score(age, interval, err, rt, cpu)
  if age > c.ttl_factor * interval then return 0.0 end
  local s = 1.0
  if age > c.stale_factor * interval then s = s * c.stale_penalty end
  if err < 0 then err = 0 elseif err > 1 then err = 1 end
  s = s * (1 - err)
  if rt > c.slow_response_ms then s = s * c.slow_penalty end
  if cpu > c.cpu_threshold then s = s * c.cpu_penalty end
  return s
end

local function status_for(s)
  if s >= c.active_threshold then return 'ACTIVE' end
  if s >= c.inactive_threshold then return 'DEGRADED' end
  return 'INACTIVE'
end

-- Recompute health from recency and load, apply flap damping, store, and
-- emit HEALTH_CHANGED on a status change or a move of at least event_step.
local function evaluate(id, now)
  local ak = p .. 'agent:' .. id
  local f = redis.call('HMGET', ak, 'status', 'pending', 'streak', 'health_evt',
    'last_heartbeat_ms', 'interval_ms')
  local status, pending, streak = f[1], f[2] or '', tonumber(f[3] or '0') or 0
  local hevt = tonumber(f[4] or '1') or 1
  local age = now - tonumber(f[5])
  local interval = tonumber(f[6])
  local l = redis.call('HMGET', p .. 'load:' .. id, 'error_rate', 'response_time_ms', 'cpu_percent')
  local h = score(age, interval, tonumber(l[1] or '0') or 0, tonumber(l[2] or '0') or 0,
    tonumber(l[3] or '0') or 0)
  local cand = status_for(h)
  local new_status = status
  if cand == status then
    pending = ''; streak = 0
  else
    if cand == pending then streak = streak + 1 else pending = cand; streak = 1 end
    if streak >= c.flap_threshold then new_status = cand; pending = ''; streak = 0 end
  end
  local hs = fmt(h)
  local rev = 0
  redis.call('HSET', ak, 'health', hs, 'pending', pending, 'streak', streak)
  if new_status ~= status or math.abs(h - hevt) >= c.event_step then
    if new_status ~= status then
      redis.call('HINCRBY', p .. 'counts', status, -1)
      redis.call('HINCRBY', p .. 'counts', new_status, 1)
    end
    local pb = redis.call('GET', p .. 'pb:' .. id) or ''
    rev = emit('HEALTH_CHANGED', id, status, '', pb, new_status, hs, now)
    redis.call('HSET', ak, 'status', new_status, 'health_evt', hs, 'rev', rev)
  end
  redis.call('ZADD', p .. 'health', hs, id)
  return {new_status, hs, interval, rev}
end

local function deregister(id, reason, now)
  local ak = p .. 'agent:' .. id
  local f = redis.call('HMGET', ak, 'status', 'health', 'caps', 'stypes', 'tags')
  if not f[1] then return nil end
  local pb = redis.call('GET', p .. 'pb:' .. id) or ''
  index(id, f[3], f[4], f[5], 'SREM')
  redis.call('HINCRBY', p .. 'counts', f[1], -1)
  redis.call('ZREM', p .. 'agents', id)
  redis.call('ZREM', p .. 'health', id)
  redis.call('ZREM', p .. 'deadline', id)
  redis.call('DEL', ak, p .. 'load:' .. id, p .. 'pb:' .. id)
  local rev = emit('DEREGISTERED', id, f[1], reason, pb, 'DECOMMISSIONED', f[2], now)
  return {pb, f[1], f[2], rev, now}
end
"""

#: ARGV: p, cfg, id, pb, endpoint, location, version, interval_ms, caps, stypes, tags (JSON lists).
#: Returns {created, revision, status, health, registered_ms, updated_ms, now_ms}.
REGISTER = PRELUDE + r"""
local id = ARGV[3]
local ak = p .. 'agent:' .. id
local now = now_ms
local old = redis.call('HMGET', ak, 'status', 'caps', 'stypes', 'tags', 'health',
  'registered_ms', 'updated_ms', 'rev')
local created = not old[1]
local old_pb = redis.call('GET', p .. 'pb:' .. id)
local status, health, reg_ms, upd_ms
if created then
  status = 'ACTIVE'; health = fmt(1.0); reg_ms = now; upd_ms = now
  redis.call('HSET', ak, 'status', status, 'health', health, 'pending', '', 'streak', 0,
    'health_evt', health, 'registered_ms', now)
  redis.call('HINCRBY', p .. 'counts', status, 1)
  redis.call('ZADD', p .. 'agents', 0, id)
  redis.call('ZADD', p .. 'health', health, id)
else
  index(id, old[2], old[3], old[4], 'SREM')
  status = old[1]; health = old[5]; reg_ms = tonumber(old[6]); upd_ms = tonumber(old[7])
end
local changed = created or old_pb ~= ARGV[4]
if changed then upd_ms = now end
redis.call('SET', p .. 'pb:' .. id, ARGV[4])
redis.call('HSET', ak, 'endpoint', ARGV[5], 'location', ARGV[6],
  'version', ARGV[7], 'interval_ms', ARGV[8], 'caps', ARGV[9], 'stypes', ARGV[10],
  'tags', ARGV[11], 'last_heartbeat_ms', now, 'updated_ms', upd_ms)
index(id, ARGV[9], ARGV[10], ARGV[11], 'SADD')
redis.call('ZADD', p .. 'deadline', now + c.stale_factor * tonumber(ARGV[8]), id)
local rev
if changed then
  rev = emit(created and 'REGISTERED' or 'UPDATED', id, created and '' or status, '',
    ARGV[4], status, health, now)
  redis.call('HSET', ak, 'rev', rev)
else
  rev = tonumber(old[8])
end
if not created then
  -- Registering counts as a heartbeat.
  local r = evaluate(id, now)
  status = r[1]; health = r[2]
  rev = tonumber(redis.call('HGET', ak, 'rev'))
end
return {created and 1 or 0, rev, status, health, reg_ms, upd_ms, now}
"""

#: ARGV: p, cfg, id, has_load ("1"/"0"), cpu, mem, err, rt, queue, capacity, processing_ms.
#: Returns {0} for an unknown agent, else {1, status, health, interval_ms,
#: revision of the HEALTH_CHANGED event it emitted or 0}.
HEARTBEAT = PRELUDE + r"""
local id = ARGV[3]
local ak = p .. 'agent:' .. id
local interval = redis.call('HGET', ak, 'interval_ms')
if not interval then return {0} end
local now = now_ms
if ARGV[4] == '1' then
  redis.call('HSET', p .. 'load:' .. id, 'cpu_percent', ARGV[5], 'memory_percent', ARGV[6],
    'error_rate', ARGV[7], 'response_time_ms', ARGV[8], 'queue_size', ARGV[9],
    'capacity', ARGV[10], 'processing_time_ms', ARGV[11], 'updated_ms', now)
end
redis.call('HSET', ak, 'last_heartbeat_ms', now)
redis.call('ZADD', p .. 'deadline', now + c.stale_factor * tonumber(interval), id)
local r = evaluate(id, now)
return {1, r[1], r[2], r[3], r[4]}
"""

#: ARGV: p, cfg, then 9 values per heartbeat: id, has_load, cpu, mem, err, rt,
#: queue, capacity, processing_ms. Returns a flat list of 4 values per
#: heartbeat: status ("" for an unknown agent), health, interval_ms, event
#: revision or 0. One call
#: per batch keeps HeartbeatStream ingest off the per-command overhead.
HEARTBEAT_BATCH = PRELUDE + r"""
local out = {}
local now = now_ms
for i = 3, #ARGV, 9 do
  local id = ARGV[i]
  local ak = p .. 'agent:' .. id
  local interval = redis.call('HGET', ak, 'interval_ms')
  if not interval then
    table.insert(out, ''); table.insert(out, ''); table.insert(out, 0); table.insert(out, 0)
  else
    if ARGV[i + 1] == '1' then
      redis.call('HSET', p .. 'load:' .. id, 'cpu_percent', ARGV[i + 2],
        'memory_percent', ARGV[i + 3], 'error_rate', ARGV[i + 4],
        'response_time_ms', ARGV[i + 5], 'queue_size', ARGV[i + 6],
        'capacity', ARGV[i + 7], 'processing_time_ms', ARGV[i + 8], 'updated_ms', now)
    end
    redis.call('HSET', ak, 'last_heartbeat_ms', now)
    redis.call('ZADD', p .. 'deadline', now + c.stale_factor * tonumber(interval), id)
    local r = evaluate(id, now)
    table.insert(out, r[1]); table.insert(out, r[2]); table.insert(out, r[3])
    table.insert(out, r[4])
  end
end
return out
"""

#: ARGV: p, cfg, id, reason. Returns nil or {pb, previous status, health, revision, now_ms}.
DEREGISTER = PRELUDE + r"""
return deregister(ARGV[3], ARGV[4], now_ms)
"""

#: Lease record of the reaper (agentmesh.runtime.lease), after the prefix.
REAPER_LEASE = "reaper:lease"
#: Fencing-token counter of the reaper lease, after the prefix.
REAPER_FENCE = "reaper:fence"

#: ARGV: p, cfg, owner, fencing token, id... Evaluates overdue agents and
#: expires dead ones, only while `owner` holds the reaper lease with that token
#: (so flap streaks are counted once per sweep even with several replicas).
#: Returns a flat list {id, outcome, ...}; outcome is a status or EXPIRED; or
#: the FENCED error reply when the lease is not ours (nothing written).
SWEEP = PRELUDE + LEASE_LUA + fence_check(
    record=f"p .. '{REAPER_LEASE}'", owner="ARGV[3]", token="ARGV[4]"
) + r"""
local now = now_ms
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', p .. 'agent:' .. id, 'last_heartbeat_ms', 'interval_ms')
  if not f[1] then
    redis.call('ZREM', p .. 'deadline', id)
  else
    local age = now - tonumber(f[1])
    if age >= c.dereg_ms then
      deregister(id, 'expired', now)
      table.insert(out, id); table.insert(out, 'EXPIRED')
    elseif age > c.stale_factor * tonumber(f[2]) then
      local r = evaluate(id, now)
      table.insert(out, id); table.insert(out, r[1])
    end
  end
end
return out
"""

#: ARGV: p, cfg, age_ms, interval_ms, error_rate, response_time_ms, cpu_percent.
#: Returns the health score as a string; used by tests to check the Lua
#: formula against agentmesh.server.registry.health.
HEALTH_PROBE = PRELUDE + r"""
return fmt(score(tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7])))
"""
