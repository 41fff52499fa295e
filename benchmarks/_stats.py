"""The few statistics the harness reports."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The *q* quantile (0 to 1) of *values*, nearest rank; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Iterable[float]) -> float:
    """The median of *values*, NaN when there are none."""
    listed = list(values)
    return statistics.median(listed) if listed else float("nan")


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean of *values*, NaN when there are none."""
    listed = list(values)
    return sum(listed) / len(listed) if listed else float("nan")
