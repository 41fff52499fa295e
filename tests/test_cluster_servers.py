"""The Redis Cluster test fixture itself (`RedisClusterServers`), on real servers.

It forms on Redis 7, Valkey 9 and Redis 6.2; redis-py's cluster client reads
and writes on every primary; `failover` and `kill` hand the slots to the
former replica and a client goes on; `restart` brings a node back; `stop`,
and a start that fails halfway, leave no process behind.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio
from conftest import _binary_of
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from asyncstampede.testing import RedisClusterServers

pytestmark = pytest.mark.anyio
# The fixture is synchronous and what a client does on uvloop is the
# library's tests' business: the client checks here run on asyncio alone.
asyncio_only = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")]
)

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads processes from /proc"
)


def _keys_on_every_primary(cluster: RedisClusterServers) -> dict[int, str]:
    """Return one key per primary: its port -> a key in a slot it serves."""
    primaries = cluster.primaries()
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"key-{i}"
        found.setdefault(cluster.port_of_slot(key_slot(key.encode())), key)
        if len(found) == len(primaries):
            return found
    raise AssertionError(f"no key in 1000 lands on each of {primaries}: {found}")


@asynccontextmanager
async def _client(cluster: RedisClusterServers) -> AsyncIterator[redis.asyncio.RedisCluster]:
    """Yield redis-py's asyncio cluster client, started from every running node."""
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    client = redis.asyncio.RedisCluster(startup_nodes=nodes, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


def _children() -> set[int]:
    """Return the PIDs of this process's children (from /proc)."""
    mine = os.getpid()
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(text.rsplit(")", 1)[1].split()[1]) == mine:
            found.add(int(text.split(" ", 1)[0]))
    return found


def _ours_running(pid: int, port: int) -> bool:
    """Whether *pid* is a live process that runs a server on *port* (PIDs may be reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(port).encode() in cmdline.split(b"\0")


def _refused(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:*port*."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(params=["redis-7", "valkey-9", "redis-6.2"])
def replicated_cluster_of_each_kind(
    request: pytest.FixtureRequest,
) -> Iterator[RedisClusterServers]:
    """3 primaries with a replica each, of each kind in turn (500 ms node timeout)."""
    binary = _binary_of(request.param)
    with RedisClusterServers(3, 1, binary=binary, node_timeout_ms=500) as servers:
        yield servers


def test_forms_on_each_kind(cluster_of_each_kind: RedisClusterServers) -> None:
    """3 primaries share the 16384 slots evenly, in order, and every node says the cluster is ok."""
    cluster = cluster_of_each_kind
    ports = cluster.ports
    assert len(ports) == 3
    assert cluster.primaries() == ports
    assert cluster.replicas() == []
    assert cluster.url == f"redis://127.0.0.1:{ports[0]}/0"
    assert cluster.startup_nodes == [("127.0.0.1", port) for port in ports]
    edges = {0: 0, 5460: 0, 5461: 1, 10922: 1, 10923: 2, 16383: 2}
    assert {slot: ports.index(cluster.port_of_slot(slot)) for slot in edges} == edges
    for port in ports:
        info = cluster.command(port, "CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:3" in info


@asyncio_only
async def test_client_reads_and_writes_on_every_primary(
    cluster_of_each_kind: RedisClusterServers,
) -> None:
    """redis-py's asyncio RedisCluster sets and gets keys landing on each of the 3 primaries."""
    cluster = cluster_of_each_kind
    keys = _keys_on_every_primary(cluster)
    assert sorted(keys) == sorted(cluster.primaries())
    async with _client(cluster) as client:
        for port, key in keys.items():
            assert await client.set(key, f"on {port}")
            assert await client.get(key) == f"on {port}".encode()
            # and it is that primary that holds it
            assert cluster.command(port, "GET", key) == f"on {port}".encode()
        await client.delete(*keys.values())


def test_forms_with_replicas_fails_over_and_recovers_on_each_kind(
    replicated_cluster_of_each_kind: RedisClusterServers,
) -> None:
    """Each primary gets its replica; failover, kill and restart each leave the slots served."""
    cluster = replicated_cluster_of_each_kind
    ports = cluster.ports
    first, second = ports[0], ports[3]  # the first primary and its replica
    assert cluster.primaries() == ports[:3]
    assert cluster.replicas() == ports[3:]
    assert [cluster.replicas(of=port) for port in ports[:3]] == [[port] for port in ports[3:]]
    for port in ports[3:]:
        assert "master_link_status:up" in cluster.command(port, "INFO", "replication").decode()

    key = _keys_on_every_primary(cluster)[first]
    cluster.command(first, "SET", key, "before")
    assert cluster.command(first, "WAIT", 1, 5000) == 1  # the replica has it

    assert cluster.failover(first) == second
    assert cluster.port_of_slot(0) == second
    assert cluster.replicas(of=second) == [first]
    assert cluster.command(second, "GET", key) == b"before"

    assert cluster.kill(second) == first  # the former primary, now the replica, takes over
    assert cluster.port_of_slot(0) == first
    assert second not in cluster.primaries() + cluster.replicas()
    assert cluster.command(first, "GET", key) == b"before"

    cluster.restart(second)
    assert cluster.replicas(of=first) == [second]  # back, as the replica of its heir
    assert cluster.port_of_slot(0) == first


@asyncio_only
async def test_failover_moves_the_slots_and_a_client_follows(
    failover_cluster: RedisClusterServers,
) -> None:
    """CLUSTER FAILOVER: the replica serves the slots, with the data; a client reads and writes."""
    cluster = failover_cluster
    keys = _keys_on_every_primary(cluster)
    old = cluster.port_of_slot(key_slot(keys[cluster.ports[1]].encode()))
    (replica,) = cluster.replicas(of=old)
    async with _client(cluster) as client:
        for key in keys.values():
            assert await client.set(key, "before")

        new = await anyio.to_thread.run_sync(cluster.failover, old)

        assert new == replica
        assert old not in cluster.primaries()
        assert new in cluster.primaries()
        assert cluster.replicas(of=new) == [old]
        assert cluster.port_of_slot(key_slot(keys[old].encode())) == new
        for key in keys.values():  # the client learns of the move (MOVED) and goes on
            assert await client.get(key) == b"before"
            assert await client.set(key, "after")
            assert await client.get(key) == b"after"
        assert cluster.command(new, "GET", keys[old]) == b"after"


@asyncio_only
async def test_kill_promotes_the_replica_and_a_client_follows(
    failover_cluster: RedisClusterServers,
) -> None:
    """SIGKILL a primary: its replica takes over its slots; old and new clients read and write."""
    cluster = failover_cluster
    keys = _keys_on_every_primary(cluster)
    victim = cluster.ports[0]
    (replica,) = cluster.replicas(of=victim)
    key = keys[victim]
    cluster.command(victim, "SET", key, "before")
    assert cluster.command(victim, "WAIT", 1, 5000) == 1  # the replica has it

    async with _client(cluster) as client:
        assert await client.get(key) == b"before"
        pid = cluster.pids[victim]

        heir = await anyio.to_thread.run_sync(cluster.kill, victim)

        assert heir == replica
        assert cluster.url == f"redis://127.0.0.1:{cluster.ports[1]}/0"  # the next primary
        assert victim not in cluster.pids
        if sys.platform.startswith("linux"):
            assert not _ours_running(pid, victim)
        assert cluster.port_of_slot(key_slot(key.encode())) == heir
        assert sorted(cluster.primaries()) == sorted([*cluster.ports[1:3], heir])
        assert await client.get(key) == b"before"  # the client finds the new primary
        for other in keys.values():
            assert await client.set(other, "after")
            assert await client.get(other) == b"after"
    async with _client(cluster) as fresh:  # started from the running nodes only
        assert await fresh.get(key) == b"after"
    async with redis.asyncio.RedisCluster.from_url(cluster.url) as fresh:
        assert await fresh.get(key) == b"after"


@asyncio_only
async def test_restart_brings_a_killed_node_back(failover_cluster: RedisClusterServers) -> None:
    """A killed replica comes back on its port, rejoins from its config file and syncs again."""
    cluster = failover_cluster
    primary, replica = cluster.ports[2], cluster.ports[5]
    assert cluster.kill(replica) is None  # a replica: nothing moves
    assert cluster.replicas(of=primary) == []
    key = _keys_on_every_primary(cluster)[primary]
    cluster.command(primary, "SET", key, "while down")

    await anyio.to_thread.run_sync(cluster.restart, replica)

    assert cluster.replicas(of=primary) == [replica]
    assert cluster.command(primary, "WAIT", 1, 5000) == 1
    cluster.command(replica, "READONLY")
    assert cluster.command(replica, "GET", key) == b"while down"


def test_misuse_raises_clear_errors(cluster: RedisClusterServers) -> None:
    """Bad slots, unknown ports and a failover without a replica are refused, the cluster intact."""
    with pytest.raises(ValueError, match="hash slots"):
        cluster.port_of_slot(16384)
    with pytest.raises(ValueError, match="not the port of a node"):
        cluster.kill(1)
    with pytest.raises(RuntimeError, match="no replica"):
        cluster.failover(cluster.ports[0])
    with pytest.raises(RuntimeError, match="is running"):
        cluster.restart(cluster.ports[0])
    with pytest.raises(RuntimeError, match="already started"):
        cluster.start()
    cluster.wait_settled()
    assert cluster.primaries() == cluster.ports


@needs_proc
def test_stop_leaves_no_process_behind() -> None:
    """stop() ends every server it started (a killed one too), frees their ports and folder."""
    before = _children()
    cluster = RedisClusterServers(3, 1)
    cluster.start()
    pids = cluster.pids
    assert len(pids) == 6
    assert set(pids.values()) <= _children() - before
    # each server works in its node's folder (--dir), inside the cluster's own
    folder = Path(f"/proc/{pids[cluster.ports[0]]}/cwd").resolve().parent
    assert folder.name.startswith("asyncstampede-cluster-")
    cluster.kill(cluster.ports[5])  # a replica

    cluster.stop()

    assert not any(_ours_running(pid, port) for port, pid in pids.items())
    assert not folder.exists()
    assert _children() == before
    assert all(_refused(port) for port in pids)
    assert cluster.pids == {}


@needs_proc
def test_a_start_failing_halfway_leaves_no_process_behind() -> None:
    """Servers up but formation refused (cluster mode off): RuntimeError, every server gone."""
    before = _children()
    # later arguments win: the servers start, then refuse every CLUSTER command
    cluster = RedisClusterServers(3, 0, "--cluster-enabled", "no")
    with pytest.raises(RuntimeError, match=r"CLUSTER MYID on 127\.0\.0\.1:[0-9]+ was refused"):
        cluster.start()
    assert _children() == before
    assert cluster.pids == {}


@needs_proc
def test_a_start_out_of_time_names_what_never_happened() -> None:
    """A start given too little time says what it waited for, and leaves no process behind."""
    before = _children()
    cluster = RedisClusterServers(3, 0)
    # A primary reports cluster_state:ok no sooner than 2 s after it starts
    # (Redis's rejoin delay): 1 s cannot be enough.
    with pytest.raises(RuntimeError, match=r"for the cluster to form, in vain: .*cluster_state"):
        cluster.start(timeout=1.0)
    assert _children() == before
