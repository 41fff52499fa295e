"""`Stampede`: the request path of ``get_or_compute``.

1. In-process flight table: one resolution per key per process; every local
   caller awaits it, and no caller's cancellation cancels it.
2. One GET reads the value; on a miss ``SET lock NX PX GET`` takes the lock or
   names its holder.
3. The lock holder computes, extending its lock while the compute runs, and
   commits with one script that writes the value and leaves a short-lived
   marker in the lock (see ``_scripts``).
4. Everyone else has registered interest in the lock first; one tracked
   ``PTTL`` tells them how long it has left and has Redis tell them when it
   changes. They wait for that, a timer at the lock's expiry (takeover), or
   ``wait_timeout`` (then compute themselves). Nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NoReturn, Self, TypeVar, final

import anyio
import anyio.abc
import anyio.lowlevel
import orjson
from redis import Redis as SyncRedis
from redis.asyncio import ConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._backend import MSG_VALUE, Acquired, Backend, Held, Hit
from ._envelope import DecodeError, Envelope, decode, encode, encode_failure, restamp
from ._exceptions import (
    BackendError,
    BackendRefusedError,
    ClosedError,
    ComputeFailedError,
    ComputeTimeoutError,
    ReentrantCallError,
    SerializationError,
    ValueTooLargeError,
    WaitTimeoutError,
    WrongEventLoopError,
)
from ._keys import KeyNames, make_names, plain_key, validate_namespace
from ._listener import ABSENT, RECHECK, Interest
from ._memory_backend import MemoryBackend
from ._redis_backend import RedisBackend
from ._redis_errors import ProblemLog
from ._stats import Counters, Statistics

__all__ = ["Stampede"]

T = TypeVar("T")

_MiB = 1024 * 1024
# The longest duration accepted (about 317 years): in milliseconds, with the
# stale windows added, it stays well inside what Redis accepts for PX.
_MAX_SECONDS = 10**10
_NAMES_CACHED = 4096  # keys whose Redis names are kept ready
# XFetch's early-refresh window is at most this many (delta * beta) wide, and
# at most this fraction of the value's TTL; see _xfetch_due. (The benchmark
# harness sets them to inf and 1 to show published XFetch side by side.)
_XFETCH_REACH = 2.0
_XFETCH_SHARE_OF_TTL = 0.5


@final
class _Computation:
    """One running compute, as the tasks inside it (and those it starts) see it."""

    __slots__ = ("active", "flight", "lock", "owner", "store")

    def __init__(self, store: object, lock: bytes, owner: int, flight: _Flight) -> None:
        self.store = store  # what stores the key (see Stampede._store)
        self.lock = lock  # the key's lock name
        self.owner = owner  # id() of the Stampede running it
        self.flight = flight  # the resolution it computes for
        self.active = True  # False once it returned: tasks it started may outlive it


# The computes the current task runs inside (or was started from): a call
# for one of their keys would wait for itself. Copied into every task
# started from a compute, so a cycle inside one call chain (a -> b -> a) is
# seen too; one across callers is seen through _Flight.waiting_on.
_computing: ContextVar[tuple[_Computation, ...]] = ContextVar("asyncstampede_computing", default=())


@dataclass(frozen=True, slots=True)
class _Again:
    """Ask Redis (again) before deciding: after a cancellation, or a corrupt value."""

    read: bool
    seen: bytes | None = None  # a stored payload not to be served (corrupt, too stale)


@final
@dataclass(frozen=True, slots=True)
class _Policy:
    """Freshness settings, resolved once per instance and per overriding call."""

    beta: float = 1.0
    swr_ms: int = 0
    sie_ms: int = 0
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    ttl_jitter: float = 0.0
    negative_ms: int = 0

    @classmethod
    def build(
        cls,
        *,
        beta: float,
        stale_while_revalidate: float,
        stale_if_error: float,
        soft_timeout: float | None,
        hard_timeout: float | None,
        ttl_jitter: float,
        negative_ttl: float | None,
    ) -> _Policy:
        """Validate and convert user-facing seconds."""
        return cls(
            beta=_non_negative("beta", beta),
            swr_ms=round(_non_negative("stale_while_revalidate", stale_while_revalidate) * 1000),
            sie_ms=round(_non_negative("stale_if_error", stale_if_error) * 1000),
            soft_timeout=None if soft_timeout is None else _positive("soft_timeout", soft_timeout),
            hard_timeout=None if hard_timeout is None else _positive("hard_timeout", hard_timeout),
            ttl_jitter=_non_negative("ttl_jitter", ttl_jitter),
            negative_ms=0
            if negative_ttl is None
            else round(_positive("negative_ttl", negative_ttl) * 1000),
        )

    def override(
        self,
        *,
        beta: float | None,
        stale_while_revalidate: float | None,
        stale_if_error: float | None,
        soft_timeout: float | None,
        hard_timeout: float | None,
        ttl_jitter: float | None,
        negative_ttl: float | None,
    ) -> _Policy:
        """Return this policy with the call's arguments (those not None) applied."""
        return _Policy.build(
            beta=self.beta if beta is None else beta,
            stale_while_revalidate=(
                self.swr_ms / 1000 if stale_while_revalidate is None else stale_while_revalidate
            ),
            stale_if_error=self.sie_ms / 1000 if stale_if_error is None else stale_if_error,
            soft_timeout=self.soft_timeout if soft_timeout is None else soft_timeout,
            hard_timeout=self.hard_timeout if hard_timeout is None else hard_timeout,
            ttl_jitter=self.ttl_jitter if ttl_jitter is None else ttl_jitter,
            negative_ttl=(self.negative_ms / 1000 or None)
            if negative_ttl is None
            else negative_ttl,
        )


class _Request:
    """Everything one resolution needs, passed down the request path."""

    __slots__ = (
        "failed",
        "flight",
        "fn",
        "key",
        "names",
        "policy",
        "stale",
        "stale_payload",
        "ttl_ms",
    )

    def __init__(
        self,
        key: str,
        names: KeyNames,
        flight: _Flight,
        fn: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        policy: _Policy,
    ) -> None:
        self.key = key
        self.names = names
        self.flight = flight
        self.fn = fn
        self.ttl_ms = ttl_ms
        self.policy = policy
        # A stored value past serving but within stale_if_error: the fallback,
        # and its bytes as stored (a fail-safe re-stamps those, never a value
        # a caller may have changed since).
        self.stale: Envelope | None = None
        self.stale_payload = b""
        self.failed = False  # the compute failed (and a stale value may have hidden it)

    def accepts(self, envelope: Envelope) -> bool:
        """Tell whether a value found while waiting may be handed to this request's callers.

        The same verdict as a read, with this call's own windows: fresh (a
        cached failure only while fresh), or within its
        ``stale_while_revalidate`` (somebody is computing anyway).
        """
        now_ms = _now_ms()
        if now_ms < envelope.fresh_until_ms:
            return True
        return not envelope.failed and now_ms < envelope.origin_fresh_until_ms + self.policy.swr_ms

    def usable_stale(self) -> Envelope | None:
        """Return the stale fallback while it is still within ``stale_if_error``, else None."""
        stale = self.stale
        if stale is not None and _now_ms() < stale.origin_fresh_until_ms + self.policy.sie_ms:
            return stale
        return None


class _Flight:
    """One in-process resolution of one key, awaited by every local caller.

    The caller that started it gets the value itself; every caller that
    joined gets its own copy (decoded again from a snapshot taken when the
    flight settled, before anyone could change the value), unless the
    instance shares values. A failure reaches each joiner as its own copy
    of the exception, with the compute's traceback and nothing else.
    The event is made only when a second caller joins: most hits have none.
    """

    __slots__ = (
        "_event",
        "_json",
        "_tb",
        "_template",
        "detached",
        "done",
        "error",
        "joiners",
        "share",
        "value",
        "waiting_on",
    )

    def __init__(self, share: bool = False) -> None:
        self._event: anyio.Event | None = None
        self._json: bytes | None = None
        self._tb: TracebackType | None = None
        self._template: BaseException | None = None
        self.detached = False  # by invalidate: what it computes must not be stored
        self.done = False
        self.share = share
        self.joiners = 0
        self.value: Any = None
        self.error: BaseException | None = None
        # Flights its compute is blocked on (see Stampede._from_compute).
        self.waiting_on: list[_Flight] | None = None

    def settle(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error, self.done = value, error, True
        # Snapshots are taken now: the first caller to run again may change
        # the value, or the exception (a note, its args, its context).
        if error is not None:
            self._tb = error.__traceback__
            if self.joiners:
                self._template = _own_copy(error, self._tb)
        elif self.joiners and not self.share and type(value) in (dict, list):
            self._json = orjson.dumps(value)
        if self._event is not None:
            self._event.set()

    async def outcome(self, *, started: bool = False) -> Any:
        """Wait for the outcome; *started*: the caller that started the flight."""
        if not started:
            self.joiners += 1
        if not self.done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        if self.error is not None:
            if started or self._template is None:
                raise self.error
            raise _own_copy(self._template, self._tb)
        if self._json is not None and not started:
            return orjson.loads(self._json)
        return self.value


@final
class Stampede:
    """Cache-stampede protection for one Redis (or, without one, one process).

    Use it as an async context manager: entering starts the invalidation reader,
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
        max_entries: Capacity of the embedded store (LRU); unused with Redis.
        beta: XFetch strength (Vattani et al., VLDB 2015): a fresh value is
            refreshed early, in the background, with a probability that grows
            as its expiry nears, scaled by how long its compute took. ``0``
            turns it off. Exactly one process refreshes (the lock decides).
        stale_while_revalidate: Seconds past freshness during which a value is
            served at once while one background refresh runs (RFC 5861).
        stale_if_error: Seconds past freshness during which a value is served
            when the compute fails, times out, or Redis fails (RFC 5861).
        fail_safe_throttle: After a failed compute, the stale value is served
            as fresh for this many seconds before the compute is tried again.
        soft_timeout: Seconds after which callers get the stale value (if any)
            while the compute goes on and still fills the cache.
        hard_timeout: Seconds after which the compute is cancelled and
            `ComputeTimeoutError` raised (or a stale value served).
        ttl_jitter: Fraction of the TTL added at random to each write.
        negative_ttl: Opt-in negative caching: a compute that returns ``None``
            is stored for this many seconds (instead of the TTL), and one that
            raises (with no stale value to serve) is remembered for as long:
            callers then get `ComputeFailedError` without a new compute.
        check: Run `check` when entering, so a misconfigured Redis (wrong
            password, missing ACL rules, a full ``noeviction`` server, a
            database index out of range, TLS trouble) stops the app's start
            with a `BackendError` naming the cause, instead of being logged
            while every call computes uncached.
        share_values: Hand every caller coalesced onto one resolution the
            same object. Off by default: each caller gets its own copy of a
            ``dict`` or ``list`` value, as it would from its own read, so
            one caller's changes never show in another's. Turn it on for
            large values that callers only read, to save a decode per caller.

    Raises:
        TypeError: *redis* is not a ``redis.asyncio.Redis`` client (a URL, a
            synchronous client, a cluster client...), or *fail_open* or
            *check* or *share_values* is not a bool.
        ValueError: a setting is out of range, or the client decodes responses.

    Redis failures never reach callers while ``fail_open`` is on: each is
    counted in `statistics` (``backend_errors``; refusals also in
    ``refused``) and logged on the ``asyncstampede`` logger with the server's
    address and its own words, each kind at most every 10 seconds (refusals
    at ERROR, unavailability at WARNING).

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
        beta: float = 1.0,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        fail_safe_throttle: float = 5.0,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        ttl_jitter: float = 0.0,
        negative_ttl: float | None = None,
        compress_threshold: int = 4096,
        max_value_bytes: int = 64 * _MiB,
        max_entries: int = 10_000,
        check: bool = False,
        share_values: bool = False,
        _owns_client: bool = False,
    ) -> None:
        self._namespace = validate_namespace(namespace)
        if not (
            isinstance(lock_ttl, (int, float))
            and not isinstance(lock_ttl, bool)
            and 0.01 <= lock_ttl < 86_400
        ):
            raise ValueError(f"lock_ttl must be between 0.01 and 86400 seconds, got {lock_ttl!r}")
        if not (
            isinstance(wait_timeout, (int, float))
            and not isinstance(wait_timeout, bool)
            and 0 < wait_timeout <= _MAX_SECONDS
        ):
            raise ValueError(f"wait_timeout must be a positive number, got {wait_timeout!r}")
        for name, n in (
            ("compress_threshold", compress_threshold),
            ("max_value_bytes", max_value_bytes),
        ):
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"{name} must be a non-negative int, got {n!r}")
        self._lock_ms = max(10, round(lock_ttl * 1000))
        self._wait_timeout = float(wait_timeout)
        for flag, given in (
            ("fail_open", fail_open),
            ("check", check),
            ("share_values", share_values),
        ):
            if not isinstance(given, bool):
                raise TypeError(f"{flag} must be True or False, not {given!r}")
        self._fail_open = fail_open
        if on_wait_timeout not in ("compute", "raise"):
            raise ValueError(
                f"on_wait_timeout must be 'compute' or 'raise', got {on_wait_timeout!r}"
            )
        self._on_wait_timeout = on_wait_timeout
        self._policy = _Policy.build(
            beta=beta,
            stale_while_revalidate=stale_while_revalidate,
            stale_if_error=stale_if_error,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
            ttl_jitter=ttl_jitter,
            negative_ttl=negative_ttl,
        )
        self._fail_safe_throttle_ms = round(
            _positive("fail_safe_throttle", fail_safe_throttle) * 1000
        )
        self._refreshing: set[str] = set()
        # key -> monotonic time before which no background refresh of it starts
        self._refresh_after: dict[str, float] = {}
        self._compress_threshold = compress_threshold
        self._max_value_bytes = max_value_bytes
        self._problems = ProblemLog()
        self._check = bool(check)
        self._share = share_values
        self._backend: Backend
        # What stores this instance's keys: computes of one key over one
        # store wait for each other, whichever instance runs them.
        self._store: object
        if redis is None:
            self._backend = MemoryBackend(max_entries=max_entries)
            self._store = self._backend
        else:
            _check_client(redis)
            backend = RedisBackend(
                redis, owns_client=_owns_client, namespace=self._namespace, problems=self._problems
            )
            self._backend = backend
            self._store = backend.address
        # The event loop (or trio run) that entered this instance.
        self._owner: object = None
        self._entered_by = 0  # the task that entered: the only one that may close
        # The owner's thread, and its loop's is_running (None under trio): the
        # cheap test that a call comes from the owner (see _task_group).
        self._owner_thread = 0
        self._owner_running: Callable[[], bool] | None = None
        self._flights: dict[str, _Flight] = {}
        self._names: dict[str, KeyNames] = {}
        # token -> (names, when its next extension is due) of every lock a
        # compute of this instance runs under
        self._held: dict[bytes, tuple[KeyNames, float]] = {}
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

        Requests go out on one auto-pipelined connection of the instance's
        own (plus two for lock changes); the client's pool, of up to
        *max_connections*, is where a command goes while that connection is
        down, and asyncstampede never asks it for more connections than it
        has, so a burst waits for a free one instead of failing. A failed
        command is retried (every command and script is safe to run twice).

        Args:
            url: A ``redis://``, ``rediss://`` or ``unix://`` URL.
            max_connections: Size of the connection pool.
            socket_timeout: Seconds before a Redis command is deemed failed.
            **settings: Any keyword argument of `Stampede`.

        Raises:
            TypeError: *max_connections* is not an int, or a setting has the wrong type.
            ValueError: *max_connections* is below 1, *socket_timeout* is not a
                positive number, or a setting is out of range.

        """
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, not {type(max_connections).__name__}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        _positive("socket_timeout", socket_timeout)
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
        self._owner = _current_loop()
        self._entered_by = anyio.get_current_task().id
        self._owner_thread = threading.get_ident()
        self._owner_running = getattr(self._owner, "is_running", None)
        if isinstance(self._backend, RedisBackend):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "a Stampede over Redis needs asyncio (redis-py's client is asyncio-only); "
                    "under trio, use embedded mode (Stampede() without a client)"
                ) from None
        async with AsyncExitStack() as stack:
            # Registered first so it runs last, once the task group (whose
            # cancel scope the caller's task is inside) has exited.
            stack.push_async_callback(self._backend.aclose)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self._backend.run)
            tg.start_soon(self._keep_locks)
            await self._backend.prepare()
            self._tg = tg
            self._stack = stack.pop_all()
        if self._check:
            try:
                await self.check()
            except BaseException:
                await self.aclose()
                raise
        return self

    async def check(self) -> None:
        """Verify that Redis accepts everything this instance will send; raise what it refuses.

        One of each: ``PING``, a read, loading the scripts, a lock taken on
        a probe key of the namespace (``<namespace>:{asyncstampede:check}:l``,
        held for at most a second) and released, and the handshake of the
        connections that watch locks. Embedded mode has nothing to check.

        Raises:
            BackendRefusedError: Redis refused something (the message has its
                own words and, where known, the ACL rule or setting to change).
            BackendUnavailableError: Redis cannot be reached.
            ClosedError: the instance is not entered or is closed.

        """
        self._task_group()
        await self._backend.check(make_names(self._namespace, "asyncstampede:check"))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reader and every resolution in flight (their callers get `ClosedError`).

        Callers waiting in tasks outside the ``async with`` block get
        `ClosedError`; tasks inside it (under its cancel scope, as in a task
        group opened within it) are cancelled with it.

        Raises:
            RuntimeError: called from a task other than the one that entered
                the instance (nothing is changed).
            ReentrantCallError: called from inside one of this instance's
                computes (it would cancel itself half-way).
            WrongEventLoopError: called from another event loop than the one
                that entered the instance.

        """
        if self._stack is not None:
            self._check_loop()
            if any(c.owner == id(self) and c.active for c in _computing.get()):
                raise ReentrantCallError(
                    "aclose() was called from inside a compute of this Stampede, which would "
                    "cancel that compute half-way; close it where it was entered"
                )
            if anyio.get_current_task().id != self._entered_by:
                raise RuntimeError(
                    "aclose() must be called by the task that entered the Stampede (its task "
                    "group is that task's); end that task's 'async with', or cancel that task"
                )
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
            reconnects=self._backend.reconnects,
            connect_errors=self._backend.connect_errors,
            refused_connections=self._backend.refused_connections,
            in_flight=len(self._flights),
        )

    def _failed(self, exc: BackendError, doing: str, key: str | None = None) -> None:
        """Count and log a Redis failure met while *doing* something (a short phrase).

        ``{key}`` in *doing* names the cache key; failures that differ only
        by their key are one kind of message for the rate limit.
        """
        self._counters.backend_errors += 1
        if isinstance(exc, BackendRefusedError):
            self._counters.refused += 1
        self._problems.report(exc, doing, key=key)

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None or self._closed:
            raise ClosedError(
                "use the Stampede inside 'async with' (it is not entered, or it is closed)"
            )
        # In the owner's thread, while the owner's loop runs, the running loop
        # is the owner's (a thread runs one loop at a time): no need to ask
        # for it (asyncio.get_running_loop costs a getpid() here).
        running = self._owner_running
        if threading.get_ident() != self._owner_thread or running is None or not running():
            self._check_loop()
        return self._tg

    def _check_loop(self) -> None:
        """Refuse a call from an event loop other than the owner's, before it touches anything."""
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:  # trio, or no event loop at all
            loop = _current_loop()
        if loop is not self._owner and loop != self._owner:  # (trio: equal tokens)
            raise WrongEventLoopError(
                "this Stampede belongs to another event loop (the one that entered it); "
                "create one Stampede per event loop (e.g. per worker thread), or run the call "
                "on the owner's loop with asyncio.run_coroutine_threadsafe()"
            )

    def _from_compute(self, key: str, lock: bytes, doing: str) -> _Flight | None:
        """Refuse a call that would wait for itself; return the flight of the compute asking.

        Raises `ReentrantCallError` when the current task computes *key* (or
        a compute it was started from does), or when the resolution of
        *key* in this process is itself waiting, through the computes of
        other keys, for one of those computes (a cycle between callers).
        """
        active = [c for c in _computing.get() if c.active]
        if not active:
            return None
        for c in active:
            if c.lock == lock and c.store == self._store:
                raise ReentrantCallError(
                    f"{doing} {key!r} from inside the compute of {key!r} (directly, through a "
                    "task it started, or through the compute of another key it asked for) "
                    "would wait for itself; pass the value down instead of asking the cache"
                )
        flight = self._flights.get(key)
        if flight is not None and _waits_for(flight, {id(c.flight) for c in active}):
            raise ReentrantCallError(
                f"{doing} {key!r} from inside a compute would wait for itself: the compute "
                f"of {key!r} is waiting (directly or through other keys) for the key being "
                "computed here; break the cycle between the two computes"
            )
        return active[-1].flight

    async def invalidate(self, key: str) -> None:
        """Delete *key*'s value; no caller in this process gets a value computed before.

        A compute already running for *key* will not write, and once this
        returns, callers of this process no longer join it: they start a new
        resolution (callers that joined it before still get its value).

        Raises:
            TypeError: *key* is not a ``str``.
            BackendError: Redis failed (the in-process resolution is detached
                all the same).
            ReentrantCallError: called from inside the compute of *key*.
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop.

        """
        key = plain_key(key)
        names = make_names(self._namespace, key)
        self._task_group()
        if _computing.get():
            self._from_compute(key, names.lock, "invalidating")
        try:
            await self._backend.invalidate(names)
        finally:
            # Detached, like Go singleflight's Forget: whatever it returns was
            # computed from data older than this invalidation.
            flight = self._flights.pop(key, None)
            if flight is not None:
                flight.detached = True

    async def get_or_compute(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        ttl: float,
        *,
        beta: float | None = None,
        stale_while_revalidate: float | None = None,
        stale_if_error: float | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        ttl_jitter: float | None = None,
        negative_ttl: float | None = None,
    ) -> T:
        """Return the cached value of *key*, computing it with *fn* at most once.

        Concurrent callers of one key share one resolution in this process and,
        through the Redis lock, across every process using the same Redis and
        namespace. The value is fresh for *ttl* seconds; the freshness
        arguments override the instance's settings for this call (see
        `Stampede`).

        The result is the value as stored: it went through the codec (``bytes``
        raw, anything else JSON via orjson), so a tuple comes back as a list on
        every call, the first included. It is the caller's own: changing it
        changes nothing stored and nothing another caller got (unless the
        instance was made with ``share_values=True``). See the call's
        contract in ``docs/how-it-works.md``.

        Args:
            key: The cache key.
            fn: A zero-argument callable returning an awaitable of the value.
            ttl: Seconds the value stays fresh.
            beta: XFetch early-refresh strength for this call (0 turns it off).
            stale_while_revalidate: Seconds past freshness a value is still
                served at once while one refresh runs.
            stale_if_error: Seconds past freshness a value is served when the
                compute fails or times out.
            soft_timeout: Seconds after which a stale value (if any) is served
                while the compute goes on and still fills the cache.
            hard_timeout: Seconds after which the compute is cancelled.
            ttl_jitter: Fraction of *ttl* added at random, so keys written
                together do not expire together.
            negative_ttl: Seconds to remember a ``None`` result or a failure.

        Raises:
            TypeError: *key* is not a ``str`` or *fn* is not callable.
            ValueError: a duration is not a positive number, or *key* is empty.
            SerializationError: the computed value cannot be serialized.
            ValueTooLargeError: the serialized value is over ``max_value_bytes``.
            ComputeTimeoutError: *hard_timeout* passed and no stale value could
                be served.
            ComputeFailedError: the compute failed less than *negative_ttl*
                ago, or raised ``CancelledError`` by itself.
            BackendError: Redis failed and ``fail_open`` is off.
            WaitTimeoutError: waiting passed ``wait_timeout`` and ``on_wait_timeout="raise"``.
            ReentrantCallError: called from inside the compute of *key* (or
                of a key whose compute asked for this one).
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop than the one
                that entered the instance.
            Exception: whatever *fn* raised, when no stale value could be
                served (each coalesced caller gets its own copy of it).

        """
        if type(key) is not str:
            key = plain_key(key)  # an enum member names the entry of its text
        names = self._names.get(key)
        if names is None:
            names = self._names_for(key)
        if not callable(fn):
            _refuse_fn(fn)
        ttl_ms = _ttl_ms(ttl)
        policy = self._policy
        if (
            beta is not None
            or stale_while_revalidate is not None
            or stale_if_error is not None
            or soft_timeout is not None
            or hard_timeout is not None
            or ttl_jitter is not None
            or negative_ttl is not None
        ):
            policy = policy.override(
                beta=beta,
                stale_while_revalidate=stale_while_revalidate,
                stale_if_error=stale_if_error,
                soft_timeout=soft_timeout,
                hard_timeout=hard_timeout,
                ttl_jitter=ttl_jitter,
                negative_ttl=negative_ttl,
            )
        tg = self._task_group()
        asking = self._from_compute(key, names.lock, "asking for") if _computing.get() else None
        flight = self._flights.get(key)
        if flight is not None:
            self._counters.coalesced += 1
            if asking is not None:
                return await _blocked_on(asking, flight, started=False)  # type: ignore[no-any-return]
            return await flight.outcome()  # type: ignore[no-any-return]
        flight = self._flights[key] = _Flight(self._share)
        req: _Request | None = None
        try:
            # The first read is a plain GET in the caller's own task: a hit
            # costs one round trip and no task switch. A miss hands the rest
            # of the resolution to a task of this instance (see _resolve).
            # A miss goes straight for the lock.
            first: BackendError | _Again = _Again(read=False)
            try:
                payload = await self._backend.read(names)
            except BackendError as exc:
                first = exc
            except anyio.get_cancelled_exc_class():
                # Others of this process may be waiting on this flight.
                req = _Request(key, names, flight, fn, ttl_ms, policy)
                tg.start_soon(self._resolve, req, _Again(read=True))
                raise
            else:
                if payload is not None:
                    try:
                        envelope = decode(payload, max_value_bytes=self._max_value_bytes)
                    except DecodeError:
                        self._counters.decode_errors += 1
                        first = _Again(read=False, seen=payload)  # corrupt: go for the lock
                    else:
                        # The common case, kept lean: fresh, and XFetch not due.
                        now_ms = _now_ms()
                        if (
                            now_ms < envelope.fresh_until_ms
                            and not envelope.failed
                            and not _xfetch_due(now_ms, envelope, policy.beta)
                        ):
                            self._counters.hits += 1
                            self._finish(key, flight, value=envelope.value)
                            return envelope.value  # type: ignore[no-any-return]
                        req = _Request(key, names, flight, fn, ttl_ms, policy)
                        if self._serve(req, envelope, payload, xfetch_due=True):
                            value = _value_of(envelope)
                            self._finish(key, flight, value=value)
                            return value  # type: ignore[no-any-return]
                        first = _Again(read=False, seen=payload)  # too stale to serve
            if req is None:
                req = _Request(key, names, flight, fn, ttl_ms, policy)
            tg.start_soon(self._resolve, req, first)
        except BaseException as exc:
            if not flight.done and not isinstance(exc, anyio.get_cancelled_exc_class()):
                self._finish(key, flight, error=exc)
            raise
        if asking is not None:
            return await _blocked_on(asking, flight, started=True)  # type: ignore[no-any-return]
        return await flight.outcome(started=True)  # type: ignore[no-any-return]

    def _serve(
        self, req: _Request, envelope: Envelope, payload: bytes, *, xfetch_due: bool = False
    ) -> bool:
        """Decide about a stored value: serve it now (and maybe refresh it), or not.

        Fresh values are served; XFetch may start one early refresh
        (*xfetch_due*: the caller already drew it). Values
        within ``stale_while_revalidate`` are served while one refresh runs.
        Older ones are not served now but kept as the fallback of the
        resolution that follows, while within ``stale_if_error``. Both
        windows count from the end of the freshness the value was computed
        with, which a fail-safe re-stamp never moves.
        """
        now_ms = _now_ms()
        policy = req.policy
        if envelope.failed:  # a cached failure: served (raised) while fresh, never stale
            return now_ms < envelope.fresh_until_ms
        if now_ms < envelope.fresh_until_ms:
            self._counters.hits += 1
            if xfetch_due or _xfetch_due(now_ms, envelope, policy.beta):
                self._refresh_soon(req, envelope, payload, early=True)
            return True
        origin_ms = envelope.origin_fresh_until_ms
        if now_ms < origin_ms + policy.swr_ms:
            self._counters.stale_served += 1
            self._refresh_soon(req, envelope, payload)
            return True
        if now_ms < origin_ms + policy.sie_ms:
            req.stale, req.stale_payload = envelope, payload
        return False

    def _refresh_soon(
        self, req: _Request, envelope: Envelope, payload: bytes, *, early: bool = False
    ) -> None:
        """Start one background refresh of *req*'s key (one per key per process).

        *early*: an XFetch refresh of a fresh value (counted in ``early_refreshes``).
        """
        if req.key in self._refreshing or self._tg is None:
            return
        if self._refresh_after and self._refresh_after.get(req.key, 0.0) > time.monotonic():
            return  # its last background refresh failed: not before fail_safe_throttle
        if early:
            self._counters.early_refreshes += 1
        self._refreshing.add(req.key)
        refresh = _Request(req.key, req.names, _Flight(), req.fn, req.ttl_ms, req.policy)
        refresh.stale, refresh.stale_payload = envelope, payload
        self._tg.start_soon(self._refresh, refresh, payload)

    async def _refresh(self, req: _Request, payload: bytes) -> None:
        """Recompute a served value in the background, if the lock picks us."""
        token = os.urandom(16)
        # Nobody waits for a refresh, so its compute cannot wait for itself
        # through whoever happened to start it.
        _computing.set(())
        try:
            # A value other than the one served showing up once the lock is
            # ours means another process has just refreshed it: nothing to do.
            state = await self._try_acquire(req.names, token, read=False, seen=payload, watch=False)
            if isinstance(state, Acquired):
                # Not _lead: no caller waits, so there is no soft timeout to serve.
                await self._compute_and_commit(req, token)
                if req.failed:  # the fail-safe served: counted and logged there
                    self._counters.refresh_errors += 1
                    self._refresh_failed(req.key)
            elif isinstance(state, BackendError):
                # The value being served is the best there is.
                self._failed(state, "refreshing {key}; the served value stays", req.key)
            # Held: another process is refreshing it.
        except Exception as exc:  # a background refresh has no caller to tell
            self._counters.refresh_errors += 1
            self._refresh_failed(req.key)
            self._problems.say(
                logging.WARNING,
                f"background refresh of {req.key!r} failed; the served value stays: "
                f"{type(exc).__name__}: {exc}",
                kind=f"background refresh failed: {type(exc).__name__}",
            )
        finally:
            self._refreshing.discard(req.key)

    def _refresh_failed(self, key: str) -> None:
        """Start no background refresh of *key* for ``fail_safe_throttle`` seconds."""
        now = time.monotonic()
        if len(self._refresh_after) >= _NAMES_CACHED:
            self._refresh_after = {k: t for k, t in self._refresh_after.items() if t > now}
        self._refresh_after[key] = now + self._fail_safe_throttle_ms / 1000

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
            return  # already resolved straight from a value message
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.settle(value, error)

    async def _resolve(self, req: _Request, first: BackendError | _Again) -> None:
        token = os.urandom(16)  # identifies this resolution's lock
        try:
            value = await self._resolve_miss(req, token, first)
        except anyio.get_cancelled_exc_class():
            self._finish(
                req.key, req.flight, error=ClosedError("the Stampede closed during the call")
            )
            raise
        except BaseException as exc:
            self._finish(req.key, req.flight, error=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._finish(req.key, req.flight, value=value)

    async def _try_acquire(
        self,
        names: KeyNames,
        token: bytes,
        *,
        read: bool,
        seen: bytes | None = None,
        watch: bool = True,
        recheck: bool = False,
    ) -> Hit | Acquired | Held | BackendError:
        try:
            return await self._backend.acquire(
                names, token, self._lock_ms, read=read, seen=seen, watch=watch, recheck=recheck
            )
        except BackendError as exc:
            return exc

    async def _resolve_miss(self, req: _Request, token: bytes, first: BackendError | _Again) -> Any:
        listener = self._backend.listener
        # Registered before Redis is asked about the lock: whatever happens to
        # the lock after the question that finds it held is delivered here.
        interest = listener.register(req.names.lock)
        interest.on_value = self._value_handler(req)
        try:
            return await self._settle_miss(req, token, first, interest)
        finally:
            listener.unregister(req.names.lock, interest)

    def _value_handler(self, req: _Request) -> Callable[[bytes], bool]:
        """Resolve *req*'s flight straight from a value message, without a task switch.

        Value messages carry what was stored just after the lock changed (read
        by the Redis listener, or handed over by the embedded store). A value
        that cannot be served is left to the waiting task, which looks again.
        """
        max_value_bytes = self._max_value_bytes
        key, flight = req.key, req.flight

        def on_value(message: bytes) -> bool:
            try:
                envelope = decode(message[1:], max_value_bytes=max_value_bytes)
            except DecodeError:
                self._counters.decode_errors += 1
                return False
            if not req.accepts(envelope):
                return False  # too old for this call (the stale value it started from...)
            self._counters.wakeups += 1
            if envelope.failed:
                self._finish(key, flight, error=_failure(envelope))
            else:
                self._finish(key, flight, value=envelope.value)
            return True

        return on_value

    async def _settle_miss(
        self,
        req: _Request,
        token: bytes,
        first: BackendError | _Again,
        interest: Interest,
    ) -> Any:
        state: Acquired | Held | BackendError | _Again = first
        seen = first.seen if isinstance(first, _Again) else None  # found, not servable
        for _ in range(3):
            if not isinstance(state, _Again):
                break
            found = await self._try_acquire(req.names, token, read=state.read, seen=state.seen)
            if not isinstance(found, Hit):
                state = found
                continue
            try:
                envelope = decode(found.payload, max_value_bytes=self._max_value_bytes)
            except DecodeError:
                self._counters.decode_errors += 1
            else:
                if self._serve(req, envelope, found.payload):
                    return _value_of(envelope)
            seen = found.payload
            state = _Again(read=False, seen=seen)  # corrupt, or too stale
        self._counters.misses += 1
        if isinstance(state, _Again):
            # The stored value changed under us three times, each time to one
            # that cannot be served: compute, and store only into a gap.
            return await self._compute_unlocked(req)
        if isinstance(state, BackendError):
            return await self._on_backend_error(state, req)
        if isinstance(state, Acquired):
            interest.close()
            return await self._lead(req, token)
        return await self._wait(req, token, state, interest, seen)

    async def _on_backend_error(self, exc: BackendError, req: _Request) -> Any:
        stale = req.usable_stale()
        if stale is not None:
            self._failed(exc, "looking up {key}; serving its stale value", req.key)
            self._counters.fail_safe += 1
            return stale.value
        if not self._fail_open:
            self._failed(exc, "looking up {key}; raising (fail_open is off)", req.key)
            raise exc
        self._failed(exc, "looking up {key}; computing it without the cache", req.key)
        # Redis is unavailable: still coalesced in this process, but nothing
        # is shared or stored. The value goes through the codec all the same,
        # so callers see the same types as with a working Redis.
        value, _ = await self._run_compute(req)
        payload, _ = self._encode(value, delta_ms=0, req=req)
        return decode(payload, max_value_bytes=self._max_value_bytes).value

    async def _run_compute(self, req: _Request) -> tuple[Any, int]:
        """Call the compute function under the hard timeout; return value and duration.

        Only the hard timeout's own cancellation becomes `ComputeTimeoutError`:
        a ``TimeoutError`` the function raises is its own failure. A
        ``CancelledError`` it raises while nothing cancelled this task (it
        awaited something another task cancelled) is a failure of this key,
        `ComputeFailedError`, never a cancellation of the instance.
        """
        self._counters.computes += 1
        start = time.perf_counter()
        hard = req.policy.hard_timeout
        computation = _Computation(self._store, req.names.lock, id(self), req.flight)
        chain = _computing.set((*_computing.get(), computation))
        self._counters.computing += 1
        try:
            with anyio.CancelScope(
                deadline=math.inf if hard is None else anyio.current_time() + hard
            ) as scope:
                value = await _call(req.fn)
        except anyio.get_cancelled_exc_class() as exc:
            if _cancelled_from_outside():
                raise
            self._counters.compute_errors += 1
            raise ComputeFailedError(
                f"the compute of {req.key!r} raised {type(exc).__name__} although nothing "
                "cancelled the call (did it await a task or future that something else "
                "cancelled?)"
            ) from exc
        except Exception:
            self._counters.compute_errors += 1
            raise
        finally:
            self._counters.computing -= 1
            computation.active = False
            _computing.reset(chain)
        if scope.cancelled_caught:
            self._counters.compute_errors += 1
            raise ComputeTimeoutError(f"computing {req.key!r} took over hard_timeout={hard}s")
        return value, math.ceil((time.perf_counter() - start) * 1000)

    def _encode(self, value: Any, *, delta_ms: int, req: _Request) -> tuple[bytes, int]:
        """Encode a fresh value; return it with the Redis TTL it is stored for."""
        now_ms = _now_ms()
        fresh_ms = req.ttl_ms
        if value is None and req.policy.negative_ms:
            fresh_ms = req.policy.negative_ms
        if req.policy.ttl_jitter:
            fresh_ms += int(fresh_ms * req.policy.ttl_jitter * random.random())
        payload = encode(
            value,
            created_ms=now_ms,
            delta_ms=delta_ms,
            fresh_until_ms=now_ms + fresh_ms,
            compress_threshold=self._compress_threshold,
            max_value_bytes=self._max_value_bytes,
        )
        # Kept past its freshness for as long as it may be served stale.
        return payload, fresh_ms + max(req.policy.swr_ms, req.policy.sie_ms)

    async def _lead(self, req: _Request, token: bytes) -> Any:
        """Compute as the lock holder, commit, and wake every waiter.

        With a stale fallback and a ``soft_timeout``, callers get the stale
        value once the soft timeout passes, while the compute goes on here and
        still commits its value.
        """
        soft = req.policy.soft_timeout
        if soft is None or req.stale is None:
            return await self._compute_and_commit(req, token)
        done = anyio.Event()
        outcome: list[Any] = []

        async def run() -> None:
            try:
                outcome.append((True, await self._compute_and_commit(req, token)))
            except Exception as exc:  # handed to the caller below, or dropped
                outcome.append((False, exc))
            finally:
                done.set()

        self._task_group().start_soon(run)
        with anyio.move_on_after(soft):
            await done.wait()
        if not outcome:
            stale = req.usable_stale()
            if stale is not None:
                self._counters.soft_timeouts += 1
                return stale.value
            await done.wait()  # its stale window closed meanwhile: wait for the compute
        ok, result = outcome[0]
        if ok:
            return result
        raise result

    async def _compute_and_commit(self, req: _Request, token: bytes) -> Any:
        names = req.names
        failure: Exception | None = None
        self._held[token] = (names, anyio.current_time() + self._lock_ms / 3000)
        self._held_changed.set()
        try:
            value, delta_ms = await self._run_compute(req)
            payload, px_ms = self._encode(value, delta_ms=delta_ms, req=req)
        except Exception as exc:  # fn failed or timed out, or its value cannot be stored
            failure = exc
        except BaseException:
            # Closing: let the next holder go at once rather than at lock expiry.
            self._held.pop(token, None)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await self._release_quietly(names, token)
            raise
        self._held.pop(token, None)
        if failure is not None:
            req.failed = True
            if req.usable_stale() is not None:
                self._problems.say(
                    logging.WARNING,
                    f"computing {req.key!r} failed; serving its stale value (fail-safe): "
                    f"{type(failure).__name__}: {failure}",
                    kind=f"compute failed, stale served: {type(failure).__name__}",
                )
                return await self._fail_safe(req, token)
            if req.policy.negative_ms and not isinstance(
                failure, (SerializationError, ValueTooLargeError)
            ):
                await self._remember_failure(req, token, failure)
            else:
                await self._release_quietly(names, token)
            raise failure
        try:
            committed = await self._backend.commit(names, token, payload, px_ms)
        except BackendError as exc:
            # Never taken for a commit: the lock is given up at once, so
            # waiters elsewhere stop waiting (and find no value).
            await self._commit_failed(exc, req, token)
            committed = True  # not lost to another holder: Redis failed
        if not committed:
            self._counters.lock_lost += 1
        return decode(payload, max_value_bytes=self._max_value_bytes).value

    async def _commit_failed(self, exc: BackendError, req: _Request, token: bytes) -> None:
        """Handle a commit (or fail-safe re-stamp) that Redis failed or refused.

        The lock is released (a refused script is replaced by a transaction,
        see `RedisBackend.release`) so waiters in other processes look again
        at once instead of waiting out ``lock_ttl``. The value computed here
        still reaches this process's callers when ``fail_open`` is on (the
        default); otherwise they get *exc*.

        Raises:
            BackendError: *exc*, when ``fail_open`` is off.

        """
        if self._fail_open:
            self._failed(exc, "storing {key}; its value is returned uncached", req.key)
        else:
            self._failed(exc, "storing {key}; raising (fail_open is off)", req.key)
        with anyio.CancelScope(shield=True):
            await self._release_quietly(req.names, token)
        if not self._fail_open:
            raise exc

    async def _fail_safe(self, req: _Request, token: bytes) -> Any:
        """Serve the stale value after a failed compute, and keep serving it a while.

        The stored bytes are written back as fresh for ``fail_safe_throttle``
        seconds, so a failing backend is retried once per throttle period,
        not by every request; waiters are woken with it. Nothing moves the
        windows: the value is never fresh past ``created + ttl +
        stale_if_error`` and the key expires when the original write would
        have (``created + ttl + max(stale windows)``), however many
        failures follow; a key that has run out is not written at all.
        """
        stale = req.stale
        assert stale is not None
        self._counters.fail_safe += 1
        now_ms = _now_ms()
        policy = req.policy
        origin_ms = stale.origin_fresh_until_ms
        # Never earlier than it was (a failed early refresh of a fresh value
        # must not cut its freshness short), never past the window.
        fresh_until_ms = max(
            stale.fresh_until_ms,
            min(now_ms + self._fail_safe_throttle_ms, origin_ms + policy.sie_ms),
        )
        px_ms = origin_ms + max(policy.swr_ms, policy.sie_ms) - now_ms
        try:
            payload = restamp(req.stale_payload, fresh_until_ms=fresh_until_ms)
        except DecodeError:
            payload = b""
        if px_ms <= 0 or not payload:  # the window has run out: nothing worth writing
            await self._release_quietly(req.names, token)
            return stale.value
        try:
            # Never past the key's current expiry: a caller with a longer
            # stale window than the writer's does not stretch the writer's.
            await self._backend.restamp(req.names, token, payload, px_ms)
        except BackendError as exc:
            self._failed(exc, "re-stamping the stale value of {key}", req.key)
            await self._release_quietly(req.names, token)
        return stale.value

    async def _remember_failure(self, req: _Request, token: bytes, failure: Exception) -> None:
        """Store a failure marker for ``negative_ttl`` and wake waiters with it."""
        now_ms = _now_ms()
        payload = encode_failure(
            f"{type(failure).__name__}: {failure}",
            created_ms=now_ms,
            fresh_until_ms=now_ms + req.policy.negative_ms,
        )
        try:
            await self._backend.commit(req.names, token, payload, req.policy.negative_ms)
        except BackendError as exc:
            self._failed(exc, "remembering the failure of {key}", req.key)
            await self._release_quietly(req.names, token)

    async def _release_quietly(self, names: KeyNames, token: bytes) -> None:
        try:
            await self._backend.release(names, token)
        except BackendError as exc:
            # The lock expires by itself, and its waiters take over then.
            self._failed(exc, "releasing a lock; its waiters wait for it to expire")

    async def _keep_locks(self) -> None:
        """Extend every lock held by a running compute once it is a third of ``lock_ttl`` old.

        One task serves every compute of this instance, so starting and ending
        a compute costs no task of its own (that would sit on the commit
        path). Each lock is extended when it is due, not on a fixed round:
        every extension also wakes that lock's waiters (they watch it), so
        none is sent early. A compute shorter than a third of ``lock_ttl``
        is never extended.
        """
        interval = self._lock_ms / 3000
        while True:
            if not self._held:
                self._held_changed = anyio.Event()
                await self._held_changed.wait()
                continue
            # A lock taken later is due later: the earliest due time only moves out.
            await anyio.sleep_until(min(due for _, due in self._held.values()))
            now = anyio.current_time()
            # All due at once (and those due within a twentieth of the
            # interval, to save a wake-up), sent together: with the commands
            # pipelined, a thousand extensions cost about one round trip.
            due_now = [
                (token, names)
                for token, (names, due) in self._held.items()
                if due <= now + interval * 0.05
            ]
            for token, names in due_now:
                self._held[token] = (names, now + interval)
            async with anyio.create_task_group() as tg:
                for token, names in due_now:
                    tg.start_soon(self._extend, token, names)

    async def _extend(self, token: bytes, names: KeyNames) -> None:
        try:
            if not await self._backend.extend(names, token, self._lock_ms):
                self._held.pop(token, None)  # lost: commit will notice
        except BackendError as exc:
            # Tried again at the next due time; if it never works, the lock
            # expires under the compute and another process takes over.
            self._failed(exc, "extending a lock held by a running compute")

    async def _wait(
        self, req: _Request, token: bytes, held: Held, interest: Interest, seen: bytes | None
    ) -> Any:
        """Wait for another holder's commit: a change of its lock, the takeover timer, or the bound.

        *interest* was registered before the lock was found held, so no change
        since is missed. Each change is a reason to look again, not the
        answer: a lock is also changed by its extension, or by a takeover.
        """
        self._counters.remote_waits += 1
        self._counters.waiting += 1
        try:
            return await self._wait_for_holder(req, token, held, interest, seen)
        finally:
            self._counters.waiting -= 1

    async def _wait_for_holder(
        self, req: _Request, token: bytes, held: Held, interest: Interest, seen: bytes | None
    ) -> Any:
        now = anyio.current_time
        started = now()
        deadline = started + self._wait_timeout
        soft = req.policy.soft_timeout if req.stale is not None else None
        timer = _takeover_delay(held.pttl_ms)
        expires = started + held.pttl_ms / 1000  # when the holder's lock runs out
        # seen: a stored payload already found unservable
        flight = req.flight
        while True:
            if soft is not None and now() - started >= soft:
                stale = req.usable_stale()
                if stale is not None:
                    self._counters.soft_timeouts += 1
                    return stale.value
                soft = None  # its stale window closed meanwhile
            remaining = deadline - now()
            if remaining <= 0:
                self._counters.wait_timeouts += 1
                stale = req.usable_stale()
                if stale is not None:
                    return stale.value
                if self._on_wait_timeout == "raise":
                    raise WaitTimeoutError(
                        f"no value after waiting {self._wait_timeout}s for another holder"
                    )
                return await self._compute_unlocked(req)
            within = min(timer, remaining)
            if soft is not None:
                within = min(within, max(0.0, started + soft - now()))
            message = await interest.wait(within)
            if interest.resolved:
                return await flight.outcome()
            if message is not None and message != RECHECK and message[:1] != MSG_VALUE:
                # (A value message reaches this task only when on_value could
                # not decode it; it counted that. Look again.)
                self._counters.wakeups += 1
            if message is None and now() >= deadline:
                continue
            # ABSENT: the listener read the value just after the change and
            # found none, so only the lock is in question.
            state = await self._try_acquire(
                req.names, token, read=message != ABSENT, seen=seen, recheck=True
            )
            if isinstance(state, BackendError):
                return await self._on_backend_error(state, req)
            if isinstance(state, Hit):
                found: Envelope | None
                try:
                    found = decode(state.payload, max_value_bytes=self._max_value_bytes)
                except DecodeError:
                    self._counters.decode_errors += 1
                    found = None
                if found is not None and req.accepts(found):
                    return _value_of(found)
                # Corrupt, or too old for this call (the stale value it
                # started from): ask about the lock alone, right away.
                seen = state.payload
                timer = 0.0
                continue
            if isinstance(state, Acquired):
                # Whether the timer fired or Redis reported the expiry: a lock
                # taken once the last one ran out (not released) is a takeover.
                if now() >= expires - 0.005:
                    self._counters.takeovers += 1
                interest.close()
                return await self._lead(req, token)
            timer = _takeover_delay(state.pttl_ms)
            expires = now() + state.pttl_ms / 1000

    async def _compute_unlocked(self, req: _Request) -> Any:
        """Compute without the lock (the wait bound passed); never replace a value.

        The value is stored only into a gap, and only while the lock is as
        it was when the compute started and nothing invalidated the key in
        this process: an invalidation (which deletes the lock) since then
        would otherwise be undone by a value computed from older data.
        """
        holder: bytes | None = None
        holder_known = True
        try:
            holder = await self._backend.lock_holder(req.names)
        except BackendError as exc:
            self._failed(exc, "reading the lock of {key}", req.key)
            holder_known = False  # then nothing to compare with: do not store
        value, delta_ms = await self._run_compute(req)
        payload, px_ms = self._encode(value, delta_ms=delta_ms, req=req)
        if holder_known and not req.flight.detached:
            try:
                await self._backend.write_if_absent(req.names, payload, px_ms, holder)
            except BackendError as exc:
                self._failed(exc, "storing {key} computed without the lock", req.key)
        return decode(payload, max_value_bytes=self._max_value_bytes).value


# Attributes that built-in exception types keep in C and set in __init__
# (OSError, ImportError, AttributeError, NameError, SystemExit, StopIteration,
# UnicodeError, SyntaxError): copied by name, as __new__ alone leaves them empty.
_BUILTIN_FIELDS = (
    "errno",
    "strerror",
    "filename",
    "filename2",
    "name",
    "path",
    "obj",
    "code",
    "value",
    "encoding",
    "object",
    "start",
    "end",
    "reason",
    "msg",
    "lineno",
    "offset",
    "text",
    "end_lineno",
    "end_offset",
)


async def _blocked_on(asking: _Flight, flight: _Flight, *, started: bool) -> Any:
    """Await *flight* from inside the compute of *asking*, recording the edge for cycle checks."""
    waiting = asking.waiting_on
    if waiting is None:
        waiting = asking.waiting_on = []
    waiting.append(flight)
    try:
        return await flight.outcome(started=started)
    finally:
        waiting.remove(flight)


def _waits_for(flight: _Flight, targets: set[int]) -> bool:
    """Tell whether *flight*'s compute waits, through other flights, for one of *targets* (ids)."""
    todo, seen = [flight], set()
    while todo:
        f = todo.pop()
        if id(f) in targets:
            return True
        if id(f) in seen or not f.waiting_on:
            continue
        seen.add(id(f))
        todo.extend(f.waiting_on)
    return False


def _own_copy(error: BaseException, tb: TracebackType | None) -> BaseException:
    """Return a copy of *error* for one more caller, with the traceback it had when raised.

    Raising one object to many callers would grow its traceback by every
    caller's frames (and let one caller's handler see another's). The copy
    is made without calling ``__init__`` again (which may have reworded its
    arguments): same class, ``args``, attributes (slots too), cause, context
    and notes; a shallow copy (an attribute's own objects are shared).
    An exception that does not copy faithfully (its text differs, as some
    with state kept in C can) is raised itself, its traceback reset to the
    original.
    """
    cls = type(error)
    try:
        twin = cls.__new__(cls, *error.args)
        twin.__dict__.update(error.__dict__)
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and hasattr(error, name):
                    setattr(twin, name, getattr(error, name))
        for name in _BUILTIN_FIELDS:  # set by built-in __init__s, which were not called
            with contextlib.suppress(AttributeError, TypeError):  # not its field; read-only
                field = getattr(error, name)
                if field is not None:  # (an OSError's filename2 set to None shows as "-> None")
                    setattr(twin, name, field)
        faithful = type(twin) is cls and twin.args == error.args and str(twin) == str(error)
    except Exception:
        faithful = False
    if not faithful:
        return error.with_traceback(tb)
    twin.__cause__ = error.__cause__
    twin.__context__ = error.__context__
    twin.__suppress_context__ = error.__suppress_context__
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, list):
        twin.__notes__ = list(notes)
    return twin.with_traceback(tb)


async def _call(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Call *fn* and await what it returns, which must be awaitable."""
    result = fn()
    if not inspect.isawaitable(result):
        if inspect.isasyncgen(result) or inspect.isgenerator(result):
            if inspect.isgenerator(result):
                result.close()
            else:
                await result.aclose()
            raise TypeError(
                "fn is a generator function: pass an async function returning the value"
            )
        raise TypeError(
            f"the compute function returned {type(result).__name__}, not an awaitable: pass an "
            "async function (or a lambda returning a coroutine); for blocking code, pass "
            "lambda: anyio.to_thread.run_sync(blocking_fn)"
        )
    return await result


def _cancelled_from_outside() -> bool:
    """Whether the current task is being cancelled (by a cancel scope, or ``Task.cancel``)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio: trio's Cancelled cannot be raised by hand
        return True
    return task is not None and task.cancelling() > 0


def _current_loop() -> object:
    """Return the running asyncio loop, or the trio run's token: what an instance belongs to."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token()


def _refuse_fn(fn: object) -> NoReturn:
    """Raise the `TypeError` for a compute function that cannot be one."""
    if inspect.iscoroutine(fn):
        fn.close()  # never awaited, and never will be: no warning about it
        raise TypeError(
            "fn is a coroutine, not a function: pass the function itself, or a lambda "
            "(get_or_compute(key, lambda: load(42), ttl))"
        )
    raise TypeError(f"fn must be a zero-argument async callable, not {type(fn).__name__}")


def _check_client(redis: object) -> None:
    """Refuse anything but a ``redis.asyncio.Redis`` client, saying what to pass instead."""
    if isinstance(redis, Redis):
        return
    if isinstance(redis, str):
        raise TypeError(  # the URL is not repeated: it may hold a password
            "Stampede() takes a redis.asyncio.Redis client; for a URL use Stampede.from_url(url)"
        )
    if isinstance(redis, SyncRedis):
        raise TypeError(
            "Stampede() needs an asyncio client: pass redis.asyncio.Redis (not redis.Redis), "
            "or use Stampede.from_url(url)"
        )
    raise TypeError(
        f"Stampede() takes a redis.asyncio.Redis client, not {type(redis).__module__}."
        f"{type(redis).__qualname__} (Redis Cluster and Sentinel are not supported yet)"
    )


def _xfetch_due(now_ms: int, envelope: Envelope, beta: float) -> bool:
    """Tell whether an early refresh is due at *now_ms*: XFetch, its window bounded.

    XFetch (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache
    Stampede Prevention", VLDB 2015) refreshes when
    ``now - delta * beta * ln(rand()) >= expiry``, ``delta`` being how long
    the last compute took. Each read draws once, so with N reads in the last
    stretch the earliest draw fires about ``delta * beta * ln(N)`` before
    expiry: at high read rates, refreshes come far too early (two or more
    per TTL period). Here the window is cut at ``_XFETCH_REACH * delta *
    beta`` (and at half the value's TTL): at low read rates it is XFetch as
    published; at high ones the refresh starts right at that edge, once per
    period, with the compute's own duration to spare before expiry.
    """
    if not beta or not envelope.delta_ms:
        return False
    gap = envelope.fresh_until_ms - now_ms
    reach = envelope.delta_ms * beta
    if gap > reach * _XFETCH_REACH or gap > envelope.ttl_ms * _XFETCH_SHARE_OF_TTL:
        return False
    return -reach * math.log(1.0 - random.random()) >= gap


def _value_of(envelope: Envelope) -> Any:
    """Return a stored value, or raise the cached failure it stands for."""
    if envelope.failed:
        raise _failure(envelope)
    return envelope.value


def _failure(envelope: Envelope) -> ComputeFailedError:
    left = max(0, envelope.fresh_until_ms - _now_ms()) / 1000
    text = bytes(envelope.value).decode("utf-8", "replace")
    return ComputeFailedError(f"cached failure ({left:.1f}s left): {text}")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ttl_ms(ttl: object) -> int:
    if type(ttl) is int and 0 < ttl <= _MAX_SECONDS:
        return ttl * 1000
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not (0 < ttl <= _MAX_SECONDS):
        raise ValueError(
            f"ttl must be a positive number of seconds, at most {_MAX_SECONDS:.0e}, got {ttl!r}"
        )
    return max(1, round(ttl * 1000))


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not value <= _MAX_SECONDS:  # also NaN and infinity
        raise ValueError(f"{name} must be at most {_MAX_SECONDS:.0e} seconds, got {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    if _non_negative(name, value) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _takeover_delay(pttl_ms: int) -> float:
    """Seconds until a holder's lock expires, plus jitter so waiters spread out."""
    base = max(pttl_ms, 0) / 1000
    return base + random.uniform(0.001, 0.005 + base * 0.02)
