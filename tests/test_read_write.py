"""Reads and writes beside get_or_compute: get, set (write-through), invalidate_many."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis
from _conditions import until
from _models import User, user

from asyncstampede import BackendUnavailableError, ComputeFailedError, Stampede
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


async def test_set_then_get_and_get_never_computes(any_cache: Stampede) -> None:
    """get() reads what set() wrote, typed with a model; a missing key is None."""
    assert await any_cache.get("k") is None
    await any_cache.set("k", {"a": [1, 2]}, 60)
    assert await any_cache.get("k") == {"a": [1, 2]}
    await any_cache.set("u", user(1), 60, model=User)
    got = await any_cache.get("u", model=User)
    assert type(got) is User
    assert got == user(1)

    async def never() -> Any:
        raise AssertionError("set() stored it: no compute")

    assert await any_cache.get_or_compute("k", never, 60) == {"a": [1, 2]}
    assert any_cache.statistics().computes == 0


async def test_get_gives_none_for_a_cached_failure_and_a_value_past_serving(
    any_cache: Stampede,
) -> None:
    """A remembered failure is no value; neither is one only within stale_if_error."""

    async def fails() -> str:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await any_cache.get_or_compute("f", fails, 60, negative_ttl=30)
    with pytest.raises(ComputeFailedError):
        await any_cache.get_or_compute("f", fails, 60, negative_ttl=30)
    assert await any_cache.get("f") is None


async def test_set_wakes_the_waiters_of_a_running_compute_and_wins_over_it(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """A holder computes old data; set() from a third instance: the waiter gets the new value
    at once, and the holder's later commit cannot overwrite it."""
    release, started = anyio.Event(), anyio.Event()

    async def old() -> str:
        started.set()
        await release.wait()
        return "computed from old data"

    async def waiter_compute() -> str:
        raise AssertionError("the waiter must be woken with the value set")

    got: dict[str, str] = {}
    caches = [Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30) for _ in range(3)]
    async with caches[0] as holder, caches[1] as waiter, caches[2] as writer:

        async def ask(name: str, cache: Stampede, fn: object) -> None:
            got[name] = await cache.get_or_compute("k", fn, 60)  # type: ignore[call-overload]

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "holder", holder, old)
                await started.wait()
                tg.start_soon(ask, "waiter", waiter, waiter_compute)
                await until(lambda: waiter.statistics().waiting == 1)
                await writer.set("k", "written through", 60)
                await until(lambda: "waiter" in got)  # woken by the set, before the holder ends
                release.set()
        assert got == {"waiter": "written through", "holder": "computed from old data"}
        assert holder.statistics().lock_lost == 1  # its commit found the lock taken from it
        assert await writer.get("k") == "written through"
    stored = sync_redis.get(make_names(namespace, "k").value)
    assert isinstance(stored, bytes)
    assert b"written through" in stored


async def test_set_stops_this_process_joining_an_older_resolution(any_cache: Stampede) -> None:
    """A caller arriving after set() returns gets the set value, not the running compute's."""
    release, started = anyio.Event(), anyio.Event()

    async def old() -> str:
        started.set()
        await release.wait()
        return "old"

    async def fresh() -> str:
        raise AssertionError("set() stored it")

    firsts: list[str] = []
    async with anyio.create_task_group() as tg:

        async def first() -> None:
            firsts.append(await any_cache.get_or_compute("k", old, 60))

        tg.start_soon(first)
        await started.wait()
        await any_cache.set("k", "new", 60)
        assert await any_cache.get_or_compute("k", fresh, 60) == "new"
        release.set()
    assert firsts == ["old"]  # it joined before: it gets its compute's result
    assert await any_cache.get("k") == "new"


async def test_invalidate_many_deletes_each_key_and_refuses_a_lone_string(
    any_cache: Stampede,
) -> None:
    """Three keys invalidated at once are computed again; a str is not a list of keys."""
    computes: list[str] = []

    async def load(key: str) -> str:
        computes.append(key)
        return key

    for key in ("a", "b", "c", "d"):
        await any_cache.get_or_compute(key, load, 60, key)
    await any_cache.invalidate_many(["a", "b", "c"])
    assert [await any_cache.get(k) for k in ("a", "b", "c", "d")] == [None, None, None, "d"]
    for key in ("a", "b", "c", "d"):
        await any_cache.get_or_compute(key, load, 60, key)
    assert computes == ["a", "b", "c", "d", "a", "b", "c"]
    with pytest.raises(TypeError, match=r"pass \['abc'\]"):
        await any_cache.invalidate_many("abc")


async def test_redis_down_set_raises_and_get_is_a_counted_miss() -> None:
    """set() must not lose a write-through silently; get() fails open to None."""
    with RedisServer() as server:
        async with Stampede.from_url(server.url, redis_budget=0.5) as cache:
            await cache.set("k", "v", 60)
            server.stop()
            assert await cache.get("k") is None
            assert cache.statistics().backend_errors >= 1
            with pytest.raises(BackendUnavailableError):
                await cache.set("k", "v2", 60)
            with pytest.raises(BackendUnavailableError):
                await cache.invalidate_many(["k", "j"])
