"""The worker processes a scenario drives (``benchmarks._worker``), one command per line."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).parent.parent


class Worker:
    """One worker process running *strategy* against *url*, keys under *namespace*.

    It answers ``ready`` once started; the constructor waits for it.
    """

    def __init__(self, strategy: str, url: str, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", strategy, url, namespace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
        )
        self.expect("ready")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return line.strip()

    def expect(self, word: str) -> None:
        line = self.read()
        if line != word:
            raise RuntimeError(f"expected {word!r}, got {line!r}")

    def report(self, timeout: float | None = None) -> dict[str, Any]:
        """The worker's next JSON report; TimeoutError if none within *timeout* seconds."""
        if timeout is not None:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no report within {timeout} s")
        return dict(json.loads(self.read()))

    def kill(self) -> None:
        """SIGKILL: the process dies mid-compute, leaving whatever it held."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Ask the worker to exit (its strategy closes its connections); kill it if it hangs."""
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


@contextmanager
def worker_pool(strategy: str, url: str, namespace: str, count: int) -> Iterator[list[Worker]]:
    """*count* workers of one strategy; on exit, each is closed (even if starting one failed)."""
    workers: list[Worker] = []
    try:
        workers.extend(Worker(strategy, url, namespace) for _ in range(count))
        yield workers
    finally:
        for worker in workers:
            worker.close()


def ask_all(
    workers: list[Worker], command: str | Callable[[int], str], timeout: float | None = None
) -> list[dict[str, Any]]:
    """Send every worker *command* (worker *n*: ``command(n)`` if it is a function),
    all before any reply is read; return their reports (see `Worker.report`)."""
    for n, worker in enumerate(workers):
        worker.send(command if isinstance(command, str) else command(n))
    return [worker.report(timeout) for worker in workers]
