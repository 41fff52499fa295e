"""The circuit breaker of one Redis: after a failure, skip it until a probe finds it back.

A hung or unreachable Redis must cost a call its budget once, not on every
call for as long as the outage lasts. The breaker is the memory of the
outage between calls (the pattern of Nygard's *Release It!*, 2007):

- **closed**: commands go to Redis. What Redis itself did opens it (see
  `Breaker.failed`'s callers): a connection silent for a whole budget while
  commands or a ping wait on it, a socket timeout, a connection that
  cannot be made again, a server still loading. A call that merely ran out
  of its own budget does not (its process may be busy), nor does a refusal
  (``NOPERM``, ``OOM``, a wrong password): Redis answered, and skipping it
  would hide a misconfiguration instead of reporting it.
- **open**: every command raises `CircuitOpenError` at once, without a
  round trip; callers fail open (compute, coalesced per process) or get
  the error (``fail_open=False``).
- **half-open**: one probe at a time (a ``GET`` of a probe key of the
  namespace) asks Redis; answered within the budget (a refusal is an
  answer), it closes. Otherwise it is open again, and the next probe
  starts 50 ms after this one ended, doubling up to 0.5 s (with jitter, so
  processes do not probe in step). Callers still skip Redis meanwhile.

Opening and closing are the changes: each is logged (opening at WARNING
with the failure in the server's words, closing at INFO with the
outage's length; never rate-limited), counted in ``statistics()`` (whose
``breaker`` also shows ``half-open`` while a probe runs), handed to the
hooks, and makes every waiter look at its lock again (``on_change``): on
opening they fail open instead of sleeping out a lock whose holder cannot
commit; on closing they find the value or the lock as Redis has it now.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, final

import anyio

from .._events import BreakerChange, BreakerState, Hooks
from .._exceptions import BackendError, CircuitOpenError
from .._problems import ProblemLog

__all__ = ["Breaker", "BreakerView"]

_FIRST_PROBE: Final = 0.05  # seconds after opening
_PROBE_MOST: Final = 0.5  # the longest pause between probes


class BreakerView(Protocol):
    """What the instance reads of its circuit breaker (one `Breaker`, or a Cluster's, as one)."""

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half-open``."""
        ...

    @property
    def opens(self) -> int:
        """Times it opened."""
        ...

    @property
    def short_circuited(self) -> int:
        """Commands not sent because it was open."""
        ...

    @property
    def on_close(self) -> list[Callable[[], None]]:
        """Called each time it closes."""
        ...


@final
class Breaker:
    """Closed, open or half-open; fed failures by the route, the connections and the listener."""

    __slots__ = (
        "_address",
        "_budget",
        "_hooks",
        "_log",
        "_on_change",
        "_opened_at",
        "_reason",
        "_soon",
        "_wake",
        "on_close",
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
        hooks: Hooks | None = None,
        on_change: Callable[[], None] | None = None,
        context: dict[str, str] | None = None,
    ) -> None:
        self._address = address
        self._budget = budget  # a probe's answer must come within this
        # Every change is logged, however soon after the last (each opening
        # is an outage, and a breaker that flaps must be seen to).
        # (*context*: the instance's log fields, its namespace; the address is this server's.)
        self._log = ProblemLog(
            interval=0.0, part="breaker", context={**(context or {}), "address": address}
        )
        self._hooks = hooks if hooks is not None else Hooks()
        self._on_change = on_change
        self.on_close: list[Callable[[], None]] = []  # called each time it closes
        self.state: BreakerState = "closed"
        self.skipping = False  # open or half-open: the test on every command
        self.opens = 0  # times it opened
        self.short_circuited = 0  # commands not sent because it was open
        self._opened_at = 0.0
        self._reason = ""
        self._wake = anyio.Event()
        self._soon = anyio.Event()  # set by probe_soon: the pause before the next probe ends

    def probe_soon(self) -> None:
        """Have an open breaker probe now, not after its pause: the server to ask changed."""
        self._soon.set()

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

    @property
    def reason(self) -> str:
        """The failure that opened the breaker (or the latest probe's), in words."""
        return self._reason

    def failed(self, error: BackendError) -> None:
        """Open on *error* (Redis itself failed: silent, unreachable, loading) if closed."""
        if self.state == "closed":
            self._opened_at = time.monotonic()
            self.opens += 1
            self._reason = str(error)
            self._change("open", self._reason)
            self._wake.set()

    async def run(self, probe: Callable[[float], Awaitable[str | None]]) -> None:
        """Probe Redis while open, one probe at a time, until cancelled.

        *probe* sends one command within the given seconds, and returns
        None, or the refusal Redis answered with (an answer all the same);
        it raises `BackendError` when Redis fails it.
        """
        pause = _FIRST_PROBE
        while True:
            if self.state == "closed":
                pause = _FIRST_PROBE
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            with anyio.move_on_after(pause * (0.75 + random.random() / 2)):
                await self._soon.wait()
            self._soon = anyio.Event()
            self.state = "half-open"  # (not an event: the breaker is still open to callers)
            started = anyio.current_time()
            try:
                with anyio.fail_after(self._budget):
                    refusal = await probe(self._budget)
            except (BackendError, TimeoutError) as exc:
                # What CircuitOpenError names from now on: the latest cause.
                self._reason = str(exc) or f"no reply within the {self._budget}s budget"
                self.state = "open"
                pause = min(pause * 2, _PROBE_MOST)
                continue
            took = (anyio.current_time() - started) * 1000
            answer = f"refused: {refusal}" if refusal else "answered"
            outage = time.monotonic() - self._opened_at
            self._change("closed", f"a probe was {answer} in {took:.1f} ms", outage)

    def retire(self) -> None:
        """Tell the hooks an open breaker closed, as the instance closes (gauges follow).

        Not logged, and nothing is settled: there is nobody left to use Redis.
        """
        if self.state != "closed" and self._hooks:
            outage = time.monotonic() - self._opened_at
            self._hooks.emit(
                BreakerChange(self._address, "closed", self.state, "the instance closed", outage)
            )
        self.state, self.skipping = "closed", False

    def _change(self, state: BreakerState, reason: str, outage: float = 0.0) -> None:
        """Open (from closed) or close: logged, handed to the hooks, waiters told."""
        previous, self.state = self.state, state
        self.skipping = state != "closed"
        if state == "open":
            self._log.say(
                logging.WARNING,
                f"circuit breaker opened: {reason}; calls skip Redis at {self._address} "
                "until a probe finds it answering",
                kind="breaker opened",
            )
        else:
            self._log.say(
                logging.INFO,
                f"circuit breaker closed: Redis at {self._address} answers again "
                f"({reason}) after {outage:.1f}s; calls use it",
                kind="breaker closed",
            )
        if self._hooks:
            self._hooks.emit(BreakerChange(self._address, state, previous, reason, outage))
        if self._on_change is not None:
            self._on_change()
        if state == "closed":
            for settle in self.on_close:
                settle()
