"""What the request path passes down: the instance's shared parts, and one resolution's request."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar, final

import anyio
import anyio.abc
from redis.asyncio import Redis, RedisCluster

from ._backends.base import Acquired, Backend, Held, Hit
from ._backends.interest import Interest
from ._backends.memory import MemoryBackend
from ._backends.redis.backend import RedisBackend
from ._backends.redis.client import check_client
from ._backends.redis.cluster import ClusterBackend
from ._codec import Codec
from ._envelope import DecodeError, Envelope, decode
from ._events import BackendFailure, Corrupt, Hook, Hooks, RedisCall
from ._exceptions import BackendError, BackendRefusedError, CircuitOpenError, ComputeFailedError
from ._flight import Flight
from ._freshness import Policy, fallback_usable, judge
from ._keys import KeyNames
from ._lock_keeper import LockKeeper
from ._problems import ProblemLog
from ._settings import Settings
from ._stats import Counters, Statistics

__all__ = [
    "MISFIT",
    "Again",
    "Looks",
    "Request",
    "Runtime",
    "failure_of",
    "now_ms",
    "value_of",
]

T = TypeVar("T")

_OWED_MOST = 4096  # commits and releases owed since an outage, kept at most

# `Runtime.redis`'s *doing*, as the step a `RedisCall` names (the rest are named as they are).
_STEPS: Final = {"the lock": "LOCK"}


def _failed_step(took: float, budget: float) -> Literal["error", "timeout"]:
    """How a step that failed after *took* seconds of its *budget* ended, for `RedisCall`.

    Its commands' deadline is the call's budget: a failure at or past it is
    the budget running out (a timeout), one before it Redis's own (an error).
    """
    return "timeout" if took >= budget else "error"


def now_ms() -> int:
    """Wall-clock milliseconds: what envelopes are stamped with, across hosts."""
    return int(time.time() * 1000)


@final
class Runtime:
    """The parts of one `Stampede` that every step of the request path shares."""

    __slots__ = (
        "backend",
        "budgeted",
        "counters",
        "flights",
        "hooked",
        "hooks",
        "keeper",
        "namespace",
        "owed",
        "problems",
        "refresh_after",
        "refreshing",
        "settings",
        "store",
        "tg",
    )

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: object,
        problems: ProblemLog,
        hooks: Hooks | None = None,
    ) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self.hooks = hooks if hooks is not None else Hooks()
        # Checked before an event record is even made: no hook, no cost.
        self.hooked = bool(self.hooks)
        self.backend = backend
        # What stores the keys: computes of one key over one store wait for
        # each other, whichever instance runs them.
        self.store = store
        self.problems = problems
        self.counters = Counters()
        self.flights: dict[str, Flight] = {}  # key -> its resolution in this process
        self.keeper = LockKeeper(
            backend, settings.lock_ms, self.failed, lambda work: self.redis(None, work, "EXTEND")
        )
        self.tg: anyio.abc.TaskGroup | None = None  # set while entered
        self.refreshing: set[str] = set()  # keys with a background refresh running
        # key -> monotonic time before which no background refresh of it starts
        self.refresh_after: dict[str, float] = {}
        # Whether the store's work is bounded by redis_budget (nothing in
        # memory waits).
        self.budgeted = backend.breaker is not None
        # Commits and releases of our locks the open breaker kept from Redis:
        # token -> (names, payload or None for a release, px_ms). Made as soon
        # as it closes, so no lock of ours outlives the outage by its TTL
        # (nor a lock extension sent before a pause, which Redis runs after).
        self.owed: dict[bytes, tuple[KeyNames, bytes | None, int]] = {}
        if backend.breaker is not None:
            backend.breaker.on_close.append(self._settle_soon)

    @classmethod
    def over(
        cls, redis: Redis | RedisCluster | None, settings: Settings, hooks: Sequence[Hook] = ()
    ) -> Runtime:
        """Build the parts over *redis* (a client, checked), or embedded when None.

        Raises:
            TypeError: *redis* is not a ``redis.asyncio.Redis`` client, or a
                hook is not callable.
            ValueError: the client decodes responses.

        """
        problems = ProblemLog(context={"namespace": settings.namespace})
        emitter = Hooks(hooks, context=problems.context)
        if redis is None:
            memory = MemoryBackend(max_entries=settings.max_entries)
            return cls(settings, memory, memory, problems, emitter)
        check_client(redis)
        if isinstance(redis, RedisCluster):
            cluster = ClusterBackend(
                [(str(node.host), int(node.port)) for node in redis.startup_nodes],
                redis.connection_kwargs,
                max_connections=int(redis.connection_kwargs.get("max_connections") or 64),
                client=redis,
                namespace=settings.namespace,
                problems=problems,
                wake=settings.wake,
                budget=settings.redis_budget,
                hooks=emitter,
            )
            return cls(settings, cluster, cluster.address, problems, emitter)
        backend = RedisBackend(
            redis,
            owns_client=False,
            namespace=settings.namespace,
            problems=problems,
            wake=settings.wake,
            budget=settings.redis_budget,
            hooks=emitter,
        )
        return cls(settings, backend, backend.address, problems, emitter)

    @property
    def over_redis(self) -> bool:
        """Whether the store is Redis (which needs asyncio)."""
        return isinstance(self.backend, RedisBackend | ClusterBackend)

    def own_client(self) -> None:
        """Close the Redis client with the instance (it is ``from_url``'s own)."""
        if isinstance(self.backend, RedisBackend | ClusterBackend):
            self.backend.owns_client = True

    def statistics(self) -> Statistics:
        """Return a snapshot of the counters and gauges."""
        backend = self.backend
        breaker = backend.breaker
        return self.counters.snapshot(
            reconnects=backend.reconnects,
            connect_errors=backend.connect_errors,
            refused_connections=backend.refused_connections,
            in_flight=len(self.flights),
            locks_held=self.keeper.held,
            refreshing=len(self.refreshing),
            wake=backend.wake,
            breaker="closed" if breaker is None else breaker.state,
            breaker_opens=0 if breaker is None else breaker.opens,
            short_circuited=0 if breaker is None else breaker.short_circuited,
            nodes=backend.node_statistics() if isinstance(backend, ClusterBackend) else (),
        )

    def owe(
        self, names: KeyNames, token: bytes, payload: bytes | None = None, px_ms: int = 0
    ) -> None:
        """Remember a commit of *payload* (None: a release) under the lock *token*, for later.

        At most `_OWED_MOST` are kept (the oldest go first: their locks are
        the likeliest to have expired).
        """
        if len(self.owed) >= _OWED_MOST:
            del self.owed[next(iter(self.owed))]
        self.owed[token] = (names, payload, px_ms)

    def _settle_soon(self) -> None:
        if self.owed and self.tg is not None:
            self.tg.start_soon(self._settle)

    async def _settle(self) -> None:
        """Make the owed commits (or release the locks), now that Redis answers again.

        A commit stores the value (and wakes the waiters) only while the lock
        is still ours; a release deletes it only then too. Either way the
        lock is let go at once instead of at its expiry.
        """
        owed, self.owed = self.owed, {}
        for token, (names, payload, px_ms) in owed.items():
            try:
                if payload is not None:
                    work = self.backend.commit(names, token, payload, px_ms)
                    if await self.redis(None, work, "COMMIT"):
                        continue
                await self.redis(None, self.backend.release(names, token), "RELEASE")
            except CircuitOpenError:
                self.owe(names, token, payload, px_ms)  # open again: next time
            except BackendError as exc:
                self.failed(exc, "settling a commit or release owed since an outage")

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
        by their key are one kind of message for the rate limit. A command
        the open breaker did not send is no new failure: it is counted
        there (``short_circuited``) and its opening was logged.
        """
        if isinstance(exc, CircuitOpenError):
            return
        self.counters.backend_errors += 1
        refused = isinstance(exc, BackendRefusedError)
        if refused:
            self.counters.refused += 1
        if self.hooked:
            what = doing.replace("{key}", repr(key))
            self.hooks.emit(BackendFailure(self.namespace, what, refused, str(exc)))
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

    async def redis(self, req: Request | None, work: Coroutine[Any, Any, T], doing: str) -> T:
        """Await *work* (the store's) within the Redis budget *req* has left.

        *req* None: a budget of its own (background work, a release after
        a failure). Whatever the work takes is charged to *req*: all the
        Redis work of one call shares one ``redis_budget``.

        Raises:
            BackendError: the store failed, or the budget ran out (*doing*
                names the work in that error; the breaker opens).

        """
        if not self.budgeted:
            return await work
        left = self.settings.redis_budget if req is None else req.redis_left
        if left <= 0:
            work.close()
            raise self.backend.overran(doing, 0.0)
        started = time.monotonic()
        outcome: Literal["ok", "error", "timeout"] | None = None
        try:
            with anyio.move_on_after(left):
                result = await work
                outcome = "ok"
                return result
            outcome = "timeout"
        except CircuitOpenError:
            raise  # (nothing was sent)
        except BackendError:
            outcome = _failed_step(time.monotonic() - started, left)
            raise
        finally:
            took = time.monotonic() - started
            if req is not None:
                req.redis_left -= took
            if self.hooked and outcome is not None:
                self.hooks.emit(RedisCall(self.namespace, _STEPS.get(doing, doing), took, outcome))
        raise self.backend.overran(doing, left, took - left)

    def timed(self, operation: str, started: float, failure: object = None) -> None:
        """Tell the hooks of a read made outside `redis` (a first read), begun at *started*.

        *failure*: what the read met instead of a reply, if anything (a
        `CircuitOpenError` sent nothing, so it is not a step).
        """
        if not self.budgeted or isinstance(failure, CircuitOpenError):
            return  # (embedded mode has no Redis)
        took = time.monotonic() - started
        outcome: Literal["ok", "error", "timeout"] = "ok"
        if isinstance(failure, BackendError):
            outcome = _failed_step(took, self.settings.redis_budget)
        self.hooks.emit(RedisCall(self.namespace, operation, took, outcome))

    async def acquire(
        self,
        req: Request,
        token: bytes,
        *,
        read: bool,
        seen: bytes | None = None,
        watch: bool = True,
        recheck: bool = False,
    ) -> Hit | Acquired | Held | BackendError:
        """Run `Backend.acquire` with the lock TTL, within *req*'s budget.

        A Redis failure (the budget running out included) is returned, not
        raised. Cancelled (the instance closes) with its lock attempt on the
        way, it releases the lock before it stops: Redis may have given it
        the lock all the same, and nobody else would let it go before its
        expiry.
        """
        work = self.backend.acquire(
            req.names,
            token,
            self.settings.lock_ms,
            read=read,
            seen=seen,
            watch=watch,
            recheck=recheck,
        )
        try:
            return await self.redis(req, work, "the lock")
        except BackendError as exc:
            return exc
        except BaseException:
            # (A release frees the lock only while it holds *token*.)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                try:
                    await self.redis(None, self.backend.release(req.names, token), "RELEASE")
                except BackendError as exc:
                    self.failed(exc, "releasing a lock; its waiters wait for it to expire")
            raise

    def decode(self, payload: bytes, req: Request | None = None) -> Envelope | None:
        """Decode a stored envelope, or count it as corrupt and return None.

        For *req*, a value stamped with other generations of its tags (one
        invalidated since) is None too, and so is one its codec cannot load
        (stored before its type changed, say; counted as corrupt): either is
        computed anew.
        """
        try:
            envelope = decode(payload, max_value_bytes=self.settings.max_value_bytes)
        except DecodeError as exc:
            self.undecodable(exc, None if req is None else req.key)
            if self.hooked:
                self.hooks.emit(
                    Corrupt(self.namespace, None if req is None else req.key, "undecodable")
                )
            return None
        if req is not None:
            if envelope.tags != req.tags:  # (a tagged value for an untagged call too)
                self.untagged(envelope, req.tags)
                return None
            if req.codec is not None and not self.fits(envelope, req.codec, req.key):
                return None
        return envelope

    def undecodable(self, exc: DecodeError, key: str | None) -> None:
        """Count a stored value that is not an envelope, and say so (a miss follows)."""
        self.counters.decode_errors += 1
        self.problems.say(
            logging.WARNING,
            f"a stored value{'' if key is None else f' of {key!r}'} is not one asyncstampede "
            f"wrote ({exc}), so it is computed anew: another program writes under the "
            "namespace, or a version mismatch",
            kind="undecodable value",
            key=key,
        )

    def untagged(self, envelope: Envelope, stamp: int) -> None:
        """Say so when a value stored with tags is read without them (it is not served)."""
        if envelope.tags and not stamp:
            self.problems.say(
                logging.WARNING,
                "a value stored with tags was read by a call without them, so it is not "
                "served (it may have been invalidated by a tag the call does not name): "
                "every caller of a key, and every instance of a namespace, should name "
                "the same tags",
            )

    def fits(self, envelope: Envelope, codec: Codec[Any], key: str) -> bool:
        """Tell whether *codec* loads *envelope*'s value (*key*'s); count and log it when not."""
        return envelope.failed or self.load(envelope.value, codec, key) is not MISFIT

    def load(self, value: Any, codec: Codec[Any], key: str) -> Any:
        """Return *value* (*key*'s) loaded by *codec*, or `MISFIT` (counted, logged) if not."""
        if value is None:
            return None
        try:
            return codec.load(value)
        except (ValueError, TypeError) as exc:
            self._misfit(codec, exc, key)
            return MISFIT

    def _misfit(self, codec: Codec[Any], exc: Exception, key: str) -> None:
        self.counters.decode_errors += 1
        if self.hooked:
            self.hooks.emit(Corrupt(self.namespace, key, "misfit"))
        self.problems.say(
            logging.WARNING,
            f"the stored value of {key!r} does not fit {codec!r}, so it is computed anew "
            f"(stored before the type changed, or by a caller naming another model): {exc}",
            kind=f"misfit {codec!r}",
            key=key,
        )


MISFIT: Final = object()  # a stored value the call's codec could not load: a miss


@dataclass(frozen=True, slots=True)
class Again:
    """Ask Redis (again) before deciding: after a cancellation, or a corrupt value."""

    read: bool
    seen: bytes | None = None  # a stored payload not to be served (corrupt, too stale)


class Looks(Protocol):
    """Told how a key waiting for another holder fares (a batch gathers its keys by it).

    See ``_batch._Batch``: keys that become the call's own at about the same
    time (a holder that failed lets all its locks go; locks that ran out
    together) go to one ``batch_fn`` call.
    """

    def waits(self, key: str, interest: Interest, until: float) -> None:
        """*key* waits on *interest* for a lock its holder has until *until* (anyio time)."""

    def began(self, key: str) -> None:
        """*key*'s look at its lock (after a wake-up, or its timer) is on its way."""

    def ended(self, key: str) -> None:
        """*key*'s look is back without the lock."""

    def lapsed(self, key: str) -> None:
        """*key*'s look took over a lock that had run out (its holder died or stalled)."""

    def left(self, key: str, *, ours: bool) -> None:
        """*key* waits no more; *ours*: with the lock (its look ends once it computes)."""


@final
class Request:
    """Everything one resolution needs, passed down the request path."""

    __slots__ = (
        "codec",
        "failed",
        "flight",
        "fn",
        "key",
        "looks",
        "names",
        "policy",
        "redis_left",
        "stale",
        "stale_payload",
        "tags",
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
        redis_left: float,
        codec: Codec[Any] | None = None,
        tags: int = 0,
    ) -> None:
        self.key = key
        self.names = names
        self.flight = flight
        self.fn = fn
        self.ttl_ms = ttl_ms
        self.policy = policy
        # Seconds of Redis work this call may still spend (redis_budget,
        # less what its first read took); see `Runtime.redis`.
        self.redis_left = redis_left
        # A stored value past serving but within stale_if_error: the fallback,
        # and its bytes as stored (a fail-safe re-stamps those, never a value
        # a caller may have changed since).
        self.stale: Envelope | None = None
        self.stale_payload = b""
        self.failed = False  # the compute failed (and a stale value may have hidden it)
        # The type the first caller asked for (model=): a stored value that
        # does not fit it is not served, like a corrupt one (see Runtime.decode).
        self.codec = codec
        # The fingerprint of its tags' generations when the call began (0:
        # no tags): values are stamped with it, and only those are served.
        self.tags = tags
        # Told how a wait for another holder fares (a batch's keys; see `Looks`).
        self.looks: Looks | None = None

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
