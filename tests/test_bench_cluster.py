"""The benchmark harness's cluster scenario: one Redis beside a Redis Cluster, on real servers."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from redis.crc import key_slot

from asyncstampede.testing import RedisClusterServers
from benchmarks.__main__ import parse
from benchmarks._base import Options
from benchmarks._scenarios import DEFAULT_SCENARIOS, SCENARIOS
from benchmarks._scenarios.cluster import compare
from benchmarks._server import ClusterCommandCounter
from benchmarks._strategies import STRATEGIES
from benchmarks._targets import targets


def test_the_cluster_scenario_is_opt_in() -> None:
    """Left out by default; --cluster adds it once, and naming it alone also runs it."""
    assert "cluster" in SCENARIOS
    assert "cluster" not in DEFAULT_SCENARIOS
    assert "cluster" not in parse([]).scenarios.split(",")
    assert not parse([]).cluster
    assert parse(["--cluster"]).scenarios.split(",") == [*DEFAULT_SCENARIOS, "cluster"]
    assert parse(["--scenarios", "herd", "--cluster"]).scenarios == "herd,cluster"
    assert parse(["--scenarios", "cluster", "--cluster"]).scenarios == "cluster"
    assert parse(["--scenarios", "cluster"]).cluster
    assert "asyncstampede-cluster" in STRATEGIES


def test_the_counter_counts_each_primary_and_knows_its_slots(
    cluster: RedisClusterServers,
) -> None:
    """A SET on each primary is counted there; each slot maps to the primary serving it."""
    counter = ClusterCommandCounter(cluster.url)
    try:
        addresses = [p.address for p in counter.primaries]
        assert addresses == [f"127.0.0.1:{port}" for port in cluster.primaries()]
        keys: dict[str, str] = {}
        n = 0
        while len(keys) < len(addresses):
            key, n = f"counted-{n}", n + 1
            keys.setdefault(counter.owner(key_slot(key.encode())), key)
        for address, key in keys.items():
            assert address == f"127.0.0.1:{cluster.port_of_slot(key_slot(key.encode()))}"
        for address in addresses:  # the fixture's own connections open (a HELLO each)
            cluster.command(int(address.rsplit(":", 1)[1]), "PING")
        before = counter.read()
        for address, key in keys.items():
            cluster.command(int(address.rsplit(":", 1)[1]), "SET", key, "1")
        assert counter.since(before) == {address: {"set": 1} for address in addresses}
    finally:
        counter.close()


@pytest.mark.timeout(120)
def test_a_short_run_gives_a_pair_of_rows(redis_url: str) -> None:
    """2 processes x 5 callers, 3 herds: one compute per herd on both, spread over 3 primaries."""
    options = Options(processes=2, concurrency=[5], durations=[10], repeat=3)
    one, many = SCENARIOS["cluster"](redis_url, options)
    assert (one["strategy"], one["server"]) == ("asyncstampede", "one Redis")
    assert (many["strategy"], many["server"]) == ("asyncstampede-cluster", "cluster, 3 primaries")
    for row in (one, many):
        assert "failed" not in row, row
        assert row["computes_per_herd"] == 1.0, row
        assert row["errors"] == 0, row
        assert row["polls_per_herd"] == 0, row
        assert row["server_per_request"] > 0, row
    assert many["wake"] == one["wake"]
    assert one["topology_per_herd"] == 0
    spread = [int(n) for n in many["herds_on_primaries"].split("/")]
    assert len(spread) == len(many["primaries"]) == 3
    assert sum(spread) == 3
    # The commit ran as a script on the cluster too (one a herd).
    assert many["commands_per_herd"]["evalsha"] == 1.0
    assert [row["target"] for row in targets({"cluster": [one, many]})] == [
        _TARGET,
    ]


@pytest.mark.timeout(60)
def test_a_server_that_is_no_cluster_fails_its_side_only(redis_url: str) -> None:
    """Given one Redis as the cluster, the cluster's row fails; one Redis's rows still come."""
    options = Options(processes=1, concurrency=[2], durations=[10], repeat=1)
    rows = compare(redis_url, redis_url, options)
    assert [(row["strategy"], "failed" in row) for row in rows] == [
        ("asyncstampede", False),
        ("asyncstampede-cluster", True),
    ]
    assert "is no node of a Redis Cluster" in rows[1]["failed"]


_TARGET = (
    "cluster: exactly 1.00 computes per herd; the herd's server commands at most "
    "1.15x one Redis's at every D and C (topology reads aside)"
)
# One herd of 4 processes on one Redis, by command.
_HERD = {"get": 8.0, "set": 6.0, "pttl": 3.0, "evalsha": 1.0}


def _pair(
    d: int, c: int, *, computes: float = 1.0, more: dict[str, float] | None = None
) -> list[Any]:
    """One Redis's row and the cluster's at D = *d*, C = *c*; the cluster's with *more* commands."""
    one = {**_HERD, "publish": 1.0}
    many = Counter({**_HERD, "spublish": 1.0})
    many.update(more or {})
    return [
        _row("asyncstampede", d, c, 1.0, one),
        _row("asyncstampede-cluster", d, c, computes, dict(many)),
    ]


def _row(strategy: str, d: int, c: int, computes: float, commands: dict[str, float]) -> Any:
    return {
        "strategy": strategy,
        "compute_ms": d,
        "concurrency": c,
        "processes": 4,
        "computes_per_herd": computes,
        "server_per_request": sum(commands.values()) / (4 * c),
        "commands_per_herd": commands,
    }


def test_the_cluster_target_met() -> None:
    """Topology reads, even 4 of them and their HELLOs in one herd, are set aside and shown."""
    topology = {"cluster|slots": 4.0, "hello": 4.0}
    rows = targets({"cluster": [*_pair(10, 50), *_pair(1000, 10, more=topology)]})
    assert rows == [
        {
            "target": _TARGET,
            "figure": "1.00 computes; 1.00x to 1.00x; topology reads 0.0 to 8.0 a herd "
            "(server commands per request 1.00x to 1.42x with them)",
            "met": "yes",
        }
    ]


@pytest.mark.parametrize(
    "pair",
    [
        _pair(10, 50, more={"pttl": 3.0}),  # one more per waiting process
        _pair(10, 50, computes=1.333),
    ],
)
def test_the_cluster_target_missed(pair: list[Any]) -> None:
    """A command more per waiting process, or a second compute, misses it."""
    assert targets({"cluster": [*_pair(100, 10), *pair]})[0]["met"] == "**no**"


def test_a_failed_side_is_not_judged() -> None:
    """No pair of rows that both ran: no verdict on the cluster."""
    one, _ = _pair(10, 50)
    assert targets({"cluster": [one, {"strategy": "asyncstampede-cluster", "failed": "x"}]}) == []
