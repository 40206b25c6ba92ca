"""The Lua scripts of the Redis backend: every state change of a task is one script, so it is
atomic (a client killed at any instant leaves it whole or not started) and isolated from every
other client's.

Every script takes the same ``KEYS`` (see :class:`~tracemind.backend.redis.connection.Keys`)
and the key prefix as ``ARGV[1]``; a task's hash is ``<prefix>:task:<id>``. Times are
milliseconds of the caller's clock, passed in (never Redis's ``TIME``): lease deadlines and due
times follow the clock the backend was given.

A task's hash: ``record`` (JSON), ``state``, ``attempts`` (deliveries so far), ``due_ms``,
``key`` (the digest of its idempotency key, or empty), and by state ``entry`` (its stream entry
while ready or in flight), ``consumer``/``token``/``deadline_ms`` (in flight), ``cancel``
(a cancel was requested in flight), ``done``/``finished_ms`` (succeeded, dead, cancelled).

States: ``waiting`` (in the ``due`` sorted set: pending or delayed by its due time), ``ready``
(an undelivered entry of the stream), ``inflight`` (delivered to one consumer of the group; in
the ``leases`` sorted set by deadline), ``succeeded``, ``dead``, ``cancelled``, ``damaged``.
"""

from __future__ import annotations

GROUP = "tm"
"""The consumer group every consumer of a queue reads the stream through."""

KEY_ORDER = (
    "due",
    "ready",
    "leases",
    "done",
    "dead",
    "keyed",
    "audit",
    "events",
    "damaged",
    "tasks",
)
"""The ``KEYS`` of every script, in this order."""

_PRELUDE = """
local P = ARGV[1]
local DUE, READY, LEASES, DONE, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local KEYED, AUDIT, EVENTS, DAMAGED, TASKS = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local G = '{group}'
local function tkey(id) return P .. ':task:' .. id end
local function ikey(digest) return P .. ':key:' .. digest end
local function ensure_group()
  if redis.call('EXISTS', READY) == 0 then
    redis.call('XGROUP', 'CREATE', READY, G, '0', 'MKSTREAM')
  end
end
local function unstream(h)
  local e = redis.call('HGET', h, 'entry')
  if e then
    redis.call('XACK', READY, G, e)
    redis.call('XDEL', READY, e)
    redis.call('HDEL', h, 'entry')
  end
end
local function ring(what)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', 1000, '*', 'e', what)
end
local function leave_inflight(id, h)
  unstream(h)
  redis.call('ZREM', LEASES, id)
  redis.call('HDEL', h, 'consumer', 'deadline_ms')
end
local function finish(id, h, state, set, now, done)
  redis.call('ZREM', DUE, id)
  leave_inflight(id, h)
  redis.call('HDEL', h, 'cancel')
  redis.call('HSET', h, 'state', state, 'finished_ms', now, 'done', done)
  redis.call('ZADD', set, now, id)
end
-- Tops the stream up to `limit` undelivered entries with the tasks due longest (every entry
-- in flight has a lease: undelivered = XLEN - ZCARD leases, both O(1)). Kept short, so a task
-- that falls due waits behind at most `limit` others, and a deep backlog is never moved at once.
local function promote(now, limit)
  local ready = redis.call('XLEN', READY) - redis.call('ZCARD', LEASES)
  if ready >= limit then return 0 end
  local due = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit - ready)
  if #due == 0 then return 0 end
  ensure_group()
  for i = 1, #due, 2 do
    local id = due[i]
    local h = tkey(id)
    redis.call('ZREM', DUE, id)
    if redis.call('HGET', h, 'state') == 'waiting' then
      local e = redis.call('XADD', READY, '*', 't', id, 'd', due[i + 1])
      redis.call('HSET', h, 'state', 'ready', 'entry', e)
    end
  end
  return #due / 2
end
""".replace("{group}", GROUP)

ENQUEUE = """
-- ARGV: P, now_ms, key_ttl_ms, then (task_id, key digest or '', due_ms, record) per item.
-- Returns (task id, 1 if a duplicate else 0) per item. A key blocks while its task waits, is
-- ready or in flight, or succeeded less than key_ttl_ms ago; a dead, cancelled or removed
-- task's key does not.
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local function blocks(id)
  local s = redis.call('HMGET', tkey(id), 'state', 'finished_ms')
  if not s[1] or s[1] == 'dead' or s[1] == 'cancelled' or s[1] == 'damaged' then
    return false
  end
  if s[1] == 'succeeded' then return now - tonumber(s[2]) < ttl end
  return true
end
local out, seen, added = {}, {}, 0
for i = 4, #ARGV, 4 do
  local id, k, due, rec = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local dup = false
  if k ~= '' then
    dup = seen[k]
    if not dup then
      local holder = redis.call('GET', ikey(k))
      if holder and blocks(holder) then dup = holder end
    end
  end
  if dup then
    out[#out + 1] = dup
    out[#out + 1] = 1
  else
    local h = tkey(id)
    if redis.call('EXISTS', h) == 0 then
      redis.call('HSET', h, 'record', rec, 'state', 'waiting', 'attempts', 0, 'due_ms', due,
                 'key', k)
      redis.call('ZADD', DUE, due, id)
      redis.call('ZADD', TASKS, 0, id)
      added = added + 1
    end
    if k ~= '' then
      redis.call('SET', ikey(k), id)
      seen[k] = id
    end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
if added > 0 then ring('enqueue') end
return out
"""

LEASE = """
-- ARGV: P, now_ms, deadline_ms, consumer, token, promote_limit.
-- Returns (task id, attempt, record) or false when no task is due.
local now, deadline, consumer, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
promote(tonumber(now), tonumber(ARGV[6]))
if redis.call('EXISTS', READY) == 0 then return false end
for _ = 1, 1000 do
  local got = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', 1, 'STREAMS', READY, '>')
  if not got then return false end
  local eid, fields = got[1][2][1][1], got[1][2][1][2]
  local id = fields[2]
  local h = tkey(id)
  local s = redis.call('HMGET', h, 'state', 'entry', 'cancel')
  if s[1] == 'ready' and s[2] == eid then
    if s[3] == '1' then
      finish(id, h, 'cancelled', DONE, now, '')
    else
      local attempt = redis.call('HINCRBY', h, 'attempts', 1)
      redis.call('HSET', h, 'state', 'inflight', 'consumer', consumer, 'token', token,
                 'deadline_ms', deadline)
      redis.call('ZADD', LEASES, deadline, id)
      return {id, attempt, redis.call('HGET', h, 'record')}
    end
  else
    -- an entry whose task moved on (never left behind by these scripts; tolerated all the same)
    redis.call('XACK', READY, G, eid)
    redis.call('XDEL', READY, eid)
  end
end
return false
"""

PROMOTE = """
-- ARGV: P, now_ms, limit. Tops the stream up with due tasks (see promote); returns how many.
return promote(tonumber(ARGV[2]), tonumber(ARGV[3]))
"""

FORGET_CONSUMERS = """
-- ARGV: P, idle_ms. Deletes the group's consumers that hold no entry and were idle that long
-- (every worker process reads under its own name; a consumer holding nothing loses nothing).
if redis.call('EXISTS', READY) == 0 then return 0 end
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', READY, G)) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', READY, G, info['name'])
    removed = removed + 1
  end
end
return removed
"""

RENEW = """
-- ARGV: P, task_id, token, deadline_ms. 1 when renewed, 0 when the lease was lost.
local h = tkey(ARGV[2])
local s = redis.call('HMGET', h, 'state', 'token')
if s[1] ~= 'inflight' or s[2] ~= ARGV[3] then return 0 end
redis.call('HSET', h, 'deadline_ms', ARGV[4])
redis.call('ZADD', LEASES, ARGV[4], ARGV[2])
return 1
"""

ACK = """
-- ARGV: P, task_id, token, completion, now_ms. 1: acked under its lease; 2: acked after the
-- lease was lost (the task is succeeded all the same: it never runs again); 0: already
-- succeeded, or removed.
local id, token = ARGV[2], ARGV[3]
local h = tkey(id)
local s = redis.call('HMGET', h, 'state', 'token', 'key')
if not s[1] or s[1] == 'succeeded' then return 0 end
redis.call('ZREM', DEAD, id)
finish(id, h, 'succeeded', DONE, ARGV[5], ARGV[4])
if s[3] and s[3] ~= '' then redis.call('ZADD', KEYED, ARGV[5], id) end
if s[1] == 'inflight' and s[2] == token then return 1 end
return 2
"""

RETRY = """
-- ARGV: P, task_id, token, record, due_ms. 1 when the task waits again, 0 when the lease
-- was lost.
local id = ARGV[2]
local h = tkey(id)
local s = redis.call('HMGET', h, 'state', 'token')
if s[1] ~= 'inflight' or s[2] ~= ARGV[3] then return 0 end
leave_inflight(id, h)
redis.call('HSET', h, 'record', ARGV[4], 'state', 'waiting', 'due_ms', ARGV[5])
redis.call('ZADD', DUE, ARGV[5], id)
ring('retry')
return 1
"""

END_LEASE = """
-- ARGV: P, task_id, token, expected deadline_ms or '', outcome, entry, now_ms.
-- Ends one delivery: outcome 'dead' (entry is the DLQ entry), 'cancelled', or 'return' (back
-- to waiting, due now: a lapsed or abandoned lease). With an expected deadline, only a lease
-- still at that deadline (not renewed since the caller looked). A return of a task whose cancel
-- was requested cancels it. 1 when done, 0 when the lease was lost (or renewed).
local id, token, expected, outcome, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7]
local h = tkey(id)
local s = redis.call('HMGET', h, 'state', 'token', 'deadline_ms', 'cancel')
if s[1] ~= 'inflight' or s[2] ~= token then return 0 end
if expected ~= '' and s[3] ~= expected then return 0 end
if outcome == 'return' and s[4] == '1' then outcome = 'cancelled' end
if outcome == 'dead' then
  finish(id, h, 'dead', DEAD, now, ARGV[6])
elseif outcome == 'cancelled' then
  finish(id, h, 'cancelled', DONE, now, '')
else
  leave_inflight(id, h)
  redis.call('HSET', h, 'state', 'waiting', 'due_ms', now)
  redis.call('ZADD', DUE, now, id)
  ring('recover')
end
return 1
"""

DAMAGED_LEASE = """
-- ARGV: P, task_id, token. Sets aside a leased task whose record cannot be read.
local id = ARGV[2]
local h = tkey(id)
local s = redis.call('HMGET', h, 'state', 'token')
if s[1] ~= 'inflight' or s[2] ~= ARGV[3] then return 0 end
leave_inflight(id, h)
redis.call('HSET', h, 'state', 'damaged')
redis.call('SADD', DAMAGED, id)
return 1
"""

CANCEL = """
-- ARGV: P, task_id, now_ms. 'cancelled' (it was waiting or ready: it never runs), 'requested'
-- (in flight), the terminal state it had, or 'unknown'.
local id = ARGV[2]
local h = tkey(id)
local state = redis.call('HGET', h, 'state')
if not state then return 'unknown' end
if state == 'waiting' or state == 'ready' then
  finish(id, h, 'cancelled', DONE, ARGV[3], '')
  return 'cancelled'
end
if state == 'inflight' then
  redis.call('HSET', h, 'cancel', '1')
  return 'requested'
end
return state
"""

REQUEUE = """
-- ARGV: P, task_id, expected finished_ms, record, now_ms, audit key, audit copy.
-- A dead task waits again (attempts from 0, history kept); 1 for the one caller that moved it.
local id = ARGV[2]
local h = tkey(id)
local s = redis.call('HMGET', h, 'state', 'finished_ms')
if s[1] ~= 'dead' or s[2] ~= ARGV[3] then return 0 end
redis.call('ZREM', DEAD, id)
redis.call('HDEL', h, 'done', 'finished_ms', 'token', 'cancel')
redis.call('HSET', h, 'record', ARGV[4], 'state', 'waiting', 'attempts', 0, 'due_ms', ARGV[5])
redis.call('ZADD', DUE, ARGV[5], id)
redis.call('SET', ARGV[6], ARGV[7])
redis.call('ZADD', AUDIT, ARGV[5], ARGV[6])
ring('requeue')
return 1
"""

PURGE = """
-- ARGV: P, task_id, expected finished_ms, now_ms, audit key, audit copy. Removes a dead task
-- and its idempotency key (when the key still points at it); 1 for the one caller that did.
local id = ARGV[2]
local h = tkey(id)
local s = redis.call('HMGET', h, 'state', 'finished_ms', 'key')
if s[1] ~= 'dead' or s[2] ~= ARGV[3] then return 0 end
if s[3] and s[3] ~= '' and redis.call('GET', ikey(s[3])) == id then
  redis.call('DEL', ikey(s[3]))
end
redis.call('ZREM', DEAD, id)
redis.call('ZREM', TASKS, id)
redis.call('DEL', h)
redis.call('SET', ARGV[5], ARGV[6])
redis.call('ZADD', AUDIT, ARGV[4], ARGV[5])
return 1
"""

PRUNE = """
-- ARGV: P, kind ('results', 'keys' or 'dlq_audit'), cutoff_ms, limit. Removes up to limit
-- records of that kind older than the cutoff; returns how many.
local kind, cutoff, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local set = kind == 'results' and DONE or (kind == 'keys' and KEYED or AUDIT)
local old = redis.call('ZRANGEBYSCORE', set, '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
local removed = 0
for _, member in ipairs(old) do
  redis.call('ZREM', set, member)
  if kind == 'dlq_audit' then
    removed = removed + redis.call('DEL', member)
  else
    local h = tkey(member)
    local s = redis.call('HMGET', h, 'state', 'key')
    local finished = s[1] == 'succeeded' or s[1] == 'cancelled'
    if finished and s[2] and s[2] ~= '' and redis.call('GET', ikey(s[2])) == member then
      redis.call('DEL', ikey(s[2]))
      if kind == 'keys' then removed = removed + 1 end
    end
    if kind == 'results' and finished then
      redis.call('ZREM', KEYED, member)
      redis.call('ZREM', TASKS, member)
      redis.call('DEL', h)
      removed = removed + 1
    end
  end
end
return removed
"""

COUNTS = """#!lua flags=no-writes
-- ARGV: P, now_ms. (pending, delayed, inflight, oldest pending due_ms or -1, dead, damaged);
-- reads only.
local now = ARGV[2]
local ready, oldest = 0, -1
if redis.call('EXISTS', READY) == 1 then
  local delivered = redis.call('XPENDING', READY, G)[1]
  ready = redis.call('XLEN', READY) - delivered
  if ready > 0 then
    local last = '0-0'
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', READY)) do
      for i = 1, #group, 2 do
        if group[i] == 'last-delivered-id' then last = group[i + 1] end
      end
    end
    local head = redis.call('XRANGE', READY, '(' .. last, '+', 'COUNT', 1)
    if #head > 0 then oldest = tonumber(head[1][2][4]) end
  end
end
local due = redis.call('ZCOUNT', DUE, '-inf', now)
local delayed = redis.call('ZCOUNT', DUE, '(' .. now, '+inf')
local first = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if #first > 0 and (oldest < 0 or tonumber(first[2]) < oldest) then oldest = tonumber(first[2]) end
return {ready + due, delayed, redis.call('ZCARD', LEASES), oldest, redis.call('ZCARD', DEAD),
        redis.call('SCARD', DAMAGED)}
"""

SCRIPTS = {
    "enqueue": ENQUEUE,
    "lease": LEASE,
    "promote": PROMOTE,
    "forget_consumers": FORGET_CONSUMERS,
    "renew": RENEW,
    "ack": ACK,
    "retry": RETRY,
    "end_lease": END_LEASE,
    "damaged_lease": DAMAGED_LEASE,
    "cancel": CANCEL,
    "requeue": REQUEUE,
    "purge": PURGE,
    "prune": PRUNE,
    "counts": COUNTS,
}


def source(name: str) -> str:
    """The full source of script ``name`` (its shebang line first, then the shared prelude)."""
    body = SCRIPTS[name]
    if body.startswith("#!"):
        shebang, _, rest = body.partition("\n")
        return shebang + "\n" + _PRELUDE + rest
    return _PRELUDE + body
