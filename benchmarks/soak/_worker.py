"""One soak worker process: asyncstampede instances under a steady load, everything logged.

    python -m benchmarks.soak._worker CONFIG_JSON

It runs ``instances`` instances of ``Stampede.from_url(url)`` (default
settings), each with ``concurrency`` callers that together send about
``rate`` requests a second for Zipf-distributed keys (see `_values`), and
checks every value a caller gets. It appends one JSON object per line to
its event log (``log``), each written at once, so a SIGKILLed worker leaves
everything up to its death:

- ``ready``: its instances are entered; ``compute`` and ``end``: a compute
  started and returned (key, sequence number); ``holding``: the compute
  asked for with ``hold`` is blocking, its lock held;
- ``wrong``, ``hung`` and ``error``: a value that failed the check, a
  request unanswered after ``cap`` seconds, an exception that reached a
  caller (the first few of each kind, as examples);
- ``summary`` every second and ``final`` at the end: cumulative counts, the
  latency histogram, RSS, and the instances' ``statistics()``.

Commands on stdin, one per line: ``hold`` (block the next compute that
starts until ``unhold``: the soak program SIGKILLs the worker meanwhile),
``unhold``, ``stop`` (finish the requests in flight, report, close). End of
input is ``stop`` too, so a worker whose soak program died stops by itself.
SIGINT is ignored (it is also blocked from birth, see
`benchmarks.soak._fleet.shielded`): the soak program stops its workers
itself.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import os
import random
import resource
import signal
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, fields
from functools import partial
from typing import IO, Any

import anyio
import orjson

from asyncstampede import Stampede

from ._values import BUCKETS, bucket, key_name, make_value, ttl_of, wrongness

EXAMPLES = 20  # examples logged per kind of trouble; the counts go on


@dataclass
class Config:
    """What the soak program tells a worker (the JSON on its command line)."""

    url: str
    namespace: str
    log: str
    secret: str
    slot: int
    instances: int
    concurrency: int
    rate: float
    keys: int
    zipf: float
    ttl: float
    cap: float
    slack: float
    warmup: float


@dataclass
class Tally:
    """What the worker's callers met so far."""

    requests: int = 0
    hung: int = 0
    wrong: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    hist: list[int] = field(default_factory=lambda: [0] * BUCKETS)


def rss() -> int:
    """This process's resident set size now, in bytes (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compute_seconds(rng: random.Random) -> float:
    """How long one compute takes: mostly short, a few past a third of the lock TTL.

    ``lock_ttl`` is 5 s by default and a holder extends its lock once it is
    a third of that old, so the slowest computes (2-3 s) exercise extensions.
    """
    draw = rng.random()
    if draw < 0.90:
        return rng.uniform(0.005, 0.05)
    if draw < 0.98:
        return rng.uniform(0.1, 0.5)
    return rng.uniform(2.0, 3.0)


class Worker:
    """The worker's state: its instances, its callers' tally, its event log."""

    def __init__(self, config: Config, log: IO[str]) -> None:
        self.config = config
        self.secret = bytes.fromhex(config.secret)
        self.log = log
        self.tally = Tally()
        self.rng = random.Random()
        self.pid = os.getpid()
        self.seq = itertools.count()
        self.stopping = anyio.Event()
        self.hold = False  # the next compute to start blocks until unhold
        self.unhold = anyio.Event()
        self.examples: Counter[str] = Counter()
        self.born = time.monotonic()
        self.rss_warm: int | None = None
        weights = [1 / (i + 1) ** config.zipf for i in range(config.keys)]
        self.cumulative = list(itertools.accumulate(weights))
        self.caches: list[Stampede] = []

    def event(self, ev: str, **fields: Any) -> None:
        """Append one event line to the log, written at once."""
        self.log.write(orjson.dumps({"ev": ev, "t": time.time(), **fields}).decode() + "\n")

    def example(self, what: str, **fields: Any) -> None:
        """Log an event *what* as an example, up to `EXAMPLES` of each."""
        self.examples[what] += 1
        if self.examples[what] <= EXAMPLES:
            self.event(what, **fields)

    async def compute(self, key: str) -> dict[str, Any]:
        seq = next(self.seq)
        started = time.time()
        self.event("compute", k=key, n=seq, pid=self.pid)
        if self.hold:
            self.hold = False
            self.event("holding", k=key, n=seq, pid=self.pid)
            await self.unhold.wait()
        await anyio.sleep(compute_seconds(self.rng))
        ended = time.time()
        self.event("end", k=key, n=seq, pid=self.pid)
        return make_value(self.secret, key, started, ended, self.pid, seq)

    async def request(self, cache: Stampede) -> None:
        config, tally = self.config, self.tally
        index = bisect.bisect_left(self.cumulative, self.rng.random() * self.cumulative[-1])
        index = min(index, config.keys - 1)
        key, ttl = key_name(index), ttl_of(index, config.ttl)
        issued, t0 = time.time(), time.perf_counter()
        outcome: str | None = None
        value: object = None
        with anyio.move_on_after(config.cap) as scope:
            try:
                value = await cache.get_or_compute(key, partial(self.compute, key), ttl)
            except Exception as exc:
                outcome = type(exc).__name__
                self.example("error", k=key, type=outcome, message=str(exc)[:300])
            except anyio.get_cancelled_exc_class():
                if scope.cancel_called:
                    raise  # the cap
                # Not ours (nothing cancels a caller): the library's own, reaching the caller.
                outcome = "CancelledError"
                self.example("error", k=key, type=outcome, message="")
        tally.requests += 1
        if scope.cancelled_caught:
            tally.hung += 1
            self.example("hung", k=key, issued=issued, cap=config.cap)
            return
        tally.hist[bucket(time.perf_counter() - t0)] += 1
        if outcome is not None:
            tally.errors[outcome] += 1
            return
        answered = time.time()
        why = wrongness(self.secret, key, ttl, value, issued, answered, config.slack)
        if why is not None:
            tally.wrong[why] += 1
            shown = (
                {k: v for k, v in value.items() if k != "pad"} if isinstance(value, dict) else {}
            )
            self.example(
                "wrong", k=key, kind=why, issued=issued, answered=answered, ttl=ttl, value=shown
            )

    async def caller(self, cache: Stampede) -> None:
        config = self.config
        callers = config.instances * config.concurrency
        interval = callers / config.rate  # each caller's share of the rate
        due = time.perf_counter() + self.rng.random() * interval
        while not self.stopping.is_set():
            now = time.perf_counter()
            if due > now:
                with anyio.move_on_after(due - now):
                    await self.stopping.wait()
                if self.stopping.is_set():
                    break
            due = max(due + interval, time.perf_counter())  # no bursts to catch up
            await self.request(cache)

    def summary(self, ev: str = "summary") -> None:
        tally = self.tally
        now = rss()
        if self.rss_warm is None and time.monotonic() - self.born >= self.config.warmup:
            self.rss_warm = now
        stats: Counter[str] = Counter()
        wakes = []
        for cache in self.caches:
            snapshot = cache.statistics()
            for f in fields(snapshot):
                figure = getattr(snapshot, f.name)
                if isinstance(figure, int):
                    stats[f.name] += figure
            wakes.append(snapshot.wake)
        self.event(
            ev,
            pid=self.pid,
            requests=tally.requests,
            hung=tally.hung,
            wrong=dict(tally.wrong),
            errors=dict(tally.errors),
            hist=tally.hist,
            rss=now,
            rss_warm=self.rss_warm,
            statistics=dict(stats),
            wake=wakes,
        )

    async def summaries(self) -> None:
        while True:
            await anyio.sleep(1.0)
            self.summary()

    async def commands(self) -> None:
        stdin = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
        )
        while True:
            line = (await stdin.readline()).decode().strip()
            if line == "hold":
                self.hold = True
            elif line == "unhold":
                self.hold = False
                self.unhold.set()
                self.unhold = anyio.Event()
            elif line in ("stop", ""):  # "": end of input
                self.stopping.set()
                return

    async def run(self) -> None:
        config = self.config
        async with AsyncExitStack() as stack:
            for _ in range(config.instances):
                cache = Stampede.from_url(config.url, namespace=config.namespace)
                self.caches.append(await stack.enter_async_context(cache))
            self.event("ready", pid=self.pid, slot=config.slot)
            async with anyio.create_task_group() as background:
                background.start_soon(self.summaries)
                background.start_soon(self.commands)
                async with anyio.create_task_group() as callers:
                    for cache in self.caches:
                        for _ in range(config.concurrency):
                            callers.start_soon(self.caller, cache)
                background.cancel_scope.cancel()
            # Before the instances close: RSS with everything still open.
            self.summary("final")
        self.event("closed", pid=self.pid)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = Config(**json.loads(sys.argv[1]))
    # asyncstampede's warnings (a Redis failure, with its advice) go to
    # stderr, which the soak program gives a file of its own and counts.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with open(config.log, "a", buffering=1) as log:
        anyio.run(Worker(config, log).run)


if __name__ == "__main__":
    main()
