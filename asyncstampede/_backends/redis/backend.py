"""The Redis backend: every command asyncstampede sends, and the error boundary.

Every Redis and socket error is mapped to a `BackendError` (unavailable or
refused, see ``_redis_errors``) in this module and nowhere else. Two kinds of
refusal are handled here instead of being passed on:

- ``NOSCRIPT`` (the server lost its scripts: a restart, ``SCRIPT FLUSH``, a
  failover to a replica that never loaded them): the script is loaded again
  and the call repeated, once;
- ``SET ... NX ... GET`` rejected as a syntax error (Redis before 7.0): locks
  are taken by an equivalent script from then on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, final

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError, WatchError

from ..._events import Hooks, TransportChange
from ..._exceptions import BackendError, BackendRefusedError, BackendUnavailableError
from ..._keys import KeyNames, make_names, value_name_of
from ..._problems import ProblemLog
from ..._tags import new_generation
from ..base import ACQUIRED, Acquired, Held, Hit
from ..breaker import Breaker
from ..interest import SUBSCRIBED, UNTRACKED, Listener
from . import scripts as _scripts
from .errors import address_of, blocked_loop
from .listener import RedisListener
from .mux import Multiplexer
from .route import Route, past_breaker
from .scripts import COMMITTED, COMMITTED_MS, committed_ms, render
from .sentinel import close_owned, primary_watch
from .wire import link_factory, redis_py_problems

__all__ = ["ClusterNodeRole", "RedisBackend"]

# What `Listener.watch` answers when the caller must read the lock itself.
_READ_YOURSELF = (UNTRACKED, SUBSCRIBED)


@final
@dataclass(frozen=True, slots=True)
class ClusterNodeRole:
    """What a `RedisBackend` serving one primary of a Redis Cluster is told (see ``cluster``)."""

    probe_key: str  # a cache key of a slot this primary serves, for its probes
    publish: str  # PUBLISH, or SPUBLISH (7.0 and later): what the scripts tell waiters with
    registry: Listener  # the cluster's interests, which this node's transports deliver to
    on_breaker_change: Callable[[], None]  # the cluster looks at its topology again


@final
class RedisBackend:
    """`Backend` over one ``redis.asyncio.Redis`` client."""

    def __init__(
        self,
        client: Redis,
        *,
        owns_client: bool,
        namespace: str | None = None,
        problems: ProblemLog | None = None,
        wake: str = "auto",
        budget: float = 0.5,
        hooks: Hooks | None = None,
        node: ClusterNodeRole | None = None,
    ) -> None:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError(
                "asyncstampede stores binary envelopes: pass a Redis client created "
                "with decode_responses=False (the default)"
            )
        self._client = client
        self.owns_client = owns_client
        self._namespace = namespace
        self.address = address_of(kwargs)
        shared = problems if problems is not None else ProblemLog()
        shared.context.setdefault("address", self.address)
        self.problems = shared.child("redis")
        publish = "PUBLISH" if node is None else node.publish
        self._commit = client.register_script(render(_scripts.COMMIT, publish))
        self._release = client.register_script(render(_scripts.RELEASE, publish))
        self._extend = client.register_script(render(_scripts.EXTEND, publish))
        self._take = client.register_script(render(_scripts.TAKE, publish))
        self._take_or_name = client.register_script(render(_scripts.TAKE_OR_NAME, publish))
        self._write_if_absent = client.register_script(render(_scripts.WRITE_IF_ABSENT, publish))
        self._restamp = client.register_script(render(_scripts.RESTAMP, publish))
        self._invalidate = client.register_script(render(_scripts.INVALIDATE, publish))
        self._put = client.register_script(render(_scripts.PUT, publish))
        self._scripts = [
            self._commit,
            self._release,
            self._extend,
            self._take,
            self._take_or_name,
            self._write_if_absent,
            self._invalidate,
            self._restamp,
            self._put,
        ]
        # False once the server has rejected SET ... NX ... GET (before 7.0).
        self._set_nx_get = True
        timeout = float(kwargs.get("socket_timeout") or 5.0)
        # The connections of our own (see `wire`): the request connection,
        # and the two that watch locks (RESP2: invalidations come as pub/sub
        # messages there).
        # Where redis-py lacks what they rely on, none is made: commands go
        # through the pool, and waiters poll (logged in run).
        self._unsupported = redis_py_problems()
        self._wake = wake  # "poll": nothing watches locks
        self._budget = budget
        self._entered_at = 0.0  # when `run` began: entering gets one budget in all
        self.breaker = Breaker(
            address=self.address,
            budget=budget,
            hooks=hooks,
            # Opened: waiters fail open now, rather than sleep out a lock
            # whose holder cannot commit. Closed: they look again. (On a
            # Cluster node, the cluster looks for a new primary too.)
            on_change=self._breaker_changed,
            context=shared.context,
        )
        self._node = node
        # What the breaker's probe reads: a key of the namespace (which an
        # ACL allows), never written. (On a Cluster node, one of its slots.)
        ns = namespace or "asyncstampede"
        probe = "asyncstampede:probe" if node is None else node.probe_key
        self._probe_key = make_names(ns, probe).value
        if self._unsupported or wake == "poll":
            self.listener: Listener = Listener()
        else:
            resp2, resp3 = link_factory(pool, protocol=2), link_factory(pool, protocol=3)
            self.listener = RedisListener(
                lambda protocol: resp3() if protocol == 3 else resp2(),
                value_name_of,
                address=self.address,
                db=int(kwargs.get("db") or 0),
                namespace=namespace or "asyncstampede",
                reply_timeout=timeout,
                wake=wake,
                problems=shared.child("wake"),
                on_unavailable=self.breaker.failed,
                ping_reply=budget,
                on_transport=(
                    None
                    if not hooks
                    else lambda now, was: hooks.emit(TransportChange(self.address, now, was))
                ),
                probe_key="asyncstampede-probe" if node is None else node.probe_key,
                sharded=node is not None and node.publish == "SPUBLISH",
                registry=None if node is None else node.registry,
            )
        # A Sentinel service's primary: followed through failovers (None
        # for one server). It moves the connections below when it moves.
        self._primary = primary_watch(
            client,
            address=self.address,
            problems=shared.child("sentinel"),
            on_move=self._moved,
            reply_timeout=min(timeout, 2.0),
        )
        self._route = Route(
            client,
            Multiplexer(
                link_factory(pool),
                address=self.address,
                timeout=timeout,
                budget=budget,
                problems=self.problems,
                on_unavailable=self.breaker.failed,
                on_lost=None if self._primary is None else self._primary.saw,
            ),
            address=self.address,
            namespace=namespace,
            problems=self.problems,
            breaker=self.breaker,
            budget=budget,
            on_error=None if self._primary is None else self._primary.saw,
        )
        self._route.in_cluster = node is not None
        self._mux = self._route.mux
        self._send = self._route.send
        self._execute = self._route.execute
        self._db = int(kwargs.get("db") or 0)
        self._map = self._route.map

    def _breaker_changed(self) -> None:
        self.listener.recheck_all()
        if self._node is not None:
            self._node.on_breaker_change()

    async def _moved(self) -> None:
        """Replace our own connections: the primary moved (a Sentinel failover).

        Then load the scripts there (a promoted replica has none: Redis
        does not replicate SCRIPT LOAD), within one budget, as at start.
        """
        self._mux.reconnect("the primary moved")
        if isinstance(self.listener, RedisListener):
            self.listener.reconnect()
        self.breaker.probe_soon()  # open for the old primary, maybe: ask the new one now
        past = past_breaker.set(True)  # (the breaker may still be open: the probe decides)
        try:
            with anyio.move_on_after(self._budget):
                await self._route.load_scripts(self._scripts)
        except BackendError:
            pass  # loaded on first use instead (a NOSCRIPT, logged then)
        finally:
            past_breaker.reset(past)

    @property
    def wake(self) -> str:
        """The wake transport reporting lock changes now, ``"poll"`` while none does."""
        listener = self.listener
        transport = listener.transport if isinstance(listener, RedisListener) else None
        return transport or "poll"

    @property
    def reconnects(self) -> int:
        """Connections of this backend's own (requests, lock changes) re-established."""
        return self.listener.reconnects + self._mux.reconnects

    @property
    def refused_connections(self) -> int:
        """Of `connect_errors`, those the server refused (an ACL, a password...)."""
        return self.listener.refused + self._mux.refused

    @property
    def connect_errors(self) -> int:
        """Failed attempts to (re)connect those connections."""
        return self.listener.connect_errors + self._mux.connect_errors

    def overran(self, doing: str, budget: float, late: float = 0.0) -> BackendError:
        """Return the error for Redis work of a call that ran out of its budget (see `Backend`).

        It does not open the circuit breaker by itself: a silent Redis is
        caught where the silence is seen (the request connection, a socket
        timeout, a connection that cannot be made).
        """
        return BackendUnavailableError(
            f"Redis at {self.address} unavailable for {doing}: no reply within the "
            f"{budget * 1000:.0f} ms left of the call's budget for Redis "
            f"(redis_budget={self._budget}){blocked_loop(late)}",
            address=self.address,
            command=doing,
        )

    def gather(self) -> None:
        """See `Backend.gather` (the request connection's, see `Multiplexer.gather`)."""
        self._mux.gather()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the listener, the request connection and the breaker's probe until cancelled.

        Started once the listener is (its first connection attempt made);
        commands go through the pool until their own connection is up.
        """
        self._entered_at = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.breaker.run, self._probe)
            await tg.start(self._run)
            task_status.started()

    async def _probe(self, within: float) -> str | None:
        return await self._route.probe(self._probe_key, within)

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        if self._unsupported:
            self.problems.say(
                logging.ERROR,
                "the installed redis-py lacks what asyncstampede's own connections need ("
                + "; ".join(self._unsupported)
                + "): every command goes through the pool and waiters poll; install a "
                "redis-py version this asyncstampede supports",
            )
            task_status.started()
            return
        if self._wake == "poll":
            self.problems.say(
                logging.WARNING,
                f"waiters on Redis at {self.address} poll (wake='poll'): each wait costs a "
                "few looks and sees a value up to about as late again as it took to come; "
                "where the server allows one of the wake transports (see the operations "
                "guide: client tracking, keyspace notifications or the key's channel), "
                "wake='auto' wakes them at the commit",
            )
        async with anyio.create_task_group() as tg:
            if self._primary is not None:
                tg.start_soon(self._primary.run)
            # The listener's first attempt is awaited (so the first calls
            # find their waiters woken, not polling), but only for one
            # budget: a hung Redis must not hold the app's start-up for the
            # socket timeout.
            listening = anyio.Event()

            async def listen() -> None:
                await tg.start(self.listener.run)
                listening.set()

            tg.start_soon(listen)
            tg.start_soon(self._mux.run)
            with anyio.move_on_after(self._budget):
                await listening.wait()
            task_status.started()

    async def prepare(self) -> None:
        """Learn the server's version, and load every script once (no request pays a NOSCRIPT).

        Best effort, within what is left of one budget since entering began
        (`run`, which waits for the connections, shares it): if Redis is
        down or hung now, each script is loaded on first use; a refusal (no
        permission to load scripts) is logged.
        """
        left = self._budget - (anyio.current_time() - self._entered_at)
        try:
            with anyio.move_on_after(max(left, 0.0)):
                await self._learn_version()
                await self._route.load_scripts(self._scripts)
        except BackendRefusedError as exc:
            self.problems.report(exc, "loading the scripts at start")
        except BackendError:
            pass

    async def check(self, names: KeyNames) -> None:
        """Send every kind of command asyncstampede uses once; raise the first refusal.

        Uses *names* (a probe key of the instance's namespace): a read, a
        lock taken for a second, its ``PTTL`` read, extended and released
        (scripts), the scripts loaded, and the handshake of the connections
        that watch locks. Sent whatever the circuit breaker says: this is
        asked for what Redis says now.

        Raises:
            BackendRefusedError: Redis refused something asyncstampede needs.
            BackendUnavailableError: Redis cannot be reached.

        """
        past = past_breaker.set(True)
        try:
            if self._primary is not None:
                await self._primary.check()  # a wrong service name is named as such
            await self._check(names)
        finally:
            past_breaker.reset(past)

    async def _check(self, names: KeyNames) -> None:
        await self._send("PING")
        await self._send("GET", names.value)
        await self._route.load_scripts(self._scripts)
        token = os.urandom(16)
        holder = await self._lock_or_holder(names.lock, token, 1000)
        if holder is None or holder == token:
            await self._send("PTTL", names.lock)
            await self.extend(names, token, 1000)
            await self.release(names, token)
        await self.listener.check()

    @property
    def client(self) -> Redis:
        """The redis-py client in use."""
        return self._client

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
        """See `Backend.acquire`.

        Plain commands, no script, so that a herd costs as few server
        commands as it can: ``SET lock token NX PX ms GET`` takes the lock or
        names its holder in one; a waiter's ``PTTL`` on the tracking
        connection sets its takeover timer and subscribes it to the lock's
        changes. A lock attempt that finds the marker of a commit
        (`_scripts.COMMITTED`: the value landed after the caller's read)
        reads the value instead, and takes the marker's place (`_scripts.TAKE`)
        only when that value has gone again.
        """
        lock = names.lock
        if read:
            hit = await self._read_hit(names, seen)
            if hit is not None:
                return hit
        for _ in range(3):
            if recheck and watch:
                held = await self._held(lock, lock_ms)
                if held is not None:
                    return held
            holder = await self._lock_or_holder(lock, token, lock_ms)
            if holder == COMMITTED:
                hit = await self._read_hit(names, seen)
                if hit is not None:
                    return hit
                holder = await self._script(self._take, [lock], [token, lock_ms, COMMITTED])
            if holder is None or holder == token:  # ours (a retried SET finds its own token)
                return ACQUIRED
            if not watch:
                return Held(0)
            held = await self._held(lock, lock_ms)
            if held is not None:
                return held
            recheck = False  # gone (or committed) between the two commands: try again
        return Held(0)

    async def _read_hit(self, names: KeyNames, seen: bytes | None) -> Hit | None:
        """Read the value: a `Hit`, or None when there is none or it is *seen*."""
        payload = await self._send("GET", names.value)
        return None if payload is None or payload == seen else Hit(payload)

    async def _held(self, lock: bytes, lock_ms: int) -> Held | None:
        """Watch *lock* (see `RedisListener.watch`); return None if there is no lock to wait for.

        That is: no lock, or only the marker of a commit. A PTTL too short to
        tell a lock near its expiry from that marker costs one more read, of
        the lock itself.
        """
        reply = await self.listener.watch(lock, "PTTL")
        watched = reply is not UNTRACKED
        pttl = int(await self._send("PTTL", lock) if reply in _READ_YOURSELF else reply)
        if 0 < pttl <= COMMITTED_MS:
            holder = await self._look("GET", lock)
            if holder is None or holder == COMMITTED:
                return None
        if pttl == -2:
            return None
        return Held(lock_ms if pttl < 0 else pttl, watched=watched)

    async def _look(self, command: str, lock: bytes) -> Any:
        """Send *command* on *lock*, tracked when the listener can, else on the request path.

        Sent on the request path where the transport subscribes (it has
        subscribed first), while the listener reconnects (the reconnect then
        tells every waiter to look again), or where nothing watches locks.
        """
        reply = await self.listener.watch(lock, command)
        return await self._send(command, lock) if reply in _READ_YOURSELF else reply

    async def _learn_version(self) -> None:
        """Ask the server's version (``HELLO``), so that a Redis before 7.0 gets no ``SET NX GET``.

        It would refuse it with a syntax error, which it counts in ``INFO
        errorstats`` (an alert on Redis's error rate would fire at each
        process's first lock). Where ``HELLO`` is refused (an ACL without
        ``+hello``) or unanswered, the first lock attempt finds out instead.
        """
        try:
            reply = await self._route.execute("HELLO")
        except (BackendError, RedisError, OSError):
            return
        version = _hello_version(reply)
        if version is not None and version[0] < 7 and self._set_nx_get:
            self._set_nx_get = False
            self.problems.say(
                logging.INFO,
                f"Redis at {self.address} is {'.'.join(map(str, version))}, older than 7.0 "
                "(no SET NX GET): locks are taken by a script instead",
            )

    async def _lock_or_holder(self, lock: bytes, token: bytes, lock_ms: int) -> Any:
        """Take *lock* if it is free, else return its holder's token: ``SET NX PX GET``.

        Redis before 7.0 rejects ``NX`` with ``GET`` as a syntax error: from
        its version (`_learn_version`, at start), or else from the first
        such reply on, the same step runs as a script.
        """
        if self._set_nx_get:
            try:
                return await self._execute("SET", lock, token, "NX", "PX", lock_ms, "GET")
            except ResponseError as exc:
                if "syntax error" not in str(exc).lower():
                    raise self._map(exc, "SET") from exc
                self._set_nx_get = False
                self.problems.say(
                    logging.INFO,
                    f"Redis at {self.address} rejects SET NX GET (it is older than 7.0); "
                    "locks are taken by a script instead",
                )
            except (RedisError, OSError) as exc:
                raise self._map(exc, "SET") from exc
        return await self._script(self._take_or_name, [lock], [token, lock_ms])

    async def _script(self, script: AsyncScript, keys: list[bytes], args: list[Any]) -> Any:
        """Run *script*; its last ARGV is the database number (see ``scripts``)."""
        return await self._route.script(script, keys, [*args, self._db])

    async def read(self, names: KeyNames) -> bytes | None:
        """See `Backend.read`."""
        data = await self._send("GET", names.value)
        return data if data is None or isinstance(data, bytes) else bytes(data)

    async def read_many(
        self, names: Sequence[KeyNames], tags: Sequence[bytes] = ()
    ) -> list[bytes | BackendError | None]:
        """See `Backend.read_many`: one ``MGET`` of every value name (see ``cluster`` for many)."""
        return list(await self.mget([*(n.value for n in names), *tags]))

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Return the value (or None) of each of *keys*, in their order: one ``MGET``."""
        reply = await self._send("MGET", *keys)
        return [d if d is None or isinstance(d, bytes) else bytes(d) for d in reply]

    async def commit(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.commit`."""
        reply = await self._script(
            self._commit,
            [names.value, names.lock],
            [token, payload, ttl_ms, COMMITTED, committed_ms(ttl_ms)],
        )
        return int(reply) != 0

    async def release(self, names: KeyNames, token: bytes) -> bool:
        """See `Backend.release`.

        Where the server refuses the script (an ACL without scripting), the
        lock is released by a ``WATCH``ed transaction instead, so waiters are
        not left to sleep out its TTL; the refusal is logged. Raises only
        when that fails too.
        """
        try:
            reply = await self._script(self._release, [names.lock], [token])
        except BackendRefusedError as exc:
            released = await self._release_by_transaction(names.lock, token)
            if released is None:
                raise
            self.problems.report(exc, "releasing a lock (done by a transaction instead)")
            return released
        return int(reply) == 1

    async def _release_by_transaction(self, lock: bytes, token: bytes) -> bool | None:
        """Delete *lock* if it still holds *token*, without a script.

        Returns whether it was deleted, or None when that failed too (logged).
        """
        try:
            async with self._route.gate, self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(lock)
                if await pipe.get(lock) != token:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(lock)
                await pipe.execute()
                return True
        except WatchError:
            return False  # the lock changed meanwhile: it is not ours any more
        except (RedisError, OSError) as exc:
            self.problems.report(self._map(exc, "WATCH"), "releasing a lock by a transaction")
            return None

    async def extend(self, names: KeyNames, token: bytes, lock_ms: int) -> bool:
        """See `Backend.extend`."""
        reply = await self._script(self._extend, [names.lock], [token, lock_ms])
        return int(reply) == 1

    async def write_if_absent(
        self, names: KeyNames, payload: bytes, ttl_ms: int, holder: bytes | None
    ) -> bool:
        """See `Backend.write_if_absent`."""
        reply = await self._script(
            self._write_if_absent, [names.value, names.lock], [payload, ttl_ms, holder or b""]
        )
        return int(reply) == 1

    async def restamp(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.restamp`."""
        reply = await self._script(
            self._restamp,
            [names.value, names.lock],
            [token, payload, ttl_ms, COMMITTED, committed_ms(ttl_ms)],
        )
        return int(reply) in (1, 2)

    async def lock_holder(self, names: KeyNames) -> bytes | None:
        """See `Backend.lock_holder`."""
        data = await self._send("GET", names.lock)
        return data if data is None or isinstance(data, bytes) else bytes(data)

    async def invalidate(self, names: KeyNames) -> None:
        """See `Backend.invalidate`."""
        await self._script(self._invalidate, [names.value, names.lock], [])

    async def read_tagged(
        self, names: KeyNames, tags: list[bytes]
    ) -> tuple[bytes | None, list[bytes | None]]:
        """See `Backend.read_tagged` (one ``MGET``)."""
        reply = await self._send("MGET", names.value, *tags)
        found = [r if r is None or isinstance(r, bytes) else bytes(r) for r in reply]
        return found[0], found[1:]

    async def generations(self, tags: list[bytes], *, renew: bool) -> list[bytes]:
        """See `Backend.generations` (``SET``, or ``SET NX`` then ``GET``, per tag)."""
        made: list[bytes] = []
        for tag in tags:
            generation = new_generation()
            if renew:
                await self._send("SET", tag, generation)
            elif not await self._send("SET", tag, generation, "NX"):
                generation = await self._send("GET", tag) or generation
            made.append(generation if isinstance(generation, bytes) else bytes(generation))
        return made

    async def put(self, names: KeyNames, payload: bytes, ttl_ms: int) -> None:
        """See `Backend.put`."""
        await self._script(
            self._put, [names.value, names.lock], [payload, ttl_ms, COMMITTED, committed_ms(ttl_ms)]
        )

    async def aclose(self) -> None:
        """Send nothing more; close the client if this backend created it."""
        self._route.closed = True
        self.breaker.retire()
        if isinstance(self.listener, RedisListener):
            self.listener.retire()
        if self.owns_client:
            await self._client.aclose()
            await close_owned(self._client)  # (from_url's Sentinel: its connections)


def _hello_version(reply: Any) -> tuple[int, ...] | None:
    """Return the ``version`` of a ``HELLO`` reply (a RESP3 map, or RESP2's flat list), if any."""
    if isinstance(reply, dict):
        fields = dict(reply)
    elif isinstance(reply, list | tuple):
        fields = dict(zip(reply[0::2], reply[1::2], strict=False))
    else:
        return None
    value = fields.get(b"version", fields.get("version"))
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return None
