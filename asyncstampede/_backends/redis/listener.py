"""Waking waiters with Redis: the wake transport in use, chosen by probing.

A waiter registers an `Interest` in its key's lock name (see ``interest``)
*before* it asks Redis about the lock, and asks through `RedisListener.watch`,
so that the lock's changes from then on are delivered to it. How they reach
this process is a wake transport (see ``transports``): client tracking
(RESP2 with ``REDIRECT``, or RESP3 in-band), keyspace notifications, or the
key's own channel.

With ``wake="auto"`` the listener tries them in that order at start and
serves with the first the server allows; where one is refused at run time
(an ACL changed) it moves on to the next; after a lost connection it starts
again from the first (an ACL may have been fixed). Where none is allowed,
waiters poll (``_wait``) and the probing is repeated now and then. A forced
transport (``wake="channel"``...) is the only one tried. Each change of
transport is logged with the server's own words.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any, Final, final

import anyio
import anyio.abc

from ..._exceptions import BackendError, BackendRefusedError
from ..._keys import make_names
from ..._problems import ProblemLog
from ..interest import UNTRACKED, Listener
from .errors import is_connection_trouble, map_error
from .transports import AUTO_ORDER, TRANSPORTS, Transport, WakeConfig
from .transports.base import Silent
from .wire import Link

__all__ = ["RedisListener"]


# Where every transport was refused, probe them again this often: an ACL or
# the server's configuration may have been fixed.
_REPROBE_AFTER: Final = 30.0


@final
class RedisListener(Listener):
    """The lock-change listener of a `Stampede` over Redis."""

    def __init__(
        self,
        new_link: Callable[[int], Link],
        value_name: Callable[[bytes], bytes],
        *,
        address: str,
        db: int,
        namespace: str,
        reply_timeout: float,
        wake: str = "auto",
        problems: ProblemLog | None = None,
        on_unavailable: Callable[[BackendError], None] | None = None,
        ping_reply: float = 5.0,
        on_transport: Callable[[str | None, str | None], None] | None = None,
        probe_key: str = "asyncstampede-probe",
        sharded: bool = False,
        registry: Listener | None = None,
    ) -> None:
        super().__init__()
        # Where the interests are kept and the changes delivered: this
        # listener, or (one Redis Cluster node's listener) the cluster's,
        # which every node's transports deliver to.
        self._registry: Listener = self if registry is None else registry
        # Told (new, previous) when the transport waiters wake by changes
        # ("poll": none; previous None: the first); not at a reconnect to
        # the same one.
        self._on_transport = on_transport
        self._announced: str | None = None
        # Told when Redis cannot be connected to again (once it had been).
        self._on_unavailable = on_unavailable
        self._ever_up = False
        self._problems = problems if problems is not None else ProblemLog()
        self._address = address
        self._order = AUTO_ORDER if wake == "auto" else (wake,)
        self._config = WakeConfig(
            new_link=new_link,
            value_name=value_name,
            namespace=namespace,
            probe_lock=make_names(namespace, probe_key).lock,
            address=address,
            db=db,
            reply_timeout=reply_timeout,
            problems=self._problems,
            forced=wake != "auto",
            ping_reply=ping_reply,
            sharded=sharded,
        )
        self._serving: Transport | None = None
        self._refusals: dict[str, BackendRefusedError] = {}  # transport -> its last refusal
        self._polling_since: float | None = None  # every transport refused since then
        self._polling_said: float | None = None  # the spell of polling last logged
        self._moves = 0  # reconnect() calls: a transport opened across one is opened again
        self._woken = anyio.Event()  # set by reconnect(): a pause before reconnecting ends

    @property
    def transport(self) -> str | None:
        """The transport that reports lock changes now (None: waiters poll)."""
        serving = self._serving
        return None if serving is None else serving.name

    async def watch(self, name: bytes, command: str = "PTTL") -> Any:
        """See `Listener.watch`."""
        serving = self._serving
        if serving is None:
            return UNTRACKED
        return await serving.watch(name, command)

    def recheck_all(self) -> None:
        """See `Listener.recheck_all` (every interest of the registry: on a Cluster, all)."""
        if self._registry is self:
            super().recheck_all()
        else:
            self._registry.recheck_all()

    def reconnect(self) -> None:
        """Open the transport again now: the server it reached is not the one to use any more.

        Every waiter looks at its lock again (on the new connections, or on
        the request path meanwhile).
        """
        self._moves += 1
        self._woken.set()
        serving = self._serving
        if serving is not None:
            serving.stop()

    def forget(self, name: bytes) -> None:
        """See `Listener.forget`."""
        serving = self._serving
        if serving is not None:
            serving.forget(name)

    async def check(self) -> None:
        """Open the first transport the server allows, as `run` does, and close it.

        Raises:
            BackendError: a forced transport is refused (the error names what
                to grant), or Redis cannot be reached. Under ``wake="auto"``
                no transport being allowed is not an error (waiters poll):
                that is logged at WARNING.

        """
        if await self.pick() is None:
            self._say_polling(always=True)

    async def pick(self) -> str | None:
        """Return the first transport the server allows (opened and closed), or None.

        None: none is allowed, waiters would poll (`refusals` says why).
        Logs nothing.

        Raises:
            BackendError: as `check`.

        """
        for kind in self._order:
            transport = TRANSPORTS[kind](self._registry, self._config)
            try:
                await transport.open()
                return kind
            except BackendRefusedError as exc:
                if self._config.forced:
                    raise
                self._refusals[kind] = exc
            except Exception as exc:
                raise map_error(exc, address=self._address) from exc
            finally:
                await transport.close()
        return None

    @property
    def refusals(self) -> dict[str, BackendRefusedError]:
        """Each wake transport refused so far, with the server's refusal."""
        return dict(self._refusals)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Serve with the first transport allowed until cancelled; reconnect and re-probe."""
        backoff = 0.05
        started = False
        was_up = False
        while True:
            lost = await self._serve_first_allowed(was_up, task_status if not started else None)
            started = True
            if lost is None:  # every transport refused: waiters poll meanwhile
                self._say_polling()
                self._announce(None)
                await self._pause(_REPROBE_AFTER)
                continue
            was_up = was_up or lost
            woken = await self._pause(backoff * (0.5 + random.random()))
            backoff = 0.05 if lost or woken else min(backoff * 2, 2.0)

    async def _pause(self, seconds: float) -> bool:
        """Sleep *seconds*, or less if `reconnect` is called; return whether it was."""
        with anyio.move_on_after(seconds):
            await self._woken.wait()
        woken = self._woken.is_set()
        if woken:
            self._woken = anyio.Event()
        return woken

    async def _serve_first_allowed(
        self, was_up: bool, task_status: anyio.abc.TaskStatus[None] | None
    ) -> bool | None:
        """Open the transports in order and serve with the first allowed, until it fails.

        Returns True when a serving transport lost its connection, False
        when Redis could not be reached, None when every transport was
        refused. *task_status* is told once a first attempt was made.
        """
        try:
            for kind in self._order:
                transport = TRANSPORTS[kind](self._registry, self._config)
                moves = self._moves
                try:
                    try:
                        await transport.open()
                    except BackendRefusedError as exc:
                        self._refused(kind, exc)
                        continue
                    if self._moves != moves:
                        return True  # opened on the server we move away from: again
                    self._serving = transport
                    self._ever_up = True
                    self._polling_since = None
                    if was_up:
                        self.reconnects += 1
                    self._say_serving(kind)
                    if task_status is not None:
                        task_status.started()
                        task_status = None
                    # Whatever was watched before is forgotten, and changes made
                    # while nobody listened were never told: everybody looks again.
                    self.recheck_all()
                    try:
                        await transport.serve()
                    except Exception as exc:
                        refusal = _refusal_in(exc)
                        if refusal is None:
                            raise
                        # Refused at run time: go on with the next transport now.
                        self._refused(kind, refusal)
                        continue
                    return True  # stopped: a connection stopped answering
                except Exception as exc:
                    up = self._serving is transport
                    self._trouble(exc, up)
                    return up
                finally:
                    if self._serving is transport:
                        self._serving = None
                        # Nothing tells the waiters now: each looks once, finds
                        # its lock unwatched, and polls until a transport serves.
                        self.recheck_all()
                    await transport.close()
            return None
        finally:
            if task_status is not None:
                # Redis is unreachable (or refuses everything) at start-up:
                # do not block the caller; waiters poll until this connects.
                task_status.started()

    def _refused(self, kind: str, exc: BackendRefusedError) -> None:
        self._refusals[kind] = exc
        remaining = self._order[self._order.index(kind) + 1 :]
        if not remaining and self._polling_since is None:
            # The last one: nothing wakes the waiters now. Counted (and
            # logged) once per spell of polling, not at every re-probe.
            self._polling_since = anyio.current_time()
            self.connect_errors += 1
            self.refused += 1
            if self._config.forced:
                self._problems.report(
                    exc,
                    f"wake={kind!r} (waiters poll meanwhile, a few looks per wait)",
                    transport=kind,
                )
        if remaining and self._polling_since is None:
            self._problems.say(
                logging.INFO, f"waking waiters by {kind} is not possible: {exc}", transport=kind
            )

    def _trouble(self, exc: Exception, up: bool) -> None:
        """Log a lost or failed connection (a bug loudly); the caller starts over."""
        if not up:
            self.connect_errors += 1
        if not is_connection_trouble(exc) and not isinstance(exc, BackendError):
            self._problems.say(
                logging.ERROR,
                "lock-change listener failed; reconnecting",
                exc_info=True,
                transport=self._announced or "poll",
            )
            return
        error = map_error(exc, address=self._address)
        if up or self.connect_errors == 1:
            # (INFO for Redis unavailable: the connection comes back by itself,
            # and an outage is the breaker's WARNING; ERROR for a refusal.)
            self._problems.report(
                error,
                "watching locks; reconnecting",
                passing=logging.INFO,
                transport=self._announced or "poll",
            )
        # An outage: Redis silent while a waiter needed it (its ping went
        # unanswered), or a Redis that worked cannot be connected to again.
        # (Before it ever worked, the request path says why, with its hints;
        # a connection merely lost, as to CLIENT KILL, is no outage.)
        refused = isinstance(error, BackendRefusedError)
        outage = _silent_in(exc) or (self._ever_up and not up)
        if outage and not refused and self._on_unavailable is not None:
            self._on_unavailable(error)

    def _say_serving(self, kind: str) -> None:
        # (INFO too when it ends a spell of polling, which was a WARNING.)
        back = self._announced == "poll"
        level = logging.DEBUG if kind == self._order[0] and not back else logging.INFO
        self._problems.say(
            level, f"waiters on Redis at {self._address} wake by {kind}", transport=kind
        )
        self._announce(kind)

    def retire(self) -> None:
        """Tell the hooks the transport is gone (``None``), as the instance closes."""
        if self._announced is not None and self._on_transport is not None:
            previous, self._announced = self._announced, None
            self._on_transport(None, previous)

    def _announce(self, kind: str | None) -> None:
        now = kind or "poll"
        if now != self._announced:
            previous, self._announced = self._announced, now
            if self._on_transport is not None:
                self._on_transport(now, previous)

    def _say_polling(self, *, always: bool = False) -> None:
        """Say (once per spell) that waiters poll, why, and what would let them be woken."""
        if self._config.forced:
            return  # its refusal was logged at ERROR, with what to grant
        if not always and self._polling_said == self._polling_since:
            return  # said already
        self._polling_said = self._polling_since
        reasons = "; ".join(f"{kind}: {exc}" for kind, exc in self._refusals.items())
        grants = "; or ".join(
            f"{TRANSPORTS[kind].needs} ({kind})".replace("<namespace>", self._config.namespace)
            for kind in self._order
        )
        self._problems.say(
            logging.WARNING,
            f"Redis at {self._address} allows no way to wake waiters, so they poll (a few "
            f"looks per wait, a value seen up to about as late again as it took to come). "
            f"Refused: {reasons}. To be woken at the commit, allow one of: {grants}",
            transport="poll",
        )


def _silent_in(exc: BaseException) -> bool:
    """Whether *exc* is, or holds (a task group's), an unanswered ping."""
    if isinstance(exc, Silent):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_silent_in(inner) for inner in exc.exceptions)
    return False


def _refusal_in(exc: BaseException) -> BackendRefusedError | None:
    """Return the refusal *exc* is, or holds (a task group's), or None."""
    if isinstance(exc, BackendRefusedError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _refusal_in(inner)
            if found is not None:
                return found
    return None
