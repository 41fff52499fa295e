"""Soak asyncstampede under faults: ``python -m benchmarks.soak [--seconds N] [--processes P]``.

Starts a throwaway Redis on a free loopback port and P worker processes,
each running asyncstampede instances (default settings) with concurrent
``get_or_compute`` calls over a key set with short TTLs. At random bounded
intervals it injects one fault: a server restart on the same port, the
lock-watching connections killed, ``SCRIPT FLUSH``, or a worker SIGKILLed
while it holds a lock (a new one takes its place); each kind is tried at
least once, however short the run (the JSON says whether it could be
done). At the end it prints a markdown summary and writes the JSON under
``benchmarks/results/`` (``soak-<run>.json``). It exits 1 if a request
hung (no answer within ``--cap``), a caller got a wrong value, or a worker
crashed or would not stop; 130 if interrupted. Everything it started stops
at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from asyncstampede.testing import RedisServer

from .._base import fresh_namespace
from .._report import RESULTS, machine
from .._server import server_info
from ._analysis import (
    computes_of,
    examples,
    generations,
    log_summary,
    markdown,
    process_rows,
    read_events,
    totals,
)
from ._faults import KINDS, Deck, inject
from ._fleet import Fleet, shielded


@dataclass
class SoakOptions:
    """The command line's options (``python -m benchmarks.soak --help``); times in seconds."""

    seconds: float = 600.0
    processes: int = 4
    instances: int = 2
    concurrency: int = 16
    rate: float = 200.0
    keys: int = 64
    zipf: float = 1.0
    ttl: float = 2.0
    cap: float = 30.0
    slack: float = 1.0
    warmup: float | None = None
    fault_interval: str = "2,10"
    seed: int | None = None
    out: str = str(RESULTS)

    def interval(self) -> tuple[float, float]:
        low, high = (float(x) for x in self.fault_interval.split(","))
        return low, high

    def warmup_seconds(self) -> float:
        """The warm-up: given, or a tenth of the run up to 30 s."""
        return self.warmup if self.warmup is not None else min(30.0, self.seconds / 10)


def parse(argv: list[str] | None = None) -> SoakOptions:
    """The command line, as `SoakOptions`; exits with a usage message on a bad one."""
    d = SoakOptions()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    add = parser.add_argument
    add("--seconds", type=float, default=d.seconds, help="how long the load and faults run")
    add("--processes", type=int, default=d.processes, help="worker processes")
    add("--instances", type=int, default=d.instances, help="Stampede instances per process")
    add("--concurrency", type=int, default=d.concurrency, help="callers per instance")
    add("--rate", type=float, default=d.rate, help="requests/s per process, all callers together")
    add("--keys", type=int, default=d.keys)
    add("--zipf", type=float, default=d.zipf, help="the keys' popularity: Zipf exponent")
    add("--ttl", type=float, default=d.ttl, help="base TTL: keys get 0.5x, 1x and 2x it")
    add("--cap", type=float, default=d.cap, help="seconds before a request counts as hung")
    add(
        "--slack",
        type=float,
        default=d.slack,
        help="seconds past its TTL before a value counts as stale (compute end to commit)",
    )
    add("--warmup", type=float, default=None, help="seconds before RSS is taken and faults start")
    add("--fault-interval", default=d.fault_interval, help="MIN,MAX seconds between faults")
    add("--seed", type=int, default=None, help="the fault schedule's random seed")
    add("--out", default=d.out, help="folder of the JSON")
    options = SoakOptions(**vars(parser.parse_args(argv)))
    try:
        low, high = options.interval()
    except ValueError:
        parser.error("--fault-interval takes MIN,MAX")
    if not 0 < low <= high or options.seconds <= 0 or options.processes < 1:
        parser.error("need 0 < MIN <= MAX, --seconds > 0 and --processes >= 1")
    return options


class _Stop(Exception):
    """SIGTERM: stop as on Ctrl-C."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(options: SoakOptions) -> tuple[dict[str, Any], int]:
    """One soak run: its JSON document and the exit status."""
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    warmup = options.warmup_seconds()
    faults: list[dict[str, Any]] = []
    interrupted = aborted = None
    server = RedisServer()
    with tempfile.TemporaryDirectory(prefix="asyncstampede-soak-") as folder:
        try:
            with shielded():
                server.start()
            host = machine(server_info(server.url))
            fleet = Fleet(
                {
                    "url": server.url,
                    "namespace": fresh_namespace(),
                    "secret": os.urandom(16).hex(),
                    "instances": options.instances,
                    "concurrency": options.concurrency,
                    "rate": options.rate,
                    "keys": options.keys,
                    "zipf": options.zipf,
                    "ttl": options.ttl,
                    "cap": options.cap,
                    "slack": options.slack,
                    "warmup": warmup,
                },
                Path(folder),
            )
            began = time.time()
            try:
                for process in [fleet.launch(slot) for slot in range(options.processes)]:
                    fleet.ready(process)
                began = time.time()
                _soak(options, seed, rng, server, fleet, faults, began)
                # Every request in flight is answered or given up within the cap.
                fleet.stop_all(timeout=options.cap + 15)
            except (KeyboardInterrupt, _Stop) as exc:
                interrupted = type(exc).__name__
                print("\nsoak: interrupted; stopping the workers", file=sys.stderr)
                fleet.stop_all(timeout=10)  # a second Ctrl-C kills them instead
            except Exception as exc:  # the server or a worker did not come back
                aborted = repr(exc)
                print(f"\nsoak: aborted: {exc!r}", file=sys.stderr)
            finally:
                fleet.close()
        finally:
            server.stop()
        ended = time.time()
        for fault in faults:
            fault["at_s"] = fault["t"] - began
        logs = [read_events(p.log) for p in fleet.processes]
        document: dict[str, Any] = {
            "run": time.strftime("%Y%m%d-%H%M%S", time.localtime(began)),
            "machine": host,
            "args": {**asdict(options), "seed": seed, "warmup": warmup},
            "seconds": ended - began,
            "interrupted": interrupted,
            "aborted": aborted,
            "totals": totals(logs),
            "generations": generations(computes_of(logs), options.ttl, faults),
            "faults": faults,
            "processes": process_rows(fleet.processes, logs),
            "examples": {kind: examples(logs, kind) for kind in ("wrong", "hung", "error")},
            "logs": log_summary([p.stderr for p in fleet.processes]),
        }
    return document, status(document)


def _soak(
    options: SoakOptions,
    seed: int,
    rng: random.Random,
    server: RedisServer,
    fleet: Fleet,
    faults: list[dict[str, Any]],
    began: float,
) -> None:
    """Inject faults into *faults* until the time is up, replacing workers that crash."""
    print(
        f"soak: {options.processes} workers on {server.url}, {options.seconds:g} s, seed {seed}",
        file=sys.stderr,
    )
    low, high = options.interval()
    end = began + options.seconds
    deck = Deck(rng)
    due = began + options.warmup_seconds() + rng.uniform(low, high)
    while (now := time.time()) < end:
        for gone in fleet.reap():
            print(f"soak: worker {gone.pid} {gone.end}; replaced", file=sys.stderr)
            fleet.start(gone.slot)
        if now < due:
            time.sleep(min(0.1, due - now, end - now))
            continue
        faults.append(inject(deck.draw(), server, fleet, rng))
        due = time.time() + rng.uniform(low, high)
    # A run too short for a round of the deck still gets each kind once,
    # MIN seconds apart: one try each, so the run stays bounded.
    for kind in KINDS:
        if not any(f["kind"] == kind and f["injected"] for f in faults):
            time.sleep(low)
            faults.append(inject(kind, server, fleet, rng))


def status(document: dict[str, Any]) -> int:
    """1 if anything failed (hung, wrong, a worker crashed or would not stop); 130: interrupted."""
    total = document["totals"]
    broken = [p for p in document["processes"] if p["end"] not in ("stopped", "killed")]
    if total["hung"] or total["wrong"] or document["aborted"]:
        return 1
    if document["interrupted"]:
        return 130
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        document, code = run(options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(markdown(document))
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{document['run']}.json"
    path.write_text(json.dumps(document, indent=1))
    print(f"\nraw results: {path}")
    if code == 1:
        print("\nFAILED: see hung, wrong and the processes' ends above", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
