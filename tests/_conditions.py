"""Waiting for a condition instead of sleeping for a guess.

A test that sleeps "long enough" for something to happen passes by luck on a
fast machine and fails on a loaded one (or, worse, passes without the thing
having happened). `until` waits for the thing itself, typically one of
``Stampede.statistics()``'s gauges (``waiting``, ``computing``,
``in_flight``) or counters (``coalesced``, ``remote_waits``...), and fails
the test with the condition's source when it does not hold within a
generous bound. The bound is a hang guard, never a measurement.

Also imported by ``_worker.py`` (a plain process, no pytest there).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import anyio

__all__ = ["until"]

POLL = 0.005  # seconds between looks: a poll interval, not a guess at how long anything takes


async def until(condition: Callable[[], object], *, within: float = 10.0) -> None:
    """Return once ``condition()`` is true; raise AssertionError after *within* seconds.

    *condition* may return an awaitable (an ``async`` check that makes a call);
    its result is then awaited and judged.
    """
    deadline = anyio.current_time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if anyio.current_time() >= deadline:
            raise AssertionError(f"not true within {within} s: {_describe(condition)}")
        await anyio.sleep(POLL)


def _describe(condition: Callable[[], object]) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)
