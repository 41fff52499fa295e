"""wake-transports: the herd once per wake transport, each forced, side by side."""

from __future__ import annotations

from typing import Any

from .._base import Options, Row
from .._strategies import WAKE_STRATEGIES, Transport
from .herd import herds


def strategy_of(transport: str) -> str:
    """The strategy that forces *transport* (``asyncstampede-<transport>``)."""
    return f"asyncstampede-{transport}"


def run(url: str, options: Options) -> list[Row]:
    """The herd of the ``herd`` scenario (same D, C, processes and repeats), per transport.

    Each strategy is asyncstampede with ``wake=`` one of ``--transports``
    forced. The keyspace transport needs a server whose
    ``notify-keyspace-events`` has K, g and $: the throwaway server is
    started with ``K$gx``; on a server given with ``--url`` its row fails if
    that server does not send them (the harness never sets it).

    A row fails, loudly, unless every process's ``statistics().wake``
    named its transport when it started and after every herd, and no
    process reconnected during a herd (see `verify`): otherwise the figures
    would be some other transport's, or a mix.
    """
    strategies = [strategy_of(t) for t in options.transports]
    rows = herds(url, options, strategies, "wake-transports", check=verify)
    for row in rows:
        if "failed" not in row:
            row["p99_past_d_ms"] = row["p99_ms"] - row["compute_ms"]
    return rows


def verify(strategy: str, reports: list[dict[str, Any]]) -> None:
    """Raise unless every report of one herd shows *strategy*'s transport, unbroken.

    Raises:
        RuntimeError: a process's waiters were woken by another transport
            (or polled) after the herd, or a process reconnected during it.

    """
    expected: Transport = WAKE_STRATEGIES[strategy]
    for n, report in enumerate(reports):
        if "wake" not in report:
            raise RuntimeError(f"{strategy}: process {n} did not say how its waiters were woken")
        if report["wake"] != expected:
            raise RuntimeError(
                f"{strategy}: process {n} woke its waiters by {report['wake']!r} after a "
                f"herd, not {expected!r}: the row would measure another transport"
            )
        if report["reconnects"]:
            raise RuntimeError(
                f"{strategy}: process {n} reconnected {report['reconnects']} time(s) during "
                "a herd: the row would mix transports"
            )
