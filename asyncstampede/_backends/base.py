"""What the request path needs from a store: the `Backend` protocol and its answers.

Two implementations: ``redis.RedisBackend`` (one Redis, shared by many
processes) and ``memory.MemoryBackend`` (embedded mode, one process). The
request path is the same for both, so embedded mode behaves like
production, serialization errors included. Lock changes reach waiters as
typed messages (``messages``) through a `Listener` (``interest``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

if TYPE_CHECKING:
    from collections.abc import Sequence

    import anyio.abc

    from .._exceptions import BackendError
    from .._keys import KeyNames
    from .breaker import BreakerView
    from .interest import Listener

__all__ = ["ACQUIRED", "Acquired", "Backend", "Held", "Hit"]


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
    """The value is missing and another holder has the lock for *pttl_ms* more.

    *watched*: the lock's changes will be delivered to its interests. False
    when the store could not arrange that (Redis refused client tracking,
    or the watching connections are down): the waiter must look by itself.
    """

    pttl_ms: int
    watched: bool = True


ACQUIRED = Acquired()


class Backend(Protocol):
    """Atomic operations on one key's value and lock."""

    @property
    def listener(self) -> Listener:
        """Where waiters register interest in a key's lock."""
        ...

    @property
    def wake(self) -> str:
        """How waiters learn of lock changes now (see `Statistics.wake`)."""
        ...

    @property
    def reconnects(self) -> int:
        """Connections of the backend's own re-established after one was lost."""
        ...

    @property
    def connect_errors(self) -> int:
        """Failed attempts to (re)connect the backend's own connections."""
        ...

    @property
    def refused_connections(self) -> int:
        """Of those failed attempts, the ones the store refused."""
        ...

    @property
    def breaker(self) -> BreakerView | None:
        """The circuit breaker in front of the store (None: nothing to break)."""
        ...

    def overran(self, doing: str, budget: float, late: float = 0.0) -> BackendError:
        """Return the error for the store's work that ran past the call's budget.

        *doing* names the work, *budget* the seconds it had; *late*: how
        many seconds after the budget the event loop got round to noticing
        (more than a few milliseconds: something blocked the loop, and the
        reply may have been there unread).
        """
        ...

    def gather(self) -> None:
        """Send nothing more in this loop turn: what it asks for goes out together at its end.

        For commands better seen together than soon: the commits or
        releases of one ``batch_fn`` call's keys (see ``_batch``).
        """
        ...

    async def prepare(self) -> None:
        """Get ready for the first request (best effort, never raises)."""
        ...

    async def check(self, names: KeyNames) -> None:
        """Use every kind of command once, on the probe key *names*; raise what fails.

        Raises:
            BackendError: the store refused something, or cannot be reached.

        """
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the backend's background tasks (the listener among them) until cancelled."""
        ...

    async def acquire(
        self,
        names: KeyNames,
        token: bytes,
        lock_ms: int,
        *,
        read: bool,
        seen: bytes | None = None,
        watch: bool = True,
        recheck: bool = False,
    ) -> Hit | Acquired | Held:
        """Return the value, take the lock, or report who holds it.

        Args:
            names: The key's names.
            token: This resolution's lock token.
            lock_ms: The lock's TTL.
            read: Read the value first.
            seen: A stored payload the caller already has and will not use
                (corrupt, or too stale): it is never returned as a `Hit`.
            watch: When the lock is held, have its changes delivered to the
                interests registered in ``names.lock`` (a waiter); False for
                a caller that will not wait.
            recheck: A waiter looking again: ask about the lock before trying
                to take it (usually it is still held, and one command says so).

        """
        ...

    async def read(self, names: KeyNames) -> bytes | None:
        """Return the stored envelope, or None."""
        ...

    async def read_many(
        self, names: Sequence[KeyNames], tags: Sequence[bytes] = ()
    ) -> list[bytes | BackendError | None]:
        """Return the stored envelope (or None) of each of *names*, in their order, at once.

        Then, in the same round trip, the generation (or None) of each of
        *tags* (see ``_tags``). One round trip for all (one ``MGET`` on
        Redis). The names of one instance share no hash slot: on a Redis
        Cluster this sends one ``MGET`` per slot, at once, and the items of
        a primary that failed are its error (raised only when all failed).
        """
        ...

    async def commit(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """Write the value and release the lock if it is still ours; wake waiters."""
        ...

    async def release(self, names: KeyNames, token: bytes) -> bool:
        """Give the lock up without a value (the compute failed); wake waiters."""
        ...

    async def extend(self, names: KeyNames, token: bytes, lock_ms: int) -> bool:
        """Push the lock's expiry out if it is still ours."""
        ...

    async def write_if_absent(
        self, names: KeyNames, payload: bytes, ttl_ms: int, holder: bytes | None
    ) -> bool:
        """Write the value only when there is none and the lock is still *holder* (no lock held).

        Used by a compute that ran without the lock; *holder* is what the
        lock held when it started, so an invalidation since (which deletes
        the lock) keeps its value out.
        """
        ...

    async def restamp(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """Re-stamp a stale value while holding the lock; release the lock; wake waiters.

        Never lengthens the value's current expiry (at most *ttl_ms* from
        now) and never writes a value that has gone. True when written.
        """
        ...

    async def lock_holder(self, names: KeyNames) -> bytes | None:
        """Return what the lock holds now (a token, the commit marker), or None."""
        ...

    async def invalidate(self, names: KeyNames) -> None:
        """Delete the value and any lock, so an older compute cannot write it back."""
        ...

    async def read_tagged(
        self, names: KeyNames, tags: list[bytes]
    ) -> tuple[bytes | None, list[bytes | None]]:
        """Return the value and the generations of *tags* (None: missing), in one round trip."""
        ...

    async def generations(self, tags: list[bytes], *, renew: bool) -> list[bytes]:
        """Return *tags*' generations, making missing ones (*renew*: new ones for all)."""
        ...

    async def put(self, names: KeyNames, payload: bytes, ttl_ms: int) -> None:
        """Write *payload* for *ttl_ms* whoever holds the lock; its holder cannot commit after.

        The lock's waiters are told, with the value.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend owns."""
        ...
