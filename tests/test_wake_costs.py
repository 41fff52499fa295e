"""What a wait costs stays bounded, whatever else makes Redis report the lock's name.

Client tracking reports a key when its tracking is dropped (a full tracking
table) and when a key of that name changes in any database. A waiter woken
that way finds its lock as it was; looking again at once, for the whole
wait, made one process waiting 2 s on 4 locks cost the server about 30,000
commands on a server with ``tracking-table-max-keys 1``.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
import redis

from asyncstampede import Stampede
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


def _calls(client: redis.Redis, command: str | None = None) -> int:
    stats = client.info("commandstats")
    if command is not None:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return sum(int(v["calls"]) for v in stats.values())


@pytest.fixture
def tiny_tracking_table() -> Iterator[RedisServer]:
    with RedisServer("--tracking-table-max-keys", "1") as server:
        yield server


async def _hold_and_wait(url: str, keys: int, waited: float) -> tuple[list[object], int, int]:
    """Instance a holds *keys* computes open; b waits on them for *waited* s; return b's view."""
    admin = redis.Redis.from_url(url)
    async with (
        Stampede.from_url(url, namespace="w", lock_ttl=5) as a,
        Stampede.from_url(url, namespace="w", lock_ttl=5) as b,
    ):
        computing = anyio.Event()
        release = anyio.Event()
        running = 0

        async def slow() -> str:
            nonlocal running
            running += 1
            if running == keys:
                computing.set()
            await release.wait()
            return "v"

        got: list[object] = []

        async def wait(i: int) -> None:
            got.append(await b.get_or_compute(f"k{i}", slow, ttl=60))

        async with anyio.create_task_group() as tg:
            for i in range(keys):
                tg.start_soon(a.get_or_compute, f"k{i}", slow, 60)
            await computing.wait()
            before = _calls(admin)
            for i in range(keys):
                tg.start_soon(wait, i)
            with anyio.fail_after(10):
                while b.statistics().waiting < keys:
                    await anyio.sleep(0.005)
            await anyio.sleep(waited)  # the condition is the clock: a wait this long
            spent = _calls(admin) - before
            release.set()
        admin.close()
        return got, spent, b.statistics().wakeups


async def test_a_full_tracking_table_does_not_make_a_wait_expensive(
    tiny_tracking_table: RedisServer,
) -> None:
    """4 waits of 2 s with a one-key tracking table: every value, and a few hundred commands."""
    got, spent, _ = await _hold_and_wait(tiny_tracking_table.url, keys=4, waited=2.0)
    assert got == ["v"] * 4
    # Without the back-off: about 30,000 (53 with the default table).
    assert spent < 600


async def test_writes_in_another_database_do_not_make_a_wait_expensive(
    redis_url: str, namespace: str
) -> None:
    """Another app writes the lock's name in DB 1 2,000 times: the waiter looks a few dozen."""
    db1 = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    admin = redis.Redis.from_url(redis_url)
    lock = make_names(namespace, "k").lock
    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=5) as a,
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=5) as b,
    ):
        computing = anyio.Event()
        release = anyio.Event()

        async def slow() -> str:
            computing.set()
            await release.wait()
            return "v"

        got: list[object] = []

        async def wait() -> None:
            got.append(await b.get_or_compute("k", slow, ttl=60))

        async with anyio.create_task_group() as tg:
            tg.start_soon(a.get_or_compute, "k", slow, 60)
            await computing.wait()
            tg.start_soon(wait)
            with anyio.fail_after(10):
                while b.statistics().waiting < 1:
                    await anyio.sleep(0.005)
            looks = _calls(admin, "pttl")
            for _ in range(2000):  # bounded: 2,000 writes from the other app
                await anyio.to_thread.run_sync(db1.set, lock, b"someone else's")
            looks = _calls(admin, "pttl") - looks
            release.set()
    db1.delete(lock)
    db1.close()
    admin.close()
    assert got == ["v"]
    assert looks < 60  # without the back-off: one PTTL per write reported, about 2,000
