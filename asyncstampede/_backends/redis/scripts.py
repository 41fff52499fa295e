"""The Lua scripts behind every multi-step Redis operation.

Each runs atomically on the server. redis-py may retry a command after a
connection error, so every script is safe to run twice: a retried call
recognises its own earlier effect instead of reporting a failure.
KEYS are always the names of one cache key (one hash slot, see ``_keys``).

Every script that changes a lock others may wait on also tells its waiters
on the key's own channel (`channel_name_of`: the lock's name with ``w`` and
the database number for ``l``, so it shares the key's hash slot): the
envelope when a value landed (up to `TELL_MOST` bytes), an empty message
otherwise. Every call passes the database number as its last ARGV. Waiters
using the ``channel`` wake transport subscribe to it (see ``transports``);
the others watch the lock itself, so a publish nobody listens to costs the
server almost nothing. The publish is a ``pcall``: a user whose ACL forbids
it still commits. `render` gives the text for a publish command
(``PUBLISH``, or ``SPUBLISH`` on a Cluster). Two changes tell nobody,
because the waiters' own timers already cover them: a lock extended while
still ours, and a lock taken once the previous one expired (nobody publishes
an expiry; waiters look when their timer, set to the lock's expiry, fires).
An extend or commit that finds its lock lost does tell (a ``FLUSHALL``, a
takeover), so waiters look again.

A commit does not delete the lock: it leaves `COMMITTED` in its place for
`committed_ms` (at most the value's TTL). A process whose read missed just
before the commit and whose ``SET lock NX`` arrives just after it finds that
marker instead of a free lock, and reads the value instead of computing it
again; without the marker every new holder would have to read the value once
more after taking the lock, a round trip before every compute.
"""

from __future__ import annotations

__all__ = [
    "COMMIT",
    "COMMITTED",
    "COMMITTED_MS",
    "EXTEND",
    "INVALIDATE",
    "PUT",
    "RELEASE",
    "RESTAMP",
    "TAKE",
    "TAKE_OR_NAME",
    "WRITE_IF_ABSENT",
    "committed_ms",
    "render",
]

# What a commit leaves in the lock. Lock tokens are 16 random bytes, so a
# token is never equal to it.
COMMITTED = b"asyncstampede:committed"
# How long it stays: longer than any sane gap between a process's read and
# its lock attempt. A lock whose PTTL is at most this may be the marker (see
# RedisBackend._held): with a lock_ttl of 0.75 s or more, a live holder's
# lock never gets that low (it is extended at a third of its age), so only
# dying locks cost the extra read that tells them apart.
COMMITTED_MS = 500


def committed_ms(ttl_ms: int) -> int:
    """How long the marker of a commit stays: never longer than the value it marks."""
    return COMMITTED_MS if ttl_ms <= 0 else max(1, min(COMMITTED_MS, ttl_ms))


# Every script below starts with this: tell(message) publishes on the key's
# channel, built from the lock's name (always the last of KEYS) and the
# database number, which every call passes as its last ARGV: pub/sub knows
# no databases, and a waiter must never take another database's value.
# A value too big for a subscriber's output buffer (Redis drops a pub/sub
# client past 32 MB by default) is not sent: its waiters read it instead.
_TELL = """
local function tell(message)
  if #message > TELL_MOST then message = '' end
  local channel = string.sub(KEYS[#KEYS], 1, -2) .. 'w' .. ARGV[#ARGV]
  redis.pcall('PUBLISH_COMMAND', channel, message)
end
"""

# The largest envelope a commit publishes itself (bytes).
TELL_MOST = 512 * 1024


def render(script: str, publish: str = "PUBLISH") -> str:
    """Return *script*'s text for publishing with *publish* (``PUBLISH`` or ``SPUBLISH``)."""
    if publish not in ("PUBLISH", "SPUBLISH"):
        raise ValueError(f"publish must be PUBLISH or SPUBLISH, not {publish!r}")
    text = _TELL.replace("TELL_MOST", str(TELL_MOST)) + script
    return text.replace("PUBLISH_COMMAND", publish)


# KEYS: value, lock. ARGV: token, envelope, ttl ms (always positive: no key
# is ever written without an expiry), COMMITTED, its ms.
# Writes only while the lock is still ours, so a holder whose lock expired or
# was taken over never overwrites a newer value. The value is written before
# the lock is replaced by the marker, in one script: a waiter woken by that
# change always finds the value.
# Returns 1 on commit, 2 when a retry of this call had already committed, 0
# when the lock was lost.
COMMIT = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  tell(ARGV[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[2] then return 2 end
tell('')
return 0
"""

# KEYS: value, lock. ARGV: token, envelope, longest ttl ms, COMMITTED, its ms.
# The fail-safe's re-stamp of a stale value: like COMMIT, but it never makes
# the value outlive its current expiry (a reader with a longer stale window
# than the writer's must not stretch the writer's), and it never brings back
# a value that has gone (expired, evicted, invalidated): then it only frees
# the lock. Returns 1 when written, 2 when a retry of this call had written,
# 3 when the value had gone, 0 when the lock was lost.
RESTAMP = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  local left = redis.call('PTTL', KEYS[1])
  if left <= 0 then
    redis.call('DEL', KEYS[2])
    tell('')
    return 3
  end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', math.min(left, tonumber(ARGV[3])))
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  tell(ARGV[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[2] then return 2 end
return 0
"""

# KEYS: lock. ARGV: token.
# Frees the lock after a failed compute; its waiters see it go and retry at
# once (one of them becomes the next holder) instead of sleeping out the TTL.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  tell('')
  return 1
end
return 0
"""

# KEYS: lock. ARGV: token, lock ms, COMMITTED.
# Takes the lock when it is free or only the marker of a commit whose value
# has gone since (evicted, or expired sooner than the marker). Returns nil
# when the lock is now ours (also for a retry of this call), else the holder's
# token, like SET NX GET.
TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[3] or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return holder
"""

# KEYS: lock. ARGV: token, lock ms.
# ``SET lock token NX PX ms GET`` for Redis before 7.0, which rejects NX
# with GET: takes the lock when it is free and returns nil, else returns the
# holder's token (the marker of a commit included).
TAKE_OR_NAME = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return holder
"""

# KEYS: lock. ARGV: token, lock ms. Extends only a lock that is still ours.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
tell('')
return 0
"""

# KEYS: value, lock. ARGV: envelope, ttl ms, the lock's value when the compute
# started ("" for none).
# For a caller that gave up waiting and computed without the lock: it never
# replaces a value that is already there, and writes nothing once the lock
# has changed since its compute started (an invalidation deletes it: a value
# computed from data older than that must not land after it). The lock, if
# any, is re-set to its own remaining TTL: nothing changes for its holder,
# but its waiters are told to look, and find this value.
WRITE_IF_ABSENT = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local left = redis.call('PTTL', KEYS[2])
  if left > 0 then
    redis.call('PEXPIRE', KEYS[2], left)
    tell(ARGV[1])
  end
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS: value, lock. ARGV: envelope, ttl ms (positive), COMMITTED, its ms.
# A write-through (``Stampede.set``): the value is written whoever holds the
# lock, and the lock becomes the marker of a commit, so a compute that
# started before cannot commit its (older) result over it, and its waiters
# are told, with the value. Safe to run twice.
PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
tell(ARGV[1])
return 1
"""

# KEYS: value, lock.
# Deleting the lock too means a compute that started before the invalidation
# cannot commit its (possibly outdated) result; its waiters are told to look.
INVALIDATE = """
if redis.call('DEL', KEYS[1], KEYS[2]) > 0 then tell('') end
return 1
"""
