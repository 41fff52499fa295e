"""Waking waiters: per-key interests and the one pub/sub reader per instance.

A waiter registers interest in its key's channel *before* it re-reads the
key. The base `Listener` keeps the interests and dispatches messages to them;
`RedisListener` adds one pub/sub connection and exactly one reader task.

Every interest is told to re-check (``RECHECK``) once its channel's
subscription is confirmed by the server, and again after every reconnect
(messages published during the gap are lost). So a waiter never relies on a
message it could have missed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, final

import anyio
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ._backend import MSG_VALUE

__all__ = ["RECHECK", "Interest", "Listener", "RedisListener"]

log = logging.getLogger("asyncstampede")

RECHECK = b"r"  # internal: subscription confirmed or connection re-established


@final
class Interest:
    """One waiter's mailbox for one channel."""

    __slots__ = ("_event", "_pending", "on_value", "resolved")

    def __init__(self) -> None:
        self._pending: bytes | None = None
        self._event = anyio.Event()
        # Called by the reader with a value message, before any task switch:
        # returns True when it has handed the value to the callers itself.
        self.on_value: Callable[[bytes], bool] | None = None
        self.resolved = False

    def push(self, message: bytes) -> None:
        """Deliver *message*; a value message is never replaced by a later signal."""
        if self.resolved:
            return
        if message[:1] == MSG_VALUE and self.on_value is not None and self.on_value(message):
            # The callers are woken straight from the reader: one task switch
            # fewer between the commit and the callers resuming.
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


class _Channel:
    __slots__ = ("acked", "interests")

    def __init__(self) -> None:
        self.interests: set[Interest] = set()
        self.acked = False


class Listener:
    """In-process dispatch of channel messages to interests (embedded mode)."""

    def __init__(self) -> None:
        self._channels: dict[bytes, _Channel] = {}
        self._idle: set[bytes] = set()
        self.reconnects = 0

    @asynccontextmanager
    async def interest(self, channel: bytes) -> AsyncIterator[Interest]:
        """Register for *channel* for the duration of the block."""
        interest = Interest()
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
            state.interests.add(interest)
            await self._subscribe(channel)
        else:
            self._idle.discard(channel)
            state.interests.add(interest)
            if state.acked:
                interest.push(RECHECK)
        try:
            yield interest
        finally:
            state.interests.discard(interest)
            if not state.interests:
                self._idle.add(channel)
                self._flush_idle_soon()

    def deliver(self, channel: bytes, message: bytes) -> None:
        """Hand *message* to every interest in *channel*."""
        state = self._channels.get(channel)
        if state is not None:
            for interest in state.interests:
                interest.push(message)

    def _confirm(self, channel: bytes) -> None:
        state = self._channels.get(channel)
        if state is not None and not state.acked:
            state.acked = True
            for interest in state.interests:
                interest.push(RECHECK)
            if channel in self._idle:
                self._flush_idle_soon()

    @property
    def subscribed_channels(self) -> int:
        """How many channels are registered (including idle ones not yet dropped)."""
        return len(self._channels)

    async def _subscribe(self, channel: bytes) -> None:
        self._confirm(channel)

    def _take_idle(self) -> list[bytes]:
        """Forget idle channels that are safe to unsubscribe and return them."""
        dropped = []
        for channel in list(self._idle):
            state = self._channels.get(channel)
            # An unconfirmed subscription stays until its ack arrives, so a
            # late ack can never be taken for a newer subscription's.
            if state is not None and (state.interests or not state.acked):
                continue
            self._idle.discard(channel)
            if state is not None:
                del self._channels[channel]
                dropped.append(channel)
        return dropped

    def _flush_idle_soon(self) -> None:
        self._take_idle()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Nothing to read in embedded mode."""
        task_status.started()


@final
class RedisListener(Listener):
    """One pub/sub connection and one reader task for a `Stampede`."""

    def __init__(
        self,
        connection_class: type[AbstractConnection],
        connection_kwargs: dict[str, Any],
        *,
        read_timeout: float = 1.0,
        ping_after: float = 5.0,
        dead_after: float = 10.0,
    ) -> None:
        super().__init__()
        kwargs = dict(connection_kwargs)
        # RESP2 pub/sub framing, and no silent retries: a lost connection must
        # surface here so that every waiter re-checks after the reconnect.
        kwargs["protocol"] = 2
        kwargs["retry"] = Retry(NoBackoff(), 0)
        self._connection_class = connection_class
        self._connection_kwargs = kwargs
        self._conn: AbstractConnection | None = None
        self._write_lock = anyio.Lock()
        self._read_timeout = read_timeout
        self._ping_after = ping_after
        self._dead_after = dead_after
        self._idle_event = anyio.Event()
        self.connected = anyio.Event()

    async def _subscribe(self, channel: bytes) -> None:
        conn = self._conn
        if conn is None:
            return  # the reconnect subscribes every registered channel
        try:
            async with self._write_lock:
                await conn.send_command("SUBSCRIBE", channel, check_health=False)
        except Exception as exc:
            # Best effort: a write can race the reader tearing the connection
            # down; the reconnect resubscribes every registered channel.
            log.debug("SUBSCRIBE failed, the reader will reconnect: %r", exc)

    def _flush_idle_soon(self) -> None:
        self._idle_event.set()

    async def _unsubscriber(self) -> None:
        """Send one batched UNSUBSCRIBE shortly after channels fall idle."""
        while True:
            await self._idle_event.wait()
            self._idle_event = anyio.Event()
            await anyio.sleep(0.005)  # let channels idled by the same wake-up join the batch
            conn = self._conn
            if conn is None:
                continue  # the reconnect drops idle channels by itself
            idle = self._take_idle()
            if not idle:
                continue
            try:
                async with self._write_lock:
                    await conn.send_command("UNSUBSCRIBE", *idle, check_health=False)
            except Exception as exc:
                log.debug("UNSUBSCRIBE failed, the reader will reconnect: %r", exc)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Read pub/sub messages until cancelled, reconnecting with backoff."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._unsubscriber)
            await self._connect_and_read(task_status)

    async def _connect_and_read(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        backoff = 0.05
        started = False
        while True:
            conn = self._connection_class(**self._connection_kwargs)
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                # A fresh connection has no subscriptions and no acks in
                # flight: drop idle channels, resubscribe the rest.
                for channel in [c for c in self._idle if not self._channels[c].interests]:
                    self._idle.discard(channel)
                    del self._channels[channel]
                for state in self._channels.values():
                    state.acked = False
                channels = list(self._channels)
                if channels:
                    await conn.send_command("SUBSCRIBE", *channels, check_health=False)
                self._conn = conn
                self.connected.set()
                if not started:
                    started = True
                    task_status.started()
                backoff = 0.05
                await self._read_loop(conn)
            except (RedisError, OSError) as exc:
                log.warning("asyncstampede pub/sub connection lost: %r", exc)
            except Exception:
                # Never let the reader die: that would leave waiters on timers
                # alone. Log loudly and start over on a new connection.
                log.exception("asyncstampede pub/sub reader failed; reconnecting")
            finally:
                self._conn = None
                self.connected = anyio.Event()
                with anyio.CancelScope(shield=True):
                    await conn.disconnect(nowait=True)
            if not started:
                # Redis is unreachable at start-up: do not block the caller;
                # waiters fall back to their timers until we connect.
                started = True
                task_status.started()
            self.reconnects += 1
            await anyio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)

    async def _read_loop(self, conn: AbstractConnection) -> None:
        now = anyio.current_time
        last_heard = now()
        ping_sent = False
        while True:
            response = await conn.read_response(
                timeout=self._read_timeout, disconnect_on_error=False
            )
            if response is None:
                silent = now() - last_heard
                if silent >= self._dead_after:
                    raise ConnectionError(f"no reply to PING for {silent:.1f}s")
                if silent >= self._ping_after and not ping_sent:
                    async with self._write_lock:
                        await conn.send_command("PING", check_health=False)
                    ping_sent = True
                continue
            last_heard = now()
            ping_sent = False
            self._handle(response)

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 2:
            return  # PONG outside subscribed mode
        kind = response[0]
        if kind == b"message" and len(response) == 3:
            self.deliver(response[1], response[2])
        elif kind == b"subscribe":
            self._confirm(response[1])
