"""The doctor: why a Redis stampedes, from what it says about itself, and what to change.

It reads, never writes: ``INFO`` (server, memory, stats, keyspace, clients,
errorstats) twice, an interval apart, and ``CONFIG GET`` where the server
allows it (managed services and restricted ACL users refuse it: that is
said, and the rest is worked out from ``INFO``). It never runs ``CONFIG
SET``: each verdict says what an operator could change, and why.

This module holds the reading (`diagnose`), the verdicts (`judge`, a pure
function of two readings and the configuration) and the record they make
(`Diagnosis`). The command line is ``asyncstampede doctor`` (``__main__``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, TypeAlias, final

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ._backends.redis.errors import address_of, map_error, server_text

__all__ = ["SEVERITIES", "Diagnosis", "Severity", "Verdict", "diagnose", "judge"]

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
)
_HEADROOM: Final = 0.9  # used memory past this share of maxmemory: little headroom
_FULL: Final = 0.98  # past this, a noeviction server refuses writes any moment


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


async def diagnose(client: Redis, *, interval: float = 3.0) -> Diagnosis:
    """Read *client*'s server twice, *interval* seconds apart, and judge it.

    Raises:
        BackendError: Redis cannot be reached, or refuses ``INFO``.
        ValueError: *interval* is negative.

    """
    if interval < 0:
        raise ValueError(f"interval must be at least 0 seconds, got {interval!r}")
    address = address_of(client.connection_pool.connection_kwargs)
    try:
        before = await client.info("everything")
        config, refused = await _config(client)
        await anyio.sleep(interval)
        after = await client.info("everything")
    except RedisError as exc:
        raise map_error(exc, address=address, command="INFO") from exc
    return judge(address, before, after, interval, config, refused)


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
) -> Diagnosis:
    """Return the verdicts on two ``INFO`` readings *interval* s apart (a pure function)."""
    verdicts: list[Verdict] = []
    figures = _figures(before, after, interval, config)
    policy = figures["maxmemory_policy"]
    maxmemory = figures["maxmemory"]
    used = figures["used_memory"]
    version = str(after.get("redis_version", "?"))
    kind = (
        "valkey" if "valkey_version" in after or after.get("server_name") == "valkey" else "redis"
    )
    if config_refused is not None:
        verdicts.append(
            Verdict(
                "config-refused",
                "info",
                "CONFIG GET is refused: maxmemory and the policy come from INFO",
                "Nothing to change for asyncstampede (it never needs CONFIG). For the "
                f"settings INFO lacks, ask the provider or run as a user allowed "
                f"+config|get. The server said: {config_refused}",
            )
        )
    _version(verdicts, version, kind)
    _memory(verdicts, policy, maxmemory, used, figures)
    _traffic(verdicts, figures, interval, policy)
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
    before: dict[str, Any], after: dict[str, Any], interval: float, config: dict[str, str] | None
) -> dict[str, Any]:
    def delta(name: str) -> int:
        return int(after.get(name, 0)) - int(before.get(name, 0))

    per_second = 1.0 / interval if interval > 0 else 0.0
    keys = expires = 0
    for name, value in after.items():
        if name.startswith("db") and isinstance(value, dict):
            keys += int(value.get("keys", 0))
            expires += int(value.get("expires", 0))
    maxmemory = int((config or {}).get("maxmemory", after.get("maxmemory", 0)) or 0)
    policy = str((config or {}).get("maxmemory-policy", after.get("maxmemory_policy", "?")))
    hits, misses = delta("keyspace_hits"), delta("keyspace_misses")
    return {
        "used_memory": int(after.get("used_memory", 0)),
        "maxmemory": maxmemory,
        "maxmemory_policy": policy,
        "keys": keys,
        "keys_without_ttl": keys - expires,
        "evicted_keys_per_s": delta("evicted_keys") * per_second,
        "expired_keys_per_s": delta("expired_keys") * per_second,
        "hits_per_s": hits * per_second,
        "misses_per_s": misses * per_second,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "ops_per_s": int(after.get("instantaneous_ops_per_sec", 0)),
        "connected_clients": int(after.get("connected_clients", 0)),
        "blocked_clients": int(after.get("blocked_clients", 0)),
        "oom_errors": int(after.get("errorstat_OOM", {}).get("count", 0))
        if isinstance(after.get("errorstat_OOM"), dict)
        else 0,
    }


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
        verdicts.append(
            Verdict(
                "volatile-without-ttl",
                "warning",
                f"maxmemory-policy is {policy} and {figures['keys_without_ttl']} keys have "
                "no TTL: they are never evicted",
                "Under a volatile-* policy only keys with a TTL are evicted: the short-lived "
                "lock keys of asyncstampede go first while keys without a TTL fill the "
                "memory. Give every cache key a TTL, or CONFIG SET maxmemory-policy "
                "allkeys-lru.",
                {"keys": figures["keys"], "keys_without_ttl": figures["keys_without_ttl"]},
            )
        )


def _traffic(
    verdicts: list[Verdict], figures: dict[str, Any], interval: float, policy: str
) -> None:
    if interval <= 0:
        return
    evicted = figures["evicted_keys_per_s"]
    if evicted > 0:
        verdicts.append(
            Verdict(
                "evictions",
                "warning",
                f"{evicted:.1f} keys evicted per second while sampling (policy {policy})",
                "Evictions during traffic turn hot keys into misses all at once (a "
                "stampede when they are popular). Raise maxmemory, store smaller values "
                "(compression), or use allkeys-lfu so hot keys stay.",
                {"evicted_keys_per_s": evicted},
            )
        )
    hits, misses = figures["hits_per_s"], figures["misses_per_s"]
    if misses > hits and misses > 1.0:
        verdicts.append(
            Verdict(
                "misses",
                "warning",
                f"misses outpace hits: {misses:.1f}/s against {hits:.1f}/s",
                "More misses than hits means values expire or are evicted before they are "
                "read again: check the TTLs against how often keys are asked for, and the "
                "evictions.",
                {"hits_per_s": hits, "misses_per_s": misses},
            )
        )
