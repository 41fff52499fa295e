"""Scenarios several test modules run with a disruption of their own."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from _conditions import until

from asyncstampede import BackendError, Stampede


async def holder_and_waiter(
    leader: Stampede, waiter: Stampede, *, during: Callable[[], object] | None = None
) -> tuple[list[object], list[object]]:
    """*leader* computes "k" and *waiter* waits on it; return what each got.

    The leader's compute returns once the waiter waits on its lock and
    *during* (a disruption, if given) has run. Either outcome is a value or
    the `BackendError` raised. Callers give both a long ``lock_ttl`` (30 s),
    so a waiter left to wait out the lock fails the 10 s bound here.
    """
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "leader"

    async def own() -> str:
        return "waiter"

    async def outcome(cache: Stampede, fn: object, into: list[object]) -> None:
        try:
            into.append(await cache.get_or_compute("k", fn, ttl=60))  # type: ignore[call-overload]
        except BackendError as exc:
            into.append(exc)

    led: list[object] = []
    waited: list[object] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcome, leader, slow, led)
            await started.wait()
            tg.start_soon(outcome, waiter, own, waited)
            await until(lambda: waiter.statistics().waiting == 1)  # it watches the lock
            if during is not None:
                during()
            release.set()
    return led, waited
