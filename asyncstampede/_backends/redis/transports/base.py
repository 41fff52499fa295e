"""The interface every wake transport implements, and what they share: set-up replies, pings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio

from ...._exceptions import BackendError
from ...._problems import ProblemLog
from ...interest import UNTRACKED, Listener
from ..errors import is_connection_trouble, map_error
from ..wire import Link

__all__ = ["Silent", "Transport", "WakeConfig"]


class Silent(ConnectionError):
    """A connection's ping went unanswered: Redis is silent (not merely a lost connection)."""


@dataclass(frozen=True, slots=True)
class WakeConfig:
    """What every transport needs to know about the server and the instance."""

    new_link: Callable[[int], Link]  # a new connection speaking RESP *n*
    value_name: Callable[[bytes], bytes]  # a lock's value name
    namespace: str  # the instance's, for messages
    probe_lock: bytes  # a lock name of the namespace, for probing permissions
    address: str
    db: int
    reply_timeout: float  # handshake and watch replies must come within this
    problems: ProblemLog
    forced: bool  # the user chose this transport (wake="keyspace"...), not auto
    # Ping a silent connection somebody has waited on this long (a holder
    # extending its lock every lock_ttl/3, 1.7 s by default, is heard before).
    ping_after: float = 2.0
    idle_ping_after: float = 60.0  # ...or that nobody waits on, this long
    ping_reply: float = 5.0  # a ping unanswered this long: Redis is silent (redis_budget)
    beat: float = 0.5  # how often the silence is looked at
    # A Redis Cluster node (7.0 or later): the scripts publish with
    # SPUBLISH, so the channel transport subscribes with SSUBSCRIBE.
    sharded: bool = False


class Transport:
    """One way of hearing about lock changes, over connections of its own.

    `open` connects and proves the server allows it (raising
    `BackendRefusedError` when not); `serve` reads until a connection fails
    (raising) or the server refuses something at run time
    (`BackendRefusedError`); `close` drops the connections.
    """

    name: ClassVar[str]
    needs: ClassVar[str]  # what the server must allow (its `WAKE_ACL` rules), for messages

    def __init__(self, owner: Listener, config: WakeConfig) -> None:
        self._owner = owner
        self._config = config
        self._links: list[Link] = []
        self._scope: anyio.CancelScope | None = None
        self._last_heard = anyio.current_time()
        self._pinged_at: float | None = None

    async def open(self) -> None:
        """Connect and set up; raise `BackendError` (refused: the server said no)."""
        raise NotImplementedError

    async def serve(self) -> None:
        """Read until a connection fails (raises), or `stop` is called (returns)."""
        raise NotImplementedError

    async def watch(self, name: bytes, command: str) -> Any:
        """Have *name*'s changes delivered; see `Listener.watch`."""
        return UNTRACKED

    def forget(self, name: bytes) -> None:
        """Nobody in this process waits on *name* any more."""

    def stop(self) -> None:
        """End `serve` (a connection stopped answering: the listener reconnects)."""
        if self._scope is not None:
            self._scope.cancel()

    async def close(self) -> None:
        """Drop every connection at once."""
        with anyio.CancelScope(shield=True):
            for link in self._links:
                await link.close()

    async def _connect(self, protocol: int = 2) -> Link:
        """Open a connection speaking RESP *protocol* (closed by `close`).

        Raises:
            BackendError: refused (a login, or ``HELLO 3`` where the server
                or a proxy has no RESP3) or unavailable.

        """
        link = self._config.new_link(protocol)
        self._links.append(link)
        try:
            await link.connect(self._config.reply_timeout)
        except Exception as exc:
            if not is_connection_trouble(exc):
                raise
            raise self._mapped(exc) from exc
        return link

    async def _ask(self, link: Link, *args: Any) -> Any:
        """Send one command while setting up; its reply must come in time.

        Raises:
            BackendError: refused (named with the command) or unavailable.

        """
        try:
            await link.send(*args)
            with anyio.fail_after(self._config.reply_timeout):
                return await link.read()
        except TimeoutError as exc:
            silent = ConnectionError(f"no reply within {self._config.reply_timeout}s")
            raise self._mapped(silent, _command_name(args)) from exc
        except Exception as exc:
            if not is_connection_trouble(exc):
                raise
            raise self._mapped(exc, _command_name(args)) from exc

    def _mapped(self, exc: BaseException, command: str | None = None) -> BackendError:
        """Return `map_error`'s `BackendError` for *exc*, met on *command* (None: connecting)."""
        config = self._config
        return map_error(exc, address=config.address, command=command, namespace=config.namespace)

    def _heard(self) -> None:
        self._last_heard = anyio.current_time()
        self._pinged_at = None

    async def _heartbeat(self, ping: Callable[[], Awaitable[None]]) -> None:
        """Ping a silent connection; raise when the ping goes unanswered.

        A connection is pinged once somebody has waited on it for
        ``ping_after`` seconds without hearing from it, and after
        ``idle_ping_after`` otherwise: a short wait (most herds) or no waiter
        needs no proof that it is alive, and a ping costs the server a command.
        """
        config = self._config
        now = anyio.current_time
        while True:
            slept = now()
            await anyio.sleep(config.beat)
            busy = now() - slept > config.beat + 0.05  # the loop was blocked: replies unread
            if self._pinged_at is not None:
                if now() - self._pinged_at >= config.ping_reply and not busy:
                    raise Silent(f"no reply to PING for {now() - self._pinged_at:.3f}s")
                continue
            silent = now() - self._last_heard
            waited = self._owner.waited()
            if silent >= config.idle_ping_after or min(silent, waited) >= config.ping_after:
                self._pinged_at = now()
                await ping()


def _command_name(args: tuple[Any, ...]) -> str:
    words = [a.decode() if isinstance(a, bytes) else str(a) for a in args[:2]]
    if len(words) == 2 and words[0].upper() in ("CLIENT", "CONFIG"):
        return " ".join(words)
    return words[0]
