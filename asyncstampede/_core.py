"""`Stampede`: the request path of ``get_or_compute``.

1. In-process flight table: one resolution per key per process; every local
   caller awaits it, and no caller's cancellation cancels it.
2. One round trip reads the value or, on a miss, takes the lock (``ACQUIRE``).
3. The lock holder computes, extending its lock while the compute runs, and
   commits with one script that writes, unlocks and publishes.
4. Everyone else registers interest in the key's channel, re-checks, and
   waits for the message, a timer at the lock's remaining TTL (takeover), or
   ``wait_timeout`` (then computes itself). Nothing polls.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, final

import anyio
import anyio.abc
from redis.asyncio import ConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._backend import MSG_VALUE, Acquired, Backend, Held, Hit
from ._envelope import DecodeError, decode, encode
from ._exceptions import BackendError, ClosedError, WaitTimeoutError
from ._keys import KeyNames, make_names, validate_namespace
from ._listener import RECHECK
from ._memory_backend import MemoryBackend
from ._redis_backend import RedisBackend
from ._stats import Counters, Statistics

__all__ = ["Stampede"]

T = TypeVar("T")

_MiB = 1024 * 1024
_NAMES_CACHED = 4096  # keys whose Redis names are kept ready


@dataclass(frozen=True, slots=True)
class _Again:
    """Ask Redis (again) before deciding: after a cancellation, or a corrupt value."""

    read: bool


class _Flight:
    """One in-process resolution of one key, awaited by every local caller.

    The event is made only when a second caller joins: most hits have none.
    """

    __slots__ = ("_event", "done", "error", "value")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def settle(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error, self.done = value, error, True
        if self._event is not None:
            self._event.set()

    async def outcome(self) -> Any:
        if not self.done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self.error is not None:
            raise self.error
        return self.value


@final
class Stampede:
    """Cache-stampede protection for one Redis (or, without one, one process).

    Use it as an async context manager: entering starts the pub/sub reader,
    leaving stops it and every resolution still in flight.

    Args:
        redis: A ``redis.asyncio.Redis`` client created with
            ``decode_responses=False``. ``None`` selects embedded mode: an
            in-process store with the same API and semantics.
        namespace: Prefix of every Redis key this instance touches.
        lock_ttl: Seconds a compute lock lives unless extended. The holder
            extends it every third of that while its compute runs, so it is
            also how long others wait before taking over from a holder that died.
        wait_timeout: Upper bound, in seconds, on waiting for another holder;
            after it the waiter follows ``on_wait_timeout``.
        on_wait_timeout: ``"compute"`` (default): compute locally and store the
            value only if none appeared meanwhile; ``"raise"``: raise
            `WaitTimeoutError`.
        fail_open: When Redis fails on the request path, compute locally (the
            default) instead of raising `BackendError`.
        compress_threshold: Payloads of at least this many bytes are lz4-compressed
            when that makes them smaller.
        max_value_bytes: Largest serialized value accepted, and largest declared
            size accepted when decoding (bounds decompression).
        publish_value_max: Values up to this size travel inside the wake-up
            message, so woken waiters need no extra GET.
        max_entries: Capacity of the embedded store (LRU); unused with Redis.

    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        namespace: str = "stampede",
        lock_ttl: float = 5.0,
        wait_timeout: float = 30.0,
        fail_open: bool = True,
        on_wait_timeout: Literal["compute", "raise"] = "compute",
        compress_threshold: int = 4096,
        max_value_bytes: int = 64 * _MiB,
        publish_value_max: int = 64 * 1024,
        max_entries: int = 10_000,
        _owns_client: bool = False,
    ) -> None:
        self._namespace = validate_namespace(namespace)
        if not (isinstance(lock_ttl, (int, float)) and 0.01 <= lock_ttl < 86_400):
            raise ValueError(f"lock_ttl must be between 0.01 and 86400 seconds, got {lock_ttl!r}")
        if not (isinstance(wait_timeout, (int, float)) and wait_timeout > 0):
            raise ValueError(f"wait_timeout must be a positive number, got {wait_timeout!r}")
        for name, n in (
            ("compress_threshold", compress_threshold),
            ("max_value_bytes", max_value_bytes),
            ("publish_value_max", publish_value_max),
        ):
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"{name} must be a non-negative int, got {n!r}")
        self._lock_ms = max(10, round(lock_ttl * 1000))
        self._wait_timeout = float(wait_timeout)
        self._fail_open = fail_open
        if on_wait_timeout not in ("compute", "raise"):
            raise ValueError(
                f"on_wait_timeout must be 'compute' or 'raise', got {on_wait_timeout!r}"
            )
        self._on_wait_timeout = on_wait_timeout
        self._compress_threshold = compress_threshold
        self._max_value_bytes = max_value_bytes
        self._publish_value_max = publish_value_max
        self._backend: Backend
        if redis is None:
            self._backend = MemoryBackend(max_entries=max_entries)
        else:
            self._backend = RedisBackend(redis, owns_client=_owns_client)
        self._flights: dict[str, _Flight] = {}
        self._names: dict[str, KeyNames] = {}
        self._held: dict[bytes, KeyNames] = {}  # token -> names of locks being computed under
        self._held_changed = anyio.Event()
        self._counters = Counters()
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = 64,
        socket_timeout: float = 5.0,
        **settings: Any,
    ) -> Stampede:
        """Create a `Stampede` with its own client for the Redis at *url*.

        The client's pool holds up to *max_connections*; asyncstampede never
        has more commands in flight than that, so a burst of calls waits for a
        free connection instead of failing. A failed command is retried twice
        with a short backoff (every script is safe to run twice).

        Args:
            url: A ``redis://``, ``rediss://`` or ``unix://`` URL.
            max_connections: Size of the connection pool.
            socket_timeout: Seconds before a Redis command is deemed failed.
            **settings: Any keyword argument of `Stampede`.

        """
        # A plain pool behind our own semaphore (see RedisBackend) rather than
        # a BlockingConnectionPool: same guarantee, but no asyncio.Condition
        # round on every command, which cost 5-10% of a cache hit here.
        pool = ConnectionPool.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.01), 2),
        )
        return cls(Redis.from_pool(pool), _owns_client=True, **settings)

    @property
    def namespace(self) -> str:
        """The prefix of every key this instance touches."""
        return self._namespace

    async def __aenter__(self) -> Self:
        if self._closed or self._stack is not None:
            raise ClosedError("a Stampede can be entered only once")
        async with AsyncExitStack() as stack:
            # Registered first so it runs last, once the task group (whose
            # cancel scope the caller's task is inside) has exited.
            stack.push_async_callback(self._backend.aclose)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self._backend.listener.run)
            tg.start_soon(self._keep_locks)
            await self._backend.prepare()
            self._tg = tg
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reader and every resolution in flight (their callers get `ClosedError`)."""
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await stack.aclose()
        self._tg = None

    def statistics(self) -> Statistics:
        """Return a snapshot of this instance's counters."""
        return self._counters.snapshot(
            reconnects=self._backend.listener.reconnects, in_flight=len(self._flights)
        )

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None or self._closed:
            raise ClosedError(
                "use the Stampede inside 'async with' (it is not entered, or it is closed)"
            )
        return self._tg

    async def invalidate(self, key: str) -> None:
        """Delete *key*'s value; a compute already running for it will not write.

        Raises:
            TypeError: *key* is not a ``str``.
            BackendError: Redis failed.

        """
        names = make_names(self._namespace, key)
        self._task_group()
        await self._backend.invalidate(names)

    async def get_or_compute(self, key: str, fn: Callable[[], Awaitable[T]], ttl: float) -> T:
        """Return the cached value of *key*, computing it with *fn* at most once.

        Concurrent callers of one key share one resolution in this process and,
        through the Redis lock, across every process using the same Redis and
        namespace. The value is stored for *ttl* seconds.

        The result is the value as stored: it went through the codec (``bytes``
        raw, anything else JSON via orjson), so a tuple comes back as a list on
        every call, the first included.

        Args:
            key: The cache key.
            fn: A zero-argument callable returning an awaitable of the value.
            ttl: Seconds the value lives in the cache.

        Raises:
            TypeError: *key* is not a ``str`` or *fn* is not callable.
            ValueError: *ttl* is not a positive number, or *key* is empty.
            SerializationError: the computed value cannot be serialized.
            ValueTooLargeError: the serialized value is over ``max_value_bytes``.
            BackendError: Redis failed and ``fail_open`` is off.
            WaitTimeoutError: waiting passed ``wait_timeout`` and ``on_wait_timeout="raise"``.
            ClosedError: the instance is not entered or is closed.
            Exception: whatever *fn* raised.

        """
        names = self._names.get(key) if type(key) is str else None
        if names is None:
            names = self._names_for(key)
        if not callable(fn):
            raise TypeError(f"fn must be a zero-argument async callable, not {type(fn).__name__}")
        ttl_ms = _ttl_ms(ttl)
        tg = self._task_group()
        flight = self._flights.get(key)
        if flight is not None:
            self._counters.coalesced += 1
            return await flight.outcome()  # type: ignore[no-any-return]
        flight = self._flights[key] = _Flight()
        try:
            # The first read is a plain GET in the caller's own task: a hit
            # costs one round trip and no task switch. A miss hands the rest
            # of the resolution to a task of this instance (see _resolve).
            first: Acquired | Held | BackendError | _Again = _Again(read=True)
            try:
                payload = await self._backend.read(names)
            except BackendError as exc:
                first = exc
            except anyio.get_cancelled_exc_class():
                # Others of this process may be waiting on this flight.
                tg.start_soon(self._resolve, key, names, flight, fn, ttl_ms, _Again(read=True))
                raise
            else:
                if payload is not None:
                    try:
                        envelope = decode(payload, max_value_bytes=self._max_value_bytes)
                    except DecodeError:
                        self._counters.decode_errors += 1
                        first = _Again(read=False)  # skip the corrupt value, go for the lock
                    else:
                        self._counters.hits += 1
                        self._finish(key, flight, value=envelope.value)
                        return envelope.value  # type: ignore[no-any-return]
            tg.start_soon(self._resolve, key, names, flight, fn, ttl_ms, first)
        except BaseException as exc:
            if not flight.done and not isinstance(exc, anyio.get_cancelled_exc_class()):
                self._finish(key, flight, error=exc)
            raise
        return await flight.outcome()  # type: ignore[no-any-return]

    def _names_for(self, key: object) -> KeyNames:
        """Build (and remember, for hot keys) the Redis names of *key*."""
        names = make_names(self._namespace, key)
        if len(self._names) >= _NAMES_CACHED:
            self._names.clear()  # crude but O(1); hot keys are back in one call
        self._names[key] = names  # type: ignore[index]  # make_names checked it is a str
        return names

    def _finish(
        self, key: str, flight: _Flight, *, value: Any = None, error: BaseException | None = None
    ) -> None:
        if flight.done:
            return  # already resolved straight from the pub/sub reader
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.settle(value, error)

    async def _resolve(
        self,
        key: str,
        names: KeyNames,
        flight: _Flight,
        fn: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        first: Acquired | Held | BackendError | _Again,
    ) -> None:
        token = os.urandom(16)  # identifies this resolution's lock
        try:
            value = await self._resolve_miss(key, flight, names, token, fn, ttl_ms, first)
        except anyio.get_cancelled_exc_class():
            self._finish(key, flight, error=ClosedError("the Stampede closed during the call"))
            raise
        except BaseException as exc:
            self._finish(key, flight, error=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._finish(key, flight, value=value)

    async def _try_acquire(
        self, names: KeyNames, token: bytes, *, read: bool
    ) -> Hit | Acquired | Held | BackendError:
        try:
            return await self._backend.acquire(names, token, self._lock_ms, read=read)
        except BackendError as exc:
            return exc

    async def _resolve_miss(
        self,
        key: str,
        flight: _Flight,
        names: KeyNames,
        token: bytes,
        fn: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        first: Acquired | Held | BackendError | _Again,
    ) -> Any:
        state: Hit | Acquired | Held | BackendError
        if isinstance(first, _Again):
            state = await self._try_acquire(names, token, read=first.read)
            if isinstance(state, Hit):
                try:
                    envelope = decode(state.payload, max_value_bytes=self._max_value_bytes)
                except DecodeError:
                    self._counters.decode_errors += 1
                    state = await self._try_acquire(names, token, read=False)
                else:
                    self._counters.hits += 1
                    return envelope.value
        else:
            state = first
        self._counters.misses += 1
        if isinstance(state, Hit):  # read=False never hits; decoding it is still right
            return decode(state.payload, max_value_bytes=self._max_value_bytes).value
        if isinstance(state, BackendError):
            return await self._on_backend_error(state, fn)
        if isinstance(state, Acquired):
            return await self._lead(names, token, fn, ttl_ms)
        return await self._wait(key, flight, names, token, fn, ttl_ms, state)

    async def _on_backend_error(self, exc: BackendError, fn: Callable[[], Awaitable[Any]]) -> Any:
        self._counters.backend_errors += 1
        if not self._fail_open:
            raise exc
        # Redis is unavailable: still coalesced in this process, but nothing
        # is shared or stored. The value goes through the codec all the same,
        # so callers see the same types as with a working Redis.
        value, _, _ = await self._run_compute(fn)
        payload = self._encode(value, delta_ms=0, ttl_ms=1)
        return decode(payload, max_value_bytes=self._max_value_bytes).value

    async def _run_compute(self, fn: Callable[[], Awaitable[Any]]) -> tuple[Any, int, int]:
        """Call *fn*; return its value, the compute time and the wall clock after."""
        self._counters.computes += 1
        start = time.perf_counter()
        try:
            value = await fn()
        except Exception:
            self._counters.compute_errors += 1
            raise
        delta_ms = math.ceil((time.perf_counter() - start) * 1000)
        return value, delta_ms, int(time.time() * 1000)

    def _encode(self, value: Any, *, delta_ms: int, ttl_ms: int) -> bytes:
        now_ms = int(time.time() * 1000)
        return encode(
            value,
            created_ms=now_ms,
            delta_ms=delta_ms,
            fresh_until_ms=now_ms + ttl_ms,
            compress_threshold=self._compress_threshold,
            max_value_bytes=self._max_value_bytes,
        )

    async def _lead(
        self, names: KeyNames, token: bytes, fn: Callable[[], Awaitable[Any]], ttl_ms: int
    ) -> Any:
        """Compute as the lock holder, then commit and wake every waiter."""
        failure: Exception | None = None
        self._held[token] = names
        self._held_changed.set()
        try:
            value, delta_ms, _ = await self._run_compute(fn)
            payload = self._encode(value, delta_ms=delta_ms, ttl_ms=ttl_ms)
        except Exception as exc:  # fn failed, or its value cannot be stored
            failure = exc
        except BaseException:
            # Closing: let the next holder go at once rather than at lock expiry.
            self._held.pop(token, None)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await self._release_quietly(names, token)
            raise
        self._held.pop(token, None)
        if failure is not None:
            await self._release_quietly(names, token)
            raise failure
        try:
            committed = await self._backend.commit(
                names,
                token,
                payload,
                ttl_ms,
                publish_value=len(payload) <= self._publish_value_max,
            )
        except BackendError:
            # The value is computed; Redis failing now must not waste it.
            self._counters.backend_errors += 1
            committed = True
        if not committed:
            self._counters.lock_lost += 1
        return decode(payload, max_value_bytes=self._max_value_bytes).value

    async def _release_quietly(self, names: KeyNames, token: bytes) -> None:
        try:
            await self._backend.release(names, token)
        except BackendError:
            self._counters.backend_errors += 1  # the lock expires by itself

    async def _keep_locks(self) -> None:
        """Extend every lock held by a running compute, each third of ``lock_ttl``.

        One task serves every compute of this instance, so starting and ending
        a compute costs no task of its own (that would sit on the commit path).
        A lock taken just after a round is extended at the next one, so no
        lock goes longer than a third of its TTL without extension.
        """
        interval = self._lock_ms / 3000
        while True:
            if not self._held:
                self._held_changed = anyio.Event()
                await self._held_changed.wait()
            await anyio.sleep(interval)
            for token, names in list(self._held.items()):
                try:
                    if not await self._backend.extend(names, token, self._lock_ms):
                        self._held.pop(token, None)  # lost: commit will notice
                except Exception:
                    self._counters.backend_errors += 1

    async def _wait(
        self,
        key: str,
        flight: _Flight,
        names: KeyNames,
        token: bytes,
        fn: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        held: Held,
    ) -> Any:
        """Wait for another holder's commit: message, takeover timer, or bound."""
        self._counters.remote_waits += 1
        now = anyio.current_time
        deadline = now() + self._wait_timeout
        timer = _takeover_delay(held.pttl_ms)
        read = True
        max_value_bytes = self._max_value_bytes

        def on_value(message: bytes) -> bool:
            try:
                envelope = decode(message[1:], max_value_bytes=max_value_bytes)
            except DecodeError:
                return False  # the waiting task counts it and re-checks
            self._counters.wakeups += 1
            self._finish(key, flight, value=envelope.value)
            return True

        async with self._backend.listener.interest(names.channel) as interest:
            interest.on_value = on_value
            while True:
                remaining = deadline - now()
                if remaining <= 0:
                    self._counters.wait_timeouts += 1
                    if self._on_wait_timeout == "raise":
                        raise WaitTimeoutError(
                            f"no value after waiting {self._wait_timeout}s for another holder"
                        )
                    return await self._compute_unlocked(names, fn, ttl_ms)
                message = await interest.wait(min(timer, remaining))
                if interest.resolved:
                    return flight.value
                if message is not None and message != RECHECK:
                    self._counters.wakeups += 1
                    if message[:1] == MSG_VALUE:
                        try:
                            envelope = decode(message[1:], max_value_bytes=self._max_value_bytes)
                        except DecodeError:
                            self._counters.decode_errors += 1
                        else:
                            return envelope.value
                if message is None and now() >= deadline:
                    continue
                state = await self._try_acquire(names, token, read=read)
                read = True
                if isinstance(state, BackendError):
                    return await self._on_backend_error(state, fn)
                if isinstance(state, Hit):
                    try:
                        return decode(state.payload, max_value_bytes=self._max_value_bytes).value
                    except DecodeError:
                        self._counters.decode_errors += 1
                        read = False
                        timer = 0.0
                        continue
                if isinstance(state, Acquired):
                    if message is None:
                        self._counters.takeovers += 1
                    return await self._lead(names, token, fn, ttl_ms)
                timer = _takeover_delay(state.pttl_ms)

    async def _compute_unlocked(
        self, names: KeyNames, fn: Callable[[], Awaitable[Any]], ttl_ms: int
    ) -> Any:
        """Compute without the lock (the wait bound passed); never replace a value."""
        value, delta_ms, _ = await self._run_compute(fn)
        payload = self._encode(value, delta_ms=delta_ms, ttl_ms=ttl_ms)
        try:
            await self._backend.write_if_absent(
                names, payload, ttl_ms, publish_value=len(payload) <= self._publish_value_max
            )
        except BackendError:
            self._counters.backend_errors += 1
        return decode(payload, max_value_bytes=self._max_value_bytes).value


def _ttl_ms(ttl: object) -> int:
    if type(ttl) is int and 0 < ttl < 10**12:
        return ttl * 1000
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    return max(1, round(ttl * 1000))


def _takeover_delay(pttl_ms: int) -> float:
    """Seconds until a holder's lock expires, plus jitter so waiters spread out."""
    base = max(pttl_ms, 0) / 1000
    return base + random.uniform(0.001, 0.005 + base * 0.02)
