"""A separate process for the multi-process batch tests; driven over stdin/stdout.

Usage: python _batch_worker.py URL NAMESPACE START STOP STEP [return|fail] [LOCK_TTL]

It connects, prints ``ready``, waits for a ``go`` line, then makes one
``get_many_or_compute`` call for the keys ``k<START>`` .. ``k<STOP-1>``
(every STEP-th). Its ``batch_fn`` records the keys it is given and waits
for the test's ``return`` line (then, with ``fail``, raises RuntimeError
instead of returning values). Once every key of the call is either being
computed here or waited for (the keys another process holds), it prints
``settled``; it then waits for ``return``, lets the computes end, prints one
JSON line (the keys it computed, each batch_fn call's keys, the values,
errors, statistics) and waits for ``exit``. *LOCK_TTL*: the instance's
``lock_ttl`` in seconds (5, the default, unless given).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import anyio
from _conditions import until

from asyncstampede import Stampede


async def main() -> None:
    url, namespace, start, stop, step, *more = sys.argv[1:]
    fail = more[:1] == ["fail"]  # (else "return", the default)
    lock_ttl = float(more[1]) if len(more) > 1 else 5.0  # (the default)
    keys = [f"k{i}" for i in range(int(start), int(stop), int(step))]
    batches: list[list[str]] = []  # each batch_fn call's keys
    gate = anyio.Event()

    async def batch_fn(asked: list[str]) -> dict[str, Any]:
        batches.append(list(asked))
        await gate.wait()
        if fail:
            raise RuntimeError("the database is down")
        return {k: {"key": k, "by": os.getpid()} for k in asked}

    async with Stampede.from_url(url, namespace=namespace, lock_ttl=lock_ttl) as cache:
        await cache.check()
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go", line
        values: dict[str, Any] = {}
        errors: list[str] = []

        async def ask() -> None:
            try:
                values.update(await cache.get_many_or_compute(keys, batch_fn, ttl=60))
            except Exception as exc:
                errors.append(repr(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            # Every key is cold: once each is computed here or waited for,
            # this process has asked Redis about every lock it needs.
            stats = cache.statistics
            await until(lambda: stats().computing + stats().waiting == len(keys), within=30)
            print("settled", flush=True)
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            assert line.strip() == "return", line
            gate.set()
        await anyio.wait_all_tasks_blocked()
        report = {
            "pid": os.getpid(),
            "computed": [k for batch in batches for k in batch],
            "calls": len(batches),
            "batches": batches,
            "values": values,
            "errors": errors,
            "stats": dataclasses.asdict(cache.statistics()),
        }
        print(json.dumps(report), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    anyio.run(main)
