"""What a wait costs stays bounded, whatever else makes Redis report the lock's name.

Client tracking reports a key when its tracking is dropped (a full tracking
table) and when a key of that name changes in any database. A waiter woken
that way finds its lock as it was; looking again at once, for the whole
wait, made one process waiting 2 s on 4 locks cost the server about 30,000
commands on a server with ``tracking-table-max-keys 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import pytest
import redis
from _conditions import until

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


async def test_forced_polling_wakes_waiters_by_looking(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """wake='poll' (for proxies without CLIENT): one compute, values by a few looks, a WARNING."""
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with (
            Stampede.from_url(redis_url, namespace=namespace, wake="poll", lock_ttl=30) as a,
            Stampede.from_url(redis_url, namespace=namespace, wake="poll", lock_ttl=30) as b,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(a.get_or_compute, "k", slow, 60)
            await started.wait()
            got: list[object] = []

            async def wait() -> None:
                got.append(await b.get_or_compute("k", slow, ttl=60))

            tg.start_soon(wait)
            await until(lambda: b.statistics().polls >= 2)
            release.set()
            await until(lambda: got == ["v"])
            stats = b.statistics()
            assert stats.wake == "poll"
            assert (stats.computes, stats.wakeups, stats.takeovers) == (0, 0, 0)
            assert stats.polls <= 12
    assert any("wake='poll'" in r.getMessage() for r in caplog.records)


async def test_statistics_name_how_waiters_wake(redis_url: str, namespace: str) -> None:
    """statistics().wake: tracking once Redis reports changes; in-process when embedded."""
    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        await until(lambda: cache.statistics().wake == "tracking")
    async with Stampede(namespace=namespace) as embedded:
        assert embedded.statistics().wake == "in-process"


def test_an_unknown_wake_transport_is_refused() -> None:
    """wake='pubsub' names the choices instead of being ignored."""
    choices = "'auto', 'tracking', 'tracking-resp3', 'keyspace', 'channel', 'poll'"
    with pytest.raises(ValueError, match=choices):
        Stampede(wake="pubsub")  # type: ignore[arg-type]
