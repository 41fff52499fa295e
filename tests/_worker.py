"""A separate process for multi-process tests; driven over stdin/stdout.

Usage: python _worker.py URL NAMESPACE KEY CONCURRENCY COMPUTE_MS LOCK_TTL [hold|gate|announce]

It connects, prints ``ready``, waits for a ``go`` line, then runs CONCURRENCY
concurrent ``get_or_compute(KEY)`` calls whose compute sleeps COMPUTE_MS. With
``hold`` the compute prints ``computing`` and never returns (the test kills the
process). With ``gate`` it prints ``computing`` and waits for a line: ``fail``
makes it raise, ``return`` makes it return. With ``announce`` it prints
``waiting`` once a call waits on another process's lock. The environment's
``WORKER_WAKE`` is its ``Stampede(wake=...)``. When the calls end it lets
whatever they set off finish, prints one JSON line (results, wall-clock
finish times, statistics) and waits for ``exit``.

(``... refresh TTL`` runs the XFetch reader loop instead: see `refresh_loop`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import cast

import anyio
from _conditions import until
from redis.asyncio import BlockingConnectionPool, Redis

from asyncstampede import Stampede
from asyncstampede._settings import Wake


async def main() -> None:
    url, namespace, key, concurrency, compute_ms, lock_ttl, *mode = sys.argv[1:]
    hold = mode == ["hold"]
    gate = mode == ["gate"]
    announce = mode == ["announce"]
    if mode[:1] == ["refresh"]:
        await refresh_loop(url, namespace, key, int(concurrency), int(compute_ms), float(mode[1]))
        return
    # Every connection of this process is named after its pid, so the test can
    # attribute the commands it sees (CLIENT LIST maps addresses to names).
    pool = BlockingConnectionPool.from_url(url, client_name=f"worker-{os.getpid()}")
    client = Redis.from_pool(pool)
    wake = cast("Wake", os.environ.get("WORKER_WAKE", "auto"))
    async with Stampede(client, namespace=namespace, lock_ttl=float(lock_ttl), wake=wake) as cache:
        await client.ping()
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go", line

        async def compute() -> dict[str, object]:
            if hold:
                print("computing", flush=True)
                await anyio.sleep(3600)
            if gate:
                print("computing", flush=True)
                order = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
                if order == "fail":
                    raise RuntimeError("the compute failed, as the test asked")
                assert order == "return", order
            await anyio.sleep(int(compute_ms) / 1000)
            return {"by": os.getpid(), "payload": "x" * 100}

        results: list[object] = []
        finished: list[float] = []
        errors: list[str] = []

        async def one() -> None:
            try:
                results.append(await cache.get_or_compute(key, compute, ttl=60))
            except Exception as exc:
                errors.append(repr(exc))
            finished.append(time.time())

        async def announce_waiting() -> None:
            await until(lambda: cache.statistics().waiting > 0, within=30)
            print("waiting", flush=True)

        started = time.time()
        async with anyio.create_task_group() as tg:
            if announce:
                tg.start_soon(announce_waiting)
            async with anyio.create_task_group() as calls:
                for _ in range(int(concurrency)):
                    calls.start_soon(one)
            tg.cancel_scope.cancel()  # the announcement, if it is still due
        # Anything the calls set off belongs to this run: once every task is
        # blocked (on Redis or a timer), whatever they had to send is sent.
        await anyio.wait_all_tasks_blocked()
        report = {
            "pid": os.getpid(),
            "started": started,
            "finished": finished,
            "results": results,
            "errors": errors,
            "stats": dataclasses.asdict(cache.statistics()),
        }
        print(json.dumps(report), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
    await client.aclose()


async def refresh_loop(
    url: str, namespace: str, key: str, readers: int, compute_ms: int, ttl: float
) -> None:
    """Read KEY for 2 s with XFetch due as early as it can be (beta huge); report computes."""
    computes = 0

    async def compute() -> dict[str, object]:
        nonlocal computes
        computes += 1
        await anyio.sleep(compute_ms / 1000)
        return {"by": os.getpid()}

    async with Stampede.from_url(url, namespace=namespace, beta=1e9) as cache:
        await cache.get_or_compute(key, compute, ttl=ttl, beta=0)  # fill (or read) it
        computes_before = computes
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go", line
        reads = 0

        async def reader() -> None:
            nonlocal reads
            deadline = anyio.current_time() + 2.0
            while anyio.current_time() < deadline:
                await cache.get_or_compute(key, compute, ttl=ttl)
                reads += 1
                await anyio.sleep(0.005)  # pacing: a reader reads 200 times a second

        async with anyio.create_task_group() as tg:
            for _ in range(readers):
                tg.start_soon(reader)
        while cache.statistics().refreshing:  # let the last refresh finish
            await anyio.sleep(0.01)
        stats = dataclasses.asdict(cache.statistics())
        print(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "reads": reads,
                    "stats": stats,
                    "refreshes": computes - computes_before,
                }
            ),
            flush=True,
        )
        await anyio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    anyio.run(main)
