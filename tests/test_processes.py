"""Claims about processes, checked with several real processes on one Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("_worker.py"))


class Worker:
    """One worker process speaking the line protocol of _worker.py."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )

    def expect(self, word: str, timeout: float = 30) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline().strip()
        assert line == word, f"expected {word!r}, got {line!r}"
        assert time.monotonic() < deadline

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"worker {self.proc.pid} exited with {self.proc.wait()}"
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


class CommandLog:
    """Every command clients send to the server, seen through MONITOR.

    Commands run inside Lua scripts are left out: they are server work, not
    round trips. ``server_calls`` adds INFO commandstats' count, which includes
    them, for the record.
    """

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)  # for MONITOR
        self._control = redis.Redis.from_url(url)  # for INFO and the end marker
        self._marker = f"end-{os.getpid()}-{time.monotonic_ns()}"
        self.commands: list[str] = []
        self._addresses: list[str] = []
        self.by_process: dict[int, list[str]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stats_before = self._commandstats()

    def _commandstats(self) -> int:
        stats: dict[str, dict[str, int]] = self._control.info("commandstats")
        return sum(
            v["calls"]
            for k, v in stats.items()
            if k not in ("cmdstat_info", "cmdstat_echo", "cmdstat_monitor")
        )

    def _run(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            for entry in monitor.listen():
                command = str(entry["command"])
                if self._marker in command:
                    return
                if entry.get("client_type") != "lua" and not command.startswith(("INFO", "ECHO")):
                    self.commands.append(command.split(" ", 1)[0])
                    self._addresses.append(f"{entry['client_address']}:{entry['client_port']}")

    def __enter__(self) -> CommandLog:
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        names = {c["addr"]: c["name"] for c in self._control.client_list()}
        self._control.echo(self._marker)
        self._thread.join(10)
        for command, address in zip(self.commands, self._addresses, strict=True):
            name = names.get(address, "")
            pid = int(name.removeprefix("worker-")) if name.startswith("worker-") else 0
            self.by_process.setdefault(pid, []).append(command)
        self.server_calls = self._commandstats() - self._stats_before
        self._client.close()
        self._control.close()

    def waiting(self, reports: list[dict[str, Any]]) -> list[str]:
        """Commands of the processes that did not compute, heartbeat PINGs left out."""
        leader = {r["pid"] for r in reports if r["stats"]["computes"]}
        return [
            c
            for pid, commands in self.by_process.items()
            if pid not in leader
            for c in commands
            if c != "PING"
        ]


def run_herd(
    workers: list[Worker],
    url: str,
    namespace: str,
    *,
    processes: int,
    concurrency: int,
    compute_ms: int,
    key: str = "hot",
) -> tuple[list[dict[str, Any]], CommandLog]:
    """Start the processes, release them at once, return their reports and commands."""
    herd = [
        Worker(url, namespace, key, str(concurrency), str(compute_ms), "5")
        for _ in range(processes)
    ]
    workers.extend(herd)
    for worker in herd:
        worker.expect("ready")
    with CommandLog(url) as log:
        for worker in herd:
            worker.send("go")
        reports = [worker.report() for worker in herd]
    return reports, log


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
    waiters = [Worker(redis_url, namespace, "k", "50", "50", str(lock_ttl)) for _ in range(3)]
    workers.extend(waiters)
    for waiter in waiters:
        waiter.expect("ready")
    for waiter in waiters:
        waiter.send("go")
    time.sleep(0.3)  # the waiters are now waiting on the holder's lock
    killed_at = time.time()
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    reports = [waiter.report() for waiter in waiters]
    assert not any(r["errors"] for r in reports)
    assert sum(r["stats"]["computes"] for r in reports) == 1
    assert sum(r["stats"]["takeovers"] for r in reports) == 1
    assert sum(r["stats"]["wait_timeouts"] for r in reports) == 0
    assert sum(len(r["results"]) for r in reports) == 150
    latest = max(t for r in reports for t in r["finished"])
    assert latest - killed_at < lock_ttl + 1.0, latest - killed_at


def test_xfetch_refreshes_once_fleet_wide(
    workers: list[Worker], redis_url: str, namespace: str
) -> None:
    """3 processes whose every read wants an early refresh: the lock lets one compute at a time.

    Each process alone would refresh back to back (2 s / 200 ms = 10 times);
    three processes refreshing independently would compute about 30 times.
    One refresher fleet-wide keeps the total near 10.
    """
    fleet = [Worker(redis_url, namespace, "hot", "4", "200", "5", "refresh") for _ in range(3)]
    workers.extend(fleet)
    for worker in fleet:
        worker.expect("ready")
    for worker in fleet:
        worker.send("go")
    reports = [worker.report() for worker in fleet]
    refreshes = sum(r["refreshes"] for r in reports)
    assert all(r["reads"] > 50 for r in reports)
    assert all(r["stats"]["early_refreshes"] > 0 for r in reports)
    assert 3 <= refreshes <= 14, refreshes
    assert all(r["stats"]["misses"] <= 1 for r in reports)  # nobody waited on a miss
