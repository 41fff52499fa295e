"""Client tracking: ``REDIRECT`` to a RESP2 reader, or in-band pushes on RESP3."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, final

import anyio
from redis.exceptions import ResponseError

from ...._exceptions import BackendRefusedError
from ...interest import UNTRACKED, Listener
from ...messages import Signal, Value
from ..errors import WAKE_ACL
from ..wire import Link
from .base import Transport, WakeConfig

__all__ = ["INVALIDATIONS", "Tracking", "TrackingResp3"]


INVALIDATIONS: Final = b"__redis__:invalidate"
_REFUSED: Final = object()  # an error reply to a command on a reply connection


@final
class _Pending:
    """A command sent on a reply connection, waiting for its reply."""

    __slots__ = ("done", "lock", "reply")

    def __init__(self, lock: bytes | None = None) -> None:
        self.lock = lock  # set for a value read on behalf of this lock's waiters
        self.reply: Any = UNTRACKED
        self.done = anyio.Event()


_PING_LOCK: Final = b""  # the lock of a pending PING: its reply is dropped


class _Replies:
    """A connection whose replies come in the order the commands went out."""

    def __init__(
        self, owner: Listener, config: WakeConfig, stop: Callable[[], None], transport: str
    ) -> None:
        self._owner = owner
        self._config = config
        self._transport = transport  # (its name, for the log)
        self._stop = stop
        self.link: Link | None = None
        self._sent: deque[_Pending] = deque()
        self._send_lock = anyio.Lock()

    async def ask(self, command: str, name: bytes) -> Any:
        """Send *command* on *name*; return its reply (`UNTRACKED` when the connection fails)."""
        link = self.link
        if link is None:
            return UNTRACKED
        pending = _Pending()
        try:
            async with self._send_lock:
                if self.link is not link:
                    return UNTRACKED
                self._sent.append(pending)
                await link.send(command, name)
        except Exception as exc:
            self._config.problems.say(
                logging.DEBUG, f"tracking connection failed: {exc!r}", transport=self._transport
            )
            pending.done.set()
            return UNTRACKED  # its reader fails too, and the listener reconnects
        with anyio.move_on_after(self._config.reply_timeout):
            await pending.done.wait()
        if not pending.done.is_set():
            # A half-open connection: nothing else would notice it.
            # (INFO: it passes by itself, waiters poll for the moment; an
            # outage is the breaker's WARNING.)
            self._config.problems.say(
                logging.INFO,
                "the tracking connection stopped answering; reconnecting (waiters look by "
                "themselves meanwhile)",
                transport=self._transport,
            )
            self._stop()
        return pending.reply

    async def fetch(self, locks: list[bytes]) -> None:
        """Read the values of *locks* for their waiters (delivered as `Value` or ``ABSENT``)."""
        link = self.link
        if link is None:
            for lock in locks:
                self._owner.deliver(lock, Signal.CHANGED)
            return
        value_name = self._config.value_name
        async with self._send_lock:
            self._sent.extend(_Pending(lock) for lock in locks)
            await link.send_many([("GET", value_name(lock)) for lock in locks])

    async def ping(self) -> None:
        """Send a PING whose reply is dropped."""
        link = self.link
        if link is not None:
            async with self._send_lock:
                self._sent.append(_Pending(_PING_LOCK))
                await link.send("PING")

    def take(self, reply: Any) -> None:
        """Hand *reply* (or `_REFUSED`) to the oldest command still waiting."""
        if not self._sent:
            raise ConnectionError(f"unexpected reply on the tracking connection: {reply!r}")
        pending = self._sent.popleft()
        lock = pending.lock
        if lock is None:
            pending.reply = UNTRACKED if reply is _REFUSED else reply
            pending.done.set()
        elif lock is _PING_LOCK:
            pass
        elif reply is _REFUSED:
            # A refused read (say WRONGTYPE under the namespace): its
            # waiters ask again on the request path, where it is logged.
            self._owner.deliver(lock, Signal.CHANGED)
        elif reply is None:
            self._owner.deliver(lock, Signal.ABSENT)
        else:
            self._owner.deliver(lock, Value(reply if type(reply) is bytes else bytes(reply)))

    def abandon(self) -> None:
        """Forget the connection (gone): every caller still waiting reads some other way."""
        self.link = None
        sent, self._sent = self._sent, deque()
        for pending in sent:
            pending.done.set()

    async def invalidated(self, names: list[bytes] | None) -> None:
        """Tell the waiters of *names* (None: of every lock, after a flush) what changed."""
        if names is None:  # FLUSHALL / FLUSHDB, or the tracking table overflowed
            self._owner.recheck_all()
            return
        watched = [name for name in names if self._owner.wanted(name)]
        if watched:
            await self.fetch(watched)


@final
class Tracking(Transport):
    """``CLIENT TRACKING ON REDIRECT`` to a RESP2 reader subscribed to invalidations.

    Two connections, each read by one task: the reader (invalidations) and
    the tracker (replies, in the order sent). When a watched lock changes,
    the reader sends ``GET value`` on the tracker before anybody wakes up,
    and hands the value to the waiters with the reply (`Value`), or tells
    them there was none (``ABSENT``).
    """

    name = "tracking"
    needs = WAKE_ACL["tracking"]

    def __init__(self, owner: Listener, config: WakeConfig) -> None:
        super().__init__(owner, config)
        self._replies = _Replies(owner, config, self.stop, self.name)
        self._reader: Link | None = None

    async def open(self) -> None:
        reader = await self._connect()
        client_id = int(await self._ask(reader, "CLIENT", "ID"))
        await self._ask(reader, "SUBSCRIBE", INVALIDATIONS)  # the confirmation
        tracker = await self._connect()
        await self._ask(tracker, "CLIENT", "TRACKING", "ON", "REDIRECT", client_id)
        self._reader, self._replies.link = reader, tracker

    async def watch(self, name: bytes, command: str) -> Any:
        return await self._replies.ask(command, name)

    async def serve(self) -> None:
        reader, tracker = self._reader, self._replies.link
        assert reader is not None
        assert tracker is not None
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._read_replies, tracker)
                tg.start_soon(self._heartbeat, lambda: reader.send("PING"))
                while True:
                    message = await reader.read()
                    self._heard()
                    if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                        await self._replies.invalidated(message[2])
        finally:
            self._replies.abandon()

    async def _read_replies(self, tracker: Link) -> None:
        while True:
            try:
                reply = await tracker.read()
            except ResponseError:
                reply = _REFUSED
            self._replies.take(reply)


@final
class TrackingResp3(Transport):
    """``CLIENT TRACKING ON`` on one RESP3 connection; invalidations come in-band."""

    name = "tracking-resp3"
    needs = WAKE_ACL["tracking-resp3"] + " (and RESP3: Redis 6 or later)"

    def __init__(self, owner: Listener, config: WakeConfig) -> None:
        super().__init__(owner, config)
        self._replies = _Replies(owner, config, self.stop, self.name)

    async def open(self) -> None:
        link = await self._connect(3)
        if not link.keep_pushes():
            raise BackendRefusedError(
                "the installed redis-py cannot hand over RESP3 pushes; "
                "tracking-resp3 is not available",
                address=self._config.address,
                command=None,
                hint=None,
            )
        await self._ask(link, "CLIENT", "TRACKING", "ON")
        self._replies.link = link

    async def watch(self, name: bytes, command: str) -> Any:
        return await self._replies.ask(command, name)

    async def serve(self) -> None:
        link = self._replies.link
        assert link is not None
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._heartbeat, self._replies.ping)
                while True:
                    try:
                        reply = await link.read()
                    except ResponseError:
                        reply = _REFUSED
                    self._heard()
                    # No command sent here has a list for its reply: a list
                    # is an invalidation push.
                    if isinstance(reply, list) and reply and reply[0] == b"invalidate":
                        await self._replies.invalidated(reply[1] if len(reply) > 1 else None)
                    else:
                        self._replies.take(reply)
        finally:
            self._replies.abandon()
