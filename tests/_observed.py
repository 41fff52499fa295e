"""A herd over two instances, for the metrics tests: 20 callers each on one cold key."""

from __future__ import annotations

import anyio
from _conditions import until

from asyncstampede import Stampede


async def two_instance_herd(a: Stampede, b: Stampede, key: str = "k") -> None:
    """20 callers on *a*, then 20 on *b* once *a* computes; one compute, *b* waits for it.

    Both instances entered, on one Redis and namespace; ends with one more
    call on *a*, a hit.
    """
    release, started = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    await until(lambda: a.statistics().wake == "tracking" == b.statistics().wake)
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(a.get_or_compute, key, slow, 60)
        await started.wait()
        for _ in range(20):
            tg.start_soon(b.get_or_compute, key, slow, 60)
        await until(lambda: b.statistics().waiting == 1 and b.statistics().coalesced == 19)
        release.set()
    assert await a.get_or_compute(key, slow, 60) == "v"
