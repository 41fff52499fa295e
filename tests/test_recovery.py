"""The cache heals after Redis loses its state: scripts flushed, server restarted."""

from __future__ import annotations

import logging

import anyio
import pytest
import redis
from _conditions import until

from asyncstampede import Stampede
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


async def _herd(caches: list[Stampede], key: str, per_cache: int = 10) -> tuple[list[str], int]:
    """Run *per_cache* concurrent calls for *key* on each cache; return results and computes."""
    computes = 0

    async def compute() -> str:
        nonlocal computes
        computes += 1
        await anyio.sleep(0.2)
        return f"value of {key}"

    results: list[str] = []

    async def one(cache: Stampede) -> None:
        results.append(await cache.get_or_compute(key, compute, ttl=60))

    # lock_ttl is 30 s: a herd that had to wait out a lock would blow this bound.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for cache in caches:
                for _ in range(per_cache):
                    tg.start_soon(one, cache)
    return results, computes


async def test_herd_after_script_flush_computes_once_and_stores(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """SCRIPT FLUSH: the next commit reloads its script; one compute, the value is stored."""
    async with (
        Stampede.from_url(own_server.url, namespace="ns", lock_ttl=30) as a,
        Stampede.from_url(own_server.url, namespace="ns", lock_ttl=30) as b,
    ):
        results, computes = await _herd([a, b], "warm")
        assert computes == 1
        own_server.command("SCRIPT", "FLUSH")
        with caplog.at_level(logging.WARNING, logger="asyncstampede"):
            results, computes = await _herd([a, b], "new")
        assert computes == 1
        assert results == ["value of new"] * 20
        stored = redis.Redis.from_url(own_server.url).get(make_names("ns", "new").value)
        assert stored is not None
        assert "lost its scripts" in caplog.text
        for cache in (a, b):
            assert cache.statistics().backend_errors == 0


async def test_herd_after_a_server_restart_computes_once_and_stores(
    own_server: RedisServer,
) -> None:
    """Redis restarted (no data, no scripts, connections dropped): the next herd is normal."""
    async with (
        Stampede.from_url(own_server.url, namespace="ns", lock_ttl=30) as a,
        Stampede.from_url(own_server.url, namespace="ns", lock_ttl=30) as b,
    ):
        await _herd([a, b], "warm")
        own_server.restart()
        # The first call after the restart finds the old connections dead.
        # Whatever it meets, the herd after it must be one compute, stored.
        await a.get_or_compute("probe", _value, ttl=60)
        results, computes = await _herd([a, b], "new")
        assert computes == 1
        assert results == ["value of new"] * 20
        sync = redis.Redis.from_url(own_server.url)
        assert sync.get(make_names("ns", "new").value) is not None
        # Both instances' lock watchers came back (the waiters above were
        # woken by them, or by their re-check after reconnecting).
        await until(lambda: min(c.statistics().reconnects for c in (a, b)) > 0)


async def _value() -> str:
    return "v"


def _lock_watcher_up(server: RedisServer) -> bool:
    """Whether a client is subscribed (the invalidation reader) and one tracks keys."""
    clients = server.command("CLIENT", "LIST").split(b"\n")
    flags = [
        f.removeprefix(b"flags=") for c in clients for f in c.split() if f.startswith(b"flags=")
    ]
    return any(b"sub=1" in c.split() for c in clients) and any(b"t" in f for f in flags)


async def test_waiters_after_a_restart_mid_compute_get_the_holders_value(
    own_server: RedisServer,
) -> None:
    """Redis restarts while a holder computes: its commit finds no lock, waiters re-check.

    The restart lost the lock (and the scripts). The holder's commit then
    reports the lock lost and stores nothing; the waiter, told to look again
    by its reconnected watcher, takes the free lock and computes once itself.
    Nobody waits out ``lock_ttl``.
    """
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "holder"

    async def own() -> str:
        return "waiter"

    got: list[str] = []
    async with (
        Stampede.from_url(own_server.url, namespace="ns", lock_ttl=30) as leader,
        Stampede.from_url(own_server.url, namespace="ns", lock_ttl=30, wait_timeout=60) as waiter,
        anyio.create_task_group() as tg,
    ):

        async def lead() -> None:
            got.append(await leader.get_or_compute("k", slow, ttl=60))

        async def wait() -> None:
            got.append(await waiter.get_or_compute("k", own, ttl=60))

        tg.start_soon(lead)
        await started.wait()
        tg.start_soon(wait)
        await until(lambda: waiter.statistics().waiting == 1)  # it watches the lock
        own_server.restart()
        await until(lambda: got)  # far below lock_ttl
        release.set()
    assert sorted(got) == ["holder", "waiter"]
    assert leader.statistics().lock_lost == 1
    assert waiter.statistics().computes == 1


async def test_reconnects_count_reconnections_and_failed_attempts_apart(
    own_server: RedisServer,
) -> None:
    """Redis down from the start: failed attempts are counted, reconnections are not."""
    own_server.stop()
    # A generous socket_timeout: with 0.5 s this failed once in a loaded full
    # run (not reproduced alone); a handshake step timing out after the
    # connection was made would count as a reconnection.
    async with Stampede.from_url(own_server.url, socket_timeout=2.0) as cache:
        await until(lambda: cache.statistics().connect_errors >= 4)
        assert cache.statistics().reconnects == 0
        own_server.restart()  # the same port: now it answers

        async def value() -> str:
            return "v"

        async def a_hit() -> bool:
            await cache.get_or_compute("k", value, ttl=60)
            return cache.statistics().hits > 0

        await until(a_hit)  # first connections made: still no reconnection
        # The lock watcher is up: subscribed, and then (its handshake's last
        # step) tracking. A kill after the subscription alone would fail the
        # first connection, not end one that was up: no reconnection to count.
        await until(lambda: _lock_watcher_up(own_server))
        assert cache.statistics().reconnects == 0
        own_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: cache.statistics().reconnects > 0)
        assert cache.statistics().reconnects == 1
