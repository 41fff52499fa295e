"""The first read: a hit is served in the caller's own task; a miss is handed to the driver.

Callers of one key in one process share one `Flight`: the first starts it,
the others join it. The starting caller reads with one plain ``GET`` (one
round trip, no task switch). Anything but a fresh value goes to the miss
driver (``_resolve``), in a task of the instance, so that no caller's
cancellation cancels a resolution others are waiting on.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from ._envelope import DecodeError, decode
from ._exceptions import BackendError
from ._flight import Flight, blocked_on
from ._freshness import Policy, Verdict, judge, xfetch_due
from ._keys import KeyNames
from ._resolve import resolve, serve
from ._runtime import Again, Request, Runtime, now_ms, value_of

__all__ = ["get"]

FRESH = Verdict.FRESH


async def get(
    rt: Runtime,
    tg: anyio.abc.TaskGroup,
    key: str,
    names: KeyNames,
    fn: Callable[[], Awaitable[Any]],
    ttl_ms: int,
    policy: Policy,
    asking: Flight | None,
) -> Any:
    """Return *key*'s value: joined from a flight, read, or resolved by the driver.

    *asking* is the flight of the compute this call comes from, if any (its
    waits are recorded, so cycles between computes are refused).
    """
    flight = rt.flights.get(key)
    if flight is not None:
        rt.counters.coalesced += 1
        if asking is not None:
            return await blocked_on(asking, flight, started=False)
        return await flight.outcome()
    flight = rt.flights[key] = Flight(rt.settings.share_values)
    req: Request | None = None
    try:
        # The first read is a plain GET in the caller's own task: a hit
        # costs one round trip and no task switch. A miss hands the rest
        # of the resolution to a task of this instance (see _resolve),
        # which goes straight for the lock.
        first: BackendError | Again = Again(read=False)
        try:
            payload = await rt.backend.read(names)
        except BackendError as exc:
            first = exc
        except anyio.get_cancelled_exc_class():
            # Others of this process may be waiting on this flight.
            req = Request(key, names, flight, fn, ttl_ms, policy)
            tg.start_soon(resolve, rt, req, Again(read=True))
            raise
        else:
            if payload is not None:
                try:
                    envelope = decode(payload, max_value_bytes=rt.settings.max_value_bytes)
                except DecodeError:
                    rt.counters.decode_errors += 1
                    first = Again(read=False, seen=payload)  # corrupt: go for the lock
                else:
                    # The common case, kept lean: fresh, and XFetch not due.
                    now = now_ms()
                    if judge(envelope, now, policy) is FRESH and not xfetch_due(
                        now, envelope, policy.beta, 1.0 - random.random()
                    ):
                        rt.counters.hits += 1
                        rt.finish(key, flight, value=envelope.value)
                        return envelope.value
                    req = Request(key, names, flight, fn, ttl_ms, policy)
                    if serve(rt, req, envelope, payload, xfetch_drawn=True):
                        value = value_of(envelope)
                        rt.finish(key, flight, value=value)
                        return value
                    first = Again(read=False, seen=payload)  # too stale to serve
        if req is None:
            req = Request(key, names, flight, fn, ttl_ms, policy)
        tg.start_soon(resolve, rt, req, first)
    except BaseException as exc:
        if not flight.done and not isinstance(exc, anyio.get_cancelled_exc_class()):
            rt.finish(key, flight, error=exc)
        raise
    if asking is not None:
        return await blocked_on(asking, flight, started=True)
    return await flight.outcome(started=True)
