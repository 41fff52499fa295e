"""Run the benchmark harness: ``python -m benchmarks [--url URL] [--scenarios ...]``.

Without ``--url`` it starts a throwaway Redis on a free loopback port (the
same way the tests do, with keyspace notifications on for the keyspace wake
transport's row) and stops it at the end. ``--cluster`` adds the cluster
scenario, which starts a throwaway Redis Cluster of its own. It prints
markdown tables, and writes raw JSON and a PNG plot under
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

from ._base import ALL_STRATEGIES, ALL_TRANSPORTS, Options, Results
from ._figure import plot
from ._report import RESULTS, failures, machine, scenario_tables, table, write_json
from ._scenarios import DEFAULT_SCENARIOS, SCENARIOS
from ._server import KEYSPACE_EVENTS, server_info, throwaway_server
from ._targets import targets


def parse(argv: list[str] | None = None) -> Options:
    """The command line, as `Options`; exits with a usage message on a bad one."""
    d = Options()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add = parser.add_argument
    add("--url", help="a Redis to use instead of a throwaway one (loopback only)")
    add(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated: " + ",".join(SCENARIOS) + " (default: all but cluster)",
    )
    add(
        "--cluster",
        action="store_true",
        help="add the cluster scenario: the herd on one Redis and on a throwaway "
        "3-primary Redis Cluster, side by side",
    )
    add("--strategies", default=",".join(ALL_STRATEGIES))
    add(
        "--transports",
        default=",".join(ALL_TRANSPORTS),
        help="the wake transports of the wake-transports scenario, comma-separated",
    )
    add("--processes", type=int, default=d.processes)
    add("--concurrency", default="10,50")
    add("--durations", default="10,100,1000", help="compute durations, ms")
    add("--repeat", type=int, default=d.repeat)
    add("--wakeups", type=int, default=d.wakeups)
    add("--hit-seconds", type=float, default=d.hit_seconds)
    add("--hit-rounds", type=int, default=d.hit_rounds)
    add("--hit-concurrency", type=int, default=d.hit_concurrency)
    add("--churn-seconds", type=float, default=d.churn_seconds)
    add("--churn-rate", type=float, default=d.churn_rate, help="requests/s per process")
    add("--churn-keys", type=int, default=d.churn_keys)
    add("--churn-zipf", type=float, default=d.churn_zipf)
    add("--churn-compute-ms", type=int, default=d.churn_compute_ms)
    add("--churn-ttl", type=float, default=d.churn_ttl)
    add("--churn-value-bytes", type=int, default=d.churn_value_bytes)
    add("--churn-maxmemory", default=d.churn_maxmemory)
    add("--crash-concurrency", type=int, default=d.crash_concurrency)
    add(
        "--crash-cap", type=float, default=d.crash_cap, help="seconds before waiters count as stuck"
    )
    add("--steady-seconds", type=float, default=d.steady_seconds)
    add("--steady-concurrency", type=int, default=d.steady_concurrency)
    add("--steady-compute-ms", type=int, default=d.steady_compute_ms)
    add("--steady-ttl", type=float, default=d.steady_ttl)
    add(
        "--steady-rates",
        default="10,100,1000,10000",
        help="total reads/s of the refresh-rate sweep (empty: skip it)",
    )
    add("--steady-rate-seconds", type=float, default=d.steady_rate_seconds)
    add("--outage-before", type=float, default=d.outage_before, help="seconds before the pause")
    add("--outage-pause", type=float, default=d.outage_pause, help="seconds the server is paused")
    add("--outage-after", type=float, default=d.outage_after, help="seconds after the pause")
    add("--outage-rate", type=float, default=d.outage_rate, help="requests/s")
    add("--outage-hot-keys", type=int, default=d.outage_hot_keys)
    add("--outage-cold-share", type=float, default=d.outage_cold_share)
    add("--outage-compute-ms", type=int, default=d.outage_compute_ms)
    add(
        "--outage-cap",
        type=float,
        default=d.outage_cap,
        help="seconds before a request counts as hung",
    )
    add("--quick", action="store_true", help="fewer repetitions, for a smoke run")
    args = parser.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.transports = [t for t in args.transports.split(",") if t]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.durations = [int(x) for x in args.durations.split(",")]
    args.steady_rates = [float(x) for x in args.steady_rates.split(",") if x]
    options = Options(**vars(args))
    if options.cluster and "cluster" not in _scenarios(options):
        options.scenarios = ",".join([*_scenarios(options), "cluster"])
    options.cluster = "cluster" in _scenarios(options)
    if options.quick:
        options.repeat, options.wakeups, options.hit_rounds = 1, 50, 1
        options.hit_seconds, options.churn_seconds, options.steady_seconds = 1.0, 3.0, 6.0
        options.steady_rate_seconds = 4.0
        # The pause itself stays as long: it is what is measured.
        options.outage_before, options.outage_after = 2.0, 5.0
    unknown = (
        [s for s in _scenarios(options) if s not in SCENARIOS]
        + [s for s in options.strategies if s not in ALL_STRATEGIES]
        + [t for t in options.transports if t not in ALL_TRANSPORTS]
    )
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    return options


def _scenarios(options: Options) -> list[str]:
    return [s for s in options.scenarios.split(",") if s]


def main() -> None:
    options = parse()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    results: Results = {}
    with ExitStack() as stack:
        url = options.url
        if not url:
            # Keyspace notifications (K$gx) for the wake-transports scenario's
            # keyspace row: asyncstampede never sets them on a server itself.
            url = stack.enter_context(throwaway_server(*KEYSPACE_EVENTS))
            print(f"started a throwaway server at {url}", file=sys.stderr)
        for name in _scenarios(options):
            results[name] = SCENARIOS[name](url, options)
            print(scenario_tables(name, results[name]))
        host = machine(server_info(url))
    goals = targets(results)
    if goals:
        print("\n### targets\n")
        print(table(goals, ["target", "figure", "met"]))

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{run_id}.json"
    write_json(out, run_id, host, options, results, goals)
    png = RESULTS / f"{run_id}.png"
    wrote_png = plot(results, options, run_id, host, png)
    print(f"\nraw results: {out}" + (f"\nplot: {png}" if wrote_png else ""))
    print(f"machine: {host}")
    failed = failures(results)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
