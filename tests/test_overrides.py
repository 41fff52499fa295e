"""Per-call settings: left out they inherit the instance's; ``None`` or ``0`` turns one off."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
import redis.asyncio

from asyncstampede import ComputeFailedError, ComputeTimeoutError, Stampede

pytestmark = pytest.mark.anyio

MakeCache = Callable[..., AbstractAsyncContextManager[Stampede]]


async def slow(value: str = "done") -> str:
    await anyio.sleep(0.3)
    return value


async def test_a_call_can_switch_off_the_instance_hard_timeout(make_cache: MakeCache) -> None:
    """hard_timeout=None lets one call's compute run past the instance's hard timeout."""
    async with make_cache(hard_timeout=0.05) as cache:
        with pytest.raises(ComputeTimeoutError):
            await cache.get_or_compute("a", slow, ttl=60)
        assert await cache.get_or_compute("b", slow, ttl=60, hard_timeout=None) == "done"


async def test_a_call_can_switch_off_the_instance_soft_timeout(make_cache: MakeCache) -> None:
    """soft_timeout=None makes a call wait for the new value instead of taking the stale one."""
    async with make_cache(soft_timeout=0.05, stale_if_error=60, beta=0) as cache:
        assert await cache.get_or_compute("k", lambda: slow("old"), ttl=0.05) == "old"
        await anyio.sleep(0.1)  # the condition is the clock: past the TTL, within stale_if_error
        got = await cache.get_or_compute("k", lambda: slow("new"), ttl=60, soft_timeout=None)
        assert got == "new"
        assert cache.statistics().soft_timeouts == 0


async def test_a_call_can_switch_off_the_instance_negative_caching(make_cache: MakeCache) -> None:
    """negative_ttl=None: a failure is not remembered, so the next call computes again."""
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        raise LookupError("backend down")

    async with make_cache(negative_ttl=60) as cache:
        for _ in range(2):
            with pytest.raises(LookupError):
                await cache.get_or_compute("k", failing, ttl=60, negative_ttl=None)
        assert calls == 2
        with pytest.raises(LookupError):  # the instance's setting still applies elsewhere
            await cache.get_or_compute("j", failing, ttl=60)
        with pytest.raises(ComputeFailedError):
            await cache.get_or_compute("j", failing, ttl=60)
        assert calls == 3


async def test_a_call_without_negative_caching_computes_over_a_remembered_failure(
    make_cache: MakeCache,
) -> None:
    """negative_ttl=None also means not taking another call's remembered failure for an answer."""

    async def failing() -> str:
        raise LookupError("backend down")

    async def working() -> str:
        return "v"

    async with make_cache() as cache:
        with pytest.raises(LookupError):
            await cache.get_or_compute("k", failing, ttl=60, negative_ttl=60)
        with pytest.raises(ComputeFailedError):  # remembered, for a call that asks for it
            await cache.get_or_compute("k", working, ttl=60, negative_ttl=60)
        assert await cache.get_or_compute("k", working, ttl=60) == "v"  # the default: off
        assert await cache.get_or_compute("k", failing, ttl=60, negative_ttl=60) == "v"


async def test_a_call_can_switch_off_xfetch_and_the_stale_windows(make_cache: MakeCache) -> None:
    """beta=0 and stale_while_revalidate=0 override an instance that has both on."""
    calls = 0

    async def count() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return calls

    async with make_cache(beta=1e9, stale_while_revalidate=60) as cache:
        assert await cache.get_or_compute("k", count, ttl=0.2, beta=0) == 1
        await anyio.sleep(0.25)  # the condition is the clock: past the TTL
        # The instance would serve 1 and refresh it; this call waits for a fresh value.
        assert await cache.get_or_compute("k", count, ttl=60, stale_while_revalidate=0) == 2
        assert cache.statistics().stale_served == 0
        assert cache.statistics().early_refreshes == 0


async def test_private_constructor_arguments_are_not_public(redis_url: str) -> None:
    """Who owns the client is from_url's business: Stampede() has no such argument."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        with pytest.raises(TypeError):
            Stampede(client, _owns_client=True)  # type: ignore[call-arg]
    finally:
        await client.aclose()
