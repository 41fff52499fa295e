"""A worker process for the Sentinel tests, driven over stdin/stdout (see ``_herd.Worker``).

Usage: python _sentinel_worker.py SENTINELS SERVICE NAMESPACE CONCURRENCY LOCK_TTL WAIT_TIMEOUT

SENTINELS is ``host:port,host:port...``. Its client is
``Sentinel(...).master_for(SERVICE)``, every connection named
``worker-<pid>`` (the test finds them in CLIENT LIST). It prints ``ready``;
then each line ``go KEY COMPUTE_MS`` runs CONCURRENCY concurrent
``get_or_compute(KEY)`` calls whose compute sleeps COMPUTE_MS. Once one of
them computes, or waits on another process's lock, it prints ``computing``
or ``waiting``; when they all end, one JSON line: each call's value and
duration, the errors, this round's counters (statistics deltas), the wake
transport, the primaries followed, and what the ``asyncstampede`` loggers
said at WARNING or above. ``exit`` ends it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

import anyio
from _conditions import until
from redis.asyncio.sentinel import Sentinel

from asyncstampede import Stampede


class _Said(logging.Handler):
    """Keeps what the library logs (its warnings, and the sentinel part's news)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.name == "asyncstampede.sentinel":
            self.lines.append(f"{record.levelname} {record.name} {record.getMessage()}")


async def main() -> None:
    sentinels, service, namespace, concurrency, lock_ttl, wait_timeout = sys.argv[1:]
    said = _Said()
    logging.getLogger("asyncstampede").addHandler(said)
    logging.getLogger("asyncstampede").setLevel(logging.INFO)
    hosts = [(h, int(p)) for h, _, p in (item.rpartition(":") for item in sentinels.split(","))]
    sentinel = Sentinel(hosts)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(service, client_name=f"worker-{os.getpid()}")
    async with Stampede(
        client, namespace=namespace, lock_ttl=float(lock_ttl), wait_timeout=float(wait_timeout)
    ) as cache:
        await client.ping()
        print("ready", flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).split()
            if line[:1] != ["go"]:
                break
            said.lines.clear()
            report = await herd(cache, line[1], int(line[2]) / 1000, int(concurrency))
            primary = cache._rt.backend._primary  # type: ignore[attr-defined]
            report.update(pid=os.getpid(), moves=primary.moves, said=list(said.lines))
            print(json.dumps(report), flush=True)
    await client.aclose()
    await sentinel.aclose()


async def herd(cache: Stampede, key: str, compute_s: float, concurrency: int) -> dict[str, Any]:
    """Run *concurrency* calls of *key* at once; return what happened (see the module)."""
    before = dataclasses.asdict(cache.statistics())

    async def compute() -> dict[str, object]:
        await anyio.sleep(compute_s)
        return {"by": os.getpid(), "at": time.time()}

    results: list[object] = []
    durations: list[float] = []
    errors: list[str] = []

    async def one() -> None:
        started = time.monotonic()
        try:
            results.append(await cache.get_or_compute(key, compute, ttl=60))
        except Exception as exc:
            errors.append(repr(exc))
        durations.append(time.monotonic() - started)

    announced = False

    async def announce() -> None:
        nonlocal announced

        def busy() -> bool:
            stats = cache.statistics()
            return stats.computing > 0 or stats.waiting > 0

        await until(busy, within=30)
        announced = True
        print("computing" if cache.statistics().computing else "waiting", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        async with anyio.create_task_group() as calls:
            for _ in range(concurrency):
                calls.start_soon(one)
        tg.cancel_scope.cancel()  # the announcement, if none was due
    if not announced:
        print("served", flush=True)  # the value was there: nobody computed or waited
    # Whatever the calls set off (a commit still on its way) is sent.
    await anyio.wait_all_tasks_blocked()
    after = dataclasses.asdict(cache.statistics())
    counted = {k: v - before[k] for k, v in after.items() if isinstance(v, int)}
    return {
        "results": results,
        "durations": durations,
        "errors": errors,
        "counted": counted,
        "wake": after["wake"],
    }


if __name__ == "__main__":
    anyio.run(main)
