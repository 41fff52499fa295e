"""The circuit breaker of one Redis: after a failure, skip it until a probe finds it back.

A hung or unreachable Redis must cost a call its budget once, not on every
call for as long as the outage lasts. The breaker is the memory of the
outage between calls (the pattern of Nygard's *Release It!*, 2007):

- **closed**: commands go to Redis. The first failure that reaches the
  request path as *unavailable* (no reply within the call's budget, a
  connection that cannot be made, a server still loading; after the
  route's own retry on a fresh connection) opens it. A refusal (``NOPERM``,
  ``OOM``, a wrong password) does not: Redis answered, and skipping it
  would hide a misconfiguration instead of reporting it.
- **open**: every command raises `CircuitOpenError` at once, without a
  round trip; callers fail open (compute, coalesced per process; a stale
  value where their policy allows) or get the error (``fail_open=False``).
- **half-open**: one probe at a time (a ``GET`` of a probe key of the
  namespace, within the budget) asks Redis. Answered within a quarter of
  the budget (a call needs a few round trips), it closes; otherwise it
  opens again, and the next probe follows after 50 ms, doubling up to
  0.5 s (plus jitter, so processes do not probe in step).

Each change is logged (opening at WARNING with the failure in the
server's words, closing at INFO with the outage's length), counted in
``statistics()``, handed to the hooks, and makes every waiter look at its
lock again (``on_change``): on opening, they fail open instead of sleeping
out a lock whose holder cannot commit; on closing, they find the value
or the lock as Redis has it now.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, final

import anyio

from .._events import BreakerChange, BreakerState, Hooks
from .._exceptions import BackendError, CircuitOpenError
from .._problems import ProblemLog

__all__ = ["Breaker"]

_FIRST_PROBE: Final = 0.05  # seconds after opening
_PROBE_MOST: Final = 0.5  # the longest pause between probes


@final
class Breaker:
    """Closed, open or half-open; fed failures by the route, the connections and the listener."""

    __slots__ = (
        "_address",
        "_budget",
        "_hooks",
        "_on_change",
        "_opened_at",
        "_problems",
        "_reason",
        "_wake",
        "opens",
        "short_circuited",
        "skipping",
        "state",
    )

    def __init__(
        self,
        *,
        address: str,
        budget: float,
        problems: ProblemLog,
        hooks: Hooks | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._address = address
        self._budget = budget
        self._problems = problems
        self._hooks = hooks if hooks is not None else Hooks()
        self._on_change = on_change
        self.state: BreakerState = "closed"
        self.skipping = False  # open or half-open: the test on every command
        self.opens = 0  # times it opened
        self.short_circuited = 0  # commands not sent because it was open
        self._opened_at = 0.0
        self._reason = ""
        self._wake = anyio.Event()

    def skip(self, command: str) -> CircuitOpenError:
        """Count a command not sent, and return the error to raise for it."""
        self.short_circuited += 1
        since = time.monotonic() - self._opened_at
        return CircuitOpenError(
            f"Redis at {self._address} skipped for {command}: it failed {since:.1f}s ago "
            f"({self._reason}); a probe asks it again every {_PROBE_MOST}s at most",
            address=self._address,
            command=command,
        )

    def failed(self, error: BackendError) -> None:
        """Open on *error* (an unavailability met by the request path) if closed."""
        if self.state == "closed":
            self._opened_at = time.monotonic()
            self.opens += 1
            self._change("open", str(error))
            self._wake.set()

    async def run(self, probe: Callable[[float], Awaitable[object]]) -> None:
        """Probe Redis while open, one probe at a time, until cancelled.

        *probe* sends one command within the given seconds and raises
        `BackendError` when Redis fails it.
        """
        pause = _FIRST_PROBE
        while True:
            if self.state == "closed":
                pause = _FIRST_PROBE
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            await anyio.sleep(pause * (0.75 + random.random() / 2))
            self._change("half-open", "probing")
            started = anyio.current_time()
            try:
                with anyio.fail_after(self._budget):
                    await probe(self._budget)
            except (BackendError, TimeoutError) as exc:
                reason = str(exc) or f"no answer within the {self._budget}s budget"
                self._change("open", f"probe failed: {reason}")
                pause = min(pause * 2, _PROBE_MOST)
                continue
            took = anyio.current_time() - started
            if took > self._budget / 4:
                # Answered, but slowly (or a reply held up by a pause that
                # just ended): ask again soon rather than trust it yet.
                self._change("open", f"probe answered in {took * 1000:.0f} ms")
                pause = _FIRST_PROBE
                continue
            outage = time.monotonic() - self._opened_at
            self._change("closed", f"a probe was answered in {took * 1000:.1f} ms", outage)

    def _change(self, state: BreakerState, reason: str, outage: float = 0.0) -> None:
        previous, self.state = self.state, state
        self.skipping = state != "closed"
        if state == "open" and previous == "closed":
            self._reason = reason
            self._problems.say(
                logging.WARNING,
                f"circuit breaker opened: {reason}; calls skip Redis at {self._address} "
                "(and fail open) until a probe finds it answering",
                kind="breaker opened",
            )
        elif state == "closed":
            self._problems.say(
                logging.INFO,
                f"circuit breaker closed: Redis at {self._address} answers again "
                f"({reason}) after {outage:.1f}s; calls use it",
                kind="breaker closed",
            )
        if self._hooks:
            self._hooks.emit(BreakerChange(self._address, state, previous, reason, outage))
        if self._on_change is not None and "closed" in (state, previous):
            self._on_change()
