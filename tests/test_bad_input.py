"""Bad input gets a clear, typed error and loses nothing."""

from __future__ import annotations

import os

import anyio
import pytest
import redis

from asyncstampede import SerializationError, Stampede, ValueTooLargeError
from asyncstampede._keys import make_names

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("key", [b"bytes-key", 42, None, ("tuple",)])
async def test_non_str_key_raises_type_error(any_cache: Stampede, key: object) -> None:
    """A key that is not a str is refused before anything runs."""
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        return 1

    with pytest.raises(TypeError, match="must be str"):
        await any_cache.get_or_compute(key, compute, ttl=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await any_cache.invalidate(key)  # type: ignore[arg-type]
    assert calls == 0


async def test_unserializable_value_raises_and_writes_nothing(
    cache: Stampede, sync_redis: redis.Redis
) -> None:
    """SerializationError reaches every caller; no value and no lock stay behind."""

    async def compute() -> object:
        await anyio.sleep(0.02)
        return {"when": object()}

    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await cache.get_or_compute("k", compute, ttl=5)
        except SerializationError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(errors) == 10
    assert isinstance(errors[0], TypeError)
    names = make_names(cache.namespace, "k")
    assert sync_redis.exists(names.value, names.lock) == 0


async def test_corrupt_bytes_are_a_counted_miss(cache: Stampede, sync_redis: redis.Redis) -> None:
    """Garbage under the key is treated as a miss, counted, and overwritten."""
    names = make_names(cache.namespace, "k")
    sync_redis.set(names.value, os.urandom(64))

    async def compute() -> str:
        return "fresh"

    assert await cache.get_or_compute("k", compute, ttl=5) == "fresh"
    assert cache.statistics().decode_errors == 1
    assert await cache.get_or_compute("k", compute, ttl=5) == "fresh"
    assert cache.statistics().hits == 1


async def test_ten_megabyte_value_round_trips_to_another_instance(
    redis_url: str, namespace: str
) -> None:
    """A 10 MB value is stored, and a waiter on another instance gets it (GET after wake)."""
    big = os.urandom(10 * 1024 * 1024)  # incompressible
    started = anyio.Event()

    async def compute() -> bytes:
        started.set()
        await anyio.sleep(0.1)
        return big

    async def never() -> bytes:
        raise AssertionError("the waiter must not compute")

    async with (
        Stampede.from_url(redis_url, namespace=namespace) as leader,
        Stampede.from_url(redis_url, namespace=namespace) as waiter,
    ):
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader.get_or_compute, "big", compute, 30)
            await started.wait()

            async def wait() -> None:
                got.append(await waiter.get_or_compute("big", never, ttl=30))

            tg.start_soon(wait)
        assert got == [big]
        assert waiter.statistics().wakeups == 1
        assert await leader.get_or_compute("big", never, ttl=30) == big


async def test_value_over_max_value_bytes_is_refused(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """ValueTooLargeError, and nothing written, when a value is over the limit."""

    async def compute() -> str:
        return "x" * 2_000_000

    async with Stampede.from_url(redis_url, namespace=namespace, max_value_bytes=1_000_000) as c:
        with pytest.raises(ValueTooLargeError):
            await c.get_or_compute("k", compute, ttl=5)
    names = make_names(namespace, "k")
    assert sync_redis.exists(names.value, names.lock) == 0


async def test_oversized_stored_value_is_not_decompressed(redis_url: str, namespace: str) -> None:
    """A stored value declaring more than max_value_bytes is a miss, not an allocation."""

    async def big() -> str:
        return "y" * 5_000_000  # compresses to a few KB

    async def small() -> str:
        return "small"

    async with Stampede.from_url(redis_url, namespace=namespace) as writer:
        await writer.get_or_compute("k", big, ttl=30)
    async with Stampede.from_url(redis_url, namespace=namespace, max_value_bytes=100_000) as r:
        assert await r.get_or_compute("k", small, ttl=30) == "small"
        assert r.statistics().decode_errors == 1
