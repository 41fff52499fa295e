"""The doctor: why a Redis stampedes, from what it says about itself, and what to change.

It reads, never writes: ``INFO`` (server, memory, stats, keyspace, clients,
errorstats) three times over an interval (before its own key sample and
wake probe, so they are not in the rates), and ``CONFIG GET`` where the
server allows it (managed services and restricted ACL users refuse it:
that is said, and the rest is worked out from ``INFO``). It never runs
``CONFIG SET``: each verdict says what an operator could change, and why.

This module holds the reading (`diagnose`), the verdicts (`judge`, a pure
function of the readings and the configuration) and the record they make
(`Diagnosis`). The command line is ``asyncstampede doctor`` (``__main__``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, TypeAlias, final

import anyio
import lz4.block
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._backends.interest import Listener
from ._backends.redis.backend import ClusterNodeRole, RedisBackend
from ._backends.redis.cluster import SLOTS, _major, _probe_key, node_connection_kwargs
from ._backends.redis.errors import WAKE_ACL, address_of, map_error, server_text
from ._backends.redis.listener import RedisListener
from ._backends.redis.transports import AUTO_ORDER
from ._exceptions import BackendError, BackendRefusedError, BackendUnavailableError
from ._keys import validate_namespace

__all__ = [
    "SEVERITIES",
    "ClusterDiagnosis",
    "ClusterNode",
    "Diagnosis",
    "Severity",
    "Verdict",
    "check_interval",
    "diagnose",
    "diagnose_cluster",
    "is_cluster",
    "judge",
    "judge_cluster",
]

Severity: TypeAlias = Literal["ok", "info", "warning", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("ok", "info", "warning", "critical")
# The exit status of each severity (a health check's).
_STATUS: Final[dict[Severity, int]] = {"ok": 0, "info": 0, "warning": 1, "critical": 2}

# What is read with CONFIG GET, where allowed.
CONFIG_KEYS: Final = (
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "notify-keyspace-events",
    "tracking-table-max-keys",
    "lfu-log-factor",
    "lfu-decay-time",
    "maxclients",
)
_HEADROOM: Final = 0.9  # used memory past this share of maxmemory: little headroom
_BIG: Final = 1024 * 1024  # a value this big (bytes) eats the cache
_SCANS_MOST: Final = 200  # SCAN calls at most, however few keys match
_SCAN_COUNT: Final = 1000  # SCAN's COUNT hint
_LFU_INIT: Final = 5  # the LFU counter of a key never read (LFU_INIT_VAL)
_CLUSTER: Final = 0.2  # this share of the sampled TTLs ending in one second: no jitter
_CLUSTER_TTL_MS: Final = 10_000  # only TTLs this long are judged (short ones end together anyway)
_EMPTY_SAMPLE: Final[dict[str, Any]] = {
    "sampled": 0,
    "gone": 0,
    "without_ttl": 0,
    "with_ttl": 0,
    "ttl_busiest_second": 0,
    "size_p50": 0,
    "size_max": 0,
    "biggest": [],
    "lz4_ratio": None,
    "refused": None,
    "scanned": 0,
    "complete": True,
}
_FULL: Final = 0.98  # past this, a noeviction server refuses writes any moment
_READ_AT: Final = "_doctor_read_at"  # when a reading was taken (monotonic seconds)
_RECONNECTS: Final = 10  # tries of a later reading, 0.5 s apart (a restarting server)
_OWN_PER_READING: Final = 1  # commands of the doctor's own each reading adds (its INFO)
_STAMPEDE_MISSES: Final = 10.0  # misses/s, at least, for a stampede in progress
_STAMPEDE_OPS: Final = 100.0  # ops/s in the first half, at least, for one
_CROWDED: Final = 0.9  # connected clients past this share of maxclients: new ones may be refused
_SLOTS_NEEDED: Final = 3  # connections one more asyncstampede process opens, at least
_NAME_SHOWN: Final = 60  # characters of a key name shown in a verdict's title
# A Redis Cluster primary's settings that say how the cluster fails, read with the rest.
_CLUSTER_CONFIG: Final = (
    "cluster-require-full-coverage",
    "cluster-node-timeout",
    "cluster-allow-reads-when-down",
)
_CLUSTER_INFO: Final = "_doctor_cluster_info"  # a reading's CLUSTER INFO (a primary's)
_NODE_BOUND: Final = 30.0  # seconds past the interval one primary's reading may take
_UNEVEN_MEMORY: Final = 1.5  # a primary this many times the median's used memory...
_UNEVEN_MEMORY_SHARE: Final = 0.1  # ...and this much of its maxmemory above it...
_UNEVEN_MEMORY_BYTES: Final = 64 * 1024 * 1024  # ...or this much, without a maxmemory
_UNEVEN_OPS: Final = 3.0  # a primary this many times the median's ops/s...
_UNEVEN_OPS_LEAST: Final = 1000.0  # ...and at least this many: a hot slot's traffic


@final
@dataclass(frozen=True, slots=True)
class Verdict:
    """One finding: how bad, what it is, what to change.

    Attributes:
        code: A stable name (``noeviction``, ``evictions``...), for machines.
        severity: ``info``, ``warning`` or ``critical``.
        title: The finding, in a line.
        advice: What to change, and why (the commands an operator could run).
        figures: The numbers it rests on.

    """

    code: str
    severity: Severity
    title: str
    advice: str
    figures: dict[str, Any] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What the doctor read, and its verdicts.

    Attributes:
        address: The server (``host:port/db``).
        version: The server's version (``redis_version``), and its kind.
        interval: Seconds between the two readings.
        config: What ``CONFIG GET`` gave, or None where it was refused.
        config_refused: The server's words refusing ``CONFIG GET``, if it did.
        figures: Memory, keys and the rates over the interval.
        verdicts: Worst first.

    """

    address: str
    version: str
    interval: float
    config: dict[str, str] | None
    config_refused: str | None
    figures: dict[str, Any]
    verdicts: list[Verdict]

    @property
    def severity(self) -> Severity:
        """The worst verdict's severity (``ok`` when there is none)."""
        worst = max((SEVERITIES.index(v.severity) for v in self.verdicts), default=0)
        return SEVERITIES[worst]

    @property
    def exit_status(self) -> int:
        """0 healthy (or only information), 1 warnings, 2 critical: for a health check."""
        return _STATUS[self.severity]

    def as_dict(self) -> dict[str, Any]:
        """Every figure and verdict, for ``--json``."""
        record = asdict(self)
        record["severity"] = self.severity
        record["exit_status"] = self.exit_status
        return record


@final
@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One primary of a Redis Cluster, and what the doctor found on it.

    Attributes:
        address: The primary (``host:port``), as the cluster announces it.
        id: Its node ID (empty where the topology named none).
        slots: The hash slot ranges it serves, ``(first, last)`` inclusive.
        replicas: Its replicas, each a dict: ``address``, ``id``, ``health``
            (the cluster's word: ``online``, ``fail``, ``loading``; None where
            the topology came from ``CLUSTER SLOTS``), ``link`` (the primary's
            word for its replication link, ``online`` once it streams; None
            where the primary could not be read or did not list it) and
            ``online`` (it could take over: healthy, its link online).
        health: The cluster's word for the primary (None from ``CLUSTER SLOTS``).
        cluster_state: What the primary says of the cluster (``ok`` or
            ``fail``; None where it could not be read).
        diagnosis: What the doctor found on it, as on a single server; None
            where it could not be read.
        error: Why it could not be read, or None.
        refused: It answered, but refused what the doctor needs (``INFO``):
            it cannot be judged (exit 3), where a primary that does not
            answer is critical (exit 2).

    """

    address: str
    id: str
    slots: tuple[tuple[int, int], ...]
    replicas: tuple[dict[str, Any], ...]
    health: str | None
    cluster_state: str | None
    diagnosis: Diagnosis | None
    error: str | None = None
    refused: bool = False

    @property
    def slot_count(self) -> int:
        """How many hash slots it serves."""
        return sum(last - first + 1 for first, last in self.slots)

    @property
    def verdicts(self) -> list[Verdict]:
        """Its verdicts, worst first: the diagnosis's, or why it could not be read."""
        if self.diagnosis is not None:
            return self.diagnosis.verdicts
        if self.refused:
            return [
                Verdict(
                    "refused",
                    "critical",
                    "this primary refused the doctor: it cannot be judged",
                    f"The server said: {self.error}. Run the doctor as a user allowed +info "
                    "(and +config|get, +cluster|info) on every node of the cluster.",
                    {"error": self.error},
                )
            ]
        heirs = [r["address"] for r in self.replicas if r["online"]]
        takeover = (
            f"If it is down, its replica ({', '.join(heirs)}) takes over after "
            "cluster-node-timeout and about a second more"
            if heirs
            else "It has no working replica: if it is down, nothing takes over until it is back"
        )
        return [
            Verdict(
                "unreachable",
                "critical",
                "the doctor could not read this primary",
                f"{(self.error or '').rstrip('.')}. While it does not answer, the keys of its "
                f"{self.slot_count:,} slots can be neither read nor written: every asyncstampede "
                f"call on them fails open and computes. {takeover}; if it is up, check that the "
                "address the cluster announces for it (cluster-announce-ip) is reachable from "
                "here.",
                {"error": self.error, "slots": self.slot_count, "replicas": heirs},
            )
        ]

    @property
    def severity(self) -> Severity:
        """Its worst verdict's severity (``critical`` where it could not be read)."""
        worst = max((SEVERITIES.index(v.severity) for v in self.verdicts), default=0)
        return SEVERITIES[worst]

    @property
    def exit_status(self) -> int:
        """As `Diagnosis.exit_status`; 3 where it refused the doctor (it cannot be judged)."""
        return 3 if self.refused and self.diagnosis is None else _STATUS[self.severity]

    def as_dict(self) -> dict[str, Any]:
        """Its figures and verdicts, as a single server's document plus its place in the cluster."""
        record: dict[str, Any] = {
            "version": None,
            "interval": None,
            "config": None,
            "config_refused": None,
            "figures": None,
        }
        if self.diagnosis is not None:
            record = self.diagnosis.as_dict()
        record.update(
            {
                "address": self.address,
                "id": self.id,
                "slots": [[first, last] for first, last in self.slots],
                "slot_count": self.slot_count,
                "replicas": [dict(r) for r in self.replicas],
                "health": self.health,
                "cluster_state": self.cluster_state,
                "error": self.error,
                "verdicts": [asdict(v) for v in self.verdicts],
                "severity": self.severity,
                "exit_status": self.exit_status,
            }
        )
        return record


@final
@dataclass(frozen=True, slots=True)
class ClusterDiagnosis:
    """What the doctor read of a Redis Cluster: each primary's diagnosis, and the cluster's.

    Attributes:
        address: The node the topology was read from (``host:port``).
        interval: Seconds between the first and last readings of each primary.
        topology: Where the topology came from (``source``: ``CLUSTER
            SHARDS`` or ``CLUSTER SLOTS``), what that node's ``CLUSTER INFO``
            says (``state``, ``slots_assigned``, ``slots_ok``, ``slots_pfail``,
            ``slots_fail``, ``known_nodes``, ``size``), the slots served by a
            primary that is healthy and was read (``slots_served``), those
            that are not (``slots_unassigned``, ``slots_failed``,
            ``slots_unreachable``), ``failed_nodes`` (failed nodes serving no
            slot), ``primaries_without_slots`` and the primaries' settings of
            ``require_full_coverage``, ``node_timeout_ms`` and
            ``allow_reads_when_down`` (one value when they agree, else a dict
            by address; None where ``CONFIG GET`` was refused).
        nodes: Every primary serving slots, by address.
        verdicts: The cluster-wide verdicts, worst first (each primary's own
            are in `nodes`).

    """

    address: str
    interval: float
    topology: dict[str, Any]
    nodes: list[ClusterNode]
    verdicts: list[Verdict]

    @property
    def severity(self) -> Severity:
        """The worst severity of the cluster's verdicts and every primary's."""
        worst = max(
            [SEVERITIES.index(v.severity) for v in self.verdicts]
            + [SEVERITIES.index(n.severity) for n in self.nodes],
            default=0,
        )
        return SEVERITIES[worst]

    @property
    def exit_status(self) -> int:
        """The worst over the primaries and the cluster's verdicts: 0, 1, 2 (3: one refused)."""
        return max([_STATUS[self.severity]] + [n.exit_status for n in self.nodes])

    def as_dict(self) -> dict[str, Any]:
        """Every figure and verdict, for ``--json``."""
        return {
            "address": self.address,
            "interval": self.interval,
            "topology": self.topology,
            "nodes": [node.as_dict() for node in self.nodes],
            "verdicts": [asdict(v) for v in self.verdicts],
            "severity": self.severity,
            "exit_status": self.exit_status,
        }


async def diagnose(
    client: Redis,
    *,
    interval: float = 3.0,
    sample: int = 1000,
    namespace: str | None = None,
    wake: bool = True,
) -> Diagnosis:
    """Read *client*'s server over *interval* seconds, and judge it.

    Args:
        client: A ``redis.asyncio.Redis`` client.
        interval: Seconds over which ``INFO`` is read three times (rates
            are over it): 0 for no rates, else 0.1 to 3600.
        sample: Keys to look at (a bounded ``SCAN``, then ``PTTL`` and
            ``MEMORY USAGE`` of each, ``OBJECT FREQ`` under an LFU policy);
            0 looks at none.
        namespace: Look at this namespace's keys only (``<namespace>:*``).
        wake: Probe the wake transports the URL's user would get (False:
            no wake verdict, for a monitoring user that is not the app's).

    Raises:
        BackendError: Redis cannot be reached, or refuses ``INFO``.
        TypeError: *interval* is not a number.
        ValueError: *interval* is out of range, *sample* is negative, or
            *namespace* has a brace.

    """
    interval = _check(interval, sample, namespace)
    found, _ = await _read(client, interval, sample, namespace, wake)
    return found


def _check(interval: object, sample: object, namespace: str | None) -> float:
    """Return *interval* in seconds, once *interval*, *sample* and *namespace* pass their checks."""
    seconds = check_interval(interval)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise ValueError(f"sample must be a number of keys, at least 0, got {sample!r}")
    if namespace is not None:
        validate_namespace(namespace)
    return seconds


async def _read(
    client: Redis,
    interval: float,
    sample: int,
    namespace: str | None,
    wake: bool,
    *,
    slots: list[tuple[int, int]] | None = None,
) -> tuple[Diagnosis, dict[str, Any]]:
    """Read one server and judge it; return the diagnosis and the last ``INFO`` reading.

    *slots*: the server is a Redis Cluster primary serving these slot
    ranges: ``CONFIG GET`` reads the cluster's settings too, ``CLUSTER
    INFO`` is read after the readings (into the returned reading, under
    `_CLUSTER_INFO`), and the wake probe is the one its primary gets (a
    probe key of its own slots, ``SPUBLISH`` from 7.0).

    Raises:
        BackendError: as `diagnose`.

    """
    address = address_of(client.connection_pool.connection_kwargs)
    doing = "INFO"
    try:
        config, refused = await _config(client, CONFIG_KEYS + (_CLUSTER_CONFIG if slots else ()))
        before = await _reading(client, again=False)
        middle = None
        if interval > 0:
            # Three readings: the ops/s of each half come from Redis's exact
            # command count, not its moving average (which a burst before the
            # first reading, such as the previous run's key sample, still holds).
            await anyio.sleep(interval / 2)
            middle = await _reading(client, again=True)
            await anyio.sleep(interval / 2)
        after = await _reading(client, again=interval > 0)
        # The doctor's own reads come after the readings: not in the rates.
        if slots is not None:
            doing = "CLUSTER INFO"
            after[_CLUSTER_INFO] = await _cluster_info_of(client)
        policy = (config or {}).get("maxmemory-policy", str(after.get("maxmemory_policy", "")))
        doing = "the key sample (SCAN, PTTL, MEMORY USAGE)"
        keys = await _sample(client, sample, namespace, lfu="lfu" in policy)
        doing = "the wake probe"
        role = None
        if slots is not None:
            role = ClusterNodeRole(
                probe_key=_probe_key(namespace or "stampede", slots),
                publish="SPUBLISH" if _major(after) >= 7 else "PUBLISH",
                registry=Listener(),
                on_breaker_change=_nothing,
            )
        probed = await _wake(client, namespace, role) if wake else None
    except RedisError as exc:
        raise map_error(exc, address=address, command=doing) from exc
    found = judge(address, before, after, interval, config, refused, keys, probed, middle=middle)
    return found, after


def _nothing() -> None:
    """Do nothing: a probing backend's breaker never changes (it never runs)."""


async def _reading(client: Redis, *, again: bool) -> dict[str, Any]:
    """``INFO everything``, stamped with when it was read (``time.monotonic()``).

    *again*: a later reading, which waits up to about 5 s for a server that
    restarted since the first (the restart is then a verdict, not a failure).
    """
    for attempt in range(_RECONNECTS if again else 1):
        try:
            info: dict[str, Any] = await client.info("everything")
        except (RedisConnectionError, RedisTimeoutError):  # (LOADING is one too)
            if attempt + 1 >= (_RECONNECTS if again else 1):
                raise
            await anyio.sleep(0.5)
        else:
            info[_READ_AT] = time.monotonic()
            return info
    raise AssertionError("unreachable")  # pragma: no cover


def check_interval(interval: object) -> float:
    """Return *interval* (seconds) if it is 0 or from 0.1 to 3600.

    Raises:
        TypeError: it is not a number.
        ValueError: it is out of that range (or NaN).

    """
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"interval must be a number of seconds, not {type(interval).__name__}")
    if not (interval == 0 or 0.1 <= interval <= 3600):  # (NaN fails this too)
        raise ValueError(
            f"interval must be 0 (no rates) or from 0.1 to 3600 seconds, got {interval!r}"
        )
    return float(interval)


async def _wake(
    client: Redis, namespace: str | None, role: ClusterNodeRole | None = None
) -> dict[str, Any] | None:
    """Which wake transport asyncstampede would get here, and why not the better ones.

    *role*: the server is a Redis Cluster primary, probed as the cluster's
    backend probes it (its own slots' probe key, sharded channels from 7.0).
    """
    probed = namespace or "stampede"  # (Stampede's default namespace)
    backend = RedisBackend(client, owns_client=False, namespace=probed, node=role)
    listener = backend.listener
    if not isinstance(listener, RedisListener):
        return None  # this redis-py lacks what the transports need (logged on use)
    try:
        picked = await listener.pick()
    except BackendError as exc:
        return {
            "transport": None,
            "refused": {},
            "error": str(exc),
            "namespace": probed if namespace else None,
        }
    return {
        "transport": picked or "poll",
        "refused": {kind: str(exc) for kind, exc in listener.refusals.items()},
        "error": None,
        "namespace": probed if namespace else None,
    }


async def _sample(
    client: Redis, sample: int, namespace: str | None, *, lfu: bool
) -> dict[str, Any] | None:
    """Look at up to *sample* keys: TTLs, sizes, and (LFU) access frequencies."""
    if sample == 0:
        return None
    names: list[bytes] = []
    cursor = 0
    scans = 0
    match = f"{_glob_escaped(namespace)}:*" if namespace else None
    for scans in range(1, _SCANS_MOST + 1):  # noqa: B007 (scans: how far it went)
        try:
            cursor, batch = await client.scan(cursor, match=match, count=_SCAN_COUNT)
        except ResponseError as exc:  # SCAN refused (an ACL): no sample, the rest stands
            return {**_EMPTY_SAMPLE, "refused": server_text(exc)}
        found = (n if isinstance(n, bytes) else str(n).encode() for n in batch)
        # asyncstampede's own locks (and commit markers, 0.5 s) and tag
        # generations say nothing of the cache: they count for no key found.
        names.extend(n for n in found if not n.endswith((b"}:l", b"}:g")))
        if cursor == 0 or len(names) >= sample:
            break
    # (SCAN's COUNT is a hint: about this many keys were looked at.) Cut short:
    # it ran out of SCAN calls before the keyspace ended or it had enough.
    scanned = {"scanned": scans * _SCAN_COUNT, "complete": cursor == 0 or len(names) >= sample}
    names = names[:sample]
    if not names:
        return {**_EMPTY_SAMPLE, **scanned}
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.pttl(name)
            pipe.memory_usage(name)
            if lfu:
                pipe.object("FREQ", name)
        replies = await pipe.execute(raise_on_error=False)
    step = 3 if lfu else 2
    refusals = [r for r in replies if isinstance(r, Exception)]
    if refusals:  # PTTL, MEMORY or OBJECT refused (an ACL): figures it cannot stand behind
        return {**_EMPTY_SAMPLE, **scanned, "refused": server_text(refusals[0])}
    # A key gone since the SCAN (evicted, expired: PTTL -2) is not in the sample:
    # it is counted as gone (many, under heavy eviction), never replaced.
    ttls = [r for r in replies[0::step] if isinstance(r, int) and r != -2]
    sizes = sorted(
        ((int(r), n) for r, n in zip(replies[1::step], names, strict=True) if isinstance(r, int)),
        reverse=True,
    )
    with_ttl = [t for t in ttls if t >= 0]
    ending: dict[int, int] = {}
    for t in with_ttl:
        if t >= _CLUSTER_TTL_MS:  # short TTLs end close together anyway
            ending[t // 1000] = ending.get(t // 1000, 0) + 1
    busiest = max(ending.values(), default=0)
    record: dict[str, Any] = {
        **scanned,
        "sampled": len(ttls),
        "gone": len(names) - len(ttls),
        "without_ttl": sum(1 for t in ttls if t == -1),
        "ttl_busiest_second": busiest,
        "with_ttl": len(with_ttl),
        "refused": None,
        "size_p50": sizes[len(sizes) // 2][0] if sizes else 0,
        "size_max": sizes[0][0] if sizes else 0,
        "biggest": [{"key": _text(n), "bytes": b} for b, n in sizes[:5]],
    }
    # Only values big enough for a verdict are read (GETRANGE is an access:
    # under LRU or LFU it keeps them, and the doctor should not).
    big = [(entry, n) for entry, (b, n) in zip(record["biggest"][:3], sizes, strict=False)
           if b >= _BIG]  # fmt: skip
    await _compressible(client, [e for e, _ in big], [n for _, n in big])
    ratios = [b["lz4_ratio"] for b in record["biggest"] if b.get("lz4_ratio") is not None]
    record["lz4_ratio"] = min(ratios) if ratios else None
    if lfu:
        freqs = sorted(
            (
                (int(r), n)
                for r, n in zip(replies[2::step], names, strict=True)
                if isinstance(r, int)
            ),
            reverse=True,
        )
        # (LFU starts every key at 5: a key never read since it was written.)
        record["hottest"] = [{"key": _text(n), "freq": f} for f, n in freqs[:5] if f > _LFU_INIT]
    return record


async def _compressible(client: Redis, biggest: list[dict[str, Any]], names: list[bytes]) -> None:
    """Add each big value's type, and for strings how small lz4 makes its first 64 KiB."""
    for entry, name in zip(biggest, names, strict=False):
        try:
            kind = await client.type(name)  # (TYPE is no access for LRU or LFU)
            entry["type"] = kind.decode() if isinstance(kind, bytes) else str(kind)
            if entry["type"] != "string":
                continue
            data = await client.getrange(name, 0, 65535)
        except ResponseError:  # refused (an ACL)
            continue
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if raw:
            entry["lz4_ratio"] = len(lz4.block.compress(raw, store_size=False)) / len(raw)


def _glob_escaped(text: str) -> str:
    """*text* as a literal in a SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _text(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _shown(name: str) -> str:
    """*name* quoted for a title: its start, when it is long (the figures keep it whole)."""
    return repr(name if len(name) <= _NAME_SHOWN else f"{name[: _NAME_SHOWN - 1]}…")


def _share(ratio: float) -> str:
    return "under 1%" if ratio < 0.01 else f"{ratio:.0%}"


async def _config(
    client: Redis, keys: tuple[str, ...] = CONFIG_KEYS
) -> tuple[dict[str, str] | None, str | None]:
    try:
        config: dict[str, str] = {}
        for key in keys:
            config.update(_decoded(await client.config_get(key)))
    except ResponseError as exc:  # NOPERM, or renamed away (unknown command)
        return None, server_text(exc)
    return config, None


def _decoded(pairs: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in pairs.items()
    }


def judge(
    address: str,
    before: dict[str, Any],
    after: dict[str, Any],
    interval: float,
    config: dict[str, str] | None,
    config_refused: str | None,
    keys: dict[str, Any] | None = None,
    wake: dict[str, Any] | None = None,
    *,
    middle: dict[str, Any] | None = None,
) -> Diagnosis:
    """Return the verdicts on ``INFO`` readings *interval* s apart (a pure function).

    *middle* is the reading half-way (the ops/s of each half come from it);
    *keys* is what the key sample found (see `diagnose`), if one was taken.
    """
    verdicts: list[Verdict] = []
    figures = _figures(before, after, interval, config, middle)
    figures["sample"] = keys
    figures["wake"] = wake
    policy = figures["maxmemory_policy"]
    maxmemory = figures["maxmemory"]
    used = figures["used_memory"]
    valkey = "valkey_version" in after or after.get("server_name") == "valkey"
    kind = "valkey" if valkey else "redis"
    version = str(after.get("valkey_version" if valkey else "redis_version", "?"))
    if config_refused is not None:
        verdicts.append(
            Verdict(
                "config-refused",
                "info",
                "CONFIG GET is refused: maxmemory and the policy come from INFO",
                "asyncstampede needs CONFIG GET only to use keyspace notifications (the "
                "keyspace wake transport; see the wake verdict). For the settings INFO "
                "lacks, ask the provider or run as a user allowed +config|get. The server "
                f"said: {config_refused}",
            )
        )
    _version(verdicts, version, kind)
    _memory(verdicts, policy, maxmemory, used, figures)
    if figures["restarted"]:
        verdicts.append(
            Verdict(
                "restarted",
                "info",
                "the server restarted, or its statistics were reset, between the readings: "
                "no rates this time",
                "Rates need two readings of the same counters; run the doctor again.",
            )
        )
    elif figures["rates"]:
        _traffic(verdicts, figures, policy)
    _clients(verdicts, figures)
    if keys:
        _keys(verdicts, keys, evicting=(figures["evicted_keys_per_s"] or 0) > 0)
    if wake and wake.get("transport"):
        _wake_verdict(verdicts, wake)
    elif wake and wake.get("error"):
        verdicts.append(
            Verdict(
                "wake",
                "warning",
                "probing the wake transports failed: asyncstampede's waiters may poll here",
                f"A connection that watches locks could not be set up: "
                f"{wake['error'].rstrip('.')}. "
                "Each asyncstampede process opens a connection of its own to watch locks: "
                "check that the server answers and is not at maxclients (see the clients "
                "figures), and that it (or a proxy in front of it) allows pub/sub and "
                "CLIENT TRACKING.",
                wake,
            )
        )
    verdicts.sort(key=lambda v: -SEVERITIES.index(v.severity))
    return Diagnosis(
        address=address,
        version=f"{kind} {version}",
        interval=interval,
        config=config,
        config_refused=config_refused,
        figures=figures,
        verdicts=verdicts,
    )


def _figures(
    before: dict[str, Any],
    after: dict[str, Any],
    interval: float,
    config: dict[str, str] | None,
    middle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    readings = [r for r in (before, middle, after) if r is not None]
    counters = ("total_commands_processed", "keyspace_hits", "keyspace_misses",
                "evicted_keys", "expired_keys")  # fmt: skip
    # A restart or CONFIG RESETSTAT between the readings: counters went back.
    restarted = len({str(r.get("run_id", "")) for r in readings}) > 1 or any(
        int(later.get(name, 0)) < int(earlier.get(name, 0))
        for earlier, later in itertools.pairwise(readings)
        for name in counters
    )
    rates = interval > 0 and not restarted

    def span(start: dict[str, Any], end: dict[str, Any]) -> float:
        """Seconds between two readings: as measured, else as planned."""
        if _READ_AT in start and _READ_AT in end:
            return max(float(end[_READ_AT]) - float(start[_READ_AT]), 1e-3)
        return interval if start is before and end is after else interval / 2

    def rate(
        name: str, start: dict[str, Any] = before, end: dict[str, Any] = after
    ) -> float | None:
        if not rates:
            return None
        count = int(end.get(name, 0)) - int(start.get(name, 0))
        if name == "total_commands_processed":  # less the doctor's own INFO commands
            # (Each reading's INFO is counted once it has run: in the later ones.)
            own = (_index(readings, end) - _index(readings, start)) * _OWN_PER_READING
            count = max(0, count - own)
        return count / span(start, end)

    keys = expires = 0
    for name, value in after.items():
        if name.startswith("db") and isinstance(value, dict):
            keys += int(value.get("keys", 0))
            expires += int(value.get("expires", 0))
    maxmemory = int((config or {}).get("maxmemory", after.get("maxmemory", 0)) or 0)
    policy = str((config or {}).get("maxmemory-policy", after.get("maxmemory_policy", "?")))
    hits, misses = rate("keyspace_hits"), rate("keyspace_misses")
    halves = rates and middle is not None
    return {
        "used_memory": int(after.get("used_memory", 0)),
        "maxmemory": maxmemory,
        "maxmemory_policy": policy,
        "keys": keys,
        "keys_without_ttl": keys - expires,
        "rates": rates,
        "restarted": restarted,
        "evicted_keys_per_s": rate("evicted_keys"),
        "expired_keys_per_s": rate("expired_keys"),
        "hits_per_s": hits,
        "misses_per_s": misses,
        "hit_ratio": (
            hits / (hits + misses)
            if hits is not None and misses is not None and hits + misses
            else None
        ),
        # Commands the server ran per second (less the doctor's own): over
        # the interval, and each half.
        "ops_per_s": rate("total_commands_processed"),
        "ops_per_s_first_half": (
            rate("total_commands_processed", before, middle) if halves and middle else None
        ),
        "ops_per_s_second_half": (
            rate("total_commands_processed", middle, after) if halves and middle else None
        ),
        "connected_clients": int(after.get("connected_clients", 0)),
        # The fewest at any reading: a client that came and went is no stayer.
        "connected_clients_before": int(before.get("connected_clients", 0)),
        "connected_clients_least": min(int(r.get("connected_clients", 0)) for r in readings),
        "connected_clients_most": max(int(r.get("connected_clients", 0)) for r in readings),
        "maxclients": int((config or {}).get("maxclients", after.get("maxclients", 0)) or 0),
        "blocked_clients": int(after.get("blocked_clients", 0)),
        # Over the interval: the server's count is since it started (or CONFIG RESETSTAT).
        "oom_errors": 0 if restarted else max(0, _oom(after) - _oom(before)),
    }


def _index(readings: list[dict[str, Any]], reading: dict[str, Any]) -> int:
    return next(i for i, r in enumerate(readings) if r is reading)


def _oom(info: dict[str, Any]) -> int:
    stat = info.get("errorstat_OOM")
    return int(stat.get("count", 0)) if isinstance(stat, dict) else 0


def _version(verdicts: list[Verdict], version: str, kind: str) -> None:
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return
    if kind == "redis" and (major, minor) < (6, 2):
        verdicts.append(
            Verdict(
                "version",
                "critical",
                f"Redis {version} is older than asyncstampede supports (6.2)",
                "Upgrade to Redis 6.2 or later (7 recommended): asyncstampede's lock "
                "and its wake transports need commands older servers lack.",
                {"version": version},
            )
        )


def _memory(
    verdicts: list[Verdict], policy: str, maxmemory: int, used: int, figures: dict[str, Any]
) -> None:
    share = used / maxmemory if maxmemory else None
    figures["memory_share"] = share
    if maxmemory == 0:
        verdicts.append(
            Verdict(
                "maxmemory-unset",
                "warning",
                "maxmemory is 0: Redis grows until the host runs out of memory",
                "Give a cache a bound and let it evict: CONFIG SET maxmemory <bytes> (below "
                "the host's memory, leaving room for forks), with maxmemory-policy "
                # (Nothing is evicted without a bound: whatever the policy, setting one
                # starts evicting, so the keys without a TTL are exposed by the advice.)
                "allkeys-lru or allkeys-lfu." + _allkeys_caveat(figures),
                {"used_memory": used, "keys_without_ttl": figures["keys_without_ttl"]},
            )
        )
    if policy == "noeviction" and maxmemory:
        full = (share is not None and share >= _FULL) or figures["oom_errors"] > 0
        verdicts.append(
            Verdict(
                "noeviction",
                "critical" if full else "warning",
                "maxmemory-policy is noeviction"
                + (": the server is full and refuses writes (OOM)" if full else ""),
                "A full noeviction server refuses every write: no lock can be taken and "
                "no value stored, so every process computes every time. For a cache: "
                "CONFIG SET maxmemory-policy allkeys-lru (or allkeys-lfu for hot keys)."
                + _allkeys_caveat(figures),
                {
                    "memory_share": share,
                    "oom_errors": figures["oom_errors"],
                    "keys_without_ttl": figures["keys_without_ttl"],
                },
            )
        )
    elif figures["oom_errors"] > 0:
        verdicts.append(
            Verdict(
                "oom",
                "critical",
                f"{figures['oom_errors']:,} writes refused with OOM during the interval "
                f"(policy {policy}): nothing could be evicted to make room",
                "Every refused write is a value not stored and a lock not taken: every "
                "process computes every time. Raise maxmemory above what Redis needs for "
                "itself and the keys it may not evict"
                + (
                    " (under a volatile-* policy, keys without a TTL are never evicted)"
                    if policy.startswith("volatile-")
                    else ""
                )
                + ", or store less.",
                {"oom_errors": figures["oom_errors"], "memory_share": share},
            )
        )
    elif share is not None and share >= _HEADROOM:
        _headroom(verdicts, policy, share, figures)
    if policy.startswith("volatile-") and figures["keys_without_ttl"] > 0:
        # Without memory pressure nothing is evicted: worth knowing, not acting on.
        pressed = (share is not None and share >= _HEADROOM) or figures["oom_errors"] > 0
        verdicts.append(
            Verdict(
                "volatile-without-ttl",
                "warning" if pressed else "info",
                f"maxmemory-policy is {policy} and {figures['keys_without_ttl']:,} keys have "
                "no TTL: they are never evicted"
                + (", and memory is nearly full" if pressed else ""),
                "Under a volatile-* policy only keys with a TTL can be evicted: the cache's "
                "values (and asyncstampede's locks) share what the keys without a TTL leave, "
                "and once those fill the memory, writes fail with OOM. If they are data "
                "that must stay, keep the cache on a Redis of its own (maxmemory is per "
                "server, not per database); if every key here is cache, give each a TTL, "
                "or CONFIG SET maxmemory-policy allkeys-lru.",
                {"keys": figures["keys"], "keys_without_ttl": figures["keys_without_ttl"]},
            )
        )


def _headroom(verdicts: list[Verdict], policy: str, share: float, figures: dict[str, Any]) -> None:
    """Memory past 90% of maxmemory under an evicting policy: what evictions can take."""
    keys, spare = figures["keys"], figures["keys_without_ttl"]
    volatile = policy.startswith("volatile-")
    evictable = keys - spare if volatile else keys
    hint = "if hot keys get evicted (see evictions), raise maxmemory or store smaller values."
    if not evictable:
        # Nothing the policy may take: once full, writes fail as under noeviction.
        why = (
            f"no key has a TTL, and {policy} evicts only keys with one"
            if keys
            else "there is no key to evict (the memory is Redis's own: buffers, scripts)"
        )
        # Full, it refuses writes as a full noeviction server does: as critical.
        full = share >= _FULL
        verdicts.append(
            Verdict(
                "headroom",
                "critical" if full else "warning",
                f"memory is {share:.0%} of maxmemory and nothing can be evicted: {why}"
                + ("; the server is full and refuses writes (OOM)" if full else ""),
                "Once memory is full every write fails with OOM, as under a full "
                "noeviction server: no "
                "lock can be taken and no value stored, so every process computes every "
                "time. Raise maxmemory or store less"
                + (
                    "; give the cache's keys a TTL (asyncstampede's values have one), and see "
                    "volatile-without-ttl."
                    if keys
                    else "."
                ),
                {"memory_share": share, "keys": keys, "evictable": 0},
            )
        )
    elif volatile:
        verdicts.append(
            Verdict(
                "headroom",
                "info",
                f"memory is {share:.0%} of maxmemory: evictions decide which of the "
                f"{evictable:,} keys with a TTL stay",
                f"Expected for a cache under {policy}, which evicts only keys with a TTL"
                + (
                    f" (the {spare:,} without one stay whatever comes: see volatile-without-ttl)"
                    if spare
                    else ""
                )
                + f"; {hint}",
                {"memory_share": share, "keys": keys, "evictable": evictable},
            )
        )
    else:
        verdicts.append(
            Verdict(
                "headroom",
                "info",
                f"memory is {share:.0%} of maxmemory: evictions decide what stays",
                f"Expected for a cache under an evicting policy; {hint}",
                {"memory_share": share, "keys": keys, "evictable": evictable},
            )
        )


def _allkeys_caveat(figures: dict[str, Any]) -> str:
    """Return the caveat of advice that turns on an allkeys-* policy, where keys have no TTL.

    Keys without a TTL are often data that must stay (sessions, queues,
    settings), which noeviction and the volatile-* policies never evict and
    allkeys-* does. The count is ``INFO``'s, over every database (maxmemory
    is the server's); the key sample's, where one was taken, is added.
    """
    spare = figures["keys_without_ttl"]
    if not spare:
        return ""
    sample = figures.get("sample") or {}
    sampled = sample.get("sampled", 0) if not sample.get("refused") else 0
    seen = f" ({sample.get('without_ttl', 0):,} of the {sampled:,} sampled)" if sampled else ""
    one = spare == 1
    return (
        f" But {spare:,} key{'' if one else 's'} here ha{'s' if one else 've'} no TTL{seen}, "
        "which an allkeys-* policy evicts like any cached value: if "
        f"{'it is' if one else 'they are'} data that must stay, keep the cache on a Redis of "
        "its own (maxmemory is per server, not per database), or use volatile-lru, which "
        "evicts only keys with a TTL (asyncstampede's values have one; it frees nothing "
        "while keys without one fill the memory)."
    )


def _traffic(verdicts: list[Verdict], figures: dict[str, Any], policy: str) -> None:
    evicted = figures["evicted_keys_per_s"]
    if evicted > 0:
        # LFU keeps hot keys; under volatile-* its volatile form, which still
        # spares the keys without a TTL (allkeys-lfu would start evicting them).
        lfu = "volatile-lfu" if policy.startswith("volatile-") else "allkeys-lfu"
        spare = figures["keys_without_ttl"]
        verdicts.append(
            Verdict(
                "evictions",
                "warning",
                f"{evicted:,.1f} keys evicted per second during the interval (policy {policy})",
                "Evictions during traffic turn hot keys into misses all at once (a "
                "stampede when they are popular). Raise maxmemory, or store smaller values "
                "(compression)"
                + ("." if policy.endswith("-lfu") else f", or use {lfu} so hot keys stay.")
                + (
                    f" {spare:,} key{'' if spare == 1 else 's'} here "
                    f"ha{'s' if spare == 1 else 've'} no TTL, and {policy} evicts "
                    f"{'it' if spare == 1 else 'them'} too: if they are data that must "
                    "stay, keep the cache on a Redis of its own (maxmemory is per server, "
                    "not per database)."
                    if spare and policy.startswith("allkeys-")
                    else ""
                ),
                {"evicted_keys_per_s": evicted, "keys_without_ttl": spare},
            )
        )
    hits, misses = figures["hits_per_s"], figures["misses_per_s"]
    first, second = figures["ops_per_s_first_half"], figures["ops_per_s_second_half"]
    # Clients that came and went (a job) stopped asking: not a stampede. The
    # same clients at every reading, the doctor aside, and more than one.
    least, most = figures["connected_clients_least"], figures["connected_clients_most"]
    staying = least - 1 >= 2 and least >= 0.9 * most
    falling = (
        first is not None
        and second is not None
        and first >= _STAMPEDE_OPS
        and second <= 0.5 * first
    )
    # (An inference from counters, never certain: a warning, not critical.)
    if misses > hits and misses >= _STAMPEDE_MISSES and falling and staying:
        verdicts.append(
            Verdict(
                "stampede",
                "warning",
                f"misses outpace hits and ops/s fell from {first:,.0f} to {second:,.0f} "
                "between the halves of the interval, the same clients connected: what a "
                "stampede in progress looks like (clients waiting for the backend)",
                "Run the doctor again to see whether it lasts. A stampede: every caller "
                "missed at once and went to the database. Single-flight the computes "
                "(asyncstampede's get_or_compute), refresh hot keys early, and find what "
                "emptied the cache (evictions, TTLs ending together, a flush).",
                {
                    "hits_per_s": hits,
                    "misses_per_s": misses,
                    "ops_per_s_first_half": first,
                    "ops_per_s_second_half": second,
                },
            )
        )
    elif misses > hits and misses > 1.0:
        verdicts.append(
            Verdict(
                "misses",
                "warning",
                f"misses outpace hits: {misses:,.1f}/s against {hits:,.1f}/s",
                "More misses than hits means values expire or are evicted before they are "
                "read again: check the TTLs against how often keys are asked for, and the "
                "evictions.",
                {"hits_per_s": hits, "misses_per_s": misses},
            )
        )


def _clients(verdicts: list[Verdict], figures: dict[str, Any]) -> None:
    most = figures["maxclients"]
    others = max(0, figures["connected_clients"] - 1)  # (the doctor's own connection)
    free = most - others
    if not most or (free >= _SLOTS_NEEDED and others < _CROWDED * most):
        return
    verdicts.append(
        Verdict(
            "maxclients",
            "critical" if free <= 0 else "warning",
            f"{others:,} other client{'' if others == 1 else 's'} connected of maxclients "
            f"{most:,}: {max(free, 0):,} free",
            "A refused connection is an outage for the process that asked: its calls "
            f"fail open and compute. Each asyncstampede process needs {_SLOTS_NEEDED} "
            "connections at least (its request connection, one that watches locks, its "
            "pool); raise maxclients (CONFIG SET maxclients <n>, within the host's file "
            "limit), or use fewer connections per process.",
            {"others": others, "maxclients": most, "free": free},
        )
    )


def _keys(verdicts: list[Verdict], keys: dict[str, Any], *, evicting: bool = False) -> None:
    sampled = keys.get("sampled", 0)
    if keys.get("size_max", 0) >= _BIG:
        biggest = keys["biggest"][0]
        kind = biggest.get("type")  # (None where TYPE was refused: not guessed)
        ratios = [b["lz4_ratio"] for b in keys["biggest"] if b.get("lz4_ratio") is not None]
        verdicts.append(
            Verdict(
                "big-values",
                "warning",
                f"values of {keys['size_max']:,} bytes in memory in the sample (the biggest: "
                f"{_shown(biggest['key'])}" + (f", a {kind})" if kind else ")"),
                "A big value evicts many small ones and is slow to read (a miss on it is "
                "costly, a herd on it more so). Store less per key, or compress: "
                "asyncstampede's compress_threshold lz4-compresses values from 4 KiB"
                + (
                    " (lz4 makes the biggest sampled strings "
                    + ", ".join(_share(r) for r in ratios)
                    + " of their size)"
                    if ratios
                    else ""
                )
                + ".",
                {
                    "size_max": keys["size_max"],
                    "biggest": keys["biggest"],
                    "lz4_ratio": keys.get("lz4_ratio"),
                },
            )
        )
    refused = keys.get("refused")
    if refused and refused.startswith(("CLUSTERDOWN", "MOVED", "ASK", "TRYAGAIN")):
        # (A Redis Cluster primary: the cluster, not an ACL, turned the sample away.)
        verdicts.append(
            Verdict(
                "sample-refused",
                "info",
                "the key sample was turned away by the cluster: its figures are left out",
                f"The server said: {refused}. A cluster that is down (see the cluster's "
                "verdicts) or moving slots answers so for keys; run the doctor again once "
                "it is ok.",
            )
        )
    elif refused:
        verdicts.append(
            Verdict(
                "sample-refused",
                "info",
                "the key sample was refused: its figures are left out",
                f"The server said: {refused}. Allow +scan, +pttl, +memory|usage, "
                "+type, +getrange (and +object|freq under LFU) on the keys sampled; for a "
                "user limited to some keys, pass --namespace NS to sample only NS:*; or "
                "pass --sample 0.",
            )
        )
    with_ttl, busiest = keys.get("with_ttl", 0), keys.get("ttl_busiest_second", 0)
    # (Under eviction only the newest keys survive: their TTLs end together anyway.)
    if with_ttl >= 20 and busiest >= _CLUSTER * with_ttl and not evicting:
        verdicts.append(
            Verdict(
                "ttl-cluster",
                "warning",
                f"{busiest:,} of {with_ttl:,} sampled keys with a TTL expire within the same "
                "second",
                "Keys written together with one TTL expire together: a wave of misses. Add "
                "jitter to the TTL (asyncstampede: ttl_jitter=0.1 adds up to 10%).",
                {"with_ttl": with_ttl, "ttl_busiest_second": busiest},
            )
        )
    if keys.get("hottest"):
        verdicts.append(
            Verdict(
                "hot-keys",
                "info",
                "the hottest sampled keys (LFU): "
                + ", ".join(f"{_shown(h['key'])} ({h['freq']})" for h in keys["hottest"]),
                "Hot keys are where a stampede hurts: keep them cached with "
                "asyncstampede's early refresh (beta) and stale_while_revalidate.",
                {"hottest": keys["hottest"]},
            )
        )
    if sampled and keys.get("without_ttl", 0) == sampled:
        verdicts.append(
            Verdict(
                "no-ttl",
                "info",
                f"none of the {sampled:,} sampled keys has a TTL",
                "Cache entries without a TTL are never refreshed unless evicted: if these "
                "are cache, give each a TTL (asyncstampede always does); if they are data "
                "that must stay, leave them be, and keep the cache on a Redis of its own.",
                {"sampled": sampled},
            )
        )


def _wake_verdict(verdicts: list[Verdict], wake: dict[str, Any]) -> None:
    transport = wake["transport"]
    # Channels and keys are the namespace's: ACL rules for another one do not apply.
    probed = (
        ""
        if wake.get("namespace")
        else " (probed for the namespace 'stampede'; pass --namespace NS for yours)"
    )
    better = AUTO_ORDER if transport == "poll" else AUTO_ORDER[: AUTO_ORDER.index(transport)]
    refused = wake["refused"]
    namespace = wake.get("namespace")

    def rules(kind: str) -> str:
        return WAKE_ACL[kind].replace("<namespace>", namespace) if namespace else WAKE_ACL[kind]

    grants = "; or ".join(f"{rules(kind)} ({kind})" for kind in better)
    whose = (
        f"ACL rules for the user of the URL given, in namespace {namespace!r}"
        if namespace
        else "ACL rules for the user of the URL given; <namespace> is the Stampede's"
    )
    reasons = "; ".join(f"{kind}: {refused[kind]}" for kind in better if kind in refused)
    if transport == "poll":
        verdicts.append(
            Verdict(
                "wake",
                "warning",
                "asyncstampede's waiters would poll here: no wake transport is allowed" + probed,
                f"Waiters look by themselves (a few looks per wait, a value seen up to about "
                f"as late again as it took to come). Refused: {reasons}. Grant one of: "
                f"{grants} ({whose}).",
                wake,
            )
        )
        return
    advice = "The best there is: nothing to change."
    if better:
        advice = (
            f"Works; the transports before it were refused ({reasons}). To use the first, "
            f"grant {rules(AUTO_ORDER[0])} ({whose})."
        )
    verdicts.append(
        Verdict(
            "wake",
            "info",
            f"asyncstampede's waiters would wake by {transport}" + probed,
            advice,
            wake,
        )
    )


# -- a Redis Cluster -----------------------------------------------------------------


async def is_cluster(client: Redis) -> bool:
    """Return whether *client*'s server is a Redis Cluster node (``INFO``'s ``cluster_enabled``).

    Raises:
        BackendError: Redis cannot be reached, or refuses ``INFO``.

    """
    address = address_of(client.connection_pool.connection_kwargs)
    try:
        info = await client.info("cluster")
    except RedisError as exc:
        raise map_error(exc, address=address, command="INFO") from exc
    return str(info.get("cluster_enabled", 0)) == "1"


async def diagnose_cluster(
    client: Redis | Sequence[Redis],
    *,
    interval: float = 3.0,
    sample: int = 1000,
    namespace: str | None = None,
    wake: bool = True,
) -> ClusterDiagnosis:
    """Read every primary of the Redis Cluster *client*'s server belongs to, and judge them.

    The topology comes from that server (``CLUSTER SHARDS``, or ``CLUSTER
    SLOTS`` where that is missing or refused, as on Redis 6.2). Each primary
    serving slots is then read as `diagnose` reads one server (``INFO``
    three times over *interval*, ``CONFIG GET``, its own key sample, its
    wake probe), all of them at once, each within *interval* plus 30
    seconds, over connections of the doctor's own made with *client*'s
    settings (password, TLS, timeouts), closed at the end.

    Args:
        client: A ``redis.asyncio.Redis`` client to any node of the cluster
            (or several: the topology is read from the first that answers).
        interval: As `diagnose`.
        sample: Keys to look at on each primary (0: none).
        namespace: As `diagnose`.
        wake: As `diagnose`, for each primary.

    Raises:
        BackendError: the topology cannot be read (no client given, the
            server is not a cluster node, cannot be reached, or refuses
            ``CLUSTER``).
        TypeError: *interval* is not a number.
        ValueError: *interval* is out of range, *sample* is negative, or
            *namespace* has a brace.

    """
    interval = _check(interval, sample, namespace)
    seeds = [client] if isinstance(client, Redis) else list(client)
    if not seeds:
        raise BackendUnavailableError(
            "Redis Cluster unavailable: no node of it is known (its topology was never read)",
            address="?",
        )
    # Connections of the doctor's own, with the given client's settings: the
    # caller's pool is left alone, and each primary counts one doctor.
    kwargs = node_connection_kwargs(dict(seeds[0].connection_pool.connection_kwargs))

    def connect(host: str, port: int) -> Redis:
        return Redis.from_pool(ConnectionPool(host=host, port=port, **kwargs))

    failure: BackendError | None = None
    for seed in seeds:
        given = seed.connection_pool.connection_kwargs
        asking = connect(str(given.get("host", "localhost")), int(given.get("port", 6379)))
        try:
            source, shards, asked = await _topology(asking)
        except BackendError as exc:
            failure = failure or exc
            continue
        finally:
            with anyio.CancelScope(shield=True):
                await asking.aclose()
        break
    else:
        assert failure is not None
        raise failure
    primaries = [s for s in shards if s.slots]
    nodes: list[ClusterNode | None] = [None] * len(primaries)

    async def read(index: int, shard: _Shard) -> None:
        client = connect(shard.host, shard.port)
        found: Diagnosis | None = None
        after: dict[str, Any] = {}
        error: str | None = None
        refused = False
        bound = interval + _NODE_BOUND
        try:
            with anyio.fail_after(bound):
                found, after = await _read(
                    client, interval, sample, namespace, wake, slots=shard.slots
                )
        except TimeoutError:
            error = f"Redis at {shard.address} gave no answer within {bound:g} s"
        except BackendRefusedError as exc:
            error, refused = str(exc), True
        except BackendError as exc:
            error = str(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
        nodes[index] = ClusterNode(
            address=shard.address,
            id=shard.id,
            slots=tuple(shard.slots),
            replicas=tuple(_replicas(shard, after if found is not None else None)),
            health=shard.health,
            cluster_state=after.get(_CLUSTER_INFO, {}).get("cluster_state"),
            diagnosis=found,
            error=error,
            refused=refused,
        )

    async with anyio.create_task_group() as tg:
        for index, shard in enumerate(primaries):
            tg.start_soon(read, index, shard)
    read_nodes = [node for node in nodes if node is not None]
    topology = {"source": source, **_topology_figures(asked, shards, read_nodes)}
    return judge_cluster(_host_port(asking), interval, topology, read_nodes)


@dataclass(slots=True)
class _Shard:
    """One primary and its replicas, as the topology names them."""

    host: str
    port: int
    id: str
    health: str | None
    slots: list[tuple[int, int]]
    replicas: list[dict[str, Any]]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _host_port(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


async def _topology(client: Redis) -> tuple[str, list[_Shard], dict[str, str]]:
    """Read the topology from *client*'s server: its source, the shards, its ``CLUSTER INFO``.

    ``CLUSTER SHARDS`` (Redis 7.0 and later) names every node with its
    health; where it is missing (6.2, known by its ``INFO``: not sent) or
    refused, ``CLUSTER SLOTS`` names the primaries and the replicas it
    counts healthy.

    Raises:
        BackendError: the server cannot be reached, is no cluster node, or
            refuses both.

    """
    address = address_of(client.connection_pool.connection_kwargs)
    asked = str(client.connection_pool.connection_kwargs.get("host", "localhost"))
    doing = "INFO"
    try:
        try:
            # CLUSTER SHARDS came with 7.0: a 6.2 node is not sent it (it would
            # count the refusal in its errorstats, which a health check may watch).
            major = _major(await client.info("server"))  # (0: it does not say)
            shards_known = not 0 < major < 7
        except ResponseError:  # (INFO refused: the primaries' readings will say so)
            shards_known = True
        shards: list[_Shard] | None = None
        if shards_known:
            doing = source = "CLUSTER SHARDS"
            try:
                shards = _shards(await _command(client, "CLUSTER", "SHARDS"), asked)
            except ResponseError as exc:
                if "cluster support" in str(exc):
                    raise
        if shards is None:  # (6.2, or an ACL that allows only what asyncstampede needs)
            doing = source = "CLUSTER SLOTS"
            shards = _slots(await _command(client, "CLUSTER", "SLOTS"), asked)
        doing = "CLUSTER INFO"
        info = await _cluster_info_of(client)
    except RedisError as exc:
        if "cluster support" in str(exc):
            raise BackendRefusedError(
                f"Redis at {address} is not a Redis Cluster node ({server_text(exc)}): "
                "leave out --cluster",
                address=address,
                command=doing,
            ) from exc
        raise map_error(exc, address=address, command=doing) from exc
    return source, sorted(shards, key=lambda s: (s.slots[:1] or [(SLOTS, 0)], s.address)), info


async def _command(client: Redis, *args: str) -> Any:
    """Send *args* through *client* (redis-py's ``execute_command``, which it leaves untyped)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def _words(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _mapping(value: Any) -> dict[str, Any]:
    """Return a reply's map (RESP3, or redis-py's parse) or flat list of pairs, keyed by text."""
    if isinstance(value, dict):
        return {_words(k): v for k, v in value.items()}
    items = list(value)
    return {_words(k): v for k, v in zip(items[0::2], items[1::2], strict=False)}


def _shards(reply: Any, asked: str) -> list[_Shard]:
    """Parse ``CLUSTER SHARDS``: one `_Shard` per primary (a failed one may serve no slot)."""
    shards = []
    for entry in reply:
        shard = _mapping(entry)
        bounds = [int(b) for b in shard.get("slots", [])]
        slots = list(zip(bounds[0::2], bounds[1::2], strict=False))
        primary: dict[str, Any] | None = None
        replicas = []
        for raw in shard.get("nodes", []):
            node = _mapping(raw)
            endpoint = _words(node.get("endpoint", "") or "")
            host = endpoint if endpoint not in ("", "?") else _words(node.get("ip", "") or "")
            seen = {
                "address": f"{host or asked}:{int(node.get('port') or node.get('tls-port') or 0)}",
                "id": _words(node.get("id", "")),
                "health": _words(node.get("health", "")) or None,
            }
            if _words(node.get("role", "")) == "master" and primary is None:
                primary = seen
            else:
                replicas.append(seen)
        if primary is None:  # (slots whose primary is not listed: counted as failed)
            primary = {"address": f"{asked}:0", "id": "", "health": "fail"}
        host, _, port = str(primary["address"]).rpartition(":")
        shards.append(_Shard(host, int(port), primary["id"], primary["health"], slots, replicas))
    return shards


def _slots(reply: Any, asked: str) -> list[_Shard]:
    """Parse ``CLUSTER SLOTS``: its ranges grouped by primary (health unknown)."""
    by_primary: dict[tuple[str, int], _Shard] = {}
    for entry in reply:
        first, last = int(entry[0]), int(entry[1])
        nodes = [(_words(n[0]) or asked, int(n[1]), _words(n[2]) if len(n) > 2 else "")
                 for n in entry[2:]]  # fmt: skip
        host, port, node_id = nodes[0]
        shard = by_primary.get((host, port))
        if shard is None:
            shard = by_primary[(host, port)] = _Shard(host, port, node_id, None, [], [])
        shard.slots.append((first, last))
        for r_host, r_port, r_id in nodes[1:]:
            address = f"{r_host}:{r_port}"
            if all(r["address"] != address for r in shard.replicas):
                shard.replicas.append({"address": address, "id": r_id, "health": None})
    for shard in by_primary.values():
        shard.slots.sort()
    return list(by_primary.values())


async def _cluster_info_of(client: Redis) -> dict[str, str]:
    """Return the server's ``CLUSTER INFO``, or nothing where it is refused (an ACL).

    asyncstampede itself needs only ``CLUSTER SLOTS``: a user allowed no more
    is judged without the cluster's state (its other verdicts stand).
    """
    try:
        return _cluster_info(await _command(client, "CLUSTER", "INFO"))
    except ResponseError as exc:
        if "cluster support" in str(exc):
            raise
        return {}


def _cluster_info(reply: Any) -> dict[str, str]:
    """Parse ``CLUSTER INFO`` (``name:value`` lines, or a map redis-py made of them)."""
    if isinstance(reply, dict):
        return {_words(k): _words(v) for k, v in reply.items()}
    found = {}
    for line in _words(reply).splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            found[name] = value
    return found


def _replicas(shard: _Shard, info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """*shard*'s replicas, with the primary's word for each link (its ``INFO replication``)."""
    links: dict[str, dict[str, Any]] = {}
    if info is not None:
        for name, value in info.items():
            if name.startswith("slave") and name[5:].isdigit() and isinstance(value, dict):
                links[f"{value.get('ip', '')}:{value.get('port', '')}"] = value
    replicas = []
    for replica in shard.replicas:
        link = links.pop(replica["address"], None)
        if link is None:  # (the replica announces another address than it connects from)
            port = replica["address"].rpartition(":")[2]
            same = [a for a in links if a.rpartition(":")[2] == port]
            link = links.pop(same[0]) if len(same) == 1 else None
        replicas.append({**replica, "link": None if link is None else str(link.get("state"))})
    # A replica the topology leaves out (Redis 7's CLUSTER SLOTS, until it has synced).
    replicas.extend(
        {"address": address, "id": "", "health": None, "link": str(link.get("state"))}
        for address, link in links.items()
    )
    for replica in replicas:
        # Without the primary's word, the topology's: CLUSTER SLOTS leaves failed replicas out.
        replica["online"] = replica["health"] in (None, "online") and (
            info is None or replica["link"] == "online"
        )
    return replicas


def _agreed(nodes: list[ClusterNode], setting: str) -> Any:
    """Return the primaries' *setting*: one value when they agree, else a dict by address."""
    values = {
        node.address: node.diagnosis.config[setting]
        for node in nodes
        if node.diagnosis is not None
        and node.diagnosis.config is not None
        and setting in node.diagnosis.config
    }
    if not values:
        return None
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return values


def _topology_figures(
    asked: dict[str, str], shards: list[_Shard], nodes: list[ClusterNode]
) -> dict[str, Any]:
    """Return the cluster's figures: the asked node's ``CLUSTER INFO``, the slots served..."""
    failed = unreachable = served = 0
    for node in nodes:
        if node.health not in (None, "online"):
            failed += node.slot_count
        elif node.diagnosis is None:
            unreachable += node.slot_count
        else:
            served += node.slot_count
    assigned = sum(node.slot_count for node in nodes)

    def number(name: str) -> int | None:
        value = asked.get(name)
        return int(value) if value is not None and value.isdigit() else None

    timeout = _agreed(nodes, "cluster-node-timeout")
    return {
        "state": asked.get("cluster_state"),
        "slots_assigned": number("cluster_slots_assigned"),
        "slots_ok": number("cluster_slots_ok"),
        "slots_pfail": number("cluster_slots_pfail"),
        "slots_fail": number("cluster_slots_fail"),
        "known_nodes": number("cluster_known_nodes"),
        "size": number("cluster_size"),
        "slots_served": served,
        "slots_unassigned": SLOTS - assigned,
        "slots_failed": failed,
        "slots_unreachable": unreachable,
        "failed_nodes": [
            s.address for s in shards if not s.slots and s.health not in (None, "online")
        ],
        "primaries_without_slots": [
            s.address for s in shards if not s.slots and s.health in (None, "online")
        ],
        "require_full_coverage": _agreed(nodes, "cluster-require-full-coverage"),
        "node_timeout_ms": (
            int(timeout) if isinstance(timeout, str) and timeout.isdigit() else timeout
        ),
        "allow_reads_when_down": _agreed(nodes, "cluster-allow-reads-when-down"),
    }


def judge_cluster(
    address: str,
    interval: float,
    topology: dict[str, Any],
    nodes: list[ClusterNode],
) -> ClusterDiagnosis:
    """Return the cluster-wide verdicts on the primaries' diagnoses and the topology (pure).

    Each primary's own verdicts stay in its `ClusterNode`; these are what
    only the cluster as a whole shows: its state, slots without a working
    primary, primaries without a replica, failed nodes still known, and
    primaries that differ (memory, evictions, traffic, settings).
    """
    verdicts: list[Verdict] = []
    read = [n for n in nodes if n.diagnosis is not None]
    coverage = topology.get("require_full_coverage")
    _state(verdicts, address, topology, nodes, coverage)
    _unserved(verdicts, topology)
    _replicated(verdicts, nodes, coverage)
    if topology.get("failed_nodes"):
        failed = topology["failed_nodes"]
        verdicts.append(
            Verdict(
                "failed-nodes",
                "info",
                f"the cluster still knows {len(failed):,} failed "
                f"node{'' if len(failed) == 1 else 's'} serving no slot: {', '.join(failed)}",
                "A primary replaced by its replica stays known as failed; started again, it "
                "rejoins as a replica of the node that took over (empty, without persistence). "
                "If it is gone for good, CLUSTER FORGET <its id> on every node (within a "
                "minute of each other).",
                {"failed_nodes": failed},
            )
        )
    _uneven(verdicts, read)
    _differ(verdicts, read)
    verdicts.sort(key=lambda v: -SEVERITIES.index(v.severity))
    return ClusterDiagnosis(
        address=address,
        interval=interval,
        topology=topology,
        nodes=nodes,
        verdicts=verdicts,
    )


def _coverage_words(coverage: Any) -> str:
    """How the primaries' cluster-require-full-coverage reads, for advice."""
    if coverage is None:
        return "cluster-require-full-coverage yes (the default; CONFIG GET was refused here)"
    if isinstance(coverage, dict):
        return (
            "cluster-require-full-coverage yes (as on "
            + ", ".join(a for a, v in coverage.items() if v == "yes")
            + ")"
        )
    return f"cluster-require-full-coverage {coverage} (as set here)"


def _state(
    verdicts: list[Verdict],
    address: str,
    topology: dict[str, Any],
    nodes: list[ClusterNode],
    coverage: Any,
) -> None:
    down = [n.address for n in nodes if n.cluster_state not in (None, "ok")]
    if topology.get("state") not in (None, "ok") and address not in down:
        down.insert(0, address)
    if not down:
        return
    verdicts.append(
        Verdict(
            "cluster-down",
            "critical",
            f"cluster_state is fail on {', '.join(down)}: "
            f"{'it refuses' if len(down) == 1 else 'they refuse'} every command on a key "
            "(CLUSTERDOWN)",
            "A node whose cluster_state is fail answers CLUSTERDOWN to every command on a "
            "key: every asyncstampede call on its keys fails open and computes. A node says "
            "fail when some slot has no working primary under "
            f"{_coverage_words(coverage)}, or when it cannot reach a majority of the "
            "primaries. Bring the failed primary back (or fail over to its replica: CLUSTER "
            "FAILOVER FORCE on the replica), assign any unassigned slots (CLUSTER ADDSLOTS); "
            "CONFIG SET cluster-require-full-coverage no on every node keeps the other slots "
            "served while some have no primary.",
            {"down": down, "require_full_coverage": coverage},
        )
    )


def _unserved(verdicts: list[Verdict], topology: dict[str, Any]) -> None:
    unassigned = topology["slots_unassigned"]
    failed = topology["slots_failed"]
    unreachable = topology["slots_unreachable"]
    total = unassigned + failed + unreachable
    if not total:
        return
    parts = [
        f"{count:,} {words}"
        for count, words in (
            (unassigned, "assigned to no node"),
            (failed, "on primaries the cluster counts failed"),
            (unreachable, "on primaries the doctor could not reach"),
        )
        if count
    ]
    timeout = topology.get("node_timeout_ms")
    after = f" ({timeout:,} ms here)" if isinstance(timeout, int) else ""
    verdicts.append(
        Verdict(
            "slots-unserved",
            "critical",
            f"{total:,} of {SLOTS:,} hash slots have no working primary: " + ", ".join(parts),
            "A key whose slot has no working primary can be neither read nor written: its "
            "callers fail open and compute (and under cluster-require-full-coverage yes, "
            "every node refuses every key: see cluster-down). A failed primary with a replica "
            f"is replaced after cluster-node-timeout{after} and about a second more; one "
            "without a replica must be brought back. Slots assigned to no node: CLUSTER "
            "ADDSLOTS, or redis-cli --cluster fix.",
            {"unassigned": unassigned, "failed": failed, "unreachable": unreachable},
        )
    )


def _replicated(verdicts: list[Verdict], nodes: list[ClusterNode], coverage: Any) -> None:
    # (One already down is critical elsewhere: unreachable, slots-unserved.)
    alone = [
        n
        for n in nodes
        if not any(r["online"] for r in n.replicas)
        and n.diagnosis is not None
        and n.health in (None, "online")
    ]
    if not alone:
        return
    full = coverage != "no"
    consequence = (
        "every node then refuses every command on a key (CLUSTERDOWN) under "
        f"{_coverage_words(coverage)}: the whole cache is down, not only that primary's "
        "keys, and every asyncstampede call fails open and computes"
        if full
        else f"under {_coverage_words(coverage)} only its slots' keys fail (their callers "
        "compute); the others are served"
    )
    verdicts.append(
        Verdict(
            "no-replica",
            "warning",
            f"{len(alone):,} primar{'y' if len(alone) == 1 else 'ies'} without a working "
            f"replica: " + ", ".join(f"{n.address} ({n.slot_count:,} slots)" for n in alone),
            "If a primary without a replica fails, nothing takes over its slots until it is "
            f"back (empty, without persistence); {consequence}. Give each primary a replica "
            "(a new node: CLUSTER REPLICATE <primary id>)"
            + (
                ", or CONFIG SET cluster-require-full-coverage no on every node so that only "
                "the failed primary's slots go unserved."
                if full
                else "."
            ),
            {
                "primaries": [n.address for n in alone],
                "require_full_coverage": coverage,
            },
        )
    )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _uneven(verdicts: list[Verdict], nodes: list[ClusterNode]) -> None:
    if len(nodes) < 2:
        return
    figures = {n.address: n.diagnosis.figures for n in nodes if n.diagnosis is not None}
    used = {a: float(f["used_memory"]) for a, f in figures.items()}
    median = _median(list(used.values()))
    hot, most = max(used.items(), key=lambda item: item[1])
    maxmemory = figures[hot]["maxmemory"]
    enough = _UNEVEN_MEMORY_SHARE * maxmemory if maxmemory else _UNEVEN_MEMORY_BYTES
    if most >= _UNEVEN_MEMORY * median and most - median >= enough:
        verdicts.append(
            Verdict(
                "uneven-memory",
                "warning",
                f"{hot} uses {most:,.0f} bytes, {most / max(median, 1):.1f}x the median "
                f"primary's {median:,.0f}: its slots hold more (a hot slot, or big keys)",
                "Each key lives on the primary serving its hash slot, and maxmemory is per "
                "node: this one fills (and evicts, or under noeviction refuses writes) while "
                "the others have room. Look at its biggest and hottest keys (its sample "
                "above; redis-cli --bigkeys or --hotkeys against it), avoid hash tags ({...} "
                "in key names) that put many keys in one slot, or move slots to the others "
                "(redis-cli --cluster rebalance).",
                {"used_memory": used, "median": median},
            )
        )
    rated = {a: f for a, f in figures.items() if f["rates"]}
    if len(rated) >= 2:
        evicted = {a: float(f["evicted_keys_per_s"]) for a, f in rated.items()}
        top = max(evicted.values())
        calm = [a for a, e in evicted.items() if e < 0.1 * top]
        if top > 0 and calm:
            busy = [a for a, e in evicted.items() if e >= 0.1 * top]
            verdicts.append(
                Verdict(
                    "uneven-evictions",
                    "warning",
                    ", ".join(f"{a} evicts {evicted[a]:,.1f} keys/s" for a in busy)
                    + f" while {', '.join(calm)} evict{'s' if len(calm) == 1 else ''} "
                    "(almost) none: its slots are fuller than the others'",
                    "A primary that evicts while the others have room holds more than its "
                    "share: a hot slot or big keys (see uneven-memory and its sample). Its "
                    "hot keys become misses together; spread the keys, or move slots to the "
                    "others (redis-cli --cluster rebalance).",
                    {"evicted_keys_per_s": evicted},
                )
            )
        ops = {a: float(f["ops_per_s"]) for a, f in rated.items()}
        busiest, top_ops = max(ops.items(), key=lambda item: item[1])
        typical = _median(list(ops.values()))
        if top_ops >= _UNEVEN_OPS_LEAST and top_ops >= _UNEVEN_OPS * typical:
            verdicts.append(
                Verdict(
                    "uneven-traffic",
                    "info",
                    f"{busiest} runs {top_ops:,.0f} ops/s, "
                    + (
                        f"{top_ops / typical:.1f}x the median primary's {typical:,.0f}"
                        if typical >= 1
                        else "the median primary none"
                    )
                    + ": a hot slot (or hot keys)",
                    "One primary serves all of a key's traffic, whatever the cluster's size: "
                    "its CPU bounds the hot keys. asyncstampede coalesces the misses of a key, "
                    "not its hits; a short in-process cache in front of the hottest keys "
                    "spreads those.",
                    {"ops_per_s": ops},
                )
            )


def _by_value(values: dict[str, Any]) -> str:
    """``v1 on a, b; v2 on c``: the addresses of *values* grouped by value."""
    grouped: dict[Any, list[str]] = {}
    for address, value in values.items():
        grouped.setdefault(value, []).append(address)
    return "; ".join(f"{value} on {', '.join(addresses)}" for value, addresses in grouped.items())


def _differ(verdicts: list[Verdict], nodes: list[ClusterNode]) -> None:
    settings = {"maxmemory_policy": "maxmemory-policy", "maxmemory": "maxmemory"}
    differing = []
    for figure, name in settings.items():
        values = {n.address: n.diagnosis.figures[figure] for n in nodes if n.diagnosis is not None}
        if len(set(values.values())) > 1:
            differing.append((name, values))
    if not differing:
        return
    verdicts.append(
        Verdict(
            "settings-differ",
            "warning",
            "the primaries differ in "
            + " and ".join(f"{name} ({_by_value(values)})" for name, values in differing),
            "Keys land on primaries by hash slot, so the same cache behaves differently "
            "from key to key (one primary evicts where another refuses writes). Set the "
            "same maxmemory and maxmemory-policy on every node, replicas too (they take "
            "over with their own): CONFIG SET on each, and in their configuration files.",
            dict(differing),
        )
    )
