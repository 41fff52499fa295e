"""What every part of the harness shares: the options, the row type, a progress bar."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

# One result row of a scenario: column name -> figure (JSON-able).
Row = dict[str, Any]
# A run's rows, by scenario name.
Results = dict[str, list[Row]]

# The strategies compared, in the order tables and the figure show them.
ALL_STRATEGIES = ["naive", "sleep-poll", "cashews", "aiocache", "asyncstampede", "embedded"]
# The wake transports the wake-transports scenario forces, one row each, in
# this order: the four ``wake="auto"`` tries, in its order, then polling.
ALL_TRANSPORTS = ["tracking", "tracking-resp3", "keyspace", "channel", "poll"]


@dataclass
class Options:
    """The command line's options, parsed (see ``python -m benchmarks --help``).

    Times are seconds unless a name says ``_ms``; ``*_rate`` are per second.
    The field names are the JSON's ``args`` keys.
    """

    url: str | None = None
    scenarios: str = ""
    strategies: list[str] = field(default_factory=lambda: list(ALL_STRATEGIES))
    transports: list[str] = field(default_factory=lambda: list(ALL_TRANSPORTS))
    processes: int = 4
    concurrency: list[int] = field(default_factory=lambda: [10, 50])
    durations: list[int] = field(default_factory=lambda: [10, 100, 1000])
    repeat: int = 3
    wakeups: int = 1000
    hit_seconds: float = 1.5
    hit_rounds: int = 5
    hit_concurrency: int = 16
    churn_seconds: float = 15.0
    churn_rate: float = 500
    churn_keys: int = 50000
    churn_zipf: float = 1.1
    churn_compute_ms: int = 50
    churn_ttl: float = 5.0
    churn_value_bytes: int = 8000
    churn_maxmemory: str = "16mb"
    crash_concurrency: int = 50
    crash_cap: float = 15.0
    steady_seconds: float = 20.0
    steady_concurrency: int = 4
    steady_compute_ms: int = 100
    steady_ttl: float = 1.0
    steady_rates: list[float] = field(default_factory=lambda: [10.0, 100.0, 1000.0, 10000.0])
    steady_rate_seconds: float = 10.0
    outage_before: float = 5.0
    outage_pause: float = 5.0
    outage_after: float = 10.0
    outage_rate: float = 200
    outage_hot_keys: int = 8
    outage_cold_share: float = 0.1
    outage_compute_ms: int = 20
    outage_cap: float = 30.0
    cluster: bool = False
    quick: bool = False


class Scenario(Protocol):
    """One scenario: runs every strategy it applies to against *url*, returns rows."""

    def __call__(self, url: str, options: Options) -> list[Row]: ...


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def progress(total: int, desc: str) -> Bar:
    """A progress bar on stderr (tqdm), or nothing if tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the bench group
        return _NoBar()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def failed(strategy: str, exc: Exception) -> Row:
    """Report a strategy that broke, as a row; one must not sink the whole run."""
    print(f"\n{strategy}: failed: {exc!r}", file=sys.stderr)
    return {"strategy": strategy, "failed": repr(exc)}


def fresh_namespace() -> str:
    """A key namespace of its own, so no run reads another's keys."""
    return f"bench-{uuid.uuid4().hex[:8]}"
