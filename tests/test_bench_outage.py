"""The benchmark harness's outage scenario: rows per phase, from made-up reports and a short run."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.__main__ import parse
from benchmarks._base import Options
from benchmarks._scenarios import SCENARIOS
from benchmarks._scenarios.outage import PHASES, phase_rows

# The pause runs from 10.0 to 15.0 (wall clock); the stream started at 8.0.
PAUSED, RESUMED = 10.0, 15.0


def _report() -> dict[str, Any]:
    names = ["hits", "misses", "computes", "backend_errors", "reconnects", "connect_errors"]
    return {
        "started": 8.0,
        "requests": [
            [8.5, 0.001, "ok"],
            [9.0, 0.002, "ok"],
            [11.0, 4.0, "ok"],
            [12.0, 30.0, "hung"],
            [14.0, 1.0, "TimeoutError"],
            [15.5, 0.001, "ok"],
        ],
        "computes": [7.9, 8.6, 15.2],  # the first one is the warm-up's
        "counter_names": names,
        "counters": [
            [7.95, 0, 1, 1, 0, 0, 0],
            [9.0, 2, 2, 2, 0, 0, 0],
            [14.0, 2, 2, 2, 3, 0, 0],
            [15.25, 3, 3, 3, 3, 1, 0],
        ],
    }


def test_each_phase_gets_its_requests_and_asyncstampede_its_first_hit() -> None:
    rows = phase_rows("asyncstampede", _report(), PAUSED, RESUMED, Options())
    assert [row["phase"] for row in rows] == list(PHASES)
    before, during, after = rows
    assert (before["requests"], during["requests"], after["requests"]) == (2, 3, 1)
    assert (during["errors"], during["hung"], during["error_kinds"]) == (1, 1, {"TimeoutError": 1})
    assert during["max_ms"] == 4000.0  # the hung request is counted, not timed
    assert (before["computes"], during["computes"], after["computes"]) == (1, 0, 1)
    assert during["counters"]["backend_errors"] == 3
    assert after["counters"]["reconnects"] == 1
    assert after["redis_again_s"] == pytest.approx(0.25)
    assert before["redis_again_s"] == during["redis_again_s"] == ""


def test_peers_rows_have_no_first_hit() -> None:
    """Only asyncstampede says which requests were hits; a peer's rows leave the column empty."""
    report = {**_report(), "counter_names": [], "counters": []}
    rows = phase_rows("naive", report, PAUSED, RESUMED, Options())
    assert all(row["redis_again_s"] == "" and "counters" not in row for row in rows)


def test_no_hit_after_the_resume_says_never() -> None:
    report = _report()
    report["counters"] = report["counters"][:3]
    assert phase_rows("asyncstampede", report, PAUSED, RESUMED, Options())[2]["redis_again_s"] == (
        "never"
    )


def test_quick_keeps_the_pause() -> None:
    """--quick shortens the phases around the pause, not the pause itself."""
    quick, full = parse(["--quick"]), parse([])
    assert quick.outage_pause == full.outage_pause
    assert quick.outage_before < full.outage_before
    assert quick.outage_after < full.outage_after
    assert "outage" in SCENARIOS


@pytest.mark.timeout(120)
def test_a_short_outage_is_measured_in_three_phases() -> None:
    """asyncstampede and naive, each on a server of its own paused 1.5 s: every phase measured."""
    options = Options(
        strategies=["asyncstampede", "naive", "embedded"],  # embedded has no server to lose
        outage_before=1.0,
        outage_pause=1.5,
        outage_after=1.5,
        outage_rate=100,
    )
    rows = SCENARIOS["outage"]("unused: each strategy gets a server of its own", options)
    assert [(row["strategy"], row["phase"]) for row in rows] == [
        (strategy, phase) for strategy in ("asyncstampede", "naive") for phase in PHASES
    ]
    for row in rows:
        assert "failed" not in row, row
        assert row["requests"] > 0, row
        assert not math.isnan(row["p50_ms"]), row
    after = rows[2]
    assert isinstance(after["redis_again_s"], float), after
    assert after["counters"]["hits"] > 0
