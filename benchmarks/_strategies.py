"""The caching strategies the harness compares, each as its documentation shows it.

Every strategy offers ``get(key, compute, ttl)``: return the cached value of
*key*, calling ``compute()`` on a miss. Values are JSON-able dicts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

import anyio
import orjson
from redis.asyncio import BlockingConnectionPool, Redis

from asyncstampede import Stampede

Compute = Callable[[], Awaitable[Any]]


class Strategy(Protocol):
    name: str

    async def start(self, url: str, namespace: str) -> None: ...
    async def get(self, key: str, compute: Compute, ttl: float) -> Any: ...
    async def stop(self) -> None: ...


def _pool(url: str) -> Redis:
    # Every strategy gets the same kind of client: a blocking pool, so none
    # fails on pool exhaustion and the comparison is about the algorithm.
    return Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=64))


class Naive:
    """GET; on a miss compute and SET. No protection at all."""

    name = "naive"

    async def start(self, url: str, namespace: str) -> None:
        self.r = _pool(url)
        self.ns = namespace

    async def get(self, key: str, compute: Compute, ttl: float) -> Any:
        k = f"{self.ns}:{key}"
        raw = await self.r.get(k)
        if raw is not None:
            return orjson.loads(raw)
        value = await compute()
        await self.r.set(k, orjson.dumps(value), px=int(ttl * 1000))
        return value

    async def stop(self) -> None:
        await self.r.aclose()


class SleepPoll(Naive):
    """The textbook fix: a SET NX lock; losers sleep 100 ms and re-GET, up to 5 s."""

    name = "sleep-poll"

    async def get(self, key: str, compute: Compute, ttl: float) -> Any:
        k = f"{self.ns}:{key}"
        raw = await self.r.get(k)
        if raw is not None:
            return orjson.loads(raw)
        token = os.urandom(8).hex()
        deadline = time.monotonic() + 5.0
        while True:
            if await self.r.set(f"{k}:lock", token, nx=True, px=5000):
                try:
                    value = await compute()
                    await self.r.set(k, orjson.dumps(value), px=int(ttl * 1000))
                    return value
                finally:
                    await self.r.delete(f"{k}:lock")
            await anyio.sleep(0.1)
            raw = await self.r.get(k)
            if raw is not None:
                return orjson.loads(raw)
            if time.monotonic() > deadline:
                return await compute()


class Cashews:
    """cashews' ``@cache(ttl=..., key=..., lock=True)`` decorator, as its README shows it.

    ``lock=True`` is cashews' documented stampede protection that computes
    once per herd across processes; it takes a Redis lock around every call,
    hits included (``SET NX``, ``GET``, an unlock script), which is what its
    hits cost. The other documented form, ``@cache`` over ``@cache.locked``,
    locks only on a miss but then computes once per waiting process, one
    after another (the lock is released, not the value re-read). One
    decorated function per TTL, made once: never a new decorator per call.
    """

    name = "cashews"
    lock = True

    async def start(self, url: str, namespace: str) -> None:
        from cashews import Cache

        self.cache = Cache()
        self.cache.setup(url, max_connections=64)
        self.ns = namespace
        self._current: dict[str, Compute] = {}
        self._decorated: dict[float, Callable[[str], Awaitable[Any]]] = {}

    async def get(self, key: str, compute: Compute, ttl: float) -> Any:
        load = self._decorated.get(ttl)
        if load is None:
            computes = self._current

            @self.cache(ttl=ttl, key=self.ns + ":{key}", lock=self.lock)
            async def load(key: str) -> Any:
                return await computes[key]()

            self._decorated[ttl] = load
        self._current[key] = compute
        return await load(key)

    async def stop(self) -> None:
        await self.cache.close()


class CashewsNoLock(Cashews):
    """cashews' plain ``@cache(ttl=..., key=...)``: its fastest hit, no stampede protection.

    Run beside ``cashews`` in the hits scenario only, so the table shows
    what its lock costs each hit; without the lock a herd computes once
    per caller.
    """

    name = "cashews-nolock"
    lock = False


class AiocacheRedLock:
    """aiocache's ``RedLock`` pattern, as in its documentation."""

    name = "aiocache"

    async def start(self, url: str, namespace: str) -> None:
        from aiocache import RedisCache
        from aiocache.serializers import JsonSerializer

        parsed = urlsplit(url)
        self.cache = RedisCache(
            endpoint=parsed.hostname,
            port=parsed.port,
            namespace=namespace,
            serializer=JsonSerializer(),
            pool_max_size=64,
            connection_pool_class=BlockingConnectionPool,
        )

    async def get(self, key: str, compute: Compute, ttl: float) -> Any:
        from aiocache.lock import RedLock

        value = await self.cache.get(key)
        if value is not None:
            return value
        async with RedLock(self.cache, key, lease=5):
            value = await self.cache.get(key)
            if value is not None:
                return value
            value = await compute()
            await self.cache.set(key, value, ttl=ttl)
            return value

    async def stop(self) -> None:
        await self.cache.close()


class AsyncStampede:
    """asyncstampede on Redis, default settings (XFetch on, beta 1)."""

    name = "asyncstampede"
    hooks: tuple[Callable[[Any], object], ...] = ()  # (given to the instance; see hook_cost)

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace)
        await self.s.__aenter__()

    async def get(self, key: str, compute: Compute, ttl: float) -> Any:
        return await self.s.get_or_compute(key, compute, ttl)

    def wake_figures(self) -> dict[str, Any]:
        """How this process's waiters are woken now, and the counts that show it.

        ``wake`` is ``statistics().wake`` (the transport in use, ``poll``,
        or ``in-process``); the counts are totals so far, for the worker to
        difference around a herd.
        """
        stats = self.s.statistics()
        return {
            "wake": stats.wake,
            "wakeups": stats.wakeups,
            "polls": stats.polls,
            "reconnects": stats.reconnects,
        }

    def counters(self) -> dict[str, int]:
        """This instance's ``statistics()`` counters so far (``hits``, ``backend_errors``...).

        Totals, for the worker to sample and the harness to difference; the
        gauges and ``wake`` are left out.
        """
        stats = self.s.statistics()
        return {name: getattr(stats, name) for name in COUNTERS}

    async def stop(self) -> None:
        await self.s.aclose()


class AsyncStampedeCluster(AsyncStampede):
    """asyncstampede on a Redis Cluster: ``Stampede.from_url(url, cluster=True)``.

    *url* names one node; each key's work goes to the primary serving its
    hash slot (the cluster scenario only).
    """

    name = "asyncstampede-cluster"

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace, cluster=True)
        await self.s.__aenter__()


# The ``statistics()`` counters `AsyncStampede.counters` reports.
COUNTERS = ("hits", "misses", "computes", "backend_errors", "reconnects", "connect_errors")


# The wake transports a `Stampede` can be forced to use (its ``wake``
# setting, less "auto"), in the order ``wake="auto"`` tries the first four.
Transport = Literal["tracking", "tracking-resp3", "keyspace", "channel", "poll"]
TRANSPORTS: tuple[Transport, ...] = ("tracking", "tracking-resp3", "keyspace", "channel", "poll")


class WrongWakeError(RuntimeError):
    """A forced wake transport is not the one in use: the row would measure another."""


class _AsyncStampedeWake(AsyncStampede):
    """asyncstampede with one wake transport forced: ``Stampede.from_url(url, wake=...)``.

    `start` fails when ``statistics().wake`` then names another transport
    (the server refused the forced one, and waiters poll): a row measured so
    would be the polling row under another name.
    """

    wake: ClassVar[Transport]

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace, wake=self.wake)
        await self.s.__aenter__()
        in_use = self.s.statistics().wake
        if in_use != self.wake:
            await self.s.aclose()
            hint = (
                " (the server must send keyspace notifications: notify-keyspace-events "
                "with K, g and $, e.g. redis-server --notify-keyspace-events K$gx)"
                if self.wake == "keyspace"
                else ""
            )
            raise WrongWakeError(
                f"{self.name}: statistics().wake is {in_use!r}, not {self.wake!r}{hint}"
            )


class AsyncStampedeTracking(_AsyncStampedeWake):
    """asyncstampede with ``wake="tracking"``: client tracking, ``REDIRECT`` to a RESP2 reader."""

    name = "asyncstampede-tracking"
    wake = "tracking"


class AsyncStampedeTrackingResp3(_AsyncStampedeWake):
    """asyncstampede with ``wake="tracking-resp3"``: client tracking in-band on RESP3."""

    name = "asyncstampede-tracking-resp3"
    wake = "tracking-resp3"


class AsyncStampedeKeyspace(_AsyncStampedeWake):
    """asyncstampede with ``wake="keyspace"``: keyspace notifications of the lock and value."""

    name = "asyncstampede-keyspace"
    wake = "keyspace"


class AsyncStampedeChannel(_AsyncStampedeWake):
    """asyncstampede with ``wake="channel"``: the key's own channel, published by the scripts."""

    name = "asyncstampede-channel"
    wake = "channel"


class AsyncStampedePoll(_AsyncStampedeWake):
    """asyncstampede with ``wake="poll"``: nothing pushes; waiters look by themselves."""

    name = "asyncstampede-poll"
    wake = "poll"


# Strategy name -> the transport it forces.
WAKE_STRATEGIES: dict[str, Transport] = {
    s.name: s.wake
    for s in (
        AsyncStampedeTracking,
        AsyncStampedeTrackingResp3,
        AsyncStampedeKeyspace,
        AsyncStampedeChannel,
        AsyncStampedePoll,
    )
}


class AsyncStampedeSWR(AsyncStampede):
    """asyncstampede with XFetch off and stale-while-revalidate on (one TTL long)."""

    name = "asyncstampede-swr"

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace, beta=0, stale_while_revalidate=1.0)
        await self.s.__aenter__()


class AsyncStampedePlain(AsyncStampede):
    """asyncstampede with every freshness policy off: recompute at expiry."""

    name = "asyncstampede-plain"

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace, beta=0)
        await self.s.__aenter__()


class AsyncStampedeShared(AsyncStampede):
    """asyncstampede with ``share_values=True``: coalesced callers get one object, no copies."""

    name = "asyncstampede-shared"

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace, share_values=True)
        await self.s.__aenter__()


def unbound_xfetch_window() -> None:
    """Make XFetch in this process draw as published: no bound on its early window.

    The one place the harness reaches into asyncstampede's internals (the
    constants of ``asyncstampede._freshness``). Called in a worker process
    only, never in the harness.
    """
    from asyncstampede import _freshness as freshness

    freshness._XFETCH_REACH = float("inf")
    freshness._XFETCH_SHARE_OF_TTL = 1.0


class AsyncStampedePublishedXFetch(AsyncStampede):
    """asyncstampede with XFetch as published: its early window not bounded (as in 0.1.0)."""

    name = "asyncstampede-xfetch-published"

    async def start(self, url: str, namespace: str) -> None:
        unbound_xfetch_window()
        await super().start(url, namespace)


class Embedded(AsyncStampede):
    """asyncstampede without Redis: coalesces within each process only."""

    name = "embedded"

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede(namespace=namespace)
        await self.s.__aenter__()


def _noop(event: object) -> None:
    """A hook that does nothing: what calling hooks at all costs."""


class AsyncStampedeNoopHook(AsyncStampede):
    """asyncstampede with one hook that does nothing (the hooks scenario's baseline for a hook)."""

    name = "asyncstampede-hook-noop"

    hooks = (_noop,)

    async def start(self, url: str, namespace: str) -> None:
        self.s = Stampede.from_url(url, namespace=namespace, hooks=list(self.hooks))
        await self.s.__aenter__()


class AsyncStampedeOtel(AsyncStampede):
    """asyncstampede with `OpenTelemetryHook` on the SDK's providers.

    The meter provider aggregates into an in-memory reader that is never
    read, and the tracer provider has no processor: what recording costs
    a call, without an exporter's own work (which runs on its own thread).
    """

    name = "asyncstampede-otel"
    hit_durations = 16  # (the default: one hit's duration in 16)

    async def start(self, url: str, namespace: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider

        from asyncstampede.otel import OpenTelemetryHook

        hook = OpenTelemetryHook(
            MeterProvider(metric_readers=[InMemoryMetricReader()]),
            TracerProvider(),
            hit_durations=self.hit_durations,
        )
        self.hooks = (hook,)
        self.s = Stampede.from_url(url, namespace=namespace, hooks=[hook])
        await self.s.__aenter__()


class AsyncStampedeOtelCounts(AsyncStampedeOtel):
    """`AsyncStampedeOtel` with ``hit_durations=1``: every hit's duration recorded."""

    name = "asyncstampede-otel-counts"
    hit_durations = 1


class AsyncStampedePrometheus(AsyncStampede):
    """asyncstampede with `PrometheusHook` on a registry of its own (single-process mode)."""

    name = "asyncstampede-prometheus"

    async def start(self, url: str, namespace: str) -> None:
        from prometheus_client import CollectorRegistry

        from asyncstampede.prometheus import PrometheusHook

        hook = PrometheusHook(CollectorRegistry())
        self.hooks = (hook,)
        self.s = Stampede.from_url(url, namespace=namespace, hooks=[hook])
        await self.s.__aenter__()


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s
    for s in (
        Naive,
        SleepPoll,
        Cashews,
        AiocacheRedLock,
        AsyncStampede,
        Embedded,
        AsyncStampedeCluster,
        AsyncStampedeSWR,
        AsyncStampedePlain,
        AsyncStampedeShared,
        CashewsNoLock,
        AsyncStampedePublishedXFetch,
        AsyncStampedeTracking,
        AsyncStampedeTrackingResp3,
        AsyncStampedeKeyspace,
        AsyncStampedeChannel,
        AsyncStampedePoll,
        AsyncStampedeNoopHook,
        AsyncStampedeOtel,
        AsyncStampedeOtelCounts,
        AsyncStampedePrometheus,
    )
}
