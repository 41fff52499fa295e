"""Bad input gets a clear, typed error and loses nothing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import anyio
import lz4.block
import pytest
import redis
from _conditions import until

from asyncstampede import InvalidURLError, SerializationError, Stampede, ValueTooLargeError
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
        await any_cache.get_or_compute(key, compute, ttl=5)  # type: ignore[call-overload]
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
            await cache.get_or_compute("k", compute, ttl=5)  # type: ignore[call-arg, type-var]
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
        await until(lambda: waiter.statistics().waiting == 1)  # the waiter watches the lock
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


# --- the wrong thing passed where a client or a compute function goes ----------


def test_a_url_instead_of_a_client_says_from_url(redis_url: str) -> None:
    """Stampede("redis://...") raises a TypeError that names Stampede.from_url."""
    with pytest.raises(TypeError, match=r"Stampede\.from_url"):
        Stampede(redis_url)  # type: ignore[arg-type]


def test_a_synchronous_client_is_refused(redis_url: str) -> None:
    """A redis.Redis (sync) client raises a TypeError asking for redis.asyncio.Redis."""
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        Stampede(client)  # type: ignore[arg-type]
    client.close()


def test_a_synchronous_cluster_client_is_refused() -> None:
    """A redis.cluster.RedisCluster (sync) raises a TypeError naming the asyncio clients."""
    import redis.cluster

    # (Made without its constructor, which connects at once.)
    client = object.__new__(redis.cluster.RedisCluster)
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis \(or RedisCluster\)"):
        Stampede(client)  # type: ignore[arg-type]


async def test_a_sync_compute_function_is_a_type_error_and_poisons_nothing(
    any_cache: Stampede,
) -> None:
    """fn returning a plain value: every caller gets a TypeError; the next good call computes."""

    def blocking() -> dict[str, int]:
        return {"a": 1}

    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await any_cache.get_or_compute("k", blocking, ttl=5)  # type: ignore[arg-type, call-arg]
        except TypeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    assert len(errors) == 5
    assert "not an awaitable" in str(errors[0])
    assert "anyio.to_thread.run_sync" in str(errors[0])

    async def good() -> dict[str, int]:
        return {"a": 2}

    with anyio.fail_after(2):  # no lock left behind to wait out (lock_ttl is 5 s)
        assert await any_cache.get_or_compute("k", good, ttl=5) == {"a": 2}


async def test_a_coroutine_instead_of_a_function_is_refused_and_closed(any_cache: Stampede) -> None:
    """get_or_compute(key, load(), ttl): a TypeError at once, and no 'never awaited' warning."""

    async def load() -> int:
        raise AssertionError("must not run")

    with pytest.raises(TypeError, match="coroutine"):
        await any_cache.get_or_compute("k", load(), ttl=5)  # type: ignore[call-overload]


async def test_a_generator_function_is_refused_before_running(any_cache: Stampede) -> None:
    """An async generator function is refused; its body never runs."""

    async def values() -> AsyncIterator[int]:
        raise AssertionError("must not run")
        yield 1

    with pytest.raises(TypeError, match="generator"):
        await any_cache.get_or_compute("k", values, ttl=5)  # type: ignore[arg-type, call-arg]


def test_redis_mode_under_trio_says_to_use_asyncio(redis_url: str) -> None:
    """Under trio, entering a Redis-backed Stampede raises a RuntimeError that says why."""

    async def main() -> None:
        async with Stampede.from_url(redis_url):
            raise AssertionError("entered under trio")

    with pytest.raises(RuntimeError, match="asyncio"):
        anyio.run(main, backend="trio")


def test_embedded_mode_runs_under_trio() -> None:
    """Embedded mode needs no asyncio: concurrent callers under trio share one compute."""
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return 7

    async def main() -> list[int]:
        results: list[int] = []
        async with Stampede() as cache:

            async def one() -> None:
                results.append(await cache.get_or_compute("k", compute, ttl=5))

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)
        return results

    assert anyio.run(main, backend="trio") == [7] * 10
    assert calls == 1


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"socket_timeout": 0}, ValueError),
        ({"socket_timeout": None}, TypeError),
        ({"socket_timeout": True}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"max_connections": 2.5}, TypeError),
        ({"fail_open": "no"}, TypeError),
        ({"check": "yes"}, TypeError),
        ({"ttl_jitter": 5}, ValueError),
        ({"max_value_bytes": 0}, ValueError),
        ({"soft_timeout": 5, "hard_timeout": 1}, ValueError),
        ({"soft_timeout": 2, "hard_timeout": 2}, ValueError),
    ],
)
def test_from_url_refuses_bad_settings_at_once(
    redis_url: str, settings: dict[str, object], error: type[Exception]
) -> None:
    """Settings that could only fail later (blamed on Redis) are refused when building."""
    with pytest.raises(error, match=next(iter(settings))):
        Stampede.from_url(redis_url, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("http://127.0.0.1:6379/0", "schemes"),
        ("redis://127.0.0.1:notaport/0", "notaport"),
        ("redis://user:hunter2@127.0.0.1:port/0", "port"),
        ("redis://127.0.0.1:6379/0?password=hunter2&db=x", "db"),
        # A password with an unencoded / ? or #: parsers cut it apart, and
        # redis-py names a piece of it as the port.
        ("redis://user:hunter2/xy@127.0.0.1:6379/0", "Port"),
        ("redis://user:hunter2?xy@127.0.0.1:6379/0", "Port"),
        ("redis://user:hunter2#xy@127.0.0.1:6379/0", "Port"),
        ("redis//user:hunter2@127.0.0.1:6379", "schemes"),
        # What the query sets is checked when building, not at the first connection.
        ("rediss://:hunter2@127.0.0.1:6379/0?ssl_cert_reqs=bogus", "bogus"),
        ("redis://:hunter2@127.0.0.1:6379/0?no_such_option=1", "no_such_option"),
        # A path that is no database number (redis-py would quietly use 0).
        ("redis://:hunter2@127.0.0.1:6379/abc", "is not a database number"),
        ("redis://:hunter2@127.0.0.1:6379/0/extra", "is not a database number"),
    ],
)
@pytest.mark.parametrize("cluster", [False, True])
def test_a_malformed_url_is_an_invalid_url_error_without_its_password(
    url: str, fault: str, cluster: bool
) -> None:
    """redis-py's bare ValueError becomes InvalidURLError, with the forms and no password."""
    with pytest.raises(InvalidURLError, match="The forms are redis://") as caught:
        Stampede.from_url(url, cluster=cluster)
    assert fault in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "xy@" not in str(caught.value)
    assert isinstance(caught.value, ValueError)  # (what redis-py raised before: still caught)


async def test_a_megabyte_key_is_cached_under_a_short_name(redis_url: str, namespace: str) -> None:
    """A 1 MB key works, and what Redis stores (and every command carries) is a short name."""
    key = "x" * 1_000_000

    async def compute() -> str:
        return "v"

    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        assert await cache.get_or_compute(key, compute, ttl=30) == "v"
        assert await cache.get_or_compute(key, compute, ttl=30) == "v"
        assert cache.statistics().computes == 1
    sync = redis.Redis.from_url(redis_url)
    stored = sync.keys(f"{namespace}:*")
    sync.close()
    names = make_names(namespace, key)
    assert names.value in stored
    assert set(stored) <= {names.value, names.lock}  # the lock: the commit's marker, 500 ms
    assert all(len(name) < 200 for name in stored)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:2] + bytes([99]) + b[3:],  # an envelope version from the future
        lambda b: b[: len(b) // 2],  # cut short
        lambda b: b[:2],  # the magic alone
        lambda b: b'{"json": "written by another program"}',
        # An lz4 bomb: 1 MB of zeros that claims to unpack to 4 GiB, past
        # max_value_bytes: refused before anything is allocated.
        lambda b: (
            b[:3]
            + bytes([b[3] | 0x02])
            + b[4:32]
            + b"\xff\xff\xff\xff"
            + lz4.block.compress(bytes(1 << 20), store_size=False)
        ),
    ],
    ids=["future-version", "truncated", "magic-only", "foreign-json", "lz4-bomb"],
)
async def test_envelopes_another_writer_mangled_are_a_counted_miss(
    cache: Stampede, sync_redis: redis.Redis, mangle: Callable[[bytes], bytes]
) -> None:
    """What another program (or version) stored under the namespace: a miss, counted, replaced."""

    async def first() -> str:
        return "first"

    async def fresh() -> str:
        return "fresh"

    assert await cache.get_or_compute("k", first, ttl=30) == "first"
    names = make_names(cache.namespace, "k")
    stored = sync_redis.get(names.value)
    assert isinstance(stored, bytes)
    sync_redis.set(names.value, mangle(stored))
    assert await cache.get_or_compute("k", fresh, ttl=30) == "fresh"
    assert cache.statistics().decode_errors == 1
    assert await cache.get_or_compute("k", fresh, ttl=30) == "fresh"  # now a hit
    assert cache.statistics().computes == 2
