"""anyio with asyncstampede: the instance runs in a task group the script owns.

Run it against a Redis (``REDIS_URL``, by default ``redis://127.0.0.1:6379/0``)::

    python examples/anyio_taskgroup.py
    # 200 calls, 1 distinct answer, 1 compute

``await cache.start(tg)`` runs the instance's background work (its
connections, lock extensions, every resolution) in one task of ``tg``:
it ends with the group, and any task may close it meanwhile.
"""

from __future__ import annotations

import os

import anyio

from asyncstampede import Stampede

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def load_profile(user_id: int) -> dict[str, object]:
    """Load it the slow way: this stands for a database query (half a second)."""
    await anyio.sleep(0.5)
    return {"id": user_id, "name": "Ada"}


async def main() -> None:
    """Ask for one cold key 200 times at once, then close the instance."""
    answers: list[dict[str, object]] = []

    async def ask(cache: Stampede) -> None:
        answers.append(await cache.get_or_compute("profile:42", load_profile, 60, 42))

    async with anyio.create_task_group() as tg:
        cache = await Stampede.from_url(REDIS_URL, namespace="profiles").start(tg)
        async with anyio.create_task_group() as callers:
            for _ in range(200):
                callers.start_soon(ask, cache)
        distinct = len({repr(answer) for answer in answers})
        print(
            f"{len(answers)} calls, {distinct} distinct answer, "
            f"{cache.statistics().computes} compute"
        )
        await cache.aclose()  # (or tg.cancel_scope.cancel(): the group's end closes it too)


if __name__ == "__main__":
    anyio.run(main)
