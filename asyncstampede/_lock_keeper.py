"""Held locks and their extensions: one task keeps every running compute's lock alive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, final

import anyio

from ._backends.base import Backend
from ._exceptions import BackendError
from ._keys import KeyNames

__all__ = ["LockKeeper"]


@final
class LockKeeper:
    """Extends every lock held by a running compute once it is a third of ``lock_ttl`` old.

    One task (`run`) serves every compute of an instance, so starting and
    ending a compute costs no task of its own (that would sit on the commit
    path). Each lock is extended when it is due, not on a fixed round: every
    extension also wakes that lock's waiters (they watch it), so none is
    sent early. A compute shorter than a third of ``lock_ttl`` is never
    extended.
    """

    __slots__ = ("_backend", "_changed", "_held", "_interval", "_lock_ms", "_report", "_within")

    def __init__(
        self,
        backend: Backend,
        lock_ms: int,
        report: Callable[[BackendError, str], None],
        within: Callable[[Coroutine[Any, Any, bool]], Awaitable[bool]],
    ) -> None:
        self._backend = backend
        self._within = within  # runs an extension within a Redis budget of its own
        self._lock_ms = lock_ms
        self._interval = lock_ms / 3000
        self._report = report  # counts and logs a failed extension
        # token -> (names, when its next extension is due)
        self._held: dict[bytes, tuple[KeyNames, float]] = {}
        self._changed = anyio.Event()

    @property
    def held(self) -> int:
        """Locks held right now (a gauge)."""
        return len(self._held)

    def hold(self, token: bytes, names: KeyNames) -> None:
        """Start keeping the lock *token* on *names* (just taken) alive."""
        self._held[token] = (names, anyio.current_time() + self._interval)
        self._changed.set()

    def drop(self, token: bytes) -> None:
        """Stop extending the lock *token* (its compute ended)."""
        self._held.pop(token, None)

    async def run(self) -> None:
        """Extend locks as they fall due, until cancelled."""
        interval = self._interval
        while True:
            if not self._held:
                self._changed = anyio.Event()
                await self._changed.wait()
                continue
            # A lock taken later is due later: the earliest due time only moves out.
            await anyio.sleep_until(min(due for _, due in self._held.values()))
            now = anyio.current_time()
            # All due at once (and those due within a twentieth of the
            # interval, to save a wake-up), sent together: with the commands
            # pipelined, a thousand extensions cost about one round trip.
            due_now = [
                (token, names)
                for token, (names, due) in self._held.items()
                if due <= now + interval * 0.05
            ]
            for token, names in due_now:
                self._held[token] = (names, now + interval)
            async with anyio.create_task_group() as tg:
                for token, names in due_now:
                    tg.start_soon(self._extend, token, names)

    async def _extend(self, token: bytes, names: KeyNames) -> None:
        try:
            if not await self._within(self._backend.extend(names, token, self._lock_ms)):
                self._held.pop(token, None)  # lost: commit will notice
        except BackendError as exc:
            # Tried again at the next due time; if it never works, the lock
            # expires under the compute and another process takes over.
            self._report(exc, "extending a lock held by a running compute")
