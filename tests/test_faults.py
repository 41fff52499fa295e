"""Faults on real servers: a paused, killed, partitioned, slow Redis; killed clients.

The call's budget for Redis (``redis_budget``) bounds what one call spends
on a Redis that does not answer; the circuit breaker then keeps later calls
from spending it again until a probe finds Redis answering. These tests show
the mechanisms by what they count and what they return: a call that fails
open has computed its own value, a call the breaker kept from Redis is
counted in ``short_circuited`` and sent nothing. The hang guards are set far
below the socket timeout (30 s here), so only the budget can end a call in
time; the latencies themselves are measured by the benchmark harness
(``python -m benchmarks --scenarios outage``), not here.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis
from _conditions import until
from _proxy import FaultProxy

from asyncstampede import BackendUnavailableError, CircuitOpenError, Stampede
from asyncstampede.events import BreakerChange, Event
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio

SOCKET_TIMEOUT = 30.0  # far above every hang guard: only the budget can end a call in time
GUARD = 8.0  # seconds: a hang guard, never a measurement


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of this test's own (paused, killed, restarted), always resumed at the end."""
    with RedisServer() as srv:
        yield srv


class Values:
    """A compute that returns 0, 1, 2...: a value shows which compute made it."""

    def __init__(self) -> None:
        self._next = itertools.count()
        self.made = 0

    async def __call__(self) -> int:
        self.made += 1
        return next(self._next)


class Recorder:
    """A hook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def states(self) -> list[str]:
        return [e.state for e in self.events if isinstance(e, BreakerChange)]


def _open(url: str, namespace: str, **settings: Any) -> Stampede:
    """An instance with the suite's settings: a 0.5 s budget, a socket timeout far above it."""
    settings = {"socket_timeout": SOCKET_TIMEOUT, "redis_budget": 0.5, **settings}
    return Stampede.from_url(url, namespace=namespace, **settings)


async def _until_connected(cache: Stampede) -> None:
    """Wait for the instance's own connections, so a fault finds them up."""
    await until(lambda: cache.statistics().wake != "poll")
    assert await cache.get_or_compute("warm-up", Values(), ttl=60) is not None


@pytest.fixture
async def cache(server: RedisServer, namespace: str) -> AsyncIterator[tuple[Stampede, Recorder]]:
    recorder = Recorder()
    async with _open(server.url, namespace, hooks=[recorder]) as stampede:
        await _until_connected(stampede)
        try:
            yield stampede, recorder
        finally:
            server.resume()  # harmless when not paused


async def test_a_pause_costs_one_call_its_budget_then_calls_skip_redis_until_it_answers(
    server: RedisServer,
    cache: tuple[Stampede, Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGSTOP: the first call fails open at the budget; the rest skip Redis; SIGCONT closes it."""
    stampede, hooks = cache
    values = Values()
    assert await stampede.get_or_compute("hot", values, ttl=60) == 0
    assert await stampede.get_or_compute("hot", values, ttl=60) == 0  # a hit
    with caplog.at_level(logging.INFO, logger="asyncstampede"):
        server.pause()
        with anyio.fail_after(GUARD):
            assert await stampede.get_or_compute("hot", values, ttl=60) == 1  # fail open
        stats = stampede.statistics()
        assert stats.breaker != "closed"
        assert (stats.breaker_opens, stats.backend_errors) == (1, 1)
        skipped = stats.short_circuited
        with anyio.fail_after(GUARD):
            for i in range(20):
                assert await stampede.get_or_compute("hot", values, ttl=60) == 2 + i
        stats = stampede.statistics()
        assert stats.short_circuited >= skipped + 20  # each sent nothing...
        assert (stats.breaker_opens, stats.backend_errors) == (1, 1)  # ...and is no new failure
        server.resume()
        await until(lambda: stampede.statistics().breaker == "closed")
        # Redis again: the value stored before the pause.
        assert await stampede.get_or_compute("hot", values, ttl=60) == 0
    assert stampede.statistics().hits >= 2
    assert hooks.states()[0] == "open"
    assert hooks.states()[-1] == "closed"
    opened = [r.getMessage() for r in caplog.records if "circuit breaker opened" in r.getMessage()]
    closed = [r.getMessage() for r in caplog.records if "circuit breaker closed" in r.getMessage()]
    assert len(opened) == 1, opened
    assert "no reply" in opened[0]
    assert server.url.split("//")[1].split("/")[0] in opened[0]  # the server is named
    assert len(closed) == 1, closed


async def test_with_fail_open_off_a_pause_raises_then_raises_at_once(
    server: RedisServer, namespace: str
) -> None:
    """fail_open=False: the budget's BackendUnavailableError, then CircuitOpenError at once."""
    async with _open(server.url, namespace, fail_open=False) as stampede:
        await _until_connected(stampede)
        values = Values()
        server.pause()
        try:
            with anyio.fail_after(GUARD):
                with pytest.raises(BackendUnavailableError) as first:
                    await stampede.get_or_compute("k", values, ttl=60)
                assert not isinstance(first.value, CircuitOpenError)
                with pytest.raises(CircuitOpenError, match="skipped"):
                    await stampede.get_or_compute("k", values, ttl=60)
            assert values.made == 0
        finally:
            server.resume()
        await until(lambda: stampede.statistics().breaker == "closed")
        assert await stampede.get_or_compute("k", values, ttl=60) == 0


async def test_a_killed_redis_opens_the_breaker_and_its_restart_closes_it(
    server: RedisServer, cache: tuple[Stampede, Recorder]
) -> None:
    """Killed (connections reset, then refused): calls fail open; restarted: cached again."""
    stampede, _ = cache
    values = Values()
    server.kill()
    with anyio.fail_after(GUARD):
        assert await stampede.get_or_compute("k", values, ttl=60) == 0
    await until(lambda: stampede.statistics().breaker_opens == 1)
    with anyio.fail_after(GUARD):
        assert await stampede.get_or_compute("k", values, ttl=60) == 1
    server.restart()
    await until(lambda: stampede.statistics().breaker == "closed")
    assert await stampede.get_or_compute("k", values, ttl=60) == 2  # an empty server: computed
    assert await stampede.get_or_compute("k", values, ttl=60) == 2  # and stored
    assert stampede.statistics().breaker_opens == 1


async def test_killed_clients_are_replaced_without_opening_the_breaker(
    server: RedisServer, cache: tuple[Stampede, Recorder]
) -> None:
    """CLIENT KILL of every connection (requests, pool, watching): no error, no outage."""
    stampede, hooks = cache
    admin = redis.Redis(port=server.port)
    values = Values()
    try:
        assert await stampede.get_or_compute("k", values, ttl=60) == 0
        for kind in ("normal", "pubsub", "normal"):
            admin.client_kill_filter(_type=kind, skipme=True)
            with anyio.fail_after(GUARD):
                for _ in range(20):
                    assert await stampede.get_or_compute("k", values, ttl=60) == 0
        stats = stampede.statistics()
        assert (stats.breaker_opens, stats.backend_errors, values.made) == (0, 0, 1)
        assert hooks.states() == []
    finally:
        admin.close()


async def test_a_partition_opens_the_breaker_and_healing_closes_it(
    server: RedisServer, namespace: str
) -> None:
    """Every connection, old and new, silent: fail open at the budget; healed: Redis again."""
    async with FaultProxy(server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with _open(url, namespace) as stampede:
            await _until_connected(stampede)
            values = Values()
            assert await stampede.get_or_compute("k", values, ttl=60) == 0
            proxy.partition()
            with anyio.fail_after(GUARD):
                assert await stampede.get_or_compute("k", values, ttl=60) == 1
                assert await stampede.get_or_compute("k", values, ttl=60) == 2
            assert stampede.statistics().breaker_opens == 1
            proxy.heal()
            # The silent request connection was replaced (it fell silent for a
            # whole budget): the probe gets through on a new one.
            await until(lambda: stampede.statistics().breaker == "closed", within=20)
            assert await stampede.get_or_compute("k", values, ttl=60) == 0


@pytest.mark.parametrize("delay", [0.02, 0.3])
async def test_a_slow_redis_never_holds_a_call_past_its_budget_and_values_still_land(
    server: RedisServer, namespace: str, delay: float
) -> None:
    """Each reply held back *delay* s: fast enough, it caches; too slow, calls fail open.

    At 0.3 s a miss cannot read and take the lock within 0.5 s: it computes
    without waiting for Redis, and its value is committed in the background
    (the lock it asked for is its own), so the key is cached all the same
    and the next call is a hit (one round trip). Replies keep coming, so the
    breaker stays closed.
    """
    async with FaultProxy(server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with _open(url, namespace) as stampede:
            await _until_connected(stampede)
            proxy.delay = delay
            values = Values()
            with anyio.fail_after(GUARD):
                assert await stampede.get_or_compute("k", values, ttl=60) == 0
            admin = redis.Redis(port=server.port)
            try:
                await until(lambda: admin.exists(f"{namespace}:{{k}}:v") == 1)
            finally:
                admin.close()
            with anyio.fail_after(GUARD):
                assert await stampede.get_or_compute("k", values, ttl=60) == 0  # a hit
            stats = stampede.statistics()
            assert (values.made, stats.breaker_opens) == (1, 0)
            if delay > 0.25:
                assert stats.backend_errors == 1  # the first call's budget ran out
            else:
                assert stats.backend_errors == 0
            await until(lambda: stampede.statistics().in_flight == 0)


@asynccontextmanager
async def _a_waiter_behind_a_paused_holder(
    server: RedisServer, namespace: str
) -> AsyncIterator[tuple[Stampede, list[str]]]:
    """One instance holds "k" (60 s lock, its compute gated); another waits; Redis is paused.

    Yields the waiter's instance and the list its call's value lands in
    (``"waiter"``: it failed open). Redis is resumed, and the holder let go,
    at the end.
    """
    release = anyio.Event()

    async def slow() -> str:
        await release.wait()
        return "holder"

    async def mine() -> str:
        return "waiter"

    async with (
        _open(server.url, namespace, lock_ttl=60.0) as holder,
        _open(server.url, namespace, lock_ttl=60.0) as waiter,
    ):
        await _until_connected(waiter)
        result: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.get_or_compute, "k", slow, 60)
            await until(lambda: holder.statistics().computing == 1)

            async def wait() -> None:
                result.append(await waiter.get_or_compute("k", mine, ttl=60))

            tg.start_soon(wait)
            await until(lambda: waiter.statistics().waiting == 1)
            server.pause()
            try:
                yield waiter, result
            finally:
                server.resume()
                release.set()


async def test_a_waiter_fails_open_when_the_breaker_opens(
    server: RedisServer, namespace: str
) -> None:
    """A waiter in another instance does not sleep out a lock whose holder cannot commit."""

    async def mine() -> str:
        return "waiter"

    async with _a_waiter_behind_a_paused_holder(server, namespace) as (waiter, result):
        # Another call of the waiter's instance meets the silence: the
        # breaker opens, and the waiter looks at once (lock_ttl is 60 s).
        with anyio.fail_after(GUARD):
            assert await waiter.get_or_compute("other", mine, ttl=60) == "waiter"
            await until(lambda: result == ["waiter"])
    assert waiter.statistics().breaker_opens == 1


async def test_a_hook_that_raises_breaks_nothing(
    server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook's error is logged; the calls and the breaker go on."""

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    async with _open(server.url, namespace, hooks=[broken]) as stampede:
        await _until_connected(stampede)
        values = Values()
        server.pause()
        try:
            with caplog.at_level(logging.ERROR, logger="asyncstampede"), anyio.fail_after(GUARD):
                assert await stampede.get_or_compute("k", values, ttl=60) == 0
                assert await stampede.get_or_compute("k", values, ttl=60) == 1
        finally:
            server.resume()
        await until(lambda: stampede.statistics().breaker == "closed")
    assert any("hook" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


async def test_leaving_during_an_outage_ends_promptly(server: RedisServer, namespace: str) -> None:
    """Closing with calls stuck on a paused Redis: they end, and so does the close."""
    values = Values()
    outcome: list[object] = []
    try:
        with anyio.fail_after(GUARD * 2):
            async with _open(server.url, namespace, redis_budget=5) as stampede:
                await _until_connected(stampede)
                server.pause()

                async def call(i: int) -> None:
                    try:
                        outcome.append(await stampede.get_or_compute(f"k{i}", values, ttl=60))
                    except Exception as exc:
                        outcome.append(exc)

                async with anyio.create_task_group() as tg:
                    for i in range(10):
                        tg.start_soon(call, i)
                    await until(lambda: stampede.statistics().in_flight == 10)
                    tg.cancel_scope.cancel()
                # Leaving now: every resolution is still waiting for Redis.
                assert stampede.statistics().in_flight == 10
    finally:
        server.resume()
    assert values.made == 0  # the stuck calls never computed


async def test_a_slow_redis_is_used_again_after_a_pause(
    server: RedisServer, namespace: str
) -> None:
    """Replies 150 ms late (under the budget): after a pause, the probe closes the breaker."""
    async with FaultProxy(server.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with _open(url, namespace) as stampede:
            await _until_connected(stampede)
            proxy.delay = 0.15
            values = Values()
            assert await stampede.get_or_compute("k", values, ttl=60) == 0
            server.pause()
            try:
                with anyio.fail_after(GUARD):
                    assert await stampede.get_or_compute("k", values, ttl=60) == 1
            finally:
                server.resume()
            await until(lambda: stampede.statistics().breaker == "closed")
            assert await stampede.get_or_compute("k", values, ttl=60) == 0  # Redis's value
            assert stampede.statistics().breaker_opens == 1


async def test_a_lone_waiter_notices_a_silent_redis_without_waiting_out_the_lock(
    server: RedisServer, namespace: str
) -> None:
    """Nothing else runs: the watching connection's ping goes unanswered, the breaker opens."""
    async with _a_waiter_behind_a_paused_holder(server, namespace) as (waiter, result):
        # Its lock has 60 s to live; a ping 2 s into the silence,
        # unanswered within the budget, opens the breaker.
        with anyio.fail_after(GUARD):
            await until(lambda: result == ["waiter"], within=GUARD)
    assert waiter.statistics().breaker_opens == 1


async def test_every_outage_is_logged_even_within_seconds_of_the_last(
    server: RedisServer, cache: tuple[Stampede, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    """Two pauses a few seconds apart: two 'opened' lines, two 'closed' lines, four events."""
    stampede, hooks = cache
    values = Values()
    with caplog.at_level(logging.INFO, logger="asyncstampede"):
        for outage in (1, 2):
            server.pause()
            try:
                with anyio.fail_after(GUARD):
                    await stampede.get_or_compute(f"k{outage}", values, ttl=60)
                assert stampede.statistics().breaker_opens == outage
            finally:
                server.resume()
            await until(lambda: stampede.statistics().breaker == "closed")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("circuit breaker opened" in line for line in lines) == 2, lines
    assert sum("circuit breaker closed" in line for line in lines) == 2, lines
    assert hooks.states() == ["open", "closed", "open", "closed"]


async def test_a_socket_timeout_shorter_than_the_budget_opens_the_breaker(
    server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """socket_timeout=0.3 s, redis_budget=5 s: the breaker opens at the socket timeout."""
    async with Stampede.from_url(
        server.url, namespace=namespace, socket_timeout=0.3, redis_budget=5
    ) as stampede:
        await _until_connected(stampede)
        values = Values()
        server.pause()
        try:
            with caplog.at_level(logging.WARNING, logger="asyncstampede"):
                with anyio.fail_after(GUARD):
                    assert await stampede.get_or_compute("k", values, ttl=60) == 0
                await until(lambda: stampede.statistics().breaker_opens == 1)
                with anyio.fail_after(GUARD):
                    assert await stampede.get_or_compute("k", values, ttl=60) == 1
        finally:
            server.resume()
    opened = [r.getMessage() for r in caplog.records if "breaker opened" in r.getMessage()]
    assert len(opened) == 1, opened
    assert "socket timeout" in opened[0], opened


async def test_a_redis_hung_at_start_costs_entering_and_one_call_a_budget(
    server: RedisServer, namespace: str
) -> None:
    """Entering does not wait for the socket timeout; the first call opens the breaker."""
    server.pause()
    try:
        with anyio.fail_after(GUARD):
            async with _open(server.url, namespace) as stampede:
                values = Values()
                assert await stampede.get_or_compute("k", values, ttl=60) == 0
                assert stampede.statistics().breaker_opens == 1
                skipped = stampede.statistics().short_circuited
                assert await stampede.get_or_compute("k", values, ttl=60) == 1
                assert stampede.statistics().short_circuited > skipped
    finally:
        server.resume()


async def test_a_value_computed_during_an_outage_is_stored_when_it_ends(
    server: RedisServer, namespace: str
) -> None:
    """The commit the open breaker kept from Redis is made when it closes; no lock is left."""
    release = anyio.Event()

    async def slow() -> str:
        await release.wait()
        return "v1"

    async def quick() -> str:
        return "v2"

    admin = redis.Redis(port=server.port)
    try:
        async with _open(server.url, namespace) as stampede:
            await _until_connected(stampede)
            result: list[str] = []
            async with anyio.create_task_group() as tg:

                async def lead() -> None:
                    result.append(await stampede.get_or_compute("k", slow, ttl=60))

                tg.start_soon(lead)
                await until(lambda: stampede.statistics().computing == 1)  # it holds the lock
                server.pause()
                try:
                    with anyio.fail_after(GUARD):  # another call meets the silence
                        await stampede.get_or_compute("other", quick, ttl=60)
                    assert stampede.statistics().breaker != "closed"
                    release.set()  # its commit is skipped: owed
                    await until(lambda: result == ["v1"])
                finally:
                    server.resume()
            await until(lambda: stampede.statistics().breaker == "closed")
            await until(lambda: admin.exists(f"{namespace}:{{k}}:v") == 1)
            with anyio.fail_after(1):  # a hit: no lock to wait for
                assert await stampede.get_or_compute("k", quick, ttl=60) == "v1"
    finally:
        admin.close()


async def test_with_fail_open_off_a_lock_attempt_past_the_budget_is_let_go(
    server: RedisServer, namespace: str
) -> None:
    """Replies 0.3 s late: the call raises at the budget, and the lock its SET took is released."""
    admin = redis.Redis(port=server.port)
    try:
        async with FaultProxy(server.port) as proxy:
            url = f"redis://127.0.0.1:{proxy.port}/0"
            async with _open(url, namespace, fail_open=False) as stampede:
                await _until_connected(stampede)
                proxy.delay = 0.3
                with anyio.fail_after(GUARD), pytest.raises(BackendUnavailableError):
                    await stampede.get_or_compute("k", Values(), ttl=60)
                # The SET landed (lock_ttl is 5 s); the release follows at once.
                await until(lambda: admin.exists(f"{namespace}:{{k}}:l") == 0, within=3)
    finally:
        admin.close()


async def test_a_blocked_loop_does_not_open_the_breaker(
    server: RedisServer, cache: tuple[Stampede, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    """This process's loop blocked 0.7 s (Redis fine) with a read in flight: no outage.

    The read that failed open says the loop was blocked, not only that Redis
    did not answer: the operator looks for the blocking call, not at Redis.
    """
    stampede, hooks = cache
    values = Values()
    assert await stampede.get_or_compute("k", values, ttl=60) == 0
    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with anyio.create_task_group() as tg:

            async def hits() -> None:
                for _ in range(20):  # (the read in flight fails open: its budget ran out)
                    await stampede.get_or_compute("k", values, ttl=60)

            tg.start_soon(hits)
            await anyio.lowlevel.checkpoint()  # its first read goes out...
            time.sleep(0.7)  # ...and the fault: the loop blocked past the budget  # noqa: ASYNC251
    assert stampede.statistics().breaker_opens == 0
    assert hooks.states() == []
    failed = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert failed
    assert all("event loop" in line and "may not be at fault" in line for line in failed), failed
    assert await stampede.get_or_compute("k", values, ttl=60) == 0  # Redis, as ever
