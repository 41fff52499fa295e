"""Driving worker processes (``_worker.py``) and watching the commands they send."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

WORKER = str(Path(__file__).with_name("_worker.py"))


class Worker:
    """One worker process speaking the line protocol of _worker.py.

    Its lines are read by a thread of their own, so that every read here
    has a deadline: a worker that never answers fails the test when the
    deadline passes, not when pytest's timeout kills the whole test.
    """

    def __init__(self, *args: str, wake: str = "auto", script: str = WORKER) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # The worker's Stampede(wake=...): how its waiters learn of lock changes.
            env={**os.environ, "PYTHONWARNINGS": "error", "WORKER_WAKE": wake},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output: the process exited

    def _line(self, what: str, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pid = self.proc.pid
            raise AssertionError(f"worker {pid}: no {what} within {timeout:.1f} s") from None
        assert line, f"worker {self.proc.pid} exited with {self.proc.wait()} before its {what}"
        return line

    def expect(self, word: str, timeout: float = 30) -> None:
        line = self._line(repr(word), timeout).strip()
        assert line == word, f"expected {word!r}, got {line!r}"

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def line(self, what: str, timeout: float = 30) -> str:
        """Return the worker's next line (*what* names it in the failure), stripped."""
        return self._line(what, timeout).strip()

    def report(self, timeout: float = 30) -> dict[str, Any]:
        return dict(json.loads(self._line("report", timeout)))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)  # the process is gone: its output ends
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


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
        # Set once Redis has acknowledged MONITOR: every command from now on is seen.
        assert self._ready.wait(10), "MONITOR did not start"
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
    wake: str = "auto",
) -> tuple[list[dict[str, Any]], CommandLog]:
    """Start the processes, release them at once, return their reports and commands."""
    herd = [
        Worker(url, namespace, key, str(concurrency), str(compute_ms), "5", wake=wake)
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
