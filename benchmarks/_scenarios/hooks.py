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

Throughput on a shared machine moves by a quarter from round to round, more
than a hook costs; so each variant's client CPU per hit (its worker
processes' CPU time over their hits: the event loop, the Redis client and
the hooks, not the server) is measured too, and what a hook adds to it
(its median, over the rounds, of the difference to the no-hook variant in
the same round) is shown. That is still noisy by a few microseconds, more
than a no-op hook costs; so each worker also measures what its hooks add
to a hit on the real hit path, in one process, alternating an instance
with them and one without (embedded, so nothing but the hit's own work is
timed; 8 rounds of 10,000 hits each: ``hook_us_per_hit``, see the worker's
``hook_cost``), and the target judges that against the no-hook variant's
CPU per hit.
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
    cpu: dict[str, list[float]] = {n: [] for n in names}  # microseconds per hit
    extra: dict[str, list[float]] = {n: [] for n in names}  # ... more than no hooks
    try:
        with ExitStack() as stack:
            pools: dict[str, list[Worker]] = {}
            for name in names:
                pools[name] = stack.enter_context(
                    worker_pool(VARIANTS[name], url, fresh_namespace(), options.processes)
                )
                _loop(pools[name], lambda n: f"hitsd hot-{n} 0.2 {c}")  # fill the keys
            # (Timed before the rounds, one worker at a time: nothing else runs.)
            hook_us = {
                name: median([r["us"] for w in pools[name] for r in ask_all([w], "hookcost 10000")])
                for name in names
            }
            for r in range(options.hit_rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                this: dict[str, float] = {}
                for name in order:
                    figures = _loop(pools[name], lambda n: f"hitsd hot-{n} {seconds} {c}")
                    this[name] = figures["rps"]
                    p99[name].append(figures["p99_ms"])
                    cpu[name].append(figures["cpu_us"])
                    bar.update()
                for name in names:
                    rps[name].append(this[name])
                    ratios[name].append(this[name] / this["no hooks"])
                    extra[name].append(cpu[name][-1] - cpu["no hooks"][-1])
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
            "cpu_us_per_hit": median(cpu[name]),
            "extra_cpu_us_per_hit": median(extra[name]),
            "hook_us_per_hit": hook_us[name],
            "hook_share_of_hit": hook_us[name] / median(cpu["no hooks"]),
            "note": NOTES.get(name, ""),
        }
        for name in names
    ]


def _loop(workers: list[Worker], command: Callable[[int], str]) -> dict[str, float]:
    reports = ask_all(workers, command)
    seconds = max(r["seconds"] for r in reports)
    hits = sum(r["requests"] for r in reports)
    return {
        "rps": hits / seconds,
        "p99_ms": max(r["p99"] for r in reports) * 1000,
        "cpu_us": sum(r["cpu"] for r in reports) / hits * 1e6,
    }
