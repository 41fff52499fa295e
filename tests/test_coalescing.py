"""In-process behaviour, on Redis and in embedded mode alike."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Awaitable, Callable

import anyio
import pytest
from _conditions import until

from asyncstampede import ClosedError, Stampede

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def test_concurrent_callers_share_one_compute(any_cache: Stampede) -> None:
    """100 concurrent callers of one missing key run the compute once."""
    calls = 0

    async def compute() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await until(lambda: any_cache.statistics().coalesced == 99)  # everyone has joined
        return {"n": calls}

    results: list[object] = []

    async def one() -> None:
        results.append(await any_cache.get_or_compute("k", compute, ttl=30))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
    assert calls == 1
    assert results == [{"n": 1}] * 100
    stats = any_cache.statistics()
    assert (stats.computes, stats.coalesced, stats.in_flight) == (1, 99, 0)
    assert await any_cache.get_or_compute("k", compute, ttl=30) == {"n": 1}
    assert any_cache.statistics().hits == 1


async def test_error_reaches_every_local_caller_and_nothing_is_stored(
    any_cache: Stampede,
) -> None:
    """A compute's exception is raised to all callers; the next call computes again."""

    async def fail() -> int:
        await until(lambda: any_cache.statistics().coalesced == 19)  # everyone has joined
        raise Boom("db down")

    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await any_cache.get_or_compute("k", fail, ttl=30)
        except Boom as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert len(errors) == 20
    assert any_cache.statistics().compute_errors == 1

    async def ok() -> int:
        return 7

    assert await any_cache.get_or_compute("k", ok, ttl=30) == 7


async def test_cancelled_caller_does_not_cancel_the_shared_compute(any_cache: Stampede) -> None:
    """The first caller is cancelled mid-compute; the others still get the value."""
    started = anyio.Event()
    release = anyio.Event()

    async def compute() -> str:
        started.set()
        await release.wait()  # still computing when the first caller is cancelled
        return "done"

    got: list[str] = []

    async def second() -> None:
        got.append(await any_cache.get_or_compute("k", compute, ttl=30))

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(10) as first_scope:
            tg.start_soon(second)

            async def first() -> None:
                with anyio.CancelScope() as scope:
                    first_scope_holder.append(scope)
                    await any_cache.get_or_compute("k", compute, ttl=30)

            first_scope_holder: list[anyio.CancelScope] = []
            tg.start_soon(first)
            await started.wait()
            await until(lambda: any_cache.statistics().coalesced == 1)  # first has joined
            first_scope_holder[0].cancel()
            release.set()
    assert not first_scope.cancelled_caught
    assert got == ["done"]
    assert any_cache.statistics().computes == 1


async def test_every_caller_cancelled_still_fills_the_cache(any_cache: Stampede) -> None:
    """Work already started is finished and stored even if nobody waits any more."""
    calls = 0
    started = anyio.Event()
    release = anyio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()  # its only caller is cancelled meanwhile
        return 5

    async with anyio.create_task_group() as tg:
        tg.start_soon(any_cache.get_or_compute, "k", compute, 30)
        await started.wait()
        tg.cancel_scope.cancel()
    assert any_cache.statistics().in_flight == 1  # nobody waits, the work goes on
    release.set()
    await until(lambda: any_cache.statistics().in_flight == 0)  # finished and stored
    assert await any_cache.get_or_compute("k", compute, ttl=30) == 5
    assert calls == 1


async def test_flight_table_is_empty_after_many_distinct_keys(any_cache: Stampede) -> None:
    """Nothing is kept per key once its flight ends (no leak)."""
    n = 5_000
    # Per key: its own compute function, and the list it returns (as the
    # caller gets it). Once the calls are over, nothing but this test may
    # refer to either: not a finished flight, request, computation or task.
    computes: list[weakref.ref[Callable[[], Awaitable[list[int]]]]] = []
    got: list[object] = [None] * n

    def compute_of(i: int) -> Callable[[], Awaitable[list[int]]]:
        async def compute() -> list[int]:
            return [i]

        computes.append(weakref.ref(compute))
        return compute

    limiter = anyio.Semaphore(200)

    async def one(i: int) -> None:
        async with limiter:
            got[i] = await any_cache.get_or_compute(f"key-{i}", compute_of(i), ttl=5)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    stats = any_cache.statistics()
    assert (stats.in_flight, stats.computing, stats.computes) == (0, 0, n)
    assert got == [[i] for i in range(n)]
    gc.collect()  # whatever only a reference cycle kept is gone now
    kept = [i for i, ref in enumerate(computes) if ref() is not None]
    assert kept == [], f"{len(kept)} compute functions outlived their calls: keys {kept[:5]}..."
    sample = got[::50]
    holders = [r for r in gc.get_referrers(*sample) if r is not got and r is not sample]
    assert holders == [], f"values handed out are still referred to: {holders[:3]}"


async def test_tuple_comes_back_as_list_every_time(any_cache: Stampede) -> None:
    """The first caller sees the stored form too, not the object fn returned."""

    async def compute() -> tuple[int, int]:
        return (1, 2)

    first: object = await any_cache.get_or_compute("k", compute, ttl=30)
    second: object = await any_cache.get_or_compute("k", compute, ttl=30)
    assert first == second == [1, 2]


async def test_values_expire_after_ttl(any_cache: Stampede) -> None:
    """After its TTL the value is computed again."""
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await any_cache.get_or_compute("k", compute, ttl=0.05) == 1
    await anyio.sleep(0.15)  # the condition is the clock: past the TTL
    assert await any_cache.get_or_compute("k", compute, ttl=0.05) == 2


async def test_invalidate_forces_a_recompute(any_cache: Stampede) -> None:
    """invalidate() deletes the value."""
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await any_cache.get_or_compute("k", compute, ttl=30) == 1
    await any_cache.invalidate("k")
    assert await any_cache.get_or_compute("k", compute, ttl=30) == 2


async def test_invalidate_during_compute_prevents_stale_write(any_cache: Stampede) -> None:
    """A compute that began before an invalidation does not store its result."""
    started = anyio.Event()
    invalidated = anyio.Event()

    async def slow_old() -> str:
        started.set()
        await invalidated.wait()
        return "old"

    async def new() -> str:
        return "new"

    async with anyio.create_task_group() as tg:
        tg.start_soon(any_cache.get_or_compute, "k", slow_old, 30)
        await started.wait()
        await any_cache.invalidate("k")
        invalidated.set()
    assert any_cache.statistics().lock_lost == 1
    assert await any_cache.get_or_compute("k", new, ttl=30) == "new"


async def test_use_outside_async_with_raises_closed_error() -> None:
    """Calls before entering or after closing raise ClosedError."""

    async def compute() -> int:
        return 1

    cache = Stampede()
    with pytest.raises(ClosedError):
        await cache.get_or_compute("k", compute, ttl=1)
    async with cache:
        assert await cache.get_or_compute("k", compute, ttl=1) == 1
    with pytest.raises(ClosedError):
        await cache.get_or_compute("k", compute, ttl=1)


async def test_closing_ends_waiters_with_closed_error(redis_url: str, namespace: str) -> None:
    """Callers waiting on a flight when the instance closes get ClosedError, not a hang."""

    async def forever() -> int:
        await anyio.sleep(3600)
        return 0

    outcome: list[BaseException] = []
    cache = Stampede.from_url(redis_url, namespace=namespace)
    async with anyio.create_task_group() as tg:
        await cache.__aenter__()

        async def one() -> None:
            try:
                await cache.get_or_compute("k", forever, ttl=30)
            except ClosedError as exc:
                outcome.append(exc)

        for _ in range(3):
            tg.start_soon(one)
        # One computes, the two others wait on its flight.
        await until(lambda: cache.statistics().computing == 1)
        await until(lambda: cache.statistics().coalesced == 2)
        await cache.aclose()
    assert len(outcome) == 3


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan")])
async def test_bad_ttl_raises_value_error(any_cache: Stampede, ttl: float) -> None:
    """TTL must be a positive finite number of seconds."""

    async def compute() -> int:
        return 1

    with pytest.raises(ValueError, match="ttl"):
        await any_cache.get_or_compute("k", compute, ttl=ttl)


async def test_non_callable_fn_raises_type_error(any_cache: Stampede) -> None:
    """fn must be callable."""
    with pytest.raises(TypeError, match="fn"):
        await any_cache.get_or_compute("k", 42, ttl=1)  # type: ignore[call-overload]
