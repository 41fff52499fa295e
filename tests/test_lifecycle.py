"""An instance's life: entered or started by one task, closed by any task of its loop.

Its background work runs in a host task of its own (``async with``) or in a
task group the caller owns (`Stampede.start`), never under a caller's
cancel scope: aiohttp's cleanup contexts, pytest fixtures and FastAPI
lifespans may enter it in one task and close it in another.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.abc
import pytest
import redis
from _conditions import until

from asyncstampede import BackendRefusedError, ClosedError, Stampede, WrongEventLoopError
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


async def value() -> str:
    return "v"


class Blocked:
    """A compute that runs until cancelled; `started` is set once it runs."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()

    async def __call__(self) -> str:
        self.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "never"


async def outcome_of(cache: Stampede, key: str, fn: Blocked, into: list[object]) -> None:
    """Call ``get_or_compute`` and put what it returned or raised into *into*."""
    try:
        into.append(await cache.get_or_compute(key, fn, ttl=30))
    except Exception as exc:
        into.append(exc)


def host_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("asyncstampede host") and not t.done()
    ]


@pytest.fixture
def build(mode: str, redis_url: str, namespace: str) -> Callable[[], Stampede]:
    """Build a Stampede (not entered) on the session's Redis, or embedded (see `mode`)."""

    def make() -> Stampede:
        if mode == "redis":
            return Stampede.from_url(redis_url, namespace=namespace)
        return Stampede(namespace=namespace)

    return make


async def test_entered_in_one_task_closed_in_another(build: Callable[[], Stampede]) -> None:
    """Entered by a task that has ended since (a fixture's set-up), used and closed by another."""
    cache = build()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.__aenter__)  # that task ends once it has entered
    assert await cache.get_or_compute("k", value, ttl=30) == "v"
    blocked = Blocked()
    outcomes: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, cache, "slow", blocked, outcomes)
        await blocked.started.wait()
        await cache.aclose()
    assert blocked.cancelled.is_set()
    assert [type(o) for o in outcomes] == [ClosedError]
    assert cache.statistics().in_flight == 0
    assert host_tasks() == []  # the host task has ended by the time aclose returns


async def test_concurrent_closes_all_return_once_closed(build: Callable[[], Stampede]) -> None:
    """Three tasks close at once: each returns only when the compute running has ended."""
    cache = build()
    await cache.__aenter__()
    blocked = Blocked()
    outcomes: list[object] = []
    ended: list[bool] = []

    async def close() -> None:
        await cache.aclose()
        ended.append(blocked.cancelled.is_set() and cache.statistics().computing == 0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome_of, cache, "k", blocked, outcomes)
        await blocked.started.wait()
        for _ in range(3):
            tg.start_soon(close)
    assert ended == [True, True, True]
    assert [type(o) for o in outcomes] == [ClosedError]
    await cache.aclose()  # and once more, closed: returns at once


async def test_closing_from_another_event_loop_is_refused(build: Callable[[], Stampede]) -> None:
    """A thread's own loop cannot close the instance: WrongEventLoopError, and it works on."""
    async with build() as cache:
        refused: list[BaseException] = []

        def elsewhere() -> None:
            try:
                asyncio.run(cache.aclose())
            except BaseException as exc:
                refused.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await anyio.to_thread.run_sync(thread.join, 10)
        assert [type(e) for e in refused] == [WrongEventLoopError]
        assert await cache.get_or_compute("k", value, ttl=30) == "v"


async def test_start_runs_it_in_the_callers_task_group(build: Callable[[], Stampede]) -> None:
    """start(tg): served at once; a sibling task closes it; the group's other tasks run on."""
    sibling_done = anyio.Event()
    async with anyio.create_task_group() as tg:
        cache = await build().start(tg)
        assert await cache.get_or_compute("k", value, ttl=30) == "v"

        async def sibling() -> None:
            await cache.aclose()
            with pytest.raises(ClosedError):
                await cache.get_or_compute("k", value, ttl=30)
            sibling_done.set()

        tg.start_soon(sibling)
    assert sibling_done.is_set()  # the group ended on its own: the instance's task had ended


async def test_cancelling_the_callers_group_closes_it(
    mode: str, build: Callable[[], Stampede], sync_redis: redis.Redis, namespace: str
) -> None:
    """The owner's group is cancelled mid-compute: its caller gets ClosedError, its lock freed."""
    blocked = Blocked()
    outcomes: list[object] = []
    async with anyio.create_task_group() as callers:
        async with anyio.create_task_group() as owner:
            cache = await build().start(owner)
            callers.start_soon(outcome_of, cache, "k", blocked, outcomes)
            await blocked.started.wait()
            owner.cancel_scope.cancel()
        await until(lambda: bool(outcomes))
    assert [type(o) for o in outcomes] == [ClosedError]
    assert blocked.cancelled.is_set()
    with pytest.raises(ClosedError):
        await cache.get_or_compute("k", value, ttl=30)
    if mode == "redis":
        assert sync_redis.get(make_names(namespace, "k").lock) is None  # released, not expiring
    await cache.aclose()  # closed already: returns at once


async def test_start_refuses_what_is_not_an_anyio_task_group(
    redis_url: str, namespace: str
) -> None:
    """An asyncio.TaskGroup is refused, saying what to do instead; the instance can still enter."""
    cache = Stampede.from_url(redis_url, namespace=namespace)
    async with asyncio.TaskGroup() as native:
        with pytest.raises(TypeError, match=r"anyio task group .*'async with Stampede"):
            await cache.start(native)  # type: ignore[arg-type]
    async with cache:
        assert await cache.get_or_compute("k", value, ttl=30) == "v"


async def test_an_instance_runs_once(build: Callable[[], Stampede]) -> None:
    """Started, then entered (or entered twice): ClosedError, as before."""
    async with anyio.create_task_group() as tg:
        cache = await build().start(tg)
        with pytest.raises(ClosedError, match="only once"):
            await cache.__aenter__()
        with pytest.raises(ClosedError, match="only once"):
            await cache.start(tg)
        await cache.aclose()


async def test_start_with_check_stops_on_a_refusal() -> None:
    """check=True and a wrong password: start() raises the refusal, and nothing is left running."""
    with RedisServer("--requirepass", "secret") as server:
        cache = Stampede.from_url(server.url, check=True)
        async with anyio.create_task_group() as tg:
            with pytest.raises(BackendRefusedError, match="password"):
                await cache.start(tg)
        with pytest.raises(ClosedError):
            await cache.get_or_compute("k", value, ttl=30)
        assert host_tasks() == []


def test_a_loop_that_ends_unclosed_closes_it(own_server: RedisServer) -> None:
    """asyncio.run ends with the instance still open: it is closed, its connections too."""
    sync = redis.Redis.from_url(own_server.url)

    async def main() -> str:
        cache = await Stampede.from_url(own_server.url).__aenter__()
        return str(await cache.get_or_compute("k", value, ttl=30))

    try:
        assert asyncio.run(main()) == "v"
        assert len(sync.client_list()) == 1  # this one: none of the instance's
    finally:
        sync.close()


def test_embedded_mode_under_trio_closed_from_another_task() -> None:
    """Under trio: entered by one task, closed by another; started in a nursery, closed by it."""

    async def main() -> list[object]:
        results: list[object] = []
        entered = Stampede()
        async with anyio.create_task_group() as tg:
            tg.start_soon(entered.__aenter__)
        results.append(await entered.get_or_compute("k", value, ttl=30))
        blocked = Blocked()
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcome_of, entered, "slow", blocked, results)
            await blocked.started.wait()
            tg.start_soon(entered.aclose)
        async with anyio.create_task_group() as tg:
            started = await Stampede().start(tg)
            results.append(await started.get_or_compute("k", value, ttl=30))
            tg.cancel_scope.cancel()
        try:
            await started.get_or_compute("k", value, ttl=30)
        except ClosedError as exc:
            results.append(exc)
        return results

    results = anyio.run(main, backend="trio")
    assert [r if isinstance(r, str) else type(r) for r in results] == [
        "v",
        ClosedError,
        "v",
        ClosedError,
    ]


@pytest.fixture
async def entered_elsewhere(build: Callable[[], Stampede]) -> AsyncIterator[Stampede]:
    """Entered in a task of its own that ends at once, as a fixture runner may do."""
    cache = build()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.__aenter__)
    yield cache
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.aclose)  # and closed in yet another


async def test_a_fixture_may_enter_and_close_in_tasks_of_its_own(
    entered_elsewhere: Stampede,
) -> None:
    """What pytest-asyncio does with async fixtures (set-up and tear-down in other tasks) works."""
    assert await entered_elsewhere.get_or_compute("k", value, ttl=30) == "v"
