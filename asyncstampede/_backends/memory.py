"""The embedded backend: an in-process store with the same semantics as Redis."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import final

import anyio.abc

from .._exceptions import BackendError, BackendUnavailableError
from .._keys import KeyNames
from .._tags import new_generation
from .base import ACQUIRED, Acquired, Held, Hit
from .interest import Listener
from .messages import Signal, Value

__all__ = ["MemoryBackend"]


@final
class MemoryBackend:
    """`Backend` for one process: a bounded LRU of envelopes, locks with expiry."""

    def __init__(self, *, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._values: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._locks: dict[bytes, tuple[bytes, float]] = {}
        self._generations: dict[bytes, bytes] = {}  # tags' (see _tags): a few, never evicted
        self.listener = Listener()

    def _get(self, name: bytes) -> bytes | None:
        item = self._values.get(name)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._values[name]
            return None
        self._values.move_to_end(name)
        return item[0]

    def _lock_holder(self, name: bytes) -> tuple[bytes, float] | None:
        item = self._locks.get(name)
        if item is not None and item[1] <= time.monotonic():
            del self._locks[name]
            return None
        return item

    def _put(self, name: bytes, payload: bytes, ttl_ms: int) -> None:
        expires = time.monotonic() + max(ttl_ms, 1) / 1000
        self._values[name] = (payload, expires)
        self._values.move_to_end(name)
        while len(self._values) > self._max_entries:
            self._values.popitem(last=False)

    wake = "in-process"  # every change is delivered by the store itself
    reconnects = 0  # nothing to connect in memory
    connect_errors = 0
    refused_connections = 0
    breaker = None  # nothing in memory fails or hangs

    def overran(self, doing: str, budget: float, late: float = 0.0) -> BackendError:
        """Never needed: no operation in memory waits (see `Backend.overran`)."""
        return BackendUnavailableError(f"the embedded store took over {budget}s for {doing}")

    def gather(self) -> None:
        """Nothing is sent in memory: every change is seen at once (see `Backend.gather`)."""

    async def prepare(self) -> None:
        """Nothing to prepare in memory."""

    async def check(self, names: KeyNames) -> None:
        """Nothing can fail in memory."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Nothing runs in the background in memory."""
        task_status.started()

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
        """See `Backend.acquire` (one process: every change is delivered anyway)."""
        if read:
            payload = self._get(names.value)
            if payload is not None and payload != seen:
                return Hit(payload)
        holder = self._lock_holder(names.lock)
        if holder is None or holder[0] == token:
            self._locks[names.lock] = (token, time.monotonic() + lock_ms / 1000)
            return ACQUIRED
        return Held(max(0, int((holder[1] - time.monotonic()) * 1000)))

    async def read(self, names: KeyNames) -> bytes | None:
        """See `Backend.read`."""
        return self._get(names.value)

    async def read_many(
        self, names: Sequence[KeyNames], tags: Sequence[bytes] = ()
    ) -> list[bytes | BackendError | None]:
        """See `Backend.read_many` (never an error in memory)."""
        found: list[bytes | BackendError | None] = [self._get(n.value) for n in names]
        return found + [self._generations.get(t) for t in tags]

    async def commit(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.commit`."""
        holder = self._lock_holder(names.lock)
        if holder is None or holder[0] != token:
            return False
        self._put(names.value, payload, ttl_ms)
        del self._locks[names.lock]
        self.listener.deliver(names.lock, Value(payload))
        return True

    async def release(self, names: KeyNames, token: bytes) -> bool:
        """See `Backend.release`."""
        holder = self._lock_holder(names.lock)
        if holder is None or holder[0] != token:
            return False
        del self._locks[names.lock]
        self.listener.deliver(names.lock, Signal.CHANGED)
        return True

    async def extend(self, names: KeyNames, token: bytes, lock_ms: int) -> bool:
        """See `Backend.extend`."""
        holder = self._lock_holder(names.lock)
        if holder is None or holder[0] != token:
            return False
        self._locks[names.lock] = (token, time.monotonic() + lock_ms / 1000)
        return True

    async def write_if_absent(
        self, names: KeyNames, payload: bytes, ttl_ms: int, holder: bytes | None
    ) -> bool:
        """See `Backend.write_if_absent`."""
        if self._get(names.value) is not None:
            return False
        held = self._lock_holder(names.lock)
        if (held[0] if held is not None else None) != holder:
            return False
        self._put(names.value, payload, ttl_ms)
        self.listener.deliver(names.lock, Value(payload))
        return True

    async def restamp(self, names: KeyNames, token: bytes, payload: bytes, ttl_ms: int) -> bool:
        """See `Backend.restamp`."""
        holder = self._lock_holder(names.lock)
        if holder is None or holder[0] != token:
            return False
        del self._locks[names.lock]
        item = self._values.get(names.value)
        now = time.monotonic()
        if item is None or item[1] <= now:
            self.listener.deliver(names.lock, Signal.CHANGED)
            return False
        self._values[names.value] = (payload, min(item[1], now + max(ttl_ms, 1) / 1000))
        self.listener.deliver(names.lock, Value(payload))
        return True

    async def lock_holder(self, names: KeyNames) -> bytes | None:
        """See `Backend.lock_holder`."""
        holder = self._lock_holder(names.lock)
        return None if holder is None else holder[0]

    async def read_tagged(
        self, names: KeyNames, tags: list[bytes]
    ) -> tuple[bytes | None, list[bytes | None]]:
        """See `Backend.read_tagged`."""
        return self._get(names.value), [self._generations.get(tag) for tag in tags]

    async def generations(self, tags: list[bytes], *, renew: bool) -> list[bytes]:
        """See `Backend.generations`."""
        for tag in tags:
            if renew or tag not in self._generations:
                self._generations[tag] = new_generation()
        return [self._generations[tag] for tag in tags]

    async def put(self, names: KeyNames, payload: bytes, ttl_ms: int) -> None:
        """See `Backend.put`."""
        self._put(names.value, payload, ttl_ms)
        if self._locks.pop(names.lock, None) is not None:
            self.listener.deliver(names.lock, Value(payload))

    async def invalidate(self, names: KeyNames) -> None:
        """See `Backend.invalidate`."""
        self._values.pop(names.value, None)
        if self._locks.pop(names.lock, None) is not None:
            self.listener.deliver(names.lock, Signal.CHANGED)

    async def aclose(self) -> None:
        """Drop every entry."""
        self._values.clear()
        self._locks.clear()
