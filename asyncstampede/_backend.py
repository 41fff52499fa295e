"""What the coalescing core needs from a store: the `Backend` protocol.

Two implementations: `RedisBackend` (one Redis, shared by many processes) and
`MemoryBackend` (embedded mode, one process). The core's request path is the
same for both, so embedded mode behaves like production, serialization
errors included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

if TYPE_CHECKING:
    from ._keys import KeyNames
    from ._listener import Listener

__all__ = [
    "MSG_DONE",
    "MSG_FAILED",
    "MSG_VALUE",
    "Acquired",
    "Backend",
    "Held",
    "Hit",
]

# First byte of every message published on a key's channel.
MSG_VALUE = b"v"  # the committed envelope follows: waiters need no GET
MSG_DONE = b"d"  # committed, but too large to publish: waiters GET it
MSG_FAILED = b"e"  # the holder gave the lock up without a value: waiters retry


@final
@dataclass(frozen=True, slots=True)
class Hit:
    """The value exists."""

    payload: bytes


@final
@dataclass(frozen=True, slots=True)
class Acquired:
    """The value is missing and the lock is now ours."""


@final
@dataclass(frozen=True, slots=True)
class Held:
    """The value is missing and another holder has the lock for *pttl_ms* more."""

    pttl_ms: int


ACQUIRED = Acquired()


class Backend(Protocol):
    """Atomic operations on one key's value, lock and channel."""

    @property
    def listener(self) -> Listener:
        """Where waiters register for a key's channel."""
        ...

    async def prepare(self) -> None:
        """Get ready for the first request (best effort, never raises)."""
        ...

    async def acquire(
        self, names: KeyNames, token: bytes, lock_ms: int, *, read: bool
    ) -> Hit | Acquired | Held:
        """Return the value if *read* and it exists, else try to take the lock."""
        ...

    async def read(self, names: KeyNames) -> bytes | None:
        """Return the stored envelope, or None."""
        ...

    async def commit(
        self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int, *, publish_value: bool
    ) -> bool:
        """Write the value and release the lock if it is still ours; wake waiters."""
        ...

    async def release(self, names: KeyNames, token: bytes) -> bool:
        """Give the lock up without a value (the compute failed); wake waiters."""
        ...

    async def extend(self, names: KeyNames, token: bytes, lock_ms: int) -> bool:
        """Push the lock's expiry out if it is still ours."""
        ...

    async def write_if_absent(
        self, names: KeyNames, payload: bytes, ttl_ms: int, *, publish_value: bool
    ) -> bool:
        """Write the value only when there is none (used without the lock)."""
        ...

    async def invalidate(self, names: KeyNames) -> None:
        """Delete the value and any lock, so an older compute cannot write it back."""
        ...

    async def aclose(self) -> None:
        """Release what the backend owns."""
        ...
