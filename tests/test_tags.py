"""Tags: invalidating every value that carries one in O(1), across processes."""

from __future__ import annotations

import logging

import anyio
import pytest
import redis
from _conditions import until
from _models import User, user

from asyncstampede import ComputeFailedError, Stampede
from asyncstampede._tags import tag_names

pytestmark = pytest.mark.anyio


def _calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


async def test_invalidating_a_tag_recomputes_its_values_only(any_cache: Stampede) -> None:
    """team:7's two users are computed again; team:8's is still served."""
    computes: list[str] = []

    async def load(key: str) -> str:
        computes.append(key)
        return f"{key} v{computes.count(key)}"

    async def ask(key: str, team: str) -> str:
        return await any_cache.get_or_compute(key, load, 60, key, tags=[team])

    assert [await ask("u1", "team:7"), await ask("u2", "team:7"), await ask("u3", "team:8")] == [
        "u1 v1",
        "u2 v1",
        "u3 v1",
    ]
    await any_cache.invalidate_tags(["team:7"])
    assert [await ask("u1", "team:7"), await ask("u2", "team:7"), await ask("u3", "team:8")] == [
        "u1 v2",
        "u2 v2",
        "u3 v1",
    ]
    assert await any_cache.get("u1", tags=["team:7"]) == "u1 v2"
    # Read without its tags, a tagged value is not served: whether a tag the
    # call does not name was invalidated cannot be told.
    assert await any_cache.get("u3") is None
    with pytest.raises(TypeError, match=r"pass \['team:7'\]"):
        await any_cache.invalidate_tags("team:7")


async def test_a_namespace_empties_in_one_command_for_every_process(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """Two instances tagged with the namespace: 300 values, one SET, then one compute each."""
    computes = 0

    async def load(n: int) -> int:
        nonlocal computes
        computes += 1
        return n

    # (A budget for Redis large enough for 600 calls queued in one busy loop:
    # on a loaded machine the default 0.5 s ran out and one call failed open.)
    a = Stampede.from_url(redis_url, namespace=namespace, tags=["everything"], redis_budget=30)
    b = Stampede.from_url(redis_url, namespace=namespace, tags=["everything"], redis_budget=30)
    async with a, b:
        for n in range(300):
            await a.get_or_compute(f"k{n}", load, 60, n)
        assert await b.get_or_compute("k5", load, 60, 5) == 5  # b reads what a stored
        assert computes == 300
        sets, mgets = _calls(sync_redis, "set"), _calls(sync_redis, "mget")
        await a.invalidate_tags(["everything"])
        assert _calls(sync_redis, "set") - sets == 1  # O(1): whatever the number of values
        got: list[int] = []

        async def both(n: int) -> None:
            got.append(await a.get_or_compute(f"k{n}", load, 60, n))
            got.append(await b.get_or_compute(f"k{n}", load, 60, n))

        async with anyio.create_task_group() as tg:
            for n in range(300):
                tg.start_soon(both, n)
        assert sorted(got) == sorted([*range(300), *range(300)])
        assert computes == 600  # each key once more, for both instances together
        hit_mgets = _calls(sync_redis, "mget")
        assert await b.get_or_compute("k9", load, 60, 9) == 9
        assert _calls(sync_redis, "mget") - hit_mgets == 1  # a tagged hit: one MGET
        assert hit_mgets > mgets


async def test_a_lost_generation_brings_no_old_value_back(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """Its key evicted (deleted here): the values stamped before are not served again."""
    computes = 0

    async def load() -> int:
        nonlocal computes
        computes += 1
        return computes

    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        assert await cache.get_or_compute("k", load, 60, tags=["t"]) == 1
        (generation,) = tag_names(namespace, ("t",))
        before = sync_redis.get(generation)
        sync_redis.delete(generation)  # as an eviction would
        assert await cache.get_or_compute("k", load, 60, tags=["t"]) == 2
        after = sync_redis.get(generation)
        assert after is not None
        assert after != before
        assert await cache.get_or_compute("k", load, 60, tags=["t"]) == 2  # stamped anew


async def test_a_compute_in_flight_when_its_tag_is_invalidated_is_not_served(
    any_cache: Stampede,
) -> None:
    """A caller arriving after invalidate_tags does not get the older compute's value.

    It waits for that compute (one per key at a time, fleet-wide), whose
    value is stamped with the old generation, then computes anew.
    """
    release, started = anyio.Event(), anyio.Event()
    computes = 0

    async def load() -> str:
        nonlocal computes
        computes += 1
        if computes == 1:
            started.set()
            await release.wait()
            return "before"
        return "after"

    got: dict[str, str] = {}

    async def ask(name: str) -> None:
        got[name] = await any_cache.get_or_compute("k", load, 60, tags=["t"])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "first")
            await started.wait()
            await any_cache.invalidate_tags(["t"])
            tg.start_soon(ask, "second")
            await until(lambda: any_cache.statistics().waiting == 1)  # on the lock, not joined
            release.set()
    assert got == {"first": "before", "second": "after"}
    assert computes == 2
    assert await any_cache.get("k", tags=["t"]) == "after"


async def test_failures_remembered_with_tags_and_forgotten_with_them(any_cache: Stampede) -> None:
    """negative_ttl with tags: the failure is served until its tag is invalidated."""
    computes = 0

    async def fails() -> str:
        nonlocal computes
        computes += 1
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await any_cache.get_or_compute("k", fails, 60, tags=["t"], negative_ttl=30)
    with pytest.raises(ComputeFailedError):
        await any_cache.get_or_compute("k", fails, 60, tags=["t"], negative_ttl=30)
    await any_cache.invalidate_tags(["t"])
    with pytest.raises(RuntimeError):
        await any_cache.get_or_compute("k", fails, 60, tags=["t"], negative_ttl=30)
    assert computes == 2


async def test_the_decorator_s_tags_are_templates(any_cache: Stampede) -> None:
    """tags=["team:{team_id}"]: invalidating team 7 recomputes its users only."""
    computes: list[int] = []

    @any_cache.cached(ttl=60, key="user:{user_id}", tags=["team:{team_id}"])
    async def load_user(user_id: int, team_id: int) -> int:
        computes.append(user_id)
        return user_id

    for user_id, team_id in ((1, 7), (2, 7), (3, 8)):
        await load_user(user_id, team_id)
    await any_cache.invalidate_tags(["team:7"])
    for user_id, team_id in ((1, 7), (2, 7), (3, 8)):
        await load_user(user_id, team_id)
    assert computes == [1, 2, 3, 1, 2]
    assert load_user.tags(1, 7) == ("team:7",)


async def test_set_with_tags_is_invalidated_with_them(any_cache: Stampede) -> None:
    """A written-through value carries its tags too."""
    await any_cache.set("k", "v", 60, tags=["t"])
    assert await any_cache.get("k", tags=["t"]) == "v"
    await any_cache.invalidate_tags(["t"])
    assert await any_cache.get("k", tags=["t"]) is None


async def test_batches_read_and_stamp_the_tags_too(any_cache: Stampede) -> None:
    """get_many_or_compute with tags: served until invalidated, then computed again, typed."""
    computes: list[list[str]] = []

    async def load_many(keys: list[str]) -> dict[str, User]:
        computes.append(keys)
        return {key: user(int(key[1:])) for key in keys}

    got = await any_cache.get_many_or_compute(["u1", "u2"], load_many, 60, model=User, tags=["t"])
    assert got == {"u1": user(1), "u2": user(2)}
    assert type(got["u1"]) is User
    # one of them read by get_or_compute with the same tags: the batch's stamp is valid
    assert await any_cache.get("u1", model=User, tags=["t"]) == user(1)
    again = await any_cache.get_many_or_compute(["u1", "u2"], load_many, 60, model=User, tags=["t"])
    assert again == got
    assert computes == [["u1", "u2"]]
    await any_cache.invalidate_tags(["t"])
    await any_cache.get_many_or_compute(["u1", "u2", "u3"], load_many, 60, model=User, tags=["t"])
    assert computes == [["u1", "u2"], ["u1", "u2", "u3"]]


async def test_an_instance_without_the_tags_is_not_served_tagged_values(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A tagged instance's values, read by one without its tags: not served, and said."""
    computes = 0

    async def load() -> int:
        nonlocal computes
        computes += 1
        return computes

    tagged = Stampede.from_url(redis_url, namespace=namespace, tags=["app"])
    plain = Stampede.from_url(redis_url, namespace=namespace)
    async with tagged, plain:
        assert await tagged.get_or_compute("k", load, 60) == 1
        await tagged.invalidate_tags(["app"])
        with caplog.at_level(logging.WARNING, "asyncstampede"):
            assert await plain.get_or_compute("k", load, 60) == 2  # never the invalidated 1
    assert any("read by a call without them" in r.getMessage() for r in caplog.records)
