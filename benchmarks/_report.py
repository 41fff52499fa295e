"""What a run leaves: markdown tables on stdout, the raw JSON, and the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from ._base import Options, Results, Row

RESULTS = Path(__file__).with_name("results")

COLUMNS = {
    "herd": [
        "strategy",
        "compute_ms",
        "concurrency",
        "computes_per_herd",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "server_per_request",
        "start_skew_ms",
        "errors",
    ],
    "wakeup": ["path", "runs", "p50_ms", "p90_ms", "p99_ms", "max_ms"],
    "wake-transports": [
        "strategy",
        "wake",
        "compute_ms",
        "concurrency",
        "computes_per_herd",
        "p50_ms",
        "p99_ms",
        "p99_past_d_ms",
        "server_per_request",
        "wakeups_per_herd",
        "polls_per_herd",
        "start_skew_ms",
        "errors",
    ],
    "cluster": [
        "server",
        "compute_ms",
        "concurrency",
        "computes_per_herd",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "server_per_request",
        "wake",
        "wakeups_per_herd",
        "polls_per_herd",
        "topology_per_herd",
        "herds_on_primaries",
        "errors",
    ],
    "hits": [
        "strategy",
        "rps",
        "bare_rps",
        "ratio_to_bare_get",
        "same_key_ratio",
        "p99_ms",
        "note",
    ],
    "hooks": [
        "strategy",
        "rps",
        "ratio_to_no_hooks",
        "worst_round_ratio",
        "p99_ms",
        "cpu_us_per_hit",
        "extra_cpu_us_per_hit",
        "hook_us_per_hit",
        "hook_share_of_hit",
        "note",
    ],
    "churn": [
        "strategy",
        "requests",
        "shed",
        "computes_per_s",
        "computes_per_1k",
        "hit_ratio",
        "p50_ms",
        "p99_ms",
        "evicted",
        "errors",
    ],
    "crash": ["strategy", "waiting", "value_after_s", "extra_computes", "note"],
    "steady": [
        "strategy",
        "requests",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "slow",
        "computes",
        "computes_per_ttl",
    ],
    "outage": [
        "strategy",
        "phase",
        "requests",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "hung",
        "computes",
        "redis_again_s",
    ],
    # the steady scenario's second table: its rows have a read_rate
    "steady-rates": [
        "strategy",
        "read_rate",
        "reads_per_s",
        "refreshes",
        "refreshes_per_ttl",
        "slow",
        "p99_ms",
    ],
}


def table(rows: list[Row], columns: list[str]) -> str:
    """A markdown table of *rows*; a row without a column shows ``failed`` there."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "failed")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def scenario_tables(name: str, rows: list[Row]) -> str:
    """The markdown section(s) of one scenario."""
    text = f"\n### {name}\n\n" + table([r for r in rows if "read_rate" not in r], COLUMNS[name])
    if any("read_rate" in r for r in rows):
        text += f"\n\n### {name}: refreshes against the read rate\n\n"
        text += table([r for r in rows if "read_rate" in r], COLUMNS[f"{name}-rates"])
    return text


def machine(server: dict[str, Any]) -> dict[str, Any]:
    """Where the run ran: Python, OS, CPUs, and the server (from its ``INFO server``)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server": f"{server.get('redis_version')} ({server.get('executable', '')})",
    }


def write_json(
    path: Path,
    run_id: str,
    host: dict[str, Any],
    options: Options,
    results: Results,
    goals: list[Row],
) -> None:
    """The raw results: every row of every scenario, the options, the machine, the verdict."""
    document = {
        "run": run_id,
        "machine": host,
        "args": vars(options),
        "results": results,
        "targets": goals,
    }
    path.write_text(json.dumps(document, indent=1))


def failures(results: Results) -> list[str]:
    """``scenario: strategy`` for every row that reports a failure."""
    return [
        f"{name}: {row['strategy']}"
        for name, rows in results.items()
        for row in rows
        if "failed" in row
    ]
