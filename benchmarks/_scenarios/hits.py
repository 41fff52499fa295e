"""hits: requests per second on hot cached keys, as a ratio to a bare GET loop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis

from .._base import Options, Row, failed, fresh_namespace, progress
from .._pool import Worker, ask_all, worker_pool
from .._stats import mean, median

NOTES = {
    "embedded": "no network (in-process)",
    # What its bar hides: cashews' documented stampede protection takes a
    # Redis lock around every call, hits included (SET NX, GET, unlock script).
    "cashews": "lock=True: a Redis lock around every hit",
    "cashews-nolock": "plain @cache: no stampede protection (a herd computes per caller)",
}


def run(url: str, options: Options) -> list[Row]:
    """P processes x C coroutines loop for a few seconds on hot keys.

    Distinct keys (the headline figure): coroutine i of process n reads its
    own key ``hot-n-i``, so no two request streams share a key, in a process
    or across processes: no coalescing can help, every request pays its
    round trip, and no strategy meets another process on a lock. Each round
    is paired with a bare redis-py GET loop on a value of the same size in the
    same processes just before it; the median of the rounds' ratios is the
    figure, so the machine's speed (and its drift) cancels out.
    ``same_key_ratio`` is the same with all coroutines of all processes on one
    key, where in-process coalescing may serve many callers with one read;
    there each coalesced caller gets its own copy of the value, and the
    ``asyncstampede-shared`` row (``share_values=True``, run beside
    ``asyncstampede``) shows what those copies cost. ``cashews-nolock``
    (beside ``cashews``) is cashews' plain ``@cache``: what its lock costs a
    hit.
    """
    client = redis.Redis.from_url(url)
    client.set("bare-ref", json.dumps({"t": time.time(), "payload": "x" * 200}))
    client.close()
    rows: list[Row] = []
    strategies = [s for s in options.strategies if s != "naive"] + ["naive"]
    if "asyncstampede" in strategies:
        strategies.insert(strategies.index("asyncstampede") + 1, "asyncstampede-shared")
    if "cashews" in strategies:  # its fastest hit, beside its stampede-safe one
        strategies.insert(strategies.index("cashews") + 1, "cashews-nolock")
    bar = progress(len(strategies) * options.hit_rounds * 2, "hits")
    seconds, c = options.hit_seconds, options.hit_concurrency
    for strategy in strategies:
        try:
            with worker_pool(strategy, url, fresh_namespace(), options.processes) as workers:
                # Fill the hot keys (one short pass computes each once).
                _loop_all(workers, lambda n: f"hitsd hot-{n} 0.2 {c}")
                _loop_all(workers[:1], f"hits hot 0.1 {c}")
                ratios, same_ratios, rps, bare_rps, p99 = [], [], [], [], []
                for _ in range(options.hit_rounds):
                    bare = _loop_all(workers, f"bare bare-ref {seconds} {c}")
                    hits = _loop_all(workers, lambda n: f"hitsd hot-{n} {seconds} {c}")
                    same = _loop_all(workers, f"hits hot {seconds} {c}")
                    bar.update(2)
                    bare_rps.append(bare["rps"])
                    rps.append(hits["rps"])
                    ratios.append(hits["rps"] / bare["rps"])
                    same_ratios.append(same["rps"] / bare["rps"])
                    p99.append(hits["p99_ms"])
            rows.append(
                {
                    "strategy": strategy,
                    "rps": mean(rps),
                    "bare_rps": mean(bare_rps),
                    "ratio_to_bare_get": median(ratios),
                    "same_key_ratio": median(same_ratios),
                    "p99_ms": max(p99),
                    "note": NOTES.get(strategy, ""),
                }
            )
        except Exception as exc:
            rows.append(failed(strategy, exc))
    bar.close()
    return rows


def _loop_all(workers: list[Worker], command: str | Callable[[int], str]) -> dict[str, float]:
    reports = ask_all(workers, command)
    seconds = max(r["seconds"] for r in reports)
    return {
        "rps": sum(r["requests"] for r in reports) / seconds,
        "p99_ms": max(r["p99"] for r in reports) * 1000,
    }
