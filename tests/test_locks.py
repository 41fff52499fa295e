"""The lock at its edges: a commit that lands mid-way through another process's miss.

A commit leaves a short-lived marker in the lock (see ``_backends.redis.scripts``). These
tests stop one instance at the exact step where another's commit can slip
in, let the commit happen, and check that the late instance neither
computes again nor waits for nothing. The stops are hooks around the
instance's own calls; every command still goes to the real server.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis
from _conditions import until

from asyncstampede import Stampede
from asyncstampede._backends.redis.scripts import COMMITTED, COMMITTED_MS
from asyncstampede._keys import make_names

pytestmark = pytest.mark.anyio


def _counting(value: str, calls: list[str]) -> Any:
    async def compute() -> str:
        calls.append(value)
        await anyio.sleep(0.05)
        return value

    return compute


async def test_a_read_that_missed_just_before_a_commit_is_not_followed_by_a_compute(
    redis_url: str, namespace: str
) -> None:
    """B's GET misses, A commits, then B asks for the lock: B gets A's value, computing nothing."""
    calls: list[str] = []
    async with (
        Stampede.from_url(redis_url, namespace=namespace) as a,
        Stampede.from_url(redis_url, namespace=namespace) as b,
    ):
        missed = anyio.Event()
        committed = anyio.Event()
        read = b._rt.backend.read

        async def read_then_stall(names: Any) -> bytes | None:
            payload = await read(names)  # the real GET, which misses
            missed.set()
            await committed.wait()  # A computes and commits meanwhile
            return payload

        b._rt.backend.read = read_then_stall  # type: ignore[method-assign]
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def late() -> None:
                got.append(await b.get_or_compute("k", _counting("b", calls), ttl=60))

            tg.start_soon(late)
            with anyio.fail_after(5):
                await missed.wait()
                assert await a.get_or_compute("k", _counting("a", calls), ttl=60) == "a"
            committed.set()
        assert got == ["a"]
        assert calls == ["a"]


async def test_a_waiter_whose_lock_was_committed_before_it_watched_does_not_wait(
    redis_url: str, namespace: str
) -> None:
    """B finds A's lock held, A commits, then B watches the lock: B has the value at once."""
    calls: list[str] = []
    async with (
        Stampede.from_url(redis_url, namespace=namespace, wait_timeout=10) as a,
        Stampede.from_url(redis_url, namespace=namespace, wait_timeout=10) as b,
    ):
        release = anyio.Event()
        a_started = anyio.Event()
        b_watching = anyio.Event()
        listener = b._rt.backend.listener
        watch = listener.watch

        async def watch_late(name: bytes, command: str = "PTTL") -> Any:
            if command == "PTTL" and not b_watching.is_set():
                b_watching.set()
                await release.wait()  # A commits before B's PTTL reaches Redis
            return await watch(name, command)

        listener.watch = watch_late  # type: ignore[method-assign]

        async def a_compute() -> str:
            calls.append("a")
            a_started.set()
            await b_watching.wait()
            return "a"

        got: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.get_or_compute, "k", a_compute, 60)
            await a_started.wait()

            async def waiter() -> None:
                got.append(await b.get_or_compute("k", _counting("b", calls), ttl=60))

            tg.start_soon(waiter)
            with anyio.fail_after(5):
                await b_watching.wait()
            await until(lambda: a.statistics().in_flight == 0)  # A has committed
            release.set()
        assert got == ["a"]
        assert calls == ["a"]
        # Taken for a lock, the marker would have had B wait out its 500 ms
        # before looking again.
        assert b.statistics().remote_waits == 0


async def test_a_marker_whose_value_is_gone_is_taken_over_by_one_compute(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """The value vanishes (evicted) under a fresh marker: one compute across two instances."""
    calls: list[str] = []
    names = make_names(namespace, "k")
    async with (
        Stampede.from_url(redis_url, namespace=namespace) as a,
        Stampede.from_url(redis_url, namespace=namespace) as b,
    ):
        assert await a.get_or_compute("k", _counting("first", calls), ttl=60) == "first"
        assert sync_redis.get(names.lock) == COMMITTED
        sync_redis.delete(names.value)  # as maxmemory eviction would
        got: list[str] = []

        async def one(cache: Stampede) -> None:
            got.append(await cache.get_or_compute("k", _counting("second", calls), ttl=60))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for cache in (a, b) * 20:
                    tg.start_soon(one, cache)
        assert calls == ["first", "second"]
        assert got == ["second"] * 40
        assert sync_redis.get(names.lock) == COMMITTED  # the new commit's own marker


async def test_the_marker_never_outlives_its_value(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """A 0.3 s value leaves a marker of at most 0.3 s; a 60 s one, of at most COMMITTED_MS."""
    names = make_names(namespace, "short")
    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        await cache.get_or_compute("short", _counting("v", []), ttl=0.3)
        assert 0 < sync_redis.pttl(names.lock) <= 300 < COMMITTED_MS
        await cache.get_or_compute("long", _counting("v", []), ttl=60)
        assert 0 < sync_redis.pttl(make_names(namespace, "long").lock) <= COMMITTED_MS
