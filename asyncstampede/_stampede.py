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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from time import monotonic
from types import TracebackType
from typing import (
    Any,
    Literal,
    ParamSpec,
    Self,
    TypeVar,
    TypeVarTuple,
    Unpack,
    cast,
    final,
    overload,
)

import anyio
import anyio.abc
from redis.asyncio import Redis, RedisCluster

from ._backends.redis.backend import RedisBackend
from ._backends.redis.client import client_from_url, cluster_from_url
from ._backends.redis.cluster import ClusterBackend
from ._batch import checked_keys, get_many, refuse_batch_fn
from ._cached import Cached, KeySpec
from ._codec import Codec, Stored, Validator, codec_for, loaded
from ._compute import compute_with, encode_stored, refuse_fn
from ._doctor import ClusterDiagnosis, Diagnosis, diagnose, diagnose_cluster
from ._envelope import DecodeError, decode
from ._events import Coalesced, Corrupt, Hit, Hook
from ._exceptions import BackendError
from ._flight import Flight, check_reentry, computing
from ._freshness import Freshness, Verdict, judge, refuse_unknown, ttl_ms, xfetch_due
from ._keys import KeyNames, NamesCache, make_names, plain_key
from ._lifecycle import Lifecycle
from ._read import HANDED_OFF, LOOK, await_flight, hand_off, read_interrupted
from ._runtime import MISFIT, Again, Request, Runtime, now_ms
from ._settings import MiB, Settings, StampedeSettings, Wake
from ._stats import Statistics
from ._tags import fingerprint, tag_names, tags_of

__all__ = ["Stampede"]

S = TypeVar("S", bound=Stored)
M = TypeVar("M")
Ts = TypeVarTuple("Ts")
P = ParamSpec("P")


@final
class Stampede:
    """Cache-stampede protection for one Redis (or, without one, one process).

    Use it as an async context manager: entering starts the invalidation reader,
    leaving stops it and every resolution still in flight.

    Args:
        redis: A ``redis.asyncio.Redis`` client created with
            ``decode_responses=False``, a Sentinel-managed primary's
            (``redis.asyncio.sentinel.Sentinel(...).master_for(name)``), or
            a ``redis.asyncio.RedisCluster`` for a Redis Cluster (only its
            nodes and connection settings are used: asyncstampede reads the
            topology and talks to each primary itself, see the operations
            guide). ``None`` selects embedded mode: an in-process store with
            the same API and semantics.
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
            size accepted when decoding (bounds decompression); at least 1024.
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
            while the compute goes on and still fills the cache (shorter
            than ``hard_timeout``, when both are set).
        hard_timeout: Seconds after which the compute is cancelled and
            `ComputeTimeoutError` raised (or a stale value served).
        ttl_jitter: Fraction of the TTL (0 to 1) added at random to each write.
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
            ``asyncstampede.events``: hits, misses, computes and their
            durations, waits, wake-ups, takeovers, stale values served,
            timeouts, Redis failures, the breaker and the wake transport
            changing), in the task where it happened; one that raises is
            logged and ignored. Without hooks no record is made.
        tags: Tags every value of this instance carries (see
            `get_or_compute`'s ``tags``): ``tags=["app"]`` lets
            ``invalidate_tags(["app"])`` empty the whole namespace in O(1),
            at the cost of one ``MGET`` instead of a ``GET`` per read.

    Raises:
        TypeError: *redis* is not a ``redis.asyncio.Redis`` client (a URL, a
            synchronous client, a cluster client, a ``Sentinel`` itself or a
            client of its replicas...), or *fail_open* or
            *check* or *share_values* is not a bool.
        ValueError: a setting is out of range, or the client decodes responses.

    Redis failures never reach readers (`get_or_compute`, `get`,
    `get_many_or_compute`) while ``fail_open`` is on; writes (`set`,
    `invalidate`, `invalidate_many`, `invalidate_tags`) raise them, since a
    lost one would leave an old value served. Each is
    counted in `statistics` (``backend_errors``; refusals also in
    ``refused``) and logged on the ``asyncstampede`` logger with the server's
    address and its own words, each kind at most every 10 seconds (refusals
    at ERROR, unavailability at WARNING). A Redis that stops answering costs
    a call at most ``redis_budget``; the circuit breaker then keeps later
    calls from waiting on it (see ``docs/how-it-works.md``, "Outages").

    """

    def __init__(
        self,
        redis: Redis | RedisCluster | None = None,
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
        tags: Sequence[str] = (),
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
            tags=tags,
        )
        self._rt = Runtime.over(redis, settings, hooks)
        self._settings = settings
        self._namespace = settings.namespace
        self._lifecycle = Lifecycle(self._rt)
        self._names = NamesCache(settings.namespace)
        self._tags = settings.tags

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = 64,
        socket_timeout: float = 5.0,
        cluster: bool = False,
        **settings: Unpack[StampedeSettings],
    ) -> Stampede:
        """Create a `Stampede` with its own client for the Redis at *url*.

        The client's pool (of up to *max_connections*) is where commands go
        while the instance's own connections are down; a burst waits for a
        free connection instead of failing, and a failed command is retried.
        The client is closed with the instance.

        A Sentinel-managed primary is named by its sentinels and service:
        ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``
        (``rediss+sentinel://`` for TLS, to the sentinels and the servers
        alike). The user and password are the servers' (the primary's and
        its replicas'); a port left out is 26379. Query parameters:
        ``sentinel_username`` and ``sentinel_password`` (the sentinels' own
        login, where they have one) and, with ``rediss+sentinel://``,
        ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
        ``ssl_cert_reqs`` (``none``, ``optional``, ``required``). Percent-encode
        a ``@``, ``:``, ``/``, ``,``, ``?`` or ``#`` in a name or password.
        The client is ``Sentinel(...).master_for(service_name)`` with the
        pool limit, timeouts and retries above; the instance follows the
        primary through failovers (see the operations guide, "Redis Sentinel").

        Example:
            ```python
            Stampede.from_url("redis://10.0.0.5:6379/0", namespace="app")
            Stampede.from_url(
                "redis+sentinel://:secret@10.0.0.7:26379,10.0.0.8:26379/mymaster/0",
                namespace="app",
            )
            ```

        Args:
            url: A ``redis://``, ``rediss://`` or ``unix://`` URL, or a
                ``redis+sentinel://`` or ``rediss+sentinel://`` one; with
                *cluster*, the URL of any node of the cluster.
            max_connections: Size of the connection pool (per primary, on a
                Redis Cluster).
            socket_timeout: Seconds before a Redis command is deemed failed.
            cluster: The server at *url* is a node of a Redis Cluster: the
                instance reads the cluster's topology from it and sends each
                key's work to the primary serving the key's slot.
            **settings: Any keyword argument of `Stampede`.

        Raises:
            TypeError: *url* is not a str, *max_connections* is not an int, a
                setting has the wrong type, or is not a setting of `Stampede`.
            InvalidURLError: *url* is malformed (an unknown scheme such as
                ``http://``, a port that is not a number; a ``redis+sentinel://``
                URL without a service name...), or *cluster* is given a URL a
                cluster cannot take (a database other than 0, a socket path);
                the message shows the form, and never the password.
            ValueError: *max_connections* is below 1, *socket_timeout* is not a
                positive number, a setting is out of range, or *cluster* is
                given a ``redis+sentinel://`` URL.

        """
        unknown = sorted(settings.keys() - StampedeSettings.__optional_keys__)
        if unknown:
            raise TypeError(f"Stampede.from_url() got unexpected keyword arguments: {unknown}")
        if not isinstance(cluster, bool):
            raise TypeError(f"cluster must be True or False, not {type(cluster).__name__}")
        make = cluster_from_url if cluster else client_from_url
        client = make(url, max_connections=max_connections, socket_timeout=socket_timeout)
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
        connections that watch locks. For a Sentinel-managed primary, first
        that the sentinels monitor the service, name a primary that is up,
        and let their announcements be heard. Embedded mode has nothing to
        check.

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

    async def diagnose(
        self, *, interval: float = 3.0, sample: int = 1000
    ) -> Diagnosis | ClusterDiagnosis:
        """Judge this instance's Redis, as ``asyncstampede doctor`` does (it only reads).

        Over a Redis Cluster, every primary is judged (each with its own key
        sample and wake probe, all at once) and the cluster as a whole, as
        ``asyncstampede doctor --cluster`` does; the topology is read afresh
        from the first primary the instance serves that answers.

        Args:
            interval: Seconds over which ``INFO`` is read three times (the
                rates' window: 0 for none, else 0.1 to 3600); the call takes
                at least that long.
            sample: Keys of this instance's namespace to look at (0: none).

        Returns:
            The figures and the verdicts, worst first (see `Diagnosis`); over
            a Redis Cluster, a `ClusterDiagnosis` (each primary's, and the
            cluster's verdicts). Both have ``severity``, ``exit_status``,
            ``verdicts`` and ``as_dict()``.

        Raises:
            RuntimeError: the instance is embedded (it has no Redis to judge).
            ClosedError: the instance is not entered or is closed.
            BackendError: Redis cannot be reached, or refuses ``INFO`` (over
                a cluster: no primary answered for the topology; a primary
                that cannot be read is a verdict in the record).
            TypeError: *interval* is not a number.
            ValueError: *interval* is out of range, or *sample* is negative.

        """
        self._lifecycle.task_group()
        if not self._rt.over_redis:
            raise RuntimeError(
                "diagnose() judges a Redis: this Stampede is embedded (made without a client)"
            )
        backend = self._rt.backend
        if isinstance(backend, ClusterBackend):
            return await diagnose_cluster(
                [node.client for node in backend.nodes()],
                interval=interval,
                sample=sample,
                namespace=self._namespace,
            )
        client = cast("RedisBackend", backend).client
        return await diagnose(client, interval=interval, sample=sample, namespace=self._namespace)

    @overload
    def cached(
        self,
        ttl: float | timedelta,
        *,
        key: KeySpec = None,
        model: None = None,
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> Callable[[Callable[P, Awaitable[S]]], Cached[P, S]]: ...

    @overload
    def cached(
        self,
        ttl: float | timedelta,
        *,
        key: KeySpec = None,
        model: type[M] | Codec[M] | Validator[M],
        **overrides: Unpack[Freshness],
    ) -> Callable[[Callable[P, Awaitable[M]]], Cached[P, M]]: ...

    def cached(
        self,
        ttl: float | timedelta,
        *,
        key: KeySpec = None,
        model: object = None,
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> Callable[[Callable[P, Awaitable[Any]]], Cached[P, Any]]:
        """Decorate an async function so each call goes through `get_or_compute`.

        ::

            @cache.cached(ttl=300, key="user:{user_id}", model=User)
            async def load_user(user_id: int) -> User: ...

            user = await load_user(42)           # cached under "user:42"
            await load_user.invalidate(42)       # after an update

        The wrapped function keeps its signature for type checkers, and
        works on methods (``self`` is bound, and left out of default keys).

        Args:
            ttl: Seconds (or a ``timedelta``) each value stays fresh.
            key: How a call's key is made: a template formatted with the
                call's arguments (bound to the function's parameters,
                defaults applied; ``"{user.id}"`` reaches an attribute), a
                callable given the call's arguments and returning a str, or
                None: the function's qualified name and its arguments as JSON
                (``module.load_user:{"user_id":42}``). The instance's
                namespace prefixes it, as for every key.
            model: The type values come back as (see `get_or_compute`).
            tags: Templates of each call's tags, formatted as the key's
                (``["team:{team_id}"]``; see `get_or_compute`).
            **overrides: Freshness settings for every call (see `Freshness`).

        Returns:
            A decorator giving a `Cached` function (``__call__``, ``invalidate``,
            ``key`` and ``tags``, each taking the function's arguments).

        Raises:
            TypeError: the decorated object is not an async function; *key*
                is not a str, a callable or None; a template names no
                parameter of the function; a keyword is not a freshness
                setting; *model* is not a type pydantic validates nor a
                `Codec`. At a call: arguments the default key cannot hold as
                JSON (pass *key*), or whatever calling the function with them
                would raise.
            ValueError: *ttl* is not a positive duration.

        """

        def decorate(fn: Callable[P, Awaitable[Any]]) -> Cached[P, Any]:
            return Cached.make(self, fn, ttl, key, model, overrides, tags)

        ttl_ms(ttl)  # (refused at once, before any function is decorated)
        refuse_unknown(overrides, "cached")
        return decorate

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

    async def invalidate_tags(self, tags: Iterable[str]) -> None:
        """Invalidate every value carrying one of *tags*, in every process, in O(1).

        Each tag gets a new generation (one ``SET`` per tag, whatever the
        number of values); a value stamped with an older one is no longer
        served: the next caller computes it anew, once for the fleet. As
        with `invalidate`, once this returns no caller of this process gets
        a value computed before (resolutions in flight with one of the tags
        are detached). The old values stay in Redis until their TTL.
        To empty a whole namespace, give the instance a tag of its own
        (``Stampede(namespace="app", tags=["app"])``) and invalidate it.

        Raises:
            TypeError: *tags* is a single ``str`` (pass a list), or holds a non-``str``.
            ValueError: a tag is empty.
            BackendError: Redis failed (in-process resolutions are detached all the same).
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop.

        """
        wanted = tags_of(tags, "invalidate_tags()")
        self._lifecycle.task_group()
        rt = self._rt
        try:
            work = rt.backend.generations(tag_names(self._namespace, wanted), renew=True)
            await rt.redis(None, work, "SET")
        finally:
            gone = set(wanted)
            for key, flight in list(rt.flights.items()):
                if gone.intersection(flight.tags):
                    rt.detach(key)

    def _tags_of(self, tags: Iterable[str]) -> tuple[str, ...]:
        """Return a call's *tags* with the instance's, sorted (see `_tags`)."""
        return tags_of((*self._settings.tags, *tags_of(tags, "tags")), "tags")

    async def _read_tagged(self, names: KeyNames, tags: tuple[str, ...]) -> tuple[Any, int]:
        """Read *names*' value and its *tags*' generations; return it and their fingerprint.

        A generation missing (never made, or evicted) validates nothing: it
        is made now (``SET NX``), so what is stored from here is stamped.
        """
        backend = self._rt.backend
        keys = tag_names(self._namespace, tags)
        payload, generations = await backend.read_tagged(names, keys)
        if any(g is None for g in generations):
            made = await backend.generations(keys, renew=False)
            return None, fingerprint(tags, made)
        return payload, fingerprint(tags, cast("list[bytes]", generations))

    async def invalidate_many(self, keys: Iterable[str]) -> None:
        """Delete several keys' values at once (see `invalidate`), in one round of commands.

        Raises:
            TypeError: *keys* is a single ``str`` (pass a list), or holds a non-``str``.
            BackendError: Redis failed for one of them (every in-process
                resolution is detached all the same; the others were deleted).
            ReentrantCallError: called from inside the compute of one of them.
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop.

        """
        plain = _key_list(keys, "invalidate_many")
        self._lifecycle.task_group()
        rt = self._rt
        names = [make_names(self._namespace, key) for key in plain]
        if computing.get():
            for key, of in zip(plain, names, strict=True):
                check_reentry(rt.flights, rt.store, key, of.lock, "invalidating")
        failures: list[BackendError] = []

        async def one(of: KeyNames) -> None:
            try:
                await rt.redis(None, rt.backend.invalidate(of), "INVALIDATE")
            except BackendError as exc:
                failures.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for of in names:
                    tg.start_soon(one, of)
        finally:
            for key in plain:
                rt.detach(key)
        if failures:
            raise failures[0]

    @overload
    async def get(self, key: str, *, model: None = None, tags: Iterable[str] = ()) -> Stored: ...

    @overload
    async def get(
        self, key: str, *, model: type[M] | Codec[M] | Validator[M], tags: Iterable[str] = ()
    ) -> M | None: ...

    async def get(self, key: str, *, model: object = None, tags: Iterable[str] = ()) -> Any:
        """Return *key*'s value if one may be served now, else None; never computes.

        A value is served when it is fresh or within ``stale_while_revalidate``
        (no refresh is started); a cached failure, a value past that, a
        corrupt one or one *model* rejects give None. One read, no lock.

        Args:
            key: The cache key.
            model: The type the value comes back as (see `get_or_compute`).
            tags: Its tags (see `get_or_compute`): a value stamped before one
                was invalidated gives None.

        Raises:
            TypeError: *key* is not a ``str``, or *model* is not a type
                pydantic validates nor a `Codec`, or *tags* is a ``str``.
            BackendError: Redis failed and ``fail_open`` is off (with it on,
                the failure is counted and logged, and the answer is None).
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop.

        """
        key = plain_key(key)
        names = self._names[key]
        codec = codec_for(model)
        tagged = self._tags_of(tags) if tags else self._tags
        self._lifecycle.task_group()
        rt = self._rt
        stamp = 0
        try:
            if tagged:
                payload, stamp = await rt.redis(None, self._read_tagged(names, tagged), "MGET")
            else:
                payload = await rt.redis(None, rt.backend.read(names), "GET")
        except BackendError as exc:
            if not self._settings.fail_open:
                raise
            rt.failed(exc, "reading {key}", key)
            return None
        envelope = None if payload is None else rt.decode(payload)
        if envelope is not None and envelope.tags != stamp:
            rt.untagged(envelope, stamp)
            return None
        if envelope is None or envelope.failed:
            return None
        if not judge(envelope, now_ms(), self._settings.policy).servable:
            return None
        if codec is None:
            return envelope.value
        typed = rt.load(envelope.value, codec, key)
        return None if typed is MISFIT else typed

    @overload
    async def set(
        self,
        key: str,
        value: Stored,
        ttl: float | timedelta,
        *,
        model: None = None,
        tags: Iterable[str] = (),
    ) -> None: ...

    @overload
    async def set(
        self,
        key: str,
        value: M,
        ttl: float | timedelta,
        *,
        model: type[M] | Codec[M] | Validator[M],
        tags: Iterable[str] = (),
    ) -> None: ...

    async def set(
        self,
        key: str,
        value: object,
        ttl: float | timedelta,
        *,
        model: object = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Store *value* under *key* now (write-through, after an update); wake its waiters.

        The value replaces whatever is stored, and a compute of *key* running
        anywhere (started from data older than this) cannot store its result
        over it: its lock is taken from it. Waiters of *key* in every process
        are woken and get *value*; callers in this process stop joining a
        resolution in flight. Stored as a compute's value would be
        (``ttl_jitter`` and the stale windows of the instance apply).

        Args:
            key: The cache key.
            value: What to store (see `get_or_compute` for what can be).
            ttl: Seconds (or a ``timedelta``) the value stays fresh.
            model: Store *value* in this type's JSON form (see `get_or_compute`).
            tags: Its tags (see `get_or_compute`).

        Raises:
            TypeError: *key* is not a ``str``, or *model* is not usable.
            ValueError: *ttl* is not a positive duration.
            SerializationError: *value* cannot be stored (the message says how to).
            ValueTooLargeError: the serialized value is over ``max_value_bytes``.
            BackendError: Redis failed (nothing is stored; with a failure
                the write-through would silently leave an older value).
            ReentrantCallError: called from inside the compute of *key*.
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop.

        """
        key = plain_key(key)
        names = self._names[key]
        ms = ttl_ms(ttl)
        codec = codec_for(model)
        if codec is not None and value is not None:
            value = codec.dump(value)
        tagged = self._tags_of(tags) if tags else self._tags
        rt = self._rt
        # (Refused before any Redis work; a tagged value is stamped below.)
        payload, px_ms = encode_stored(rt, value, ms, rt.settings.policy)
        self._lifecycle.task_group()
        if computing.get():
            check_reentry(rt.flights, rt.store, key, names.lock, "setting")
        try:
            if tagged:
                work = rt.backend.generations(tag_names(self._namespace, tagged), renew=False)
                stamp = fingerprint(tagged, await rt.redis(None, work, "SET"))
                payload, px_ms = encode_stored(rt, value, ms, rt.settings.policy, tags=stamp)
            await rt.redis(None, rt.backend.put(names, payload, px_ms), "SET")
        finally:
            rt.detach(key)

    @overload
    async def get_or_compute(
        self,
        key: str,
        fn: Callable[[*Ts], Awaitable[S]],
        ttl: float | timedelta,
        *args: *Ts,
        model: None = None,
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> S: ...

    @overload
    async def get_or_compute(
        self,
        key: str,
        fn: Callable[[*Ts], Awaitable[M]],
        ttl: float | timedelta,
        *args: *Ts,
        model: type[M] | Codec[M] | Validator[M],
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> M: ...

    async def get_or_compute(
        self,
        key: str,
        fn: Callable[[*Ts], Awaitable[Any]],
        ttl: float | timedelta,
        *args: *Ts,
        model: object = None,
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> Any:
        """Return the cached value of *key*, computing it with ``fn(*args)`` at most once.

        Concurrent callers of one key share one resolution in this process and,
        through the Redis lock, across every process using the same Redis and
        namespace. The value is fresh for *ttl*; the freshness settings
        (``beta``, ``stale_while_revalidate``, ``stale_if_error``,
        ``soft_timeout``, ``hard_timeout``, ``ttl_jitter``, ``negative_ttl``:
        see `Stampede`, and `Freshness`) override the instance's for this
        call: left out, the instance's setting applies; ``None`` turns
        ``soft_timeout``, ``hard_timeout`` or ``negative_ttl`` off for the
        call, ``0`` turns ``beta`` or a stale window off.

        Without *model*, the value comes back as stored: ``bytes`` raw,
        anything else as its JSON (a tuple comes back as a list, on every
        call, the first included); a value that would not come back as
        itself (a dataclass, a pydantic model, a ``datetime``) is refused
        with `SerializationError`. With ``model=User`` (any type pydantic
        validates: a ``BaseModel``, a dataclass, a ``TypedDict``,
        ``list[User]``; the ``pydantic`` extra), or a `Codec`, the compute's
        value is stored in its JSON form and every caller gets a ``User``
        back; a stored value that no longer fits (the type changed) is
        computed anew, like a corrupt one. Every caller of one key should
        name the same model. The result is the caller's own: changing it
        changes nothing stored and nothing another caller got (unless the
        instance was made with ``share_values=True``). See the call's
        contract in ``docs/how-it-works.md``.

        Args:
            key: The cache key.
            fn: An async callable returning the value; called as ``fn(*args)``
                (for keyword arguments, pass ``functools.partial(fn, k=v)``).
            ttl: Seconds (or a ``timedelta``) the value stays fresh.
            *args: Positional arguments for *fn*.
            model: The type the value comes back as (or a `Codec`); None:
                as stored.
            tags: Tags of the value besides the instance's (``["team:7"]``):
                `invalidate_tags` with one of them invalidates it, in O(1).
                A tagged read is one ``MGET`` (the value and the tags'
                generations) instead of a ``GET``.
            **overrides: Freshness settings for this call (see `Freshness`).

        Raises:
            TypeError: *key* is not a ``str``, *fn* is not callable, a keyword
                is not a freshness setting, or *model* is not a type pydantic
                validates nor a `Codec`.
            ImportError: *model* is a type and pydantic is not installed.
            ValueError: a duration is not a positive number, or *key* is empty.
            SerializationError: the computed value cannot be stored (the
                message says how to).
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
        if overrides:  # (none: the instance's policy as it is)
            policy = policy.override(**refuse_unknown(overrides, "get_or_compute"))
        codec = None if model is None else codec_for(model)
        tagged = self._tags_of(tags) if tags else self._tags
        compute: Callable[[], Awaitable[Any]] = fn
        if args or codec is not None:
            compute = compute_with(fn, args, codec)
        self._lifecycle.task_group()  # (refuses a closed instance, another loop)
        asking = (
            check_reentry(rt.flights, rt.store, key, names.lock, "asking for")
            if computing.get()
            else None
        )
        flight = rt.flights.get(key)
        if flight is not None:
            rt.counters.coalesced += 1
            if rt.hooked:
                rt.hooks.emit(Coalesced(rt.namespace, key))
            value = await await_flight(flight, asking, started=False)
            return value if codec is None else loaded(codec, value)
        flight = rt.flights[key] = Flight(self._settings.share_values)
        # The first read, in the caller's own task and frame (see _read).
        envelope = None
        first: BackendError | Again
        stamp = 0  # the fingerprint of its tags' generations (0: no tags)
        started = monotonic()  # the call's budget for Redis starts with its first read
        try:
            if tagged:
                flight.tags = tagged
                payload, stamp = await self._read_tagged(names, tagged)
            else:
                payload = await rt.backend.read(names)
        except BackendError as exc:
            payload, first = b"", exc
        except BaseException as exc:
            left = self._settings.redis_budget - (monotonic() - started)
            read_interrupted(rt, key, names, flight, compute, ttl, policy, exc, left, codec, stamp)
            raise
        else:
            if payload is not None:
                try:
                    envelope = decode(payload, max_value_bytes=self._settings.max_value_bytes)
                except DecodeError as exc:
                    rt.undecodable(exc, key)
                    if rt.hooked:
                        rt.hooks.emit(Corrupt(rt.namespace, key, "undecodable"))
                else:
                    if envelope.tags != stamp:  # a tag was invalidated since (or unnamed)
                        rt.untagged(envelope, stamp)
                        envelope = None
                if envelope is not None:  # the common case, kept lean: fresh, XFetch not due
                    now = now_ms()
                    if judge(envelope, now, policy) is Verdict.FRESH and not xfetch_due(
                        now, envelope, policy.beta, 1.0 - random.random()
                    ):
                        if codec is None:
                            rt.counters.hits += 1
                            if rt.hooked:
                                rt.hooks.emit(Hit(rt.namespace, key, monotonic() - started))
                            rt.finish(key, flight, value=envelope.value)
                            return envelope.value
                        typed = rt.load(envelope.value, codec, key)
                        if typed is not MISFIT:
                            rt.counters.hits += 1
                            if rt.hooked:
                                rt.hooks.emit(Hit(rt.namespace, key, monotonic() - started))
                            rt.finish(key, flight, value=envelope.value)
                            return typed
                        envelope = None
                    elif codec is not None and not rt.fits(envelope, codec, key):
                        envelope = None
                first = Again(read=False, seen=payload)  # not to be served as it is
            else:
                payload, first = b"", LOOK
        if rt.hooked:
            rt.timed("MGET" if tagged else "GET", started, first)
        left = self._settings.redis_budget - (monotonic() - started)
        try:
            handed = hand_off(
                rt,
                Request(key, names, flight, compute, ttl, policy, left, codec, stamp),
                first,
                envelope,
                payload,
            )
        except BaseException as exc:  # a cached failure; or the instance closed meanwhile
            rt.finish(key, flight, error=exc)
            raise
        if handed is HANDED_OFF:
            handed = await await_flight(flight, asking, started=True)
        return handed if codec is None else loaded(codec, handed)

    @overload
    async def get_many_or_compute(
        self,
        keys: Iterable[str],
        batch_fn: Callable[[list[str]], Awaitable[Mapping[str, S]]],
        ttl: float | timedelta,
        *,
        model: None = None,
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> dict[str, S]: ...

    @overload
    async def get_many_or_compute(
        self,
        keys: Iterable[str],
        batch_fn: Callable[[list[str]], Awaitable[Mapping[str, M]]],
        ttl: float | timedelta,
        *,
        model: type[M] | Codec[M] | Validator[M],
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> dict[str, M]: ...

    async def get_many_or_compute(
        self,
        keys: Iterable[str],
        batch_fn: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
        ttl: float | timedelta,
        *,
        model: object = None,
        tags: Iterable[str] = (),
        **overrides: Unpack[Freshness],
    ) -> dict[str, Any]:
        """Return the cached values of *keys*, computing the missing ones with one *batch_fn* call.

        The batch form of `get_or_compute`, with its guarantees for every
        key: one ``MGET`` reads them all, and each value found gets the
        same freshness verdict (stale-while-revalidate, XFetch's early
        refresh...). Each missing key's lock is asked for (the ``SET``s
        leave together, one round trip); *batch_fn* is then called once
        with the keys whose locks this call got, and each value is committed
        as `get_or_compute` commits it, waking every waiter. A key that
        another process is computing is waited for, not computed again; a
        key already in flight in this process (a `get_or_compute` of it, or
        another batch) is joined. Keys that come to compute later (after
        waiting for a holder that failed and let them go, or died, after
        ``wait_timeout`` with ``on_wait_timeout="compute"``, a background
        refresh) are computed by further calls of *batch_fn*, one for the
        keys that become this call's together (say the 10 keys of another
        process whose *batch_fn* failed).

        Each key fails as its own `get_or_compute` would: a key *batch_fn*
        leaves out of its mapping fails with `MissingFromBatchError`, and
        when *batch_fn* raises, every key it was asked for fails with (a
        copy of) that exception; a stale value is served where
        ``stale_if_error`` allows, and ``negative_ttl`` remembers the
        failure. Once every key has its outcome, the call raises the error
        of the first failed key in the order of *keys* (a note says how
        many failed); the values of the other keys are cached all the same.
        Keys the mapping has beyond those asked for are ignored.

        Args:
            keys: The cache keys (any iterable of ``str``; a key given twice
                is read and computed once, and appears once in the result).
            batch_fn: An async callable taking a ``list`` of keys (a subset
                of *keys*, never empty) and returning a mapping of each of
                them to its value.
            ttl: Seconds (or a ``timedelta``) the values stay fresh.
            model: The type each value comes back as (see `get_or_compute`).
            tags: Tags of every value (see `get_or_compute`); their
                generations are read in the same ``MGET``.
            **overrides: Freshness settings for this call (see `Freshness`;
                ``hard_timeout`` bounds each *batch_fn* call).

        Returns:
            Every key of *keys* (once each, in their first order) mapped to
            its value, as stored (through the codec, as `get_or_compute`).

        Raises:
            TypeError: *keys* is a single ``str`` or holds a non-``str``,
                *batch_fn* is not callable, or it returned something other
                than an awaitable of a mapping (then raised for its keys).
            ValueError: *keys* is empty or holds an empty key, or a duration
                is not a positive number.
            MissingFromBatchError: *batch_fn*'s mapping had no value for a key.
            SerializationError: a computed value cannot be serialized.
            ValueTooLargeError: a serialized value is over ``max_value_bytes``.
            ComputeTimeoutError: *hard_timeout* passed and no stale value
                could be served.
            ComputeFailedError: a key's compute failed less than
                *negative_ttl* ago, or *batch_fn* raised ``CancelledError``
                by itself.
            BackendError: Redis failed and ``fail_open`` is off.
            WaitTimeoutError: waiting for a key passed ``wait_timeout`` and
                ``on_wait_timeout="raise"``.
            ReentrantCallError: called from inside the compute of one of
                *keys* (*batch_fn* asking for a key it computes included).
            ClosedError: the instance is not entered or is closed.
            WrongEventLoopError: called from another event loop than the one
                that entered the instance.
            Exception: whatever *batch_fn* raised, when no stale value could
                be served.

        """
        keys = checked_keys(keys)
        if not callable(batch_fn):
            refuse_batch_fn(batch_fn)
        ttl = ttl_ms(ttl)
        policy = self._settings.policy
        if overrides:
            policy = policy.override(**refuse_unknown(overrides, "get_many_or_compute"))
        codec = None if model is None else codec_for(model)
        tagged = self._tags_of(tags) if tags else self._tags
        self._lifecycle.task_group()  # (refuses a closed instance, another loop)
        return await get_many(self._rt, self._names, keys, batch_fn, ttl, policy, codec, tagged)


def _key_list(keys: Iterable[str], where: str) -> list[str]:
    """Return *keys* as plain strs, refusing a lone str (its characters are not keys)."""
    if isinstance(keys, (str, bytes)):
        raise TypeError(
            f"{where}() takes an iterable of keys, not one {type(keys).__name__}: pass [{keys!r}]"
        )
    return [plain_key(key) for key in keys]
