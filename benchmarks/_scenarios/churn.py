"""churn: a small ``maxmemory`` with ``allkeys-lru``, Zipf-distributed keys, TTLs."""

from __future__ import annotations

from .._base import Options, Row, failed, progress
from .._pool import ask_all, worker_pool
from .._server import evicted_keys, throwaway_server


def run(url: str, options: Options) -> list[Row]:
    """An open-loop request stream per process; backend computes and latencies.

    Always on a throwaway server of its own (it needs ``--maxmemory``, which is
    never set on a server the harness did not start), one fresh server per
    strategy so none inherits another's cache; *url* is not used.
    """
    rows: list[Row] = []
    strategies = [s for s in options.strategies if s != "embedded"]
    bar = progress(len(strategies), "churn")
    command = (
        f"churn {options.churn_seconds} {options.churn_rate} {options.churn_keys} "
        f"{options.churn_zipf} {options.churn_compute_ms} {options.churn_ttl} "
        f"{options.churn_value_bytes}"
    )
    for strategy in strategies:
        try:
            server_args = ("--maxmemory", options.churn_maxmemory)
            with throwaway_server(*server_args, "--maxmemory-policy", "allkeys-lru") as own:
                # The workers close before the server goes: their clients
                # should not see it vanish.
                with worker_pool(strategy, own, "churn", options.processes) as workers:
                    reports = ask_all(workers, command)
                evicted = evicted_keys(own)
            requests = sum(r["requests"] for r in reports)
            computes = sum(r["computes"] for r in reports)
            seconds = max(r["seconds"] for r in reports)
            rows.append(
                {
                    "strategy": strategy,
                    "requests": requests,
                    "shed": sum(r["shed"] for r in reports),
                    "computes_per_s": computes / seconds,
                    "computes_per_1k": 1000 * computes / requests if requests else float("nan"),
                    "hit_ratio": 1 - computes / requests if requests else float("nan"),
                    "p50_ms": max(r["p50"] for r in reports) * 1000,
                    "p99_ms": max(r["p99"] for r in reports) * 1000,
                    "evicted": evicted,
                    "errors": sum(r["errors"] for r in reports),
                }
            )
        except Exception as exc:
            rows.append(failed(strategy, exc))
        finally:
            bar.update()
    bar.close()
    return rows
