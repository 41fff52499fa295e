"""The one door to redis-py's internals: connections of our own, outside the client's pool.

The request connection (``mux``) and the lock watchers (``listener``) need
what redis-py's public API does not offer: a connection that is not in the
pool, its stream writer (to write many packed commands in one ``send()``),
and reads that wait as long as they must or for a bound of their own,
without redis-py dropping the connection on an error reply. Everything of
that kind is done here, through `Link`, and nowhere else.

`redis_py_problems` checks, once, that what this module relies on is there.
When it is not (a redis-py release changed it), the backend logs an ERROR
and runs without its own connections: every command goes through the
client's pool and waiters wake at the lock's expiry, slower but correct.
The package pins redis-py below its next major version for the same reason.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, final

import anyio
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection, Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # pragma: no cover - a redis-py without maintenance notifications
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

__all__ = [
    "Link",
    "LinkFactory",
    "link_factory",
    "pooled_command",
    "quiet_handshake",
    "redis_py_problems",
]

# Keyword arguments of AbstractConnection methods relied on here.
_NEEDED: dict[str, tuple[str, ...]] = {
    "read_response": ("timeout", "disconnect_on_error", "push_request"),
    "disconnect": ("nowait",),
    "send_packed_command": ("check_health",),
    "pack_command": (),
    "pack_commands": (),
    "connect": (),
}


@cache
def redis_py_problems() -> tuple[str, ...]:
    """Return what this module relies on and the installed redis-py lacks (empty: all there)."""
    problems = []
    for method, keywords in _NEEDED.items():
        fn = getattr(AbstractConnection, method, None)
        if fn is None:
            problems.append(f"AbstractConnection.{method} is gone")
            continue
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # pragma: no cover - C implementations
            continue
        problems += [
            f"AbstractConnection.{method}() takes no {kw}="
            for kw in keywords
            if kw not in parameters
        ]
    return tuple(problems)


def _named(klass: type) -> set[str]:
    """Return the keyword arguments *klass* names (those of each ``__init__`` in its MRO)."""
    named: set[str] = set()
    for base in klass.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - C implementations
            continue
        named.update(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return named


def quiet_handshake(
    given_to: type, connection_class: type[AbstractConnection] = Connection
) -> dict[str, Any]:
    """Return the settings that keep redis-py's connection set-up to what every server takes.

    On each new connection redis-py sends ``CLIENT SETINFO`` (Redis 7.2 and
    later know it) and, on RESP3 from redis-py 8.1, ``CLIENT
    MAINT_NOTIFICATIONS`` (Redis Enterprise's and Redis 8's). Redis 6.2 to
    7.0 (and Valkey, the second) refuse them; redis-py ignores the refusal,
    but the server counts it (``INFO errorstats``: ``errorstat_ERR``, or
    ``NOPERM`` for an ACL user without them), and an alert on Redis's error
    rate would fire at every connection asyncstampede makes. Its own
    connections go without both: no ``lib-name`` in ``CLIENT LIST``, and
    no maintenance notifications (it follows ``MOVED`` and reconnects by
    itself). A client the application passes keeps its own settings.

    *given_to* is the class the settings go to (a pool class, ``Redis``,
    or *connection_class* itself); its connections are *connection_class*'s.
    Only what the installed redis-py takes is set.
    """
    settings: dict[str, Any] = {}
    if "driver_info" in _named(connection_class):  # (a pool passes it on to them)
        settings["driver_info"] = None  # (None: no CLIENT SETINFO; lib_name= is deprecated)
    if MaintNotificationsConfig is not None and "maint_notifications_config" in _named(given_to):
        settings["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return settings


@final
class Link:
    """One connection of asyncstampede's own (not from the pool), read by one task."""

    __slots__ = ("_conn", "_pushes")

    def __init__(self, conn: AbstractConnection) -> None:
        self._conn = conn
        self._pushes = False  # see keep_pushes

    async def connect(self, within: float) -> None:
        """Connect and run redis-py's handshake (AUTH, HELLO, SELECT) within *within* seconds."""
        with anyio.fail_after(within):
            await self._conn.connect()  # type: ignore[no-untyped-call]

    def writer(self) -> asyncio.StreamWriter | None:
        """Return the connected stream's writer, or None where redis-py keeps none we can use."""
        writer = getattr(self._conn, "_writer", None)
        return writer if isinstance(writer, asyncio.StreamWriter) else None

    def pack(self, *args: Any) -> list[bytes]:
        """Encode one command in RESP, as this connection would send it."""
        return self._conn.pack_command(*args)

    async def send(self, *args: Any) -> None:
        """Send one command (no health check: the reader notices a dead connection)."""
        await self._conn.send_packed_command(self._conn.pack_command(*args), check_health=False)

    async def send_many(self, commands: Iterable[tuple[Any, ...]]) -> None:
        """Send several commands in one write."""
        await self._conn.send_packed_command(self._conn.pack_commands(commands), check_health=False)

    def keep_pushes(self) -> bool:
        """Have `read` return RESP3 invalidation pushes as they are, in order with the replies.

        Call after `connect`. An invalidation push is read as
        ``[b"invalidate", names]`` (*names*: a list, or None after a flush);
        no command sent on such a link has a list for its reply. Returns
        False where redis-py's parser offers no way to do this.
        """
        parser = getattr(self._conn, "_parser", None)
        set_handler = getattr(parser, "set_invalidation_push_handler", None)
        if set_handler is None:
            return False
        set_handler(_as_is)
        self._pushes = True
        return True

    async def read(self, within: float | None = None) -> Any:
        """Return the next reply, or None if *within* seconds pass first (None: wait for ever).

        An error reply is raised as redis-py's ``ResponseError`` and leaves
        the connection as it is (the next reply is the next command's). On a
        link that `keep_pushes`, a push is returned like a reply.

        Raises:
            ResponseError: the reply is an error.
            RedisError, OSError: the connection failed.

        """
        return await self._conn.read_response(
            timeout=within, disconnect_on_error=False, push_request=self._pushes
        )

    async def close(self) -> None:
        """Drop the connection at once (no goodbye to the server)."""
        await self._conn.disconnect(nowait=True)


async def _as_is(push: Any) -> Any:
    """redis-py's push handler for links that `Link.keep_pushes`: the push is the reply."""
    return push


LinkFactory = Callable[[], Link]


def link_factory(pool: ConnectionPool, **overrides: Any) -> LinkFactory:
    """Return a maker of `Link`s configured like the pool's connections.

    Links never retry by themselves (a lost connection must surface to the
    task reading it) and never time out a read (each read gives its own
    bound); *overrides* replace any other setting (``protocol=2``...).
    """
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["socket_timeout"] = None
    connection_class = pool.connection_class
    # Connections of asyncstampede's own: no handshake a supported server
    # refuses (see `quiet_handshake`), whatever the pool's own connections send.
    for handler in ("maint_notifications_pool_handler", "oss_cluster_maint_notifications_handler"):
        kwargs.pop(handler, None)
    kwargs.update(quiet_handshake(connection_class, connection_class))
    kwargs.update(overrides)
    return lambda: Link(connection_class(**kwargs))


async def pooled_command(pool: ConnectionPool, *args: Any) -> Any:
    """Send one command on a connection from *pool* and return its reply (redis-py's errors).

    Talks to a pooled connection directly instead of through
    ``Redis.execute_command`` (whose retry and instrumentation layers cost
    about a tenth of a cache hit); the caller retries. A cancelled command
    drops its connection (redis-py does that). A Sentinel-managed pool's
    connection to a primary the sentinels no longer name is made again first.
    """
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        # A Sentinel-managed pool hands back a connection made before a
        # failover as it is, still to the old primary (which takes writes
        # until the sentinels demote it): made again, it asks the sentinels.
        primary = getattr(pool, "master_address", None)
        if primary is not None and (conn.host, conn.port) != primary:
            await conn.disconnect()
            await conn.connect()
        await conn.send_command(*args)
        return await conn.read_response()
    finally:
        await pool.release(conn)
