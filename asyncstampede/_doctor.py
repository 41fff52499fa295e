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
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, TypeAlias, final

import anyio
import lz4.block
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._backends.redis.backend import RedisBackend
from ._backends.redis.errors import WAKE_ACL, address_of, map_error, server_text
from ._backends.redis.listener import RedisListener
from ._backends.redis.transports import AUTO_ORDER
from ._exceptions import BackendError
from ._keys import validate_namespace

__all__ = ["SEVERITIES", "Diagnosis", "Severity", "Verdict", "check_interval", "diagnose", "judge"]

Severity: TypeAlias = Literal["ok", "info", "warning", "critical"]
SEVERITIES: Final[tuple[Severity, ...]] = ("ok", "info", "warning", "critical")

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
        return {"ok": 0, "info": 0, "warning": 1, "critical": 2}[self.severity]

    def as_dict(self) -> dict[str, Any]:
        """Every figure and verdict, for ``--json``."""
        record = asdict(self)
        record["severity"] = self.severity
        record["exit_status"] = self.exit_status
        return record


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
    interval = check_interval(interval)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise ValueError(f"sample must be a number of keys, at least 0, got {sample!r}")
    if namespace is not None:
        validate_namespace(namespace)
    address = address_of(client.connection_pool.connection_kwargs)
    doing = "INFO"
    try:
        config, refused = await _config(client)
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
        policy = (config or {}).get("maxmemory-policy", str(after.get("maxmemory_policy", "")))
        doing = "the key sample (SCAN, PTTL, MEMORY USAGE)"
        keys = await _sample(client, sample, namespace, lfu="lfu" in policy)
        doing = "the wake probe"
        probed = await _wake(client, namespace) if wake else None
    except RedisError as exc:
        raise map_error(exc, address=address, command=doing) from exc
    return judge(address, before, after, interval, config, refused, keys, probed, middle=middle)


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


async def _wake(client: Redis, namespace: str | None) -> dict[str, Any] | None:
    """Which wake transport asyncstampede would get here, and why not the better ones."""
    probed = namespace or "stampede"  # (Stampede's default namespace)
    backend = RedisBackend(client, owns_client=False, namespace=probed)
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
        names.extend(n if isinstance(n, bytes) else str(n).encode() for n in batch)
        if cursor == 0 or len(names) >= sample:
            break
    # (SCAN's COUNT is a hint: about this many keys were looked at.) Cut short:
    # it ran out of SCAN calls before the keyspace ended or it had enough.
    scanned = {"scanned": scans * _SCAN_COUNT, "complete": cursor == 0 or len(names) >= sample}
    # asyncstampede's own locks (and commit markers, 0.5 s) and tag generations say
    # nothing of the cache.
    names = [n for n in names if not n.endswith((b"}:l", b"}:g"))][:sample]
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
    # A key gone since the SCAN (evicted, expired: PTTL -2) is not in the sample.
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


async def _config(client: Redis) -> tuple[dict[str, str] | None, str | None]:
    try:
        config: dict[str, str] = {}
        for key in CONFIG_KEYS:
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
                "allkeys-lru or allkeys-lfu.",
                {"used_memory": used},
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
                "CONFIG SET maxmemory-policy allkeys-lru (or allkeys-lfu for hot keys).",
                {"memory_share": share, "oom_errors": figures["oom_errors"]},
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
        verdicts.append(
            Verdict(
                "headroom",
                "info",
                f"memory is {share:.0%} of maxmemory: evictions decide what stays",
                "Expected for a cache under an evicting policy; if hot keys get evicted "
                "(see evictions), raise maxmemory or store smaller values.",
                {"memory_share": share},
            )
        )
    if policy.startswith("volatile-") and figures["keys_without_ttl"] > 0:
        # Without memory pressure nothing is evicted: worth knowing, not acting on.
        pressed = (share is not None and share >= _HEADROOM) or figures["oom_errors"] > 0
        verdicts.append(
            Verdict(
                "volatile-without-ttl",
                "warning" if pressed else "info",
                f"maxmemory-policy is {policy} and {figures['keys_without_ttl']} keys have "
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


def _traffic(verdicts: list[Verdict], figures: dict[str, Any], policy: str) -> None:
    evicted = figures["evicted_keys_per_s"]
    if evicted > 0:
        verdicts.append(
            Verdict(
                "evictions",
                "warning",
                f"{evicted:,.1f} keys evicted per second during the interval (policy {policy})",
                "Evictions during traffic turn hot keys into misses all at once (a "
                "stampede when they are popular). Raise maxmemory, store smaller values "
                "(compression), or use allkeys-lfu so hot keys stay.",
                {"evicted_keys_per_s": evicted},
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
            f"{others} other client{'' if others == 1 else 's'} connected of maxclients "
            f"{most}: {max(free, 0)} free",
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
        kind = biggest.get("type", "string")
        ratios = [b["lz4_ratio"] for b in keys["biggest"] if b.get("lz4_ratio") is not None]
        verdicts.append(
            Verdict(
                "big-values",
                "warning",
                f"values of {keys['size_max']:,} bytes in memory in the sample (the biggest: "
                f"{_shown(biggest['key'])}, a {kind})",
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
    if keys.get("refused"):
        verdicts.append(
            Verdict(
                "sample-refused",
                "info",
                "the key sample was refused: its figures are left out",
                f"The server said: {keys['refused']}. Allow +scan, +pttl, +memory|usage, "
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
                f"{busiest} of {with_ttl} sampled keys with a TTL expire within the same second",
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
                "Cache entries without a TTL are never refreshed unless evicted; give each "
                "a TTL (asyncstampede always does).",
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
