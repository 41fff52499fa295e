"""Subscribing transports: keyspace notifications, and the key's own channel."""

from __future__ import annotations

import logging
from typing import Any, final

import anyio
from redis.exceptions import ResponseError

from ...._exceptions import BackendRefusedError
from ...._keys import channel_name_of, lock_name_of, lock_of_channel
from ...interest import SUBSCRIBED, UNTRACKED, Listener
from ...messages import Signal, Value
from ..errors import WAKE_ACL
from ..wire import Link
from .base import Transport, WakeConfig

__all__ = ["Channel", "Keyspace", "keyspace_events_cover"]


def keyspace_events_cover(flags: str) -> bool:
    """Whether ``notify-keyspace-events`` *flags* report what a lock's waiters need.

    ``K`` (keyspace channels) with ``g`` (``DEL``: a release) and ``$``
    (``SET``: a commit, a takeover), or ``A`` for all classes. Expiry
    (``x``) is welcome but not needed: a waiter's own timer is set to the
    lock's expiry.
    """
    return "K" in flags and ("A" in flags or ("g" in flags and "$" in flags))


class _Subscribing(Transport):
    """A RESP2 connection subscribed to the channels of the locks waited on now.

    `watch` subscribes (once per lock, however many wait on it) and returns
    `SUBSCRIBED` when the server has confirmed it; `forget` unsubscribes, in
    batches, once nobody waits on the lock any more.
    """

    # The commands and message kinds of the pub/sub flavour in use (sharded
    # pub/sub on a Redis Cluster: see `Channel`).
    subscribe = "SUBSCRIBE"
    unsubscribe = "UNSUBSCRIBE"
    kinds = (b"message", b"subscribe")

    def __init__(self, owner: Listener, config: WakeConfig) -> None:
        super().__init__(owner, config)
        self._link: Link | None = None
        self._send_lock = anyio.Lock()
        self._confirmed: dict[bytes, anyio.Event] = {}  # lock -> its subscription's
        self._dropping: set[bytes] = set()  # locks nobody waits on: unsubscribe soon
        self._dirty = anyio.Event()

    def channels(self, lock: bytes) -> tuple[bytes, ...]:
        """Return the channels to subscribe to for *lock*, the one confirmed last at the end."""
        raise NotImplementedError

    def lock_of(self, channel: bytes) -> bytes | None:
        """Return the lock a message on *channel* is about (None: not ours)."""
        raise NotImplementedError

    def message(self, lock: bytes, data: bytes) -> None:
        """Deliver what *data*, published on one of *lock*'s channels, means."""
        raise NotImplementedError

    async def _probe(self, link: Link) -> None:
        """Subscribe to a probe key's channels and unsubscribe, to prove it is allowed."""
        channels = self.channels(self._config.probe_lock)
        for channel in channels:
            await self._ask(link, self.subscribe, channel)
        for channel in channels:
            await self._ask(link, self.unsubscribe, channel)
        self._link = link

    async def watch(self, name: bytes, command: str) -> Any:
        link = self._link
        if link is None:
            return UNTRACKED
        self._dropping.discard(name)
        confirmed = self._confirmed.get(name)
        if confirmed is None:
            confirmed = self._confirmed[name] = anyio.Event()
            try:
                async with self._send_lock:
                    await link.send(self.subscribe, *self.channels(name))
            except Exception as exc:
                self._config.problems.say(
                    logging.DEBUG, f"subscribing connection failed: {exc!r}", transport=self.name
                )
                self.stop()
                return UNTRACKED
        with anyio.move_on_after(self._config.reply_timeout):
            await confirmed.wait()
        if not confirmed.is_set():
            if self._link is link:
                # (INFO: it passes by itself, waiters poll for the moment; an
                # outage is the breaker's WARNING.)
                self._config.problems.say(
                    logging.INFO,
                    "the subscribing connection stopped answering; reconnecting (waiters "
                    "look by themselves meanwhile)",
                    transport=self.name,
                )
                self.stop()
            return UNTRACKED
        return SUBSCRIBED if self._link is link else UNTRACKED

    def forget(self, name: bytes) -> None:
        if name in self._confirmed:
            self._dropping.add(name)
            self._dirty.set()

    async def serve(self) -> None:
        link = self._link
        assert link is not None
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._heartbeat, lambda: self._send(link, "PING"))
                tg.start_soon(self._unsubscribe, link)
                while True:
                    try:
                        message = await link.read()
                    except ResponseError as exc:
                        # A (UN)SUBSCRIBE refused now (an ACL changed):
                        # this transport cannot go on; the listener moves on.
                        raise self._mapped(exc, "(UN)SUBSCRIBE") from exc
                    self._heard()
                    self._handle(message)
        finally:
            self._link = None
            for event in self._confirmed.values():
                event.set()  # their waiters see the link gone and read untracked
            self._confirmed.clear()

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3:
            return
        kind, channel, data = message[0], message[1], message[2]
        published, subscribed = self.kinds
        if kind == published:
            lock = self.lock_of(channel)
            if lock is not None and self._owner.wanted(lock):
                self.message(lock, data)
        elif kind == subscribed:
            lock = self.lock_of(channel)
            if lock is not None and channel == self.channels(lock)[-1]:
                confirmed = self._confirmed.get(lock)
                if confirmed is not None:
                    confirmed.set()
                    if lock in self._dropping:  # let go of before it was confirmed
                        self._dirty.set()

    async def _send(self, link: Link, *args: Any) -> None:
        async with self._send_lock:
            await link.send(*args)

    async def _unsubscribe(self, link: Link) -> None:
        """Unsubscribe from locks nobody waits on any more, a batch at a time."""
        while True:
            await self._dirty.wait()
            # One batch for all the locks let go of since: a herd's waits
            # end in the same turn of the loop, before this task runs.
            self._dirty = anyio.Event()
            dropping = [
                lock
                for lock in self._dropping
                if not self._owner.wanted(lock)
                and (event := self._confirmed.get(lock)) is not None
                and event.is_set()
            ]
            self._dropping.difference_update(dropping)
            if dropping:
                for lock in dropping:
                    del self._confirmed[lock]
                channels = [c for lock in dropping for c in self.channels(lock)]
                if self.unsubscribe == "SUNSUBSCRIBE":
                    # Sharded: the channels of one command must share a slot.
                    for channel in channels:
                        await self._send(link, self.unsubscribe, channel)
                else:
                    await self._send(link, self.unsubscribe, *channels)


@final
class Keyspace(_Subscribing):
    """Keyspace notifications on the lock and the value, where the server sends them."""

    name = "keyspace"
    needs = "notify-keyspace-events with K, g and $ (or KA) on the server, " + WAKE_ACL["keyspace"]

    def __init__(self, owner: Listener, config: WakeConfig) -> None:
        super().__init__(owner, config)
        self._prefix = f"__keyspace@{config.db}__:".encode()

    async def open(self) -> None:
        link = await self._connect()
        try:
            reply = await self._ask(link, "CONFIG", "GET", "notify-keyspace-events")
        except BackendRefusedError as exc:
            if not self._config.forced:
                raise
            # The user says the server sends them; it cannot be read here.
            self._config.problems.say(
                logging.WARNING,
                f"wake='keyspace' trusts that notify-keyspace-events covers locks (K$g): "
                f"it cannot be read ({exc})",
                transport="keyspace",
            )
        else:
            flags = _config_value(reply)
            if not keyspace_events_cover(flags):
                raise BackendRefusedError(
                    f"Redis at {self._config.address} does not send the keyspace "
                    f"notifications the keyspace wake needs: notify-keyspace-events is "
                    f"{flags!r} (asyncstampede never changes it; an operator can add "
                    "K$g, e.g. notify-keyspace-events K$gx)",
                    address=self._config.address,
                    command="CONFIG GET",
                    hint="notify-keyspace-events K$gx",
                )
        await self._probe(link)

    def channels(self, lock: bytes) -> tuple[bytes, ...]:
        prefix = self._prefix
        return (prefix + self._config.value_name(lock), prefix + lock)

    def lock_of(self, channel: bytes) -> bytes | None:
        if not channel.startswith(self._prefix):
            return None
        return lock_name_of(channel[len(self._prefix) :])

    def message(self, lock: bytes, data: bytes) -> None:
        # An extension (PEXPIRE: "expire") moves the expiry, which the
        # waiter's own timer covers: telling it would cost a look each time.
        if data != b"expire":
            self._owner.deliver(lock, Signal.CHANGED)


@final
class Channel(_Subscribing):
    """The key's own channel, on which the holder's scripts publish."""

    name = "channel"
    needs = WAKE_ACL["channel"]

    def __init__(self, owner: Listener, config: WakeConfig) -> None:
        super().__init__(owner, config)
        self._publish = "PUBLISH"
        if config.sharded:
            # On a Redis Cluster the scripts SPUBLISH on the key's channel,
            # which shares the key's slot: only that slot's shard hears it.
            self._publish, self.subscribe, self.unsubscribe = (
                "SPUBLISH",
                "SSUBSCRIBE",
                "SUNSUBSCRIBE",
            )
            self.kinds = (b"smessage", b"ssubscribe")

    async def open(self) -> None:
        link = await self._connect()
        # The holders publish from scripts (as a pcall: a refusal would go
        # unnoticed there), so prove it is allowed here.
        probe = channel_name_of(self._config.probe_lock, self._config.db)
        await self._ask(link, self._publish, probe, b"")
        await self._probe(link)

    def channels(self, lock: bytes) -> tuple[bytes, ...]:
        return (channel_name_of(lock, self._config.db),)

    def lock_of(self, channel: bytes) -> bytes | None:
        return lock_of_channel(channel, self._config.db)

    def message(self, lock: bytes, data: bytes) -> None:
        self._owner.deliver(lock, Value(data) if data else Signal.CHANGED)


def _config_value(reply: Any) -> str:
    """Return the value in a ``CONFIG GET`` reply (a [name, value] list, or a map on RESP3)."""
    if isinstance(reply, dict):
        values = list(reply.values())
    elif isinstance(reply, list):
        values = reply[1::2]
    else:
        values = []
    value = values[0] if values else b""
    return value.decode() if isinstance(value, bytes) else str(value)
