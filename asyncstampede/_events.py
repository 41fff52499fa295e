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

__all__ = ["BreakerChange", "BreakerState", "Event", "Hook", "Hooks"]

log = logging.getLogger("asyncstampede")

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


Event: TypeAlias = BreakerChange
"""Every event record (a union as kinds are added)."""

Hook: TypeAlias = Callable[[Event], object]
"""A callable that receives each event (its return value is ignored)."""


@final
class Hooks:
    """Calls each hook with each event; a hook that raises is logged, never propagated."""

    __slots__ = ("_hooks", "_said")

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        """Check *hooks*.

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

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def emit(self, event: Event) -> None:
        """Call every hook with *event*."""
        for i, hook in enumerate(self._hooks):
            try:
                hook(event)
            except Exception:
                now = time.monotonic()
                if now - self._said.get(i, -1e9) >= 10.0:
                    self._said[i] = now
                    log.exception(
                        "asyncstampede: hook %r failed on %s; the call goes on",
                        hook,
                        type(event).__name__,
                    )
