"""Claims about processes, checked with several real processes on one Redis.

The waiting claims run once per wake transport, forced (``WORKER_WAKE``), on
a server started with keyspace notifications (so ``keyspace`` can run; the
library never sets them): whatever tells the waiters, one compute, values at
the commit, a takeover after a holder dies, a failed compute wakes them at
once, and a killed watching connection leaves nobody hanging.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
import redis
from _herd import Worker, run_herd

pytestmark = pytest.mark.slow

PUSHED = ["tracking", "tracking-resp3", "keyspace", "channel"]
WAKES = [*PUSHED, "poll"]
# Transports whose watch is a tracked read: an extension of the lock is
# reported, and each waiting process looks once (two commands).
TRACKED = {"tracking", "tracking-resp3"}


def _check_wake(reports: list[dict[str, object]], wake: str) -> None:
    for report in reports:
        stats = report["stats"]
        assert isinstance(stats, dict)
        assert stats["wake"] == wake, stats


@pytest.mark.parametrize("wake", WAKES)
def test_herd_of_four_processes_computes_once(
    workers: list[Worker], notifying_url: str, namespace: str, wake: str
) -> None:
    """4 processes x 50 callers of a missing key, 200 ms compute: 1 compute, 200 values."""
    reports, log = run_herd(
        workers, notifying_url, namespace, processes=4, concurrency=50, compute_ms=200, wake=wake
    )
    _check_wake(reports, wake)
    assert sum(r["stats"]["computes"] for r in reports) == 1
    values = [v for r in reports for v in r["results"]]
    assert len(values) == 200
    assert all(v == values[0] for v in values)
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["remote_waits"] for r in reports) == 3
    leader = next(r["pid"] for r in reports if r["stats"]["computes"])
    if wake == "poll":
        assert sum(r["stats"]["wakeups"] for r in reports) == 0  # nothing pushed
        # Looks at 10, 30, 70, 150, 310 ms...: about 5 each for a 200 ms compute.
        polls = [r["stats"]["polls"] for r in reports if not r["stats"]["computes"]]
        assert all(1 <= p <= 8 for p in polls), polls
        assert len(log.commands) / 200 < 0.3, log.by_process
    else:
        # Three processes waited on the fourth, and were each told once that
        # its lock changed; nobody looked by itself.
        assert sum(r["stats"]["wakeups"] for r in reports) == 3
        assert sum(r["stats"]["polls"] for r in reports) == 0
        assert len(log.commands) / 200 <= 0.11, log.by_process
    assert log.server_calls > 0
    # The holder: GET (miss), SET NX GET (taken), then straight to the
    # compute, and the commit's EVALSHA, whatever tells the others.
    holder = Counter(c for c in log.by_process[leader] if c != "PING")
    assert holder == Counter({"GET": 1, "SET": 1, "EVALSHA": 1}), log.by_process[leader]


@pytest.mark.parametrize("wake", WAKES)
def test_waiting_costs_the_same_commands_for_a_long_compute(
    workers: list[Worker], notifying_url: str, namespace: str, wake: str
) -> None:
    """Waiters do not poll: a 2 s compute costs what a 200 ms one does (poll: a stated few more).

    The holder extends its lock every lock_ttl/3 (5 s / 3 here). Tracking
    reports the extension, and each waiting process looks once (GET the
    value, PTTL the lock); keyspace and channel waiters are not told of an
    extension (their timer covers the old expiry). Nothing else depends on
    how long the compute takes.
    """
    short_reports, short = run_herd(
        workers, notifying_url, namespace,
        processes=4, concurrency=50, compute_ms=200, key="short", wake=wake,
    )  # fmt: skip
    reports, long = run_herd(
        workers, notifying_url, namespace,
        processes=4, concurrency=50, compute_ms=2000, key="long", wake=wake,
    )  # fmt: skip
    _check_wake(reports, wake)
    assert sum(r["stats"]["computes"] for r in reports) == 1
    leader = next(r["pid"] for r in reports if r["stats"]["computes"])
    extensions = long.by_process[leader].count("EVALSHA") - 1  # all but the commit
    assert extensions == 1, long.by_process[leader]
    # Heartbeat PINGs of idle connections depend on wall time, not on
    # waiting; everything else must match, command for command.
    waiting_long, waiting_short = long.waiting(reports), short.waiting(short_reports)
    assert 0 not in long.by_process, long.by_process[0]  # every command was attributed
    assert long.commands.count("PING") <= 4 * 2
    if wake == "poll":
        # Looks 10 ms apart, doubling, at most lock_ttl/4 (1.25 s): about 5
        # for 200 ms, 8 for 2 s, two commands each.
        polls = [r["stats"]["polls"] for r in reports if not r["stats"]["computes"]]
        assert all(p <= 10 for p in polls), polls
        assert Counter(waiting_long)["PTTL"] <= 3 * 10, waiting_long
        return
    per = 3 * extensions if wake in TRACKED else 0
    looks = Counter({"GET": per, "PTTL": per})
    assert Counter(waiting_long) == Counter(waiting_short) + looks, (waiting_long, waiting_short)
    # Each waiting process: GET (miss), SET NX GET (held), the watch (a
    # tracked PTTL, or SUBSCRIBE then PTTL), then the value: a GET after the
    # wake-up (none for channel: the commit published it) and UNSUBSCRIBE.
    expected = Counter({"GET": 6, "SET": 3, "PTTL": 3})
    if wake in ("keyspace", "channel"):
        expected += Counter({"SUBSCRIBE": 3, "UNSUBSCRIBE": 3})
    if wake == "channel":
        expected -= Counter({"GET": 3})
    assert Counter(waiting_short) == expected, waiting_short


def _start_holder(workers: list[Worker], url: str, namespace: str, mode: str, **kw: str) -> Worker:
    holder = Worker(url, namespace, "k", "1", "50", kw["lock_ttl"], mode, wake=kw["wake"])
    workers.append(holder)
    holder.expect("ready")
    holder.send("go")
    holder.expect("computing")
    return holder


def _start_waiters(workers: list[Worker], url: str, namespace: str, **kw: str) -> list[Worker]:
    waiters = [
        Worker(url, namespace, "k", "50", "50", kw["lock_ttl"], "announce", wake=kw["wake"])
        for _ in range(3)
    ]
    workers.extend(waiters)
    for waiter in waiters:
        waiter.expect("ready")
    for waiter in waiters:
        waiter.send("go")
    for waiter in waiters:
        waiter.expect("waiting")  # on the holder's lock
    return waiters


@pytest.mark.parametrize("wake", WAKES)
def test_killed_lock_holder_is_taken_over(
    workers: list[Worker], notifying_url: str, namespace: str, wake: str
) -> None:
    """SIGKILL the holder mid-compute: the others get the value within lock TTL + 1 s."""
    lock_ttl = 1.0
    holder = _start_holder(workers, notifying_url, namespace, "hold", lock_ttl="1.0", wake=wake)
    waiters = _start_waiters(workers, notifying_url, namespace, lock_ttl="1.0", wake=wake)
    killed_at = time.time()
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    # Every read is bounded (the bound plus time to write the report): a
    # waiter that never gets the value fails the test here, not by hanging it.
    deadline = killed_at + lock_ttl + 1.0 + 10.0
    reports = [waiter.report(timeout=max(0.0, deadline - time.time())) for waiter in waiters]
    _check_wake(reports, wake)
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["computes"] for r in reports) == 1
    assert sum(r["stats"]["takeovers"] for r in reports) == 1
    assert sum(r["stats"]["wait_timeouts"] for r in reports) == 0
    assert sum(len(r["results"]) for r in reports) == 150
    latest = max(t for r in reports for t in r["finished"])
    assert latest - killed_at < lock_ttl + 1.0, latest - killed_at


@pytest.mark.parametrize("wake", WAKES)
def test_a_failed_compute_wakes_the_other_processes_at_once(
    workers: list[Worker], notifying_url: str, namespace: str, wake: str
) -> None:
    """The holder's compute fails (lock_ttl 30 s): one waiter computes at once, the rest get it."""
    holder = _start_holder(workers, notifying_url, namespace, "gate", lock_ttl="30", wake=wake)
    waiters = _start_waiters(workers, notifying_url, namespace, lock_ttl="30", wake=wake)
    failed_at = time.time()
    holder.send("fail")
    # Without a wake-up at the release they would sleep out the lock: 30 s.
    reports = [waiter.report(timeout=15) for waiter in waiters]
    _check_wake(reports, wake)
    assert len(holder.report()["errors"]) == 1  # its own caller got the failure
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["computes"] for r in reports) == 1  # one waiter retried
    assert sum(r["stats"]["takeovers"] for r in reports) == 0
    assert sum(len(r["results"]) for r in reports) == 150
    latest = max(t for r in reports for t in r["finished"])
    assert latest - failed_at < 5.0, latest - failed_at


@pytest.mark.parametrize("wake", PUSHED)
def test_a_killed_watching_connection_leaves_nobody_hanging(
    workers: list[Worker], notifying_url: str, namespace: str, wake: str
) -> None:
    """The waiters' watching connections are killed, then the holder commits: all get it.

    The commit lands while (or before) the waiters reconnect, so it may
    never be told; the reconnect makes every waiter look again.
    """
    holder = _start_holder(workers, notifying_url, namespace, "gate", lock_ttl="30", wake=wake)
    waiters = _start_waiters(workers, notifying_url, namespace, lock_ttl="30", wake=wake)
    names = {f"worker-{w.proc.pid}" for w in waiters}
    admin = redis.Redis.from_url(notifying_url)
    try:
        watching = [
            c["id"]
            for c in admin.client_list()
            if c["name"] in names and ("P" in c["flags"] or "t" in c["flags"])
        ]
        assert len(watching) >= len(waiters), admin.client_list()
        for client_id in watching:
            admin.client_kill_filter(_id=client_id)
    finally:
        admin.close()
    committed_at = time.time()
    holder.send("return")
    reports = [waiter.report(timeout=15) for waiter in waiters]
    # With its transport gone, a waiter looks by itself until the reconnect
    # (which may come after its report): either way it is not left waiting.
    assert all(r["stats"]["wake"] in (wake, "poll") for r in reports), reports
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["computes"] for r in reports) == 0
    assert sum(r["stats"]["takeovers"] for r in reports) == 0
    assert sum(len(r["results"]) for r in reports) == 150
    latest = max(t for r in reports for t in r["finished"])
    assert latest - committed_at < 5.0, latest - committed_at


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
