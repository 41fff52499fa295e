"""After the first read: serve what may be served, hand the rest to the miss driver.

The first read is a plain ``GET`` in the caller's own task, in
``Stampede.get_or_compute`` (one round trip, no task switch, no extra
frame: a fresh value is returned right there). Everything else comes here,
synchronously: a value the verdict allows is served (maybe starting one
background refresh); anything else is handed to the miss driver
(``_resolve``) in a task of the instance, so that no caller's cancellation
cancels a resolution others are waiting on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from ._codec import Codec
from ._envelope import Envelope
from ._exceptions import BackendError, ClosedError
from ._flight import Flight, blocked_on
from ._freshness import Policy
from ._keys import KeyNames
from ._resolve import resolve, serve
from ._runtime import Again, Request, Runtime, value_of

__all__ = ["HANDED_OFF", "LOOK", "await_flight", "hand_off", "read_interrupted"]

LOOK: Final = Again(read=False)  # nothing usable was read: go for the lock
HANDED_OFF: Final = object()  # the miss driver resolves the flight


def hand_off(
    rt: Runtime,
    req: Request,
    first: BackendError | Again,
    envelope: Envelope | None = None,
    payload: bytes = b"",
) -> Any:
    """Serve *envelope* if its verdict allows; else start the miss driver and return `HANDED_OFF`.

    *first* is what the read gave the driver to start from: a Redis
    failure, or what to ask again (a stored value not to serve).

    The instance's task group is looked up now, not when the call began:
    the read may have outlasted it (the instance closed meanwhile).

    Raises:
        ComputeFailedError: *envelope* is a cached failure, still fresh.
        ClosedError: the instance closed during the read.

    """
    if envelope is not None and serve(rt, req, envelope, payload, xfetch_drawn=True):
        value = value_of(envelope)
        rt.finish(req.key, req.flight, value=value)
        return value
    tg = rt.tg
    if tg is None:
        raise ClosedError("the Stampede closed during the call")
    tg.start_soon(resolve, rt, req, first)
    return HANDED_OFF


def read_interrupted(
    rt: Runtime,
    key: str,
    names: KeyNames,
    flight: Flight,
    fn: Callable[[], Awaitable[Any]],
    ttl_ms: int,
    policy: Policy,
    exc: BaseException,
    redis_left: float,
    codec: Codec[Any] | None = None,
    tags: int = 0,
) -> None:
    """Leave the flight in good hands when the first read ends with *exc* (the caller re-raises).

    A cancelled caller may have others of this process waiting on its
    flight: the driver resolves it (reading again first) within what is
    left of the call's budget for Redis (*redis_left*, s), or, once the
    instance has closed, they get `ClosedError`. Any other error fails the
    flight.
    """
    tg = rt.tg
    if isinstance(exc, anyio.get_cancelled_exc_class()) and tg is not None:
        req = Request(key, names, flight, fn, ttl_ms, policy, redis_left, codec, tags)
        tg.start_soon(resolve, rt, req, Again(True))
    elif isinstance(exc, anyio.get_cancelled_exc_class()):
        rt.finish(key, flight, error=ClosedError("the Stampede closed during the call"))
    elif not flight.done:
        rt.finish(key, flight, error=exc)


async def await_flight(flight: Flight, asking: Flight | None, *, started: bool) -> Any:
    """Wait for *flight*'s outcome (recording the wait when a compute is *asking*)."""
    if asking is not None:
        return await blocked_on(asking, flight, started=started)
    return await flight.outcome(started=started)
