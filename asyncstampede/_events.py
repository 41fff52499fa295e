"""Events an instance reports to the hooks it was given (``Stampede(hooks=...)``).

A hook is any callable taking one event record. The records are frozen
dataclasses, one type per kind of event; a hook tells them apart with
``isinstance`` (or ``match``) and ignores the kinds it does not know, so
new kinds can be added without breaking it. Hooks run synchronously, in
the task where the event happened: they must be quick and must not block
(hand the record to a queue or a metrics counter). A hook that raises is
logged (at most every 10 seconds per hook) and never breaks the request.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, final

__all__ = [
    "BackendFailure",
    "BreakerChange",
    "BreakerState",
    "Coalesced",
    "ComputeEnded",
    "ComputeStarted",
    "Corrupt",
    "EarlyRefresh",
    "Event",
    "FailSafe",
    "Hit",
    "Hook",
    "Hooks",
    "LockLost",
    "Miss",
    "RedisCall",
    "StaleServed",
    "Takeover",
    "Timeout",
    "TransportChange",
    "Waited",
    "WakeUp",
]

log = logging.getLogger("asyncstampede.hooks")

BreakerState: TypeAlias = Literal["closed", "open", "half-open"]
"""``closed``: calls use Redis; ``open``: they skip it; ``half-open``: one probe is asking it."""


@final
@dataclass(frozen=True, slots=True)
class BreakerChange:
    """The circuit breaker of one Redis opened, or closed: one of each per outage.

    (Its probes, which pass through ``half-open``, are not events; the
    state is in ``Stampede.statistics().breaker``.)

    Attributes:
        address: The server (``host:port/db`` or the socket path).
        state: ``"open"`` or ``"closed"``.
        previous: The state before (``"closed"``, or ``"half-open"`` when a
            probe closed it).
        reason: Why, in words: the failure that opened it (the server's own
            words where it answered), or what the probe found.
        outage: On closing, seconds since it opened; else 0.0.

    """

    address: str
    state: BreakerState
    previous: BreakerState
    reason: str
    outage: float = 0.0


# The request path's events. Each names its instance's namespace and the
# cache key (keys are the application's: a metric should not use one as a
# label, a trace or a log may). Durations are seconds (time.perf_counter).


@final
@dataclass(frozen=True, slots=True)
class Hit:
    """A fresh value was read and served.

    ``seconds``: the read (Redis's round trip) on the call's first read;
    None when the value came out of a longer step (a look after a miss).
    """

    namespace: str
    key: str
    seconds: float | None = None


@final
@dataclass(frozen=True, slots=True)
class Miss:
    """No value could be served from the store: the call resolves it (lock, compute or wait)."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class Coalesced:
    """A call joined a resolution of its key already in flight in this process."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class ComputeStarted:
    """The compute function is called (this process holds the lock, or computes without it)."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class ComputeEnded:
    """The compute function ended after ``seconds``.

    ``outcome``: ``"ok"``, ``"error"`` (it raised; ``error`` is the
    exception's type name), ``"timeout"`` (``hard_timeout``) or
    ``"cancelled"`` (the caller or the instance went away).
    """

    namespace: str
    key: str
    seconds: float
    outcome: Literal["ok", "error", "timeout", "cancelled"]
    error: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Waited:
    """A wait for another holder's value (in another process, or before a takeover) ended.

    ``outcome``: ``"value"`` (served: the holder's, or a stale one),
    ``"lock"`` (the lock became this call's: a takeover, or a holder that
    failed and let go), ``"timeout"`` (``wait_timeout``, nothing to serve),
    ``"failed"`` (Redis failed), or ``"resolved"`` (the value came with a
    wake-up, straight to the flight).
    """

    namespace: str
    key: str
    seconds: float
    outcome: Literal["value", "lock", "timeout", "failed", "resolved"]


@final
@dataclass(frozen=True, slots=True)
class WakeUp:
    """Redis pushed a change of a lock this process waits on (never a poll)."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class Takeover:
    """A waiter took the lock of a holder whose lock ran out (it died, or hung)."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class LockLost:
    """A holder's lock was gone when it came to commit: its value was not stored."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class EarlyRefresh:
    """XFetch (``beta``) started a background refresh of a value still fresh."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class StaleServed:
    """A value past its freshness was served.

    ``reason``: ``"revalidate"`` (within ``stale_while_revalidate``, one
    refresh running), ``"error"`` (``stale_if_error``, after a failure),
    ``"soft-timeout"`` or ``"wait-timeout"``.
    """

    namespace: str
    key: str
    reason: Literal["revalidate", "error", "soft-timeout", "wait-timeout"]


@final
@dataclass(frozen=True, slots=True)
class FailSafe:
    """A failed compute's stale value was re-stamped fresh for ``fail_safe_throttle``."""

    namespace: str
    key: str


@final
@dataclass(frozen=True, slots=True)
class Timeout:
    """A timeout passed: ``"soft"`` (stale served, the compute goes on), or ``"wait"``."""

    namespace: str
    key: str
    kind: Literal["soft", "wait"]


@final
@dataclass(frozen=True, slots=True)
class Corrupt:
    """A stored value was not served: undecodable, or not fitting the call's model (``misfit``)."""

    namespace: str
    key: str | None
    reason: Literal["undecodable", "misfit"]


@final
@dataclass(frozen=True, slots=True)
class BackendFailure:
    """Redis failed while the instance was *doing* something.

    ``refused``: Redis answered with a refusal (an ACL, ``OOM``, a wrong
    type: a person must act) rather than being unavailable (down, hung, or
    the circuit breaker's budget). ``error`` is the message, with the
    server's own words.
    """

    namespace: str
    doing: str
    refused: bool
    error: str


@final
@dataclass(frozen=True, slots=True)
class RedisCall:
    """One step of Redis work off the hit path ended after ``seconds``.

    Every step a call makes on Redis beyond a hit's read is one: the first
    read of a call that found no fresh value, a batch's ``MGET``, the lock
    attempt (and each look after a wake-up), the commit, a release, a
    write (`Stampede.set`), an invalidation; background work (a commit
    owed since an outage, a refresh's) too. A hit's read is timed in
    `Hit` instead (so hits build no second record). A step the open
    circuit breaker kept from Redis is not one (it sent nothing), nor is
    what a wake transport sends on its own watching connections (the
    lock's remaining TTL as a wait begins, a value fetched with a
    wake-up): those are not a call's steps.

    ``operation``: ``"GET"`` or ``"MGET"`` (reads), ``"LOCK"``,
    ``"EXTEND"`` (a long compute's lock), ``"COMMIT"``, ``"RELEASE"``,
    ``"RESTAMP"`` (a fail-safe's), ``"WRITE_IF_ABSENT"``, ``"SET"``,
    ``"INVALIDATE"``.
    ``outcome``: ``"ok"``; ``"error"`` (Redis refused it, or the
    connection failed); ``"timeout"`` (the call's ``redis_budget`` ran out).
    A script's step is its one round trip, whatever it does inside.
    """

    namespace: str
    operation: str
    seconds: float
    outcome: Literal["ok", "error", "timeout"]


@final
@dataclass(frozen=True, slots=True)
class TransportChange:
    """The wake transport changed: ``transport`` is the new one (``"poll"``: none).

    ``previous`` is the one before (None: this is the instance's first).
    Told once at start, then at each change (not at a reconnect to the
    same), and when the instance closes (``transport`` None: it has none
    any more, so a gauge of transports in use drops it). A `BreakerChange`
    to ``"closed"`` is told too when an instance closes with its breaker
    open.
    """

    address: str
    transport: str | None
    previous: str | None


Event: TypeAlias = (
    Hit
    | Miss
    | Coalesced
    | ComputeStarted
    | ComputeEnded
    | Waited
    | WakeUp
    | Takeover
    | LockLost
    | EarlyRefresh
    | StaleServed
    | FailSafe
    | Timeout
    | Corrupt
    | BackendFailure
    | RedisCall
    | BreakerChange
    | TransportChange
)
"""Every event record (more kinds may come: ignore the ones you do not know)."""

Hook: TypeAlias = Callable[[Event], object]
"""A callable that receives each event (its return value is ignored)."""


@final
class Hooks:
    """Calls each hook with each event; a hook that raises is logged, never propagated."""

    __slots__ = ("_context", "_hooks", "_said")

    def __init__(
        self, hooks: Sequence[Hook] = (), *, context: dict[str, str] | None = None
    ) -> None:
        """Check *hooks*; *context*: the instance's log fields (namespace, server address).

        Raises:
            TypeError: *hooks* is not a list (or tuple) of callables, or one
                is an ``async def`` function (hooks are called, never awaited).

        """
        if not isinstance(hooks, (list, tuple)):
            raise TypeError(
                f"hooks must be a list of callables, e.g. hooks=[on_event], "
                f"not {type(hooks).__name__}"
            )
        for hook in hooks:
            if not callable(hook):
                raise TypeError(
                    f"hooks must be callables taking an event, not {type(hook).__name__}"
                )
            if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
                type(hook).__call__  # an object whose __call__ is async
            ):
                raise TypeError(
                    f"hook {hook!r} is an async function: hooks are called in the task "
                    "where the event happened and never awaited; pass a plain function "
                    "(it may hand the event to a queue or start a task)"
                )
        self._hooks = tuple(hooks)
        self._said: dict[int, float] = {}  # hook index -> when its last failure was logged
        self._context = context if context is not None else {}

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def emit(self, event: Event) -> None:
        """Call every hook with *event*."""
        for i, hook in enumerate(self._hooks):
            try:
                returned = hook(event)
                if returned is not None:
                    _refuse_coroutine(hook, returned)
            except Exception:
                now = time.monotonic()
                if now - self._said.get(i, -1e9) >= 10.0:
                    self._said[i] = now
                    log.exception(
                        "asyncstampede: hook %r failed on %s; the call goes on",
                        hook,
                        type(event).__name__,
                        extra={**self._context, "part": "hooks"},
                    )


def _refuse_coroutine(hook: Hook, result: object) -> None:
    """Raise (to be logged) when *hook* returned a coroutine: a lambda over an async function."""
    if inspect.iscoroutine(result):
        result.close()  # (never awaited, and never will be: no warning about it)
        raise TypeError(
            f"hook {hook!r} returned a coroutine, which is never awaited: hooks are "
            "called, not awaited; hand the event to a queue or a task"
        )
