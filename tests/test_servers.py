"""The same guarantees on every server asyncstampede supports: Redis 7, Valkey 9, Redis 6.2.

Redis 6.2 lacks ``SET ... NX ... GET``; there the lock is taken by a script,
and everything else must behave the same.
"""

from __future__ import annotations

import logging

import anyio
import pytest
import redis
from _conditions import until
from _herd import Worker, run_herd

from asyncstampede import Stampede
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


def test_herd_of_two_processes_computes_once(
    server_of_each_kind: RedisServer, workers: list[Worker], namespace: str
) -> None:
    """2 processes x 20 callers, 200 ms compute: one compute, the waiter woken by Redis."""
    reports, _ = run_herd(
        workers, server_of_each_kind.url, namespace, processes=2, concurrency=20, compute_ms=200
    )
    assert sum(r["stats"]["computes"] for r in reports) == 1
    values = [v for r in reports for v in r["results"]]
    assert len(values) == 40
    assert all(v == values[0] for v in values)
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["wakeups"] for r in reports) == 1
    assert sum(r["stats"]["takeovers"] for r in reports) == 0
    assert sum(r["stats"]["backend_errors"] for r in reports) == 0


async def test_failed_compute_hands_the_lock_to_the_waiter_at_once(
    server_of_each_kind: RedisServer, namespace: str
) -> None:
    """The holder's compute raises and releases its lock: the waiter is woken and computes."""
    url = server_of_each_kind.url
    started = anyio.Event()

    async def fail() -> str:
        started.set()
        await until(lambda: waiter.statistics().waiting == 1)  # the waiter watches the lock
        raise RuntimeError("db down")

    async def ok() -> str:
        return "second try"

    async with (
        Stampede.from_url(url, namespace=namespace, lock_ttl=30) as leader,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30) as waiter,
        anyio.create_task_group() as tg,
    ):

        async def lead() -> None:
            with pytest.raises(RuntimeError):
                await leader.get_or_compute("k", fail, ttl=30)

        tg.start_soon(lead)
        await started.wait()
        with anyio.fail_after(10):  # far below lock_ttl
            assert await waiter.get_or_compute("k", ok, ttl=30) == "second try"
        stats = waiter.statistics()
        assert (stats.remote_waits, stats.wakeups, stats.takeovers, stats.computes) == (1, 1, 0, 1)


async def test_scripts_lost_are_reloaded(
    server_of_each_kind: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SCRIPT FLUSH between two herds: the next commit reloads its script and stores the value."""
    url = server_of_each_kind.url
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        return "v"

    with caplog.at_level(logging.INFO, logger="asyncstampede"):
        async with Stampede.from_url(url, namespace=namespace, lock_ttl=30) as cache:
            await cache.get_or_compute("a", compute, ttl=60)
            server_of_each_kind.command("SCRIPT", "FLUSH")
            with anyio.fail_after(10):
                await cache.get_or_compute("b", compute, ttl=60)
            assert cache.statistics().backend_errors == 0
    assert calls == 2
    sync = redis.Redis.from_url(url)
    assert sync.get(make_names(namespace, "b").value) is not None
    assert sync.exists(make_names(namespace, "b").lock) in (0, 1)  # at most the commit's marker
    sync.close()
    assert "lost its scripts" in caplog.text


async def test_invalidate_during_a_compute_keeps_its_result_out(
    server_of_each_kind: RedisServer, namespace: str
) -> None:
    """An invalidation while the holder computes: its commit finds the lock gone, writes nothing."""
    url = server_of_each_kind.url
    started = anyio.Event()
    release = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "old"

    async with (
        Stampede.from_url(url, namespace=namespace) as cache,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(cache.get_or_compute, "k", slow, 60)
        await started.wait()
        await cache.invalidate("k")
        release.set()
    assert cache.statistics().lock_lost == 1
    sync = redis.Redis.from_url(url)
    assert sync.get(make_names(namespace, "k").value) is None
    sync.close()
