"""steady: a hot key read for a while, its TTL shorter than the run (freshness policies)."""

from __future__ import annotations

from .._base import Options, Row, failed, fresh_namespace, progress
from .._pool import ask_all, worker_pool

STRATEGIES = ["asyncstampede", "asyncstampede-swr", "asyncstampede-plain", "sleep-poll"]
# The refresh-rate sweep: XFetch's window bounded (the default) against as published.
SWEEP = ["asyncstampede", "asyncstampede-xfetch-published"]
WARMUP = 2.0  # seconds before latencies and computes count


def run(url: str, options: Options) -> list[Row]:
    """4 processes keep reading one key (TTL 1 s, compute 100 ms) for 20 s.

    With XFetch or stale-while-revalidate no request after warm-up should wait
    for a compute; without them one herd of requests waits once per TTL.
    ``slow`` counts requests that took over half the compute time. Then,
    when asyncstampede runs, a second set of rows (they have a ``read_rate``):
    refreshes per TTL period at read rates from 10 to 10,000 a second (see
    `_refresh_rate_sweep`).
    """
    rows: list[Row] = []
    strategies = [s for s in STRATEGIES if s in options.strategies or s.startswith("asyncstampede")]
    bar = progress(len(strategies), "steady")
    seconds = options.steady_seconds
    command = (
        f"steady hot {seconds} {options.steady_concurrency} "
        f"{options.steady_compute_ms} {options.steady_ttl} {WARMUP}"
    )
    for strategy in strategies:
        try:
            with worker_pool(strategy, url, fresh_namespace(), options.processes) as workers:
                reports = ask_all(workers, command, timeout=seconds + 60)
            computes = sum(r["computes"] for r in reports)
            rows.append(
                {
                    "strategy": strategy,
                    "requests": sum(r["requests"] for r in reports),
                    "p50_ms": max(r["p50"] for r in reports) * 1000,
                    "p99_ms": max(r["p99"] for r in reports) * 1000,
                    "max_ms": max(r["max"] for r in reports) * 1000,
                    "slow": sum(r["slow"] for r in reports),
                    "computes": computes,
                    "computes_per_ttl": computes / (seconds / options.steady_ttl),
                }
            )
        except Exception as exc:
            rows.append(failed(strategy, exc))
        finally:
            bar.update()
    bar.close()
    if "asyncstampede" in strategies and options.steady_rates:
        rows.extend(_refresh_rate_sweep(url, options))
    return rows


def _refresh_rate_sweep(url: str, options: Options) -> list[Row]:
    """Refreshes per TTL period against the read rate, XFetch bounded and as published.

    The processes together read one key RATE times a second (paced, open
    loop), TTL and compute as above; computes after the warm-up are all
    early refreshes (``slow`` counts reads that waited for one).
    """
    rows: list[Row] = []
    bar = progress(len(SWEEP) * len(options.steady_rates), "steady: read rates")
    seconds = options.steady_rate_seconds
    for rate in options.steady_rates:
        command = (
            f"steady hot {seconds + WARMUP} {options.steady_concurrency} "
            f"{options.steady_compute_ms} {options.steady_ttl} {WARMUP} "
            f"{rate / options.processes}"
        )
        for strategy in SWEEP:
            try:
                with worker_pool(strategy, url, fresh_namespace(), options.processes) as workers:
                    reports = ask_all(workers, command, timeout=seconds + WARMUP + 60)
                refreshes = sum(r["computes_after_warmup"] for r in reports)
                rows.append(
                    {
                        "strategy": strategy,
                        "read_rate": rate,
                        "reads_per_s": sum(r["requests"] for r in reports) / seconds,
                        "refreshes": refreshes,
                        "refreshes_per_ttl": refreshes / (seconds / options.steady_ttl),
                        "slow": sum(r["slow"] for r in reports),
                        "p99_ms": max(r["p99"] for r in reports) * 1000,
                    }
                )
            except Exception as exc:
                rows.append({**failed(strategy, exc), "read_rate": rate})
            finally:
                bar.update()
    bar.close()
    return rows
