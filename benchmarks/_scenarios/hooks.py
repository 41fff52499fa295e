"""hooks: what hooks cost a hit: hits/s with no hook, a no-op one, OpenTelemetry, Prometheus.

Every hit hands the hooks a `Hit` record (built only when there are
hooks); the OpenTelemetry and Prometheus hooks then bump a counter and
record the read's duration in a histogram. The four variants run side by
side in one run, each in worker processes of its own that stay up through
every round; each round runs them one after another, in a rotating order,
and each variant's figure is the median over the rounds of its hits/s as a
ratio to the no-hook variant's in the same round, so the machine's drift
cancels out. Keys as in the ``hits`` scenario's headline: coroutine i of
process n reads its own hot key, every request one round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

from .._base import Options, Row, failed, fresh_namespace, progress
from .._pool import Worker, ask_all, worker_pool
from .._stats import mean, median

# Variant shown -> the worker strategy that runs it.
VARIANTS = {
    "no hooks": "asyncstampede",
    "no-op hook": "asyncstampede-hook-noop",
    "OpenTelemetry": "asyncstampede-otel",
    "OpenTelemetry, every hit's duration": "asyncstampede-otel-counts",
    "Prometheus": "asyncstampede-prometheus",
}
NOTES = {
    "no-op hook": "hooks=[lambda event: None]",
    "OpenTelemetry": "SDK MeterProvider (in-memory reader) + TracerProvider, no exporter; "
    "one hit's duration in 16 (the default)",
    "OpenTelemetry, every hit's duration": "the same with hit_durations=1",
    "Prometheus": "prometheus_client on a CollectorRegistry of its own; one hit's duration in 16",
}


def run(url: str, options: Options) -> list[Row]:
    """P processes x C coroutines per variant, hot distinct keys, ``hit_rounds`` rounds."""
    names = list(VARIANTS)
    seconds, c = options.hit_seconds, options.hit_concurrency
    bar = progress(options.hit_rounds * len(names), "hooks")
    rps: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    p99: dict[str, list[float]] = {n: [] for n in names}
    try:
        with ExitStack() as stack:
            pools: dict[str, list[Worker]] = {}
            for name in names:
                pools[name] = stack.enter_context(
                    worker_pool(VARIANTS[name], url, fresh_namespace(), options.processes)
                )
                _loop(pools[name], lambda n: f"hitsd hot-{n} 0.2 {c}")  # fill the keys
            for r in range(options.hit_rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                this: dict[str, float] = {}
                for name in order:
                    figures = _loop(pools[name], lambda n: f"hitsd hot-{n} {seconds} {c}")
                    this[name] = figures["rps"]
                    p99[name].append(figures["p99_ms"])
                    bar.update()
                for name in names:
                    rps[name].append(this[name])
                    ratios[name].append(this[name] / this["no hooks"])
    except Exception as exc:
        bar.close()
        return [failed("hooks", exc)]
    bar.close()
    return [
        {
            "strategy": name,
            "rps": mean(rps[name]),
            "ratio_to_no_hooks": median(ratios[name]),
            "worst_round_ratio": min(ratios[name]),
            "p99_ms": max(p99[name]),
            "note": NOTES.get(name, ""),
        }
        for name in names
    ]


def _loop(workers: list[Worker], command: Callable[[int], str]) -> dict[str, float]:
    reports = ask_all(workers, command)
    seconds = max(r["seconds"] for r in reports)
    return {
        "rps": sum(r["requests"] for r in reports) / seconds,
        "p99_ms": max(r["p99"] for r in reports) * 1000,
    }
