"""Leading: compute as the lock holder, encode, commit and wake every waiter.

Also the paths that end a lead otherwise: the fail-safe (a failed compute
serves the stale value and re-stamps it), negative caching (a failure is
remembered for ``negative_ttl``), a refused commit, and computing without
the lock (`compute_unlocked`) or without Redis (`compute_uncached`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import anyio
import anyio.abc

from ._compute import encode_value, run_compute
from ._envelope import DecodeError, decode, encode_failure, restamp
from ._events import FailSafe, LockLost, StaleServed, Timeout
from ._exceptions import (
    BackendError,
    CircuitOpenError,
    ClosedError,
    SerializationError,
    ValueTooLargeError,
)
from ._keys import KeyNames
from ._runtime import Request, Runtime, now_ms

__all__ = [
    "compute_and_commit",
    "compute_uncached",
    "compute_unlocked",
    "lead",
    "let_go",
    "release_quietly",
]


def _task_group(rt: Runtime) -> anyio.abc.TaskGroup:
    if rt.tg is None:
        raise ClosedError("the Stampede closed during the call")
    return rt.tg


async def lead(rt: Runtime, req: Request, token: bytes) -> Any:
    """Compute as the lock holder, commit, and wake every waiter.

    With a stale fallback and a ``soft_timeout``, callers get the stale
    value once the soft timeout passes, while the compute goes on here and
    still commits its value.
    """
    soft = req.policy.soft_timeout
    if soft is None or req.stale is None:
        return await compute_and_commit(rt, req, token)
    done = anyio.Event()
    outcome: list[Any] = []

    async def run() -> None:
        try:
            outcome.append((True, await compute_and_commit(rt, req, token)))
        except Exception as exc:  # handed to the caller below, or dropped
            outcome.append((False, exc))
        finally:
            done.set()

    _task_group(rt).start_soon(run)
    with anyio.move_on_after(soft):
        await done.wait()
    if not outcome:
        stale = req.usable_stale()
        if stale is not None:
            rt.counters.soft_timeouts += 1
            if rt.hooked:
                rt.hooks.emit(Timeout(rt.namespace, req.key, "soft"))
                rt.hooks.emit(StaleServed(rt.namespace, req.key, "soft-timeout"))
            return stale.value
        await done.wait()  # its stale window closed meanwhile: wait for the compute
    ok, result = outcome[0]
    if ok:
        return result
    raise result


async def compute_and_commit(rt: Runtime, req: Request, token: bytes) -> Any:
    """Compute under the lock *token* (kept alive meanwhile), commit, and return the value.

    A failed compute serves the stale fallback (fail-safe), is remembered
    (``negative_ttl``), or releases the lock at once, then raises. A commit
    Redis fails or refuses releases the lock too; the value still reaches
    the callers unless ``fail_open`` is off. A commit still on its way when
    the call's budget for Redis runs out goes on in the background (see
    `_store`). Cancelled (the instance closes) at any step, it releases the
    lock before it stops.
    """
    try:
        return await _compute_and_commit(rt, req, token)
    except Exception:
        raise
    except BaseException:
        # Closing: let the next holder go at once rather than at lock expiry.
        # Not only while fn runs: a compute that ignored the cancellation and
        # returned is cancelled at its commit, whose command may not have
        # gone out (the request connection closes too). A release frees the
        # lock only while it holds our token: after a commit that landed, or
        # a fail-safe's marker, it changes nothing.
        rt.keeper.drop(token)
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            await release_quietly(rt, req.names, token)
        raise


async def _compute_and_commit(rt: Runtime, req: Request, token: bytes) -> Any:
    names = req.names
    failure: Exception | None = None
    rt.keeper.hold(token, names)
    try:
        value, delta_ms = await run_compute(rt, req)
        payload, px_ms = encode_value(rt, req, value, delta_ms=delta_ms)
    except Exception as exc:  # fn failed or timed out, or its value cannot be stored
        failure = exc
    rt.keeper.drop(token)
    if failure is not None:
        req.failed = True
        if req.usable_stale() is not None:
            rt.problems.say(
                logging.WARNING,
                f"computing {req.key!r} failed; serving its stale value (fail-safe): "
                f"{type(failure).__name__}: {failure}",
                kind=f"compute failed, stale served: {type(failure).__name__}",
                key=req.key,
            )
            return await _fail_safe(rt, req, token)
        if req.policy.negative_ms and not isinstance(
            failure, (SerializationError, ValueTooLargeError)
        ):
            await _remember_failure(rt, req, token, failure)
        else:
            await release_quietly(rt, names, token)
        raise failure
    await _store(rt, req, token, payload, px_ms)
    return decode(payload, max_value_bytes=rt.settings.max_value_bytes).value


async def _store(rt: Runtime, req: Request, token: bytes, payload: bytes, px_ms: int) -> None:
    """Commit *payload* under the lock *token*, waiting at most the call's budget for Redis.

    A value computed is never thrown away for lack of time: a commit still
    on its way when the budget runs out (a busy process, a slow Redis)
    goes on in the background, within a budget of its own, and the callers
    go on with the value (or, with ``fail_open`` off, get the overrun).
    A commit Redis fails or refuses gives the lock up at once (see
    `_commit_failed`).

    Raises:
        BackendError: the commit failed, or ran past the budget, and
            ``fail_open`` is off.

    """
    tg = rt.tg
    if tg is None:  # closing: no background to finish in
        raise ClosedError("the Stampede closed during the call")
    done = anyio.Event()
    failure: list[BackendError] = []

    async def commit() -> None:
        try:
            work = rt.backend.commit(req.names, token, payload, px_ms)
            if not await rt.redis(None, work, "COMMIT"):
                rt.counters.lock_lost += 1
                rt.problems.say(
                    logging.WARNING,
                    f"the lock of {req.key!r} was gone at its commit, so its value was not "
                    "stored (the compute outlived lock_ttl without its extensions reaching "
                    "Redis, or the key was invalidated or written meanwhile)",
                    kind="lock lost at commit",
                    key=req.key,
                )
                if rt.hooked:
                    rt.hooks.emit(LockLost(rt.namespace, req.key))
        except CircuitOpenError as exc:
            # Redis is being skipped: the commit is owed, and made (or the
            # lock let go) as soon as the breaker closes.
            failure.append(exc)
            rt.owe(req.names, token, payload, px_ms)
        except BackendError as exc:
            failure.append(exc)
            await _commit_failed(rt, exc, req, token)
        finally:
            done.set()

    tg.start_soon(commit)
    started = anyio.current_time()
    left = req.redis_left if rt.budgeted else math.inf
    with anyio.move_on_after(left):
        await done.wait()
    req.redis_left -= anyio.current_time() - started
    if rt.settings.fail_open:
        return
    if failure:
        raise failure[0]
    if not done.is_set():
        raise rt.backend.overran("COMMIT", left)


async def _commit_failed(rt: Runtime, exc: BackendError, req: Request, token: bytes) -> None:
    """Log a commit (or fail-safe re-stamp) that Redis failed or refused, and give the lock up.

    The lock is released (a refused script is replaced by a transaction,
    see `RedisBackend.release`) so waiters in other processes look again
    at once instead of waiting out ``lock_ttl``. The value computed here
    still reaches this process's callers when ``fail_open`` is on (the
    default); otherwise they get *exc* (raised by the caller).
    """
    if rt.settings.fail_open:
        rt.failed(exc, "storing {key}; its value is returned uncached", req.key)
    else:
        rt.failed(exc, "storing {key}; raising (fail_open is off)", req.key)
    with anyio.CancelScope(shield=True):
        await release_quietly(rt, req.names, token)


async def _fail_safe(rt: Runtime, req: Request, token: bytes) -> Any:
    """Serve the stale value after a failed compute, and keep serving it a while.

    The stored bytes are written back as fresh for ``fail_safe_throttle``
    seconds, so a failing backend is retried once per throttle period,
    not by every request; waiters are woken with it. Nothing moves the
    windows: the value is never fresh past ``created + ttl +
    stale_if_error`` and the key expires when the original write would
    have (``created + ttl + max(stale windows)``), however many
    failures follow; a key that has run out is not written at all.
    """
    stale = req.stale
    assert stale is not None
    rt.counters.fail_safe += 1
    if rt.hooked:
        rt.hooks.emit(FailSafe(rt.namespace, req.key))
        rt.hooks.emit(StaleServed(rt.namespace, req.key, "error"))
    now = now_ms()
    policy = req.policy
    origin_ms = stale.origin_fresh_until_ms
    # Never earlier than it was (a failed early refresh of a fresh value
    # must not cut its freshness short), never past the window.
    fresh_until_ms = max(
        stale.fresh_until_ms,
        min(now + rt.settings.fail_safe_throttle_ms, origin_ms + policy.sie_ms),
    )
    px_ms = origin_ms + max(policy.swr_ms, policy.sie_ms) - now
    try:
        payload = restamp(req.stale_payload, fresh_until_ms=fresh_until_ms)
    except DecodeError:
        payload = b""
    if px_ms <= 0 or not payload:  # the window has run out: nothing worth writing
        await release_quietly(rt, req.names, token)
        return stale.value
    try:
        # Never past the key's current expiry: a caller with a longer
        # stale window than the writer's does not stretch the writer's.
        await rt.redis(req, rt.backend.restamp(req.names, token, payload, px_ms), "RESTAMP")
    except BackendError as exc:
        rt.failed(exc, "re-stamping the stale value of {key}", req.key)
        await release_quietly(rt, req.names, token)
    return stale.value


async def _remember_failure(rt: Runtime, req: Request, token: bytes, failure: Exception) -> None:
    """Store a failure marker for ``negative_ttl`` and wake waiters with it."""
    now = now_ms()
    payload = encode_failure(
        f"{type(failure).__name__}: {failure}",
        created_ms=now,
        fresh_until_ms=now + req.policy.negative_ms,
        tags=req.tags,
    )
    try:
        work = rt.backend.commit(req.names, token, payload, req.policy.negative_ms)
        await rt.redis(req, work, "COMMIT")
    except BackendError as exc:
        rt.failed(exc, "remembering the failure of {key}", req.key)
        await release_quietly(rt, req.names, token)


async def release_quietly(rt: Runtime, names: KeyNames, token: bytes) -> None:
    """Release the lock *token* within a budget of its own; a failure is counted and logged.

    Skipped by the open breaker, the release is owed: made when it closes.
    """
    try:
        await rt.redis(None, rt.backend.release(names, token), "RELEASE")
    except CircuitOpenError:
        rt.owe(names, token)
    except BackendError as exc:
        # The lock expires by itself, and its waiters take over then.
        rt.failed(exc, "releasing a lock; its waiters wait for it to expire")


def let_go(rt: Runtime, names: KeyNames, token: bytes) -> None:
    """Release the lock *token* in the background (see `release_quietly`)."""
    if rt.tg is not None:
        rt.tg.start_soon(release_quietly, rt, names, token)


async def compute_unlocked(rt: Runtime, req: Request) -> Any:
    """Compute without the lock (the wait bound passed); never replace a value.

    The value is stored only into a gap, and only while the lock is as
    it was when the compute started and nothing invalidated the key in
    this process: an invalidation (which deletes the lock) since then
    would otherwise be undone by a value computed from older data.
    """
    holder: bytes | None = None
    holder_known = True
    try:
        holder = await rt.redis(req, rt.backend.lock_holder(req.names), "GET")
    except BackendError as exc:
        rt.failed(exc, "reading the lock of {key}", req.key)
        holder_known = False  # then nothing to compare with: do not store
    value, delta_ms = await run_compute(rt, req)
    payload, px_ms = encode_value(rt, req, value, delta_ms=delta_ms)
    if holder_known and not req.flight.detached:
        try:
            work = rt.backend.write_if_absent(req.names, payload, px_ms, holder)
            await rt.redis(req, work, "WRITE_IF_ABSENT")
        except BackendError as exc:
            rt.failed(exc, "storing {key} computed without the lock", req.key)
    return decode(payload, max_value_bytes=rt.settings.max_value_bytes).value


async def compute_uncached(rt: Runtime, req: Request, token: bytes | None = None) -> Any:
    """Compute with Redis unavailable (fail-open): coalesced in this process, not waited on.

    The value goes through the codec all the same, so callers see the same
    types as with a working Redis. *token*: the lock this call asked for
    when Redis failed (or ran out of its budget): the ``SET`` may have
    taken it all the same, and then nobody else may compute until it
    expires. So the value is committed under it in the background, which
    stores it (and wakes the waiters) if the lock is ours, and does
    nothing otherwise; skipped while the breaker is open.
    """
    value, delta_ms = await run_compute(rt, req)
    payload, px_ms = encode_value(rt, req, value, delta_ms=delta_ms)
    if token is not None and rt.tg is not None:
        rt.tg.start_soon(_commit_if_ours, rt, req, token, payload, px_ms)
    return decode(payload, max_value_bytes=rt.settings.max_value_bytes).value


async def _commit_if_ours(
    rt: Runtime, req: Request, token: bytes, payload: bytes, px_ms: int
) -> None:
    try:
        work = rt.backend.commit(req.names, token, payload, px_ms)
        await rt.redis(None, work, "COMMIT")
    except CircuitOpenError:
        rt.owe(req.names, token, payload, px_ms)  # made when the breaker closes
    except BackendError:
        pass  # the lock expires by itself; the failure that got us here was logged
