"""One benchmark process. The harness drives it with one command per line.

    python -m benchmarks._worker STRATEGY URL NAMESPACE

Commands (each answered by one line, ``ready`` first of all, or instead a
line ``failed to start ...`` saying why the strategy could not start):

- ``herd START KEY CONCURRENCY COMPUTE_MS``: at wall-clock START, CONCURRENCY
  concurrent gets of KEY; answers a JSON report (for asyncstampede, with the
  wake transport in use after the herd, and the wake-ups, polls and
  reconnects during it).
- ``hold KEY``: one get of KEY whose compute blocks; answers ``computing``
  once the compute runs. ``release`` lets it return ``{"t": <wall clock>}``;
  ``committed`` follows once the get has returned.
- ``wait KEY``: one get of KEY in the background; answers ``waiting``, then,
  when it returns, a JSON line with the wall clock at which it resumed.
- ``hits KEY SECONDS CONCURRENCY`` and ``bare KEY SECONDS CONCURRENCY``: a hit
  loop through the strategy, or through a bare redis-py GET; JSON report.
- ``churn SECONDS RATE KEYS ZIPF COMPUTE_MS TTL SIZE``: an open-loop stream of
  RATE requests per second on Zipf-distributed keys, values of SIZE bytes.
- ``steady KEY SECONDS CONCURRENCY COMPUTE_MS TTL WARMUP [RATE]``: readers of
  one hot key for SECONDS, each reading every 10 ms, or together RATE reads
  per second; JSON report of the latencies and computes after WARMUP.
- ``outage SECONDS RATE HOT COLD_SHARE COMPUTE_MS TTL CAP``: gets each of HOT
  hot keys once, answers ``{"started": <wall clock>}``, then an open-loop
  stream of RATE requests per second for SECONDS (a share COLD_SHARE on
  keys never asked for before, the rest on the hot keys), each request
  given up after CAP seconds (counted as hung); JSON report of every
  request (issued at, seconds, outcome), the computes' start times and,
  for asyncstampede, its ``statistics()`` counters as they changed.
- ``exit``.

Workers count nothing in Redis: the harness reads the server's own count
(see `benchmarks._server`), so no client library is patched here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import statistics
import sys
import time
from bisect import bisect_left
from collections.abc import Callable
from functools import partial
from itertools import accumulate
from typing import Any

import anyio
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from asyncstampede import Stampede

from ._stats import percentile
from ._strategies import STRATEGIES

_PAYLOADS: dict[int, list[str]] = {}


def payload(size: int) -> str:
    """Random text of *size* characters: incompressible, like most real values."""
    pool = _PAYLOADS.get(size)
    if pool is None:
        rng = random.Random(size)
        pool = _PAYLOADS[size] = [
            base64.b64encode(rng.randbytes(size))[:size].decode() for _ in range(64)
        ]
    return random.choice(pool)


def say(obj: object) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


async def main() -> None:
    strategy_name, url, namespace = sys.argv[1:4]
    strategy = STRATEGIES[strategy_name]()
    try:
        await strategy.start(url, namespace)
    except Exception as exc:
        # Said instead of "ready", so the harness's error (and the row) names it.
        say(f"failed to start {strategy_name}: {exc!r}")
        return
    computes = [0]
    release = anyio.Event()
    publisher = Redis.from_url(url)

    async def compute_for(ms: int, size: int = 200) -> dict[str, Any]:
        computes[0] += 1
        await anyio.sleep(ms / 1000)
        return {"t": time.time(), "payload": payload(size)}

    # Commands arrive on a non-blocking pipe read by the event loop itself: a
    # reader thread would contend for the GIL on the measured paths.
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
    )
    async with anyio.create_task_group() as tg:
        say("ready")
        while True:
            line = (await stdin.readline()).decode()
            cmd, *args = line.split() or ["exit"]
            if cmd == "exit":
                tg.cancel_scope.cancel()
                break
            if cmd == "herd":
                start, key, conc, ms = float(args[0]), args[1], int(args[2]), int(args[3])
                say(await herd(strategy, start, key, conc, ms, computes, compute_for))
            elif cmd == "hold":

                async def blocked(gate: anyio.Event = release) -> dict[str, Any]:
                    computes[0] += 1
                    say("computing")
                    await gate.wait()
                    return {"t": time.time()}

                async def hold(key: str, fn: Any = blocked) -> None:
                    await strategy.get(key, fn, 60.0)
                    say("committed")

                tg.start_soon(hold, args[0])
            elif cmd == "release":
                # No reply here: the harness must not wake up (and take a CPU)
                # while the commit is on its way; "committed" follows instead.
                release.set()
                release = anyio.Event()
            elif cmd == "wait":
                key = args[0]

                async def waiter(key: str = key) -> None:
                    value = await strategy.get(key, lambda: compute_for(0), 60.0)
                    resumed = time.time()
                    say({"resumed": resumed, "value_t": value["t"], "computes": computes[0]})

                tg.start_soon(waiter)
                say("waiting")
            elif cmd == "subscribe":
                # Baseline: a bare redis-py subscriber, no library in the way.
                ready = anyio.Event()
                tg.start_soon(raw_subscriber, url, args[0], ready)
                await ready.wait()
                say("subscribed")
            elif cmd == "publish":
                await publisher.publish(args[0], repr(time.time()))
                say("published")
            elif cmd in ("hits", "hitsd", "bare"):
                key, seconds, conc = args[0], float(args[1]), int(args[2])
                if cmd == "bare":
                    bare = Redis.from_url(url)

                    async def bare_get(i: int, client: Redis = bare, raw: str = key) -> Any:
                        return await client.get(raw)

                    say(await run_loop(bare_get, seconds, conc))
                    await bare.aclose()
                else:
                    # hits: every coroutine reads one hot key (a process may
                    # coalesce concurrent reads); hitsd: coroutine i reads its
                    # own hot key KEY-i, so each request pays its own round trip.
                    distinct = cmd == "hitsd"
                    call = partial(hit, strategy, key, compute_for, distinct)
                    say(await run_loop(call, seconds, conc))
            elif cmd == "hookcost":
                say(await hook_cost(strategy, int(args[0])))
            elif cmd == "steady":
                key, seconds, conc = args[0], float(args[1]), int(args[2])
                ms, ttl, warmup = int(args[3]), float(args[4]), float(args[5])
                rate = float(args[6]) if len(args) > 6 else 0.0
                say(
                    await steady(
                        strategy, key, seconds, conc, ms, ttl, warmup, computes, compute_for, rate
                    )
                )
            elif cmd == "churn":
                seconds, rate, nkeys = float(args[0]), float(args[1]), int(args[2])
                zipf, ms, ttl, size = float(args[3]), int(args[4]), float(args[5]), int(args[6])
                say(
                    await churn(
                        strategy, seconds, rate, nkeys, zipf, ms, ttl, size, computes, compute_for
                    )
                )
            elif cmd == "outage":
                seconds, rate, hot = float(args[0]), float(args[1]), int(args[2])
                cold, ms, ttl, cap = float(args[3]), int(args[4]), float(args[5]), float(args[6])
                say(await outage(strategy, seconds, rate, hot, cold, ms, ttl, cap, compute_for))
    await strategy.stop()


async def raw_subscriber(url: str, channel: str, ready: anyio.Event) -> None:
    """The baseline's subscriber: one bare RESP2 connection reading pushed messages."""
    pool = ConnectionPool.from_url(url)
    conn = Connection(**{**pool.connection_kwargs, "protocol": 2})
    await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
    await conn.send_command("SUBSCRIBE", channel)
    await conn.read_response()
    ready.set()
    try:
        while True:
            reply = await conn.read_response(timeout=1.0)
            if reply is not None and reply[0] == b"message":
                say({"resumed": time.time(), "value_t": float(reply[2]), "computes": 0})
    finally:
        await conn.disconnect()
        await pool.aclose()


async def hit(strategy: Any, key: str, compute_for: Any, distinct: bool, i: int) -> Any:
    return await strategy.get(f"{key}-{i}" if distinct else key, partial(compute_for, 0), 600)


async def herd(
    strategy: Any, start: float, key: str, conc: int, ms: int, computes: list[int], compute_for: Any
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    computes_before = computes[0]
    figures = getattr(strategy, "wake_figures", None)  # asyncstampede's only
    wake_before = figures() if figures is not None else None
    # Each call's latency runs from its own issue, so a process whose timer
    # fires a little late is not charged for it.
    await anyio.sleep(max(0.0, start - time.time()))
    started = time.time()  # when this process actually woke: the machine's skew

    done_at: list[float] = []

    async def one() -> None:
        issued = time.perf_counter()
        try:
            await strategy.get(key, lambda: compute_for(ms), 60.0)
        except Exception as exc:  # reported, never hidden
            errors.append(repr(exc))
        latencies.append(time.perf_counter() - issued)
        done_at.append(time.time())

    async with anyio.create_task_group() as tg:
        for _ in range(conc):
            tg.start_soon(one)
    await anyio.sleep(0.3)  # batched UNSUBSCRIBEs and the like belong to this herd
    report = {
        "latencies": latencies,
        "done_at": done_at,
        "started": started,
        "errors": errors,
        "computes": computes[0] - computes_before,
    }
    if figures is not None and wake_before is not None:
        # How this process's waiters were woken: the transport in use after
        # the herd, and what changed during it (wake-ups, polls, reconnects).
        wake_after = figures()
        report["wake"] = wake_after["wake"]
        for name in ("wakeups", "polls", "reconnects"):
            report[name] = wake_after[name] - wake_before[name]
    return report


async def hook_cost(strategy: Any, n: int) -> dict[str, Any]:
    """Microseconds of CPU a hit costs more with the strategy's hooks than without.

    In this process alone, on the real hit path: two embedded instances (no
    Redis, so nothing but the hit's own work is timed), one given the
    strategy's hooks (`Strategy.hooks`); 8 rounds alternate which goes
    first, each timing *n* hits of one key on each, one after another; the
    figure is the median over the rounds of the difference. 0 for a
    strategy without hooks. The whole-loop figures of the ``hooks``
    scenario, in processes of their own, are too noisy to resolve this.
    """
    hooks = list(getattr(strategy, "hooks", ()))
    if not hooks:
        return {"us": 0.0}

    async def value() -> int:
        return 1

    plain = Stampede(namespace="hookcost")
    hooked = Stampede(namespace="hookcost", hooks=hooks)
    differences: list[float] = []
    async with plain, hooked:
        for cache in (plain, hooked):
            await cache.get_or_compute("k", value, 3600)
        for r in range(8):
            per_hit: dict[int, float] = {}
            for cache in (plain, hooked) if r % 2 == 0 else (hooked, plain):
                cpu = time.process_time()
                for _ in range(n):
                    await cache.get_or_compute("k", value, 3600)
                per_hit[id(cache)] = (time.process_time() - cpu) / n
            differences.append(per_hit[id(hooked)] - per_hit[id(plain)])
    return {"us": statistics.median(differences) * 1e6}


async def run_loop(call: Any, seconds: float, conc: int) -> dict[str, Any]:
    done = [0]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)
            done[0] += 1

    start, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for i in range(conc):
            tg.start_soon(worker, i)
    elapsed = time.perf_counter() - start
    return {
        "requests": done[0],
        "seconds": elapsed,
        "cpu": time.process_time() - cpu,  # the process's own CPU seconds meanwhile
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


async def steady(
    strategy: Any,
    key: str,
    seconds: float,
    conc: int,
    ms: int,
    ttl: float,
    warmup: float,
    computes: list[int],
    compute_for: Any,
    rate: float = 0.0,
) -> dict[str, Any]:
    """CONC coroutines read one key; latencies (and computes) after WARMUP count.

    Each reads every 10 ms, or, with *rate*, on its own schedule so that
    together they read *rate* times a second (open loop: a slow read does
    not push the next ones back).
    """
    computes_before = computes[0]
    after_warmup: list[int] = []
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    interval = conc / rate if rate > 0 else 0.01

    async def reader(i: int) -> None:
        due = start + interval * i / conc  # spread the readers over one interval
        while (now := time.perf_counter()) < deadline:
            if rate > 0:
                await anyio.sleep(max(0.0, due - now))
                due += interval
                now = time.perf_counter()
            if now - start >= warmup and not after_warmup:
                after_warmup.append(computes[0])
            await strategy.get(key, lambda: compute_for(ms), ttl)
            if now - start >= warmup:
                latencies.append(time.perf_counter() - now)
            if rate <= 0:
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for i in range(conc):
            tg.start_soon(reader, i)
    return {
        "requests": len(latencies),
        "seconds": seconds - warmup,
        "computes": computes[0] - computes_before,
        "computes_after_warmup": computes[0] - (after_warmup or [computes[0]])[0],
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
        "slow": sum(1 for x in latencies if x >= ms / 1000 / 2),
    }


async def churn(
    strategy: Any,
    seconds: float,
    rate: float,
    nkeys: int,
    zipf: float,
    ms: int,
    ttl: float,
    size: int,
    computes: list[int],
    compute_for: Any,
) -> dict[str, Any]:
    """Open loop: RATE requests per second whatever the strategy's speed.

    Every strategy gets the same request stream, so their backend computes
    compare directly. Requests beyond 512 in flight are shed (counted).
    """
    weights = list(accumulate(1 / (i + 1) ** zipf for i in range(nkeys)))
    total = weights[-1]
    rng = random.Random()
    computes_before = computes[0]
    latencies: list[float] = []
    errors = [0]
    shed = 0
    in_flight = [0]

    async def one(key: str) -> None:
        t0 = time.perf_counter()
        try:
            await strategy.get(key, lambda: compute_for(ms, size), ttl)
        except Exception:
            errors[0] += 1
        latencies.append(time.perf_counter() - t0)
        in_flight[0] -= 1

    start = time.perf_counter()
    issued = 0
    async with anyio.create_task_group() as tg:
        while (now := time.perf_counter() - start) < seconds:
            due = int(now * rate) + 1
            while issued < due:
                issued += 1
                if in_flight[0] >= 512:
                    shed += 1
                    continue
                in_flight[0] += 1
                key = f"churn:{bisect_left(weights, rng.random() * total)}"
                tg.start_soon(one, key)
            await anyio.sleep(0.002)
    return {
        "requests": len(latencies),
        "shed": shed,
        "seconds": time.perf_counter() - start,
        "computes": computes[0] - computes_before,
        "errors": errors[0],
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


async def outage(
    strategy: Any,
    seconds: float,
    rate: float,
    hot: int,
    cold_share: float,
    ms: int,
    ttl: float,
    cap: float,
    compute_for: Any,
) -> dict[str, Any]:
    """Open loop, as `churn`: RATE requests a second whatever the server does meanwhile.

    The harness pauses the server while this runs and sorts the requests
    into phases by the wall clock at which each was issued; nothing here
    knows when. A request unanswered after *cap* seconds is cancelled and
    reported ``hung``; one that raised is reported by its exception's type.
    """
    rng = random.Random()
    requests: list[tuple[float, float, str]] = []
    compute_starts: list[float] = []
    counters = getattr(strategy, "counters", None)  # asyncstampede's only
    samples: list[list[float]] = []

    async def compute() -> Any:
        compute_starts.append(time.time())
        return await compute_for(ms)

    async def one(key: str) -> None:
        issued, t0 = time.time(), time.perf_counter()
        outcome = "hung"
        with anyio.move_on_after(cap) as scope:
            try:
                await strategy.get(key, compute, ttl)
                outcome = "ok"
            except Exception as exc:  # reported, never hidden
                outcome = type(exc).__name__
            except anyio.get_cancelled_exc_class():
                if scope.cancel_called:
                    raise  # the cap: hung
                # Raised by the strategy itself (nothing else cancels these
                # tasks): an error that reaches the caller, and would
                # otherwise end the task without a trace.
                outcome = "CancelledError"
        requests.append((issued, time.perf_counter() - t0, outcome))

    async def sample(counters: Callable[[], dict[str, int]]) -> None:
        # The counters each time one changed (looked at every 2 ms): when
        # hits came back after the pause, to within a look.
        last: list[float] = samples[-1][1:]
        while True:
            now: list[float] = list(counters().values())
            if now != last:
                samples.append([time.time(), *now])
                last = now
            await anyio.sleep(0.002)

    for i in range(hot):
        await strategy.get(f"hot-{i}", compute, ttl)
    if counters is not None:
        samples.append([time.time(), *counters().values()])  # before the stream starts
    async with anyio.create_task_group() as outer:
        if counters is not None:
            outer.start_soon(sample, counters)
        async with anyio.create_task_group() as tg:
            start = time.perf_counter()
            say({"started": time.time()})
            issued = 0
            while (now := time.perf_counter() - start) < seconds:
                due = int(now * rate) + 1
                while issued < due:
                    issued += 1
                    if rng.random() < cold_share:
                        key = f"cold-{issued}"
                    else:
                        key = f"hot-{rng.randrange(hot)}"
                    tg.start_soon(one, key)
                await anyio.sleep(0.002)
        outer.cancel_scope.cancel()
    return {
        "issued": issued,
        "requests": requests,
        "computes": compute_starts,
        "counter_names": list(counters()) if counters is not None else [],
        "counters": samples,
    }


if __name__ == "__main__":
    anyio.run(main)
