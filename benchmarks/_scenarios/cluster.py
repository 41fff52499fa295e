"""cluster: the herd on one Redis and on a Redis Cluster of 3 primaries, side by side."""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from typing import Any

from redis.crc import key_slot

from asyncstampede._keys import make_names

from .._base import Bar, Options, Row, failed, fresh_namespace, progress
from .._pool import Worker, ask_all, worker_pool
from .._server import (
    KEYSPACE_EVENTS,
    ClusterCommandCounter,
    CommandCounter,
    server_info,
    throwaway_cluster,
)
from .herd import Run, herd_row

PRIMARIES = 3
ONE_REDIS, CLUSTER = "asyncstampede", "asyncstampede-cluster"
# Seconds past the compute a herd may take before its side fails: longer than
# any wait asyncstampede allows by default (wait_timeout 30 s), so only a
# hung worker or server meets it.
PATIENCE = 60.0
# Commands a cluster's clients send on a clock rather than per request: each
# process re-reads the topology (CLUSTER SLOTS) every 10 s, the first time on
# a connection it opens for that (HELLO). A herd's count takes in whichever
# fall into it: none in most herds, up to 2 per process (its first read and
# that HELLO; processes started together read together at first). Rows give
# them as ``topology_per_herd``.
TOPOLOGY_COMMANDS = frozenset({"cluster|slots", "hello"})


def run(url: str, options: Options) -> list[Row]:
    """asyncstampede's herd on the server at *url* and on a throwaway cluster, herd by herd.

    The cluster has `PRIMARIES` primaries and no replicas, on free loopback
    ports, of the same server binary as the throwaway server and with the
    same arguments (keyspace notifications on); it is started for this
    scenario and stopped at its end. The herd is the ``herd`` scenario's
    (``--processes``, ``--concurrency``, ``--durations``, ``--repeat``):
    ``Stampede.from_url(url)`` on one Redis (strategy ``asyncstampede``),
    ``Stampede.from_url(url, cluster=True)`` on the cluster
    (``asyncstampede-cluster``), the two alternating herd by herd so that
    the machine's load drifts over both alike. See `compare`.
    """
    with throwaway_cluster(*KEYSPACE_EVENTS, primaries=PRIMARIES) as cluster_url:
        print(f"started a throwaway Redis Cluster at {cluster_url}", file=sys.stderr)
        return compare(url, cluster_url, options)


def compare(url: str, cluster_url: str, options: Options) -> list[Row]:
    """The herd rows of one Redis (*url*) and of a cluster (*cluster_url*), one pair per D and C.

    Every herd asks for a key of its own (random, so on the cluster it
    lands on a random primary). Server commands are counted as the ``herd``
    scenario counts them (``INFO commandstats`` around each herd), on the
    cluster on every primary and added up. Besides the herd's figures, a
    cluster row says how its herds spread over the primaries
    (``herds_on_primaries``, primaries ordered by their first hash slot) and
    keeps the commands run on the primaries that do not serve the herd's
    key (``commands_elsewhere_per_herd``). A cluster row fails, loudly, if a
    herd's value is not on the primary serving its key's slot afterwards.
    """
    sides: list[_Side] = [_Side(ONE_REDIS, url), _ClusterSide(CLUSTER, cluster_url)]
    plan = [(d, c) for d in options.durations for c in options.concurrency]
    bar = progress(len(sides) * (len(plan) * options.repeat + 1), "cluster")
    rows: list[Row] = []
    try:
        with ExitStack() as stack:
            for side in sides:
                side.start(stack, options, bar)
            for d, c in plan:
                for side in sides:
                    side.runs = []
                for _ in range(options.repeat):
                    for side in sides:
                        side.herd(d, c)
                        bar.update()
                for side in sides:
                    if side.error is None:
                        rows.append(side.row(d, c, options.processes))
    finally:
        for side in sides:
            side.close()
        bar.close()
    rows.extend(side.failed_row() for side in sides if side.error is not None)
    return rows


class _Side:
    """One server and its worker processes: herds, their counts, its rows."""

    server = "one Redis"

    def __init__(self, strategy: str, url: str) -> None:
        self.strategy = strategy
        self.url = url
        self.namespace = fresh_namespace()
        self.workers: list[Worker] = []
        self.runs: list[Run] = []
        self.error: Exception | None = None
        self.version = ""
        self._counter: CommandCounter | None = None

    def start(self, stack: ExitStack, options: Options, bar: Bar) -> None:
        """Start the workers and run the warm-up (not measured); a failure fails this side only."""
        try:
            self.version = str(server_info(self.url).get("redis_version", ""))
            self._open_counter()
            pool = worker_pool(self.strategy, self.url, self.namespace, options.processes)
            self.workers = stack.enter_context(pool)
            # Warm-up herds, not measured: every connection the strategy will
            # use is open before the first figure.
            for key in self._warmup_keys():
                self._ask(key, max(options.concurrency), 10)
        except Exception as exc:
            self.error = exc
        bar.update()

    def herd(self, d: int, c: int) -> None:
        """One herd of *c* callers per process on a new key, compute *d* ms; kept in `runs`."""
        if self.error is not None:
            return
        try:
            key = f"herd-{uuid.uuid4().hex[:8]}"
            self.runs.append(self._herd(key, d, c))
        except Exception as exc:
            self.error = exc

    def row(self, d: int, c: int, processes: int) -> Row:
        """The row of the herds in `runs`, at D = *d* ms and C = *c*."""
        row = herd_row(self.strategy, d, c, processes, self.runs)
        row["server"] = self.server
        row["server_version"] = self.version
        row["herds_on_primaries"] = str(len(self.runs))
        row["topology_per_herd"] = sum(
            n for name, n in row["commands_per_herd"].items() if name in TOPOLOGY_COMMANDS
        )
        return row

    def failed_row(self) -> Row:
        assert self.error is not None
        return {**failed(self.strategy, self.error), "server": self.server}

    def close(self) -> None:
        if self._counter is not None:
            self._counter.close()

    def _open_counter(self) -> None:
        self._counter = CommandCounter(self.url)

    def _ask(self, key: str, c: int, d: int) -> list[dict[str, Any]]:
        """One herd on *key* in every worker, starting together 0.3 s from now; their reports."""
        command = f"herd {time.time() + 0.3} {key} {c} {d}"
        return ask_all(self.workers, command, PATIENCE + d / 1000)

    def _warmup_keys(self) -> list[str]:
        return [f"warmup-{uuid.uuid4().hex[:8]}"]

    def _herd(self, key: str, d: int, c: int) -> Run:
        assert self._counter is not None
        before = self._counter.read()
        reports = self._ask(key, c, d)
        return reports, self._counter.since(before)


class _ClusterSide(_Side):
    """The cluster: commands counted on every primary, each herd's primary noted and checked."""

    server = f"cluster, {PRIMARIES} primaries"

    def __init__(self, strategy: str, url: str) -> None:
        super().__init__(strategy, url)
        self._cluster: ClusterCommandCounter | None = None
        self._owners: list[str] = []  # each herd's primary in `runs`
        self._elsewhere: Counter[str] = Counter()  # commands of `runs` on the other primaries

    def row(self, d: int, c: int, processes: int) -> Row:
        assert self._cluster is not None
        row = super().row(d, c, processes)
        on = Counter(self._owners)
        row["herds_on_primaries"] = "/".join(str(on[p.address]) for p in self._cluster.primaries)
        row["primaries"] = [p.address for p in self._cluster.primaries]
        row["commands_elsewhere_per_herd"] = {
            name: n / len(self.runs) for name, n in self._elsewhere.most_common()
        }
        self._owners, self._elsewhere = [], Counter()
        return row

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()

    def _open_counter(self) -> None:
        self._cluster = ClusterCommandCounter(self.url)
        if len(self._cluster.primaries) != PRIMARIES:
            raise RuntimeError(
                f"the cluster has {len(self._cluster.primaries)} primaries, not {PRIMARIES}"
            )

    def _owner(self, key: str) -> str:
        assert self._cluster is not None
        return self._cluster.owner(key_slot(self._value_name(key)))

    def _value_name(self, key: str) -> bytes:
        # asyncstampede's own key layout (value and lock share the key's hash
        # slot), so the harness knows which primary a herd's key lands on.
        return make_names(self.namespace, key).value

    def _warmup_keys(self) -> list[str]:
        # One warm-up herd per primary: each primary's connections and scripts
        # in use before the first figure.
        assert self._cluster is not None
        keys: dict[str, str] = {}
        while len(keys) < len(self._cluster.primaries):
            key = f"warmup-{uuid.uuid4().hex[:8]}"
            keys.setdefault(self._owner(key), key)
        return list(keys.values())

    def _herd(self, key: str, d: int, c: int) -> Run:
        assert self._cluster is not None
        owner = self._owner(key)
        before = self._cluster.read()
        reports = self._ask(key, c, d)
        by_primary = self._cluster.since(before)
        # Read after the count, so not counted: the value must be where its slot says.
        if not self._cluster.client(owner).exists(self._value_name(key)):
            where = [a for a in by_primary if self._cluster.client(a).exists(self._value_name(key))]
            raise RuntimeError(
                f"{self.strategy}: the value of herd key {key!r} is not on {owner}, the primary "
                f"serving its slot {key_slot(self._value_name(key))}, after the herd "
                f"(found on: {', '.join(where) or 'no primary'}; errors: "
                f"{sum(len(r['errors']) for r in reports)})"
            )
        self._owners.append(owner)
        for address, commands in by_primary.items():
            if address != owner:
                self._elsewhere.update(commands)
        total: Counter[str] = sum(by_primary.values(), Counter())
        return reports, total
