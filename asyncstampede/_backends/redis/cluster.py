"""Redis Cluster: one `RedisBackend` per primary, each key's work on the primary serving its slot.

A key's value, lock and channel share one hash slot (see ``_keys``), so
everything one key needs happens on one primary, through that primary's own
`RedisBackend`: its auto-pipelined request connection, its wake transport
(client tracking and keyspace notifications are node-local; the scripts
``SPUBLISH`` on the key's channel from Redis 7.0 on, ``PUBLISH`` before),
its circuit breaker and its pool. Nothing goes through redis-py's
``RedisCluster``: asyncstampede reads the topology (``CLUSTER SLOTS``)
itself and talks to each primary with a plain client of its own, so a burst
never meets that client's per-node ``MaxConnectionsError`` or the errors
of its first concurrent commands, and one failing primary opens only its
own breaker.

Waiters register in one table for the whole cluster (`ClusterListener`):
whichever primary's transport hears of a lock's change delivers it there.

The topology is read at start, every `_REFRESH_EVERY` seconds, at once
when a primary answers ``MOVED`` (the work is then sent to the primary it
names), and every `_REFRESH_TROUBLED` seconds while a primary's breaker
is open or a slot has no primary (a failover under way). Each change of
owners makes every waiter of this process look again, on the primary
that serves its key now; a primary that left is retired (its connections
closed). A slot being migrated (``ASK``) is not followed: its keys are
unavailable for the migration's duration, so their callers fail open (they
compute, coalesced per process), as during any outage.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast, final

import anyio
import anyio.abc
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.retry import Retry

from ..._events import BreakerState, Hooks
from ..._exceptions import BackendError, BackendRefusedError, BackendUnavailableError
from ..._keys import KeyNames, make_names
from ..._problems import ProblemLog
from ..._stats import NodeStatistics
from ..base import Acquired, Held, Hit
from ..interest import UNTRACKED, Listener
from .backend import ClusterNodeRole, RedisBackend
from .errors import Redirected, blocked_loop, map_error
from .wire import pooled_command, quiet_handshake

__all__ = ["ClusterBackend", "ClusterListener", "node_connection_kwargs"]


SLOTS: Final = 16384
# Topology reads: this often while every primary answers (seconds)...
_REFRESH_EVERY: Final = 10.0
# ...and this often while a primary's breaker is open or a slot has no primary.
_REFRESH_TROUBLED: Final = 0.5
# Times one piece of work follows MOVED before it gives up (fails open).
_REDIRECTS: Final = 3

T = TypeVar("T")


def node_connection_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return the settings of *kwargs* that a plain connection to one node takes.

    *kwargs* are a ``RedisCluster``'s ``connection_kwargs`` (or a URL's):
    passwords, TLS, timeouts, protocol... The cluster client's own plumbing
    (its response callbacks, its pool size, its host and port, its pools'
    maintenance handlers) is left out; the pools made with them are
    asyncstampede's own, whose connections send no handshake a supported
    server refuses (see `quiet_handshake`).
    """
    kwargs = dict(kwargs)
    connection_class = kwargs.pop("connection_class", None)
    if not (
        isinstance(connection_class, type) and issubclass(connection_class, AbstractConnection)
    ):
        from redis.asyncio.connection import Connection

        connection_class = Connection
    accepted: set[str] = set()
    for klass in connection_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted.update(inspect.signature(init).parameters)
    kept = {
        k: v
        for k, v in kwargs.items()
        if k in accepted
        and k not in ("host", "port", "db", "self", "kwargs", "args")
        and k not in ("response_callbacks", "retry", "redis_connect_func")
        and k not in ("maint_notifications_pool_handler", "oss_cluster_maint_notifications_handler")
    }
    kept["connection_class"] = connection_class
    kept.update(quiet_handshake(ConnectionPool, connection_class))
    return kept


@final
class _Node:
    """One primary: its client and `RedisBackend`, and the task that runs them."""

    __slots__ = ("address", "backend", "client", "host", "port", "probe", "ready", "scope")

    def __init__(
        self, host: str, port: int, client: Redis, backend: RedisBackend, probe: str
    ) -> None:
        self.probe = probe  # a cache key of one of its slots (see `_probe_key`)
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.client = client
        self.backend = backend
        self.ready = anyio.Event()  # its connections' first attempts made
        self.scope: anyio.CancelScope | None = None


@final
class _Breakers:
    """What the instance reads of the circuit breakers: every primary's, as one."""

    __slots__ = ("_cluster", "on_close")

    def __init__(self, cluster: ClusterBackend) -> None:
        self._cluster = cluster
        self.on_close: list[Callable[[], None]] = []  # called each time one closes

    @property
    def state(self) -> BreakerState:
        """``open`` while any primary's is open, else ``half-open`` if one is, else ``closed``."""
        states = {node.backend.breaker.state for node in self._cluster.nodes()}
        order: tuple[BreakerState, ...] = ("open", "half-open")
        for state in order:
            if state in states:
                return state
        return "closed"

    @property
    def opens(self) -> int:
        """Times a primary's breaker opened."""
        return self._cluster.retired.opens + sum(
            node.backend.breaker.opens for node in self._cluster.nodes()
        )

    @property
    def short_circuited(self) -> int:
        """Commands not sent because their primary's breaker was open."""
        return self._cluster.retired.short_circuited + sum(
            node.backend.breaker.short_circuited for node in self._cluster.nodes()
        )

    def closed(self) -> None:
        for settle in self.on_close:
            settle()


@final
class _Retired:
    """The counters of primaries that left the cluster (so totals never go down)."""

    __slots__ = ("connect_errors", "opens", "reconnects", "refused", "short_circuited")

    def __init__(self) -> None:
        self.reconnects = self.connect_errors = self.refused = 0
        self.opens = self.short_circuited = 0

    def add(self, backend: RedisBackend) -> None:
        self.reconnects += backend.reconnects
        self.connect_errors += backend.connect_errors
        self.refused += backend.refused_connections
        self.opens += backend.breaker.opens
        self.short_circuited += backend.breaker.short_circuited


@final
class ClusterListener(Listener):
    """The waiters of a whole cluster; each lock is watched on the primary serving its slot."""

    def __init__(self, cluster: ClusterBackend) -> None:
        super().__init__()
        self._cluster = cluster

    async def watch(self, name: bytes, command: str = "PTTL") -> Any:
        """See `Listener.watch`: on the lock's primary (`UNTRACKED` while its slot has none)."""
        node = self._cluster.node_for(name)
        if node is None:
            return UNTRACKED
        return await node.backend.listener.watch(name, command)

    def forget(self, name: bytes) -> None:
        """See `Listener.forget`."""
        node = self._cluster.node_for(name)
        if node is not None:
            node.backend.listener.forget(name)

    async def check(self) -> None:
        """Check every primary's wake transport (see `RedisListener.check`)."""
        for node in self._cluster.nodes():
            await node.backend.listener.check()


@final
class ClusterBackend:
    """`Backend` over a Redis Cluster: a `RedisBackend` per primary, routed by hash slot."""

    def __init__(
        self,
        startup: Sequence[tuple[str, int]],
        connection_kwargs: dict[str, Any],
        *,
        max_connections: int = 64,
        client: RedisCluster | None = None,
        namespace: str | None = None,
        problems: ProblemLog | None = None,
        wake: str = "auto",
        budget: float = 0.5,
        hooks: Hooks | None = None,
    ) -> None:
        if not startup:
            raise ValueError("a Redis Cluster needs at least one node to start from")
        if connection_kwargs.get("decode_responses"):
            raise ValueError(
                "asyncstampede stores binary envelopes: pass a Redis client created "
                "with decode_responses=False (the default)"
            )
        self._startup = [(str(h), int(p)) for h, p in startup]
        self._kwargs = node_connection_kwargs(connection_kwargs)
        self._max_connections = max_connections
        # The user's cluster client: only its settings are used (no command
        # goes through it); closed with the instance when it is from_url's.
        self._client = client
        self.owns_client = False
        self._namespace = namespace
        first = self._startup[0]
        # (What errors, logs and metrics name: the cluster, by the node it
        # was given; each primary's own messages name that primary.)
        self.address = f"{first[0]}:{first[1]}"
        self._shared = problems if problems is not None else ProblemLog()
        self._shared.context.setdefault("address", self.address)
        self.problems = self._shared.child("redis")
        # Every change of topology is a line of its own, however soon after the last.
        self._topology_log = ProblemLog(0.0, part="redis", context=self._shared.context)
        self._wake = wake
        self._budget = budget
        self._hooks = hooks
        self.listener = ClusterListener(self)
        self.breaker = _Breakers(self)
        self.retired = _Retired()
        self._owner: list[_Node | None] = [None] * SLOTS
        self._nodes: dict[str, _Node] = {}
        self._publish: str | None = None  # PUBLISH or SPUBLISH, once a node has said its version
        self._tg: anyio.abc.TaskGroup | None = None
        self._wanted = anyio.Event()  # a topology read is asked for
        self._reading: anyio.Event | None = None  # set when the read under way ends
        self._said_topology = ""
        self._topology_error: BackendError | None = None  # why the last read failed
        self._freshest: tuple[str, int] | None = None  # a primary a MOVED named
        # slot -> (when, the primary a MOVED named for it), until a topology
        # read begun after that has been served
        self._moved: dict[int, tuple[float, _Node]] = {}

    # -- what the instance reads --------------------------------------------------

    def nodes(self) -> list[_Node]:
        """Return the primaries in use now."""
        return list(self._nodes.values())

    def node_for(self, name: bytes) -> _Node | None:
        """Return the primary serving *name*'s slot now (None: no primary serves it now)."""
        return self._owner[key_slot(name)]

    def node_statistics(self) -> tuple[NodeStatistics, ...]:
        """Return each primary's figures (see `Statistics.nodes`), by address."""
        served: dict[str, int] = {}
        for node in self._owner:
            if node is not None:
                served[node.address] = served.get(node.address, 0) + 1
        return tuple(
            NodeStatistics(
                address=node.address,
                slots=served.get(node.address, 0),
                wake=node.backend.wake,
                breaker=node.backend.breaker.state,
                breaker_opens=node.backend.breaker.opens,
                short_circuited=node.backend.breaker.short_circuited,
                reconnects=node.backend.reconnects,
                connect_errors=node.backend.connect_errors,
            )
            for node in sorted(self.nodes(), key=lambda n: (n.host, n.port))
        )

    @property
    def wake(self) -> str:
        """Each primary's wake transport; one name when they agree, else ``a+b``."""
        kinds = sorted({node.backend.wake for node in self.nodes()})
        return "+".join(kinds) if kinds else "poll"

    @property
    def reconnects(self) -> int:
        """Connections of the primaries' own re-established (see `RedisBackend.reconnects`)."""
        return self.retired.reconnects + sum(n.backend.reconnects for n in self.nodes())

    @property
    def connect_errors(self) -> int:
        """Failed attempts to (re)connect them."""
        return self.retired.connect_errors + sum(n.backend.connect_errors for n in self.nodes())

    @property
    def refused_connections(self) -> int:
        """Of those, the ones a server refused."""
        return self.retired.refused + sum(n.backend.refused_connections for n in self.nodes())

    def overran(self, doing: str, budget: float, late: float = 0.0) -> BackendError:
        """See `Backend.overran`."""
        return BackendUnavailableError(
            f"Redis Cluster at {self.address} unavailable for {doing}: no reply from the "
            f"key's primary within the {budget * 1000:.0f} ms left of the call's budget for "
            f"Redis (redis_budget={self._budget}){blocked_loop(late)}",
            address=self.address,
            command=doing,
        )

    def gather(self) -> None:
        """See `Backend.gather`: on every primary's request connection."""
        for node in self._nodes.values():
            node.backend.gather()

    # -- life -----------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read the topology, serve every primary, and keep the topology current until cancelled.

        Started once the first topology read has been tried and the primaries
        it found have made their first connection attempts (one budget in
        all, as for one Redis: a hung cluster does not hold the start up).
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            with anyio.move_on_after(self._budget * 2):
                try:
                    await self._refresh()
                except BackendError as exc:
                    self.problems.report(exc, "reading the Redis Cluster's topology at start")
                with anyio.move_on_after(self._budget):
                    for node in self.nodes():
                        await node.ready.wait()
            tg.start_soon(self._keep_current)
            task_status.started()

    async def prepare(self) -> None:
        """Load the scripts into every primary (see `RedisBackend.prepare`)."""
        async with anyio.create_task_group() as tg:
            for node in self.nodes():
                tg.start_soon(node.backend.prepare)

    async def check(self, names: KeyNames) -> None:
        """Check every primary (see `RedisBackend.check`), each with a probe key it serves.

        Raises:
            BackendUnavailableError: no primary is known (the topology could
                not be read), or one cannot be reached.
            BackendRefusedError: a primary refused something asyncstampede needs.

        """
        await self._refresh(own=True)  # what the cluster says now, not what it said
        unserved = sum(1 for node in self._owner if node is None)
        if unserved:
            raise self._unserved(f"{unserved} of {SLOTS} hash slots")
        for node in self.nodes():
            await node.backend.check(make_names(self._namespace or "asyncstampede", node.probe))

    async def aclose(self) -> None:
        """Close every primary's connections (and the cluster client, if ours)."""
        for node in self.nodes():
            self._retire(node)
        if self.owns_client and self._client is not None:
            await self._client.aclose()

    # -- topology -------------------------------------------------------------------

    async def _keep_current(self) -> None:
        while True:
            troubled = any(n.backend.breaker.skipping for n in self.nodes()) or any(
                node is None for node in self._owner
            )
            with anyio.move_on_after(_REFRESH_TROUBLED if troubled else _REFRESH_EVERY):
                await self._wanted.wait()
            self._wanted = anyio.Event()
            try:
                await self._refresh()
            except BackendError as exc:
                self.problems.report(exc, "reading the Redis Cluster's topology")

    def _ask_for_topology(self) -> None:
        self._wanted.set()

    async def _refresh(self, *, own: bool = False) -> None:
        """Read the topology and serve it; one read at a time (others wait for it).

        *own*: wait for a read under way, then make one of this call's own
        (whose failure it raises).

        Raises:
            BackendError: the topology could not be read (also kept, for the
                errors of the calls whose slot has no primary meanwhile).

        """
        reading = self._reading
        if reading is not None:
            await reading.wait()
            if not own:
                return
            await self._refresh(own=True)
            return
        self._reading = anyio.Event()
        began = anyio.current_time()
        try:
            try:
                ranges = await self._read_slots()
            except BackendError as exc:
                self._topology_error = exc
                raise
            self._topology_error = None
            await self._serve(ranges, began)
        finally:
            self._reading.set()
            self._reading = None

    async def _read_slots(self) -> list[tuple[int, int, str, int]]:
        """Return ``(first, last, host, port)`` of every slot range, from the first node to answer.

        Each node asked gets one budget (``redis_budget``); a primary whose
        breaker is open is asked last.

        Raises:
            BackendRefusedError: the server is not a cluster (or refuses ``CLUSTER``).
            BackendUnavailableError: no node answered.

        """
        nodes = sorted(self.nodes(), key=lambda node: node.backend.breaker.skipping)
        candidates = [(node.host, node.port) for node in nodes]
        if self._freshest is not None:
            # A primary that just answered for a slot it was given knows of
            # the change; the others may not yet.
            candidates.insert(0, self._freshest)
            self._freshest = None
        for address in self._startup:
            if address not in candidates:
                candidates.append(address)
        last: BackendError | None = None
        for host, port in candidates:
            known = self._nodes.get(f"{host}:{port}")
            client = known.client if known is not None else self._client_for(host, port)
            try:
                with anyio.fail_after(self._budget):
                    reply = await pooled_command(client.connection_pool, "CLUSTER", "SLOTS")
                    if self._publish is None:
                        info = await pooled_command(client.connection_pool, "INFO", "server")
                        self._publish = "SPUBLISH" if _major(info) >= 7 else "PUBLISH"
            except TimeoutError:
                last = BackendUnavailableError(
                    f"Redis at {host}:{port} unavailable for CLUSTER SLOTS: no reply within "
                    f"{self._budget * 1000:.0f} ms (redis_budget)",
                    address=f"{host}:{port}",
                    command="CLUSTER SLOTS",
                )
                continue
            except (RedisError, OSError) as exc:
                error = map_error(exc, address=f"{host}:{port}", command="CLUSTER SLOTS")
                if isinstance(error, BackendRefusedError) and "cluster support" in str(exc):
                    raise BackendRefusedError(
                        f"Redis at {host}:{port} is not a Redis Cluster ({exc}): "
                        "pass a redis.asyncio.Redis client, or leave cluster=True out of "
                        "Stampede.from_url",
                        address=f"{host}:{port}",
                        command="CLUSTER SLOTS",
                        hint="use a plain client for a server that is not a cluster",
                    ) from exc
                last = error
                continue
            finally:
                if known is None:
                    await client.aclose()
            return _ranges(reply, host)
        assert last is not None
        raise last

    def _client_for(self, host: str, port: int) -> Redis:
        pool = ConnectionPool(
            host=host,
            port=port,
            max_connections=self._max_connections,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.01), 2),
            **self._kwargs,
        )
        return Redis.from_pool(pool)

    async def _serve(self, ranges: list[tuple[int, int, str, int]], began: float) -> None:
        """Route each slot to its primary, starting a backend for each new primary.

        A slot a ``MOVED`` sent elsewhere since the read *began* stays where
        it was sent: the node read may not have heard of that change yet.
        """
        owner: list[_Node | None] = [None] * SLOTS
        fresh: list[_Node] = []
        wanted: dict[str, list[tuple[int, int]]] = {}
        for first, last, host, port in ranges:
            wanted.setdefault(f"{host}:{port}", []).append((first, last))
        for address, slots in wanted.items():
            node = self._nodes.get(address)
            if node is None:
                host, _, number = address.rpartition(":")
                node = self._start(host, int(number), slots)
                fresh.append(node)
            for first, last in slots:
                owner[first : last + 1] = [node] * (last - first + 1)
        kept: set[str] = set()
        for slot, (when, node) in list(self._moved.items()):
            if when >= began and node.address in self._nodes:
                owner[slot] = node
                kept.add(node.address)
            else:
                del self._moved[slot]
        changed = any(a is not b for a, b in zip(owner, self._owner, strict=True))
        previous = {n.address for n in self._owner if n is not None}
        self._owner = owner
        for address in [a for a in self._nodes if a not in wanted and a not in kept]:
            self._retire(self._nodes[address], left=True)
        if changed:
            self._say_topology(wanted, previous)
            # Every waiter looks again, on the primary that serves its key now.
            self.listener.recheck_all()
        if fresh:
            # Served at once (until its connections are up, its commands go
            # through its pool and its waiters look by themselves); its
            # scripts are loaded once it is up, within one budget.
            with anyio.move_on_after(self._budget):
                for node in fresh:
                    await node.ready.wait()
            async with anyio.create_task_group() as tg:
                for node in fresh:
                    tg.start_soon(node.backend.prepare)

    def _say_topology(self, wanted: dict[str, list[tuple[int, int]]], previous: set[str]) -> None:
        """Log the topology served now, and what changed since the last (each change: a line)."""
        served = sum(last - first + 1 for slots in wanted.values() for first, last in slots)
        said = ", ".join(
            f"{address} ({sum(b - a + 1 for a, b in slots)} slots)"
            for address, slots in sorted(wanted.items())
        )
        text = f"Redis Cluster at {self.address}: {len(wanted)} primaries: {said}"
        if served < SLOTS:
            text += f"; {SLOTS - served} slots have no primary (their keys fail open)"
        if previous:
            came = sorted(set(wanted) - previous)
            went = sorted(previous - set(wanted))
            moves = [f"new primary {', '.join(came)}"] if came else []
            moves += [f"{', '.join(went)} no longer a primary"] if went else []
            text += "; changed: " + ("; ".join(moves) or "slots moved between primaries")
        if text != self._said_topology:
            level = logging.INFO if served == SLOTS else logging.WARNING
            self._topology_log.say(level, text, kind=text)
            self._said_topology = text

    def _start(self, host: str, port: int, slots: list[tuple[int, int]]) -> _Node:
        client = self._client_for(host, port)
        ns = self._namespace or "asyncstampede"
        probe = _probe_key(ns, slots)
        problems = ProblemLog(context={**self._shared.context, "address": f"{host}:{port}/0"})
        backend = RedisBackend(
            client,
            owns_client=True,
            namespace=self._namespace,
            problems=problems,
            wake=self._wake,
            budget=self._budget,
            hooks=self._hooks,
            node=ClusterNodeRole(
                probe_key=probe,
                publish=self._publish or "PUBLISH",
                registry=self.listener,
                on_breaker_change=self._breaker_changed,
            ),
        )
        backend.breaker.on_close.append(self.breaker.closed)
        node = _Node(host, port, client, backend, probe)
        self._nodes[node.address] = node
        if self._tg is not None:
            self._tg.start_soon(self._run_node, node)
        return node

    def _breaker_changed(self) -> None:
        self._ask_for_topology()

    async def _run_node(self, node: _Node) -> None:
        with anyio.CancelScope() as scope:
            node.scope = scope
            try:
                await node.backend.run(task_status=_Started(node.ready))
            except Exception:  # a bug: the other primaries must go on
                self.problems.say(
                    logging.ERROR, f"serving the primary at {node.address} failed", exc_info=True
                )
            finally:
                node.ready.set()
                with anyio.CancelScope(shield=True):
                    await node.backend.aclose()

    def _retire(self, node: _Node, *, left: bool = False) -> None:
        """Stop serving *node* (it *left* the cluster, or the instance closes)."""
        self._nodes.pop(node.address, None)
        self.retired.add(node.backend)
        if left and node.backend.breaker.state != "closed":
            # Its opening was logged: its end is too, as a closing would be.
            self._topology_log.say(
                logging.INFO,
                f"circuit breaker closed: Redis at {node.address} is no longer a primary of "
                f"the cluster at {self.address} (its slots are served by others)",
            )
        if node.scope is not None:
            node.scope.cancel()  # (its task closes its connections)

    # -- routing --------------------------------------------------------------------

    async def _on(self, name: bytes, work: Callable[[RedisBackend], Awaitable[T]]) -> T:
        """Run *work* on the primary serving *name*, following ``MOVED`` to its new one.

        Raises:
            BackendUnavailableError: no primary serves the slot now (a
                failover under way), or the work kept being redirected.
            BackendError: as the work raises.

        """
        slot = key_slot(name)
        moved = asked = 0
        until = 0.0  # (set at the first ASK)
        while True:
            node = self._owner[slot]
            if node is None:
                self._ask_for_topology()
                raise self._unserved(f"hash slot {slot}")
            try:
                return await work(node.backend)
            except Redirected as exc:
                if exc.ask:
                    # The slot is being migrated and this key has left: wait
                    # for the move to end (a MOVED then, followed), one
                    # budget at most (redis-py waits out TRYAGAIN alike).
                    now = anyio.current_time()
                    if not asked:
                        until = now + self._budget
                    elif now >= until:
                        raise
                    await anyio.sleep(min(0.1, 0.005 * 2**asked, max(0.0, until - now)))
                    asked += 1
                    continue
                moved += 1
                if moved == _REDIRECTS:
                    self._ask_for_topology()
                    raise
                await self._follow(exc)

    def _unserved(self, what: str) -> BackendUnavailableError:
        """Return the error for work on *what*, which no primary serves now (saying why)."""
        cause = self._topology_error
        why = (
            f"the topology cannot be read: {cause}"
            if cause is not None
            else "a failover or a slot migration under way?"
        )
        return BackendUnavailableError(
            f"Redis Cluster at {self.address} unavailable: no primary serves {what} now ({why})",
            address=self.address,
        )

    async def _follow(self, moved: Redirected) -> None:
        """Send *moved*'s slot to the primary it names from now on; read the rest in the background.

        The node that answered ``MOVED`` knows the slot's owner before the
        other nodes may (a failover just finished): it is believed, and a
        primary not served yet is started at once.
        """
        host, port = moved.target
        node = self._nodes.get(f"{host}:{port}")
        if node is None:
            node = self._start(host, port, [(moved.slot, moved.slot)])
            with anyio.move_on_after(self._budget):
                await node.ready.wait()
        self._owner[moved.slot] = node
        self._moved[moved.slot] = (anyio.current_time(), node)
        self._freshest = (host, port)  # the next topology read asks it first
        self._ask_for_topology()

    async def _mget(self, keys: Sequence[bytes]) -> list[bytes | BackendError | None]:
        """``MGET`` *keys* one slot at a time (a Cluster allows no other), concurrently.

        The keys of a slot whose primary failed get its error, the others
        their values: one slow or failed primary fails only its own keys.

        Raises:
            BackendError: every slot's read failed (the first one's error).

        """
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key), []).append(i)
        found: list[bytes | BackendError | None] = [None] * len(keys)
        failed: list[BackendError] = []

        async def one(indices: list[int]) -> None:
            part = [keys[i] for i in indices]
            try:
                got: list[bytes | None] = await self._on(
                    part[0], lambda backend: backend.mget(part)
                )
            except BackendError as exc:
                failed.append(exc)
                for i in indices:
                    found[i] = exc
                return
            for i, value in zip(indices, got, strict=True):
                found[i] = value

        if len(by_slot) == 1:
            await one(next(iter(by_slot.values())))
        else:
            try:
                async with anyio.create_task_group() as tg:
                    for indices in by_slot.values():
                        tg.start_soon(one, indices)
            except BaseExceptionGroup as group:
                raise _first(group) from None
        if len(failed) == len(by_slot):
            raise failed[0]
        return found

    # -- the Backend operations -----------------------------------------------------

    async def acquire(
        self,
        names: KeyNames,
        token: bytes,
        lock_ms: int,
        *,
        read: bool,
        seen: bytes | None = None,
        watch: bool = True,
        recheck: bool = False,
    ) -> Hit | Acquired | Held:
        """See `Backend.acquire`."""
        return await self._on(
            names.value,
            lambda b: b.acquire(
                names, token, lock_ms, read=read, seen=seen, watch=watch, recheck=recheck
            ),
        )

    async def read(self, names: KeyNames) -> bytes | None:
        """See `Backend.read`."""
        return await self._on(names.value, lambda b: b.read(names))

    async def read_many(
        self, names: Sequence[KeyNames], tags: Sequence[bytes] = ()
    ) -> list[bytes | BackendError | None]:
        """See `Backend.read_many`: one ``MGET`` per slot, the slots' at once.

        A primary that fails fails its own keys (their items are its error).
        """
        return await self._mget([*(n.value for n in names), *tags])

    async def commit(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.commit`."""
        return await self._on(names.value, lambda b: b.commit(names, token, payload, ttl_ms))

    async def release(self, names: KeyNames, token: bytes) -> bool:
        """See `Backend.release`."""
        return await self._on(names.value, lambda b: b.release(names, token))

    async def extend(self, names: KeyNames, token: bytes, lock_ms: int) -> bool:
        """See `Backend.extend`."""
        return await self._on(names.value, lambda b: b.extend(names, token, lock_ms))

    async def write_if_absent(
        self, names: KeyNames, payload: bytes, ttl_ms: int, holder: bytes | None
    ) -> bool:
        """See `Backend.write_if_absent`."""
        return await self._on(
            names.value, lambda b: b.write_if_absent(names, payload, ttl_ms, holder)
        )

    async def restamp(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.restamp`."""
        return await self._on(names.value, lambda b: b.restamp(names, token, payload, ttl_ms))

    async def lock_holder(self, names: KeyNames) -> bytes | None:
        """See `Backend.lock_holder`."""
        return await self._on(names.value, lambda b: b.lock_holder(names))

    async def invalidate(self, names: KeyNames) -> None:
        """See `Backend.invalidate`."""
        await self._on(names.value, lambda b: b.invalidate(names))

    async def read_tagged(
        self, names: KeyNames, tags: list[bytes]
    ) -> tuple[bytes | None, list[bytes | None]]:
        """See `Backend.read_tagged`: the value and the tags' generations, one ``MGET`` per slot."""
        found = await self._mget([names.value, *tags])
        for item in found:
            if isinstance(item, BackendError):
                raise item  # (one key's read: it fails as a whole)
        return cast("bytes | None", found[0]), cast("list[bytes | None]", found[1:])

    async def generations(self, tags: list[bytes], *, renew: bool) -> list[bytes]:
        """See `Backend.generations`, each tag on its own slot's primary."""
        made: list[bytes] = []
        for tag in tags:

            async def one(backend: RedisBackend, tag: bytes = tag) -> list[bytes]:
                return await backend.generations([tag], renew=renew)

            made += await self._on(tag, one)
        return made

    async def put(self, names: KeyNames, payload: bytes, ttl_ms: int) -> None:
        """See `Backend.put`."""
        await self._on(names.value, lambda b: b.put(names, payload, ttl_ms))


@final
class _Started:
    """A task status that sets an event (the node's `ready`)."""

    __slots__ = ("_event",)

    def __init__(self, event: anyio.Event) -> None:
        self._event = event

    def started(self, value: object = None) -> None:
        self._event.set()


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """Return the first exception in *group* (flattened)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup) and first.exceptions:
        first = first.exceptions[0]
    return first


def _major(info: Any) -> int:
    """Return the major version in an ``INFO server`` reply (parsed by redis-py, or raw)."""
    version = ""
    if isinstance(info, dict):
        version = str(info.get("redis_version", ""))
    elif isinstance(info, bytes | str):
        text = info.decode() if isinstance(info, bytes) else info
        for line in text.splitlines():
            if line.startswith("redis_version:"):
                version = line.split(":", 1)[1]
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _ranges(reply: Any, asked: str) -> list[tuple[int, int, str, int]]:
    """Parse a ``CLUSTER SLOTS`` reply; a primary without a host is the node asked (*asked*)."""
    ranges = []
    for entry in reply:
        first, last, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        ranges.append((first, last, host or asked, int(primary[1])))
    return ranges


def _probe_key(namespace: str, slots: list[tuple[int, int]]) -> str:
    """Return a cache key whose names fall in one of *slots* (a primary's), for its probes."""
    for i in range(100_000):
        key = f"asyncstampede:probe:{i}"
        slot = key_slot(make_names(namespace, key).value)
        if any(first <= slot <= last for first, last in slots):
            return key
    return "asyncstampede:probe"  # (a primary with almost no slots: its probe gets MOVED)
