"""Freshness policies: XFetch, stale-while-revalidate, stale-if-error, timeouts, jitter."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
import redis
from _conditions import until

from asyncstampede import ComputeFailedError, ComputeTimeoutError, Stampede
from asyncstampede._keys import make_names

pytestmark = pytest.mark.anyio

MakeCache = Callable[..., AbstractAsyncContextManager[Stampede]]


class Source:
    """A compute function that counts calls and returns v1, v2, ..."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = False

    async def __call__(self) -> str:
        self.calls += 1
        n = self.calls
        await anyio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("backend down")
        return f"v{n}"


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    await until(check, within=within)


async def test_xfetch_refreshes_early_in_the_background(make_cache: MakeCache) -> None:
    """With a strong beta, a hit in the value's second half returns it and starts one refresh."""
    source = Source(delay=0.05)
    async with make_cache(beta=1e9) as cache:
        assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"
        assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"  # first half: no refresh
        assert source.calls == 1
        await anyio.sleep(0.35)  # the condition is the clock: into the second half
        assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"  # served at once
        await eventually(lambda: source.calls == 2)
        stats = cache.statistics
        await eventually(lambda: stats().in_flight == 0 and not stats().refreshing)
        assert await cache.get_or_compute("k", source, ttl=0.6, beta=0) == "v2"
        assert cache.statistics().early_refreshes == 1


async def test_beta_zero_turns_xfetch_off(make_cache: MakeCache) -> None:
    """beta=0 (per call here) never refreshes a fresh value early."""
    source = Source(delay=0.05)
    async with make_cache(beta=1e9) as cache:
        await cache.get_or_compute("k", source, ttl=30)
        for _ in range(20):
            assert await cache.get_or_compute("k", source, ttl=30, beta=0) == "v1"
        # A read starts any refresh it draws there and then (and counts it):
        # nothing to wait for before asking.
        assert cache.statistics().early_refreshes == 0
        assert source.calls == 1


async def test_one_refresher_across_instances(redis_url: str, namespace: str) -> None:
    """Two instances (as two processes would) trigger XFetch at once: one refresh runs."""
    source = Source(delay=0.2)
    async with (
        Stampede.from_url(redis_url, namespace=namespace, beta=1e9) as a,
        Stampede.from_url(redis_url, namespace=namespace, beta=1e9) as b,
    ):
        assert await a.get_or_compute("k", source, ttl=1, beta=0) == "v1"
        await anyio.sleep(0.55)  # the condition is the clock: into the value's second half
        async with anyio.create_task_group() as tg:
            for cache in (a, b) * 10:
                tg.start_soon(cache.get_or_compute, "k", source, 1)
        await eventually(lambda: not a.statistics().refreshing and not b.statistics().refreshing)
        assert source.calls == 2  # the first compute and exactly one refresh
        assert a.statistics().early_refreshes >= 1
        assert b.statistics().early_refreshes >= 1


async def test_stale_while_revalidate_serves_stale_then_refreshes(make_cache: MakeCache) -> None:
    """Past its TTL but within the window, the old value is served while one refresh runs."""
    gate = anyio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()  # the refresh is held until the stale reads are done
        return f"v{calls}"

    async with make_cache(beta=0, stale_while_revalidate=30) as cache:
        assert await cache.get_or_compute("k", compute, ttl=0.05) == "v1"
        await anyio.sleep(0.1)  # the condition is the clock: past the TTL
        with anyio.fail_after(10):  # a hang guard only
            for _ in range(5):
                assert await cache.get_or_compute("k", compute, ttl=0.05) == "v1"
            await eventually(lambda: calls == 2)  # the one refresh is running, held
            assert await cache.get_or_compute("k", compute, ttl=0.05) == "v1"
        assert calls == 2  # still one refresh, and nobody waited for it
        assert cache.statistics().stale_served == 6
        gate.set()
        await eventually(lambda: not cache.statistics().refreshing)
        assert await cache.get_or_compute("k", compute, ttl=30) == "v2"


async def test_past_the_window_callers_wait_for_the_compute(make_cache: MakeCache) -> None:
    """Beyond stale-while-revalidate the old value is not served; the new one is."""
    source = Source()
    async with make_cache(beta=0, stale_while_revalidate=0.05, stale_if_error=30) as cache:
        assert await cache.get_or_compute("k", source, ttl=0.05) == "v1"
        await anyio.sleep(0.15)  # the condition is the clock: past TTL and window
        assert await cache.get_or_compute("k", source, ttl=0.05) == "v2"


async def test_stale_if_error_and_fail_safe_throttle(make_cache: MakeCache) -> None:
    """A failing compute serves the stale value, and is not retried until the throttle ends."""
    source = Source()
    async with make_cache(beta=0, stale_if_error=30, fail_safe_throttle=0.3) as cache:
        assert await cache.get_or_compute("k", source, ttl=0.05) == "v1"
        await anyio.sleep(0.1)  # the condition is the clock: past the TTL
        source.fail = True
        assert await cache.get_or_compute("k", source, ttl=0.05) == "v1"
        assert (source.calls, cache.statistics().fail_safe) == (2, 1)
        for _ in range(10):  # within the throttle: no new attempt
            assert await cache.get_or_compute("k", source, ttl=0.05) == "v1"
        assert source.calls == 2
        await anyio.sleep(0.35)  # the condition is the clock: past the throttle
        source.fail = False
        assert await cache.get_or_compute("k", source, ttl=30) == "v3"


async def test_failure_without_stale_value_raises(make_cache: MakeCache) -> None:
    """stale_if_error only helps when there is a stale value."""
    source = Source()
    source.fail = True
    async with make_cache(stale_if_error=30) as cache:
        with pytest.raises(RuntimeError, match="backend down"):
            await cache.get_or_compute("k", source, ttl=1)


async def test_soft_timeout_serves_stale_and_the_compute_still_fills(
    make_cache: MakeCache,
) -> None:
    """After soft_timeout callers get the stale value; the compute goes on and is stored."""
    gate = anyio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()  # outlives the soft timeout for as long as the test wants
        return f"v{calls}"

    async with make_cache(beta=0, stale_if_error=30, soft_timeout=0.05) as cache:
        assert await cache.get_or_compute("k", compute, ttl=0.05) == "v1"
        await anyio.sleep(0.1)  # the condition is the clock: past the TTL
        with anyio.fail_after(10):  # a hang guard only
            assert await cache.get_or_compute("k", compute, ttl=30) == "v1"
        assert calls == 2  # the compute started and is still held at the gate
        assert cache.statistics().soft_timeouts == 1
        gate.set()
        await eventually(lambda: cache.statistics().computing == 0)
        assert await cache.get_or_compute("k", compute, ttl=30) == "v2"


async def test_hard_timeout_cancels_and_raises(make_cache: MakeCache) -> None:
    """Past hard_timeout the compute is cancelled and ComputeTimeoutError raised."""
    cancelled = anyio.Event()

    async def slow() -> str:
        try:
            await anyio.sleep(10)
        finally:
            cancelled.set()
        return "never"

    async with make_cache(hard_timeout=0.1) as cache:
        with anyio.fail_after(5), pytest.raises(ComputeTimeoutError) as info:
            await cache.get_or_compute("k", slow, ttl=30)
        assert isinstance(info.value, TimeoutError)
        assert cancelled.is_set()

        async def quick() -> str:
            return "ok"

        assert await cache.get_or_compute("k", quick, ttl=30) == "ok"  # lock was released


async def test_hard_timeout_with_stale_value_serves_it(make_cache: MakeCache) -> None:
    """A hard timeout counts as an error for stale-if-error."""
    source = Source()
    async with make_cache(beta=0, stale_if_error=30, hard_timeout=0.1) as cache:
        assert await cache.get_or_compute("k", source, ttl=0.05) == "v1"
        await anyio.sleep(0.1)  # the condition is the clock: past the TTL
        source.delay = 5
        with anyio.fail_after(3):
            assert await cache.get_or_compute("k", source, ttl=0.05) == "v1"
        assert cache.statistics().fail_safe == 1


async def test_ttl_jitter_spreads_expiry(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """Keys written together with jitter get different TTLs within ttl x (1 + jitter)."""

    async def compute() -> int:
        return 1

    async with Stampede.from_url(redis_url, namespace=namespace, ttl_jitter=0.5) as cache:
        for i in range(40):
            await cache.get_or_compute(f"k{i}", compute, ttl=100)
    ttls = [int(sync_redis.pttl(make_names(namespace, f"k{i}").value)) for i in range(40)]
    assert all(99_000 <= t <= 150_000 for t in ttls), ttls
    assert max(ttls) - min(ttls) > 10_000  # spread, not one instant
    async with Stampede.from_url(redis_url, namespace=namespace + "-b") as plain:
        for i in range(5):
            await plain.get_or_compute(f"k{i}", compute, ttl=100)
    plain_ttls = [
        int(sync_redis.pttl(make_names(namespace + "-b", f"k{i}").value)) for i in range(5)
    ]
    assert all(99_000 <= t <= 100_000 for t in plain_ttls)


async def test_stale_window_keeps_value_in_redis(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """The Redis TTL covers freshness plus the longest stale window."""

    async def compute() -> int:
        return 1

    async with Stampede.from_url(
        redis_url, namespace=namespace, stale_while_revalidate=20, stale_if_error=50
    ) as cache:
        await cache.get_or_compute("k", compute, ttl=10)
    assert 59_000 <= int(sync_redis.pttl(make_names(namespace, "k").value)) <= 60_000


@pytest.mark.parametrize(
    "settings",
    [
        {"beta": -1},
        {"stale_while_revalidate": -1},
        {"stale_if_error": float("inf")},
        {"soft_timeout": 0},
        {"hard_timeout": -2},
        {"ttl_jitter": -0.1},
        {"fail_safe_throttle": 0},
    ],
)
def test_bad_freshness_settings_are_rejected(settings: dict[str, float]) -> None:
    """Negative, zero (where it must be positive) or infinite durations raise ValueError."""
    with pytest.raises(ValueError, match=next(iter(settings))):
        Stampede(**settings)  # type: ignore[arg-type]


async def test_negative_caching_remembers_none(make_cache: MakeCache) -> None:
    """With negative_ttl, a None result is kept for negative_ttl, not for the TTL."""
    calls = 0

    async def missing() -> str | None:
        nonlocal calls
        calls += 1
        return None

    async with make_cache(negative_ttl=0.1) as cache:
        assert await cache.get_or_compute("k", missing, ttl=30) is None
        assert await cache.get_or_compute("k", missing, ttl=30) is None
        assert calls == 1
        await anyio.sleep(0.15)  # the condition is the clock: past negative_ttl
        assert await cache.get_or_compute("k", missing, ttl=30) is None
        assert calls == 2


async def test_negative_caching_remembers_failures(make_cache: MakeCache) -> None:
    """A failure is remembered for negative_ttl: callers get ComputeFailedError, no compute."""
    source = Source()
    source.fail = True
    async with make_cache(negative_ttl=0.2) as cache:
        with pytest.raises(RuntimeError):
            await cache.get_or_compute("k", source, ttl=30)
        with pytest.raises(ComputeFailedError, match="RuntimeError: backend down"):
            await cache.get_or_compute("k", source, ttl=30)
        assert source.calls == 1
        await anyio.sleep(0.25)  # the condition is the clock: past negative_ttl
        source.fail = False
        assert await cache.get_or_compute("k", source, ttl=30) == "v2"


async def test_without_negative_ttl_failures_are_not_cached(make_cache: MakeCache) -> None:
    """By default every call after a failure computes again."""
    source = Source()
    source.fail = True
    async with make_cache() as cache:
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await cache.get_or_compute("k", source, ttl=30)
        assert source.calls == 3


async def test_cached_failure_reaches_waiters_in_another_instance(
    redis_url: str, namespace: str
) -> None:
    """Waiters of a compute that fails get the cached failure, without computing."""
    started = anyio.Event()

    async def fail() -> str:
        started.set()
        await until(lambda: waiter.statistics().waiting == 1)  # the waiter watches the lock
        raise RuntimeError("db down")

    async def never() -> str:
        raise AssertionError("the waiter must not compute")

    async def lead(leader: Stampede) -> None:
        with pytest.raises(RuntimeError):
            await leader.get_or_compute("k", fail, ttl=30)

    async with (
        Stampede.from_url(redis_url, namespace=namespace, negative_ttl=5) as leader,
        Stampede.from_url(redis_url, namespace=namespace, negative_ttl=5) as waiter,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lead, leader)
        await started.wait()
        with pytest.raises(ComputeFailedError):
            await waiter.get_or_compute("k", never, ttl=30)
        assert waiter.statistics().remote_waits == 1


async def test_failed_early_refresh_keeps_the_fresh_value(make_cache: MakeCache) -> None:
    """An XFetch refresh that fails leaves the current value served, and fresh."""
    source = Source()
    async with make_cache(beta=1e9, stale_if_error=30) as cache:
        assert await cache.get_or_compute("k", source, ttl=30) == "v1"
        source.fail = True
        assert await cache.get_or_compute("k", source, ttl=30) == "v1"
        await eventually(lambda: not cache.statistics().refreshing)
        assert await cache.get_or_compute("k", source, ttl=30, beta=0) == "v1"
