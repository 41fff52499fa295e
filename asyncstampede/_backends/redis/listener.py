"""Waking waiters with Redis: one invalidation reader, and its tracking connection.

A waiter registers an `Interest` in its key's lock name (see ``interest``)
*before* it asks Redis about the lock. The question is also the
subscription. The lock's remaining TTL is read with ``PTTL`` on a connection
that has client tracking on (``CLIENT TRACKING ON REDIRECT <reader>``), and
from then on Redis itself sends an invalidation message the moment the lock
changes: deleted by the holder's commit or release, extended, expired, or
taken over. A waiting process pays one command for that, where per-key
pub/sub costs SUBSCRIBE, a re-check after the subscription is confirmed, and
UNSUBSCRIBE, and the holder has nothing to publish.

The invalidations arrive on a RESP2 connection subscribed to
``__redis__:invalidate``, read by exactly one task. After every (re)connect
each interest is told to re-check (`Signal.RECHECK`): invalidations sent
during a gap are lost, and Redis forgets what a connection tracked when it
closes.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, final

import anyio
import anyio.abc
from redis.exceptions import ResponseError

from ..._exceptions import BackendRefusedError
from ..._problems import ProblemLog
from ..interest import UNTRACKED, Listener
from ..messages import Signal, Value
from .errors import is_connection_trouble, map_error
from .wire import Link, LinkFactory

__all__ = ["INVALIDATIONS", "RedisListener"]

log = logging.getLogger("asyncstampede")

INVALIDATIONS = b"__redis__:invalidate"
_REFUSED = object()  # an error reply on the tracking connection


class _Pending:
    """A command sent on the tracking connection, waiting for its reply."""

    __slots__ = ("done", "lock", "reply")

    def __init__(self, lock: bytes | None = None) -> None:
        self.lock = lock  # set for a value read on behalf of this lock's waiters
        self.reply: Any = UNTRACKED
        self.done = anyio.Event()


@final
class RedisListener(Listener):
    """The invalidation reader of a `Stampede` over Redis, and its tracking connection.

    Two connections, each read by one task: the reader (subscribed to
    invalidations) and the tracker (replies, in the order sent). When either
    fails, both are replaced and every interest re-checks.

    When a watched lock changes, the reader itself sends ``GET value`` on the
    tracker before anybody wakes up, and hands the value to the waiters
    with the reply (`Value`), or tells them there was none (`Signal.ABSENT`):
    the waiting task is not woken just to send that read.
    """

    def __init__(
        self,
        new_link: LinkFactory,
        value_name: Callable[[bytes], bytes],
        *,
        address: str,
        reply_timeout: float,
        read_timeout: float = 1.0,
        ping_after: float = 5.0,
        idle_ping_after: float = 60.0,
        dead_after: float = 10.0,
        problems: ProblemLog | None = None,
    ) -> None:
        super().__init__()
        self._address = address
        self._problems = problems if problems is not None else ProblemLog()
        # *new_link* makes RESP2 connections (invalidations come as pub/sub
        # messages on the reader's) that never retry by themselves: a lost
        # connection must surface here so that every waiter re-checks after
        # the reconnect. Their reads wait as long as they must (an idle
        # connection is fine); each bound is explicit below: handshake and
        # PTTL replies within *reply_timeout*, a silent reader by its pings.
        self._new_link = new_link
        self._reply_timeout = reply_timeout
        self._value_name = value_name
        self._tracker: Link | None = None
        self._sent: deque[_Pending] = deque()  # commands sent on the tracker, oldest first
        self._send_lock = anyio.Lock()
        self._read_timeout = read_timeout
        self._ping_after = ping_after
        self._idle_ping_after = idle_ping_after
        self._dead_after = dead_after
        self._session: anyio.CancelScope | None = None

    @property
    def tracking(self) -> bool:
        """Whether the tracking connection is up (lock changes are reported)."""
        return self._tracker is not None

    async def watch(self, name: bytes, command: str = "PTTL") -> Any:
        """See `Listener.watch`: the read is sent on the tracking connection."""
        tracker = self._tracker
        if tracker is None:
            return UNTRACKED
        pending = _Pending()
        try:
            async with self._send_lock:
                if self._tracker is not tracker:
                    return UNTRACKED
                self._sent.append(pending)
                await tracker.send(command, name)
        except Exception as exc:
            log.debug("tracking connection failed: %r", exc)
            pending.done.set()
            return UNTRACKED  # the tracker's reader fails too, and both reconnect
        with anyio.move_on_after(self._reply_timeout):
            await pending.done.wait()
        if not pending.done.is_set():
            # A half-open connection: nothing else would notice it.
            log.warning("asyncstampede tracking connection stopped answering; reconnecting")
            self._end_session(tracker)
        return pending.reply

    def _end_session(self, tracker: Link) -> None:
        """Drop both connections (if *tracker* is still the current one)."""
        if self._tracker is tracker and self._session is not None:
            self._session.cancel()

    async def _read_replies(self, tracker: Link) -> None:
        """Hand each reply on the tracking connection to its caller; fail when it closes."""
        while True:
            try:
                reply = await tracker.read()  # no timeout
            except ResponseError:
                # A refused read (say WRONGTYPE under the namespace) fails
                # only its own caller, who asks again on the request path,
                # where the refusal is counted and logged.
                reply = _REFUSED
            if not self._sent:
                raise ConnectionError(f"unexpected reply on the tracking connection: {reply!r}")
            pending = self._sent.popleft()
            if pending.lock is None:
                pending.reply = UNTRACKED if reply is _REFUSED else reply
                pending.done.set()
            elif reply is _REFUSED:
                self.deliver(pending.lock, Signal.CHANGED)
            elif reply is None:
                self.deliver(pending.lock, Signal.ABSENT)
            else:
                self.deliver(pending.lock, Value(reply if type(reply) is bytes else bytes(reply)))

    async def _handshake(self, conns: list[Link]) -> None:
        """Connect the reader and the tracker, appending them to *conns* (the caller closes them).

        Raises:
            BackendError: Redis failed or refused a step (named in the error).

        """
        reader = self._new_link()
        tracker = self._new_link()
        conns += (reader, tracker)
        step: str | None = None  # the command in flight, for the error
        try:
            # The connections' own reads have no timeout (see __init__): a
            # server that accepts and never answers must not hang here.
            await reader.connect(self._reply_timeout)
            step = "CLIENT ID"
            client_id = int(await self._ask(reader, "CLIENT", "ID"))
            step = "SUBSCRIBE"
            await self._ask(reader, "SUBSCRIBE", INVALIDATIONS)  # the confirmation
            step = None
            await tracker.connect(self._reply_timeout)
            step = "CLIENT TRACKING"
            await self._ask(tracker, "CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
        except Exception as exc:
            if not is_connection_trouble(exc):
                raise
            raise map_error(exc, address=self._address, command=step) from exc

    async def check(self) -> None:
        """Connect both connections once, as `run` does, and disconnect them.

        Raises:
            BackendError: the handshake failed (a refusal names the ACL rule to grant).

        """
        conns: list[Link] = []
        try:
            await self._handshake(conns)
        finally:
            with anyio.CancelScope(shield=True):
                for conn in conns:
                    await conn.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read invalidations until cancelled, reconnecting with backoff."""
        backoff = 0.05
        started = False
        was_up = False
        while True:
            conns: list[Link] = []
            try:
                await self._handshake(conns)
                reader, tracker = conns
                self._tracker = tracker
                if was_up:
                    self.reconnects += 1
                was_up = True
                if not started:
                    started = True
                    task_status.started()
                backoff = 0.05
                # Whatever was tracked before is forgotten, and changes made
                # while we were away were never told: everybody looks again.
                self.recheck_all()
                async with anyio.create_task_group() as tg:
                    self._session = tg.cancel_scope
                    tg.start_soon(self._read_replies, tracker)
                    await self._read_loop(reader)
            except BackendRefusedError as exc:
                # E.g. a proxy or an ACL that refuses CLIENT TRACKING: waiters
                # still wake at the lock's expiry, just not at the commit.
                # Ask again now and then: the ACL may be fixed.
                self.connect_errors += 1
                self.refused += 1
                backoff = 30.0
                self._problems.report(
                    exc, "watching locks (waiters poll meanwhile, a few looks per wait)"
                )
            except Exception as exc:
                # Never let the reader die: that would leave waiters on
                # timers alone. A bug is logged loudly; either way, start over.
                if self._tracker is None:
                    self.connect_errors += 1
                if not is_connection_trouble(exc):
                    log.exception("asyncstampede invalidation reader failed; reconnecting")
                elif self._tracker is not None or self.connect_errors == 1:
                    error = map_error(exc, address=self._address)
                    self._problems.report(error, "watching locks; reconnecting")
            finally:
                self._tracker = self._session = None
                sent, self._sent = self._sent, deque()
                for pending in sent:  # their callers fall back to a plain read
                    pending.done.set()
                with anyio.CancelScope(shield=True):
                    for conn in conns:
                        await conn.close()
            if not started:
                # Redis is unreachable at start-up: do not block the caller;
                # waiters fall back to their timers until we connect.
                started = True
                task_status.started()
            await anyio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0) if backoff < 2.0 else backoff

    async def _ask(self, conn: Link, *args: Any) -> Any:
        """Send one command during the handshake; its reply must come within the timeout."""
        await conn.send(*args)
        reply = await conn.read(self._reply_timeout)
        if reply is None:
            raise ConnectionError(f"no reply to {args[0]} within {self._reply_timeout}s")
        return reply

    async def _read_loop(self, reader: Link) -> None:
        """Read invalidations; ping a silent reader, and give it up when the ping goes unanswered.

        A silent reader is pinged once somebody has waited on it for
        ``ping_after`` seconds without hearing from it, and after
        ``idle_ping_after`` otherwise: a short wait (most herds) or no waiter
        needs no proof that the connection is alive, and a ping costs the
        server a command.
        """
        now = anyio.current_time
        last_heard = now()
        pinged_at: float | None = None
        while True:
            response = await reader.read(self._read_timeout)
            if response is not None:
                last_heard = now()
                pinged_at = None
                await self._handle(response)
                continue
            if pinged_at is not None:
                if now() - pinged_at >= self._dead_after - self._ping_after:
                    raise ConnectionError(f"no reply to PING for {now() - pinged_at:.1f}s")
                continue
            silent = now() - last_heard
            waited = now() - self._waiting_since if self._interests else 0.0
            if silent >= self._idle_ping_after or min(silent, waited) >= self._ping_after:
                await reader.send("PING")
                pinged_at = now()

    async def _handle(self, response: Any) -> None:
        if not (isinstance(response, list) and len(response) == 3 and response[0] == b"message"):
            return  # a PONG, or a confirmation
        names = response[2]
        if names is None:  # FLUSHALL / FLUSHDB, or the tracking table overflowed
            self.recheck_all()
            return
        watched = [name for name in names if name in self._interests]
        tracker = self._tracker
        if not watched:
            return
        if tracker is None:
            for name in watched:
                self.deliver(name, Signal.CHANGED)
            return
        async with self._send_lock:
            self._sent.extend(_Pending(lock) for lock in watched)
            await tracker.send_many([("GET", self._value_name(lock)) for lock in watched])
