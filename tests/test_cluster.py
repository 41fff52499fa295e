"""Redis Cluster: the same guarantees as on one Redis, with keys spread over every primary.

Every server is a real cluster on loopback started by the fixtures (3
primaries; with a replica each where a test fails one over). The
multi-process tests run ``_cluster_worker.py`` processes; commands are
counted with MONITOR on each primary (commands scripts run inside Redis are
not round trips, and are left out).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from _conditions import until
from _herd import CommandLog, Worker
from redis.crc import key_slot

from asyncstampede import BackendRefusedError, InvalidURLError, NodeStatistics, Stampede
from asyncstampede._keys import make_names
from asyncstampede._settings import Wake
from asyncstampede.testing import RedisClusterServers

CLUSTER_WORKER = str(Path(__file__).with_name("_cluster_worker.py"))


def _keys_on_every_primary(
    cluster: RedisClusterServers, namespace: str, per_primary: int
) -> list[str]:
    """Return keys of *namespace*, *per_primary* on each primary of *cluster*."""
    found: dict[int, list[str]] = {port: [] for port in cluster.primaries()}
    i = 0
    while any(len(keys) < per_primary for keys in found.values()):
        key = f"k{i}"
        port = cluster.port_of_slot(key_slot(make_names(namespace, key).value))
        if len(found[port]) < per_primary:
            found[port].append(key)
        i += 1
    return [key for keys in found.values() for key in keys]


def _herd(
    workers: list[Worker],
    cluster: RedisClusterServers,
    namespace: str,
    keys: list[str],
    *,
    processes: int,
    concurrency: int,
    compute_ms: int,
    wait_timeout: float = 10.0,
) -> list[Worker]:
    herd = [
        Worker(
            cluster.url,
            namespace,
            ",".join(keys),
            str(concurrency),
            str(compute_ms),
            str(wait_timeout),
            script=CLUSTER_WORKER,
        )
        for _ in range(processes)
    ]
    workers.extend(herd)
    for worker in herd:
        worker.expect("ready")
    return herd


def _report(worker: Worker) -> dict[str, Any]:
    """The worker's JSON report."""
    return dict(json.loads(worker.line("report", 60)))


def _check_answers(reports: list[dict[str, Any]], keys: list[str], each: int) -> None:
    """Every caller got its own key's value, nobody failed."""
    for report in reports:
        assert report["errors"] == [], report["errors"]
        assert report["wrong"] == 0
        assert report["answered"] == len(keys) * each


def _computes(reports: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for report in reports:
        total.update(report["computes"])
    return total


@pytest.mark.slow
def test_a_herd_of_four_processes_computes_each_key_once_on_every_primary(
    workers: list[Worker], cluster: RedisClusterServers, namespace: str
) -> None:
    """4 processes x 50 callers x 6 keys (2 per primary), 200 ms compute: one compute a key.

    Waiters are woken by their primary's wake transport (nobody polls), and
    the herd costs about as many commands per request as on one Redis.
    """
    keys = _keys_on_every_primary(cluster, namespace, 2)
    herd = _herd(workers, cluster, namespace, keys, processes=4, concurrency=50, compute_ms=200)
    logs = [CommandLog(f"redis://127.0.0.1:{port}/0") for port in cluster.primaries()]
    for log in logs:
        log.__enter__()
    try:
        for worker in herd:
            worker.send("go")
        reports = [_report(worker) for worker in herd]
    finally:
        for log in logs:
            log.__exit__(None, None, None)
    _check_answers(reports, keys, 50)
    assert _computes(reports) == Counter(dict.fromkeys(keys, 1))
    for report in reports:
        stats = report["stats"]
        assert stats["polls"] == 0
        assert {node["address"] for node in stats["nodes"]} == {
            f"127.0.0.1:{port}" for port in cluster.primaries()
        }
    assert sum(r["stats"]["wakeups"] for r in reports) >= 3 * len(keys) // 2
    # Each primary saw its own keys' herds, and nothing of the others'.
    requests = 4 * 50 * len(keys)
    commands = sum(len(log.commands) for log in logs)
    assert all(log.commands for log in logs)
    assert commands / requests <= 0.11, [Counter(log.commands) for log in logs]


@pytest.mark.anyio
async def test_statistics_check_batch_tags_and_writes_span_every_primary(
    cluster: RedisClusterServers, namespace: str
) -> None:
    """One instance over the cluster: every operation whose keys land on several primaries."""
    keys = _keys_on_every_primary(cluster, namespace, 3)
    computes = 0

    async def load(key: str) -> dict[str, str]:
        nonlocal computes
        computes += 1
        return {"key": key}

    async def load_many(wanted: list[str]) -> dict[str, dict[str, str]]:
        nonlocal computes
        computes += len(wanted)
        return {key: {"key": key} for key in wanted}

    async with Stampede.from_url(cluster.url, cluster=True, namespace=namespace) as cache:
        await cache.check()
        nodes = cache.statistics().nodes
        assert all(isinstance(node, NodeStatistics) for node in nodes)
        assert sorted(node.address for node in nodes) == sorted(
            f"127.0.0.1:{port}" for port in cluster.primaries()
        )
        assert sum(node.slots for node in nodes) == 16384
        assert all(node.breaker == "closed" for node in nodes)
        # A batch whose keys span every primary: one MGET per slot, one batch compute.
        got = await cache.get_many_or_compute(keys, load_many, 60)
        assert got == {key: {"key": key} for key in keys}
        assert computes == len(keys)
        assert [await cache.get_or_compute(key, load, 60, key) for key in keys] == [
            {"key": key} for key in keys
        ]
        assert computes == len(keys)  # all stored, on their primaries
        # Tags: the value and the tag's generation live on different slots.
        tagged = keys[0]
        await cache.get_or_compute("tagged", load, 60, tagged, tags=["team:1"])
        await cache.get_or_compute("tagged", load, 60, tagged, tags=["team:1"])
        assert computes == len(keys) + 1
        await cache.invalidate_tags(["team:1"])
        await cache.get_or_compute("tagged", load, 60, tagged, tags=["team:1"])
        assert computes == len(keys) + 2
        # Writes beside the call, on each key's own primary.
        for key in keys:
            await cache.set(key, {"key": key, "set": True}, 60)
        assert [await cache.get(key) for key in keys] == [{"key": key, "set": True} for key in keys]
        await cache.invalidate_many(keys)
        assert [await cache.get(key) for key in keys] == [None] * len(keys)
        stats = cache.statistics()
        assert stats.backend_errors == 0
        assert stats.wake == "tracking"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
@pytest.mark.parametrize("wake", ["tracking", "tracking-resp3", "channel"])
async def test_a_herd_in_one_process_computes_once_on_each_kind(
    cluster_of_each_kind: RedisClusterServers, namespace: str, wake: Wake
) -> None:
    """Redis 7, Valkey 9 and Redis 6.2 clusters, each wake transport: one compute per key.

    Two instances (each with its own connections, as two processes would
    have) x 10 callers of a key on each primary; the callers of the
    instance that did not compute are woken by the transport, not polling.
    (The channel transport SPUBLISHes from Redis 7.0 on, PUBLISHes on 6.2.
    On asyncio's loop only: the server kinds are what varies here; the
    other cluster tests run on uvloop too.)
    """
    cluster = cluster_of_each_kind
    keys = _keys_on_every_primary(cluster, namespace, 1)
    computes: Counter[str] = Counter()

    async def load(key: str) -> str:
        computes[key] += 1
        await anyio.sleep(0.1)
        return key

    a = Stampede.from_url(cluster.url, cluster=True, namespace=namespace, wake=wake)
    b = Stampede.from_url(cluster.url, cluster=True, namespace=namespace, wake=wake)
    got: list[str] = []

    async def one(cache: Stampede, key: str) -> None:
        got.append(await cache.get_or_compute(key, load, 60, key))

    async with a, b:
        async with anyio.create_task_group() as tg:
            for key in keys:
                for cache in (a, b) * 10:
                    tg.start_soon(one, cache, key)
        assert sorted(got) == sorted(key for key in keys for _ in range(20))
        assert computes == Counter(dict.fromkeys(keys, 1))
        assert a.statistics().wake == b.statistics().wake == wake
        assert a.statistics().polls + b.statistics().polls == 0
        assert a.statistics().wakeups + b.statistics().wakeups >= len(keys)


@pytest.mark.anyio
async def test_keyspace_notifications_wake_waiters_on_every_primary(namespace: str) -> None:
    """Keyspace events are node-local: each primary's listener subscribes on that primary.

    A cluster whose nodes send keyspace notifications (set at start-up, as
    an operator would; asyncstampede never sets them), ``wake="keyspace"``:
    one compute per key on every primary, the other instance woken.
    """
    with RedisClusterServers(3, 0, "--notify-keyspace-events", "K$gx") as cluster:
        keys = _keys_on_every_primary(cluster, namespace, 1)
        computes: Counter[str] = Counter()

        async def load(key: str) -> str:
            computes[key] += 1
            await anyio.sleep(0.1)
            return key

        a = Stampede.from_url(cluster.url, cluster=True, namespace=namespace, wake="keyspace")
        b = Stampede.from_url(cluster.url, cluster=True, namespace=namespace, wake="keyspace")
        async with a, b:
            async with anyio.create_task_group() as tg:
                for key in keys:
                    for cache in (a, b) * 5:
                        tg.start_soon(cache.get_or_compute, key, load, 60, key)
            assert computes == Counter(dict.fromkeys(keys, 1))
            assert {n.wake for n in a.statistics().nodes} == {"keyspace"}
            assert a.statistics().polls + b.statistics().polls == 0
            assert a.statistics().wakeups + b.statistics().wakeups >= len(keys)


@pytest.mark.anyio
async def test_a_cluster_url_without_cluster_true_or_a_plain_server_with_it_says_what_to_do(
    cluster: RedisClusterServers, redis_url: str, namespace: str
) -> None:
    """Each mix-up is refused with its fix, at check and on the request path.

    cluster=True on a plain server: check() refuses (at start, and after
    calls have failed open meanwhile). A cluster node given as one Redis:
    a key another primary serves is refused (BackendRefusedError, logged at
    ERROR) saying to pass cluster=True, not retried as an outage.
    """
    with pytest.raises(BackendRefusedError, match="not a Redis Cluster"):
        async with Stampede.from_url(redis_url, cluster=True, check=True):
            pass
    async with Stampede.from_url(redis_url, cluster=True, namespace=namespace) as cache:
        assert await cache.get_or_compute("k", _echo, 60, "k") == "k"  # failed open
        with pytest.raises(BackendRefusedError, match="not a Redis Cluster"):
            await cache.check()
        with pytest.raises(BackendRefusedError, match="not a Redis Cluster"):
            await cache.check()
    here = int(cluster.url.rsplit(":", 1)[1].split("/")[0])
    elsewhere = next(
        key
        for key in (f"k{i}" for i in range(1000))
        if cluster.port_of_slot(key_slot(make_names(namespace, key).value)) != here
    )
    async with Stampede.from_url(cluster.url, namespace=namespace) as cache:
        with pytest.raises(BackendRefusedError, match=r"pass cluster=True to Stampede\.from_url"):
            await cache.set(elsewhere, "v", 60)
        assert await cache.get_or_compute(elsewhere, _echo, 60, elsewhere) == elsewhere
        assert cache.statistics().refused >= 1
    with pytest.raises(TypeError, match="cluster must be True or False"):
        Stampede.from_url(cluster.url, cluster="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="for Sentinel, give the redis"):
        Stampede.from_url("redis+sentinel://127.0.0.1:26379/mymaster", cluster=True)
    for url in ("redis://127.0.0.1:7000/1", "unix:///tmp/redis.sock"):
        with pytest.raises(InvalidURLError, match="cluster=True takes the URL of a node"):
            Stampede.from_url(url, cluster=True)


async def _echo(key: str) -> str:
    return key


def _failover_during_a_herd(
    workers: list[Worker],
    cluster: RedisClusterServers,
    namespace: str,
    strike: str,
) -> tuple[list[dict[str, Any]], list[str], float]:
    keys = _keys_on_every_primary(cluster, namespace, 2)
    victim = cluster.port_of_slot(key_slot(make_names(namespace, keys[0]).value))
    wait_timeout = 10.0
    herd = _herd(
        workers,
        cluster,
        namespace,
        keys,
        processes=4,
        concurrency=20,
        compute_ms=1500,
        wait_timeout=wait_timeout,
    )
    for worker in herd:
        worker.send("go")
    # The herd is on once every key's lock is held (its compute runs 1.5 s;
    # the other processes' callers wait on it).
    locks = [make_names(namespace, key).lock for key in keys]
    deadline = time.monotonic() + 30
    while not all(
        cluster.command(cluster.port_of_slot(key_slot(lock)), "EXISTS", lock.decode())
        for lock in locks
    ):
        assert time.monotonic() < deadline, "the herd never took its locks"
        time.sleep(0.005)  # (a poll interval between looks, not a guess at a duration)
    if strike == "failover":
        cluster.failover(victim)
    else:
        cluster.kill(victim)
    reports = [_report(worker) for worker in herd]
    return reports, keys, wait_timeout


@pytest.mark.slow
def test_a_primary_failed_over_during_a_herd(
    workers: list[Worker], failover_cluster: RedisClusterServers, namespace: str
) -> None:
    """CLUSTER FAILOVER on a replica while 4 processes herd: every caller gets its value.

    The locks and values reach the replica before it takes over (a manual
    failover waits for that), so holders commit on the new primary (they
    follow its MOVED) and their waiters are woken there: no extra compute.
    """
    reports, keys, wait_timeout = _failover_during_a_herd(
        workers, failover_cluster, namespace, "failover"
    )
    _check_answers(reports, keys, 20)
    assert all(r["longest"] < wait_timeout for r in reports)
    assert _computes(reports) == Counter(dict.fromkeys(keys, 1))
    _cached_again(workers, failover_cluster, namespace)


@pytest.mark.slow
def test_a_primary_killed_during_a_herd(
    workers: list[Worker], failover_cluster: RedisClusterServers, namespace: str
) -> None:
    """A primary SIGKILLed while 4 processes herd: every caller gets its value, in time.

    Until its replica takes over (``cluster-node-timeout``, then an
    election), a cluster that requires full coverage (the default) answers
    CLUSTERDOWN on every primary: each process's breakers open and its
    callers fail open, computing each key at most once per process (single
    flight in the process). So a key is computed at most once per process
    more: 1 + 4 here. Afterwards values are cached and waiters woken again.
    """
    reports, keys, wait_timeout = _failover_during_a_herd(
        workers, failover_cluster, namespace, "kill"
    )
    _check_answers(reports, keys, 20)
    assert all(r["longest"] < wait_timeout for r in reports)
    computes = _computes(reports)
    assert set(computes) == set(keys)
    assert all(1 <= n <= 1 + 4 for n in computes.values()), computes
    _cached_again(workers, failover_cluster, namespace)


def _cached_again(workers: list[Worker], cluster: RedisClusterServers, namespace: str) -> None:
    """After the failover, a new herd computes each key once and is woken, not polling."""
    keys = _keys_on_every_primary(cluster, namespace + "-after", 1)
    herd = _herd(
        workers, cluster, namespace + "-after", keys, processes=3, concurrency=20, compute_ms=300
    )
    for worker in herd:
        worker.send("go")
    reports = [_report(worker) for worker in herd]
    _check_answers(reports, keys, 20)
    assert _computes(reports) == Counter(dict.fromkeys(keys, 1))
    assert sum(r["stats"]["polls"] for r in reports) == 0
    assert sum(r["stats"]["wakeups"] for r in reports) >= 1


@pytest.mark.anyio
async def test_a_burst_on_a_fresh_instance_never_fails_for_a_full_pool(
    cluster: RedisClusterServers, namespace: str
) -> None:
    """600 concurrent first calls on cold keys, 4 pooled connections per primary: all answered.

    redis-py's asyncio RedisCluster raises MaxConnectionsError when a node's
    pool is full, and a fresh one hit by a couple of hundred concurrent
    first commands failed a few with AttributeError (8.1.0). asyncstampede
    sends nothing through it: each primary has its own pipelined connection,
    and its pool is only the fallback, behind a gate that waits.
    """
    cache = Stampede.from_url(
        cluster.url, cluster=True, namespace=namespace, max_connections=4, redis_budget=30
    )
    got: list[int] = []

    async def value(i: int) -> int:
        return i

    async def one(i: int) -> None:
        got.append(await cache.get_or_compute(f"burst{i}", value, 60, i))

    async with cache:
        async with anyio.create_task_group() as tg:
            for i in range(600):
                tg.start_soon(one, i)
        stats = cache.statistics()
    assert sorted(got) == list(range(600))
    assert (stats.computes, stats.backend_errors, stats.lock_lost) == (600, 0, 0)


@pytest.mark.anyio
async def test_a_slot_moved_while_its_key_is_computed_is_followed(
    failover_cluster: RedisClusterServers, namespace: str
) -> None:
    """Resharding: the slot of a key being computed moves to another primary mid-compute.

    The lock leaves with the slot's keys (``MIGRATE``) while the slot is
    still migrating: the other instance's waiter, told its lock changed,
    looks again and meets ``ASK``, and waits for the move to end instead of
    failing open. Then the holder's commit meets ``MOVED`` and follows it,
    and the waiter, following it too, is woken on the new primary. One
    compute, both get it, nothing failed open.
    """
    cluster = failover_cluster
    key = "moving"
    names = make_names(namespace, key)
    slot = key_slot(names.value)
    source = cluster.port_of_slot(slot)
    target = next(port for port in cluster.primaries() if port != source)
    source_id = cluster.command(source, "CLUSTER", "MYID")
    target_id = cluster.command(target, "CLUSTER", "MYID")
    release = anyio.Event()
    computes = 0

    async def load() -> str:
        nonlocal computes
        computes += 1
        await release.wait()
        return "value"

    def asks() -> int:
        info = cluster.command(source, "INFO", "errorstats").decode()
        found = re.search(r"errorstat_ASK:count=(\d+)", info)
        return int(found.group(1)) if found else 0

    def migrate() -> None:
        # As redis-cli --cluster reshard does, the slot's keys (the lock) first.
        cluster.command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        cluster.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moving = cluster.command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100)
        assert names.lock in moving
        keys = [k.decode() for k in moving]
        cluster.command(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)

    def finish() -> None:
        for port in cluster.primaries():
            cluster.command(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    a = Stampede.from_url(cluster.url, cluster=True, namespace=namespace, wait_timeout=20)
    b = Stampede.from_url(cluster.url, cluster=True, namespace=namespace, wait_timeout=20)
    got: list[str] = []
    async with a, b, anyio.create_task_group() as tg:

        async def ask(cache: Stampede) -> None:
            got.append(await cache.get_or_compute(key, load, 60))

        tg.start_soon(ask, a)
        await until(lambda: a.statistics().computing == 1)
        tg.start_soon(ask, b)
        await until(lambda: b.statistics().waiting == 1)
        before = await anyio.to_thread.run_sync(asks)
        await anyio.to_thread.run_sync(migrate)
        # The waiter looked again and met ASK (the lock has left, the slot not yet).
        await until(lambda: anyio.to_thread.run_sync(lambda: asks() > before))
        await anyio.to_thread.run_sync(finish)
        assert cluster.port_of_slot(slot) == target
        release.set()
        await until(lambda: len(got) == 2)
        stats = [a.statistics(), b.statistics()]
    assert got == ["value", "value"]
    assert computes == 1
    assert [s.backend_errors for s in stats] == [0, 0]  # followed, not failed open
    assert stats[1].wakeups >= 1
    assert cluster.command(target, "EXISTS", names.value.decode()) == 1


@pytest.mark.anyio
async def test_a_batch_fails_only_the_keys_of_a_primary_that_fails(namespace: str) -> None:
    """A primary paused under a batch read: its keys fail open, the others are served cached.

    Each key fails as its own ``get_or_compute`` would: one primary's
    silence does not send the batch's every key to ``batch_fn``.
    """
    with RedisClusterServers(3, 0, node_timeout_ms=5000) as cluster:
        keys = _keys_on_every_primary(cluster, namespace, 4)
        paused = cluster.port_of_slot(key_slot(make_names(namespace, keys[0]).value))
        on_paused = {
            key
            for key in keys
            if cluster.port_of_slot(key_slot(make_names(namespace, key).value)) == paused
        }
        asked: list[list[str]] = []

        async def load_many(wanted: list[str]) -> dict[str, str]:
            asked.append(sorted(wanted))
            return {key: key for key in wanted}

        async with Stampede.from_url(cluster.url, cluster=True, namespace=namespace) as cache:
            assert await cache.get_many_or_compute(keys, load_many, 60) == {k: k for k in keys}
            pid = cluster.pids[paused]
            os.kill(pid, signal.SIGSTOP)
            try:
                got = await cache.get_many_or_compute(keys, load_many, 60)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert got == {k: k for k in keys}
            assert asked == [sorted(keys), sorted(on_paused)]
            assert cache.statistics().backend_errors >= 1
