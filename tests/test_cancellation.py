"""Cancellation and shutdown leak nothing (issue 13).

A caller cancelled at any step (its first read, its compute, joined to
another caller's flight, waiting for another process's lock), many callers
cancelled at once, and an instance closed with computes, remote waits,
soft-timeout computes and background refreshes in flight: afterwards no
task of the library is left pending, the event loop was told of nothing
(no "Task was destroyed but it is pending!", no exception never
retrieved, no unhandled error), every other caller of the key got a value
or `ClosedError`, locks a closed instance held are gone from Redis (not
left to expire: every lock here lives 30 s), and the gauges are back to 0.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

import anyio
import pytest
import redis
import redis.asyncio
from _conditions import until

from asyncstampede import ClosedError, Stampede
from asyncstampede._backends.redis.mux import Multiplexer
from asyncstampede._backends.redis.scripts import COMMITTED, TAKE_OR_NAME, render
from asyncstampede._envelope import encode
from asyncstampede._keys import make_names
from asyncstampede._settings import Wake
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio

LOCK_TTL = 30.0  # far beyond every test's bound: a lock still there was not released
# Where a test keeps Redis from answering, the call's budget for Redis is as
# far beyond: what is tested is a cancellation or the close, not the budget.
BUDGET = 30.0
How = Literal["task.cancel", "cancel scope"]
HOWS: list[How] = ["task.cancel", "cancel scope"]


# ---------------------------------------------------------------- leak detection


class Leaks:
    """What the event loop was told during a test, and the tasks it ran before.

    Every call of the loop's exception handler is recorded ("Task was
    destroyed but it is pending!", "Future exception was never retrieved",
    an exception no task retrieved), and so is every record of the
    ``asyncio`` logger, where the default handler would have sent them.
    """

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        self.told: list[dict[str, Any]] = []
        self.before = asyncio.all_tasks()

    def library_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks started since the test began, still pending, that this test did not start."""
        return [
            task
            for task in asyncio.all_tasks()
            if task not in self.before and not task.done() and not _ours(task)
        ]

    async def closed(self, *caches: Stampede) -> None:
        """Check what must hold once *caches* are closed: no task of theirs, gauges at 0."""
        assert self.library_tasks() == []
        for cache in caches:
            stats = cache.statistics()
            gauges = (stats.waiting, stats.computing, stats.in_flight, stats.refreshing)
            assert gauges == (0, 0, 0, 0), stats
        self.collect()

    def collect(self) -> None:
        """Collect garbage and check nothing reached the loop's handler or the asyncio logger."""
        for _ in range(3):  # (a collected task may free another)
            gc.collect()
        assert self.told == []
        said = [r.getMessage() for r in self._caplog.records if r.name == "asyncio"]
        assert said == []


def _ours(task: asyncio.Task[Any]) -> bool:
    """Whether the test started *task* (named so by anyio or `spawn`), or pytest's runner did."""
    runner = getattr(task.get_coro(), "__qualname__", "").startswith("TestRunner.")
    return runner or task.get_name().startswith(__name__ + ".")


@pytest.fixture
async def leaks(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Leaks]:
    """Record what the event loop is told while the test runs (see `Leaks`)."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    running = asyncio.get_running_loop()
    watch = Leaks(caplog)
    previous = running.get_exception_handler()
    running.set_exception_handler(lambda _, context: watch.told.append(context))
    try:
        yield watch
        watch.collect()
    finally:
        # A test that failed may have left callers running: end them here,
        # not in the event loop's shutdown.
        left = [t for t in asyncio.all_tasks() if _ours(t) and t.get_name() == SPAWNED]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)
        running.set_exception_handler(previous)


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Start *coro* as a plain asyncio task (for ``task.cancel()``), named as this module's."""
    return asyncio.get_running_loop().create_task(coro, name=SPAWNED)


SPAWNED = f"{__name__}.spawned"


# ---------------------------------------------------------------- helpers


class Gate:
    """A compute that says when it runs and returns *value* once let through."""

    def __init__(self, value: str = "v") -> None:
        self.value = value
        self.calls = 0
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return self.value


class Caller:
    """One call of ``get_or_compute`` whose outcome (value or exception) is kept.

    ``how`` says how it is to be cancelled: as a plain asyncio task
    (``task.cancel()``), or by a cancel scope whose deadline is moved to now
    (what ``anyio.move_on_after`` / ``fail_after`` do when they expire).
    """

    def __init__(self, cache: Stampede, key: str, fn: Callable[[], Awaitable[Any]]) -> None:
        self._call: Callable[[], Awaitable[Any]] = lambda: cache.get_or_compute(key, fn, ttl=60)
        self.outcome: list[object] = []
        self.done = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._task: asyncio.Task[Any] | None = None

    async def _run(self) -> None:
        try:
            with anyio.move_on_after(math.inf) as scope:
                self._scope = scope
                try:
                    self.outcome.append(await self._call())
                except Exception as exc:
                    self.outcome.append(exc)
            if scope.cancelled_caught:
                self.outcome.append("cancelled")
        finally:
            self.done.set()

    def start(self, how: How = "cancel scope") -> Caller:
        if how == "task.cancel":
            self._task = spawn(self._run_as_task())
        else:
            self._task = spawn(self._run())
        return self

    async def _run_as_task(self) -> None:
        try:
            self.outcome.append(await self._call())
        except asyncio.CancelledError:
            self.outcome.append("cancelled")
            raise
        except Exception as exc:
            self.outcome.append(exc)
        finally:
            self.done.set()

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.deadline = anyio.current_time()  # expires now, as move_on_after's would
        else:
            assert self._task is not None
            self._task.cancel()

    async def result(self) -> object:
        """Wait for the call to end; return its value, exception, or "cancelled".

        A caller left waiting fails the test after 10 s (a hang guard: every
        call here ends within milliseconds of what it waits for).
        """
        with anyio.fail_after(10):
            await self.done.wait()
        assert self._task is not None
        await asyncio.wait([self._task])  # ended (a cancelled task is cancelled, not failed)
        assert len(self.outcome) == 1, self.outcome
        return self.outcome[0]


def request_connection(cache: Stampede) -> Multiplexer:
    """The instance's own auto-pipelined connection (to tell whether it is up)."""
    mux: Multiplexer = cache._rt.backend._mux  # type: ignore[attr-defined]
    return mux


def lock_of(sync_redis: redis.Redis, namespace: str, key: str) -> bytes | None:
    """The key's lock as stored in Redis: a holder's token, a commit's marker, or None."""
    value = sync_redis.get(make_names(namespace, key).lock)
    assert value is None or isinstance(value, bytes)
    return value


def assert_no_lock_left(sync_redis: redis.Redis, namespace: str, key: str) -> None:
    """The key's lock is gone, or is a commit's marker: no holder's token is left to expire."""
    assert lock_of(sync_redis, namespace, key) in (None, COMMITTED)


def seed(
    sync_redis: redis.Redis,
    namespace: str,
    key: str,
    value: object,
    *,
    age: float,
    fresh_for: float,
    delta: float = 0.01,
) -> None:
    """Store *value* as computed *age* s ago (taking *delta* s), fresh for *fresh_for* s more."""
    now = int(time.time() * 1000)
    payload = encode(
        value,
        created_ms=now - int(age * 1000),
        delta_ms=int(delta * 1000),
        fresh_until_ms=now + int(fresh_for * 1000),
        compress_threshold=4096,
        max_value_bytes=1 << 20,
    )
    sync_redis.set(make_names(namespace, key).value, payload, px=600_000)


class ReplyHoldingProxy:
    """A loopback proxy in front of Redis; a connection that sends *marker* gets no more replies.

    Its commands still reach the server: what a client sees when the
    answer to a command that took effect is slow to come back.
    """

    def __init__(self, target_port: int, marker: bytes) -> None:
        self._target_port = target_port
        self._marker = marker
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ReplyHoldingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]
        held = [False]  # this connection's replies are withheld from now on
        pumps = (self._commands(reader, up_writer, held), self._replies(up_reader, writer, held))
        for pump in pumps:
            task = asyncio.get_running_loop().create_task(pump, name=f"{__name__}.proxy")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commands(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: list[bool]
    ) -> None:
        while data := await src.read(65536):
            held[0] = held[0] or self._marker in data
            dst.write(data)
            await dst.drain()
        dst.close()

    @staticmethod
    async def _replies(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: list[bool]
    ) -> None:
        while data := await src.read(65536):
            if not held[0]:
                dst.write(data)
                await dst.drain()
        dst.close()


async def ask(cache: Stampede, key: str, gate: Gate) -> None:
    """Ask *cache* for *key*, computed by *gate* (for task groups: the call is overloaded)."""
    await cache.get_or_compute(key, gate, 60)


@asynccontextmanager
async def entered(url: str, namespace: str, **settings: Any) -> AsyncIterator[Stampede]:
    """A Stampede entered by this task, not closed on the way out (the test closes it)."""
    cache = Stampede.from_url(url, namespace=namespace, lock_ttl=LOCK_TTL, **settings)
    await cache.__aenter__()
    try:
        yield cache
    finally:
        await cache.aclose()  # idempotent: the test closed it already


@contextmanager
def hung(server: RedisServer) -> Iterator[None]:
    """Nothing *server* is sent is answered until the block ends (the server is stopped)."""
    server.pause()
    try:
        yield
    finally:
        server.resume()


# ---------------------------------------------------------------- a caller cancelled


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("who", ["first", "joined"])
async def test_a_cancelled_caller_leaves_the_others_their_value(
    redis_url: str, namespace: str, leaks: Leaks, who: str, how: How
) -> None:
    """The caller whose compute runs, or one joined to it, is cancelled: the rest get the value."""
    gate = Gate()
    async with entered(redis_url, namespace) as cache:
        first = Caller(cache, "k", gate).start(how if who == "first" else "cancel scope")
        await gate.started.wait()
        joined = Caller(cache, "k", gate).start(how if who == "joined" else "cancel scope")
        await until(lambda: cache.statistics().coalesced == 1)
        (first if who == "first" else joined).cancel()
        assert await (first if who == "first" else joined).result() == "cancelled"
        stats = cache.statistics()
        assert (stats.computing, stats.in_flight) == (1, 1)  # the compute goes on
        later = Caller(cache, "k", gate).start()
        await until(lambda: cache.statistics().coalesced == 2)
        gate.release.set()
        others = [joined if who == "first" else first, later]
        assert [await c.result() for c in others] == ["v", "v"]
        assert gate.calls == 1
    await leaks.closed(cache)


@pytest.mark.parametrize("how", HOWS)
async def test_a_cancelled_remote_waiter_leaves_the_others_their_value(
    redis_url: str, namespace: str, leaks: Leaks, how: How
) -> None:
    """A caller waiting on another instance's lock is cancelled: its joiner still gets the value."""
    gate = Gate()
    own = Gate("own")
    async with entered(redis_url, namespace) as holder, entered(redis_url, namespace) as waiter:
        led = Caller(holder, "k", gate).start()
        await gate.started.wait()
        first = Caller(waiter, "k", own).start(how)
        await until(lambda: waiter.statistics().waiting == 1)
        joined = Caller(waiter, "k", own).start()
        await until(lambda: waiter.statistics().coalesced == 1)
        first.cancel()
        assert await first.result() == "cancelled"
        assert waiter.statistics().waiting == 1  # the wait goes on for the joiner
        gate.release.set()
        assert [await led.result(), await joined.result()] == ["v", "v"]
        assert own.calls == 0
    await leaks.closed(holder, waiter)


@pytest.mark.parametrize("how", HOWS)
async def test_a_caller_cancelled_during_its_first_read_hands_the_key_over(
    own_server: RedisServer, leaks: Leaks, how: How
) -> None:
    """The first caller is cancelled mid-read: its joiner gets the value, and no lock stays."""
    gate = Gate()
    gate.release.set()
    sync = redis.Redis.from_url(own_server.url)
    try:
        async with entered(own_server.url, "ns", redis_budget=BUDGET) as cache:
            with hung(own_server):
                first = Caller(cache, "k", gate).start(how)
                await until(lambda: cache.statistics().in_flight == 1)  # its read hangs
                joined = Caller(cache, "k", gate).start()
                await until(lambda: cache.statistics().coalesced == 1)
                first.cancel()
                assert await first.result() == "cancelled"
            assert await joined.result() == "v"
            assert gate.calls == 1
            assert_no_lock_left(sync, "ns", "k")
        await leaks.closed(cache)
    finally:
        sync.close()


async def test_a_task_group_of_callers_cancelled_at_once(
    redis_url: str, namespace: str, leaks: Leaks
) -> None:
    """Computing, joined and remote-waiting callers of 4 keys cancelled together: work goes on."""
    keys = [f"k{i}" for i in range(4)]
    gates = {key: Gate(key) for key in keys}
    async with entered(redis_url, namespace) as a, entered(redis_url, namespace) as b:
        async with anyio.create_task_group() as tg:
            for key in keys:
                for _ in range(10):
                    tg.start_soon(ask, a, key, gates[key])
            await until(lambda: a.statistics().computing == 4)
            await until(lambda: a.statistics().coalesced == 36)
            for key in keys:
                for _ in range(10):
                    tg.start_soon(ask, b, key, Gate("b"))
            await until(lambda: b.statistics().waiting == 4)
            await until(lambda: b.statistics().coalesced == 36)
            tg.cancel_scope.cancel()
        # Nobody waits any more, but what was started finishes and is stored.
        assert (a.statistics().computing, b.statistics().waiting) == (4, 4)
        for gate in gates.values():
            gate.release.set()
        await until(lambda: a.statistics().in_flight == 0 and b.statistics().in_flight == 0)
        for key in keys:
            assert await b.get_or_compute(key, Gate("b"), 60) == key
        assert sum(g.calls for g in gates.values()) == 4
    await leaks.closed(a, b)


# ---------------------------------------------------------------- closing the instance


async def test_closing_ends_computes_releases_their_locks_and_tells_every_caller(
    redis_url: str, namespace: str, sync_redis: redis.Redis, leaks: Leaks
) -> None:
    """Callers outside the block (computing and joined, 3 keys) get ClosedError; no lock is left."""
    keys = ["a", "b", "c"]
    gates = {key: Gate() for key in keys}
    async with entered(redis_url, namespace) as cache:
        callers = [Caller(cache, key, gates[key]).start() for key in keys for _ in range(3)]
        await until(lambda: cache.statistics().computing == 3)
        await until(lambda: cache.statistics().coalesced == 6)
        assert all(lock_of(sync_redis, namespace, key) for key in keys)  # held
        await cache.aclose()
        await leaks.closed(cache)  # at once: before any caller runs again
        for key in keys:
            assert lock_of(sync_redis, namespace, key) is None  # released, not left to expire
        assert all(gate.cancelled.is_set() for gate in gates.values())
        outcomes = [await c.result() for c in callers]
        assert all(isinstance(o, ClosedError) for o in outcomes), outcomes


@pytest.mark.parametrize("wake", ["tracking", "tracking-resp3", "keyspace", "channel", "poll"])
async def test_closing_ends_remote_waits(
    notifying_url: str, namespace: str, leaks: Leaks, wake: Wake
) -> None:
    """Callers waiting for another process's lock holder get ClosedError; its lock stays its own."""
    sync = redis.Redis.from_url(notifying_url)
    lock = make_names(namespace, "k").lock
    sync.set(lock, b"another process", px=int(LOCK_TTL * 1000))
    try:
        async with entered(notifying_url, namespace, wake=wake) as cache:
            await until(lambda: cache.statistics().wake == wake)
            gate = Gate()
            waiting = [Caller(cache, "k", gate).start() for _ in range(3)]
            await until(lambda: cache.statistics().waiting == 1)
            await until(lambda: cache.statistics().coalesced == 2)
            await cache.aclose()
            await leaks.closed(cache)
            outcomes = [await c.result() for c in waiting]
            assert all(isinstance(o, ClosedError) for o in outcomes), outcomes
            assert gate.calls == 0
            assert sync.get(lock) == b"another process"
    finally:
        sync.delete(lock)
        sync.close()


@pytest.mark.parametrize("ending", ["re-raises late", "returns late"], ids=["reraises", "swallows"])
async def test_closing_waits_for_a_compute_that_ignores_cancellation_a_while(
    redis_url: str, namespace: str, sync_redis: redis.Redis, leaks: Leaks, ending: str
) -> None:
    """A compute shields its clean-up (or swallows the cancellation): close waits, no lock stays.

    The clean-up outlasts the request connection, so whatever the resolution
    sends next (the release; a commit, for the compute that returns a value)
    goes through the pool, where a cancelled command never leaves.
    """
    started = anyio.Event()
    cancelled = anyio.Event()
    let_go = anyio.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            with anyio.CancelScope(shield=True):
                await let_go.wait()  # its clean-up, deaf to the cancellation
            if ending == "re-raises late":
                raise
        return "late"

    async def clean_up_later() -> None:
        await cancelled.wait()
        # Its clean-up outlasts the request connection (closed with the
        # instance): what it sends next goes through the pool.
        await until(lambda: not request_connection(cache).connected)
        let_go.set()

    async with entered(redis_url, namespace) as cache:
        callers = [Caller(cache, "k", stubborn).start() for _ in range(2)]
        await started.wait()
        await until(lambda: cache.statistics().coalesced == 1)
        spawn(clean_up_later())
        await cache.aclose()  # returns only once the compute has ended
        assert let_go.is_set()
        await leaks.closed(cache)
        assert_no_lock_left(sync_redis, namespace, "k")
        outcomes = [await c.result() for c in callers]
        assert all(isinstance(o, ClosedError) for o in outcomes), outcomes


async def test_closing_ends_a_compute_that_went_on_past_the_soft_timeout(
    redis_url: str, namespace: str, sync_redis: redis.Redis, leaks: Leaks
) -> None:
    """The stale value was served at the soft timeout; the compute still running is ended."""
    seed(sync_redis, namespace, "k", "stale", age=20, fresh_for=-10)
    gate = Gate()
    async with entered(redis_url, namespace, stale_if_error=60, soft_timeout=0.01) as cache:
        assert await cache.get_or_compute("k", gate, ttl=60) == "stale"
        stats = cache.statistics()
        assert (stats.soft_timeouts, stats.computing, stats.in_flight) == (1, 1, 0)
        assert lock_of(sync_redis, namespace, "k")
        await cache.aclose()
        await leaks.closed(cache)
        assert gate.cancelled.is_set()
        assert lock_of(sync_redis, namespace, "k") is None


@pytest.mark.parametrize("kind", ["xfetch", "stale-while-revalidate"])
async def test_closing_ends_background_refreshes(
    redis_url: str, namespace: str, sync_redis: redis.Redis, leaks: Leaks, kind: str
) -> None:
    """A refresh (XFetch's early one, or stale-while-revalidate's) runs at close: it is ended."""
    if kind == "xfetch":  # fresh for 1 s more, in its TTL's second half, a 1 s compute
        seed(sync_redis, namespace, "k", "old", age=20, fresh_for=1, delta=1)
        settings: dict[str, Any] = {"beta": 1e9}
    else:  # stale for 10 s
        seed(sync_redis, namespace, "k", "old", age=20, fresh_for=-10)
        settings = {"stale_while_revalidate": 60, "beta": 0}
    gate = Gate()
    async with entered(redis_url, namespace, **settings) as cache:
        assert await cache.get_or_compute("k", gate, ttl=60) == "old"
        await gate.started.wait()
        stats = cache.statistics()
        assert (stats.refreshing, stats.computing) == (1, 1)
        assert stats.early_refreshes == int(kind == "xfetch")
        await cache.aclose()
        await leaks.closed(cache)
        assert gate.cancelled.is_set()
        assert lock_of(sync_redis, namespace, "k") is None
        assert cache.statistics().refresh_errors == 0


@pytest.mark.parametrize("client", ["own", "given"], ids=["own-client", "given-client"])
async def test_closing_during_a_first_read(
    own_server: RedisServer, leaks: Leaks, client: str
) -> None:
    """The instance closes while a caller's first read hangs: it and its joiner get ClosedError.

    With a client of the instance's own (``from_url``) or one the
    application gave, closing ends the read at once (a read is of no use to
    a closing instance), and opens no connection: not one that would stay
    open, nor one of the application's pool.
    """
    gate = Gate()
    gate.release.set()
    sync = redis.Redis.from_url(own_server.url)
    given = redis.asyncio.Redis.from_url(own_server.url)
    try:
        if client == "own":
            cache = Stampede.from_url(own_server.url, lock_ttl=LOCK_TTL, redis_budget=BUDGET)
        else:
            cache = Stampede(given, lock_ttl=LOCK_TTL, redis_budget=BUDGET)
        await cache.__aenter__()
        try:
            with hung(own_server):
                first = Caller(cache, "k", gate).start()
                await until(lambda: cache.statistics().in_flight == 1)  # its read hangs
                joined = Caller(cache, "k", gate).start()
                await until(lambda: cache.statistics().coalesced == 1)
                await cache.aclose()
                assert isinstance(await first.result(), ClosedError)
                assert isinstance(await joined.result(), ClosedError)
                assert leaks.library_tasks() == []
            assert gate.calls == 0
            await leaks.closed(cache)
            await given.aclose()
            await until(lambda: len(sync.client_list()) == 1)  # this one: none of the cache's
        finally:
            await cache.aclose()
            # Whatever connection the test found left open, closed now (not
            # when the loop shuts down, which uvloop does not survive).
            await cache._rt.backend.client.aclose()  # type: ignore[attr-defined]
    finally:
        await given.aclose()
        sync.close()


async def test_closing_during_a_lock_attempt_lets_the_lock_go(
    redis_url: str, namespace: str, sync_redis: redis.Redis, leaks: Leaks
) -> None:
    """The instance closes while the answer to its lock attempt is on its way: the lock is released.

    Redis has given it the lock (the ``SET NX``, or the script taking it,
    took effect); the reply is withheld, so the resolution is cancelled by
    the close before it knows.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    # SET ... NX GET, or before Redis 7 (which refuses that) the script instead
    version = str(sync_redis.info("server")["redis_version"])
    if tuple(int(part) for part in version.split(".")[:2]) >= (7, 0):
        marker = b"$2\r\nNX\r\n"
    else:
        marker = hashlib.sha1(render(TAKE_OR_NAME).encode()).hexdigest().encode()
    async with (
        ReplyHoldingProxy(port, marker) as proxy,
        entered(proxy.url, namespace, redis_budget=BUDGET) as cache,
    ):
        await until(lambda: request_connection(cache).connected)
        gate = Gate()
        caller = Caller(cache, "k", gate).start()
        await until(lambda: lock_of(sync_redis, namespace, "k") is not None)  # taken
        await cache.aclose()
        await leaks.closed(cache)
        assert lock_of(sync_redis, namespace, "k") is None  # released, not left to expire
        assert isinstance(await caller.result(), ClosedError)
        assert gate.calls == 0


@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_closing_during_an_outage(own_server: RedisServer, leaks: Leaks, outage: str) -> None:
    """Redis is gone (stopped) or silent (paused), computes run uncached: close ends them the same.

    The breaker is open and probing, the connections are reconnecting or
    waiting on a server that does not answer: none of that outlives the
    close, and the close does not wait on the server.
    """
    gate = Gate()
    warm = Gate()
    warm.release.set()
    async with entered(own_server.url, "ns") as cache:
        assert await cache.get_or_compute("warm", warm, 60) == "v"  # it worked: then the outage
        if outage == "stopped":
            own_server.stop()
        else:
            own_server.pause()
        try:
            callers = [Caller(cache, f"k{i % 3}", gate).start() for i in range(9)]
            await until(lambda: cache.statistics().computing == 3)  # failed open, one per key
            await cache.aclose()
            await leaks.closed(cache)
            outcomes = [await c.result() for c in callers]
            assert all(isinstance(o, ClosedError) for o in outcomes), outcomes
            assert gate.cancelled.is_set()
        finally:
            if outage == "paused":
                own_server.resume()
