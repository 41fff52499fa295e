"""Redis down, slow, or dropping the invalidation connections: nobody hangs, nothing crashes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest
import redis
import redis.asyncio
from _conditions import until
from _proxy import BlackholeProxy

from asyncstampede import BackendError, Stampede, WaitTimeoutError
from asyncstampede._keys import make_names
from asyncstampede._settings import Wake
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


async def test_redis_down_computes_locally_when_fail_open(own_server: RedisServer) -> None:
    """With Redis gone, calls still coalesce in-process and return computed values."""
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        return 3

    async with Stampede.from_url(own_server.url, socket_timeout=0.5) as cache:
        own_server.stop()
        results: list[int] = []

        async def one() -> None:
            results.append(await cache.get_or_compute("k", compute, ttl=5))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert results == [3] * 20
        assert calls == 1
        assert cache.statistics().backend_errors >= 1


async def test_redis_down_raises_backend_error_when_not_fail_open(
    own_server: RedisServer,
) -> None:
    """fail_open=False turns a Redis failure into BackendError for every caller."""

    async def compute() -> int:
        return 3

    async with Stampede.from_url(own_server.url, socket_timeout=0.5, fail_open=False) as cache:
        own_server.stop()
        with pytest.raises(BackendError):
            await cache.get_or_compute("k", compute, ttl=5)
        with pytest.raises(BackendError):
            await cache.invalidate("k")


async def test_start_with_redis_unreachable_does_not_block(own_server: RedisServer) -> None:
    """Entering while Redis is down returns at once; calls fail open."""
    url = own_server.url
    own_server.stop()

    async def compute() -> str:
        return "v"

    with anyio.fail_after(10):
        async with Stampede.from_url(url, socket_timeout=0.5) as cache:
            assert await cache.get_or_compute("k", compute, ttl=5) == "v"


async def test_slow_redis_fails_open_within_socket_timeout(own_server: RedisServer) -> None:
    """A paused server makes commands time out; the caller still gets a value."""

    async def compute() -> str:
        return "v"

    async with Stampede.from_url(own_server.url, socket_timeout=0.3) as cache:
        own_server.command("CLIENT", "PAUSE", "3000", "ALL")
        with anyio.fail_after(2.9):
            assert await cache.get_or_compute("k", compute, ttl=5) == "v"
        assert cache.statistics().backend_errors >= 1


async def _waiter_gets_the_value(
    leader: Stampede,
    waiter: Stampede,
    disrupt: Callable[[], Awaitable[None]],
    *,
    within: float,
) -> None:
    """*leader* computes "k"; once *waiter* watches its lock, *disrupt*, then commit.

    The waiter must get the leader's value within *within* seconds, without
    computing it itself.
    """
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "value"

    async def never() -> str:
        raise AssertionError("the waiter must not compute")

    got: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(leader.get_or_compute, "k", slow, 30)
        await started.wait()

        async def wait() -> None:
            got.append(await waiter.get_or_compute("k", never, ttl=30))

        tg.start_soon(wait)
        await until(lambda: waiter.statistics().waiting == 1)  # it watches the lock
        await disrupt()
        release.set()
        await until(lambda: got, within=within)
    assert got == ["value"]
    assert waiter.statistics().computes == 0


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# The connections an instance keeps open once it has served a call: the lock
# watcher's two (invalidations and tracking) and its request connection
# (the pool's are made only when one of those is down).
CONNECTIONS = 3


async def test_waiters_recheck_after_the_invalidation_reader_reconnects(
    redis_url: str, namespace: str
) -> None:
    """A change missed while the invalidation reader was down: the reconnect re-check finds it."""
    admin = redis.asyncio.Redis.from_url(redis_url)

    async def kill_readers() -> None:  # the invalidation readers are the pub/sub clients
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]

    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=60) as leader,
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=60, wait_timeout=60) as waiter,
    ):
        # The commit lands while they are down; far below lock_ttl and wait_timeout.
        await _waiter_gets_the_value(leader, waiter, kill_readers, within=10)
        await until(lambda: waiter.statistics().reconnects >= 1)  # and the watch is back
    await admin.aclose()


async def test_waiters_recheck_after_the_tracking_connection_drops(
    redis_url: str, namespace: str
) -> None:
    """Redis forgets what a closed connection tracked: the reconnect makes waiters look again."""
    admin = redis.asyncio.Redis.from_url(redis_url)

    async def kill_trackers() -> None:
        clients = await admin.client_list()
        tracking = [c["id"] for c in clients if "t" in c["flags"]]
        assert tracking, clients
        for client_id in tracking:
            await admin.client_kill_filter(_id=client_id)
        # No pause here: the commit that follows lands before the waiter has
        # even noticed (let alone replaced) the lost connection.

    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=60) as leader,
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=60, wait_timeout=60) as waiter,
    ):
        await _waiter_gets_the_value(leader, waiter, kill_trackers, within=10)
        await until(lambda: waiter.statistics().reconnects >= 1)  # and the watch is back
    await admin.aclose()


# How soon a waiter notices FLUSHALL (the flush drops the holder's lock with
# everything else), by wake transport, for a lock_ttl of 3 s. Tracking is
# told at once (an invalidation of every key); nothing is published for a
# flush, so a channel waiter hears of it from the holder's next extension,
# which finds its lock gone (lock_ttl / 3), and a keyspace waiter looks when
# its timer, set to the lock's old expiry, fires.
_FLUSH_NOTICED_WITHIN = {"tracking": 0.0, "tracking-resp3": 0.0, "channel": 1.0, "keyspace": 3.0}


@pytest.mark.parametrize("wake", list(_FLUSH_NOTICED_WITHIN))
async def test_waiters_look_again_when_the_server_is_flushed(wake: Wake) -> None:
    """FLUSHALL drops the holder's lock with everything else: the waiter takes over."""
    started = anyio.Event()

    async def forever() -> str:
        started.set()
        await anyio.sleep(3600)
        return ""

    async def ok() -> str:
        return "mine"

    with RedisServer("--notify-keyspace-events", "K$gx") as server:
        async with (
            Stampede.from_url(server.url, lock_ttl=3, wake=wake) as leader,
            Stampede.from_url(server.url, lock_ttl=3, wait_timeout=60, wake=wake) as waiter,
        ):
            got: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(leader.get_or_compute, "k", forever, 30)
                await started.wait()

                async def wait() -> None:
                    got.append(await waiter.get_or_compute("k", ok, ttl=30))

                tg.start_soon(wait)
                await until(lambda: waiter.statistics().waiting == 1)  # it watches the lock
                server.command("FLUSHALL")
                flushed_at = anyio.current_time()
                await until(lambda: got, within=10)
                noticed = anyio.current_time() - flushed_at
                tg.cancel_scope.cancel()
            assert got == ["mine"]
            stats = waiter.statistics()
            assert (stats.wake, stats.computes, stats.polls) == (wake, 1, 0)
            assert noticed < _FLUSH_NOTICED_WITHIN[wake] + 1.0, noticed


async def test_a_dead_holder_is_taken_over_at_its_lock_expiry_on_the_channel_transport(
    redis_url: str, namespace: str
) -> None:
    """No CLIENT (auto picks channel): nobody publishes a dead holder's expiry; the timer does."""
    admin = redis.asyncio.Redis.from_url(redis_url)
    user = f"notrack-{namespace}"
    await admin.acl_setuser(
        user, enabled=True, nopass=True, keys=["*"], channels=["*"],
        commands=["+@all", "-client"],
    )  # fmt: skip
    url = redis_url.replace("redis://", f"redis://{user}@")

    async def ok() -> str:
        return "mine"

    try:
        async with Stampede.from_url(url, namespace=namespace) as waiter:
            # The lock of a holder that died: nobody extends it, nobody commits.
            await admin.set(make_names(namespace, "k").lock, b"dead", px=500)
            started = anyio.current_time()
            with anyio.fail_after(5):
                assert await waiter.get_or_compute("k", ok, ttl=30) == "mine"
            assert anyio.current_time() - started >= 0.4
            stats = waiter.statistics()
            assert stats.wake == "channel"
            assert (stats.remote_waits, stats.takeovers, stats.computes) == (1, 1, 1)
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


async def test_wait_timeout_raise_policy(redis_url: str, namespace: str) -> None:
    """on_wait_timeout='raise' raises WaitTimeoutError instead of computing."""
    started = anyio.Event()

    async def forever() -> str:
        started.set()
        await anyio.sleep(3600)
        return ""

    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30) as leader,
        Stampede.from_url(
            redis_url, namespace=namespace, wait_timeout=0.3, on_wait_timeout="raise"
        ) as waiter,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(leader.get_or_compute, "k", forever, 30)
        await started.wait()
        with pytest.raises(WaitTimeoutError):
            await waiter.get_or_compute("k", forever, ttl=30)
        tg.cancel_scope.cancel()


async def test_wait_timeout_compute_policy_never_overwrites(redis_url: str, namespace: str) -> None:
    """After wait_timeout a waiter computes itself; the holder's later commit still wins."""
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "holder"

    async def impatient() -> str:
        return "waiter"

    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30) as leader,
        Stampede.from_url(redis_url, namespace=namespace, wait_timeout=0.2) as waiter,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader.get_or_compute, "k", slow, 30)
            await started.wait()
            assert await waiter.get_or_compute("k", impatient, ttl=30) == "waiter"
            assert waiter.statistics().wait_timeouts == 1
            release.set()
        # The waiter wrote only because no value was there; the holder then
        # still owned the lock and committed its own value over it.
        assert await waiter.get_or_compute("k", impatient, ttl=30) == "holder"


async def test_burst_never_fails_on_a_small_plain_pool(redis_url: str, namespace: str) -> None:
    """3000 concurrent calls on distinct keys through a 20-connection raising pool."""
    pool = redis.asyncio.ConnectionPool.from_url(redis_url, max_connections=20)
    client = redis.asyncio.Redis.from_pool(pool)

    async def compute() -> int:
        await anyio.sleep(0.01)
        return 1

    errors: list[BaseException] = []
    # (A budget large enough for 3000 calls queued in one loop on a busy
    # machine: this is about the pool, not about a slow Redis.)
    async with Stampede(client, namespace=namespace, fail_open=False, redis_budget=60) as cache:

        async def one(i: int) -> None:
            try:
                await cache.get_or_compute(f"k{i}", compute, ttl=5)
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(3000):
                tg.start_soon(one, i)
        assert errors == []
        assert cache.statistics().computes == 3000
    await client.aclose()


async def test_leader_cancelled_during_first_read_hands_the_flight_over(
    own_server: RedisServer,
) -> None:
    """Cancelling the first caller mid-read neither fails the others nor strands a lock."""
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        return "v"

    async with Stampede.from_url(own_server.url, lock_ttl=30, wait_timeout=60) as cache:
        own_server.command("CLIENT", "PAUSE", "400", "ALL")  # the first read hangs
        got: list[str] = []
        scopes: list[anyio.CancelScope] = []

        async def first() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await cache.get_or_compute("k", compute, ttl=30)

        async def second() -> None:
            got.append(await cache.get_or_compute("k", compute, ttl=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await until(lambda: cache.statistics().in_flight == 1)  # its read hangs
            tg.start_soon(second)
            await until(lambda: cache.statistics().coalesced == 1)  # second joined it
            scopes[0].cancel()
            await until(lambda: got, within=10)  # far below lock_ttl: no stranded lock
        assert got == ["v"]
        assert calls == 1
        assert cache.statistics().coalesced == 1


async def test_hit_survives_connections_closed_by_the_server(
    redis_url: str, namespace: str
) -> None:
    """Pooled connections killed server-side are replaced; the hit is still a hit."""
    admin = redis.asyncio.Redis.from_url(redis_url)

    async def compute() -> str:
        return "v"

    async with Stampede.from_url(redis_url, namespace=namespace, fail_open=False) as cache:
        assert await cache.get_or_compute("k", compute, ttl=30) == "v"
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")  # type: ignore[no-untyped-call]
        assert await cache.get_or_compute("k", compute, ttl=30) == "v"
        stats = cache.statistics()
        assert (stats.hits, stats.computes, stats.backend_errors) == (1, 1, 0)
    await admin.aclose()


async def test_half_open_connections_are_given_up_and_nobody_hangs(
    redis_url: str, namespace: str
) -> None:
    """Every connection goes silent without closing: they are replaced within the socket timeout.

    (The call's budget is larger here, so the silent connection is given up
    before the call: the hit comes through a fresh one.)
    """
    async with BlackholeProxy(_port(redis_url)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with Stampede.from_url(
            url, namespace=namespace, socket_timeout=0.5, redis_budget=5
        ) as cache:

            async def value() -> str:
                return "v"

            assert await cache.get_or_compute("k", value, ttl=30) == "v"
            await until(lambda: proxy.answered >= CONNECTIONS)  # every connection is up
            proxy.blackhole()
            with anyio.fail_after(5):  # a hit: the silent connections are replaced
                assert await cache.get_or_compute("k", value, ttl=30) == "v"
            stats = cache.statistics()
            assert stats.computes == 1
            assert stats.backend_errors == 0


@pytest.mark.parametrize("wake", ["tracking", "tracking-resp3", "keyspace", "channel"])
async def test_a_waiter_behind_half_open_connections_still_gets_the_value(
    notifying_url: str, namespace: str, wake: Wake
) -> None:
    """The waiter's connections go silent mid-wait: no change report comes, its timer saves it."""
    async with BlackholeProxy(_port(notifying_url)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"

        async def silence() -> None:  # the commit that follows is never reported
            proxy.blackhole()

        async with (
            Stampede.from_url(notifying_url, namespace=namespace, lock_ttl=1) as leader,
            # (A budget above the socket timeout: the look after the timer
            # goes through a fresh connection, instead of failing open.)
            Stampede.from_url(
                url, namespace=namespace, socket_timeout=0.5, wake=wake, redis_budget=5
            ) as waiter,
        ):
            await until(lambda: waiter.statistics().wake == wake)
            await _waiter_gets_the_value(leader, waiter, silence, within=6)


async def test_an_outage_over_many_keys_logs_a_few_lines_not_one_per_key(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down, 300 distinct keys: every failure is counted, the log gets a handful of lines."""

    async def compute() -> int:
        return 1

    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with Stampede.from_url(own_server.url, socket_timeout=0.5) as cache:
            own_server.stop()
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(cache.get_or_compute, f"k{i}", compute, 5)
            assert cache.statistics().backend_errors >= 300
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) < 10, lines
    assert any(
        "looking up 'k" in line and "computing it without the cache" in line for line in lines
    )
    assert all("127.0.0.1:" in line for line in lines)


async def test_entering_does_not_hang_on_a_server_that_never_answers() -> None:
    """A port that accepts connections and never replies (a hung Redis): entering returns."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered, never closed

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def compute() -> str:
        return "v"

    try:
        with anyio.fail_after(10):  # socket_timeout 0.5 s: a hang would blow this bound
            async with Stampede.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5) as c:
                assert await c.get_or_compute("k", compute, ttl=5) == "v"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
