"""The soak program (``python -m benchmarks.soak``): its checks, its figures, and a short run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak._analysis import Compute, generations
from benchmarks.soak._faults import KINDS
from benchmarks.soak._values import (
    BUCKETS,
    bucket,
    hist_percentile,
    key_name,
    make_value,
    wrongness,
)

ROOT = Path(__file__).parent.parent
SECRET = b"0123456789abcdef"


def test_a_value_is_right_for_its_key_while_fresh() -> None:
    value = make_value(SECRET, "k1", 100.0, 100.05, 7, 3)
    assert wrongness(SECRET, "k1", 2.0, value, 101.0, 101.001, 1.0) is None
    # Round-tripped as asyncstampede stores it (orjson), it still checks out.
    assert wrongness(SECRET, "k1", 2.0, json.loads(json.dumps(value)), 101.0, 101.1, 1.0) is None


@pytest.mark.parametrize(
    ("change", "request_for", "issued", "why"),
    [
        ({}, "k2", 101.0, "wrong-key"),
        ({"pad": "x"}, "k1", 101.0, "corrupt"),  # the signature no longer fits
        ({"sig": "0" * 64}, "k1", 101.0, "corrupt"),
        ({"extra": 1}, "k1", 101.0, "corrupt"),
        ({}, "k1", 103.1, "stale"),  # ended at 100.05; TTL 2 s + slack 1 s passed
        ({}, "k1", 99.0, "future"),  # answered at 99.1, before its compute began
    ],
)
def test_a_wrong_value_is_caught(
    change: dict[str, object], request_for: str, issued: float, why: str
) -> None:
    """Another key's, mangled, forged, expired before it was asked for, or not yet made."""
    value = {**make_value(SECRET, "k1", 100.0, 100.05, 7, 3), **change}
    assert wrongness(SECRET, request_for, 2.0, value, issued, issued + 0.1, 1.0) == why


def test_a_value_of_another_run_is_caught() -> None:
    """Signed with another secret: no compute of this run made it."""
    value = make_value(b"another secret!!", "k1", 100.0, 100.05, 7, 3)
    assert wrongness(SECRET, "k1", 2.0, value, 101.0, 101.1, 1.0) == "corrupt"
    assert wrongness(SECRET, "k1", 2.0, None, 101.0, 101.1, 1.0) == "corrupt"


def test_histogram_percentiles_are_within_a_bucket() -> None:
    counts = [0] * BUCKETS
    for ms in range(1, 101):
        counts[bucket(ms / 1000)] += 1
    assert 0.050 <= hist_percentile(counts, 0.5) <= 0.050 * 1.1
    assert 0.099 <= hist_percentile(counts, 0.99) <= 0.099 * 1.1


def test_generations_count_duplicates_and_redos() -> None:
    """Computes of one expiry are one generation; a new one starts half a TTL after the value."""
    # key_name(1) has TTL 2 s with a base of 2 s: half a TTL is 1 s.
    k = key_name(1)
    computes = [
        Compute(k, 0.0, 0.05),
        Compute(k, 0.02, 0.07),  # a duplicate: started before the first had ended
        Compute(k, 1.5, 1.55),  # the next generation (an early refresh)
        Compute(k, 10.0, None),  # a holder SIGKILLed at 10.1...
        Compute(k, 15.0, 15.05),  # ...and the one that took over: the same generation
        Compute(k, 30.0, 30.05),
    ]
    faults = [{"kind": "kill-holder", "t": 10.1, "injected": True}]
    found = generations(computes, 2.0, faults)
    assert found["generations"] == 4
    assert found["histogram"] == {"1": 2, "2": 2}
    assert found["max"] == 2
    assert found["excess_by_cause"] == {"none": 1, "kill-holder": 1}


@pytest.mark.timeout(120)
def test_a_short_soak_injects_every_fault_and_every_caller_gets_a_right_answer(
    tmp_path: Path,
) -> None:
    """8 s, 2 processes, faults every 0.2-0.5 s: nothing hung, nothing wrong, each fault met."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--seconds",
            "8",
            "--processes",
            "2",
            "--fault-interval",
            "0.2,0.5",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = tmp_path.glob("soak-*.json")
    document = json.loads(path.read_text())
    totals = document["totals"]
    assert totals["requests"] > 0
    assert totals["hung"] == 0
    assert totals["wrong"] == 0
    injected = {f["kind"] for f in document["faults"] if f["injected"]}
    assert injected == set(KINDS)
    assert {p["end"] for p in document["processes"]} <= {"stopped", "killed"}
    assert document["generations"]["generations"] > 0
    assert "| wrong values | 0" in done.stdout
