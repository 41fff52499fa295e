"""Redis commands per key: one ``get_many_or_compute`` against N separate ``get_or_compute``.

``python -m benchmarks.batch_commands [--n 100] [--url URL]``

Without ``--url`` it starts a throwaway Redis on a free loopback port and
stops it at the end. For N cold keys, then the same N keys warm, it counts
what the server executed (``INFO commandstats`` before and after, see
``_server.CommandCounter``; that includes the commands the commit script
runs inside ``EVALSHA``) for one ``get_many_or_compute`` of the N keys, and
for N ``get_or_compute`` calls made at once from a task group. Each case
has a fresh namespace and instance (entered before counting starts). It
prints one markdown table; it never writes to the server's configuration.
"""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import anyio

from asyncstampede import Stampede

from ._server import CommandCounter, throwaway_server

COMPUTE_S = 0.01  # each compute (one batch_fn call, or one fn) takes this long


async def _batch_fn(keys: list[str]) -> dict[str, Any]:
    await anyio.sleep(COMPUTE_S)
    return {k: {"id": k} for k in keys}


def _one(key: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def compute() -> dict[str, Any]:
        await anyio.sleep(COMPUTE_S)
        return {"id": key}

    return compute


async def _separately(cache: Stampede, keys: list[str]) -> dict[str, Any]:
    """One ``get_or_compute`` per key, all at once."""
    values: dict[str, Any] = {}

    async def one(key: str) -> None:
        values[key] = await cache.get_or_compute(key, _one(key), ttl=600)

    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(one, key)
    return values


async def _measure(url: str, n: int, batch: bool) -> list[tuple[str, Counter[str]]]:
    """Count the commands of one cold, then one warm, round over *n* keys."""
    counter = CommandCounter(url)
    keys = [f"item:{i}" for i in range(n)]
    rows = []
    try:
        async with Stampede.from_url(url, namespace=f"bench-{uuid.uuid4().hex[:8]}") as cache:
            for state in ("cold", "warm"):
                await anyio.wait_all_tasks_blocked()  # entering's (or the last round's) work done
                before = counter.read()
                if batch:
                    values = await cache.get_many_or_compute(keys, _batch_fn, ttl=600)
                else:
                    values = await _separately(cache, keys)
                await anyio.wait_all_tasks_blocked()  # anything the calls set off has been sent
                sent = counter.since(before)
                assert len(values) == n
                rows.append((state, sent))
    finally:
        counter.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, measure, print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batch_commands", description=__doc__
    )
    parser.add_argument("--n", type=int, default=100, help="keys per round")
    parser.add_argument("--url", help="a Redis of your own (loopback); default: a throwaway one")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url or stack.enter_context(throwaway_server())
        print(f"| N={args.n} | state | commands | per key | by command |")
        print("|---|---|---:|---:|---|")
        for batch, label in ((True, "get_many_or_compute"), (False, "N x get_or_compute")):
            for state, sent in anyio.run(_measure, url, args.n, batch):
                total = sum(sent.values())
                detail = ", ".join(f"{name.upper()} {c}" for name, c in sent.most_common())
                print(f"| {label} | {state} | {total} | {total / args.n:.2f} | {detail} |")


if __name__ == "__main__":
    main()
