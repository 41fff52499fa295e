"""A soak run's logs turned into figures, and the figures into a markdown summary.

**Generations.** A key's generation is one value's life: the computes that
ran to replace one expired (or lost) value. From every compute's start and
end (all workers' logs, killed ones' included), per key, in order of start:
a compute belongs to the current generation if it started before the
generation's first compute to end had ended plus half the key's TTL,
otherwise it starts the next one. Half the TTL because asyncstampede
refreshes no value early in the first half of its TTL: a compute that
starts later is a new generation's, one that starts sooner is a duplicate
(a herd that was not coalesced, or a redo). A compute that never ended (a
SIGKILLed holder's) leaves its generation open until another one ends.

Duplicates are attributed to the fault nearest before them, if one was
injected from `LOOKBACK` seconds before the generation's first compute to
its last one started; ``none`` if there was none: those are the ones no
fault explains.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._fleet import Process
from ._values import BUCKETS, hist_max, hist_percentile, index_of, ttl_of

LOOKBACK = 2.0  # seconds before a generation in which a fault may have caused its duplicates
MB = 1024 * 1024


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete event in a worker's log (a SIGKILLed worker's last line may be cut)."""
    events = []
    for line in path.read_bytes().split(b"\n"):
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@dataclass
class Compute:
    key: str
    start: float
    end: float | None


def computes_of(logs: Iterable[list[dict[str, Any]]]) -> list[Compute]:
    """Every compute started, with its end if it returned, from all workers' events."""
    found: list[Compute] = []
    for events in logs:
        ends = {e["n"]: e["t"] for e in events if e["ev"] == "end"}
        found += [Compute(e["k"], e["t"], ends.get(e["n"])) for e in events if e["ev"] == "compute"]
    return found


def generations(
    computes: list[Compute], base_ttl: float, faults: list[dict[str, Any]]
) -> dict[str, Any]:
    """Computes per key generation (see the module docstring), and what explains extra ones."""
    by_key: dict[str, list[Compute]] = {}
    for c in computes:
        by_key.setdefault(c.key, []).append(c)
    injected = sorted((f["t"], f["kind"]) for f in faults if f.get("injected"))
    sizes: Counter[int] = Counter()
    excess: Counter[str] = Counter()
    worst: list[dict[str, Any]] = []
    for key, mine in by_key.items():
        half = ttl_of(index_of(key), base_ttl) / 2
        mine.sort(key=lambda c: c.start)
        clusters: list[list[Compute]] = []
        first_end = math.inf
        for c in mine:
            if clusters and c.start < first_end + half:
                clusters[-1].append(c)
            else:
                clusters.append([c])
                first_end = math.inf
            if c.end is not None:
                first_end = min(first_end, c.end)
        for cluster in clusters:
            sizes[len(cluster)] += 1
            if len(cluster) == 1:
                continue
            first, last = cluster[0].start, cluster[-1].start
            near = [kind for t, kind in injected if first - LOOKBACK <= t <= last]
            cause = near[-1] if near else "none"
            excess[cause] += len(cluster) - 1
            worst.append(
                {"key": key, "computes": len(cluster), "first": first, "last": last, "cause": cause}
            )
    count = sizes.total()
    total = sum(n * k for n, k in sizes.items())
    worst.sort(key=lambda g: -g["computes"])
    return {
        "generations": count,
        "computes": total,
        "mean": total / count if count else float("nan"),
        "max": max(sizes, default=0),
        "histogram": {str(n): sizes[n] for n in sorted(sizes)},
        "excess_by_cause": dict(excess),
        "worst": worst[:10],
    }


def _last(events: list[dict[str, Any]], *kinds: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    for event in events:
        if event["ev"] in kinds:
            found = event
    return found


def process_rows(
    processes: list[Process], logs: list[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One row per worker process: how it ended, what it served, RSS after warm-up and at end."""
    rows = []
    for process, events in zip(processes, logs, strict=True):
        last = _last(events, "final", "summary")
        examples = Counter(e["ev"] for e in events if e["ev"] in ("wrong", "hung"))
        row: dict[str, Any] = {
            "slot": process.slot,
            "pid": process.pid,
            "end": process.end,
            "seconds": (process.ended or process.started) - process.started,
            "requests": last["requests"] if last else 0,
            # A killed worker's last second is not in its last summary; the
            # examples it logged at once are (up to 20 of each kind).
            "hung": max(last["hung"] if last else 0, examples["hung"]),
            "wrong": max(sum(last["wrong"].values()) if last else 0, examples["wrong"]),
            "errors": sum(last["errors"].values()) if last else 0,
            "rss_warm_mb": None,
            "rss_end_mb": None,
            "growth_mb": None,
        }
        if last and last["rss_warm"] is not None:
            warm_at = next(
                e["t"] for e in events if e["ev"] in ("summary", "final") and e["rss_warm"]
            )
            row["rss_warm_mb"] = last["rss_warm"] / MB
            row["rss_end_mb"] = last["rss"] / MB
            row["growth_mb"] = (last["rss"] - last["rss_warm"]) / MB
            row["measured_s"] = last["t"] - warm_at
        rows.append(row)
    return rows


def totals(logs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Requests, outcomes, latencies and asyncstampede's counters, over all processes."""
    hist = [0] * BUCKETS
    errors: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    wakes: Counter[str] = Counter()
    requests = hung = 0
    for events in logs:
        last = _last(events, "final", "summary")
        examples = Counter(e["ev"] for e in events if e["ev"] in ("wrong", "hung"))
        logged_wrong = Counter(e["kind"] for e in events if e["ev"] == "wrong")
        if last is None:
            wrong.update(logged_wrong)
            hung += examples["hung"]
            continue
        requests += last["requests"]
        hung += max(last["hung"], examples["hung"])
        wrong.update(
            last["wrong"] if sum(last["wrong"].values()) >= examples["wrong"] else logged_wrong
        )
        errors.update(last["errors"])
        stats.update(last["statistics"])
        wakes.update(last["wake"])
        hist = [a + b for a, b in zip(hist, last["hist"], strict=True)]
    return {
        "requests": requests,
        "errors": errors.total(),
        "error_kinds": dict(errors),
        "hung": hung,
        "wrong": wrong.total(),
        "wrong_kinds": dict(wrong),
        "p50_ms": hist_percentile(hist, 0.5) * 1000,
        "p99_ms": hist_percentile(hist, 0.99) * 1000,
        "max_ms": hist_max(hist) * 1000,
        "statistics": dict(stats),
        "wake": dict(wakes),
    }


def examples(logs: list[list[dict[str, Any]]], kind: str, most: int = 20) -> list[dict[str, Any]]:
    """Up to *most* logged examples of *kind* (``wrong``, ``hung``, ``error``), all workers."""
    return [e for events in logs for e in events if e["ev"] == kind][:most]


_LEVEL = re.compile(r"^(WARNING|ERROR|CRITICAL) (\S+): (.*)")


def log_summary(paths: list[Path], top: int = 8) -> dict[str, Any]:
    """The workers' log messages (their stderr): counts by level, the commonest messages."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    tracebacks = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = _LEVEL.match(line)
            if match:
                levels[match[1]] += 1
                # Ports, ids and counts differ from one message to the next.
                messages[f"{match[1]} {match[2]}: {re.sub(r'[0-9]+', 'N', match[3])[:200]}"] += 1
            elif line.startswith("Traceback"):
                tracebacks += 1
    return {
        "levels": dict(levels),
        "tracebacks": tracebacks,
        "top": [{"message": m, "count": n} for m, n in messages.most_common(top)],
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"


def _sum(faults: list[dict[str, Any]], field: str) -> int:
    return sum(int(f.get(field, 0)) for f in faults)


def markdown(document: dict[str, Any]) -> str:
    """The run's summary, as markdown: the verdict's figures, then one row per process."""
    args, total, gens = document["args"], document["totals"], document["generations"]
    faults = Counter(f["kind"] for f in document["faults"] if f.get("injected"))
    stats = total["statistics"]
    out = [
        f"## soak {document['run']}: {document['seconds']:.0f} s, {args['processes']} processes x "
        f"{args['instances']} instances x {args['concurrency']} callers, {args['keys']} keys, "
        f"TTL {args['ttl'] * 0.5:g}/{args['ttl']:g}/{args['ttl'] * 2:g} s",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {total['requests']} |",
        f"| errors (reached a caller) | {total['errors']} ({_kinds(total['error_kinds'])}) |",
        f"| hung (no answer within {args['cap']:g} s) | {total['hung']} |",
        f"| wrong values | {total['wrong']} ({_kinds(total['wrong_kinds'])}) |",
        f"| latency p50 / p99 / max, ms | {_fmt(total['p50_ms'])} / {_fmt(total['p99_ms'])} / "
        f"{_fmt(total['max_ms'])} |",
        f"| faults injected | {_kinds(dict(faults))} |",
        "| connections killed: tracking / pub/sub (tracking gone before their kill) | "
        f"{_sum(document['faults'], 'tracking')} / {_sum(document['faults'], 'pubsub')} "
        f"({_sum(document['faults'], 'tracking_gone')}) |",
        f"| key generations | {gens['generations']} |",
        f"| computes per generation, mean / max | {_fmt(gens['mean'])} / {gens['max']} |",
        f"| extra computes, by the fault before them | {_kinds(gens['excess_by_cause'])} |",
        "| takeovers / lock lost / wait timeouts | "
        f"{stats.get('takeovers', 0)} / {stats.get('lock_lost', 0)} / "
        f"{stats.get('wait_timeouts', 0)} |",
        "| backend errors / reconnects / connect errors / polls | "
        f"{stats.get('backend_errors', 0)} / {stats.get('reconnects', 0)} / "
        f"{stats.get('connect_errors', 0)} / {stats.get('polls', 0)} |",
        f"| wake transports, as each instance last reported | {_kinds(total['wake'])} |",
        f"| worker log lines | {_kinds(document['logs']['levels'])}; "
        f"{document['logs']['tracebacks']} tracebacks |",
        "",
        "| slot | pid | how it ended | seconds | requests | errors | hung | wrong "
        "| RSS after warm-up, MB | RSS at end, MB | growth, MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {p['slot']} | {p['pid']} | {p['end']} | {_fmt(p['seconds'])} | {p['requests']} | "
        f"{p['errors']} | {p['hung']} | {p['wrong']} | {_fmt(p['rss_warm_mb'])} | "
        f"{_fmt(p['rss_end_mb'])} | {_fmt(p['growth_mb'])} |"
        for p in document["processes"]
    ]
    return "\n".join(out)
