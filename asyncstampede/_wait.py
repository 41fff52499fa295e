"""Waiting for another holder: returns a value, a takeover, a timeout or a Redis failure.

A waiter never computes: what to do with a takeover (lead), a timeout
(compute unlocked, or raise) or a failure (fail open) is the miss driver's
call (``_resolve``). Every value found is judged by the caller's own
freshness verdict before it is handed over.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, final

import anyio

from ._backends.base import Acquired, Held, Hit
from ._backends.interest import Interest
from ._backends.messages import Signal, Value
from ._events import StaleServed, Takeover, Timeout, Waited, WakeUp
from ._exceptions import BackendError
from ._runtime import Request, Runtime, value_of

__all__ = [
    "LAPSE_SLACK",
    "RESOLVED",
    "TIMED_OUT",
    "Served",
    "WaitOutcome",
    "takeover_delay",
    "wait",
]


@final
@dataclass(frozen=True, slots=True)
class Served:
    """A value for the callers: found after a wake-up, or the stale fallback."""

    value: Any


@final
class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


TIMED_OUT: Final = _Marker("TIMED_OUT")  # wait_timeout passed, no fallback to serve
RESOLVED: Final = _Marker("RESOLVED")  # a value message already settled the flight

WaitOutcome: TypeAlias = Served | Acquired | BackendError | _Marker

# After a wake-up that changed nothing about the lock, the next look waits
# this long, doubling with each such wake-up in a row, up to the maximum:
# the cost of a wait stays bounded (a few dozen commands) whatever wakes it,
# and a real change behind such noise is seen at most this much later.
_IDLE_BACKOFF = 0.001
_IDLE_BACKOFF_MAX = 0.25

# A lock taken this close to its holder's expiry as last seen, or later, is
# a takeover: it ran out (PTTL is in whole milliseconds, and the expiry was
# reckoned when the reply came, not when Redis read it).
LAPSE_SLACK: Final = 0.005

# Where nothing can push a lock's changes (Redis refused client tracking, or
# the watching connections are down), a waiter looks by itself: first after
# this long, then after twice as long as the time before, up to a quarter of
# the lock's TTL. A value is seen at most about as late again as it took to
# come, and a wait costs a handful of looks (two commands each), never a
# fixed short interval.
_POLL_FIRST = 0.01


async def wait(
    rt: Runtime, req: Request, token: bytes, held: Held, interest: Interest, seen: bytes | None
) -> WaitOutcome:
    """Wait for another holder's commit: a change of its lock, the takeover timer, or the bound.

    *interest* was registered before the lock was found *held*, so no
    change since is missed. Each change is a reason to look again, not the
    answer: a lock is also changed by its extension, or by a takeover.
    *seen* is a stored payload already found unservable.

    Returns:
        `Served` (a value, or the stale fallback after ``soft_timeout`` or
        ``wait_timeout``), `Acquired` (the lock is ours: a takeover),
        `TIMED_OUT`, `RESOLVED`, or the `BackendError` Redis failed with.

    Raises:
        ComputeFailedError: the value found is a cached failure.

    """
    rt.counters.remote_waits += 1
    rt.counters.waiting += 1
    started = time.perf_counter()
    outcome: WaitOutcome | None = None
    try:
        outcome = await _wait(rt, req, token, held, interest, seen)
        return outcome
    finally:
        rt.counters.waiting -= 1
        if req.looks is not None:
            req.looks.left(req.key, ours=isinstance(outcome, Acquired))
        if rt.hooked and outcome is not None:
            rt.hooks.emit(
                Waited(rt.namespace, req.key, time.perf_counter() - started, _named(outcome))
            )


def _named(outcome: WaitOutcome) -> Literal["value", "lock", "timeout", "failed", "resolved"]:
    if isinstance(outcome, Served):
        return "value"
    if isinstance(outcome, Acquired):
        return "lock"
    if isinstance(outcome, BackendError):
        return "failed"
    return "resolved" if outcome is RESOLVED else "timeout"


async def _wait(
    rt: Runtime, req: Request, token: bytes, held: Held, interest: Interest, seen: bytes | None
) -> WaitOutcome:
    counters = rt.counters
    now = anyio.current_time
    started = now()
    deadline = started + rt.settings.wait_timeout
    soft = req.policy.soft_timeout if req.stale is not None else None
    expires = started + held.pttl_ms / 1000  # when the holder's lock runs out
    idle_wakes = 0  # wake-ups in a row after which the lock was as it had been
    polls = 0  # looks of our own while nothing pushes the lock's changes
    poll_most = rt.settings.lock_ms / 4000
    timer = takeover_delay(held.pttl_ms)
    if not held.watched:
        timer = min(timer, _POLL_FIRST)
    looks = req.looks
    if looks is not None:
        looks.waits(req.key, interest, expires)
    while True:
        if soft is not None and now() - started >= soft:
            stale = req.usable_stale()
            if stale is not None:
                counters.soft_timeouts += 1
                if rt.hooked:
                    rt.hooks.emit(Timeout(rt.namespace, req.key, "soft"))
                    rt.hooks.emit(StaleServed(rt.namespace, req.key, "soft-timeout"))
                return Served(stale.value)
            soft = None  # its stale window closed meanwhile
        remaining = deadline - now()
        if remaining <= 0:
            counters.wait_timeouts += 1
            stale = req.usable_stale()
            rt.problems.say(
                logging.WARNING,
                f"waiting for {req.key!r} passed wait_timeout={rt.settings.wait_timeout}s "
                "(its holder is still computing, or its wake-ups do not arrive)",
                kind="wait timeout",
                key=req.key,
            )
            if rt.hooked:
                rt.hooks.emit(Timeout(rt.namespace, req.key, "wait"))
                if stale is not None:
                    rt.hooks.emit(StaleServed(rt.namespace, req.key, "wait-timeout"))
            return TIMED_OUT if stale is None else Served(stale.value)
        within = min(timer, remaining)
        if soft is not None:
            within = min(within, max(0.0, started + soft - now()))
        message = await interest.wait(within)
        if interest.resolved:
            return RESOLVED
        if idle_wakes and message is not None:
            # The last wake-ups changed nothing (see _IDLE_BACKOFF): wait a
            # little, doubling, before looking again; news meanwhile is kept.
            pause = min(_IDLE_BACKOFF * 2 ** min(idle_wakes, 16), _IDLE_BACKOFF_MAX)
            until = min(expires, deadline, math.inf if soft is None else started + soft)
            await anyio.sleep(max(0.0, min(pause, until - now())))
            if interest.resolved:
                return RESOLVED
        if message is not None and message is not Signal.RECHECK and type(message) is not Value:
            # (A value message reaches this task only when the flight's
            # handler could not use it: corrupt or too old. Look again.)
            counters.wakeups += 1
            if rt.hooked:
                rt.hooks.emit(WakeUp(rt.namespace, req.key))
        if message is None and now() >= deadline:
            continue
        # ABSENT: the listener read the value just after the change and
        # found none, so only the lock is in question.
        if looks is not None:
            looks.began(req.key)
        state = await rt.acquire(
            req, token, read=message is not Signal.ABSENT, seen=seen, recheck=True
        )
        if looks is not None and not isinstance(state, Acquired):
            looks.ended(req.key)  # (one that made the lock ours ends as its key computes)
        if isinstance(state, BackendError):
            return state
        if isinstance(state, Hit):
            found = rt.decode(state.payload, req)
            if found is not None and req.accepts(found):
                return Served(value_of(found))
            # Corrupt, or too old for this call (the stale value it
            # started from): ask about the lock alone, right away.
            seen = state.payload
            timer = 0.0
            continue
        if isinstance(state, Acquired):
            # Whether the timer fired or Redis reported the expiry: a lock
            # taken once the last one ran out (not released) is a takeover.
            if now() >= expires - LAPSE_SLACK:
                counters.takeovers += 1
                rt.problems.say(
                    logging.INFO,
                    f"took over the lock of {req.key!r}: its holder's lock ran out (it "
                    "died, or stalled past lock_ttl)",
                    kind="takeover",
                    key=req.key,
                )
                if rt.hooked:
                    rt.hooks.emit(Takeover(rt.namespace, req.key))
                if looks is not None:
                    looks.lapsed(req.key)
            interest.close()
            return state
        timer = takeover_delay(state.pttl_ms)
        if not state.watched:
            polls += 1
            counters.polls += 1
            timer = min(timer, _POLL_FIRST * 2 ** min(polls, 30), poll_most)
        was, expires = expires, now() + state.pttl_ms / 1000
        if looks is not None:
            looks.waits(req.key, interest, expires)
        # Held by the same lock, its expiry where it was: nothing happened to
        # it (not an extension, not a takeover). Redis reports a key whose
        # tracking it dropped (a full tracking table) or one written in
        # another database under the same name; re-watching at once would
        # cost two commands per such report for the whole wait.
        unchanged = message is not None and message is not Signal.RECHECK
        idle_wakes = idle_wakes + 1 if unchanged and abs(expires - was) < 0.05 else 0


def takeover_delay(pttl_ms: int) -> float:
    """Seconds until a holder's lock expires, plus jitter so waiters spread out."""
    base = max(pttl_ms, 0) / 1000
    return base + random.uniform(0.001, 0.005 + base * 0.02)
