"""Waking waiters: per-lock interests, and the in-process dispatch to them.

A waiter registers an `Interest` in its key's lock name *before* it asks the
store about the lock, so nothing that happens to the lock after the question
can be missed. A store (embedded, or Redis through its reader) delivers each
change as a `Message`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

import anyio
import anyio.abc

from .messages import Message, Signal, Value

__all__ = ["SUBSCRIBED", "UNTRACKED", "Interest", "Listener"]


@final
class _Untracked:
    """The type of `UNTRACKED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNTRACKED"


UNTRACKED: Final = _Untracked()  # watch() could not arrange for the lock's changes to be told


@final
class _Subscribed:
    """The type of `SUBSCRIBED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SUBSCRIBED"


SUBSCRIBED: Final = _Subscribed()  # watch() subscribed to the lock's changes: now read it


@final
class Interest:
    """One waiter's mailbox for one lock."""

    __slots__ = ("_event", "_pending", "on_value", "resolved")

    def __init__(self) -> None:
        self._pending: Message | None = None
        self._event = anyio.Event()
        # Called with a value message before any task switch: returns True
        # when it has handed the value to the callers itself.
        self.on_value: Callable[[Value], bool] | None = None
        self.resolved = False

    def close(self) -> None:
        """Take nothing more (its owner now holds the lock itself)."""
        self.on_value = None
        self.resolved = True

    def push(self, message: Message) -> None:
        """Deliver *message*; a value message is never replaced by a later signal."""
        if self.resolved:
            return
        if type(message) is Value and self.on_value is not None and self.on_value(message):
            # The callers are woken straight from the deliverer: one task
            # switch fewer between the commit and the callers resuming.
            self.resolved = True
        elif type(self._pending) is not Value:
            self._pending = message
        self._event.set()

    async def wait(self, within: float) -> Message | None:
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
                self.forget(name)

    def forget(self, name: bytes) -> None:
        """Nobody waits on *name* any more (a store may stop watching it)."""

    def wanted(self, name: bytes) -> bool:
        """Whether somebody waits on *name* now."""
        return name in self._interests

    def waited(self) -> float:
        """Seconds since somebody started waiting with nobody waiting before (0: nobody waits)."""
        return anyio.current_time() - self._waiting_since if self._interests else 0.0

    def deliver(self, name: bytes, message: Message) -> None:
        """Hand *message* to every interest in *name*."""
        interests = self._interests.get(name)
        if interests is not None:
            for interest in interests:
                interest.push(message)

    def recheck_all(self) -> None:
        """Tell every interest to look again."""
        for interests in self._interests.values():
            for interest in interests:
                interest.push(Signal.RECHECK)

    async def watch(self, name: bytes, command: str = "PTTL") -> Any:
        """Have lock *name*'s changes delivered, reading it with *command* (``PTTL``, ``GET``).

        Returns the reply of a read that is also the subscription (client
        tracking); `SUBSCRIBED` when the changes will be delivered and the
        caller now reads the lock itself (subscribe, then read: nothing in
        between is missed); or `UNTRACKED` when neither can be arranged now
        (the caller reads, and looks again by itself; the next reconnect
        tells every interest to re-check). Embedded mode delivers every
        change by itself.
        """
        return UNTRACKED

    async def check(self) -> None:
        """Nothing to check in embedded mode."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Nothing to read in embedded mode."""
        task_status.started()
