"""THE miss driver: after a read that could not be served, lead or wait; background refreshes.

A miss becomes one `resolve` task per key per process. It asks Redis about
the lock (taking it, or learning who holds it), and `decide` chooses, in
one place, for callers and background refreshes alike:

- the lock is ours: lead (``_lead``): compute, commit, wake every waiter;
- another holder has it: wait (``_wait``), which returns a value, a
  takeover (then lead), a timeout (compute unlocked, or raise) or a Redis
  failure; a background refresh never waits;
- Redis failed: fail open (``_lead.compute_uncached``) or serve a stale value.

`serve` acts on the freshness verdict (``_freshness.judge``) for every value
read: hand it over (and maybe start one background refresh), keep it as the
fallback, or pass.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._backends.base import Acquired, Held, Hit
from ._backends.interest import Interest
from ._backends.messages import Value
from ._envelope import Envelope
from ._events import EarlyRefresh, Miss, StaleServed, WakeUp
from ._events import Hit as HitEvent
from ._exceptions import BackendError, CircuitOpenError, ClosedError, WaitTimeoutError
from ._flight import Flight, computing
from ._freshness import Verdict, judge, xfetch_due
from ._lead import compute_and_commit, compute_uncached, compute_unlocked, lead, let_go
from ._runtime import Again, Request, Runtime, failure_of, now_ms, value_of
from ._wait import RESOLVED, TIMED_OUT, Served, wait

__all__ = ["resolve", "serve"]

_REFRESH_AFTER_KEPT = 4096  # keys whose refresh back-off is remembered


# How a miss is driven: a token for its lock, what the first look found.
Drive = Callable[[Runtime, Request, bytes, BackendError | Again], Awaitable[Any]]


async def resolve(
    rt: Runtime, req: Request, first: BackendError | Again, drive: Drive | None = None
) -> None:
    """Resolve a miss of *req*'s key and settle its flight (the task body).

    *drive* replaces `_drive` (a batch's keys lead together, see ``_batch``).
    """
    token = os.urandom(16)  # identifies this resolution's lock
    try:
        value = await (drive or _drive)(rt, req, token, first)
    except anyio.get_cancelled_exc_class():
        rt.finish(req.key, req.flight, error=ClosedError("the Stampede closed during the call"))
        raise
    except BaseException as exc:
        rt.finish(req.key, req.flight, error=exc)
        if not isinstance(exc, Exception):
            raise
    else:
        rt.finish(req.key, req.flight, value=value)


async def _drive(rt: Runtime, req: Request, token: bytes, first: BackendError | Again) -> Any:
    listener = rt.backend.listener
    # Registered before Redis is asked about the lock: whatever happens to
    # the lock after the question that finds it held is delivered here.
    interest = listener.register(req.names.lock)
    interest.on_value = _value_handler(rt, req)
    try:
        state: Hit | Acquired | Held | BackendError | Again = first
        seen = first.seen if isinstance(first, Again) else None  # found, not servable
        for _ in range(3):
            if not isinstance(state, Again):
                break
            found = await rt.acquire(req, token, read=state.read, seen=state.seen)
            if not isinstance(found, Hit):
                state = found
                continue
            envelope = rt.decode(found.payload, req)
            if envelope is not None and serve(rt, req, envelope, found.payload):
                return value_of(envelope)
            seen = found.payload
            state = Again(read=False, seen=seen)  # corrupt, or too stale
        rt.counters.misses += 1
        if rt.hooked:
            rt.hooks.emit(Miss(rt.namespace, req.key))
        if isinstance(state, Again):
            # The stored value changed under us three times, each time to one
            # that cannot be served: compute, and store only into a gap.
            return await compute_unlocked(rt, req)
        # (A failed first read asked for no lock: nothing of ours to settle.)
        asked = state is not first
        return await decide(rt, req, token, state, interest, seen, asked_lock=asked)
    finally:
        listener.unregister(req.names.lock, interest)


async def decide(
    rt: Runtime,
    req: Request,
    token: bytes,
    state: Hit | Acquired | Held | BackendError,
    interest: Interest | None,
    seen: bytes | None = None,
    *,
    asked_lock: bool = True,
) -> Any:
    """Lead, wait or fall back, given what Redis said about the lock.

    *interest* is None for a background refresh: it never waits (another
    holder means another process refreshes), a value found means somebody
    refreshed already, and a Redis failure leaves the served value as it is.
    """
    background = interest is None
    if isinstance(state, Hit):
        return None  # (background only) another process has just refreshed it
    if isinstance(state, BackendError):
        if background:
            rt.failed(state, "refreshing {key}; the served value stays", req.key)
            return None
        return await _on_backend_error(rt, state, req, token if asked_lock else None)
    if isinstance(state, Acquired):
        if interest is None:  # nobody waits: no soft timeout to serve
            return await compute_and_commit(rt, req, token)
        interest.close()
        return await lead(rt, req, token)
    if interest is None:
        return None  # held: another process is refreshing it
    outcome = await wait(rt, req, token, state, interest, seen)
    if isinstance(outcome, Served):
        return outcome.value
    if isinstance(outcome, Acquired):  # a takeover (the wait closed the interest)
        return await lead(rt, req, token)
    if isinstance(outcome, BackendError):
        return await _on_backend_error(rt, outcome, req, token)
    if outcome is RESOLVED:
        return None  # the flight is settled already (see _value_handler)
    assert outcome is TIMED_OUT
    if rt.settings.on_wait_timeout == "raise":
        raise WaitTimeoutError(
            f"no value after waiting {rt.settings.wait_timeout}s for another holder"
        )
    return await compute_unlocked(rt, req)


def _value_handler(rt: Runtime, req: Request) -> Callable[[Value], bool]:
    """Resolve *req*'s flight straight from a value message, without a task switch.

    Value messages carry what was stored just after the lock changed (read
    by the Redis listener, or handed over by the embedded store). A value
    this call's verdict rejects is left to the waiting task, which looks again.
    """
    key, flight = req.key, req.flight

    def on_value(message: Value) -> bool:
        envelope = rt.decode(message.payload, req)
        if envelope is None or not req.accepts(envelope):
            return False  # corrupt, or too old for this call (the stale value it started from)
        rt.counters.wakeups += 1
        if rt.hooked:
            rt.hooks.emit(WakeUp(rt.namespace, key))
        if envelope.failed:
            rt.finish(key, flight, error=failure_of(envelope))
        else:
            rt.finish(key, flight, value=envelope.value)
        return True

    return on_value


async def _on_backend_error(
    rt: Runtime, exc: BackendError, req: Request, token: bytes | None
) -> Any:
    """Serve the stale value, raise (``fail_open`` off), or compute without the cache.

    *token* is the lock the failed step asked for, if it did: its ``SET``
    may have taken the lock all the same (a reply that came too late, a
    connection lost after sending). The value computed is then committed
    under it (see `compute_uncached`); otherwise the lock is let go in the
    background, so nobody waits for it until it expires.
    """
    if isinstance(exc, CircuitOpenError):
        token = None  # nothing was sent
    stale = req.usable_stale()
    if stale is not None:
        rt.failed(exc, "looking up {key}; serving its stale value", req.key)
        rt.counters.fail_safe += 1
        if rt.hooked:
            rt.hooks.emit(StaleServed(rt.namespace, req.key, "error"))
        if token is not None:
            let_go(rt, req.names, token)
        return stale.value
    if not rt.settings.fail_open:
        rt.failed(exc, "looking up {key}; raising (fail_open is off)", req.key)
        if token is not None:
            let_go(rt, req.names, token)
        raise exc
    rt.failed(exc, "looking up {key}; computing it without the cache", req.key)
    return await compute_uncached(rt, req, token)


def serve(
    rt: Runtime, req: Request, envelope: Envelope, payload: bytes, *, xfetch_drawn: bool = False
) -> bool:
    """Act on the verdict about a stored value: True when it is handed to the callers.

    Fresh values are served, and XFetch may start one early refresh
    (*xfetch_drawn*: the caller already drew it, and it is due). Values
    within ``stale_while_revalidate`` are served while one refresh runs.
    Older ones are not served now but kept as the resolution's fallback
    while within ``stale_if_error``. A cached failure is "served" (raised)
    while fresh.
    """
    now = now_ms()
    verdict = judge(envelope, now, req.policy)
    if verdict is Verdict.FRESH:
        rt.counters.hits += 1
        if rt.hooked:
            rt.hooks.emit(HitEvent(rt.namespace, req.key))
        if xfetch_drawn or xfetch_due(now, envelope, req.policy.beta, 1.0 - random.random()):
            _refresh_soon(rt, req, envelope, payload, early=True)
        return True
    if verdict is Verdict.STALE:
        rt.counters.stale_served += 1
        if rt.hooked:
            rt.hooks.emit(StaleServed(rt.namespace, req.key, "revalidate"))
        _refresh_soon(rt, req, envelope, payload)
        return True
    if verdict is Verdict.FALLBACK:
        req.stale, req.stale_payload = envelope, payload
    return verdict is Verdict.FAILED


def _refresh_soon(
    rt: Runtime, req: Request, envelope: Envelope, payload: bytes, *, early: bool = False
) -> None:
    """Start one background refresh of *req*'s key (one per key per process).

    *early*: an XFetch refresh of a fresh value (counted in ``early_refreshes``).
    """
    if req.key in rt.refreshing or rt.tg is None:
        return
    if rt.refresh_after and rt.refresh_after.get(req.key, 0.0) > time.monotonic():
        return  # its last background refresh failed: not before fail_safe_throttle
    if early:
        rt.counters.early_refreshes += 1
        if rt.hooked:
            rt.hooks.emit(EarlyRefresh(rt.namespace, req.key))
    rt.refreshing.add(req.key)
    refresh = Request(
        req.key,
        req.names,
        Flight(),
        req.fn,
        req.ttl_ms,
        req.policy,
        rt.settings.redis_budget,
        req.codec,
        req.tags,
    )
    refresh.stale, refresh.stale_payload = envelope, payload
    rt.tg.start_soon(_refresh, rt, refresh, payload)


async def _refresh(rt: Runtime, req: Request, payload: bytes) -> None:
    """Recompute a served value in the background, if the lock picks us (see `decide`)."""
    token = os.urandom(16)
    # Nobody waits for a refresh, so its compute cannot wait for itself
    # through whoever happened to start it.
    computing.set(())
    try:
        # A value other than the one served showing up once the lock is
        # ours means another process has just refreshed it: nothing to do.
        state = await rt.acquire(req, token, read=False, seen=payload, watch=False)
        await decide(rt, req, token, state, None)
        if req.failed:  # the fail-safe served: counted and logged there
            rt.counters.refresh_errors += 1
            _refresh_failed(rt, req.key)
    except Exception as exc:  # a background refresh has no caller to tell
        rt.counters.refresh_errors += 1
        _refresh_failed(rt, req.key)
        rt.problems.say(
            logging.WARNING,
            f"background refresh of {req.key!r} failed; the served value stays: "
            f"{type(exc).__name__}: {exc}",
            kind=f"background refresh failed: {type(exc).__name__}",
            key=req.key,
        )
    finally:
        rt.refreshing.discard(req.key)


def _refresh_failed(rt: Runtime, key: str) -> None:
    """Start no background refresh of *key* for ``fail_safe_throttle`` seconds."""
    now = time.monotonic()
    if len(rt.refresh_after) >= _REFRESH_AFTER_KEPT:
        rt.refresh_after = {k: t for k, t in rt.refresh_after.items() if t > now}
    rt.refresh_after[key] = now + rt.settings.fail_safe_throttle_ms / 1000
