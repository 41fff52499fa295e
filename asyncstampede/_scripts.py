"""The Lua scripts behind every multi-step Redis operation.

Each runs atomically on the server. redis-py may retry a command after a
connection error, so every script is safe to run twice: a retried call
recognises its own earlier effect instead of reporting a failure.
KEYS are always the names of one cache key (one hash slot, see ``_keys``).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "COMMIT", "EXTEND", "INVALIDATE", "RELEASE", "WRITE_IF_ABSENT"]

# KEYS: value, lock. ARGV: token, lock ms, read ("1" or "0").
# Returns {0, value} when the value exists and read was asked for; {1} when the
# lock is ours (a retried call finds its own token); {2, pttl} when another
# holder has it. One round trip serves both the read and the lock attempt, and
# a waiter learns exactly when the holder's lock runs out (its takeover timer).
ACQUIRE = """
if ARGV[3] == '1' then
  local v = redis.call('GET', KEYS[1])
  if v then return {0, v} end
end
local holder = redis.call('GET', KEYS[2])
if not holder then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {1}
end
if holder == ARGV[1] then return {1} end
local pttl = redis.call('PTTL', KEYS[2])
if pttl < 0 then pttl = tonumber(ARGV[2]) end
return {2, pttl}
"""

# KEYS: value, lock, channel. ARGV: token, envelope, ttl ms ("0": keep the
# value's TTL, for fail-safe re-stamps), publish value ("1"/"0").
# Writes only while the lock is still ours, so a holder whose lock expired or
# was taken over never overwrites a newer value. The message is published
# inside the script, after the write: a woken waiter always finds the value.
# Returns 1 on commit, 2 when a retry of this call had already committed, 0
# when the lock was lost.
COMMIT = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  if ARGV[3] == '0' then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  redis.call('DEL', KEYS[2])
  if ARGV[4] == '1' then
    redis.call('PUBLISH', KEYS[3], 'v' .. ARGV[2])
  else
    redis.call('PUBLISH', KEYS[3], 'd')
  end
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[2] then return 2 end
return 0
"""

# KEYS: lock, channel. ARGV: token.
# Frees the lock after a failed compute and tells waiters to retry at once
# (one of them becomes the next holder) instead of sleeping out the lock TTL.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'e')
  return 1
end
return 0
"""

# KEYS: lock. ARGV: token, lock ms. Extends only a lock that is still ours.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: value, channel. ARGV: envelope, ttl ms, publish value ("1"/"0").
# For a caller that gave up waiting and computed without the lock: it never
# replaces a value that is already there.
WRITE_IF_ABSENT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] == '1' then
    redis.call('PUBLISH', KEYS[2], 'v' .. ARGV[1])
  else
    redis.call('PUBLISH', KEYS[2], 'd')
  end
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS: value, lock, channel.
# Deleting the lock too means a compute that started before the invalidation
# cannot commit its (possibly outdated) result; waiters are told to retry.
INVALIDATE = """
redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', KEYS[3], 'e')
end
return 1
"""
