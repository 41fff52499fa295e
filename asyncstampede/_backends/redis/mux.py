"""The commands of the request path through one connection, pipelined automatically.

Every command a `Stampede` sends on its request path (the hit's ``GET``, the
lock's ``SET``, the commit script) goes out on one connection of its own. A
command asked for while none is in flight is written at once; commands
asked for while replies are on their way are gathered and written with one
``send()`` at the end of the loop turn. One task reads the replies, many per
``recv()``, and hands each to its caller in the order sent. Under
concurrency that costs a fraction of the system calls and event-loop
wake-ups of a pooled connection per command (the cost that dominates a
cache hit in Python); a lone command is not held back at all, unless its
loop turn's commands are to go out together (`Multiplexer.gather`: a
batch's commits or releases).

Nothing here is essential: while the connection is down (or before it is
up), `execute` answers `UNAVAILABLE` and the caller uses the pool.

Each command has a deadline (the call's budget for Redis, see
``Stampede(redis_budget=...)``): one timer for the whole connection, armed
at the soonest deadline, fails every command still unanswered past its own
with `NoReply`, while the connection stays up (a late reply is matched to
its slot and dropped). A command that costs no timer of its own is what
keeps a hit cheap. A missed deadline alone says little about Redis (the
call may have spent its budget elsewhere, or this process's loop may be
busy); a connection that has had commands waiting and no reply at all for
a whole budget is silent: that is reported (``on_unavailable``: the
circuit breaker opens), and the connection is replaced (a half-open one
would otherwise hold the breaker open until the socket timeout). The
watchdog also ends a session whose oldest command has waited past the
socket timeout.

Replies are matched to callers by order alone, so a command is packed before
its slot is queued (a command that cannot be packed fails its caller and
nobody else), and a caller waits for the socket to drain once the unsent
bytes pass `_HIGH_WATER`: a slow or stopped server pushes back, and the
buffer stays within that mark plus what one loop turn asks for, instead of
growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

import anyio
import anyio.abc
from redis.exceptions import RedisError, ResponseError

from ..._exceptions import BackendError, BackendRefusedError, BackendUnavailableError
from ..._problems import ProblemLog
from .errors import blocked_loop, is_connection_trouble, map_error
from .wire import Link, LinkFactory

__all__ = ["UNAVAILABLE", "Lost", "Multiplexer", "NoReply"]


UNAVAILABLE: Final = object()  # no connection now: read some other way
# Unsent bytes past which a caller waits for the socket to drain first.
_HIGH_WATER = 4 * 1024 * 1024


class NoReply(Exception):
    """No reply came before the command's deadline (it may still have run)."""


class _Moved(Exception):
    """The connection was replaced on purpose (`Multiplexer.reconnect`): not a failure."""


class Lost(RedisError):
    """The connection was lost with the command in flight; *deadline* is still the command's.

    *closing*: it was closed because the instance is closing.
    """

    def __init__(self, deadline: float, *, closing: bool = False) -> None:
        super().__init__("the connection was lost with this command in flight")
        self.deadline = deadline
        self.closing = closing


def _moved_in(exc: BaseException) -> bool:
    """Whether *exc* is, or holds (a task group's), a `_Moved`."""
    if isinstance(exc, _Moved):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_moved_in(inner) for inner in exc.exceptions)
    return False


class _Slot:
    __slots__ = ("deadline", "done", "error", "heard", "sent", "value")

    def __init__(self, sent: float, deadline: float, heard: int) -> None:
        self.done = asyncio.Event()
        self.value: Any = None
        self.error: Exception | None = None  # set once: the reply's, or NoReply, or lost
        self.sent = sent
        self.deadline = deadline
        self.heard = heard  # replies read when it was sent: none since means silence


@final
class Multiplexer:
    """One auto-pipelined connection for the request path of one `Stampede`."""

    def __init__(
        self,
        new_link: LinkFactory,
        *,
        address: str,
        timeout: float,
        budget: float = 0.5,
        problems: ProblemLog | None = None,
        on_unavailable: Callable[[BackendError], None] | None = None,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._address = address
        # Told what ended a connection that was up (a Sentinel client looks
        # for READONLY in it: a demoted primary).
        self._on_lost = on_lost
        self._moves = 0  # reconnect() calls: a connection made across one is made again
        self._moved: str | None = None  # why the session must end now (see reconnect)
        self._woken = asyncio.Event()  # set by reconnect(): a pause before reconnecting ends
        # Told when Redis falls silent, or cannot be connected to again.
        self._on_unavailable = on_unavailable
        self._problems = problems if problems is not None else ProblemLog()
        self.reconnects = 0  # connections re-established after one was lost
        self.connect_errors = 0  # attempts to (re)connect that failed
        self.refused = 0  # of those, refused by the server (password, certificate...)
        # The reply reader waits as long as it must; a reply that is late is
        # caught by the watchdog below instead.
        self._timeout = timeout
        self._budget = budget  # a command's deadline unless its caller gives one
        self._expiry: asyncio.TimerHandle | None = None  # armed at the soonest deadline
        self._expiry_at = 0.0
        self._silent: str | None = None  # why the session must end (the watchdog ends it)
        self._wake_watchdog = asyncio.Event()
        self._new_link = new_link
        self._writer: asyncio.StreamWriter | None = None
        self._slots: deque[_Slot] = deque()  # sent, oldest first
        self._buffer: list[bytes] = []  # packed, not yet written
        self._pack: Any = None
        self._flush_scheduled = False
        self.replies = 0  # replies handed to callers (for tests and the curious)

    @property
    def connected(self) -> bool:
        """Whether commands go through this connection now."""
        return self._writer is not None

    def reconnect(self, why: str) -> None:
        """Replace the connection now: the server it reached is not the one to use any more.

        Its commands in flight go to the pool, and the next connection is
        made at once (one being made now is made again).
        """
        self._moves += 1
        self._moved = why
        self._wake_watchdog.set()
        self._woken.set()

    async def execute(self, *args: Any, deadline: float | None = None) -> Any:
        """Send one command and return its reply, or `UNAVAILABLE`.

        Only for commands that are safe to send again (through the pool)
        when the connection fails with them in flight: every command
        asyncstampede sends is.

        Args:
            *args: The command and its arguments.
            deadline: When to stop waiting for the reply (``time.monotonic()``
                seconds); by default the budget from now.

        Raises:
            RedisError: Redis replied with an error, or the connection failed
                with this command in flight.
            NoReply: no reply came by *deadline*.

        """
        writer = self._writer
        if writer is None:
            return UNAVAILABLE
        if writer.transport.get_write_buffer_size() > _HIGH_WATER:
            try:
                await writer.drain()  # a slow server: wait rather than buffer without bound
            except OSError:
                return UNAVAILABLE  # the connection is going: its reader ends the session
            if writer is not self._writer:
                return UNAVAILABLE  # the connection was replaced meanwhile
        if writer.transport.is_closing():
            # Lost, and its reader is about to say so (uvloop raises on a
            # write to a closing transport; asyncio drops it).
            return UNAVAILABLE
        packed = self._pack(*args)  # first: a command that cannot be packed has no slot
        now = time.monotonic()
        slot = _Slot(now, now + self._budget if deadline is None else deadline, self.replies)
        idle = not self._slots
        self._slots.append(slot)
        if self._expiry is None or slot.deadline < self._expiry_at:
            self._arm(slot.deadline)
        if idle and not self._flush_scheduled:
            # Nothing in flight: nothing to wait for either, write it now
            # (unless this loop turn's commands go out together, `gather`).
            writer.writelines(packed)
        else:
            # Replies are on their way: gather what this loop turn asks for
            # and write it in one go, after every task ready now has run.
            self._buffer.extend(packed)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        # A cancelled caller leaves its slot: the reply still arrives, in
        # order, and is dropped.
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.value

    def gather(self) -> None:
        """Write nothing more in this loop turn: what it asks for goes out in one write at its end.

        For commands better seen together than soon (a batch's releases:
        whoever waits for those locks elsewhere then finds them all free
        at once), where the first would otherwise be written alone.
        """
        if self._writer is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _arm(self, at: float) -> None:
        """Have `_expire` run at *at* (``time.monotonic()`` seconds)."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = at
        delay = max(0.0, at - time.monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        """Fail every command unanswered past its deadline; re-arm for the soonest left.

        Reports the connection as silent when no reply at all came for a
        whole budget while commands waited.
        """
        self._expiry = None
        now = time.monotonic()
        # Run late: this process's loop was busy (blocked), and the replies
        # may be waiting unread. Its silence proves nothing about Redis.
        # (Said in each failed command's error, so the log blames the blocking
        # call, not Redis: a sync hook or compute that sleeps, heavy CPU work.)
        blocked = blocked_loop(now - self._expiry_at)
        busy = bool(blocked)
        soonest = None
        silent = 0.0  # the longest silence an expired command saw: no reply at all since it went
        for slot in self._slots:
            if slot.error is not None:
                continue  # failed already: only its reply is awaited, to be dropped
            if slot.deadline <= now:
                waited = now - slot.sent
                slot.error = NoReply(f"no reply within {waited:.3f}s{blocked}")
                slot.done.set()
                if slot.heard == self.replies:
                    silent = max(silent, waited)
            elif soonest is None or slot.deadline < soonest:
                soonest = slot.deadline
        if silent >= self._budget and self._silent is None and not busy:
            self._silent = (
                f"no reply at all for {silent:.3f}s with {len(self._slots)} command(s) waiting"
            )
            self._wake_watchdog.set()
            if self._on_unavailable is not None:
                self._on_unavailable(
                    BackendUnavailableError(
                        f"Redis at {self._address} unavailable: {self._silent}",
                        address=self._address,
                    )
                )
        if soonest is not None:
            self._arm(soonest)

    def _flush(self) -> None:
        """Write every command queued this loop turn (a session's end empties the queue)."""
        self._flush_scheduled = False
        buffer, self._buffer = self._buffer, []
        writer = self._writer
        if writer is not None and buffer and not writer.transport.is_closing():
            writer.writelines(buffer)
        # (Written to a closing transport, they would raise under uvloop; as
        # it is, their slots fail when the reader ends the session.)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the connection up and read its replies, until cancelled."""
        backoff = 0.05
        started = False
        was_up = False  # a lost connection is worth a warning; each failed retry is not
        ever_up = False
        closing = False
        while True:
            link = self._new_link()
            connected = False
            moves = self._moves
            try:
                await link.connect(self._timeout)
                self._moved_since(moves)
                writer = link.writer()
                if writer is None:
                    self._problems.say(
                        logging.ERROR, "cannot pipeline on this connection; using the pool"
                    )
                    if not started:
                        task_status.started()
                    await anyio.sleep_forever()
                self._pack = link.pack
                self._writer = writer
                connected = True
                if ever_up:
                    self.reconnects += 1
                was_up = ever_up = True
                if not started:
                    started = True
                    task_status.started()
                backoff = 0.05
                self._silent = self._moved = None
                self._wake_watchdog = asyncio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watchdog)
                    await self._read_replies(link)
            except anyio.get_cancelled_exc_class():
                closing = True
                raise
            except Exception as exc:
                if _moved_in(exc):  # replaced on purpose: connect again at once
                    self._problems.say(logging.DEBUG, f"request connection replaced: {exc!r}")
                    continue
                if connected and self._on_lost is not None:
                    self._on_lost(exc)
                if not connected:
                    self.connect_errors += 1
                if not is_connection_trouble(exc):
                    self._problems.say(
                        logging.ERROR, "request connection failed; using the pool", exc_info=True
                    )
                else:
                    error = map_error(exc, address=self._address)
                    if isinstance(error, BackendRefusedError):
                        self.refused += 1
                        backoff = 10.0  # a refused login: no point in hammering
                        self._problems.report(error, "connecting the request connection")
                    elif was_up:
                        self._problems.report(error, "request connection lost; using the pool")
                    else:
                        self._problems.say(logging.DEBUG, f"request connection not up: {error}")
                    # A Redis that worked and cannot be reached now: an
                    # outage. (Before it ever worked, the request path says
                    # why, with its hints.)
                    refused = isinstance(error, BackendRefusedError)
                    if ever_up and not connected and not refused and self._on_unavailable:
                        self._on_unavailable(error)
                was_up = False
            finally:
                self._writer = None
                self._buffer = []
                if self._expiry is not None:
                    self._expiry.cancel()
                    self._expiry = None
                slots, self._slots = self._slots, deque()
                for slot in slots:
                    if slot.error is None:
                        # Sent again on the pool, by then (unless closing).
                        slot.error = Lost(slot.deadline, closing=closing)
                        slot.done.set()
                with anyio.CancelScope(shield=True):
                    await link.close()
            if not started:
                started = True
                task_status.started()
            with anyio.move_on_after(backoff * (0.5 + random.random())):
                await self._woken.wait()  # (a reconnect: the server to reach changed)
            if self._woken.is_set():
                self._woken = asyncio.Event()
                backoff = 0.05
            else:
                backoff = min(backoff * 2, 2.0) if backoff < 2.0 else backoff

    def _moved_since(self, moves: int) -> None:
        """Raise `_Moved` if `reconnect` was called since *moves* were counted."""
        if self._moves != moves:
            raise _Moved("moved while connecting")

    async def _read_replies(self, link: Link) -> None:
        slots = self._slots
        while True:
            try:
                reply = await link.read()
                error = None
            except ResponseError as exc:  # an error reply: only its own read fails
                reply, error = None, exc
            if not slots:
                raise ConnectionError(f"unexpected reply on the request connection: {reply!r}")
            slot = slots.popleft()
            if slot.error is None:  # else its deadline passed: nobody awaits it
                slot.value, slot.error = reply, error
                slot.done.set()
            self.replies += 1

    async def _watchdog(self) -> None:
        """End the session when it fell silent (see `_expire`), or its oldest read is too late."""
        while True:
            with anyio.move_on_after(min(1.0, self._timeout / 2)):
                await self._wake_watchdog.wait()
            if self._moved is not None:
                raise _Moved(self._moved)
            if self._silent is not None:
                raise TimeoutError(self._silent)
            if self._slots and time.monotonic() - self._slots[0].sent > self._timeout:
                silence = f"no reply within the socket timeout ({self._timeout}s)"
                if self._on_unavailable is not None:
                    self._on_unavailable(
                        BackendUnavailableError(
                            f"Redis at {self._address} unavailable: {silence}",
                            address=self._address,
                        )
                    )
                raise TimeoutError(silence)
