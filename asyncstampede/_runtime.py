"""What the request path passes down: the instance's shared parts, and one resolution's request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, final

import anyio.abc
from redis.asyncio import Redis

from ._backends.base import Acquired, Backend, Held, Hit
from ._backends.memory import MemoryBackend
from ._backends.redis.backend import RedisBackend
from ._backends.redis.client import check_client
from ._envelope import DecodeError, Envelope, decode
from ._exceptions import BackendError, BackendRefusedError, ComputeFailedError
from ._flight import Flight
from ._freshness import Policy, fallback_usable, judge
from ._keys import KeyNames
from ._lock_keeper import LockKeeper
from ._problems import ProblemLog
from ._settings import Settings
from ._stats import Counters, Statistics

__all__ = ["Again", "Request", "Runtime", "failure_of", "now_ms", "value_of"]


def now_ms() -> int:
    """Wall-clock milliseconds: what envelopes are stamped with, across hosts."""
    return int(time.time() * 1000)


@final
class Runtime:
    """The parts of one `Stampede` that every step of the request path shares."""

    __slots__ = (
        "backend",
        "counters",
        "flights",
        "keeper",
        "problems",
        "refresh_after",
        "refreshing",
        "settings",
        "store",
        "tg",
    )

    def __init__(
        self, settings: Settings, backend: Backend, store: object, problems: ProblemLog
    ) -> None:
        self.settings = settings
        self.backend = backend
        # What stores the keys: computes of one key over one store wait for
        # each other, whichever instance runs them.
        self.store = store
        self.problems = problems
        self.counters = Counters()
        self.flights: dict[str, Flight] = {}  # key -> its resolution in this process
        self.keeper = LockKeeper(backend, settings.lock_ms, self.failed)
        self.tg: anyio.abc.TaskGroup | None = None  # set while entered
        self.refreshing: set[str] = set()  # keys with a background refresh running
        # key -> monotonic time before which no background refresh of it starts
        self.refresh_after: dict[str, float] = {}

    @classmethod
    def over(cls, redis: Redis | None, settings: Settings) -> Runtime:
        """Build the parts over *redis* (a client, checked), or embedded when None.

        Raises:
            TypeError: *redis* is not a ``redis.asyncio.Redis`` client.
            ValueError: the client decodes responses.

        """
        problems = ProblemLog()
        if redis is None:
            memory = MemoryBackend(max_entries=settings.max_entries)
            return cls(settings, memory, memory, problems)
        check_client(redis)
        backend = RedisBackend(
            redis,
            owns_client=False,
            namespace=settings.namespace,
            problems=problems,
            wake=settings.wake,
        )
        return cls(settings, backend, backend.address, problems)

    @property
    def over_redis(self) -> bool:
        """Whether the store is Redis (which needs asyncio)."""
        return isinstance(self.backend, RedisBackend)

    def own_client(self) -> None:
        """Close the Redis client with the instance (it is ``from_url``'s own)."""
        if isinstance(self.backend, RedisBackend):
            self.backend.owns_client = True

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters and gauges."""
        backend = self.backend
        return self.counters.snapshot(
            reconnects=backend.reconnects,
            connect_errors=backend.connect_errors,
            refused_connections=backend.refused_connections,
            in_flight=len(self.flights),
            refreshing=len(self.refreshing),
            wake=backend.wake,
        )

    def detach(self, key: str) -> None:
        """Take *key*'s flight out of the table: nothing it computes is stored or joined.

        Like Go singleflight's ``Forget``, for an invalidation: whatever the
        flight returns was computed from data older than it.
        """
        flight = self.flights.pop(key, None)
        if flight is not None:
            flight.detached = True

    def failed(self, exc: BackendError, doing: str, key: str | None = None) -> None:
        """Count and log a Redis failure met while *doing* something (a short phrase).

        ``{key}`` in *doing* names the cache key; failures that differ only
        by their key are one kind of message for the rate limit.
        """
        self.counters.backend_errors += 1
        if isinstance(exc, BackendRefusedError):
            self.counters.refused += 1
        self.problems.report(exc, doing, key=key)

    def finish(
        self, key: str, flight: Flight, *, value: Any = None, error: BaseException | None = None
    ) -> None:
        """Settle *flight* (once) and take it out of the table if it is still *key*'s."""
        if flight.done:
            return  # already resolved straight from a value message
        if self.flights.get(key) is flight:
            del self.flights[key]
        flight.settle(value, error)

    async def acquire(
        self,
        names: KeyNames,
        token: bytes,
        *,
        read: bool,
        seen: bytes | None = None,
        watch: bool = True,
        recheck: bool = False,
    ) -> Hit | Acquired | Held | BackendError:
        """Run `Backend.acquire` with the lock TTL; a Redis failure is returned, not raised."""
        try:
            return await self.backend.acquire(
                names,
                token,
                self.settings.lock_ms,
                read=read,
                seen=seen,
                watch=watch,
                recheck=recheck,
            )
        except BackendError as exc:
            return exc

    def decode(self, payload: bytes) -> Envelope | None:
        """Decode a stored envelope, or count it as corrupt and return None."""
        try:
            return decode(payload, max_value_bytes=self.settings.max_value_bytes)
        except DecodeError:
            self.counters.decode_errors += 1
            return None


@dataclass(frozen=True, slots=True)
class Again:
    """Ask Redis (again) before deciding: after a cancellation, or a corrupt value."""

    read: bool
    seen: bytes | None = None  # a stored payload not to be served (corrupt, too stale)


@final
class Request:
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
        flight: Flight,
        fn: Callable[[], Awaitable[Any]],
        ttl_ms: int,
        policy: Policy,
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
        """Tell whether a value may be handed to this request's callers now (see `judge`)."""
        return judge(envelope, now_ms(), self.policy).servable

    def usable_stale(self) -> Envelope | None:
        """Return the stale fallback while it is still within ``stale_if_error``, else None."""
        stale = self.stale
        if stale is not None and fallback_usable(stale, now_ms(), self.policy):
            return stale
        return None


def value_of(envelope: Envelope) -> Any:
    """Return a stored value, or raise the cached failure it stands for."""
    if envelope.failed:
        raise failure_of(envelope)
    return envelope.value


def failure_of(envelope: Envelope) -> ComputeFailedError:
    """Return the `ComputeFailedError` a cached failure stands for."""
    left = max(0, envelope.fresh_until_ms - now_ms()) / 1000
    text = bytes(envelope.value).decode("utf-8", "replace")
    return ComputeFailedError(f"cached failure ({left:.1f}s left): {text}")
