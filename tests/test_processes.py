"""Claims about processes, checked with several real processes on one Redis."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from _herd import Worker, run_herd

pytestmark = pytest.mark.slow


def test_herd_of_four_processes_computes_once(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """4 processes x 50 callers of a missing key, 200 ms compute: 1 compute, 200 values."""
    reports, log = run_herd(
        workers, redis_url, namespace, processes=4, concurrency=50, compute_ms=200
    )
    assert sum(r["stats"]["computes"] for r in reports) == 1
    values = [v for r in reports for v in r["results"]]
    assert len(values) == 200
    assert all(v == values[0] for v in values)
    assert not any(r["errors"] for r in reports)
    # Three processes waited on the fourth, and were woken by Redis telling
    # them its lock went away.
    assert sum(r["stats"]["remote_waits"] for r in reports) == 3
    assert sum(r["stats"]["wakeups"] for r in reports) == 3
    assert len(log.commands) / 200 < 0.1, log.by_process
    assert log.server_calls > 0
    # The holder: GET (miss), SET NX GET (taken), then straight to the
    # compute, and the commit's EVALSHA.
    leader = next(r["pid"] for r in reports if r["stats"]["computes"])
    holder = Counter(c for c in log.by_process[leader] if c != "PING")
    assert holder == Counter({"GET": 1, "SET": 1, "EVALSHA": 1}), log.by_process[leader]


def test_waiting_costs_the_same_commands_for_a_long_compute(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """Waiters do not poll: a 2 s compute costs what a 200 ms one does, plus one look per extension.

    The holder extends its lock every lock_ttl/3 (5 s / 3 here); Redis tells
    the waiters the lock changed, and each waiting process looks once (GET
    the value, PTTL the lock). Nothing else depends on how long the compute
    takes.
    """
    short_reports, short = run_herd(
        workers, redis_url, namespace,
        processes=4, concurrency=50, compute_ms=200, key="short",
    )  # fmt: skip
    reports, long = run_herd(
        workers, redis_url, namespace,
        processes=4, concurrency=50, compute_ms=2000, key="long",
    )  # fmt: skip
    assert sum(r["stats"]["computes"] for r in reports) == 1
    leader = next(r["pid"] for r in reports if r["stats"]["computes"])
    extensions = long.by_process[leader].count("EVALSHA") - 1  # all but the commit
    assert extensions == 1, long.by_process[leader]
    # Heartbeat PINGs of idle connections depend on wall time, not on
    # waiting; everything else must match, command for command.
    waiting_long, waiting_short = long.waiting(reports), short.waiting(short_reports)
    looks = Counter({"GET": 3 * extensions, "PTTL": 3 * extensions})
    assert Counter(waiting_long) == Counter(waiting_short) + looks, (waiting_long, waiting_short)
    # GET (miss), SET NX GET (held), PTTL (tracked), GET (after the commit)
    assert Counter(waiting_short) == Counter({"GET": 6, "SET": 3, "PTTL": 3}), waiting_short
    assert 0 not in long.by_process, long.by_process[0]  # every command was attributed
    assert long.commands.count("PING") <= 4 * 2


def test_killed_lock_holder_is_taken_over(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """SIGKILL the holder mid-compute: the others get the value within lock TTL + 1 s."""
    lock_ttl = 1.0
    holder = Worker(redis_url, namespace, "k", "1", "50", str(lock_ttl), "hold")
    workers.append(holder)
    holder.expect("ready")
    holder.send("go")
    holder.expect("computing")
    waiters = [
        Worker(redis_url, namespace, "k", "50", "50", str(lock_ttl), "announce") for _ in range(3)
    ]
    workers.extend(waiters)
    for waiter in waiters:
        waiter.expect("ready")
    for waiter in waiters:
        waiter.send("go")
    for waiter in waiters:
        waiter.expect("waiting")  # on the holder's lock
    killed_at = time.time()
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    # Every read is bounded (the bound plus time to write the report): a
    # waiter that never gets the value fails the test here, not by hanging it.
    deadline = killed_at + lock_ttl + 1.0 + 10.0
    reports = [waiter.report(timeout=max(0.0, deadline - time.time())) for waiter in waiters]
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["computes"] for r in reports) == 1
    assert sum(r["stats"]["takeovers"] for r in reports) == 1
    assert sum(r["stats"]["wait_timeouts"] for r in reports) == 0
    assert sum(len(r["results"]) for r in reports) == 150
    latest = max(t for r in reports for t in r["finished"])
    assert latest - killed_at < lock_ttl + 1.0, latest - killed_at


def test_herd_of_four_processes_computes_once_when_polling(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """wake='poll': 4 x 50 callers, 200 ms compute: still 1 compute, and a few looks per process."""
    reports, log = run_herd(
        workers, redis_url, namespace, processes=4, concurrency=50, compute_ms=200, wake="poll"
    )
    assert sum(r["stats"]["computes"] for r in reports) == 1
    values = [v for r in reports for v in r["results"]]
    assert len(values) == 200
    assert all(v == values[0] for v in values)
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["wakeups"] for r in reports) == 0  # nothing pushed
    # Looks at 10, 30, 70, 150, 310 ms...: about 5 each for a 200 ms compute.
    polls = [r["stats"]["polls"] for r in reports if not r["stats"]["computes"]]
    assert all(1 <= p <= 8 for p in polls), polls
    assert "PTTL" in log.commands
    assert len(log.commands) / 200 < 0.3, log.by_process


def test_killed_lock_holder_is_taken_over_when_polling(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """wake='poll', holder SIGKILLed mid-compute: one takeover, values within lock TTL + 1 s."""
    lock_ttl = 1.0
    holder = Worker(redis_url, namespace, "k", "1", "50", str(lock_ttl), "hold", wake="poll")
    workers.append(holder)
    holder.expect("ready")
    holder.send("go")
    holder.expect("computing")
    waiters = [
        Worker(redis_url, namespace, "k", "50", "50", str(lock_ttl), "announce", wake="poll")
        for _ in range(3)
    ]
    workers.extend(waiters)
    for waiter in waiters:
        waiter.expect("ready")
    for waiter in waiters:
        waiter.send("go")
    for waiter in waiters:
        waiter.expect("waiting")
    killed_at = time.time()
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    deadline = killed_at + lock_ttl + 1.0 + 10.0
    reports = [waiter.report(timeout=max(0.0, deadline - time.time())) for waiter in waiters]
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["computes"] for r in reports) == 1
    assert sum(r["stats"]["takeovers"] for r in reports) == 1
    assert sum(len(r["results"]) for r in reports) == 150
    latest = max(t for r in reports for t in r["finished"])
    assert latest - killed_at < lock_ttl + 1.0, latest - killed_at


def test_xfetch_refreshes_once_fleet_wide(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """3 processes whose every read wants an early refresh: the lock lets one compute at a time.

    With beta huge, XFetch is due from half the TTL on (0.3 s into a 0.6 s
    value): each process alone would refresh every 0.3 + 0.1 s (5 times in
    2 s); three refreshing independently would compute about 15 times. One
    refresher fleet-wide keeps the total near 5.
    """
    fleet = [
        Worker(redis_url, namespace, "hot", "4", "100", "5", "refresh", "0.6") for _ in range(3)
    ]
    workers.extend(fleet)
    for worker in fleet:
        worker.expect("ready")
    for worker in fleet:
        worker.send("go")
    reports = [worker.report() for worker in fleet]
    refreshes = sum(r["refreshes"] for r in reports)
    assert all(r["reads"] > 50 for r in reports)
    assert all(r["stats"]["early_refreshes"] > 0 for r in reports)
    assert 2 <= refreshes <= 8, refreshes
    assert all(r["stats"]["misses"] <= 1 for r in reports)  # nobody waited on a miss
