"""How one command reaches Redis: the request connection, else the pool; errors mapped here.

Every command asyncstampede sends goes out on the auto-pipelined request
connection (``mux``) when it is up, and on a pooled connection otherwise,
or when the request connection fails with it in flight (every command and
script asyncstampede sends is safe to send twice). A script the server
lost is loaded again and run once more. Every redis-py or socket error
leaves here as a `BackendError` (``errors.map_error``).

Every command has a deadline: by default the budget from now (a hit's one
``GET``), or the one its caller passes. Past it the command fails as
unavailable, on either path. That alone does not open the circuit
breaker (the call may have spent its budget elsewhere, or this process
may be too busy to read the reply in time); what Redis itself failed does
(a connection that cannot be made or was lost on both paths, a socket
timeout, ``LOADING``; the request connection's silence, see ``mux``).
While the breaker is open no command is sent at all (`CircuitOpenError`);
only its probe goes through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from contextvars import ContextVar
from typing import Any, final

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..._exceptions import (
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    ClosedError,
)
from ..._problems import ProblemLog
from ..breaker import Breaker
from .errors import Redirected, is_refusal, map_error, readonly_reply, server_text
from .mux import UNAVAILABLE, Lost, Multiplexer, NoReply
from .wire import pooled_command

__all__ = ["Route", "past_breaker"]

# Set (to True) where commands must reach Redis whatever the breaker says:
# `Stampede.check`, which is asked for what Redis says now.
past_breaker: ContextVar[bool] = ContextVar("asyncstampede_past_breaker", default=False)


class _Late(RedisTimeoutError):
    """A deadline of the call's budget passed (not a socket timeout: Redis may be fine)."""


def _is_outage(exc: BaseException) -> bool:
    """Whether *exc* says Redis itself failed: a connection, a socket timeout, a busy server.

    Not a deadline of ours (`_Late`), not a command that could not be
    encoded, not a refusal (the caller has mapped those apart), and not
    ``READONLY``: a demoted primary still serves reads at once (hits go on),
    and only the write fails (its call fails open); a Sentinel client asks
    the sentinels where the primary went (see ``sentinel``). Nor ``MOVED``
    or ``ASK`` (redis-py's ``MovedError`` is an ``AskError``): the node is
    fine, the slot is served elsewhere (see ``cluster``).
    """
    if isinstance(exc, _Late | AskError) or readonly_reply(exc) is not None:
        return False  # (MOVED, ASK: the node is fine, the slot is elsewhere)
    if isinstance(exc, ResponseError):
        return True  # mapped as unavailable: LOADING, BUSY, TRYAGAIN, MASTERDOWN...
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))


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
        breaker: Breaker,
        budget: float,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._client = client
        # Told every redis-py error mapped here (a Sentinel client looks for
        # READONLY: a demoted primary).
        self._on_error = on_error
        self.mux = mux
        self.breaker = breaker
        self.budget = budget
        self.address = address
        self._namespace = namespace
        self.problems = problems
        # Set once the instance has closed: a command still on its way then
        # (a caller's first read outlasting the close) raises ClosedError
        # instead of opening a pooled connection that nothing would close.
        self.closed = False
        # Serving one primary of a Redis Cluster (whose backend follows
        # MOVED), not a server given as one Redis.
        self.in_cluster = False
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
        """Return *exc* (redis-py's, or a socket's) as a `BackendError` naming *command*.

        An unavailability opens the circuit breaker, unless it is only a
        deadline of ours that passed (`_Late`).
        """
        if isinstance(exc, _Late):
            what = f" for {command.upper()}" if command else ""
            return BackendUnavailableError(
                f"Redis at {self.address} unavailable{what}: {exc}",
                address=self.address,
                command=command,
            )
        if self._on_error is not None:
            self._on_error(exc)
        error = map_error(exc, address=self.address, command=command, namespace=self._namespace)
        if isinstance(error, Redirected) and not self.in_cluster:
            # A Redis Cluster node, used as one Redis: most keys live elsewhere.
            hint = (
                "this server is a node of a Redis Cluster: pass cluster=True to "
                "Stampede.from_url, or a redis.asyncio.RedisCluster to Stampede()"
            )
            return BackendRefusedError(
                f"{error} ({hint})", address=self.address, command=command, hint=hint
            )
        if isinstance(error, BackendUnavailableError) and _is_outage(exc):
            self.breaker.failed(error)
        return error

    async def load_scripts(self, scripts: Sequence[AsyncScript]) -> None:
        """Load *scripts* into the server (``SCRIPT LOAD``), each within the budget.

        Raises:
            BackendError: Redis failed or refused.

        """
        for script in scripts:
            try:
                await self.execute("SCRIPT", "LOAD", script.script)
            except (RedisError, OSError) as exc:
                raise self.map(exc, "SCRIPT LOAD") from exc

    async def send(self, *args: Any, deadline: float | None = None) -> Any:
        """Send one command of the request path and return its reply.

        *deadline* (``time.monotonic()`` seconds) is when to give up on the
        reply; by default the budget from now.

        Raises:
            CircuitOpenError: the breaker is open: nothing was sent.
            BackendError: Redis failed, refused, or sent no reply in time.

        """
        # `execute` spelled out: a hit is this call, and a frame less counts.
        if self.breaker.skipping and not past_breaker.get():
            raise self.breaker.skip(str(args[0]))
        try:
            reply = await self.mux.execute(*args, deadline=deadline)
        except ResponseError as exc:
            raise self.map(exc, str(args[0])) from exc
        except NoReply as exc:
            raise self.map(self._late(exc), str(args[0])) from exc
        except Lost as exc:  # the connection went down with this command in flight
            if exc.closing:  # a read is of no use to a closing instance
                raise ClosedError("the Stampede closed during the call") from exc
            # Sent again on the pool within what is left of its deadline,
            # even with the breaker just opened: a half-open connection is
            # replaced, and a silent Redis costs no more than the budget.
            reply, deadline = UNAVAILABLE, exc.deadline
        except RedisError as exc:  # (a command that cannot be encoded)
            raise self.map(exc, str(args[0])) from exc
        if reply is UNAVAILABLE:
            try:
                reply = await self._pooled(args, deadline)
            except (RedisError, OSError) as exc:
                raise self.map(exc, str(args[0])) from exc
        return reply

    async def execute(self, *args: Any, deadline: float | None = None) -> Any:
        """`send` with redis-py's own errors (a missed deadline is redis-py's ``TimeoutError``).

        On the auto-pipelined connection (see ``mux``) when it is up, else,
        or when it fails with the command in flight, on a pooled connection
        (every command asyncstampede sends is safe to send twice).

        Raises:
            CircuitOpenError: the breaker is open: nothing was sent.
            RedisError: Redis failed, refused, or sent no reply in time.

        """
        if self.breaker.skipping and not past_breaker.get():
            raise self.breaker.skip(str(args[0]))
        return await self._execute(args, deadline)

    async def _execute(self, args: tuple[Any, ...], deadline: float | None) -> Any:
        try:
            reply = await self.mux.execute(*args, deadline=deadline)
        except ResponseError:
            raise
        except NoReply as exc:
            raise self._late(exc) from exc
        except Lost as exc:  # the connection went down with this command in flight
            # Sent again on the pool within what is left of its deadline,
            # even with the breaker just opened: a half-open connection is
            # replaced, and a silent Redis costs no more than the budget.
            reply, deadline = UNAVAILABLE, exc.deadline
        if reply is UNAVAILABLE:
            reply = await self._pooled(args, deadline)
        return reply

    async def probe(self, key: bytes, within: float) -> str | None:
        """Read *key* past the breaker, for its probe, within *within* seconds.

        Returns None, or the refusal Redis answered with: an answer all the
        same (Redis is up, and the request path will say what it refuses).

        Raises:
            BackendUnavailableError: no answer in time, or a connection
                that cannot be made.

        """
        past = past_breaker.set(True)
        try:
            await self._execute(("GET", key), time.monotonic() + within)
        except (RedisError, OSError) as exc:
            error = map_error(exc, address=self.address, command="GET", namespace=self._namespace)
            if not isinstance(error, BackendRefusedError):
                raise error from exc
            return server_text(exc)
        finally:
            past_breaker.reset(past)
        return None

    def _late(self, exc: Exception) -> _Late:
        return _Late(f"{exc} (the call's budget for Redis, redis_budget={self.budget})")

    def _silent(self, waited: float) -> None:
        """Open the breaker if a pooled command had no reply for a whole budget (*waited* s)."""
        if waited >= self.budget:
            self.breaker.failed(
                BackendUnavailableError(
                    f"Redis at {self.address} unavailable: no reply on a pooled connection "
                    f"for {waited:.3f}s",
                    address=self.address,
                )
            )

    async def script(
        self,
        script: AsyncScript,
        keys: list[bytes],
        args: list[Any],
        deadline: float | None = None,
    ) -> Any:
        """Run *script* like `send`.

        A server that lost it (``NOSCRIPT``: restarted, flushed, failed over)
        gets it again and the call is repeated once. That is judged by the
        error's type: redis-py strips the ``NOSCRIPT`` code from its text.
        """
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if deadline is None:
            deadline = time.monotonic() + self.budget  # one for the reload and the retry too
        try:
            try:
                return await self.execute(*command, deadline=deadline)
            except NoScriptError:
                self.problems.say(
                    logging.WARNING,
                    f"Redis at {self.address} lost its scripts (restarted, flushed or "
                    "failed over); loading them again",
                )
                await self.execute("SCRIPT", "LOAD", script.script, deadline=deadline)
                return await self.execute(*command, deadline=deadline)
        except (RedisError, OSError) as exc:
            raise self.map(exc, "EVALSHA") from exc

    async def _pooled(self, args: tuple[Any, ...], deadline: float | None) -> Any:
        """Send one command on a pooled connection and return its reply (redis-py's errors).

        Given up at *deadline* (by default the budget from now), waiting for
        a free connection included: redis-py's ``TimeoutError`` then.

        It talks to a pooled connection directly instead of going through
        ``Redis.execute_command`` (whose retry and instrumentation layers
        cost about a tenth of a hit). What those layers would do is done
        here: a connection that fails is replaced and the command tried once
        more (every command sent this way is safe to repeat); the pool's
        socket timeouts apply; a cancelled command drops its connection
        (redis-py does that). Once the instance has closed, no connection is
        taken (`ClosedError`).
        """
        pool = self._client.connection_pool
        left = self.budget if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise _Late(
                f"no time left for {args[0]} (the call's budget for Redis, "
                f"redis_budget={self.budget})"
            )
        asked: float | None = None  # when the command had a connection (past the gate)
        with anyio.move_on_after(left):
            for attempt in (1, 2):
                if self.closed:  # (not an outage: nothing for the breaker)
                    raise ClosedError("the Stampede closed during the call")
                try:
                    async with self.gate:
                        asked = time.monotonic()
                        return await pooled_command(pool, *args)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    # A new connection cannot fix a refused password or certificate.
                    if attempt == 2 or is_refusal(exc):
                        raise
        if asked is not None:  # (not while waiting for a free connection: that is ours)
            self._silent(time.monotonic() - asked)
        raise _Late(
            f"no reply by the call's deadline (the call's budget for Redis, "
            f"redis_budget={self.budget})"
        )
