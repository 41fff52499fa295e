"""asyncstampede's targets, judged on one run's figures: the harness's verdict.

`targets` reads the rows the scenarios returned (the JSON's ``results``) and
nothing else, so it can be checked on made-up rows (tests/test_bench_targets.py).
"""

from __future__ import annotations

import inspect

from asyncstampede import Stampede

from ._base import Results, Row

# The cluster's server commands per request, as a multiple of one Redis's in
# the same run, at the same D and C: the herd's own commands are the same 19
# on both (SPUBLISH for PUBLISH), and on top each process of the cluster
# re-reads the topology (CLUSTER SLOTS) every 10 s, which falls into a herd's
# count now and then (0 to 1 a herd on average, 2 in an unlucky one). 1.15x is
# up to 2.85 commands more in a herd of 19: it passes two topology reads and
# fails one command more per waiting process (3 in a herd of 4 processes).
CLUSTER_COMMANDS_RATIO = 1.15


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
        ratios = [
            _ratio(many["server_per_request"], one["server_per_request"]) for one, many in pairs
        ]
        more = [
            (many["server_per_request"] - one["server_per_request"])
            * many["concurrency"]
            * many["processes"]
            for one, many in pairs
        ]
        judge(
            "cluster: exactly 1.00 computes per herd, server commands per request "
            f"at most {CLUSTER_COMMANDS_RATIO:g}x one Redis's (every D and C)",
            "{} computes; {:.2f}x to {:.2f}x ({:+.1f} to {:+.1f} commands per herd)".format(
                ", ".join(f"{c:.2f}" for c in computes),
                min(ratios),
                max(ratios),
                min(more),
                max(more),
            ),
            computes == [1.0] and max(ratios) <= CLUSTER_COMMANDS_RATIO,
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
