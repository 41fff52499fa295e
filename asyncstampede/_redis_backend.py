"""The Redis backend: every command asyncstampede sends, and the error boundary.

All Redis and socket errors are mapped to `BackendError` here and nowhere
else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, TypeVar, final

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _scripts
from ._backend import ACQUIRED, Acquired, Held, Hit
from ._exceptions import BackendError
from ._keys import KeyNames, value_name_of
from ._listener import UNTRACKED, RedisListener
from ._mux import UNAVAILABLE, Multiplexer
from ._scripts import COMMITTED, COMMITTED_MS, committed_ms

__all__ = ["RedisBackend"]

T = TypeVar("T")


@final
class RedisBackend:
    """`Backend` over one ``redis.asyncio.Redis`` client."""

    def __init__(self, client: Redis, *, owns_client: bool) -> None:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError(
                "asyncstampede stores binary envelopes: pass a Redis client created "
                "with decode_responses=False (the default)"
            )
        self._client = client
        self._owns_client = owns_client
        # A plain ConnectionPool raises once max_connections are in use: keep
        # our own commands below that, so a burst waits instead of failing.
        # (The pool is the fallback: the request path has a pipelined
        # connection of its own, the listener two more, all outside it.)
        self._gate: AbstractAsyncContextManager[Any]
        if isinstance(pool, BlockingConnectionPool):
            self._gate = nullcontext()
        else:
            # fast_acquire: no checkpoint (an extra event-loop turn) when free.
            self._gate = anyio.Semaphore(max(1, int(pool.max_connections)), fast_acquire=True)
        self._commit = client.register_script(_scripts.COMMIT)
        self._release = client.register_script(_scripts.RELEASE)
        self._extend = client.register_script(_scripts.EXTEND)
        self._take = client.register_script(_scripts.TAKE)
        self._write_if_absent = client.register_script(_scripts.WRITE_IF_ABSENT)
        self._invalidate = client.register_script(_scripts.INVALIDATE)
        self.listener = RedisListener(pool.connection_class, kwargs, value_name_of)
        self._mux = Multiplexer(pool.connection_class, kwargs)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the listener and the request connection until cancelled.

        Started once the listener is (its first connection attempt made);
        commands go through the pool until their own connection is up.
        """
        async with anyio.create_task_group() as tg:
            await tg.start(self.listener.run)
            tg.start_soon(self._mux.run)
            task_status.started()

    async def prepare(self) -> None:
        """Load every script once, so no request pays a NOSCRIPT round trip.

        Best effort: if Redis is down now, each script is loaded on first use.
        """
        scripts = [
            self._commit,
            self._release,
            self._extend,
            self._take,
            self._write_if_absent,
            self._invalidate,
        ]
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script in scripts:
                    pipe.script_load(script.script)
                await pipe.execute()
        except (RedisError, OSError):
            pass

    @property
    def client(self) -> Redis:
        """The redis-py client in use."""
        return self._client

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            async with self._gate:
                return await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise _failed(exc) from exc

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
            holder = await self._send("SET", lock, token, "NX", "PX", lock_ms, "GET")
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
        pttl = int(await self._look("PTTL", lock))
        if 0 < pttl <= COMMITTED_MS:
            holder = await self._look("GET", lock)
            if holder is None or holder == COMMITTED:
                return None
        if pttl == -2:
            return None
        return Held(lock_ms if pttl < 0 else pttl)

    async def _look(self, command: str, lock: bytes) -> Any:
        """Send *command* on *lock*, tracked when the listener can, else on the request path.

        Untracked only while the listener reconnects, and the reconnect tells
        every waiter to look again.
        """
        reply = await self.listener.watch(lock, command)
        return await self._send(command, lock) if reply is UNTRACKED else reply

    async def read(self, names: KeyNames) -> bytes | None:
        """See `Backend.read`."""
        data = await self._send("GET", names.value)
        return data if data is None or isinstance(data, bytes) else bytes(data)

    async def _send(self, *args: Any) -> Any:
        """Send one command of the request path and return its reply.

        On the auto-pipelined connection (see ``_mux``) when it is up, else,
        or when it fails with the command in flight, on a pooled connection
        (every command asyncstampede sends is safe to send twice).
        """
        try:
            reply = await self._mux.execute(*args)
        except ResponseError as exc:
            raise _failed(exc) from exc
        except RedisError:  # the connection went down with this command in flight
            reply = UNAVAILABLE
        if reply is UNAVAILABLE:
            reply = await self._command(*args)
        return reply

    async def _script(self, script: AsyncScript, keys: list[bytes], args: list[Any]) -> Any:
        """Run *script* like `_send`; if the server lost it, redis-py loads it again."""
        try:
            reply = await self._mux.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise _failed(exc) from exc
            reply = UNAVAILABLE
        except RedisError:
            reply = UNAVAILABLE
        if reply is UNAVAILABLE:
            reply = await self._call(script, keys=keys, args=args)
        return reply

    async def _command(self, *args: Any) -> Any:
        """Send one command on a pooled connection and return its reply.

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
                async with self._gate:
                    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                    try:
                        await conn.send_command(*args)
                        return await conn.read_response()
                    finally:
                        await pool.release(conn)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if attempt == 2:
                    raise _failed(exc) from exc
            except RedisError as exc:
                raise _failed(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def commit(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.commit`."""
        reply = await self._script(
            self._commit,
            [names.value, names.lock],
            [token, payload, ttl_ms, COMMITTED, committed_ms(ttl_ms)],
        )
        return int(reply) != 0

    async def release(self, names: KeyNames, token: bytes) -> bool:
        """See `Backend.release`."""
        reply = await self._script(self._release, [names.lock], [token])
        return int(reply) == 1

    async def extend(self, names: KeyNames, token: bytes, lock_ms: int) -> bool:
        """See `Backend.extend`."""
        reply = await self._script(self._extend, [names.lock], [token, lock_ms])
        return int(reply) == 1

    async def write_if_absent(self, names: KeyNames, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.write_if_absent`."""
        reply = await self._script(
            self._write_if_absent, [names.value, names.lock], [payload, ttl_ms]
        )
        return int(reply) == 1

    async def invalidate(self, names: KeyNames) -> None:
        """See `Backend.invalidate`."""
        await self._script(self._invalidate, [names.value, names.lock], [])

    async def aclose(self) -> None:
        """Close the client if this backend created it."""
        if self._owns_client:
            await self._client.aclose()


def _failed(exc: BaseException) -> BackendError:
    """Return the `BackendError` for a Redis or socket error, naming it and its message."""
    return BackendError(f"Redis failed: {type(exc).__name__}: {exc}")
