"""asyncstampede's targets, judged on one run's figures: the harness's verdict.

`targets` reads the rows the scenarios returned (the JSON's ``results``) and
nothing else, so it can be checked on made-up rows (tests/test_bench_targets.py).
"""

from __future__ import annotations

import inspect

from asyncstampede import Stampede

from ._base import Results, Row
from ._scenarios.cluster import TOPOLOGY_COMMANDS

# The cluster herd's own server commands, as a multiple of one Redis's in the
# same run at the same D and C. They are the same 19 on both (SPUBLISH for
# PUBLISH); 1.15x is up to 2.85 more in a herd of 19, which passes a process
# that took one path more or less by chance and fails one command more per
# waiting process (3 in a herd of 4 processes).
CLUSTER_COMMANDS_RATIO = 1.15


# What a no-op hook may add to a hit, as a share of the client CPU a hit
# costs without hooks (about 25-30 µs here): building the `Hit` record and
# calling the hooks is about 0.8 µs.
HOOK_SHARE = 0.05


def targets(results: Results) -> list[Row]:
    """asyncstampede's targets (issue 3 of the project), judged on this run's figures.

    Only targets whose scenario ran, with asyncstampede among the strategies,
    are judged. Missing one does not fail the run: this is a report.
    """
    ours = "asyncstampede"
    rows: list[Row] = []

    def judge(target: str, figure: str, met: bool) -> None:
        rows.append({"target": target, "figure": figure, "met": "yes" if met else "**no**"})

    herd = [r for r in results.get("herd", []) if r["strategy"] == ours and "failed" not in r]
    if herd:
        computes = sorted({r["computes_per_herd"] for r in herd})
        judge(
            "herd: exactly 1.00 computes at every D",
            ", ".join(f"{c:.2f}" for c in computes),
            computes == [1.0],
        )

        def past_d(row: Row) -> float:
            return float(row["p99_ms"] - row["compute_ms"])

        worst = max(herd, key=past_d)
        figure = "D + {:.1f} ms at worst (D = {}, C = {})".format(
            past_d(worst), worst["compute_ms"], worst["concurrency"]
        )
        embedded = [r for r in results["herd"] if r["strategy"] == "embedded" and "failed" not in r]
        if embedded:
            figure += f"; embedded mode, no Redis: D + {max(map(past_d, embedded)):.1f} ms"
        judge("herd: p99 within D + 5 ms", figure, past_d(worst) <= 5.0)
        widest = max(r["concurrency"] for r in herd)
        per_request = [r["server_per_request"] for r in herd if r["concurrency"] == widest]
        judge(
            f"herd: < 0.1 server commands per request, flat in D (C = {widest})",
            " / ".join(f"{x:.3f}" for x in per_request),
            max(per_request) < 0.1 and max(per_request) - min(per_request) < 0.01,
        )
    hits = [r for r in results.get("hits", []) if r["strategy"] == ours and "failed" not in r]
    if hits:
        ratio = hits[0]["ratio_to_bare_get"]
        judge("hits: at least 0.95x a bare GET", f"{ratio:.2f}x", ratio >= 0.95)
    hooks = {r["strategy"]: r for r in results.get("hooks", []) if "failed" not in r}
    noop = hooks.get("no-op hook")
    if noop is not None and "hook_share_of_hit" in noop:
        beside = ", ".join(
            f"{name} {row['hook_us_per_hit']:.2f} µs"
            for name, row in hooks.items()
            if name not in ("no hooks", "no-op hook")
        )
        judge(
            f"hooks: calling hooks adds at most {HOOK_SHARE:.0%} to a hit's CPU (a no-op hook)",
            "{:.2f} µs of {:.1f} µs a hit ({:.1%}); {}".format(
                noop["hook_us_per_hit"],
                hooks["no hooks"]["cpu_us_per_hit"],
                noop["hook_share_of_hit"],
                beside,
            ),
            noop["hook_share_of_hit"] <= HOOK_SHARE,
        )
    churn = [r for r in results.get("churn", []) if "failed" not in r]
    mine = [r for r in churn if r["strategy"] == ours]
    others = [r for r in churn if r["strategy"] != ours]
    if mine and others:
        best_other = min(others, key=lambda r: r["computes_per_1k"])
        judge(
            "churn: fewer backend computes than every other strategy",
            "{:.1f} per 1k requests; next {} {:.1f}".format(
                mine[0]["computes_per_1k"], best_other["strategy"], best_other["computes_per_1k"]
            ),
            mine[0]["computes_per_1k"] < best_other["computes_per_1k"],
        )
    sweep = [
        r
        for r in results.get("steady", [])
        if r["strategy"] == ours and "read_rate" in r and "failed" not in r
    ]
    if sweep:
        judged = [r for r in sweep if r["read_rate"] >= 100]  # below, reads are too sparse
        judge(
            "steady: about one refresh per TTL at 100 reads/s and more (at most 1.25)",
            ", ".join(f"{r['refreshes_per_ttl']:.2f} at {r['read_rate']:g}/s" for r in sweep),
            bool(judged) and max(r["refreshes_per_ttl"] for r in judged) <= 1.25,
        )
    cluster = [r for r in results.get("cluster", []) if "failed" not in r]
    pairs = [
        (one, many)
        for one in cluster
        if one["strategy"] == ours
        for many in cluster
        if many["strategy"] == f"{ours}-cluster"
        and (many["compute_ms"], many["concurrency"]) == (one["compute_ms"], one["concurrency"])
    ]
    if pairs:
        computes = sorted({many["computes_per_herd"] for _, many in pairs})
        own = [_ratio(_commands(many), _commands(one)) for one, many in pairs]
        topology = [_commands(many, TOPOLOGY_COMMANDS) for _, many in pairs]
        whole = [
            _ratio(many["server_per_request"], one["server_per_request"]) for one, many in pairs
        ]
        judge(
            "cluster: exactly 1.00 computes per herd; the herd's server commands at most "
            f"{CLUSTER_COMMANDS_RATIO:g}x one Redis's at every D and C (topology reads aside)",
            "{} computes; {:.2f}x to {:.2f}x; topology reads {:.1f} to {:.1f} a herd "
            "(server commands per request {:.2f}x to {:.2f}x with them)".format(
                ", ".join(f"{c:.2f}" for c in computes),
                min(own),
                max(own),
                min(topology),
                max(topology),
                min(whole),
                max(whole),
            ),
            computes == [1.0] and max(own) <= CLUSTER_COMMANDS_RATIO,
        )
    crash = [r for r in results.get("crash", []) if r["strategy"] == ours and "failed" not in r]
    if crash:
        lock_ttl = inspect.signature(Stampede).parameters["lock_ttl"].default
        after = crash[0]["value_after_s"]
        judge(
            "crash: value within the lock TTL + 1 s",
            f"{after:.2f} s (lock_ttl {lock_ttl:g} s)",
            after <= lock_ttl + 1.0,
        )
    return rows


def _ratio(x: float, y: float) -> float:
    """*x* / *y*; nothing against nothing is 1, something against nothing infinite."""
    if y == 0:
        return 1.0 if x == 0 else float("inf")
    return x / y


def _commands(row: Row, only: frozenset[str] | None = None) -> float:
    """A herd row's server commands per herd: all but the topology reads, or those in *only*.

    Topology reads (see `TOPOLOGY_COMMANDS`) come on a clock, not per request.
    """
    counts: dict[str, float] = row["commands_per_herd"]
    if only is not None:
        return sum(n for name, n in counts.items() if name in only)
    return sum(n for name, n in counts.items() if name not in TOPOLOGY_COMMANDS)
