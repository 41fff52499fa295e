"""Run the benchmark harness: ``python -m benchmarks [--url URL] [--scenarios ...]``.

Without ``--url`` it starts a throwaway Redis on a free loopback port (the
same way the tests do) and stops it at the end. It prints markdown tables,
and writes raw JSON and a PNG plot under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from asyncstampede.testing import RedisServer

from ._worker import percentile

ALL_STRATEGIES = ["naive", "sleep-poll", "cashews", "aiocache", "asyncstampede", "embedded"]
RESULTS = Path(__file__).with_name("results")


class Worker:
    def __init__(self, strategy: str, url: str, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", strategy, url, namespace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        self.expect("ready")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return line.strip()

    def expect(self, word: str) -> None:
        line = self.read()
        if line != word:
            raise RuntimeError(f"expected {word!r}, got {line!r}")

    def report(self) -> dict[str, Any]:
        return dict(json.loads(self.read()))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def server_commands(client: redis.Redis) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def progress(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the bench group

        class Bar:
            def update(self, n: int = 1) -> None: ...
            def close(self) -> None: ...

        return Bar()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


# ---------------------------------------------------------------- scenarios


def scenario_herd(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """P processes x C coroutines ask for one missing key at the same instant."""
    client = redis.Redis.from_url(url)
    rows: list[dict[str, Any]] = []
    plan = [(s, d, c) for s in args.strategies for d in args.durations for c in args.concurrency]
    bar = progress(len(plan) * args.repeat, "herd")
    for strategy in args.strategies:
        ns = f"bench-{uuid.uuid4().hex[:8]}"
        workers: list[Worker] = []
        try:
            workers.extend(Worker(strategy, url, ns) for _ in range(args.processes))
            # Warm-up herd, not measured: open every connection the strategy
            # will use, so no figure includes connection set-up.
            start = time.time() + 0.2
            for w in workers:
                w.send(f"herd {start} warmup-{uuid.uuid4().hex[:8]} {max(args.concurrency)} 10")
            for w in workers:
                w.report()
            for d in args.durations:
                for c in args.concurrency:
                    runs = []
                    for _ in range(args.repeat):
                        key = f"herd-{uuid.uuid4().hex[:8]}"
                        before = server_commands(client)
                        start = time.time() + 0.3
                        for w in workers:
                            w.send(f"herd {start} {key} {c} {d}")
                        reports = [w.report() for w in workers]
                        runs.append((reports, server_commands(client) - before - 1))
                        bar.update()
                    rows.append(_herd_row(strategy, d, c, args.processes, runs))
        except Exception as exc:  # one broken strategy must not sink the whole run
            print(f"\n{strategy}: failed: {exc!r}", file=sys.stderr)
            rows.append({"strategy": strategy, "failed": repr(exc)})
        finally:
            for w in workers:
                w.close()
    bar.close()
    client.close()
    return rows


def _herd_row(
    strategy: str, d: int, c: int, p: int, runs: list[tuple[list[dict[str, Any]], int]]
) -> dict[str, Any]:
    latencies = [x * 1000 for reports, _ in runs for r in reports for x in r["latencies"]]
    requests = p * c * len(runs)
    return {
        "strategy": strategy,
        "compute_ms": d,
        "concurrency": c,
        "processes": p,
        "computes_per_herd": sum(r["computes"] for reports, _ in runs for r in reports) / len(runs),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "sent_per_request": sum(r["sent"] for reports, _ in runs for r in reports) / requests,
        "server_per_request": sum(n for _, n in runs) / requests,
        "errors": sum(len(r["errors"]) for reports, _ in runs for r in reports),
    }


def scenario_wakeup(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Commit-to-resume latency across processes, next to a bare pub/sub hop.

    asyncstampede: a holder computes in one process, a waiter waits in another;
    the latency runs from the holder's compute returning (before the commit
    is sent) to the waiter's ``get_or_compute`` returning. Baseline, in the
    same run and alternating with it: a bare redis-py PUBLISH in one process
    to a bare subscriber in another, from before the PUBLISH is sent to the
    subscriber reading it. The difference is what the library adds.
    """
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    holder = Worker("asyncstampede", url, ns)
    waiter = Worker("asyncstampede", url, ns)
    samples: dict[str, list[float]] = {"asyncstampede": [], "bare pub/sub": []}
    bar = progress(args.wakeups * 2, "wakeup")
    try:
        waiter.send(f"subscribe {ns}-bare")
        waiter.expect("subscribed")
        for i in range(args.wakeups):
            key = f"wake-{i}"
            holder.send(f"hold {key}")
            holder.expect("computing")
            waiter.send(f"wait {key}")
            waiter.expect("waiting")
            time.sleep(0.01)  # the waiter subscribes and re-checks well within this
            holder.send("release")
            report = waiter.report()
            holder.expect("committed")
            samples["asyncstampede"].append((report["resumed"] - report["value_t"]) * 1000)
            bar.update()
            time.sleep(0.01)  # same idle gap before the baseline hop
            holder.send(f"publish {ns}-bare")
            holder.expect("published")
            report = waiter.report()
            samples["bare pub/sub"].append((report["resumed"] - report["value_t"]) * 1000)
            bar.update()
    finally:
        holder.close()
        waiter.close()
        bar.close()
    return [
        {
            "path": path,
            "runs": len(xs),
            "p50_ms": percentile(xs, 0.5),
            "p90_ms": percentile(xs, 0.9),
            "p99_ms": percentile(xs, 0.99),
            "max_ms": max(xs),
            "samples_ms": xs,
        }
        for path, xs in samples.items()
    ]


SCENARIOS = {"herd": scenario_herd, "wakeup": scenario_wakeup}


# ---------------------------------------------------------------- output


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "failed")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


COLUMNS = {
    "herd": [
        "strategy",
        "compute_ms",
        "concurrency",
        "computes_per_herd",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "sent_per_request",
        "server_per_request",
        "errors",
    ],
    "wakeup": ["path", "runs", "p50_ms", "p90_ms", "p99_ms", "max_ms"],
}


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    herd = [r for r in results.get("herd", []) if "failed" not in r]
    if not herd:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    strategies = sorted({r["strategy"] for r in herd}, key=ALL_STRATEGIES.index)
    c_max = max(r["concurrency"] for r in herd)
    for s in strategies:
        rows = sorted(
            (r for r in herd if r["strategy"] == s and r["concurrency"] == c_max),
            key=lambda r: r["compute_ms"],
        )
        xs = [r["compute_ms"] for r in rows]
        axes[0].plot(xs, [r["computes_per_herd"] for r in rows], marker="o", label=s)
        axes[1].plot(xs, [r["p99_ms"] - r["compute_ms"] for r in rows], marker="o", label=s)
        axes[2].plot(xs, [r["server_per_request"] for r in rows], marker="o", label=s)
    titles = ["computes per herd", "p99 latency minus compute (ms)", "Redis commands per request"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("compute duration (ms)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"herd: {herd[0]['processes']} processes x {c_max} coroutines, one missing key")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--url", help="a Redis to use instead of a throwaway one (loopback only)")
    parser.add_argument(
        "--scenarios", default="herd,wakeup", help="comma-separated: " + ",".join(SCENARIOS)
    )
    parser.add_argument("--strategies", default=",".join(ALL_STRATEGIES))
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--concurrency", default="10,50")
    parser.add_argument("--durations", default="10,100,1000", help="compute durations, ms")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wakeups", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, for a smoke run")
    args = parser.parse_args()
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.durations = [int(x) for x in args.durations.split(",")]
    if args.quick:
        args.repeat, args.wakeups = 1, 50
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS] + [
        s for s in args.strategies if s not in ALL_STRATEGIES
    ]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")

    with ExitStack() as stack:
        if args.url:
            url = args.url
        else:
            server = stack.enter_context(RedisServer())
            url = server.url
            print(f"started a throwaway server at {url}", file=sys.stderr)
        results: dict[str, list[dict[str, Any]]] = {}
        for name in scenarios:
            results[name] = SCENARIOS[name](url, args)
            print(f"\n### {name}\n")
            print(table(results[name], COLUMNS[name]))
        info = redis.Redis.from_url(url).info("server")

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server": f"{info.get('redis_version')} ({info.get('executable', '')})",
    }
    out = RESULTS / f"{stamp}.json"
    out.write_text(
        json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=1)
    )
    png = RESULTS / f"{stamp}.png"
    wrote_png = plot(results, png)
    print(f"\nraw results: {out}" + (f"\nplot: {png}" if wrote_png else ""))
    print(f"machine: {machine}")


if __name__ == "__main__":
    main()
