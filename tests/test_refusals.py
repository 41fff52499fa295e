"""A Redis that refuses a write never leaves waiters hanging, and says so loudly."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio
from _scenarios import holder_and_waiter

from asyncstampede import BackendRefusedError, Stampede
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def no_scripts_url(redis_url: str, namespace: str) -> AsyncIterator[str]:
    """The URL of an ACL user who may do everything but run scripts."""
    admin = redis.asyncio.Redis.from_url(redis_url)
    version = str((await admin.info("server"))["redis_version"])
    if tuple(int(part) for part in version.split(".")[:2]) < (7, 0):
        await admin.aclose()
        pytest.skip(f"Redis {version}: the lock itself is a script there, refused before a commit")
    user = f"noeval-{namespace}"
    await admin.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"],
        commands=["+@all", "-evalsha", "-eval"],
    )  # fmt: skip
    yield redis_url.replace("redis://", f"redis://{user}@")
    await admin.acl_deluser(user)
    await admin.aclose()


async def test_commit_refused_by_acl_frees_the_lock_and_is_logged(
    no_scripts_url: str, namespace: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """EVALSHA denied: the holder releases its lock without a script; the waiter goes on at once."""
    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with (
            Stampede.from_url(no_scripts_url, namespace=namespace, lock_ttl=30) as leader,
            Stampede.from_url(no_scripts_url, namespace=namespace, lock_ttl=30) as waiter,
        ):
            led, waited = await holder_and_waiter(leader, waiter)
            assert led == ["leader"]  # fail open: the computed value still reaches its callers
            assert waited == ["waiter"]  # took the freed lock, computed, was refused in turn
            for cache in (leader, waiter):
                stats = cache.statistics()
                assert stats.refused >= 1
                assert stats.backend_errors >= stats.refused
    assert sync_redis.exists(make_names(namespace, "k").lock) == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, caplog.text
    text = errors[0].getMessage()
    assert "NOPERM" in text
    assert "evalsha" in text
    assert "+evalsha" in text  # the grant that is missing
    assert "127.0.0.1:" in text  # which server


async def test_commit_refused_raises_backend_error_when_not_fail_open(
    no_scripts_url: str, namespace: str, sync_redis: redis.Redis
) -> None:
    """With fail_open off, every caller of a refused commit gets BackendRefusedError at once."""
    async with (
        Stampede.from_url(
            no_scripts_url, namespace=namespace, lock_ttl=30, fail_open=False
        ) as leader,
        Stampede.from_url(
            no_scripts_url, namespace=namespace, lock_ttl=30, fail_open=False
        ) as waiter,
    ):
        led, waited = await holder_and_waiter(leader, waiter)
    assert len(led) == 1
    assert isinstance(led[0], BackendRefusedError)
    assert "NOPERM" in str(led[0])
    assert led[0].command == "EVALSHA"
    assert len(waited) == 1
    assert isinstance(waited[0], BackendRefusedError)
    assert sync_redis.exists(make_names(namespace, "k").lock) == 0


async def test_server_full_during_the_compute_frees_the_lock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A noeviction server fills up while the holder computes: the waiter is not stalled."""
    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "noeviction") as server:
        filler = redis.Redis.from_url(server.url)

        def fill() -> None:
            # Big values first, then ever smaller ones: the last refused write
            # frees its own buffer, so only a tiny one leaves the server over.
            # The server's own use moves by a few bytes (freed buffers), so
            # the smallest size goes on until two writes in a row are refused.
            n = 0
            for size in (65536, 4096, 256, 16, 1):
                refused = 0
                while n < 100_000 and refused < (2 if size == 1 else 1):
                    try:
                        filler.set(f"filler:{n}", b"x" * size)
                        refused = 0
                    except redis.exceptions.OutOfMemoryError:
                        refused += 1
                    n += 1
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                filler.set("filler:check", b"x")

        with caplog.at_level(logging.WARNING, logger="asyncstampede"):
            async with (
                Stampede.from_url(server.url, lock_ttl=30) as leader,
                Stampede.from_url(server.url, lock_ttl=30) as waiter,
            ):
                led, waited = await holder_and_waiter(leader, waiter, during=fill)
                assert led == ["leader"]
                assert waited == ["waiter"]  # its lock attempt was refused: computed uncached
                assert leader.statistics().refused >= 1
                assert waiter.statistics().refused >= 1
        assert filler.exists(make_names("stampede", "k").lock) == 0
        filler.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("OOM" in e and "maxmemory" in e and "storing 'k'" in e for e in errors), errors


async def test_wrongtype_under_the_namespace_is_refused_and_counted(
    redis_url: str, namespace: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Another program's list under a cache key: a counted refusal, logged, the call fails open."""
    sync_redis.rpush(make_names(namespace, "k").value, b"x")

    async def compute() -> str:
        return "v"

    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with Stampede.from_url(redis_url, namespace=namespace) as cache:
            assert await cache.get_or_compute("k", compute, ttl=5) == "v"
            assert cache.statistics().refused == 1
        async with Stampede.from_url(redis_url, namespace=namespace, fail_open=False) as cache:
            with pytest.raises(BackendRefusedError, match="WRONGTYPE"):
                await cache.get_or_compute("k", compute, ttl=5)
    assert "WRONGTYPE" in caplog.text
    assert "another program" in caplog.text
