"""Waking waiters: per-key interests, and with Redis one invalidation reader.

A waiter registers an `Interest` in its key's lock name *before* it asks the
store about the lock, so nothing that happens to the lock after the question
can be missed.

With Redis the question is also the subscription. The lock's remaining TTL
is read with ``PTTL`` on a connection that has client tracking on
(``CLIENT TRACKING ON REDIRECT <reader>``), and from then on Redis itself
sends an invalidation message the moment the lock changes: deleted by the
holder's commit or release, extended, expired, or taken over. A waiting
process pays one command for that, where per-key pub/sub costs SUBSCRIBE, a
re-check after the subscription is confirmed, and UNSUBSCRIBE, and the holder
has nothing to publish.

The invalidations arrive on a RESP2 connection subscribed to
``__redis__:invalidate``, read by exactly one task. After every (re)connect
each interest is told to re-check (``RECHECK``): invalidations sent during a
gap are lost, and Redis forgets what a connection tracked when it closes.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, final

import anyio
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from ._backend import MSG_DONE, MSG_VALUE
from ._exceptions import BackendError, BackendRefusedError
from ._redis_errors import ProblemLog, address_of, map_error

__all__ = [
    "ABSENT",
    "INVALIDATIONS",
    "RECHECK",
    "UNTRACKED",
    "Interest",
    "Listener",
    "RedisListener",
    "is_connection_trouble",
]

log = logging.getLogger("asyncstampede")

RECHECK = b"r"  # internal: (re)connected, or told to forget every tracked key
CHANGED = MSG_DONE  # the lock changed: look again
ABSENT = b"a"  # the lock changed and there was no value just after: ask about the lock
INVALIDATIONS = b"__redis__:invalidate"


class _Untracked:
    """The type of `UNTRACKED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNTRACKED"


UNTRACKED = _Untracked()  # watch() could not send its read on a tracking connection
_REFUSED = object()  # an error reply on the tracking connection


def is_connection_trouble(exc: BaseException) -> bool:
    """Whether *exc* (or every exception in a group) is a Redis, socket or timeout error."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_connection_trouble(e) for e in exc.exceptions)
    return isinstance(exc, (RedisError, OSError, TimeoutError, BackendError))


@final
class Interest:
    """One waiter's mailbox for one lock."""

    __slots__ = ("_event", "_pending", "on_value", "resolved")

    def __init__(self) -> None:
        self._pending: bytes | None = None
        self._event = anyio.Event()
        # Called with a value message (embedded mode) before any task switch:
        # returns True when it has handed the value to the callers itself.
        self.on_value: Callable[[bytes], bool] | None = None
        self.resolved = False

    def close(self) -> None:
        """Take nothing more (its owner now holds the lock itself)."""
        self.on_value = None
        self.resolved = True

    def push(self, message: bytes) -> None:
        """Deliver *message*; a value message is never replaced by a later signal."""
        if self.resolved:
            return
        if message[:1] == MSG_VALUE and self.on_value is not None and self.on_value(message):
            # The callers are woken straight from the deliverer: one task
            # switch fewer between the commit and the callers resuming.
            self.resolved = True
        elif self._pending is None or self._pending[:1] != MSG_VALUE:
            self._pending = message
        self._event.set()

    async def wait(self, within: float) -> bytes | None:
        """Return the next message, or None when *within* seconds pass first."""
        if self._pending is None:
            with anyio.move_on_after(max(within, 0.0)):
                await self._event.wait()
        message, self._pending = self._pending, None
        if message is not None:
            self._event = anyio.Event()
        return message


class Listener:
    """In-process dispatch of messages to interests (all of embedded mode)."""

    def __init__(self) -> None:
        self._interests: dict[bytes, set[Interest]] = {}
        self._waiting_since = 0.0  # when the interests last went from none to some
        self.reconnects = 0  # connections re-established after one was lost
        self.connect_errors = 0  # attempts to (re)connect that failed
        self.refused = 0  # of those, refused by the server (ACL, password...)

    def register(self, name: bytes) -> Interest:
        """Return a new interest in *name*; `unregister` it when done."""
        interest = Interest()
        interests = self._interests.get(name)
        if interests is None:
            if not self._interests:
                self._waiting_since = anyio.current_time()
            self._interests[name] = {interest}
        else:
            interests.add(interest)
        return interest

    def unregister(self, name: bytes, interest: Interest) -> None:
        """Drop *interest*; nothing more is delivered to it."""
        interests = self._interests.get(name)
        if interests is not None:
            interests.discard(interest)
            if not interests:
                del self._interests[name]

    def deliver(self, name: bytes, message: bytes) -> None:
        """Hand *message* to every interest in *name*."""
        interests = self._interests.get(name)
        if interests is not None:
            for interest in interests:
                interest.push(message)

    def recheck_all(self) -> None:
        """Tell every interest to look again."""
        for interests in self._interests.values():
            for interest in interests:
                interest.push(RECHECK)

    async def watch(self, name: bytes, command: str = "PTTL") -> Any:
        """Read lock *name* with *command* (``PTTL`` or ``GET``) and have its changes delivered.

        Returns the reply, or `UNTRACKED` when that cannot be arranged now
        (the caller reads some other way; the next reconnect tells every
        interest to re-check). Embedded mode delivers every change by itself.
        """
        return UNTRACKED

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Nothing to read in embedded mode."""
        task_status.started()


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
    with the reply (``MSG_VALUE``), or tells them there was none (``ABSENT``):
    the waiting task is not woken just to send that read.
    """

    def __init__(
        self,
        connection_class: type[AbstractConnection],
        connection_kwargs: dict[str, Any],
        value_name: Callable[[bytes], bytes],
        *,
        read_timeout: float = 1.0,
        ping_after: float = 5.0,
        idle_ping_after: float = 60.0,
        dead_after: float = 10.0,
        problems: ProblemLog | None = None,
    ) -> None:
        super().__init__()
        self._address = address_of(connection_kwargs)
        self._problems = problems if problems is not None else ProblemLog()
        kwargs = dict(connection_kwargs)
        # RESP2 (invalidations come as pub/sub messages on the reader's
        # connection), and no silent retries: a lost connection must surface
        # here so that every waiter re-checks after the reconnect.
        kwargs["protocol"] = 2
        kwargs["retry"] = Retry(NoBackoff(), 0)
        # Reads here wait as long as they must (an idle connection is fine);
        # each bound is explicit below: handshake replies and PTTL replies
        # within the pool's socket timeout, a silent reader by its pings.
        self._reply_timeout = float(kwargs.get("socket_timeout") or 5.0)
        kwargs["socket_timeout"] = None
        self._connection_class = connection_class
        self._connection_kwargs = kwargs
        self._value_name = value_name
        self._tracker: AbstractConnection | None = None
        self._sent: deque[_Pending] = deque()  # commands sent on the tracker, oldest first
        self._send_lock = anyio.Lock()
        self._read_timeout = read_timeout
        self._ping_after = ping_after
        self._idle_ping_after = idle_ping_after
        self._dead_after = dead_after
        self._session: anyio.CancelScope | None = None

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
                await tracker.send_command(command, name, check_health=False)
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

    def _end_session(self, tracker: AbstractConnection) -> None:
        """Drop both connections (if *tracker* is still the current one)."""
        if self._tracker is tracker and self._session is not None:
            self._session.cancel()

    async def _read_replies(self, tracker: AbstractConnection) -> None:
        """Hand each reply on the tracking connection to its caller; fail when it closes."""
        while True:
            try:
                reply = await tracker.read_response(disconnect_on_error=False)  # no timeout
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
                self.deliver(pending.lock, CHANGED)
            elif reply is None:
                self.deliver(pending.lock, ABSENT)
            else:
                self.deliver(pending.lock, MSG_VALUE + bytes(reply))

    async def _handshake(self, conns: list[AbstractConnection]) -> None:
        """Connect the reader and the tracker, appending them to *conns* (the caller closes them).

        Raises:
            BackendError: Redis failed or refused a step (named in the error).

        """
        reader = self._connection_class(**self._connection_kwargs)
        tracker = self._connection_class(**self._connection_kwargs)
        conns += (reader, tracker)
        step: str | None = None  # the command in flight, for the error
        try:
            # The connections' own reads have no timeout (see __init__): a
            # server that accepts and never answers must not hang here.
            with anyio.fail_after(self._reply_timeout):
                await reader.connect()  # type: ignore[no-untyped-call]
            step = "CLIENT ID"
            client_id = int(await self._ask(reader, "CLIENT", "ID"))
            step = "SUBSCRIBE"
            await self._ask(reader, "SUBSCRIBE", INVALIDATIONS)  # the confirmation
            step = None
            with anyio.fail_after(self._reply_timeout):
                await tracker.connect()  # type: ignore[no-untyped-call]
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
        conns: list[AbstractConnection] = []
        try:
            await self._handshake(conns)
        finally:
            with anyio.CancelScope(shield=True):
                for conn in conns:
                    await conn.disconnect(nowait=True)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read invalidations until cancelled, reconnecting with backoff."""
        backoff = 0.05
        started = False
        was_up = False
        while True:
            conns: list[AbstractConnection] = []
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
                self._problems.report(exc, "watching locks (waiters wake at lock expiry meanwhile)")
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
                        await conn.disconnect(nowait=True)
            if not started:
                # Redis is unreachable at start-up: do not block the caller;
                # waiters fall back to their timers until we connect.
                started = True
                task_status.started()
            await anyio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0) if backoff < 2.0 else backoff

    async def _ask(self, conn: AbstractConnection, *args: Any) -> Any:
        """Send one command during the handshake; its reply must come within the timeout."""
        await conn.send_command(*args, check_health=False)
        reply = await conn.read_response(timeout=self._reply_timeout, disconnect_on_error=False)
        if reply is None:
            raise ConnectionError(f"no reply to {args[0]} within {self._reply_timeout}s")
        return reply

    async def _read_loop(self, reader: AbstractConnection) -> None:
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
            response = await reader.read_response(
                timeout=self._read_timeout, disconnect_on_error=False
            )
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
                await reader.send_command("PING", check_health=False)
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
                self.deliver(name, CHANGED)
            return
        async with self._send_lock:
            self._sent.extend(_Pending(lock) for lock in watched)
            commands = [("GET", self._value_name(lock)) for lock in watched]
            await tracker.send_packed_command(tracker.pack_commands(commands), check_health=False)
