"""get_many_or_compute: one read, one batch compute, every key single-flighted fleet-wide."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
from _conditions import until
from _herd import Worker
from _proxy import FaultProxy

from asyncstampede import (
    BackendError,
    BackendRefusedError,
    ClosedError,
    ComputeFailedError,
    ComputeTimeoutError,
    MissingFromBatchError,
    ReentrantCallError,
    Stampede,
    WaitTimeoutError,
)
from asyncstampede._envelope import encode
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio

MakeCache = Callable[..., AbstractAsyncContextManager[Stampede]]
BATCH_WORKER = str(Path(__file__).with_name("_batch_worker.py"))


class Recorder:
    """A batch_fn that records each call's keys; optionally held until `release`."""

    def __init__(self, *, held: bool = False, leave_out: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.gate = anyio.Event()
        if not held:
            self.gate.set()
        self.leave_out = leave_out

    async def __call__(self, keys: list[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        await self.gate.wait()
        return {k: {"key": k} for k in keys if k not in self.leave_out}

    @property
    def computed(self) -> list[str]:
        return [k for call in self.calls for k in call]


def _keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def test_cold_keys_are_computed_by_one_batch_call(make_cache: MakeCache) -> None:
    """A cold batch calls batch_fn once with every key; a second batch only reads."""
    batch_fn = Recorder()
    async with make_cache() as cache:
        keys = _keys(20)
        assert await cache.get_many_or_compute(keys, batch_fn, ttl=60) == {
            k: {"key": k} for k in keys
        }
        assert batch_fn.calls == [keys]
        assert await cache.get_many_or_compute(keys, batch_fn, ttl=60) == {
            k: {"key": k} for k in keys
        }
        assert len(batch_fn.calls) == 1
        stats = cache.statistics()
        assert (stats.computes, stats.misses, stats.hits) == (20, 20, 20)


async def test_only_the_missing_keys_reach_batch_fn(make_cache: MakeCache) -> None:
    """Keys already cached are served from the read; batch_fn gets the others, in order."""
    batch_fn = Recorder()
    async with make_cache() as cache:
        await cache.get_or_compute("k3", lambda: _value("cached"), ttl=60)
        result = await cache.get_many_or_compute(["k1", "k3", "k2"], batch_fn, ttl=60)
        assert list(result) == ["k1", "k3", "k2"]
        assert result["k3"] == "cached"
        assert batch_fn.calls == [["k1", "k2"]]


async def _value(value: Any) -> Any:
    return value


async def test_duplicate_keys_are_read_and_computed_once(make_cache: MakeCache) -> None:
    """A key given twice is computed once and appears once in the result."""
    batch_fn = Recorder()
    async with make_cache() as cache:
        result = await cache.get_many_or_compute(["a", "b", "a"], batch_fn, ttl=60)
        assert result == {"a": {"key": "a"}, "b": {"key": "b"}}
        assert batch_fn.calls == [["a", "b"]]


async def test_a_batch_joins_a_get_or_compute_in_flight(make_cache: MakeCache) -> None:
    """A get_or_compute of k in flight and a batch with k: one compute of k, both get it."""
    release = anyio.Event()
    single_calls = 0

    async def single() -> dict[str, str]:
        nonlocal single_calls
        single_calls += 1
        await release.wait()
        return {"key": "k0", "by": "single"}

    batch_fn = Recorder()
    async with make_cache() as cache, anyio.create_task_group() as tg:
        got: dict[str, Any] = {}

        async def one() -> None:
            got["single"] = await cache.get_or_compute("k0", single, ttl=60)

        tg.start_soon(one)
        await until(lambda: cache.statistics().computing == 1)

        async def many() -> None:
            got["many"] = await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)

        tg.start_soon(many)
        await until(lambda: len(batch_fn.calls) == 1)
        assert batch_fn.calls == [["k1", "k2"]]  # k0 is in flight: joined, not computed
        release.set()
    assert single_calls == 1
    assert got["single"] == got["many"]["k0"] == {"key": "k0", "by": "single"}
    assert cache.statistics().coalesced == 1


async def test_a_get_or_compute_joins_a_batch_in_flight(make_cache: MakeCache) -> None:
    """A batch computing k and a get_or_compute of k: its fn is never called."""
    batch_fn = Recorder(held=True)

    async def single() -> str:
        raise AssertionError("k1 is being computed by the batch")

    async with make_cache() as cache, anyio.create_task_group() as tg:
        got: dict[str, Any] = {}

        async def many() -> None:
            got["many"] = await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)

        async def one() -> None:
            got["single"] = await cache.get_or_compute("k1", single, ttl=60)

        tg.start_soon(many)
        await until(lambda: cache.statistics().computing == 3)
        tg.start_soon(one)
        await until(lambda: cache.statistics().coalesced == 1)
        batch_fn.gate.set()
    assert got["single"] == got["many"]["k1"] == {"key": "k1"}
    assert batch_fn.calls == [_keys(3)]


async def test_two_batches_in_one_process_share_their_keys(make_cache: MakeCache) -> None:
    """Two overlapping batches at once: each key computed once, by one of them."""
    first, second = Recorder(held=True), Recorder()
    async with make_cache() as cache, anyio.create_task_group() as tg:
        got: list[dict[str, Any]] = []

        async def ask(keys: list[str], batch_fn: Recorder) -> None:
            got.append(await cache.get_many_or_compute(keys, batch_fn, ttl=60))

        tg.start_soon(ask, _keys(6)[:4], first)
        await until(lambda: len(first.calls) == 1)
        tg.start_soon(ask, _keys(6)[2:], second)
        await until(lambda: len(second.calls) == 1)
        first.gate.set()
    assert first.calls == [["k0", "k1", "k2", "k3"]]
    assert second.calls == [["k4", "k5"]]
    assert all(v == {"key": k} for result in got for k, v in result.items())


async def test_a_key_left_out_by_batch_fn_raises_and_the_others_are_cached(
    make_cache: MakeCache,
) -> None:
    """A key missing from batch_fn's mapping fails (MissingFromBatchError); the rest are stored."""
    partial = Recorder(leave_out=frozenset({"k1"}))
    async with make_cache() as cache:
        with pytest.raises(MissingFromBatchError, match="'k1'") as caught:
            await cache.get_many_or_compute(_keys(3), partial, ttl=60)
        assert "1 of 3 keys failed" in str(caught.value.__notes__)
        full = Recorder()
        assert await cache.get_many_or_compute(_keys(3), full, ttl=60) == {
            k: {"key": k} for k in _keys(3)
        }
        assert full.calls == [["k1"]]


async def test_batch_fn_raising_fails_every_key_it_was_asked_for(make_cache: MakeCache) -> None:
    """batch_fn raising: the call raises it, nothing is cached, the next call computes again."""
    calls = 0

    async def failing(keys: list[str]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise LookupError("the database is down")

    async with make_cache() as cache:
        for _ in range(2):
            with pytest.raises(LookupError, match="database is down") as caught:
                await cache.get_many_or_compute(_keys(4), failing, ttl=60)
            assert "4 of 4 keys failed" in str(caught.value.__notes__)
        assert calls == 2
        assert cache.statistics().compute_errors == 8


async def test_negative_ttl_remembers_a_failed_batch(make_cache: MakeCache) -> None:
    """With negative_ttl, a failed batch is remembered per key: no second call of batch_fn."""
    calls = 0

    async def failing(keys: list[str]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise LookupError("no such rows")

    async with make_cache(negative_ttl=60) as cache:
        with pytest.raises(LookupError):
            await cache.get_many_or_compute(_keys(2), failing, ttl=60)
        with pytest.raises(ComputeFailedError, match="no such rows"):
            await cache.get_many_or_compute(_keys(2), failing, ttl=60)
        assert calls == 1


async def test_hard_timeout_cancels_batch_fn(make_cache: MakeCache) -> None:
    """A batch_fn past hard_timeout is cancelled; its keys raise ComputeTimeoutError."""
    cancelled = anyio.Event()

    async def forever(keys: list[str]) -> dict[str, Any]:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    async with make_cache() as cache:
        with pytest.raises(ComputeTimeoutError):
            await cache.get_many_or_compute(_keys(3), forever, ttl=60, hard_timeout=0.05)
        await cancelled.wait()


async def test_batch_fn_asking_for_its_own_key_is_refused(make_cache: MakeCache) -> None:
    """batch_fn asking the cache for a key it computes raises ReentrantCallError, no hang."""
    async with make_cache() as cache:

        async def reentrant(keys: list[str]) -> dict[str, Any]:
            await cache.get_or_compute(keys[0], lambda: _value(1), ttl=60)
            raise AssertionError("refused above")

        with pytest.raises(ReentrantCallError):
            await cache.get_many_or_compute(_keys(2), reentrant, ttl=60)


async def test_a_cancelled_caller_leaves_the_batch_to_finish(make_cache: MakeCache) -> None:
    """Cancelling the batch's caller does not cancel its computes: joiners get the values."""
    batch_fn = Recorder(held=True)
    async with make_cache() as cache:
        async with anyio.create_task_group() as tg:
            got: dict[str, Any] = {}

            async def one() -> None:
                got["k2"] = await cache.get_or_compute("k2", lambda: _value("no"), ttl=60)

            caller = anyio.CancelScope()

            async def many() -> None:
                with caller:
                    await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)
                    raise AssertionError("cancelled before batch_fn returned")

            tg.start_soon(many)
            await until(lambda: cache.statistics().computing == 3)
            tg.start_soon(one)
            await until(lambda: cache.statistics().coalesced == 1)
            caller.cancel()
            await until(lambda: caller.cancelled_caught)
            batch_fn.gate.set()
        assert got["k2"] == {"key": "k2"}
        again = Recorder()
        assert len(await cache.get_many_or_compute(_keys(3), again, ttl=60)) == 3
        assert again.calls == []


async def test_closing_during_a_batch_raises_closed_error(mode: str, redis_url: str) -> None:
    """Callers outside the instance's block get ClosedError when it closes mid-batch."""
    batch_fn = Recorder(held=True)
    cache = Stampede.from_url(redis_url) if mode == "redis" else Stampede()
    errors: list[BaseException] = []

    async def ask() -> None:
        try:
            await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)
        except ClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, cache:
        tg.start_soon(ask)
        await until(lambda: cache.statistics().computing == 3)
    assert len(errors) == 1
    with pytest.raises(ClosedError):
        await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)


async def test_a_closed_or_unentered_instance_refuses_a_batch() -> None:
    """Before entering and after closing, get_many_or_compute raises ClosedError."""
    cache = Stampede()
    with pytest.raises(ClosedError):
        await cache.get_many_or_compute(["a"], Recorder(), ttl=60)
    async with cache:
        pass
    with pytest.raises(ClosedError):
        await cache.get_many_or_compute(["a"], Recorder(), ttl=60)


@pytest.mark.parametrize(
    ("keys", "error", "words"),
    [
        ("abc", TypeError, "not one str"),
        (b"abc", TypeError, "not one bytes"),
        (42, TypeError, "iterable of str"),
        (["a", 1], TypeError, r"keys\[1\] is of type int"),
        (["a", ""], ValueError, r"keys\[1\] is empty"),
        ([], ValueError, "keys is empty"),
    ],
)
async def test_bad_keys_are_refused_with_what_to_do(
    any_cache: Stampede, keys: Any, error: type[Exception], words: str
) -> None:
    """Bad keys raise a typed error before anything is read or computed."""
    batch_fn = Recorder()
    with pytest.raises(error, match=words):
        await any_cache.get_many_or_compute(keys, batch_fn, ttl=60)
    assert batch_fn.calls == []
    assert any_cache.statistics().misses == 0


async def test_bad_batch_fns_are_refused_with_what_to_do(any_cache: Stampede) -> None:
    """A non-callable, a coroutine, a sync function or a non-mapping result: a typed error."""
    with pytest.raises(TypeError, match="must be an async callable"):
        await any_cache.get_many_or_compute(["a"], 42, ttl=60)  # type: ignore[call-overload]
    coroutine = Recorder()(["a"])
    with pytest.raises(TypeError, match="pass the function itself"):
        await any_cache.get_many_or_compute(["a"], coroutine, ttl=60)  # type: ignore[call-overload]

    def sync(keys: list[str]) -> dict[str, int]:
        return dict.fromkeys(keys, 1)

    with pytest.raises(TypeError, match="not an awaitable"):
        await any_cache.get_many_or_compute(["b"], sync, ttl=60)  # type: ignore[arg-type]

    async def listing(keys: list[str]) -> list[int]:
        return [1 for _ in keys]

    with pytest.raises(TypeError, match="not a mapping"):
        await any_cache.get_many_or_compute(["c"], listing, ttl=60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        await any_cache.get_many_or_compute(["d"], Recorder(), ttl=0)


def test_embedded_batches_run_under_trio() -> None:
    """Embedded mode needs no asyncio: a batch under trio computes and reads."""

    async def main() -> None:
        batch_fn = Recorder()
        async with Stampede() as cache:
            assert len(await cache.get_many_or_compute(_keys(5), batch_fn, ttl=60)) == 5
            assert len(await cache.get_many_or_compute(_keys(6), batch_fn, ttl=60)) == 6
        assert batch_fn.calls == [_keys(5), ["k5"]]

    anyio.run(main, backend="trio")


async def test_a_warm_batch_is_one_mget(own_server: RedisServer) -> None:
    """A warm batch of 50 keys costs Redis one MGET and nothing else."""
    admin = redis.Redis.from_url(own_server.url)
    async with Stampede.from_url(own_server.url) as cache:
        await cache.get_many_or_compute(_keys(50), Recorder(), ttl=60)
        before = admin.info("commandstats")
        await cache.get_many_or_compute(_keys(50), Recorder(), ttl=60)
        after = admin.info("commandstats")
    admin.close()
    sent = {
        name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"]
        for name in after
        if name != "cmdstat_info"
    }
    assert {name: n for name, n in sent.items() if n} == {"cmdstat_mget": 1}


async def test_a_cold_batch_costs_three_round_trips_whatever_its_size(
    redis_url: str, namespace: str
) -> None:
    """100 ms added to every reply: 50 cold keys take 3 round trips (MGET, locks, commits)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultProxy(port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with Stampede.from_url(url, namespace=namespace, redis_budget=5) as cache:
            await cache.get_or_compute("warm-up", lambda: _value(0), ttl=60)
            await until(lambda: proxy.answered >= 3)  # its own connections are up
            proxy.delay = 0.1
            started = anyio.current_time()
            await cache.get_many_or_compute(_keys(50), Recorder(), ttl=60)
            cold = anyio.current_time() - started
            started = anyio.current_time()
            await cache.get_many_or_compute(_keys(50), Recorder(), ttl=60)
            warm = anyio.current_time() - started
    # One key at a time would take 150 round trips cold (15 s here), 50 warm.
    assert 0.3 <= cold < 0.55, cold
    assert 0.1 <= warm < 0.2, warm


async def test_a_caller_cancelled_during_the_read_hands_its_keys_over(
    redis_url: str, namespace: str
) -> None:
    """The batch's caller cancelled while its MGET is on its way: a joiner still gets k1, once."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    batch_fn = Recorder()
    async with FaultProxy(port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with (
            Stampede.from_url(url, namespace=namespace, redis_budget=5) as cache,
            anyio.create_task_group() as tg,
        ):
            await cache.get_or_compute("warm-up", lambda: _value(0), ttl=60)
            await until(lambda: proxy.answered >= 3)  # its own connections are up
            proxy.delay = 0.2  # the MGET's reply is held back
            caller = anyio.CancelScope()
            got: dict[str, Any] = {}

            async def many() -> None:
                with caller:
                    await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)

            async def one() -> None:
                got["k1"] = await cache.get_or_compute("k1", lambda: _value("no"), ttl=60)

            tg.start_soon(many)
            await until(lambda: cache.statistics().in_flight == 3)
            tg.start_soon(one)
            await until(lambda: cache.statistics().coalesced == 1)
            caller.cancel()
            await until(lambda: cache.statistics().in_flight == 0)  # every key handed over ended
        assert caller.cancelled_caught
        assert got["k1"] == {"key": "k1"}
        assert sorted(batch_fn.computed) == _keys(3)  # each key once, by the batch's function


async def test_a_stale_value_is_served_while_one_refresh_runs(
    redis_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """The read's verdict is get_or_compute's: a stale value is served, one refresh follows."""
    now = int(time.time() * 1000)
    stale = encode(
        "old",
        created_ms=now - 10_000,
        delta_ms=5,
        fresh_until_ms=now - 5_000,
        compress_threshold=4096,
        max_value_bytes=1 << 20,
    )
    sync_redis.set(make_names(namespace, "k1").value, stale, px=60_000)
    batch_fn = Recorder()
    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        result = await cache.get_many_or_compute(
            _keys(2), batch_fn, ttl=60, stale_while_revalidate=60
        )
        assert result == {"k0": {"key": "k0"}, "k1": "old"}
        await until(lambda: len(batch_fn.calls) >= 2)
        assert sorted(batch_fn.calls) == [["k0"], ["k1"]], batch_fn.calls
        await until(lambda: cache.statistics().refreshing == 0)
        assert (await cache.get_many_or_compute(_keys(2), batch_fn, ttl=60))["k1"] == {"key": "k1"}
        assert cache.statistics().stale_served == 1


@pytest.mark.parametrize("policy", ["compute", "raise"])
async def test_a_key_whose_wait_times_out_follows_on_wait_timeout(
    redis_url: str, namespace: str, sync_redis: redis.Redis, policy: str
) -> None:
    """A key held elsewhere past wait_timeout: computed by a later batch_fn call, or raises."""
    sync_redis.set(make_names(namespace, "k1").lock, b"held-by-another-process", px=30_000)
    batch_fn = Recorder()
    async with Stampede.from_url(
        redis_url,
        namespace=namespace,
        wait_timeout=0.1,
        on_wait_timeout=policy,  # type: ignore[arg-type]
    ) as cache:
        if policy == "compute":
            result = await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)
            assert result == {k: {"key": k} for k in _keys(3)}
            assert batch_fn.calls == [["k0", "k2"], ["k1"]]
        else:
            with pytest.raises(WaitTimeoutError):
                await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)
            assert batch_fn.calls == [["k0", "k2"]]
        assert cache.statistics().wait_timeouts == 1


async def test_redis_unreachable_fails_open_with_one_batch_call(own_server: RedisServer) -> None:
    """Redis gone: fail_open computes every key with one batch_fn call; off, BackendError."""
    batch_fn = Recorder()
    async with Stampede.from_url(own_server.url, socket_timeout=0.5) as cache:
        own_server.stop()
        assert await cache.get_many_or_compute(_keys(10), batch_fn, ttl=60) == {
            k: {"key": k} for k in _keys(10)
        }
        assert batch_fn.calls == [_keys(10)]
        assert cache.statistics().backend_errors >= 1
    own_server.start()
    async with Stampede.from_url(own_server.url, socket_timeout=0.5, fail_open=False) as cache:
        own_server.stop()
        with pytest.raises(BackendError):
            await cache.get_many_or_compute(_keys(10), batch_fn, ttl=60)


async def test_a_paused_redis_costs_a_batch_one_budget_then_the_breaker_skips_it(
    own_server: RedisServer, namespace: str
) -> None:
    """SIGSTOP: the batch fails open at redis_budget (one batch_fn call); the next skips Redis."""
    batch_fn = Recorder()
    async with Stampede.from_url(own_server.url, namespace=namespace, redis_budget=0.2) as cache:
        await until(lambda: cache.statistics().wake != "poll")  # its connections are up
        assert len(await cache.get_many_or_compute(_keys(3), batch_fn, ttl=60)) == 3
        own_server.pause()
        try:
            started = anyio.current_time()
            assert len(await cache.get_many_or_compute(_keys(6), batch_fn, ttl=60)) == 6
            assert anyio.current_time() - started < 1.5  # the budget (0.2 s), not a socket timeout
            stats = cache.statistics()
            assert stats.breaker != "closed"
            assert stats.backend_errors == 1
            skipped = stats.short_circuited
            assert len(await cache.get_many_or_compute(_keys(4, "j"), batch_fn, ttl=60)) == 4
            assert cache.statistics().short_circuited > skipped
            assert cache.statistics().backend_errors == 1  # skipped: no new failure
        finally:
            own_server.resume()
        assert batch_fn.calls == [_keys(3), _keys(6), _keys(4, "j")]


@pytest.fixture
async def no_mget_url(redis_url: str, namespace: str) -> AsyncIterator[str]:
    """The URL of an ACL user who may do everything but MGET."""
    admin = redis.asyncio.Redis.from_url(redis_url)
    user = f"nomget-{namespace}"
    await admin.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all", "-mget"]
    )
    yield redis_url.replace("redis://", f"redis://{user}@")
    await admin.acl_deluser(user)
    await admin.aclose()


async def test_a_refused_mget_fails_open_and_is_counted(no_mget_url: str, namespace: str) -> None:
    """Redis refusing the read (an ACL without MGET): values computed once, the refusal counted."""
    batch_fn = Recorder()
    async with Stampede.from_url(no_mget_url, namespace=namespace) as cache:
        assert len(await cache.get_many_or_compute(_keys(5), batch_fn, ttl=60)) == 5
        assert batch_fn.calls == [_keys(5)]
        assert cache.statistics().refused >= 1
    async with Stampede.from_url(no_mget_url, namespace=namespace, fail_open=False) as cache:
        with pytest.raises(BackendRefusedError, match=r"(?i)mget"):
            await cache.get_many_or_compute(_keys(5), batch_fn, ttl=60)


@pytest.mark.slow
def test_three_processes_with_overlapping_batches_compute_each_key_once(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """3 processes ask overlapping cold key sets at once: every key computed once, all served."""
    ranges = {"A": ("0", "60", "1"), "B": ("30", "90", "1"), "C": ("0", "90", "2")}
    herd = {
        name: Worker(redis_url, namespace, *r, script=BATCH_WORKER) for name, r in ranges.items()
    }
    workers.extend(herd.values())
    for worker in herd.values():
        worker.expect("ready")
    for worker in herd.values():
        worker.send("go")
    # Each process has asked about every lock it needs (and holds its
    # computes open): the three batches overlap in time.
    for worker in herd.values():
        worker.expect("settled")
    for worker in herd.values():
        worker.send("return")
    reports = {name: worker.report() for name, worker in herd.items()}
    computed = [k for r in reports.values() for k in r["computed"]]
    assert sorted(computed) == sorted(f"k{i}" for i in range(90))  # each key once, fleet-wide
    by = {k: r["pid"] for r in reports.values() for k in r["computed"]}
    for name, (start, stop, step) in ranges.items():
        report = reports[name]
        assert report["errors"] == []
        assert report["calls"] <= 1  # one batch_fn call per process at most
        asked = [f"k{i}" for i in range(int(start), int(stop), int(step))]
        assert report["values"] == {k: {"key": k, "by": by[k]} for k in asked}
    # 60 + 60 + 45 keys asked, 90 computed: the other 75 were waited for.
    assert sum(r["stats"]["remote_waits"] for r in reports.values()) == 75
    assert sum(r["stats"]["computes"] for r in reports.values()) == 90


@pytest.mark.slow
@pytest.mark.parametrize("n", [10, 100])
def test_keys_a_failed_holder_lets_go_are_computed_by_one_batch_call(
    workers: list[Worker], redis_url: str, namespace: str, n: int
) -> None:
    """Another process's batch_fn fails for n keys waited for here: one batch_fn call for all.

    The holder lets its n locks go together; the waiter is woken for each,
    and the keys that become its own together go to one call, not one each.
    """
    keys = _keys(n)
    holder = Worker(redis_url, namespace, "0", str(n), "1", "fail", script=BATCH_WORKER)
    waiter = Worker(redis_url, namespace, "0", str(n), "1", script=BATCH_WORKER)
    workers.extend([holder, waiter])
    holder.expect("ready")
    waiter.expect("ready")
    holder.send("go")
    holder.expect("settled")  # computing every key: it holds their locks
    waiter.send("go")
    waiter.expect("settled")  # waiting for every key
    waiter.send("return")  # (its batch_fn returns as soon as it is called)
    holder.send("return")  # the holder's batch_fn raises: its locks are let go
    failed, report = holder.report(), waiter.report()
    assert failed["batches"] == [keys]
    assert len(failed["errors"]) == 1
    assert "the database is down" in failed["errors"][0]
    assert report["batches"] == [keys]  # one call with every key, in their order
    assert report["errors"] == []
    assert report["values"] == {k: {"key": k, "by": report["pid"]} for k in keys}
    stats = report["stats"]
    assert (stats["remote_waits"], stats["computes"], stats["takeovers"]) == (n, n, 0)


@pytest.mark.slow
def test_keys_whose_locks_ran_out_together_are_taken_over_by_one_batch_call(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """A holder of 10 keys dies: the waiter takes them over at their expiry, in one call.

    Each waiter's timer has its own jitter; the first takeover has the
    others whose locks ran out too look at once, and they join its call.
    """
    keys = _keys(10)
    holder = Worker(redis_url, namespace, "0", "10", "1", "return", "0.5", script=BATCH_WORKER)
    waiter = Worker(redis_url, namespace, "0", "10", "1", script=BATCH_WORKER)
    workers.extend([holder, waiter])
    holder.expect("ready")
    waiter.expect("ready")
    holder.send("go")
    holder.expect("settled")  # computing every key: it holds the 10 locks
    waiter.send("go")
    waiter.expect("settled")  # waiting for every key
    holder.proc.kill()  # dies holding them: they run out within lock_ttl (0.5 s)
    holder.proc.wait()
    waiter.send("return")
    report = waiter.report()
    assert report["batches"] == [keys]
    assert report["errors"] == []
    assert report["values"] == {k: {"key": k, "by": report["pid"]} for k in keys}
    stats = report["stats"]
    assert (stats["remote_waits"], stats["takeovers"], stats["computes"]) == (10, 10, 10)
