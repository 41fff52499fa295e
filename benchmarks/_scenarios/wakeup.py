"""wakeup: commit-to-resume latency across processes, next to a bare pub/sub hop."""

from __future__ import annotations

import time

from .._base import Options, Row, fresh_namespace, progress
from .._pool import worker_pool
from .._stats import percentile


def run(url: str, options: Options) -> list[Row]:
    """asyncstampede: a holder computes in one process, a waiter waits in another.

    The latency runs from the holder's compute returning (before the commit
    is sent) to the waiter's ``get_or_compute`` returning. Baseline, in the
    same run and alternating with it: a bare redis-py PUBLISH in one process
    to a bare subscriber in another, from before the PUBLISH is sent to the
    subscriber reading it. The difference is what the library adds.
    """
    ns = fresh_namespace()
    samples: dict[str, list[float]] = {"asyncstampede": [], "bare pub/sub": []}
    bar = progress(options.wakeups * 2, "wakeup")
    try:
        with worker_pool("asyncstampede", url, ns, 2) as (holder, waiter):
            waiter.send(f"subscribe {ns}-bare")
            waiter.expect("subscribed")
            for i in range(options.wakeups):
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
