"""The soak's worker processes: started, asked to hold a lock, killed, replaced, stopped.

Only processes started here are ever signalled, each by its own ``Popen``.
Each worker writes an event log (see `benchmarks.soak._worker`); its stderr
(asyncstampede's log messages) goes to a file beside it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ._worker import Config

_ROOT = Path(__file__).parent.parent.parent


@contextmanager
def shielded() -> Iterator[None]:
    """Start children in here: they are born with SIGINT blocked, and keep it so.

    Ctrl-C at a terminal signals the whole process group; this way it
    reaches the soak program alone (its SIGINT is only held back while in
    here), which then stops its workers and its server in order and
    reports, instead of the server shutting down under the workers.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@dataclass
class Process:
    """One worker process, from its start to its end.

    ``end`` says how it ended: ``running``, ``stopped`` (asked to, and it
    did), ``killed`` (SIGKILLed by the soak while it held a lock),
    ``crashed (exit N)`` (it ended by itself), or ``did not stop`` (asked to
    stop, it did not within the time given, and was killed).
    """

    slot: int
    proc: subprocess.Popen[bytes]
    log: Path
    stderr: Path
    started: float
    end: str = "running"
    ended: float | None = None
    _offset: int = 0
    _partial: bytes = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def new_events(self) -> list[dict[str, Any]]:
        """The events logged since the last call (complete lines only)."""
        with self.log.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line]

    def wait_event(self, ev: str, timeout: float) -> dict[str, Any] | None:
        """The next event *ev* it logs within *timeout* seconds; None if none (or it ended)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.new_events():
                if event["ev"] == ev:
                    return event
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


@dataclass
class Fleet:
    """The workers of one soak run, every process ever started, by slot."""

    config: dict[str, Any]
    folder: Path
    processes: list[Process] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)

    def live(self) -> list[Process]:
        return [p for p in self.processes if p.end == "running"]

    def launch(self, slot: int) -> Process:
        """Start a worker in *slot* (not waiting for it: see `ready`)."""
        n = len(self.processes)
        log = self.folder / f"worker-{slot}-{n}.jsonl"
        stderr = self.folder / f"worker-{slot}-{n}.stderr"
        config = Config(**{**self.config, "slot": slot, "log": str(log)})
        err = stderr.open("wb")
        self._files.append(err)
        with shielded():
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.soak._worker", json.dumps(asdict(config))],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=_ROOT,
            )
        process = Process(slot, proc, log, stderr, time.time())
        log.touch()
        self.processes.append(process)
        return process

    def ready(self, process: Process, timeout: float = 60.0) -> None:
        """Wait until *process* has entered its instances; RuntimeError if it does not."""
        if process.wait_event("ready", timeout) is None:
            self.kill(process, "crashed" if process.proc.poll() is not None else "did not stop")
            raise RuntimeError(
                f"worker {process.pid} did not start; its stderr: {tail(process.stderr)}"
            )

    def start(self, slot: int) -> Process:
        process = self.launch(slot)
        self.ready(process)
        return process

    def send(self, process: Process, line: str) -> bool:
        """Send *process* one command line; False if it can no longer read."""
        assert process.proc.stdin is not None
        try:
            process.proc.stdin.write(line.encode() + b"\n")
            process.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def kill(self, process: Process, end: str = "killed") -> None:
        """SIGKILL *process* (if it still runs) and wait for it."""
        if process.proc.poll() is None:
            process.proc.kill()
        process.proc.wait()
        process.end, process.ended = end, time.time()
        if process.proc.stdin is not None:
            process.proc.stdin.close()

    def reap(self) -> list[Process]:
        """Workers that ended by themselves since the last look: marked crashed, returned."""
        gone = []
        for process in self.live():
            code = process.proc.poll()
            if code is not None:
                process.end, process.ended = f"crashed (exit {code})", time.time()
                gone.append(process)
        return gone

    def stop_all(self, timeout: float) -> None:
        """Ask every live worker to stop; kill those not gone within *timeout* seconds."""
        live = self.live()
        for process in live:
            self.send(process, "stop")
        deadline = time.monotonic() + timeout
        for process in live:
            try:
                code = process.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(process, "did not stop")
                continue
            process.end = "stopped" if code == 0 else f"crashed (exit {code})"
            process.ended = time.time()

    def close(self) -> None:
        """Kill whatever still runs (an interrupted or failed run) and close the files."""
        for process in self.live():
            self.kill(process, "killed at the end")
        for process in self.processes:
            if process.proc.stdin is not None and not process.proc.stdin.closed:
                process.proc.stdin.close()
        for err in self._files:
            err.close()


def tail(path: Path, lines: int = 5) -> str:
    """The last few lines of a text file, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])
