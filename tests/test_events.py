"""Events: what a hook is handed on the request path, and a hook that fails never breaks it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
import redis
from _conditions import until

from asyncstampede import Stampede
from asyncstampede._keys import make_names
from asyncstampede.events import (
    BackendFailure,
    Coalesced,
    ComputeEnded,
    ComputeStarted,
    EarlyRefresh,
    Event,
    Hit,
    Miss,
    RedisCall,
    StaleServed,
    TransportChange,
    Waited,
    WakeUp,
)
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio

MakeCache = Callable[..., AbstractAsyncContextManager[Stampede]]


class Recorder:
    """A hook keeping every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> Counter[str]:
        return Counter(type(e).__name__ for e in self.events)


async def test_a_herd_over_two_instances_tells_each_step(redis_url: str, namespace: str) -> None:
    """20 callers on each of two instances: one compute, its waiters woken, then hits."""
    a_seen, b_seen = Recorder(), Recorder()
    release, started = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    a = Stampede.from_url(redis_url, namespace=namespace, hooks=[a_seen])
    b = Stampede.from_url(redis_url, namespace=namespace, hooks=[b_seen])
    async with a, b:
        await until(lambda: a.statistics().wake == "tracking" == b.statistics().wake)
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(a.get_or_compute, "k", slow, 60)
            await started.wait()
            for _ in range(20):
                tg.start_soon(b.get_or_compute, "k", slow, 60)
            await until(lambda: b.statistics().waiting == 1 and b.statistics().coalesced == 19)
            release.set()
        assert await a.get_or_compute("k", slow, 60) == "v"
    ak, bk = a_seen.kinds(), b_seen.kinds()
    assert (ak["Miss"], ak["ComputeStarted"], ak["ComputeEnded"], ak["Coalesced"]) == (1, 1, 1, 19)
    assert (bk["Miss"], bk["Coalesced"], bk["ComputeStarted"]) == (1, 19, 0)
    (waited,) = [e for e in b_seen.events if isinstance(e, Waited)]
    assert waited.outcome in ("value", "resolved")
    assert waited.seconds > 0
    assert bk["WakeUp"] >= 1
    ended = next(e for e in a_seen.events if isinstance(e, ComputeEnded))
    assert (ended.outcome, ended.error, ended.namespace, ended.key) == ("ok", None, namespace, "k")
    hit = next(e for e in reversed(a_seen.events) if isinstance(e, Hit))
    assert isinstance(hit, Hit)
    assert hit.seconds is not None
    assert 0 < hit.seconds < 5
    # Each step of Redis work off the hit path, timed: the holder read, took
    # the lock and committed; the waiter read, asked for the lock, and
    # never committed.
    steps = [e for e in (*a_seen.events, *b_seen.events) if isinstance(e, RedisCall)]
    assert all(e.namespace == namespace and e.outcome == "ok" for e in steps)
    assert all(0 < e.seconds < 5 for e in steps)
    a_steps = Counter(e.operation for e in a_seen.events if isinstance(e, RedisCall))
    b_steps = Counter(e.operation for e in b_seen.events if isinstance(e, RedisCall))
    assert (a_steps["GET"], a_steps["LOCK"], a_steps["COMMIT"]) == (1, 1, 1)
    assert (b_steps["GET"], b_steps["COMMIT"]) == (1, 0)
    assert b_steps["LOCK"] >= 1
    chosen = [e for e in a_seen.events if isinstance(e, TransportChange)]
    # Chosen at start, and gone when the instance closed.
    assert [(e.transport, e.previous) for e in chosen] == [("tracking", None), (None, "tracking")]


async def test_a_failing_compute_ends_with_its_error(make_cache: MakeCache) -> None:
    """A compute that raises ends with 'error' and its type, on Redis and embedded."""
    seen = Recorder()

    async def fails() -> str:
        raise RuntimeError("db down")

    async with make_cache(hooks=[seen]) as cache:
        with pytest.raises(RuntimeError):
            await cache.get_or_compute("f", fails, 60)
    ended = next(e for e in seen.events if isinstance(e, ComputeEnded))
    assert (ended.outcome, ended.error) == ("error", "RuntimeError")


async def test_stale_served_and_early_refresh(redis_url: str, namespace: str) -> None:
    """stale_while_revalidate serves the old value while one refresh runs; beta refreshes early."""
    seen = Recorder()
    calls = 0

    async def value() -> int:
        nonlocal calls
        calls += 1
        return calls

    async with Stampede.from_url(
        redis_url, namespace=namespace, hooks=[seen], stale_while_revalidate=60
    ) as cache:
        await cache.get_or_compute("k", value, 0.05, beta=0)
        await anyio.sleep(0.1)  # (the value's freshness running out is the point)
        assert await cache.get_or_compute("k", value, 0.05, beta=0) == 1
        await until(lambda: calls == 2)
        await cache.get_or_compute("e", value, 0.2, beta=1e9)  # computed
        await anyio.sleep(0.12)  # past half its TTL: XFetch's window (time passing is the point)
        await cache.get_or_compute("e", value, 0.2, beta=1e9)  # due: one early refresh
        await until(lambda: calls == 4)
    kinds = seen.kinds()
    assert any(isinstance(e, StaleServed) and e.reason == "revalidate" for e in seen.events)
    assert kinds["EarlyRefresh"] == 1
    assert all(isinstance(e, EarlyRefresh | StaleServed | Hit | Miss | ComputeStarted |
                          ComputeEnded | TransportChange | Coalesced | Waited | WakeUp |
                          RedisCall)
               for e in seen.events)  # fmt: skip
    assert all(e.outcome == "ok" for e in seen.events if isinstance(e, RedisCall))


@pytest.mark.parametrize(
    ("fault", "outcomes"), [("stop", {"error", "timeout"}), ("pause", {"timeout"})]
)
async def test_redis_failing_is_a_backend_failure_event_and_a_timed_step(
    fault: str, outcomes: set[str]
) -> None:
    """A stopped or paused server: the call fails open, the hook is told Redis was unavailable,
    and the step that met it is timed with how it ended (past redis_budget: a timeout)."""
    seen = Recorder()

    async def value() -> str:
        return "v"

    with RedisServer() as server:
        async with Stampede.from_url(server.url, hooks=[seen], redis_budget=0.3) as cache:
            await cache.get_or_compute("k", value, 60)
            if fault == "stop":
                server.stop()
            else:
                server.pause()
            try:
                assert await cache.get_or_compute("k2", value, 60) == "v"
            finally:
                if fault == "pause":
                    server.resume()
    failures = [e for e in seen.events if isinstance(e, BackendFailure)]
    assert failures
    assert not failures[0].refused
    assert "k2" in failures[0].doing
    steps = [e for e in seen.events if isinstance(e, RedisCall) and e.outcome != "ok"]
    assert [e.operation for e in steps] == ["GET"]
    assert steps[0].outcome in outcomes
    if steps[0].outcome == "timeout":
        assert steps[0].seconds >= 0.3


async def test_a_hook_that_raises_never_breaks_a_call(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every event raises in the hook: hits, misses and computes all work; it is logged."""

    def broken(event: Event) -> None:
        raise ValueError("the metrics backend is down")

    async def value() -> str:
        return "v"

    with caplog.at_level(logging.ERROR, "asyncstampede"):
        async with Stampede.from_url(redis_url, namespace=namespace, hooks=[broken]) as cache:
            for _ in range(3):
                assert await cache.get_or_compute("k", value, 60) == "v"
            assert cache.statistics().hits == 2
    failed = [r for r in caplog.records if "hook" in r.getMessage() and "failed" in r.getMessage()]
    assert failed
    assert (failed[0].name, failed[0].__dict__["part"]) == ("asyncstampede.hooks", "hooks")
    assert failed[0].__dict__["namespace"] == namespace
    assert "address" in failed[0].__dict__


async def test_logs_come_from_each_part_with_structured_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis gone: WARNINGs on asyncstampede.* children, with namespace, address and key_hash."""

    async def value() -> str:
        return "v"

    with caplog.at_level(logging.DEBUG, "asyncstampede"), RedisServer() as server:
        async with Stampede.from_url(server.url, namespace="logged", redis_budget=0.3) as cache:
            await cache.get_or_compute("k", value, 60)
            server.stop()
            await cache.get_or_compute("secret-key", value, 60)
            await until(lambda: cache.statistics().breaker == "open")
    records = [r for r in caplog.records if r.name.startswith("asyncstampede")]
    names = {r.name for r in records}
    assert {"asyncstampede", "asyncstampede.breaker"} <= names
    assert names <= {"asyncstampede", "asyncstampede.redis", "asyncstampede.wake",
                     "asyncstampede.breaker", "asyncstampede.hooks"}  # fmt: skip
    failure = next(r for r in records if "secret-key" in r.getMessage())
    assert failure.levelno == logging.WARNING
    assert failure.__dict__["namespace"] == "logged"
    assert failure.__dict__["address"] == f"127.0.0.1:{server.port}/0"
    assert len(failure.__dict__["key_hash"]) == 12
    assert "secret-key" not in failure.__dict__["key_hash"]
    opened = next(r for r in records if r.name == "asyncstampede.breaker")
    assert opened.__dict__["part"] == "breaker"
    # Every record has the instance's namespace and its part; the server's
    # address where one is about it (the breaker's, the connections').
    for record in records:
        assert record.__dict__.get("namespace") == "logged", (record.name, record.getMessage())
        assert record.__dict__.get("part") == (record.name.partition(".")[2] or "request")
        assert record.getMessage().startswith("asyncstampede: ")
        if record.name != "asyncstampede":
            assert record.__dict__["address"] == f"127.0.0.1:{server.port}/0"
    # The wake transport's lines name the transport they are about.
    wake = [r for r in records if r.name == "asyncstampede.wake"]
    assert any("wake by tracking" in r.getMessage() for r in wake)
    assert all(r.__dict__["transport"] == "tracking" for r in wake), [
        (r.getMessage(), r.__dict__.get("transport")) for r in wake
    ]


async def test_a_restart_logs_no_warning_on_the_wake_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarted Redis: the watching connection comes back, with INFO lines, no WARNING.

    (A WARNING there means waiters poll for good, which operators alert on;
    the outage itself is the breaker's to say, when a call meets it.)
    """

    async def value() -> str:
        return "v"

    with caplog.at_level(logging.DEBUG, "asyncstampede"), RedisServer() as server:
        async with Stampede.from_url(server.url, namespace="restarted") as cache:
            await until(lambda: cache.statistics().wake == "tracking")
            await cache.get_or_compute("k", value, 60)
            server.restart()
            await until(lambda: cache.statistics().reconnects >= 1)
            await until(lambda: cache.statistics().wake == "tracking")
            assert await cache.get_or_compute("k2", value, 60) == "v"
    wake = [r for r in caplog.records if r.name == "asyncstampede.wake"]
    assert any("reconnecting" in r.getMessage() for r in wake)  # (said, at INFO)
    assert [r.getMessage() for r in wake if r.levelno >= logging.WARNING] == []


async def test_a_hook_returning_a_coroutine_is_told_not_awaited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """lambda e: handle(e) over an async handle: logged on asyncstampede.hooks, no warning."""
    handled: list[Event] = []

    async def handle(event: Event) -> None:
        handled.append(event)

    async def value() -> str:
        return "v"

    with caplog.at_level(logging.ERROR, "asyncstampede.hooks"):
        async with Stampede(hooks=[lambda e: handle(e)]) as cache:
            assert await cache.get_or_compute("k", value, 60) == "v"
    assert handled == []
    told = [
        r for r in caplog.records if r.exc_info and "returned a coroutine" in str(r.exc_info[1])
    ]
    assert told


async def test_a_lost_lock_is_logged_for_the_operator(
    redis_url: str, namespace: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock deleted during the compute: the value is not stored, and a WARNING says why."""
    started, release = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    with caplog.at_level(logging.WARNING, "asyncstampede"):
        async with Stampede.from_url(redis_url, namespace=namespace) as cache:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cache.get_or_compute, "k", slow, 60)
                await started.wait()
                sync_redis.delete(make_names(namespace, "k").lock)
                release.set()
            assert cache.statistics().lock_lost == 1
    lost = next(r for r in caplog.records if "was gone at its commit" in r.getMessage())
    assert lost.levelno == logging.WARNING
    assert lost.__dict__["key_hash"]
