"""outage: a steady load while the server is frozen (SIGSTOP) for a few seconds, then resumed."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from asyncstampede.testing import RedisServer

from .._base import Options, Row, failed, fresh_namespace, progress
from .._pool import Worker
from .._stats import percentile

PHASES = ("before", "during", "after")
TTL = 60.0  # seconds: no value expires during a run; every miss is a cold key or the outage's


def run(url: str, options: Options) -> list[Row]:
    """Each strategy on a fresh server of its own: requests before, during and after a pause.

    One worker process sends an open-loop stream of ``--outage-rate``
    requests a second: most on ``--outage-hot-keys`` hot keys (cached
    before the stream starts), a ``--outage-cold-share`` on keys never asked
    for before (a miss each: the lock, the compute and the write). After
    ``--outage-before`` seconds the harness freezes the server (``SIGSTOP``:
    connections stay open, nothing answers, as in a network partition or a
    stuck server) for ``--outage-pause`` seconds, resumes it (``SIGCONT``)
    and lets the stream run ``--outage-after`` seconds more. Requests are
    sorted into the three phases by when they were issued. Every strategy
    runs with its defaults (asyncstampede: ``Stampede.from_url(url)``).

    A server of its own per strategy (the pause must not reach a server
    given with ``--url``, and no strategy inherits another's connections or
    keys); *url* is not used.
    """
    rows: list[Row] = []
    strategies = [s for s in options.strategies if s != "embedded"]  # no server to lose
    bar = progress(len(strategies), "outage")
    for strategy in strategies:
        try:
            report, paused_at, resumed_at = _drive(strategy, options)
            rows.extend(phase_rows(strategy, report, paused_at, resumed_at, options))
        except Exception as exc:
            rows.append(failed(strategy, exc))
        finally:
            bar.update()
    bar.close()
    return rows


def _drive(strategy: str, options: Options) -> tuple[dict[str, Any], float, float]:
    """Run one strategy's stream around a pause; its report and the pause's wall-clock bounds."""
    seconds = options.outage_before + options.outage_pause + options.outage_after
    command = (
        f"outage {seconds} {options.outage_rate} {options.outage_hot_keys} "
        f"{options.outage_cold_share} {options.outage_compute_ms} {TTL} {options.outage_cap}"
    )
    # The server outlives the worker (closed first): a client should not see
    # it vanish. A server left paused by an error is resumed by its stop().
    with RedisServer() as server:
        worker = Worker(strategy, server.url, fresh_namespace())
        try:
            worker.send(command)
            started = float(worker.report(timeout=60)["started"])
            time.sleep(max(0.0, started + options.outage_before - time.time()))
            server.pause()
            paused_at = time.time()
            time.sleep(options.outage_pause)
            server.resume()
            resumed_at = time.time()
            # Every request is answered or given up within the cap.
            timeout = options.outage_after + options.outage_cap + 30
            report = worker.report(timeout=timeout)
        finally:
            worker.close()
    report["started"] = started
    return report, paused_at, resumed_at


def phase_of(issued: float, paused_at: float, resumed_at: float) -> str:
    """The phase a request issued at *issued* (wall clock) belongs to."""
    if issued < paused_at:
        return "before"
    return "during" if issued < resumed_at else "after"


def phase_rows(
    strategy: str, report: dict[str, Any], paused_at: float, resumed_at: float, options: Options
) -> list[Row]:
    """One row per phase from a worker's report (see ``outage`` in `benchmarks._worker`).

    Latencies are those of answered requests, errors included (an error is
    an answer, however unwelcome); hung requests are counted apart and left
    out of the latencies. ``redis_again_s`` (asyncstampede only, on the
    ``after`` row) runs from the resume to the first hit: the first time
    its ``statistics().hits`` grew again.
    """
    by_phase: dict[str, list[list[Any]]] = {p: [] for p in PHASES}
    for request in report["requests"]:
        by_phase[phase_of(request[0], paused_at, resumed_at)].append(request)
    computes = Counter(
        phase_of(t, paused_at, resumed_at) for t in report["computes"] if t >= report["started"]
    )
    counted = _counter_deltas(report, paused_at, resumed_at)
    again = _redis_again(report, resumed_at)
    total = options.outage_before + options.outage_pause + options.outage_after
    rows: list[Row] = []
    for phase in PHASES:
        requests = by_phase[phase]
        answered = [r[1] * 1000 for r in requests if r[2] != "hung"]
        kinds = Counter(r[2] for r in requests if r[2] not in ("ok", "hung"))
        row: Row = {
            "strategy": strategy,
            "phase": phase,
            "seconds": {
                "before": paused_at - report["started"],
                "during": resumed_at - paused_at,
                "after": report["started"] + total - resumed_at,
            }[phase],
            "requests": len(requests),
            "p50_ms": percentile(answered, 0.5),
            "p99_ms": percentile(answered, 0.99),
            "max_ms": max(answered, default=float("nan")),
            "errors": kinds.total(),
            "hung": sum(1 for r in requests if r[2] == "hung"),
            "computes": computes[phase],
            "redis_again_s": "",
            # JSON only: what the errors were, and asyncstampede's own account.
            "error_kinds": dict(kinds),
        }
        if counted is not None:
            row["counters"] = counted[phase]
            if phase == "after":
                row["redis_again_s"] = "never" if again is None else again
        rows.append(row)
    return rows


def _counter_deltas(
    report: dict[str, Any], paused_at: float, resumed_at: float
) -> dict[str, dict[str, int]] | None:
    """asyncstampede's counters' growth in each phase, from the worker's samples."""
    names: list[str] = report["counter_names"]
    samples: list[list[float]] = report["counters"]
    if not names or not samples:
        return None

    def at(t: float) -> list[float]:
        # The last sample taken by t (the first one, taken before the
        # stream started, if none was yet).
        taken = [s for s in samples if s[0] <= t]
        return taken[-1] if taken else samples[0]

    bounds = [report["started"], paused_at, resumed_at, samples[-1][0]]
    return {
        phase: {
            name: int(at(bounds[i + 1])[k + 1] - at(bounds[i])[k + 1])
            for k, name in enumerate(names)
        }
        for i, phase in enumerate(PHASES)
    }


def _redis_again(report: dict[str, Any], resumed_at: float) -> float | None:
    """Seconds from the resume to the first sample whose ``hits`` had grown; None if never."""
    names: list[str] = report["counter_names"]
    samples: list[list[float]] = report["counters"]
    if "hits" not in names or not samples:
        return None
    k = names.index("hits") + 1
    before = [s[k] for s in samples if s[0] <= resumed_at]
    hits_at_resume = before[-1] if before else samples[0][k]
    for s in samples:
        if s[0] > resumed_at and s[k] > hits_at_resume:
            return float(s[0] - resumed_at)
    return None
