"""``asyncstampede doctor`` on a Redis Cluster: every primary judged, then the cluster as a whole.

Every cluster is real, on loopback, started here or by the fixtures (3
primaries; with a replica each where one is killed).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import pytest
import redis
from redis.crc import key_slot

from asyncstampede import Stampede
from asyncstampede.__main__ import _cluster_table, main
from asyncstampede._keys import make_names
from asyncstampede.doctor import ClusterDiagnosis
from asyncstampede.testing import RedisClusterServers, RedisServer

SLOTS = 16384


def _doctor(url: str, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status = main(["doctor", url, "--json", *more])
    return status, json.loads(capsys.readouterr().out)


def _codes(verdicts: list[dict[str, Any]]) -> dict[str, str]:
    return {v["code"]: v["severity"] for v in verdicts}


def _node(report: dict[str, Any], port: int) -> dict[str, Any]:
    return next(n for n in report["nodes"] if n["address"] == f"127.0.0.1:{port}")


def _fill(port: int, tag: str, count: int, size: int, **options: Any) -> int:
    """Write up to *count* keys of *size* bytes into hash tag *tag*'s slot; return how many went in.

    Stops at the first OOM refusal (a full noeviction primary).
    """
    client = redis.Redis(port=port)
    written = 0
    try:
        for start in range(0, count, 500):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 500, count)):
                pipe.set(f"{{{tag}}}:{i}", b"x" * size, **options)
            replies = pipe.execute(raise_on_error=False)
            refused = [r for r in replies if isinstance(r, redis.exceptions.ResponseError)]
            written += len(replies) - len(refused)
            if refused:
                assert "maxmemory" in str(refused[0])
                break
    finally:
        client.close()
    return written


def _cluster_state(cluster: RedisClusterServers, port: int) -> str:
    info = cluster.command(port, "CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if "state" in line)


def _until(condition: Any, within: float = 20.0) -> None:
    """Wait for *condition* (a bound against hangs, not a measurement)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


@pytest.mark.parametrize("cluster", ["redis-7", "valkey-9", "redis-6.2"], indirect=True)
def test_a_healthy_cluster_lists_every_primary_with_its_slots(
    cluster: RedisClusterServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by cluster_enabled:1 unasked; each primary with its slots, figures, sample and wake."""
    client = redis.RedisCluster.from_url(cluster.url)
    for i in range(300):
        client.set(f"healthy:{i}", b"v", ex=600 + i)  # spread over every slot range, TTLs jittered
    client.close()
    status, report = _doctor(cluster.url, capsys, "--interval", "0.2", "--namespace", "healthy")
    assert status == 1  # warnings only: no replica, maxmemory 0
    assert report["severity"] == "warning"
    assert report["topology"]["state"] == "ok"
    assert report["topology"]["slots_served"] == SLOTS
    # Redis 6.2 has no CLUSTER SHARDS.
    assert report["topology"]["source"] in ("CLUSTER SHARDS", "CLUSTER SLOTS")
    primaries = cluster.primaries()
    assert sorted(n["address"] for n in report["nodes"]) == sorted(
        f"127.0.0.1:{p}" for p in primaries
    )
    assert sum(n["slot_count"] for n in report["nodes"]) == SLOTS
    for node in report["nodes"]:
        port = int(node["address"].rpartition(":")[2])
        for first, last in node["slots"]:
            assert cluster.port_of_slot(first) == port
            assert cluster.port_of_slot(last) == port
        assert node["cluster_state"] == "ok"
        assert node["figures"]["sample"]["without_ttl"] == 0
        assert node["figures"]["wake"]["transport"] == "tracking"
        assert node["severity"] != "critical"
    # Each primary sampled its own keys: together, every key once.
    assert sum(n["figures"]["sample"]["sampled"] for n in report["nodes"]) == 300
    assert _codes(report["verdicts"])["no-replica"] == "warning"
    assert "critical" not in _codes(report["verdicts"]).values()

    assert main(["doctor", cluster.url, "--interval", "0", "--sample", "0"]) == 1
    table = capsys.readouterr().out
    assert "(found by its INFO: cluster_enabled:1)" in table
    for node in report["nodes"]:
        first, last = node["slots"][0]
        assert f"Primary {node['address']} (" in table
        assert f"slots {first}-{last} ({last - first + 1:,})\n  replicas none" in table
    assert "Every primary:" in table  # the wake verdict, said once
    assert "WARNING  no-replica:" in table


def test_a_primary_full_under_noeviction_is_critical_and_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """2 MB noeviction primaries; one slot's primary filled until it refuses writes: exit 2."""
    with RedisClusterServers(3, 0, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as c:
        full = c.port_of_slot(key_slot(b"full"))
        written = _fill(full, "full", 20_000, 1000)
        assert 0 < written < 20_000  # refused with OOM before the end
        status, report = _doctor(c.url, capsys, "--interval", "0.2", "--sample", "100")
        assert main(["doctor", c.url, "--interval", "0", "--sample", "0"]) == 2
        table = capsys.readouterr().out
    assert status == 2
    node = _node(report, full)
    assert _codes(node["verdicts"])["noeviction"] == "critical"
    assert node["figures"]["memory_share"] >= 0.98
    assert node["exit_status"] == 2
    assert node["figures"]["sample"]["sampled"] == min(written, 100)
    assert report["severity"] == "critical"
    # The full primary's section has the critical verdict under its heading.
    section = table.split(f"Primary 127.0.0.1:{full} ")[1].split("\nPrimary ")[0]
    assert "CRITICAL noeviction: maxmemory-policy is noeviction: the server is full" in section


def test_a_killed_primary_while_and_after_its_replica_takes_over(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A primary killed: critical while its slots have no primary; a warning once its replica
    serves them (it has none left); critical again, the cluster down, when that one dies too.
    """
    with RedisClusterServers(3, 1, node_timeout_ms=1000) as c:
        victim = c.primaries()[1]  # (not the first: the URL names that one)
        heirs = c.replicas(of=victim)
        killing = threading.Thread(target=c.kill, args=(victim,))
        killing.start()
        try:
            # Dead, and (for a node timeout at least) still the slots' primary.
            def dead() -> bool:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", victim), timeout=0.2),
                ):
                    return False
                return True

            _until(dead)
            during_status, during = _doctor(c.url, capsys, "--interval", "0")
        finally:
            killing.join()
        killed = _node(during, victim)
        heir = c.port_of_slot(killed["slots"][0][0])
        after_status, after = _doctor(c.url, capsys, "--interval", "0")
        # The heir has no replica: killed, nothing takes over, every node says fail.
        c.kill(heir)
        survivors = c.primaries()
        _until(lambda: all(_cluster_state(c, p) == "fail" for p in survivors))
        down_status, down = _doctor(c.url, capsys, "--interval", "0")

    assert during_status == 2
    assert "unavailable" in killed["error"]
    assert killed["figures"] is None
    assert _codes(killed["verdicts"]) == {"unreachable": "critical"}
    assert [r["address"] for r in killed["replicas"]] == [f"127.0.0.1:{p}" for p in heirs]
    assert killed["replicas"][0]["online"] is True  # it can take over, and the advice says so
    assert f"127.0.0.1:{heirs[0]}" in killed["verdicts"][0]["advice"]
    assert _codes(during["verdicts"])["slots-unserved"] == "critical"
    assert during["topology"]["slots_unreachable"] == killed["slot_count"]

    assert heir in heirs
    assert after_status == 1
    assert f"127.0.0.1:{victim}" not in {n["address"] for n in after["nodes"]}
    assert _node(after, heir)["slots"] == killed["slots"]
    codes = _codes(after["verdicts"])
    assert codes["no-replica"] == "warning"
    assert codes["failed-nodes"] == "info"
    assert "critical" not in codes.values()
    no_replica = next(v for v in after["verdicts"] if v["code"] == "no-replica")
    assert no_replica["figures"]["primaries"] == [f"127.0.0.1:{heir}"]
    assert "cluster-require-full-coverage" in no_replica["advice"]
    assert after["topology"]["failed_nodes"] == [f"127.0.0.1:{victim}"]

    assert down_status == 2
    codes = _codes(down["verdicts"])
    assert codes["cluster-down"] == "critical"
    assert codes["slots-unserved"] == "critical"
    assert down["topology"]["state"] == "fail"
    assert _codes(_node(down, heir)["verdicts"]) == {"unreachable": "critical"}
    for port in survivors:
        assert _node(down, port)["cluster_state"] == "fail"


def test_a_hot_slot_shows_as_uneven_memory_and_evictions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One slot's primary full and evicting while the others are empty; one policy set apart."""
    with RedisClusterServers(3, 0, "--maxmemory", "16mb", "--maxmemory-policy", "allkeys-lru") as c:
        hot = c.port_of_slot(key_slot(b"hot"))
        apart = next(p for p in c.primaries() if p != hot)
        c.command(apart, "CONFIG", "SET", "maxmemory-policy", "allkeys-lfu")  # (the test's own)
        _fill(hot, "hot", 16_000, 1000, ex=600)  # about 17 MB: evicting already
        stop = threading.Event()

        def write() -> None:  # a bounded loopback write load into the hot slot, while it reads
            client = redis.Redis(port=hot)
            for i in range(50_000):
                if stop.is_set():
                    break
                client.set(f"{{hot}}:w{i}", b"x" * 1000, ex=600)
            client.close()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            status, report = _doctor(c.url, capsys, "--interval", "0.5", "--sample", "100")
        finally:
            stop.set()
            writer.join()
    assert status == 1
    codes = _codes(report["verdicts"])
    assert codes["uneven-memory"] == "warning"
    assert codes["uneven-evictions"] == "warning"
    assert codes["settings-differ"] == "warning"
    verdicts = {v["code"]: v for v in report["verdicts"]}
    assert verdicts["uneven-memory"]["title"].startswith(f"127.0.0.1:{hot} uses")
    assert verdicts["uneven-evictions"]["title"].startswith(f"127.0.0.1:{hot} evicts")
    assert f"allkeys-lfu on 127.0.0.1:{apart}" in verdicts["settings-differ"]["title"]
    assert _codes(_node(report, hot)["verdicts"])["evictions"] == "warning"


def test_a_user_allowed_only_what_asyncstampede_needs_is_judged_from_cluster_slots(
    cluster: RedisClusterServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """CLUSTER SHARDS and CLUSTER INFO refused: the topology from SLOTS, no state, still judged."""
    for port in cluster.primaries():  # (ACLs are per node)
        cluster.command(
            port, "ACL", "SETUSER", "slotsonly", "on", ">pw", "+@all", "-cluster|shards",
            "-cluster|info", "~*", "&*",
        )  # fmt: skip
    url = cluster.url.replace("redis://", "redis://slotsonly:pw@")
    status, report = _doctor(url, capsys, "--interval", "0", "--sample", "0")
    assert status == 1  # (no replica, maxmemory 0): judged, not "cannot judge"
    assert report["topology"]["source"] == "CLUSTER SLOTS"
    assert report["topology"]["state"] is None
    assert report["topology"]["slots_served"] == SLOTS
    assert all(n["cluster_state"] is None and n["health"] is None for n in report["nodes"])
    assert "cluster-down" not in _codes(report["verdicts"])


def _errorstats(port: int) -> dict[str, str]:
    """A node's INFO errorstats, read on a bare socket (no client handshake of its own)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO errorstats\r\n")
        header, _, body = sock.recv(1 << 16).partition(b"\r\n")  # $<length>, the text
        while len(body) < int(header[1:]) + 2:
            body += sock.recv(1 << 16)
    return dict(
        line.strip().split(":", 1)
        for line in body.decode().splitlines()
        if line.startswith("errorstat_")
    )


@pytest.mark.parametrize("cluster", ["redis-7", "valkey-9", "redis-6.2"], indirect=True)
def test_neither_the_doctor_nor_a_session_adds_to_the_primaries_errors(
    cluster: RedisClusterServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing asyncstampede sends a cluster is refused: every primary's errorstats stay.

    (Its connections skip the handshake the older servers refuse; the
    doctor reads a 6.2 topology with CLUSTER SLOTS without trying SHARDS.)
    """

    async def session() -> None:
        async def compute() -> str:
            return "v"

        async with Stampede.from_url(cluster.url, namespace="quiet", cluster=True) as cache:
            await cache.check()
            for i in range(12):  # keys on every primary
                await cache.get_or_compute(f"k{i}", compute, ttl=60)
                await cache.get_or_compute(f"k{i}", compute, ttl=60)

    ports = cluster.ports
    before = {port: _errorstats(port) for port in ports}
    anyio.run(session)
    after_session = {port: _errorstats(port) for port in ports}
    main(["doctor", cluster.url, "--interval", "0.2", "--namespace", "quiet"])
    capsys.readouterr()
    assert (after_session, {port: _errorstats(port) for port in ports}) == (before, before)


# The --json shape the operations guide documents for a cluster.
DOCUMENTED_CLUSTER = {
    "address", "interval", "topology", "nodes", "verdicts", "severity", "exit_status",
}  # fmt: skip
DOCUMENTED_TOPOLOGY = {
    "source", "state", "slots_assigned", "slots_ok", "slots_pfail", "slots_fail",
    "known_nodes", "size", "slots_served", "slots_unassigned", "slots_failed",
    "slots_unreachable", "failed_nodes", "primaries_without_slots", "require_full_coverage",
    "node_timeout_ms", "allow_reads_when_down",
}  # fmt: skip
DOCUMENTED_NODE = {
    # a single server's document...
    "address", "version", "interval", "config", "config_refused", "figures", "verdicts",
    "severity", "exit_status",
    # ...and its place in the cluster
    "id", "slots", "slot_count", "replicas", "health", "cluster_state", "error",
}  # fmt: skip


def test_the_json_has_the_documented_shape(
    cluster: RedisClusterServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Top level, topology, each node (a single server's document plus its slots), verdicts."""
    status, report = _doctor(cluster.url, capsys, "--cluster", "--interval", "0")
    assert set(report) == DOCUMENTED_CLUSTER
    assert set(report["topology"]) == DOCUMENTED_TOPOLOGY
    assert report["exit_status"] == status
    assert len(report["nodes"]) == 3
    for node in report["nodes"]:
        assert set(node) == DOCUMENTED_NODE
        assert len(node["id"]) == 40
        assert node["exit_status"] <= status
        for replica in node["replicas"]:
            assert set(replica) == {"address", "id", "health", "link", "online"}
        for verdict in node["verdicts"]:
            assert set(verdict) == {"code", "severity", "title", "advice", "figures"}
    for verdict in report["verdicts"]:
        assert set(verdict) == {"code", "severity", "title", "advice", "figures"}
        assert verdict["severity"] in ("info", "warning", "critical")
    assert report["topology"]["require_full_coverage"] == "yes"
    assert report["topology"]["node_timeout_ms"] == 1000


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_an_application_over_a_cluster_gets_the_same_record(
    cluster: RedisClusterServers, namespace: str
) -> None:
    """await cache.diagnose() on a cluster instance: every primary, its namespace's keys."""
    keys = {}
    for i in range(30):
        keys[f"k{i}"] = cluster.port_of_slot(key_slot(make_names(namespace, f"k{i}").value))
    async with Stampede.from_url(cluster.url, cluster=True, namespace=namespace) as cache:

        async def value(key: str) -> str:
            return key

        for key in keys:
            await cache.get_or_compute(key, value, 60, key)
        found = await cache.diagnose(interval=0)
    assert isinstance(found, ClusterDiagnosis)
    assert found.exit_status == 1  # no replica, maxmemory 0
    assert sorted(n.address for n in found.nodes) == sorted(
        f"127.0.0.1:{p}" for p in cluster.primaries()
    )
    for node in found.nodes:
        assert node.diagnosis is not None
        sample = node.diagnosis.figures["sample"]
        port = int(node.address.rpartition(":")[2])
        # Its own keys' values (the commits' markers on their locks are left out).
        mine = sum(1 for p in keys.values() if p == port)
        assert sample["sampled"] == mine, (sample, mine)
        assert node.diagnosis.figures["wake"]["namespace"] == namespace
        assert node.diagnosis.figures["wake"]["transport"] == "tracking"
    # The same record the command line renders, at any width (40 columns at least).
    for width in range(20, 121, 10):
        table = _cluster_table(found, width=width)
        assert max(len(line) for line in table.splitlines()) <= max(width, 40)
        assert "cluster-require-" not in table.split()  # a setting cut at its hyphen


def test_watch_repeats_on_a_cluster_and_a_plain_server_is_no_cluster(
    cluster: RedisClusterServers, capsys: pytest.CaptureFixture[str]
) -> None:
    """--watch --json: a cluster document a line until Ctrl-C; --cluster on one server exits 3."""
    with subprocess.Popen(
        [sys.executable, "-m", "asyncstampede", "doctor", cluster.url, "--watch", "--json",
         "--interval", "0", "--sample", "0", "--no-wake"],
        stdout=subprocess.PIPE,
        text=True,
    ) as watching:  # fmt: skip
        assert watching.stdout is not None
        runs = [json.loads(watching.stdout.readline()) for _ in range(2)]
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=30) == 130
    for run in runs:
        assert len(run["nodes"]) == 3
        assert run["exit_status"] == 1
    # --no-cluster: this node only, as before clusters.
    status, one = _doctor(cluster.url, capsys, "--no-cluster", "--interval", "0", "--sample", "0")
    assert "nodes" not in one
    assert one["address"] == cluster.url.removeprefix("redis://")
    assert status == 1
    with RedisServer() as server:
        assert main(["doctor", server.url, "--cluster", "--interval", "0"]) == 3
    assert "leave out --cluster" in capsys.readouterr().err
