"""herd: P processes x C coroutines ask for one missing key at the same instant."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._base import Options, Row, failed, fresh_namespace, progress
from .._pool import ask_all, worker_pool
from .._server import CommandCounter
from .._stats import median, percentile

# One herd's reports (one per process) and the commands the server ran for it.
Run = tuple[list[dict[str, Any]], Counter[str]]


# Looks at one herd's reports of a strategy; raises if the herd must not count.
Check = Callable[[str, list[dict[str, Any]]], None]


def run(url: str, options: Options) -> list[Row]:
    """Every strategy, every compute duration D and concurrency C, ``--repeat`` herds each.

    Each herd's server commands are the ``INFO commandstats`` difference
    around it (see `benchmarks._server`); only one strategy runs at a time.
    """
    return herds(url, options, options.strategies, "herd")


def herds(
    url: str, options: Options, strategies: list[str], label: str, check: Check | None = None
) -> list[Row]:
    """The herd rows of *strategies* (see `run`); *label* names the progress bar.

    *check*, if given, sees every herd's reports (warm-up included) as they
    come; an exception it raises fails the strategy's row, as any other.
    """
    counter = CommandCounter(url)
    rows: list[Row] = []
    plan = [(d, c) for d in options.durations for c in options.concurrency]
    bar = progress(len(strategies) * len(plan) * options.repeat, label)
    for strategy in strategies:
        try:
            with worker_pool(strategy, url, fresh_namespace(), options.processes) as workers:
                # Warm-up herd, not measured: open every connection the strategy
                # will use, so no figure includes connection set-up.
                start = time.time() + 0.2
                key = f"warmup-{uuid.uuid4().hex[:8]}"
                widest = max(options.concurrency)
                reports = ask_all(workers, f"herd {start} {key} {widest} 10")
                if check is not None:
                    check(strategy, reports)
                for d, c in plan:
                    runs: list[Run] = []
                    for _ in range(options.repeat):
                        key = f"herd-{uuid.uuid4().hex[:8]}"
                        before = counter.read()
                        start = time.time() + 0.3
                        reports = ask_all(workers, f"herd {start} {key} {c} {d}")
                        if check is not None:
                            check(strategy, reports)
                        runs.append((reports, counter.since(before)))
                        bar.update()
                    rows.append(herd_row(strategy, d, c, options.processes, runs))
        except Exception as exc:
            rows.append(failed(strategy, exc))
    bar.close()
    counter.close()
    return rows


def herd_row(strategy: str, d: int, c: int, p: int, runs: list[Run]) -> Row:
    """One row of *strategy*'s herds at D = *d* ms, C = *c* callers in each of *p* processes."""
    reports = [r for rs, _ in runs for r in rs]
    latencies = [x * 1000 for r in reports for x in r["latencies"]]
    requests = p * c * len(runs)
    commands: Counter[str] = sum((n for _, n in runs), Counter())
    row: Row = {
        "strategy": strategy,
        "compute_ms": d,
        "concurrency": c,
        "processes": p,
        "computes_per_herd": sum(r["computes"] for r in reports) / len(runs),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        # Everything the server executed, commands run inside Lua scripts included.
        "server_per_request": commands.total() / requests,
        # The same, by command, per herd: what the figure above is made of.
        "commands_per_herd": {
            name: n / len(runs) for name, n in sorted(commands.items(), key=lambda kv: -kv[1])
        },
        # How far apart the processes actually woke for the same instant
        # (median over the herds): latency no library can take back.
        "start_skew_ms": median(
            (max(r["started"] for r in rs) - min(r["started"] for r in rs)) * 1000 for rs, _ in runs
        ),
        "errors": sum(len(r["errors"]) for r in reports),
    }
    if all("wake" in r for r in reports):
        # asyncstampede's own account (statistics()): how its waiters were woken.
        row["wake"] = ",".join(sorted({r["wake"] for r in reports}))
        for name in ("wakeups", "polls", "reconnects"):
            row[f"{name}_per_herd"] = sum(r[name] for r in reports) / len(runs)
    return row
