"""What a store tells the waiters of a lock: typed messages, never byte tags.

A waiter registers an interest in a lock (see ``interest``); the store
delivers one of these when the lock changes. Only `Value` carries data, and
it carries the stored bytes themselves: nothing is copied to tag or untag it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias, final

__all__ = ["Message", "Signal", "Value"]


@final
@dataclass(frozen=True, slots=True)
class Value:
    """The envelope stored just after the lock changed (no read needed to get it)."""

    payload: bytes


@final
class Signal(enum.Enum):
    """A lock change that carries no value: the waiter looks again."""

    CHANGED = "changed"
    """The lock changed (committed, extended, expired, released, taken over)."""
    ABSENT = "absent"
    """The lock changed and no value was stored just after: only the lock is in question."""
    RECHECK = "recheck"
    """The store may have lost changes (a reconnect, ``FLUSHALL``): everybody looks again."""


Message: TypeAlias = Value | Signal
