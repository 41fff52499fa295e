"""How one command reaches Redis: the request connection, else the pool; errors mapped here.

Every command asyncstampede sends goes out on the auto-pipelined request
connection (``mux``) when it is up, and on a pooled connection otherwise,
or when the request connection fails with it in flight (every command and
script asyncstampede sends is safe to send twice). A script the server
lost is loaded again and run once more. Every redis-py or socket error
leaves here as a `BackendError` (``errors.map_error``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, final

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..._exceptions import BackendError
from ..._problems import ProblemLog
from .errors import is_refusal, map_error
from .mux import UNAVAILABLE, Multiplexer
from .wire import pooled_command

__all__ = ["Route"]


@final
class Route:
    """Sends commands and scripts of one `RedisBackend`; owns its request connection."""

    def __init__(
        self,
        client: Redis,
        mux: Multiplexer,
        *,
        address: str,
        namespace: str | None,
        problems: ProblemLog,
    ) -> None:
        self._client = client
        self.mux = mux
        self.address = address
        self._namespace = namespace
        self.problems = problems
        pool = client.connection_pool
        # A plain ConnectionPool raises once max_connections are in use: keep
        # our own commands below that, so a burst waits instead of failing.
        # (The pool is the fallback: the request path has a pipelined
        # connection of its own, the listener two more, all outside it.)
        self.gate: AbstractAsyncContextManager[Any]
        if isinstance(pool, BlockingConnectionPool):
            self.gate = nullcontext()
        else:
            # fast_acquire: no checkpoint (an extra event-loop turn) when free.
            self.gate = anyio.Semaphore(max(1, int(pool.max_connections)), fast_acquire=True)

    def map(self, exc: BaseException, command: str | None) -> BackendError:
        """Return *exc* (redis-py's, or a socket's) as a `BackendError` naming *command*."""
        return map_error(exc, address=self.address, command=command, namespace=self._namespace)

    async def load_scripts(self, scripts: Sequence[AsyncScript]) -> None:
        """Load *scripts* into the server (``SCRIPT LOAD``).

        Raises:
            BackendError: Redis failed or refused.

        """
        for script in scripts:
            try:
                await self.execute("SCRIPT", "LOAD", script.script)
            except (RedisError, OSError) as exc:
                raise self.map(exc, "SCRIPT LOAD") from exc

    async def send(self, *args: Any) -> Any:
        """Send one command of the request path and return its reply.

        Raises:
            BackendError: Redis failed or refused the command.

        """
        # `execute` spelled out: a hit is this call, and a frame less counts.
        try:
            reply = await self.mux.execute(*args)
        except ResponseError as exc:
            raise self.map(exc, str(args[0])) from exc
        except RedisError:  # the connection went down with this command in flight
            reply = UNAVAILABLE
        if reply is UNAVAILABLE:
            try:
                reply = await self._pooled(*args)
            except (RedisError, OSError) as exc:
                raise self.map(exc, str(args[0])) from exc
        return reply

    async def execute(self, *args: Any) -> Any:
        """`send` with redis-py's own errors.

        On the auto-pipelined connection (see ``mux``) when it is up, else,
        or when it fails with the command in flight, on a pooled connection
        (every command asyncstampede sends is safe to send twice).
        """
        try:
            reply = await self.mux.execute(*args)
        except ResponseError:
            raise
        except RedisError:  # the connection went down with this command in flight
            reply = UNAVAILABLE
        if reply is UNAVAILABLE:
            reply = await self._pooled(*args)
        return reply

    async def script(self, script: AsyncScript, keys: list[bytes], args: list[Any]) -> Any:
        """Run *script* like `send`.

        A server that lost it (``NOSCRIPT``: restarted, flushed, failed over)
        gets it again and the call is repeated once. That is judged by the
        error's type: redis-py strips the ``NOSCRIPT`` code from its text.
        """
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            try:
                return await self.execute(*command)
            except NoScriptError:
                self.problems.say(
                    logging.WARNING,
                    f"Redis at {self.address} lost its scripts (restarted, flushed or "
                    "failed over); loading them again",
                )
                await self.execute("SCRIPT", "LOAD", script.script)
                return await self.execute(*command)
        except (RedisError, OSError) as exc:
            raise self.map(exc, "EVALSHA") from exc

    async def _pooled(self, *args: Any) -> Any:
        """Send one command on a pooled connection and return its reply (redis-py's errors).

        It talks to a pooled connection directly instead of going through
        ``Redis.execute_command`` (whose retry and instrumentation layers
        cost about a tenth of a hit). What those layers would do is done
        here: a connection that fails is replaced and the command tried once
        more (every command sent this way is safe to repeat); the pool's
        socket timeouts apply; a cancelled command drops its connection
        (redis-py does that).
        """
        pool = self._client.connection_pool
        for attempt in (1, 2):
            try:
                async with self.gate:
                    return await pooled_command(pool, *args)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # A new connection cannot fix a refused password or certificate.
                if attempt == 2 or is_refusal(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
