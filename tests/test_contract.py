"""The call's contract: what a caller gets, when, and what it may do with it.

One test (or a few) per way the contract was once broken; on Redis and in
embedded mode, with two instances where the claim is about processes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from enum import Enum
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest
import redis
from _conditions import until

from asyncstampede import (
    ClosedError,
    ComputeFailedError,
    ComputeTimeoutError,
    ReentrantCallError,
    SerializationError,
    Stampede,
    WrongEventLoopError,
)
from asyncstampede._envelope import decode
from asyncstampede._keys import make_names

pytestmark = pytest.mark.anyio

MakeCache = Callable[..., AbstractAsyncContextManager[Stampede]]


E = TypeVar("E", bound=BaseException)


async def _failures_of(
    cache: Stampede, fn: Callable[[], Awaitable[Any]], kind: type[E], *, callers: int
) -> list[E]:
    """Run *callers* concurrent calls of key "k" with *fn*; return the *kind* errors they got."""
    caught: list[E] = []

    async def one() -> None:
        try:
            await cache.get_or_compute("k", fn, ttl=30)
        except kind as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(one)
    return caught


# ------------------------------------------------------------------ 1. cancellation


async def test_a_compute_cancelling_itself_fails_only_its_key(make_cache: MakeCache) -> None:
    """A compute whose awaited future was cancelled by someone else: its callers get an error.

    The instance, its other keys and the task that entered it live on, and
    the lock is freed (the next call computes at once).
    """
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[str]] = []
    started = anyio.Event()

    async def doomed() -> str:
        futures.append(loop.create_future())
        started.set()
        return await futures[-1]  # cancelled below by another task, not by a scope of ours

    async def fine() -> str:
        return "fine"

    async with make_cache(lock_ttl=30) as cache:
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await cache.get_or_compute("k", doomed, ttl=30)
            except ComputeFailedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
            await started.wait()
            futures[0].cancel()
        assert len(errors) == 5
        assert all(isinstance(e.__cause__, asyncio.CancelledError) for e in errors)
        assert "raised CancelledError although nothing cancelled the call" in str(errors[0])
        # The instance is alive: other keys and the same key work, at once (the
        # lock was freed: on Redis a kept lock would make this wait 30 s).
        with anyio.fail_after(5):
            assert await cache.get_or_compute("other", fine, ttl=30) == "fine"
            assert await cache.get_or_compute("k", fine, ttl=30) == "fine"
        assert cache.statistics().compute_errors == 1
    # ...and this task (the app's lifespan) was never cancelled.
    await anyio.lowlevel.checkpoint()


async def test_a_cancelled_caller_does_not_cancel_the_compute(make_cache: MakeCache) -> None:
    """Cancelling one caller leaves the others, and the compute, running."""
    gate = anyio.Event()

    async def slow() -> str:
        await gate.wait()
        return "v"

    async with make_cache() as cache:
        results: list[str] = []
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as impatient:
                tg.start_soon(cache.get_or_compute, "k", slow, 30)

                async def patient() -> None:
                    results.append(await cache.get_or_compute("k", slow, ttl=30))

                tg.start_soon(patient)
                await anyio.wait_all_tasks_blocked()
                impatient.cancel()
            gate.set()
        assert results == ["v"]


# ------------------------------------------------------------------ 2. read-your-writes


async def test_after_invalidate_no_caller_gets_a_value_from_before(
    mode: str, make_cache: MakeCache, redis_url: str, namespace: str
) -> None:
    """DB at v1, a compute starts; the app writes v2 and invalidates: later calls get v2."""
    db = {"v": 1}
    first_read = anyio.Event()
    gate = anyio.Event()

    async def load() -> int:
        seen = db["v"]
        if not first_read.is_set():
            first_read.set()
            await gate.wait()  # the compute that started before the write
        return seen

    async with make_cache() as cache:
        early: list[int] = []
        async with anyio.create_task_group() as tg:

            async def before() -> None:
                early.append(await cache.get_or_compute("user", load, ttl=30))

            tg.start_soon(before)
            await first_read.wait()
            db["v"] = 2
            await cache.invalidate("user")
            with anyio.fail_after(5):
                assert await cache.get_or_compute("user", load, ttl=30) == 2
            gate.set()
        assert early == [1]  # it asked before the invalidation: the old flight is its answer
        assert await cache.get_or_compute("user", load, ttl=30) == 2  # v1 was never stored
        if mode == "redis":  # and another process agrees
            async with Stampede.from_url(redis_url, namespace=namespace) as other:
                assert await other.get_or_compute("user", load, ttl=30) == 2


# ------------------------------------------------------------------ 3. re-entry


async def test_a_compute_asking_for_its_own_key_fails_at_once(make_cache: MakeCache) -> None:
    """Directly, through a task it starts, or through a cycle: a clear error, no hang, no poison."""
    async with make_cache() as cache:

        async def itself() -> str:
            return await cache.get_or_compute("k", itself, ttl=30)

        async def through_a_task() -> str:
            found: list[str] = []
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    found.append(await cache.get_or_compute("t", through_a_task, ttl=30))

                tg.start_soon(ask)
            return found[0]

        async def a() -> str:
            return "a" + await cache.get_or_compute("b", b, ttl=30)

        async def b() -> str:
            return "b" + await cache.get_or_compute("a", a, ttl=30)

        with anyio.fail_after(5):
            with pytest.raises(ReentrantCallError, match="would wait for itself"):
                await cache.get_or_compute("k", itself, ttl=30)
            with pytest.raises(ExceptionGroup) as group:  # the compute's own task group
                await cache.get_or_compute("t", through_a_task, ttl=30)
            assert group.group_contains(ReentrantCallError)
            with pytest.raises(ReentrantCallError):
                await cache.get_or_compute("a", a, ttl=30)

            async def plain() -> str:
                return "plain"

            # Not poisoned: ordinary calls for those keys work.
            for key in ("k", "t", "a", "b"):
                assert await cache.get_or_compute(key, plain, ttl=30) == "plain"


async def test_other_keys_from_inside_a_compute_are_fine(make_cache: MakeCache) -> None:
    """A compute may ask for other keys (no cycle): that is composition, not re-entry."""
    async with make_cache() as cache:

        async def part() -> int:
            return 20

        async def whole() -> int:
            return await cache.get_or_compute("part", part, ttl=30) + 1

        assert await cache.get_or_compute("whole", whole, ttl=30) == 21


async def test_invalidate_or_close_from_inside_a_compute_is_refused(
    make_cache: MakeCache,
) -> None:
    """Invalidating the key being computed, or closing the instance, from inside its compute."""
    async with make_cache() as cache:

        async def invalidates() -> str:
            await cache.invalidate("k")
            return "v"

        async def closes() -> str:
            await cache.aclose()
            return "v"

        with pytest.raises(ReentrantCallError, match="invalidating 'k'"):
            await cache.get_or_compute("k", invalidates, ttl=30)
        with pytest.raises(ReentrantCallError, match="aclose"):
            await cache.get_or_compute("c", closes, ttl=30)

        async def fine() -> str:
            return "still open"

        assert await cache.get_or_compute("k", fine, ttl=30) == "still open"


# ------------------------------------------------------------------ 4. another event loop


async def test_another_event_loop_gets_a_prompt_clear_error(make_cache: MakeCache) -> None:
    """A worker thread running its own loop: hit or miss, an error at once, no harm to the owner."""

    async def value() -> str:
        return "v"

    async with make_cache() as cache:
        await cache.get_or_compute("hit", value, ttl=30)
        outcomes: list[BaseException] = []

        def elsewhere() -> None:
            for key in ("hit", "miss"):
                try:
                    asyncio.run(asyncio.wait_for(cache.get_or_compute(key, value, ttl=30), 5))
                except BaseException as exc:
                    outcomes.append(exc)
            try:
                asyncio.run(cache.invalidate("hit"))
            except BaseException as exc:
                outcomes.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await anyio.to_thread.run_sync(thread.join, 10)  # this loop runs on meanwhile
        assert not thread.is_alive()
        assert [type(e) for e in outcomes] == [WrongEventLoopError] * 3
        assert "belongs to another event loop" in str(outcomes[0])
        # The owner is untouched: its value is there, and a miss still computes.
        assert await cache.get_or_compute("hit", value, ttl=30) == "v"
        assert await cache.get_or_compute("miss", value, ttl=30) == "v"
        assert cache.statistics().computes == 2


# ------------------------------------------------------------------ 5. str subclass keys


class Model(str, Enum):  # noqa: UP042 - as FastAPI's docs write enum path parameters
    alexnet = "alexnet"


class Loud(str):
    def __str__(self) -> str:
        return self.upper()


async def test_equal_strings_name_one_entry(
    mode: str, make_cache: MakeCache, redis_url: str, namespace: str
) -> None:
    """An enum member equal to "alexnet" and the plain string are one key, in every process."""
    computes = 0

    async def load() -> str:
        nonlocal computes
        computes += 1
        return f"model #{computes}"

    async with make_cache() as cache:
        assert await cache.get_or_compute(Model.alexnet, load, ttl=30) == "model #1"
        assert await cache.get_or_compute("alexnet", load, ttl=30) == "model #1"
        assert await cache.get_or_compute(Loud("alexnet"), load, ttl=30) == "model #1"
        await cache.invalidate(Model.alexnet)
        assert await cache.get_or_compute("alexnet", load, ttl=30) == "model #2"
        assert await cache.get_or_compute(Model.alexnet, load, ttl=30) == "model #2"
        if mode == "redis":
            async with Stampede.from_url(redis_url, namespace=namespace) as other:
                assert await other.get_or_compute("alexnet", load, ttl=30) == "model #2"
            client = redis.Redis.from_url(redis_url)
            try:
                assert client.exists(make_names(namespace, "alexnet").value)
                assert not client.keys(f"{namespace}:*Model*")
            finally:
                client.close()
    assert computes == 2


# ------------------------------------------------------------------ 6. own results


async def test_each_coalesced_caller_gets_its_own_value(make_cache: MakeCache) -> None:
    """Ten callers of one miss each append to the result: each sees only its own append."""

    async def load() -> dict[str, Any]:
        await until(lambda: cache.statistics().coalesced == 9)  # everyone has joined
        return {"name": "ada", "viewers": []}

    async with make_cache() as cache:
        seen: list[list[str]] = []

        async def view(i: int) -> None:
            user = await cache.get_or_compute("user", load, ttl=30)
            user["viewers"].append(f"viewer {i}")
            await anyio.lowlevel.checkpoint()  # let the others run before looking
            seen.append(list(user["viewers"]))

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(view, i)
        assert sorted(seen) == sorted([[f"viewer {i}"] for i in range(10)])
        assert cache.statistics().coalesced == 9
        assert await cache.get_or_compute("user", load, ttl=30) == {"name": "ada", "viewers": []}


async def test_share_values_hands_every_caller_one_object(make_cache: MakeCache) -> None:
    """The documented opt-in: coalesced callers get the very same object (read-only use)."""

    async def load() -> dict[str, Any]:
        await until(lambda: cache.statistics().coalesced == 4)  # everyone has joined
        return {"rows": list(range(1000))}

    async with make_cache(share_values=True) as cache:
        got: list[dict[str, Any]] = []

        async def one() -> None:
            got.append(await cache.get_or_compute("big", load, ttl=30))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
        assert all(g is got[0] for g in got)


async def test_a_served_value_changed_by_its_caller_is_not_written_back(
    make_cache: MakeCache,
) -> None:
    """Stale served, the caller changes it, the refresh fails: the store keeps the original."""
    failing = anyio.Event()
    release = anyio.Event()

    async def first() -> dict[str, Any]:
        return {"n": 1, "tags": []}

    async def broken() -> dict[str, Any]:
        failing.set()
        await release.wait()
        raise RuntimeError("database down")

    async with make_cache(stale_while_revalidate=30, stale_if_error=30) as cache:
        await cache.get_or_compute("k", first, ttl=0.05)
        await anyio.sleep(0.1)  # the condition is the clock: past the TTL
        served = await cache.get_or_compute("k", broken, ttl=0.05)
        served["tags"].append("changed by the caller")
        await failing.wait()
        release.set()
        with anyio.fail_after(5):
            while cache.statistics().refreshing:
                await anyio.sleep(0.01)
        assert cache.statistics().fail_safe == 1
        again = await cache.get_or_compute("k", broken, ttl=0.05)
        assert again == {"n": 1, "tags": []}


# ------------------------------------------------------------------ 7. faithful values


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"score": math.inf, "ratio": math.nan}, "value['"),
        ([1.0, [2.0, -math.inf]], "value[1][1] = -inf"),
        (math.nan, "value = nan"),
    ],
)
async def test_values_json_cannot_hold_are_refused(
    make_cache: MakeCache, value: Any, where: str
) -> None:
    """NaN and infinities would come back as None: SerializationError, first caller included."""

    async def load() -> Any:
        return value

    async with make_cache() as cache:
        with pytest.raises(SerializationError, match=r"JSON has no NaN or infinity") as info:
            await cache.get_or_compute("k", load, ttl=30)
        assert where in str(info.value)

        async def nulls() -> Any:
            return {"a": None, "text": "null", "n": 1.5}

        # None, and "null" in a string, are faithful: stored and returned as they are.
        assert await cache.get_or_compute("k", nulls, ttl=30) == {
            "a": None,
            "text": "null",
            "n": 1.5,
        }


# ------------------------------------------------------------------ 8. own exceptions


async def test_each_caller_of_a_failed_compute_gets_its_own_exception(
    make_cache: MakeCache,
) -> None:
    """200 callers: 200 distinct exception objects, each with only the compute's traceback."""

    class LookupFailed(Exception):
        pass

    async def fail() -> str:
        await until(lambda: cache.statistics().coalesced == 199)  # everyone has joined
        raise LookupFailed("row 7 is gone")

    async with make_cache() as cache:
        caught = await _failures_of(cache, fail, LookupFailed, callers=200)
        assert len(caught) == 200
        assert len({id(e) for e in caught}) == 200
        assert all(e.args == ("row 7 is gone",) for e in caught)
        depths = [len(traceback.extract_tb(e.__traceback__)) for e in caught]
        assert max(depths) - min(depths) <= 3, depths
        assert max(depths) < 30, depths
        assert all("fail" in traceback.format_exception(e)[-2] for e in caught)


async def test_copies_of_an_exception_keep_its_text_and_attributes(make_cache: MakeCache) -> None:
    """An __init__ that rewords its argument is not called again: the copy says the same."""

    class NotFound(Exception):
        def __init__(self, row: int, *, table: str) -> None:
            super().__init__(f"row {row} of {table} not found")
            self.row = row

    async def fail() -> str:
        await until(lambda: cache.statistics().coalesced == 4)  # everyone has joined
        raise NotFound(7, table="users")

    async with make_cache() as cache:
        caught = await _failures_of(cache, fail, NotFound, callers=5)
        assert len({id(e) for e in caught}) == 5
        assert {(str(e), e.row) for e in caught} == {("row 7 of users not found", 7)}


# ------------------------------------------------------------------ 9. hard_timeout


async def test_a_timeout_of_the_compute_itself_is_not_the_hard_timeout(
    make_cache: MakeCache,
) -> None:
    """fn's own TimeoutError stays itself; only hard_timeout's expiry is ComputeTimeoutError."""

    async def db_timeout() -> str:
        raise TimeoutError("the database did not answer")

    async def slow() -> str:
        await anyio.sleep(30)
        return "late"

    async with make_cache(negative_ttl=30) as cache:
        with pytest.raises(TimeoutError, match="the database did not answer") as info:
            await cache.get_or_compute("a", db_timeout, ttl=30)
        assert not isinstance(info.value, ComputeTimeoutError)
        # Negative caching remembers the real error, not a made-up hard timeout.
        with pytest.raises(ComputeFailedError, match="TimeoutError: the database did not answer"):
            await cache.get_or_compute("a", db_timeout, ttl=30)
        with pytest.raises(TimeoutError, match="the database did not answer") as info:
            await cache.get_or_compute("b", db_timeout, ttl=30, hard_timeout=10)
        assert not isinstance(info.value, ComputeTimeoutError)
        with pytest.raises(ComputeTimeoutError, match=r"hard_timeout=0\.05s"):
            await cache.get_or_compute("c", slow, ttl=30, hard_timeout=0.05)


# ------------------------------------------------------------------ 10. fail-safe bounds


async def test_fail_safe_never_serves_or_writes_past_the_stale_window(
    mode: str, make_cache: MakeCache, redis_url: str, namespace: str
) -> None:
    """ttl 0.2 s, stale_if_error 0.6 s: nothing served after 0.8 s, no key without expiry.

    A stale read just before the window closes starts a compute that fails
    after it closed: the caller gets the error, and the key is not brought
    back (it used to be, with no expiry, its window moving on with every
    failure).
    """
    client = redis.Redis.from_url(redis_url) if mode == "redis" else None
    name = make_names(namespace, "k").value

    async def ok() -> str:
        return "v"

    async def fails_slowly() -> str:
        await anyio.sleep(0.2)
        raise RuntimeError("database down")

    try:
        async with make_cache(stale_if_error=0.6, fail_safe_throttle=0.1) as cache:
            await cache.get_or_compute("k", ok, ttl=0.2)
            created = anyio.current_time()
            served_at: list[float] = []
            failed = 0
            while anyio.current_time() - created < 1.6:
                try:
                    assert await cache.get_or_compute("k", fails_slowly, ttl=0.2) == "v"
                    served_at.append(anyio.current_time() - created)
                except RuntimeError:
                    failed += 1
                if client is not None:
                    assert client.pttl(name) != -1  # never a key without an expiry
            assert served_at, "the stale value was never served"
            assert max(served_at) < 0.8 + 0.25, served_at  # the window, plus one slow compute
            assert failed >= 1
            if client is not None:
                assert not client.exists(name)
    finally:
        if client is not None:
            client.close()


async def test_a_timeout_past_the_stale_window_waits_for_the_compute(
    make_cache: MakeCache,
) -> None:
    """soft_timeout fires after the stale window closed: the new value, not the stale one."""

    async def old() -> str:
        return "old"

    async def new() -> str:
        await anyio.sleep(0.5)
        return "new"

    async with make_cache(stale_if_error=0.3) as cache:
        await cache.get_or_compute("k", old, ttl=0.1)
        await anyio.sleep(0.15)  # the condition is the clock: stale, within the window
        # The soft timeout (0.4 s) comes after the window's end (0.4 s from the write).
        assert await cache.get_or_compute("k", new, ttl=30, soft_timeout=0.4) == "new"
        assert cache.statistics().soft_timeouts == 0


# ------------------------------------------------------------------ 11. refresh rate


def test_xfetch_never_refreshes_before_its_bounded_window() -> None:
    """However lucky the draw (thousands of readers), no refresh before 2 x delta x beta."""
    from asyncstampede._envelope import Envelope
    from asyncstampede._freshness import xfetch_due

    env = Envelope("v", created_ms=0, delta_ms=100, fresh_until_ms=1000, ttl_ms=1000)
    luckiest = 2**-53  # the smallest draw there is: ln = -36.7
    assert not xfetch_due(790, env, 1.0, luckiest)  # 210 ms before expiry: outside
    assert xfetch_due(800, env, 1.0, luckiest)  # 200 ms: inside, and the draw says yes
    assert not xfetch_due(100, env, 1e9, luckiest)  # a huge beta: still not in the first half
    assert xfetch_due(500, env, 1e9, luckiest)
    assert not xfetch_due(999, env, 1.0, 1.0)  # ln(1) = 0: never early


def test_stored_values_decode_with_their_ttl() -> None:
    """The envelope keeps the TTL a value was computed with (the stale windows' anchor)."""
    from asyncstampede._envelope import encode, restamp

    data = encode(
        {"a": 1},
        created_ms=1000,
        delta_ms=5,
        fresh_until_ms=3000,
        compress_threshold=4096,
        max_value_bytes=1 << 20,
    )
    env = decode(restamp(data, fresh_until_ms=9000), max_value_bytes=1 << 20)
    assert (env.value, env.fresh_until_ms, env.ttl_ms, env.origin_fresh_until_ms) == (
        {"a": 1},
        9000,
        2000,
        3000,
    )


# ------------------------------------------------------------------ found by trying it


async def test_a_cycle_between_two_callers_fails_instead_of_hanging(make_cache: MakeCache) -> None:
    """Caller 1 computes a (needs b), caller 2 computes b (needs a): an error, not a deadlock."""
    async with make_cache(wait_timeout=60) as cache:
        both_started = anyio.Event()
        started: list[str] = []

        async def load_a() -> str:
            started.append("a")
            if len(started) == 2:
                both_started.set()
            await both_started.wait()
            return "a+" + await cache.get_or_compute("b", load_b, ttl=30)

        async def load_b() -> str:
            started.append("b")
            if len(started) == 2:
                both_started.set()
            await both_started.wait()
            return "b+" + await cache.get_or_compute("a", load_a, ttl=30)

        outcomes: list[object] = []

        async def call(key: str, fn: Callable[[], Any]) -> None:
            try:
                outcomes.append(await cache.get_or_compute(key, fn, ttl=30))
            except ReentrantCallError as exc:
                outcomes.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "a", load_a)
                tg.start_soon(call, "b", load_b)
        assert any(isinstance(o, ReentrantCallError) for o in outcomes), outcomes
        assert "cycle" in str(next(o for o in outcomes if isinstance(o, ReentrantCallError)))

        async def plain() -> str:
            return "plain"

        with anyio.fail_after(5):  # neither key is left blocked
            assert await cache.get_or_compute("a", plain, ttl=30) in ("plain", "a+b+plain")
            assert await cache.get_or_compute("b", plain, ttl=30) in ("plain", "b+plain")
        assert cache.statistics().in_flight == 0


async def test_a_task_outliving_its_compute_may_ask_for_that_key(make_cache: MakeCache) -> None:
    """A task a compute started, asking for the key after the compute ended: no false error."""
    async with make_cache() as cache, anyio.create_task_group() as tg:
        later = anyio.Event()
        got: list[str] = []

        async def ask_later() -> None:
            await later.wait()
            got.append(await cache.get_or_compute("k", load, ttl=30))

        async def load() -> str:
            tg.start_soon(ask_later)  # inherits this compute's context
            return "v"

        assert await cache.get_or_compute("k", load, ttl=30) == "v"
        later.set()
    assert got == ["v"]


async def test_the_first_callers_changes_to_its_exception_stay_its_own(
    make_cache: MakeCache,
) -> None:
    """Notes, args and context the first caller adds never show in the others' copies."""

    class Unavailable(Exception):
        __slots__ = ("status",)

        def __init__(self, message: str, status: int = 0) -> None:
            super().__init__(message)
            self.status = status

    async def fail() -> str:
        await until(lambda: cache.statistics().coalesced == 3)  # the others have joined
        raise Unavailable("db down", status=503)

    async with make_cache() as cache:
        seen: list[Unavailable] = []

        async def first() -> None:
            try:
                raise PermissionError("request 0's token rejected")
            except PermissionError:
                try:
                    await cache.get_or_compute("k", fail, ttl=30)
                except Unavailable as exc:
                    exc.add_note("seen by request 0")
                    exc.args = ("request 0: db down",)
                    seen.append(exc)

        async def other() -> None:
            try:
                await cache.get_or_compute("k", fail, ttl=30)
            except Unavailable as exc:
                seen.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            for _ in range(3):
                tg.start_soon(other)
        others = [e for e in seen if "request 0" not in str(e)]
        assert len(others) == 3
        for e in others:
            assert e.args == ("db down",)
            assert e.status == 503
            assert getattr(e, "__notes__", []) == []
            assert not isinstance(e.__context__, PermissionError)


async def test_an_unlocked_compute_does_not_undo_an_invalidation(
    redis_url: str, namespace: str
) -> None:
    """A waiter gave up and computes without the lock: its old value never lands afterwards."""
    db = {"v": "old"}
    holding = anyio.Event()
    release = anyio.Event()
    computing = anyio.Event()
    invalidated = anyio.Event()

    async def hold() -> str:
        holding.set()
        await release.wait()
        return "held"

    async def load() -> str:
        seen = db["v"]
        computing.set()
        if not invalidated.is_set():
            await invalidated.wait()  # the invalidation lands while it computes
        return seen

    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30) as a,
        Stampede.from_url(redis_url, namespace=namespace, wait_timeout=0.2) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(a.get_or_compute, "k", hold, 30)
        await holding.wait()
        got: list[str] = []

        async def gives_up() -> None:
            got.append(await b.get_or_compute("k", load, ttl=30))

        tg.start_soon(gives_up)
        await computing.wait()  # b waited 0.2 s, then started computing without the lock
        db["v"] = "new"
        await b.invalidate("k")
        invalidated.set()
        await until(lambda: got)
        assert got == ["old"]  # it asked before the invalidation
        release.set()
        assert await b.get_or_compute("k", load, ttl=30) == "new"


async def test_a_restamp_never_stretches_the_writers_expiry(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """Written with stale_if_error=1; a reader allowing an hour fails: the key ends on time."""

    async def ok() -> str:
        return "v"

    async def broken() -> str:
        raise RuntimeError("database down")

    name = make_names(namespace, "k").value
    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        await cache.get_or_compute("k", ok, ttl=0.1, stale_if_error=1)
        first_pttl = sync_redis.pttl(name)
        await anyio.sleep(0.15)  # the condition is the clock: stale
        assert await cache.get_or_compute("k", broken, ttl=0.1, stale_if_error=3600) == "v"
        assert cache.statistics().fail_safe == 1
        assert 0 < sync_redis.pttl(name) <= first_pttl


async def test_a_failed_early_refresh_is_logged_and_not_retried_at_once(
    make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    """XFetch refresh of a fresh value fails: logged, counted, no new try within the throttle."""
    calls = 0

    async def source() -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.02)
        if calls > 1:
            raise RuntimeError("database down")
        return "v1"

    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with make_cache(beta=1e9, fail_safe_throttle=30) as cache:
            assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"
            await anyio.sleep(0.35)  # the condition is the clock: into the value's second half
            assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"
            await until(lambda: cache.statistics().refresh_errors > 0)
            for _ in range(5):
                assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"
            await anyio.wait_all_tasks_blocked()
            assert calls == 2  # one refresh tried, none again within fail_safe_throttle
    assert "computing 'k' failed; serving its stale value" in caplog.text
    assert "database down" in caplog.text


def test_long_ttls_keep_their_stale_windows() -> None:
    """A 60-day TTL is stored whole (it once wrapped at 2**32 ms, about 49.7 days)."""
    from asyncstampede._envelope import encode

    day_ms = 86_400_000
    data = encode(
        "v",
        created_ms=1000,
        delta_ms=5,
        fresh_until_ms=1000 + 60 * day_ms,
        compress_threshold=4096,
        max_value_bytes=1 << 20,
    )
    assert decode(data, max_value_bytes=1 << 20).ttl_ms == 60 * day_ms


async def test_a_waiter_gets_no_value_older_than_its_own_window(make_cache: MakeCache) -> None:
    """A caller allowing no stale value waits on a lenient caller's refresh: never the old value."""

    async def old() -> str:
        return "old"

    async def slow_new() -> str:
        await anyio.sleep(1.0)
        return "new"

    async with make_cache(lock_ttl=0.3) as cache:
        await cache.get_or_compute("k", old, ttl=0.1, stale_while_revalidate=30)
        await anyio.sleep(0.15)  # the condition is the clock: stale, within the lenient window
        # Served stale; its background refresh holds the lock for a second,
        # extended (and so reported) every 0.1 s.
        assert await cache.get_or_compute("k", slow_new, ttl=0.1, stale_while_revalidate=30) == (
            "old"
        )
        with anyio.fail_after(5):
            assert await cache.get_or_compute("k", slow_new, ttl=0.1) == "new"


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: ImportError("no module", name="plugins", path="/srv/plugins.py"),
        lambda: OSError(2, "No such file or directory", "/etc/app.toml"),
        lambda: NameError("no name", name="config"),
    ],
    ids=["ImportError", "OSError", "NameError"],
)
async def test_copies_of_builtin_exceptions_keep_their_fields(
    make_cache: MakeCache, make_error: Callable[[], BaseException]
) -> None:
    """Fields built-in exceptions keep in C (name, path, filename) reach every caller."""
    original = make_error()

    async def fail_plainly() -> str:
        await until(lambda: cache.statistics().coalesced == 2)  # everyone has joined
        raise original

    fields = ("name", "path", "filename", "errno")

    async with make_cache() as cache:
        caught = await _failures_of(cache, fail_plainly, Exception, callers=3)
        assert len(caught) == 3
        assert len({id(e) for e in caught}) == 3  # each caller its own object
        want = {f: getattr(original, f) for f in fields if hasattr(original, f)}
        for e in caught:
            assert type(e) is type(original)
            assert str(e) == str(original)
            assert {f: getattr(e, f) for f in want} == want


async def test_early_refreshes_count_refreshes_started(make_cache: MakeCache) -> None:
    """Many reads drawing an early refresh while one runs: one refresh started, counted once."""
    gate = anyio.Event()
    calls = 0

    async def source() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            await gate.wait()
        return f"v{calls}"

    async with make_cache(beta=1e9) as cache:
        assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"
        await anyio.sleep(0.35)  # the condition is the clock: into the value's second half
        for _ in range(20):
            assert await cache.get_or_compute("k", source, ttl=0.6) == "v1"
        gate.set()
        with anyio.fail_after(5):
            while cache.statistics().refreshing:
                await anyio.sleep(0.01)
        stats = cache.statistics()
        assert (calls, stats.early_refreshes, stats.hits) == (2, 1, 20)  # after one miss


async def test_aclose_from_another_task_closes_it(make_cache: MakeCache) -> None:
    """A shutdown handler closing from its own task closes it; a caller waiting gets ClosedError."""
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"

    async def value() -> str:
        return "v"

    async with make_cache() as cache:
        assert await cache.get_or_compute("k", value, ttl=30) == "v"
        outcome: list[BaseException] = []

        async def caller() -> None:
            try:
                await cache.get_or_compute("slow", slow, ttl=30)
            except ClosedError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await started.wait()
            tg.start_soon(cache.aclose)  # from a task of its own, not the one that entered
        assert [type(e) for e in outcome] == [ClosedError]
        with pytest.raises(ClosedError):
            await cache.get_or_compute("k", value, ttl=30)
        await cache.aclose()  # the block's own close: idempotent


@pytest.mark.parametrize(
    ("settings", "call"),
    [
        ({}, {"ttl": 1e17}),
        ({}, {"ttl": 30, "stale_if_error": 1e17}),
        ({"stale_while_revalidate": 1e17}, {"ttl": 30}),
    ],
)
async def test_durations_redis_cannot_hold_are_refused_up_front(
    make_cache: MakeCache, settings: dict[str, float], call: dict[str, float]
) -> None:
    """A TTL or window too long for Redis's PX: ValueError at once, in both modes alike."""

    async def value() -> str:
        return "v"

    with pytest.raises(ValueError, match="at most 1e"):
        async with make_cache(**settings) as cache:
            await cache.get_or_compute("k", value, **call)  # type: ignore[call-overload, call-arg]


def test_bools_are_not_durations() -> None:
    """lock_ttl=True or wait_timeout=True is refused, not taken for one second."""
    with pytest.raises(TypeError, match="lock_ttl"):
        Stampede(lock_ttl=True)
    with pytest.raises(TypeError, match="wait_timeout"):
        Stampede(wait_timeout=True)


async def test_a_strict_process_never_gets_a_lenient_writers_old_value(
    redis_url: str, namespace: str
) -> None:
    """Process A serves stale (swr 60) and refreshes slowly; process B allows no stale value.

    B finds the value past its windows and waits on A's refresh lock; A's
    lock extensions wake B, which must not take the old value it rejected.
    """

    async def old() -> str:
        return "old"

    async def slow_new() -> str:
        await anyio.sleep(2.0)
        return "new"

    # A's lock is extended every 0.5 s (lock_ttl/3) while its refresh runs:
    # each extension wakes B. (With a 0.3 s lock, one extension late by
    # 0.2 s on a loaded machine let the lock lapse, and B took it over.)
    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=1.5) as a,
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=1.5) as b,
    ):
        await a.get_or_compute("k", old, ttl=0.1, stale_while_revalidate=60)
        await anyio.sleep(0.15)  # the condition is the clock: stale, within A's window
        assert await a.get_or_compute("k", slow_new, ttl=0.1, stale_while_revalidate=60) == "old"
        with anyio.fail_after(10):
            assert await b.get_or_compute("k", slow_new, ttl=0.1) == "new"
        assert b.statistics().computes == 0  # it waited for A's refresh
