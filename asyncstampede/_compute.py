"""Calling the compute function: under the hard timeout, as a known computation, then encoded."""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn

import anyio

from ._codec import Codec
from ._envelope import encode
from ._events import ComputeEnded, ComputeStarted
from ._exceptions import ComputeFailedError, ComputeTimeoutError
from ._flight import Computation, computing
from ._freshness import Policy
from ._runtime import Request, Runtime, now_ms

__all__ = [
    "call",
    "cancelled_from_outside",
    "compute_with",
    "encode_stored",
    "encode_value",
    "refuse_fn",
    "run_compute",
]


async def run_compute(rt: Runtime, req: Request) -> tuple[Any, int]:
    """Call the compute function under the hard timeout; return value and duration.

    Only the hard timeout's own cancellation becomes `ComputeTimeoutError`:
    a ``TimeoutError`` the function raises is its own failure. A
    ``CancelledError`` it raises while nothing cancelled this task (it
    awaited something another task cancelled) is a failure of this key,
    `ComputeFailedError`, never a cancellation of the instance.
    """
    rt.counters.computes += 1
    if rt.hooked:
        rt.hooks.emit(ComputeStarted(rt.namespace, req.key))
    start = time.perf_counter()
    ended: Literal["ok", "error", "timeout", "cancelled"] = "cancelled"
    error: str | None = None
    hard = req.policy.hard_timeout
    computation = Computation(rt.store, req.names.lock, id(rt), req.flight)
    chain = computing.set((*computing.get(), computation))
    rt.counters.computing += 1
    try:
        with anyio.CancelScope(
            deadline=math.inf if hard is None else anyio.current_time() + hard
        ) as scope:
            value = await call(req.fn)
    except anyio.get_cancelled_exc_class() as exc:
        if cancelled_from_outside():
            raise
        rt.counters.compute_errors += 1
        ended, error = "error", type(exc).__name__
        raise ComputeFailedError(
            f"the compute of {req.key!r} raised {type(exc).__name__} although nothing "
            "cancelled the call (did it await a task or future that something else "
            "cancelled?)"
        ) from exc
    except Exception as exc:
        rt.counters.compute_errors += 1
        ended, error = "error", type(exc).__name__
        raise
    else:
        ended = "timeout" if scope.cancelled_caught else "ok"
    finally:
        rt.counters.computing -= 1
        computation.active = False
        computing.reset(chain)
        if rt.hooked:
            seconds = time.perf_counter() - start
            rt.hooks.emit(ComputeEnded(rt.namespace, req.key, seconds, ended, error))
    if scope.cancelled_caught:
        rt.counters.compute_errors += 1
        raise ComputeTimeoutError(f"computing {req.key!r} took over hard_timeout={hard}s")
    return value, math.ceil((time.perf_counter() - start) * 1000)


def encode_value(rt: Runtime, req: Request, value: Any, *, delta_ms: int) -> tuple[bytes, int]:
    """Encode a fresh value; return it with the Redis TTL it is stored for."""
    return encode_stored(rt, value, req.ttl_ms, req.policy, delta_ms=delta_ms, tags=req.tags)


def encode_stored(
    rt: Runtime, value: Any, ttl_ms: int, policy: Policy, *, delta_ms: int = 0, tags: int = 0
) -> tuple[bytes, int]:
    """Encode *value*, fresh for *ttl_ms* under *policy*; return it and its Redis TTL (ms).

    *tags*: the fingerprint of its tags' generations (``_tags``; 0: none).
    """
    now = now_ms()
    fresh_ms = ttl_ms
    if value is None and policy.negative_ms:
        fresh_ms = policy.negative_ms
    if policy.ttl_jitter:
        fresh_ms += int(fresh_ms * policy.ttl_jitter * random.random())
    payload = encode(
        value,
        created_ms=now,
        delta_ms=delta_ms,
        fresh_until_ms=now + fresh_ms,
        compress_threshold=rt.settings.compress_threshold,
        max_value_bytes=rt.settings.max_value_bytes,
        tags=tags,
    )
    # Kept past its freshness for as long as it may be served stale.
    return payload, fresh_ms + max(policy.swr_ms, policy.sie_ms)


async def call(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Call *fn* and await what it returns, which must be awaitable."""
    result = fn()
    if not inspect.isawaitable(result):
        if inspect.isasyncgen(result) or inspect.isgenerator(result):
            if inspect.isgenerator(result):
                result.close()
            else:
                await result.aclose()
            raise TypeError(
                "fn is a generator function: pass an async function returning the value"
            )
        raise TypeError(
            f"the compute function returned {type(result).__name__}, not an awaitable: pass an "
            "async function (or a lambda returning a coroutine); for blocking code, pass "
            "lambda: anyio.to_thread.run_sync(blocking_fn)"
        )
    return await result


def compute_with(
    fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], codec: Codec[Any] | None
) -> Callable[[], Awaitable[Any]]:
    """Return the compute ``fn(*args)``, its value in *codec*'s stored form (None stays None)."""

    async def compute() -> Any:
        value = await call(functools.partial(fn, *args) if args else fn)
        return value if codec is None or value is None else codec.dump(value)

    return compute


def cancelled_from_outside() -> bool:
    """Whether the current task is being cancelled (by a cancel scope, or ``Task.cancel``)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio's Cancelled cannot be raised by hand
        return True
    return task is not None and task.cancelling() > 0


def refuse_fn(fn: object) -> NoReturn:
    """Raise the `TypeError` for a compute function that cannot be one."""
    if inspect.iscoroutine(fn):
        fn.close()  # never awaited, and never will be: no warning about it
        raise TypeError(
            "fn is a coroutine, not a function: pass the function itself and its "
            "arguments (get_or_compute(key, load, ttl, 42))"
        )
    raise TypeError(f"fn must be an async callable, not {type(fn).__name__}")
