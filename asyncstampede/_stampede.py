"""`Stampede`: the public face of the request path.

``get_or_compute`` reads the value in the caller's own task and frame (a
hit costs one round trip, no task switch); what follows, module by module:

1. ``_flight``: one resolution per key per process; every local caller
   awaits it, and no caller's cancellation cancels it.
2. ``_freshness``: one verdict on every value read (fresh, stale, fallback,
   expired), and XFetch's early refresh.
3. ``_read``: a value the verdict allows is served; the rest goes to
4. ``_resolve``: a miss takes the lock or names its holder, then leads or
   waits; background refreshes go through it too.
5. ``_lead`` (and ``_compute``): the lock holder computes under its
   timeouts, its lock kept alive by ``_lock_keeper``, and commits with one
   script that wakes every waiter; or serves its stale value (fail-safe).
6. ``_wait``: everyone else has registered interest in the lock first; one
   tracked ``PTTL`` says how long it has left and has Redis tell them when
   it changes. Nothing polls.
7. ``_backends``: the stores (embedded, Redis), behind one protocol.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from time import monotonic
from types import TracebackType
from typing import Literal, Self, TypeVar, Unpack, cast, final

import anyio.abc
from redis.asyncio import Redis

from ._backends.redis.backend import RedisBackend
from ._backends.redis.client import client_from_url
from ._compute import refuse_fn
from ._doctor import Diagnosis, diagnose
from ._envelope import DecodeError, decode
from ._events import Hook
from ._exceptions import BackendError
from ._flight import Flight, check_reentry, computing
from ._freshness import UNSET, Unset, Verdict, judge, ttl_ms, xfetch_due
from ._keys import NamesCache, make_names, plain_key
from ._lifecycle import Lifecycle
from ._read import HANDED_OFF, LOOK, await_flight, hand_off, read_interrupted
from ._runtime import Again, Request, Runtime, now_ms
from ._settings import MiB, Settings, StampedeSettings, Wake
from ._stats import Statistics

__all__ = ["Stampede"]

T = TypeVar("T")


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
        wake: How waiters in other processes learn that a lock changed
            (the wake transport). ``"auto"`` (the default) tries, in this
            order, and uses the first the server allows: ``"tracking"``
            (client tracking, ``REDIRECT`` to a RESP2 connection),
            ``"tracking-resp3"`` (client tracking in-band on a RESP3
            connection), ``"keyspace"`` (keyspace notifications, where the
            server's ``notify-keyspace-events`` already has ``K``, ``g`` and
            ``$``; never set by asyncstampede) and ``"channel"`` (the
            holder's scripts publish on the key's own channel); where none
            is allowed, waiters poll (a few looks per wait, paced by the
            lock's TTL; see ``statistics().polls``). Where one is refused at
            run time, the next is used; after a reconnect the order is tried
            again. Naming one forces it (refused: waiters poll, and it is
            logged at ERROR); ``"poll"`` always polls, for proxies with no
            pub/sub and no ``CLIENT``. ``statistics().wake`` names the one in
            use; ``docs/operations.md`` lists what each needs. Redis only.
        redis_budget: Seconds all the Redis work of one call may take
            together (its reads, the lock, looks after a wake-up, the
            commit; not the compute, not the wait for another holder's
            value). Past it the call fails open (computes, coalesced per
            process; serves a stale value where ``stale_if_error``
            allows) or raises `BackendUnavailableError` (``fail_open=False``),
            and the circuit breaker opens: calls skip Redis at once
            (`CircuitOpenError`) until a probe (0.5 s at most after the
            last one ended) finds it answering within the budget. Keep it above the
            time your largest value takes to arrive. Redis only.
        hooks: Callables each given every event record (see
            ``asyncstampede.events``; today `BreakerChange`), in the task
            where it happened; one that raises is logged and ignored.

    Raises:
        TypeError: *redis* is not a ``redis.asyncio.Redis`` client (a URL, a
            synchronous client, a cluster client...), or *fail_open* or
            *check* or *share_values* is not a bool.
        ValueError: a setting is out of range, or the client decodes responses.

    Redis failures never reach callers while ``fail_open`` is on: each is
    counted in `statistics` (``backend_errors``; refusals also in
    ``refused``) and logged on the ``asyncstampede`` logger with the server's
    address and its own words, each kind at most every 10 seconds (refusals
    at ERROR, unavailability at WARNING). A Redis that stops answering costs
    a call at most ``redis_budget``; the circuit breaker then keeps later
    calls from waiting on it (see ``docs/how-it-works.md``, "Outages").

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
        max_value_bytes: int = 64 * MiB,
        max_entries: int = 10_000,
        check: bool = False,
        share_values: bool = False,
        wake: Wake = "auto",
        redis_budget: float = 0.5,
        hooks: Sequence[Hook] = (),
    ) -> None:
        settings = Settings.build(
            namespace=namespace,
            lock_ttl=lock_ttl,
            wait_timeout=wait_timeout,
            fail_open=fail_open,
            on_wait_timeout=on_wait_timeout,
            beta=beta,
            stale_while_revalidate=stale_while_revalidate,
            stale_if_error=stale_if_error,
            fail_safe_throttle=fail_safe_throttle,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
            ttl_jitter=ttl_jitter,
            negative_ttl=negative_ttl,
            compress_threshold=compress_threshold,
            max_value_bytes=max_value_bytes,
            max_entries=max_entries,
            check=check,
            share_values=share_values,
            wake=wake,
            redis_budget=redis_budget,
        )
        self._rt = Runtime.over(redis, settings, hooks)
        self._settings = settings
        self._namespace = settings.namespace
        self._lifecycle = Lifecycle(self._rt)
        self._names = NamesCache(settings.namespace)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = 64,
        socket_timeout: float = 5.0,
        **settings: Unpack[StampedeSettings],
    ) -> Stampede:
        """Create a `Stampede` with its own client for the Redis at *url*.

        The client's pool (of up to *max_connections*) is where commands go
        while the instance's own connections are down; a burst waits for a
        free connection instead of failing, and a failed command is retried.
        The client is closed with the instance.

        Args:
            url: A ``redis://``, ``rediss://`` or ``unix://`` URL.
            max_connections: Size of the connection pool.
            socket_timeout: Seconds before a Redis command is deemed failed.
            **settings: Any keyword argument of `Stampede`.

        Raises:
            TypeError: *url* is not a str, *max_connections* is not an int, a
                setting has the wrong type, or is not a setting of `Stampede`.
            ValueError: *max_connections* is below 1, *socket_timeout* is not a
                positive number, or a setting is out of range.

        """
        unknown = sorted(settings.keys() - StampedeSettings.__optional_keys__)
        if unknown:
            raise TypeError(f"Stampede.from_url() got unexpected keyword arguments: {unknown}")
        client = client_from_url(
            url, max_connections=max_connections, socket_timeout=socket_timeout
        )
        stampede = cls(client, **settings)
        stampede._rt.own_client()
        return stampede

    @property
    def namespace(self) -> str:
        """The prefix of every key this instance touches."""
        return self._namespace

    async def __aenter__(self) -> Self:
        await self._lifecycle.enter(needs_asyncio=self._rt.over_redis)
        await self._checked_at_start()
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
        self._lifecycle.task_group()
        await self._rt.backend.check(make_names(self._namespace, "asyncstampede:check"))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the instance: every resolution in flight ends, its callers get `ClosedError`.

        Any task of the event loop that entered (or started) the instance
        may close it, not only that one. It returns once everything the
        instance ran has ended and its connections are released; a second
        call (or one racing the first) waits for the same end, and one on a
        closed instance returns at once.

        Raises:
            ReentrantCallError: called from inside one of this instance's
                computes (it would cancel itself half-way); nothing is changed.
            WrongEventLoopError: called from another event loop than the one
                that entered the instance; nothing is changed.
            Exception: whatever made the instance's background work fail,
                if it did (a bug: it is also logged); raised by one call only.

        """
        await self._lifecycle.close()

    async def start(self, task_group: anyio.abc.TaskGroup) -> Self:
        """Run the instance in a task of *task_group*, a task group the caller owns (anyio).

        The alternative to ``async with``: its background work (connections,
        lock extensions, every resolution) runs in one task of
        *task_group*, so it ends with that group. Cancelling the group's
        scope closes the instance as `aclose` does; or call `aclose` from any
        task of the loop, and the group's other tasks run on. Works under
        trio too, in embedded mode.

        Example:
            ```python
            async with anyio.create_task_group() as tg:
                cache = await Stampede.from_url(url).start(tg)
                tg.start_soon(serve_requests, cache)
                ...
                await cache.aclose()  # or tg.cancel_scope.cancel()
            ```

        Args:
            task_group: An entered ``anyio.abc.TaskGroup`` (from
                ``anyio.create_task_group()``).

        Returns:
            The instance itself, running.

        Raises:
            TypeError: *task_group* is not an anyio task group (an
                ``asyncio.TaskGroup``, a trio nursery: use ``async with``).
            ClosedError: the instance was entered or started before.
            RuntimeError: a Redis-backed instance under trio (Redis needs
                asyncio).
            BackendError: ``check=True`` and `check` found a problem (the
                instance is closed again).

        """
        await self._lifecycle.start(task_group, needs_asyncio=self._rt.over_redis)
        await self._checked_at_start()
        return self

    async def _checked_at_start(self) -> None:
        """Run `check` when the settings ask for it; close the instance if it fails."""
        if self._settings.check:
            try:
                await self.check()
            except BaseException:
                await self.aclose()
                raise

    def statistics(self) -> Statistics:
        """Return a snapshot of this instance's counters and gauges."""
        return self._rt.statistics()

    async def diagnose(self, *, interval: float = 3.0, sample: int = 1000) -> Diagnosis:
        """Judge this instance's Redis, as ``asyncstampede doctor`` does (it only reads).

        Args:
            interval: Seconds between the two ``INFO`` readings (the rates'
                window); the call takes at least that long.
            sample: Keys of this instance's namespace to look at (0: none).

        Returns:
            The figures and the verdicts, worst first (see `Diagnosis`).

        Raises:
            RuntimeError: the instance is embedded (it has no Redis to judge).
            ClosedError: the instance is not entered or is closed.
            BackendError: Redis cannot be reached, or refuses ``INFO``.
            ValueError: *interval* or *sample* is negative.

        """
        self._lifecycle.task_group()
        if not self._rt.over_redis:
            raise RuntimeError(
                "diagnose() judges a Redis: this Stampede is embedded (made without a client)"
            )
        client = cast("RedisBackend", self._rt.backend).client
        return await diagnose(client, interval=interval, sample=sample, namespace=self._namespace)

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
        self._lifecycle.task_group()
        rt = self._rt
        if computing.get():
            check_reentry(rt.flights, rt.store, key, names.lock, "invalidating")
        try:
            await rt.redis(None, rt.backend.invalidate(names), "INVALIDATE")
        finally:
            rt.detach(key)

    async def get_or_compute(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        ttl: float,
        *,
        beta: float | Unset = UNSET,
        stale_while_revalidate: float | Unset = UNSET,
        stale_if_error: float | Unset = UNSET,
        soft_timeout: float | Unset | None = UNSET,
        hard_timeout: float | Unset | None = UNSET,
        ttl_jitter: float | Unset = UNSET,
        negative_ttl: float | Unset | None = UNSET,
    ) -> T:
        """Return the cached value of *key*, computing it with *fn* at most once.

        Concurrent callers of one key share one resolution in this process and,
        through the Redis lock, across every process using the same Redis and
        namespace. The value is fresh for *ttl* seconds; the freshness
        arguments override the instance's settings for this call (see
        `Stampede`): left out, the instance's setting applies; ``None``
        turns ``soft_timeout``, ``hard_timeout`` or ``negative_ttl`` off for
        the call, ``0`` turns ``beta`` or a stale window off.

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
            beta: XFetch strength for this call (``0``: no early refresh).
            stale_while_revalidate: Seconds a stale value is served while one refresh runs.
            stale_if_error: Seconds a stale value is served when the compute fails.
            soft_timeout: Seconds before a stale value is served (``None``: never).
            hard_timeout: Seconds before the compute is cancelled (``None``: never).
            ttl_jitter: Fraction of *ttl* added at random to the write.
            negative_ttl: Seconds to remember ``None`` or a failure (``None``: not).

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
        names = self._names[key]
        if not callable(fn):
            refuse_fn(fn)
        ttl = ttl_ms(ttl)
        rt = self._rt
        policy = self._settings.policy
        if not (  # (every override left out: the instance's policy as it is)
            beta is stale_while_revalidate is stale_if_error is soft_timeout is UNSET
            and hard_timeout is ttl_jitter is negative_ttl is UNSET
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
        self._lifecycle.task_group()  # (refuses a closed instance, another loop)
        asking = (
            check_reentry(rt.flights, rt.store, key, names.lock, "asking for")
            if computing.get()
            else None
        )
        flight = rt.flights.get(key)
        if flight is not None:
            rt.counters.coalesced += 1
            return await await_flight(flight, asking, started=False)  # type: ignore[no-any-return]
        flight = rt.flights[key] = Flight(self._settings.share_values)
        # The first read, in the caller's own task and frame (see _read).
        envelope = None
        first: BackendError | Again
        started = monotonic()  # the call's budget for Redis starts with its first read
        try:
            payload = await rt.backend.read(names)
        except BackendError as exc:
            payload, first = b"", exc
        except BaseException as exc:
            left = self._settings.redis_budget - (monotonic() - started)
            read_interrupted(rt, key, names, flight, fn, ttl, policy, exc, left)
            raise
        else:
            if payload is not None:
                try:
                    envelope = decode(payload, max_value_bytes=self._settings.max_value_bytes)
                except DecodeError:
                    rt.counters.decode_errors += 1
                else:  # the common case, kept lean: fresh, and XFetch not due
                    now = now_ms()
                    if judge(envelope, now, policy) is Verdict.FRESH and not xfetch_due(
                        now, envelope, policy.beta, 1.0 - random.random()
                    ):
                        rt.counters.hits += 1
                        rt.finish(key, flight, value=envelope.value)
                        return envelope.value  # type: ignore[no-any-return]
                first = Again(read=False, seen=payload)  # not to be served as it is
            else:
                payload, first = b"", LOOK
        left = self._settings.redis_budget - (monotonic() - started)
        try:
            handed = hand_off(
                rt, Request(key, names, flight, fn, ttl, policy, left), first, envelope, payload
            )
        except BaseException as exc:  # a cached failure; or the instance closed meanwhile
            rt.finish(key, flight, error=exc)
            raise
        if handed is not HANDED_OFF:
            return handed  # type: ignore[no-any-return]
        return await await_flight(flight, asking, started=True)  # type: ignore[no-any-return]
