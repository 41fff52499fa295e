"""The benchmark harness's verdict on the project's targets, from a run's rows."""

from __future__ import annotations

from typing import Any

from benchmarks._targets import targets


def _herd(strategy: str, d: int, c: int, p99: float, computes: float, per_request: float) -> Any:
    return {
        "strategy": strategy,
        "compute_ms": d,
        "concurrency": c,
        "p99_ms": p99,
        "computes_per_herd": computes,
        "server_per_request": per_request,
    }


def _results(
    *, p99_past: float = 4.0, per_request: float = 0.09, ratio: float = 3.0, hook_us: float = 0.8
) -> Any:
    return {
        "herd": [
            _herd("asyncstampede", 10, 10, 10 + 3.0, 1.0, 0.45),
            _herd("asyncstampede", 10, 50, 10 + p99_past, 1.0, per_request),
            _herd("asyncstampede", 1000, 50, 1000 + 2.0, 1.0, per_request),
            _herd("embedded", 10, 50, 10 + 1.5, 4.0, 0.0),
        ],
        "hits": [{"strategy": "asyncstampede", "ratio_to_bare_get": ratio}],
        "churn": [
            {"strategy": "naive", "computes_per_1k": 300.0},
            {"strategy": "asyncstampede", "computes_per_1k": 280.0},
        ],
        "crash": [{"strategy": "asyncstampede", "value_after_s": 4.5}],
        "hooks": [
            {"strategy": "no hooks", "cpu_us_per_hit": 25.0, "hook_us_per_hit": 0.0},
            {
                "strategy": "no-op hook",
                "cpu_us_per_hit": 26.0,
                "hook_us_per_hit": hook_us,
                "hook_share_of_hit": hook_us / 25.0,
            },
            {"strategy": "Prometheus", "cpu_us_per_hit": 28.0, "hook_us_per_hit": 2.25},
        ],
    }


def test_every_target_met() -> None:
    """A run that meets every target is judged so, with the herd's p99 figure spelled out."""
    rows = targets(_results())
    assert [row["met"] for row in rows] == ["yes"] * 7
    hooks = next(row for row in rows if row["target"].startswith("hooks"))
    assert hooks["figure"] == "0.80 µs of 25.0 µs a hit (3.2%); Prometheus 2.25 µs"
    herd_p99 = next(row for row in rows if "p99" in row["target"])
    assert herd_p99["figure"] == (
        "D + 4.0 ms at worst (D = 10, C = 50); embedded mode, no Redis: D + 1.5 ms"
    )


def test_each_miss_is_reported() -> None:
    """Each target a run misses is named; the ones it meets are not."""
    missed = {
        row["target"]
        for row in targets(_results(p99_past=6.0, per_request=0.1, ratio=0.9, hook_us=1.5))
        if row["met"] != "yes"
    }
    assert missed == {
        "herd: p99 within D + 5 ms",
        "herd: < 0.1 server commands per request, flat in D (C = 50)",
        "hits: at least 0.95x a bare GET",
        "hooks: calling hooks adds at most 5% to a hit's CPU (a no-op hook)",
    }


def test_only_scenarios_that_ran_are_judged() -> None:
    """A run of one scenario is judged on that scenario's targets alone."""
    assert [row["target"] for row in targets({"hits": _results()["hits"]})] == [
        "hits: at least 0.95x a bare GET"
    ]
