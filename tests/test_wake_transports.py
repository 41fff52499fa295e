"""Wake transports on servers set up differently: which one ``auto`` picks, and that it wakes.

Each case is a real server and an ACL user chosen so that a different
transport wins. Keyspace notifications are set by the test's own server
start (``--notify-keyspace-events``), never by the library. A waiting
instance must get the value at the commit (the lock's TTL is 30 s, so a
missed wake-up would show as a 30 s wait), and what a wait costs the server
must not grow with the compute (200 ms against 2 s), except for ``poll``,
whose looks are stated.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
from _conditions import until

from asyncstampede import Stampede
from asyncstampede._backends.redis.errors import BASE_ACL, WAKE_ACL
from asyncstampede._keys import make_names
from asyncstampede._settings import Wake
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio

MakeUser = Callable[[str, str], Awaitable[str]]


@pytest.fixture
async def make_user(namespace: str) -> AsyncIterator[MakeUser]:
    """Make an ACL user with *rules* on the server at a URL; return the user's URL."""
    made: list[tuple[str, str]] = []

    async def make(url: str, rules: str) -> str:
        name = f"u{len(made)}-{namespace}"
        setuser = ("ACL", "SETUSER", name, "reset", "on", "nopass", *rules.split())
        async with redis.asyncio.Redis.from_url(url) as admin:
            await admin.execute_command(*setuser)  # type: ignore[no-untyped-call]
        made.append((url, name))
        return url.replace("redis://", f"redis://{name}@")

    yield make
    for url, name in made:
        async with redis.asyncio.Redis.from_url(url) as admin:
            await admin.acl_deluser(name)


@dataclass(frozen=True)
class Wait:
    """What one wait on another instance's compute looked like."""

    wake: str  # the waiter's statistics().wake
    after_commit: float  # seconds from the holder's compute returning to the waiter's value
    wakeups: int
    polls: int
    takeovers: int
    commands: Counter[str]  # what the server ran for the whole exchange (INFO commandstats)


async def _commandstats(admin: redis.asyncio.Redis) -> Counter[str]:
    stats = await admin.info("commandstats")
    return Counter(
        {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k != "cmdstat_info"}
    )


async def _wait_once(
    url: str, admin_url: str, namespace: str, wake: Wake, compute: float, key: str = "k"
) -> Wait:
    """One holder instance computes for *compute* s; another waits on it. Both as *url*'s user."""
    started = anyio.Event()
    done_at = 0.0

    async def slow() -> str:
        nonlocal done_at
        started.set()
        await anyio.sleep(compute)
        done_at = time.monotonic()
        return "v"

    async def other() -> str:
        return "the waiter computed"

    async with (
        redis.asyncio.Redis.from_url(admin_url) as admin,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30, wake=wake) as holder,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30, wake=wake) as waiter,
    ):
        await until(lambda: waiter.statistics().wake != "poll" or wake in ("auto", "poll"))
        before = await _commandstats(admin)
        got: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.get_or_compute, key, slow, 60)
            await started.wait()
            got.append(await waiter.get_or_compute(key, other, ttl=60))
            got_at = time.monotonic()
        await anyio.wait_all_tasks_blocked()  # what the wait set off (an UNSUBSCRIBE) is sent
        commands = await _commandstats(admin) - before
        stats = waiter.statistics()
    assert got == ["v"]
    return Wait(stats.wake, got_at - done_at, stats.wakeups, stats.polls, stats.takeovers, commands)


def _woken_at_the_commit(wait: Wait) -> None:
    assert (wait.wakeups, wait.polls, wait.takeovers) == (1, 0, 0), wait
    # Told at the commit: a missed wake-up would wait out the 30 s lock.
    assert wait.after_commit < 1.0, wait


@dataclass(frozen=True)
class Setup:
    """A server and an ACL user (None: the default user), and the transport auto must pick."""

    notifying: bool
    rules: str | None
    picks: str


SETUPS = {
    "default-user": Setup(notifying=False, rules=None, picks="tracking"),
    # Redis 7's default for new users: no channels. In-band tracking needs none.
    "no-channels": Setup(notifying=False, rules="+@all resetchannels ~*", picks="tracking-resp3"),
    "no-client-notifying": Setup(notifying=True, rules="+@all -client ~* &*", picks="keyspace"),
    "no-client": Setup(notifying=False, rules="+@all -client ~* &*", picks="channel"),
    "no-client-no-config": Setup(
        notifying=True, rules="+@all -client -config ~* &*", picks="channel"
    ),
    "no-client-no-channels": Setup(
        notifying=False, rules="+@all -client resetchannels ~*", picks="poll"
    ),
}


@pytest.mark.parametrize("setup", list(SETUPS.values()), ids=list(SETUPS))
async def test_auto_picks_the_first_transport_the_server_allows(
    setup: Setup,
    redis_url: str,
    notifying_url: str,
    make_user: MakeUser,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each setup: auto's pick, a wake-up at the commit, and the same cost for a 2 s compute."""
    server = notifying_url if setup.notifying else redis_url
    url = server if setup.rules is None else await make_user(server, setup.rules)
    with caplog.at_level(logging.INFO, logger="asyncstampede"):
        short = await _wait_once(url, server, namespace, "auto", 0.2, key="short")
        long = await _wait_once(url, server, namespace, "auto", 2.0, key="long")
    assert (short.wake, long.wake) == (setup.picks, setup.picks)
    if setup.picks == "poll":
        # Looks 10 ms apart, doubling, at most lock_ttl/4: about 5 for 200 ms
        # and 9 for 2 s, two commands each; and one WARNING saying what to allow.
        assert (short.wakeups, short.takeovers) == (0, 0)
        assert 2 <= short.polls <= 7, short
        assert short.polls < long.polls <= 11, long
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        polling = [r for r in warnings if "allows no way to wake waiters" in r.getMessage()]
        assert polling
        assert "NOPERM" in polling[0].getMessage()
        assert (polling[0].name, polling[0].__dict__["transport"]) == ("asyncstampede.wake", "poll")
        return
    _woken_at_the_commit(short)
    _woken_at_the_commit(long)
    # A waiter's connection that has told it nothing for 2 s is pinged (a
    # heartbeat that depends on wall time, not on the wake-up): at most one
    # in a 2 s wait. Everything else must match, command for command.
    pings = long.commands.pop("ping", 0)
    short.commands.pop("ping", 0)
    assert pings <= 1, long.commands
    assert long.commands == short.commands, (long.commands, short.commands)


@pytest.mark.parametrize("transport", list(WAKE_ACL))
async def test_the_documented_rules_of_each_transport_are_enough(
    transport: str, notifying_url: str, make_user: MakeUser, namespace: str
) -> None:
    """BASE_ACL plus WAKE_ACL[transport] (the operations page's rules): auto picks it."""
    rules = f"{BASE_ACL} {WAKE_ACL[transport]}".replace("<namespace>", namespace)
    url = await make_user(notifying_url, rules)
    async with Stampede.from_url(url, namespace=namespace, check=True) as cache:
        await until(lambda: cache.statistics().wake == transport)
    wait = await _wait_once(url, notifying_url, namespace, "auto", 0.2)
    assert wait.wake == transport
    _woken_at_the_commit(wait)


def test_the_operations_page_shows_the_rules_of_each_transport() -> None:
    """The per-transport ACL lines on the operations page are the tested ones."""
    lines = (Path(__file__).parent.parent / "docs" / "operations.md").read_text().splitlines()
    for transport, rules in WAKE_ACL.items():
        line = f"ACL SETUSER cache on >password {BASE_ACL} {rules}".replace("<namespace>", "app")
        assert lines[lines.index(line) - 1] == f"# {transport}", transport


@pytest.mark.parametrize("wake", ["auto", "tracking", "tracking-resp3", "keyspace", "channel"])
async def test_each_transport_wakes_waiters_on_each_kind_of_server(
    notifying_server_of_each_kind: RedisServer, namespace: str, wake: Wake
) -> None:
    """Redis 7, Valkey 9, Redis 6.2 (default user): each transport, forced, wakes at the commit."""
    url = notifying_server_of_each_kind.url
    wait = await _wait_once(url, url, namespace, wake, 0.2)
    assert wait.wake == ("tracking" if wake == "auto" else wake)
    _woken_at_the_commit(wait)


async def test_a_transport_refused_at_run_time_hands_over_to_the_next(
    redis_url: str, make_user: MakeUser, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Channels allowed for one key only: the next key's SUBSCRIBE is refused; waiters poll.

    The user has no CLIENT and the server sends no keyspace notifications,
    so auto picks channel (its probe channel is allowed). Waiting on another
    key is refused at run time (NOPERM): nothing is left, so waiters poll,
    and still get the value; the refusal is logged with the server's words.
    """
    allowed = [make_names(namespace, key).lock[:-1] + b"w0" for key in ("asyncstampede-probe", "a")]
    rules = "+@all -client resetchannels " + " ".join(f"&{c.decode()}" for c in allowed) + " ~*"
    url = await make_user(redis_url, rules)
    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        first = await _wait_once(url, redis_url, namespace, "auto", 0.2, key="a")
        second = await _wait_once(url, redis_url, namespace, "auto", 0.2, key="b")
    assert first.wake == "channel"
    _woken_at_the_commit(first)
    assert second.wake == "poll"
    assert second.polls >= 1
    assert second.takeovers == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("channel: " in w and "NOPERM" in w for w in warnings), warnings


async def test_a_reconnect_probes_again_from_the_first_transport(
    redis_url: str, make_user: MakeUser, namespace: str
) -> None:
    """Channels granted later: after the next reconnect, tracking is picked again (and back)."""
    url = await make_user(redis_url, "+@all resetchannels ~*")
    name = url.split("//", 1)[1].split("@", 1)[0]
    async with (
        redis.asyncio.Redis.from_url(redis_url) as admin,
        Stampede.from_url(url, namespace=namespace) as cache,
    ):
        await until(lambda: cache.statistics().wake == "tracking-resp3")
        await admin.execute_command("ACL", "SETUSER", name, "allchannels")  # type: ignore[no-untyped-call]
        await admin.execute_command("CLIENT", "KILL", "USER", name)  # type: ignore[no-untyped-call]
        await until(lambda: cache.statistics().wake == "tracking")
        # Taking the channel away again: Redis drops the subscribed reader,
        # and the reconnect finds tracking refused.
        await admin.execute_command("ACL", "SETUSER", name, "resetchannels")  # type: ignore[no-untyped-call]
        await admin.execute_command("CLIENT", "KILL", "USER", name)  # type: ignore[no-untyped-call]
        await until(lambda: cache.statistics().wake == "tracking-resp3")
        assert cache.statistics().reconnects >= 2


async def test_keyspace_waiters_see_a_value_written_by_another_program(
    notifying_url: str, namespace: str
) -> None:
    """A value written straight into Redis (not by a holder) wakes keyspace waiters at once."""
    started = anyio.Event()

    async def forever() -> str:
        started.set()
        await anyio.sleep(3600)
        return "never"

    async def other() -> str:
        return "the waiter computed"

    url = notifying_url
    async with (
        redis.asyncio.Redis.from_url(url) as writer,
        Stampede.from_url(url, namespace=namespace + "-src") as source,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30) as holder,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30, wake="keyspace") as waiter,
        anyio.create_task_group() as tg,
    ):
        # An envelope as any writer of the format would store it.
        await source.get_or_compute("k", lambda: _value("written elsewhere"), ttl=60)
        envelope = await writer.get(make_names(namespace + "-src", "k").value)
        assert envelope is not None
        tg.start_soon(holder.get_or_compute, "k", forever, 60)
        await started.wait()
        got: list[str] = []

        async def wait() -> None:
            got.append(await waiter.get_or_compute("k", other, ttl=60))

        tg.start_soon(wait)
        await until(lambda: waiter.statistics().waiting == 1)
        await writer.set(make_names(namespace, "k").value, envelope, px=60_000)
        with anyio.fail_after(5):  # the holder's lock would keep it waiting 30 s
            await until(lambda: got == ["written elsewhere"], within=5)
        tg.cancel_scope.cancel()
    assert waiter.statistics().wakeups == 1


async def _value(value: str) -> str:
    return value


async def test_a_server_without_client_and_config_gets_channel_or_trusted_keyspace(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """CLIENT and CONFIG renamed away (as a proxy or a managed service has them): unknown commands.

    Notifications are on, but cannot be read: auto picks channel; forcing
    keyspace trusts the user (the refused CONFIG GET is logged) and works.
    """
    hide = ("--rename-command", "CLIENT", "", "--rename-command", "CONFIG", "")
    with (
        RedisServer("--notify-keyspace-events", "K$gx", *hide) as server,
        caplog.at_level(logging.INFO, logger="asyncstampede"),
    ):
        picked = await _wait_once(server.url, server.url, namespace, "auto", 0.2, key="a")
        forced = await _wait_once(server.url, server.url, namespace, "keyspace", 0.2, key="b")
    assert (picked.wake, forced.wake) == ("channel", "keyspace")
    _woken_at_the_commit(picked)
    _woken_at_the_commit(forced)
    said = [r.getMessage() for r in caplog.records]
    assert any("by tracking is not possible" in s and "unknown command" in s for s in said), said
    assert any("notify-keyspace-events" in s and "trusts" in s for s in said), said


async def _gated(
    holder: Stampede, waiter: Stampede, key: str, value: object, act: Callable[[], Awaitable[None]]
) -> object:
    """The holder computes *value* until *act* (run once the waiter waits) returns; the waiter's."""
    started, release = anyio.Event(), anyio.Event()

    async def compute() -> Any:
        started.set()
        await release.wait()
        return value

    async def other() -> str:
        return "the waiter computed"

    got: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(holder.get_or_compute, key, compute, 60)
        await started.wait()

        async def wait() -> None:
            got.append(await waiter.get_or_compute(key, other, ttl=60))

        tg.start_soon(wait)
        await until(lambda: waiter.statistics().waiting == 1)
        await act()
        release.set()
        with anyio.fail_after(10):  # the lock's TTL is 30 s
            await until(lambda: bool(got), within=10)
    return got[0]


async def test_channel_waiters_never_take_another_databases_value(
    redis_url: str, namespace: str
) -> None:
    """Two apps, one namespace, databases 0 and 1: a commit in 0 never answers a waiter in 1."""
    db1 = redis_url.rsplit("/", 1)[0] + "/1"
    async with (
        Stampede.from_url(redis_url, namespace=namespace, wake="channel") as other_app,
        Stampede.from_url(db1, namespace=namespace, lock_ttl=30, wake="channel") as holder,
        Stampede.from_url(db1, namespace=namespace, lock_ttl=30, wake="channel") as waiter,
    ):

        async def commit_in_database_0() -> None:
            assert await other_app.get_or_compute("k", lambda: _value("db0"), ttl=60) == "db0"

        got = await _gated(holder, waiter, "k", "db1", commit_in_database_0)
    assert got == "db1"


async def test_waiters_poll_once_their_transport_is_gone(
    redis_url: str, make_user: MakeUser, namespace: str
) -> None:
    """Mid-wait, the ACL loses its channels: Redis drops the subscriber, the reconnect finds
    nothing allowed, and the waiter polls (it would otherwise sleep out its 30 s lock)."""
    url = await make_user(redis_url, "+@all -client &* ~*")
    name = url.split("//", 1)[1].split("@", 1)[0]
    async with (
        redis.asyncio.Redis.from_url(redis_url) as admin,
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30) as holder,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30) as waiter,
    ):
        await until(lambda: waiter.statistics().wake == "channel")

        async def take_the_channels_away() -> None:
            await admin.execute_command("ACL", "SETUSER", name, "resetchannels")  # type: ignore[no-untyped-call]
            await until(lambda: waiter.statistics().wake == "poll")
            await until(lambda: waiter.statistics().polls >= 2)  # looking by itself

        assert await _gated(holder, waiter, "k", "v", take_the_channels_away) == "v"
    assert waiter.statistics().takeovers == 0


async def test_a_user_who_may_not_unsubscribe_gets_polling_not_a_reconnect_loop(
    redis_url: str, make_user: MakeUser, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The channel probe's UNSUBSCRIBE is refused: a refusal of that transport, said once."""
    url = await make_user(redis_url, "+@all -client -unsubscribe &* ~*")
    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with Stampede.from_url(url, namespace=namespace) as cache:
            await until(lambda: any("allows no way" in r.getMessage() for r in caplog.records))
            stats = cache.statistics()
    assert stats.wake == "poll"
    assert stats.reconnects == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert "UNSUBSCRIBE" in said[0], said


async def test_a_value_too_big_to_publish_is_read_by_channel_waiters(
    redis_url: str, namespace: str
) -> None:
    """33 MB (past Redis's 32 MB pub/sub output limit): not published; the waiter reads it."""
    big = os.urandom(33 * 1024 * 1024)  # incompressible: stored as it is
    async with (
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30, wake="channel") as holder,
        Stampede.from_url(redis_url, namespace=namespace, lock_ttl=30, wake="channel") as waiter,
    ):

        async def nothing() -> None:
            pass

        assert await _gated(holder, waiter, "big", big, nothing) == big
        stats = waiter.statistics()
    assert (stats.wakeups, stats.reconnects, stats.polls) == (1, 0, 0)
