"""crash: the computing process is SIGKILLed while others wait for its value."""

from __future__ import annotations

import time
from typing import Any

from .._base import Options, Row, failed, fresh_namespace, progress
from .._pool import Worker


def run(url: str, options: Options) -> list[Row]:
    """One process holds a key's compute; 0.5 s after the others start waiting, it dies.

    ``value_after_s`` runs from the kill to the last waiter's value (negative:
    the waiters did not wait for the holder at all); ``extra_computes`` counts
    the computes the waiters ran themselves, the cost a fast answer may hide.
    """
    rows: list[Row] = []
    strategies = [s for s in options.strategies if s not in ("naive", "embedded")]
    bar = progress(len(strategies), "crash")
    for strategy in strategies:
        ns = fresh_namespace()
        workers: list[Worker] = []
        try:
            holder = Worker(strategy, url, ns)
            workers.append(holder)
            waiters = [Worker(strategy, url, ns) for _ in range(options.processes - 1)]
            workers.extend(waiters)
            holder.send("hold crash")
            holder.expect("computing")
            start = time.time() + 0.1
            for w in waiters:
                w.send(f"herd {start} crash {options.crash_concurrency} 10")
            time.sleep(0.5)  # everyone is waiting on the holder now
            killed_at = time.time()
            holder.kill()
            row: Row = {
                "strategy": strategy,
                "waiting": len(waiters) * options.crash_concurrency,
            }
            try:
                reports = [w.report(timeout=options.crash_cap) for w in waiters]
            except TimeoutError:
                row.update(
                    value_after_s=float("inf"),
                    extra_computes="?",
                    note=f"stuck > {options.crash_cap:.0f} s",
                )
            else:
                row.update(_outcome(reports, killed_at))
            rows.append(row)
        except Exception as exc:
            rows.append(failed(strategy, exc))
        finally:
            # Killed, not asked to exit: a stuck waiter would not read the request.
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
            bar.update()
    bar.close()
    return rows


def _outcome(reports: list[dict[str, Any]], killed_at: float) -> Row:
    done = [t for r in reports for t in r["done_at"]]
    first, last = min(done) - killed_at, max(done) - killed_at
    return {
        "value_after_s": last,
        "first_value_after_s": first,
        "extra_computes": sum(r["computes"] for r in reports),
        "errors": sum(len(r["errors"]) for r in reports),
        "note": "did not wait: answered before the kill" if last < 0 else "",
    }
