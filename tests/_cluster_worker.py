"""A separate process for multi-process tests on a Redis Cluster; driven over stdin/stdout.

Usage: python _cluster_worker.py URL NAMESPACE KEYS CONCURRENCY COMPUTE_MS WAIT_TIMEOUT

KEYS is a comma-separated list. It makes ``Stampede.from_url(URL,
cluster=True)``, prints ``ready`` once every primary is served with a wake
transport (not polling), waits for a ``go`` line, then runs CONCURRENCY
concurrent ``get_or_compute`` calls of every key at once, each compute
sleeping COMPUTE_MS. When the calls end it prints one JSON line: computes
per key, values per key, how long the longest call took, errors,
statistics. Then it waits for ``exit``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter

import anyio
from _conditions import until

from asyncstampede import Stampede


async def main() -> None:
    url, namespace, keys_arg, concurrency, compute_ms, wait_timeout = sys.argv[1:]
    keys = keys_arg.split(",")
    async with Stampede.from_url(
        url, cluster=True, namespace=namespace, wait_timeout=float(wait_timeout)
    ) as cache:
        await until(
            lambda: (
                len(cache.statistics().nodes) >= 3
                and all(n.wake != "poll" for n in cache.statistics().nodes)
            ),
            within=30,
        )
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go", line
        computes: Counter[str] = Counter()
        values: dict[str, list[object]] = {key: [] for key in keys}
        errors: list[str] = []
        longest = 0.0

        async def compute(key: str) -> dict[str, object]:
            computes[key] += 1
            await anyio.sleep(int(compute_ms) / 1000)
            return {"key": key, "by": os.getpid()}

        async def one(key: str) -> None:
            nonlocal longest
            started = time.monotonic()
            try:
                values[key].append(await cache.get_or_compute(key, compute, 60, key))
            except Exception as exc:
                errors.append(repr(exc))
            longest = max(longest, time.monotonic() - started)

        async with anyio.create_task_group() as calls:
            for key in keys:
                for _ in range(int(concurrency)):
                    calls.start_soon(one, key)
        print(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "computes": dict(computes),
                    "values": {
                        key: sorted({json.dumps(v, sort_keys=True) for v in got})
                        for key, got in values.items()
                    },
                    "answered": sum(len(got) for got in values.values()),
                    "wrong": sum(
                        1
                        for key, got in values.items()
                        for v in got
                        if not (isinstance(v, dict) and v.get("key") == key)
                    ),
                    "errors": errors,
                    "longest": longest,
                    "stats": dataclasses.asdict(cache.statistics()),
                }
            ),
            flush=True,
        )
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "exit", line


if __name__ == "__main__":
    anyio.run(main)
