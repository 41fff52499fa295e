"""An instance's life: its host task, owner checks, closing.

An instance belongs to the event loop (or trio run) that entered it: calls
from another loop are refused before they touch anything. Its background
work (the backend's connections, the lock keeper, every resolution) runs in
a task group of one *host* task: a task of the instance's own (``async
with``: an asyncio task, or a trio system task), or one started in a task
group the caller owns (`Stampede.start`). No caller's cancel scope encloses
that work, so any task of the loop may close the instance: closing asks the
host to stop, and returns once it has (every resolution ended, the backend
released).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import final

import anyio
import anyio.abc
import anyio.lowlevel

from ._exceptions import ClosedError, ReentrantCallError, WrongEventLoopError
from ._flight import computing
from ._runtime import Runtime

__all__ = ["Lifecycle"]

# The longest the backend's release may hold a host that is being cancelled
# (closing a client's connections sends nothing and waits on nothing).
_RELEASE_BOUND = 5.0


def _current_loop() -> object:
    """Return the running asyncio loop, or the trio run's token: what an instance belongs to."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token()


@final
class Lifecycle:
    """Starts one instance's host task, stops it from any task, and guards every call's loop."""

    __slots__ = (
        "_closed",
        "_done",
        "_failure",
        "_host",
        "_loop",
        "_rt",
        "_running",
        "_started",
        "_stop",
        "_thread",
    )

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._loop: object = None
        # The owner's thread, and its loop's is_running (None under trio): the
        # cheap test that a call comes from the owner (see task_group).
        self._thread = 0
        self._running: Callable[[], bool] | None = None
        self._started = False  # entered or started once: never again
        self._closed = False  # no new call is served
        self._stop: anyio.Event | None = None  # set: the host is asked to stop
        self._done: anyio.Event | None = None  # set: the host has stopped and released all
        self._failure: BaseException | None = None  # what ended the background work, if it failed
        # The host task of `enter` (asyncio keeps only a weak reference to tasks).
        self._host: asyncio.Task[None] | None = None

    def _begin(self, *, needs_asyncio: bool) -> tuple[anyio.Event, anyio.Event]:
        if self._started:
            raise ClosedError("a Stampede can be entered (or started) only once")
        loop = _current_loop()
        if needs_asyncio and not isinstance(loop, asyncio.AbstractEventLoop):
            raise RuntimeError(
                "a Stampede over Redis needs asyncio (redis-py's client is asyncio-only); "
                "under trio, use embedded mode (Stampede() without a client)"
            )
        self._started = True
        self._loop = loop
        self._thread = threading.get_ident()
        self._running = getattr(loop, "is_running", None)
        self._stop, self._done = anyio.Event(), anyio.Event()
        return self._stop, self._done

    async def enter(self, *, needs_asyncio: bool) -> None:
        """Start the background work in a host task of the instance's own; return once it runs.

        Raises:
            ClosedError: entered or started before.
            RuntimeError: *needs_asyncio* and the loop is not asyncio's (trio).

        """
        stop, _ = self._begin(needs_asyncio=needs_asyncio)
        ready = anyio.Event()
        failed: list[BaseException] = []

        async def host() -> None:
            try:
                await self._serve(ready.set)
            except BaseException as exc:
                if ready.is_set():
                    raise  # cancelled while running: the loop (or the trio run) is ending
                failed.append(exc)  # failed to start: the entering task raises it
                ready.set()

        if isinstance(self._loop, asyncio.AbstractEventLoop):
            self._host = self._loop.create_task(host(), name=f"asyncstampede host {id(self):#x}")
        else:
            # Trio has no task outside a nursery but its system tasks, which
            # end with the run. The host raises nothing once it runs, and
            # gets the entering task's context, as a task of its own would.
            import trio.lowlevel

            trio.lowlevel.spawn_system_task(
                host, name="asyncstampede host", context=contextvars.copy_context()
            )
        try:
            await ready.wait()
        except BaseException:
            self._closed = True
            stop.set()  # the host stops as soon as it has started
            raise
        if failed:
            self._closed = True
            if isinstance(failed[0], anyio.get_cancelled_exc_class()):
                raise ClosedError(
                    "the Stampede's host task was cancelled while it started (is the event "
                    "loop shutting down?)"
                )
            raise failed[0]

    async def start(self, task_group: anyio.abc.TaskGroup, *, needs_asyncio: bool) -> None:
        """Run the background work in a task of *task_group*; return once it runs.

        Raises:
            TypeError: *task_group* is not an anyio task group.
            ClosedError: entered or started before.
            RuntimeError: *needs_asyncio* and the loop is not asyncio's (trio).

        """
        if not isinstance(task_group, anyio.abc.TaskGroup):
            raise TypeError(
                f"start() takes an anyio task group (from anyio.create_task_group()), not "
                f"{type(task_group).__name__}; with an asyncio.TaskGroup or a trio nursery, "
                "use 'async with Stampede(...)' instead"
            )
        self._begin(needs_asyncio=needs_asyncio)

        async def host(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            await self._serve(task_status.started)

        try:
            await task_group.start(host, name=f"asyncstampede host {id(self):#x}")
        except BaseException:
            self._closed = True
            raise

    async def _serve(self, started: Callable[[], None]) -> None:
        """Be the host: start the work, call *started*, run until asked to stop, release all.

        A failure before *started* is raised; one after it (a bug in the
        background work) ends the instance, is logged, and is raised by the
        next `close`. Cancellation (of the caller's task group, or of the
        loop at its end) closes the instance as `close` does, then goes on.
        """
        rt = self._rt
        assert self._stop is not None
        assert self._done is not None
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(rt.backend.run)
                tg.start_soon(rt.keeper.run)
                await rt.backend.prepare()
                rt.tg = tg
                started()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        except Exception as exc:
            if rt.tg is None:
                raise  # it never ran: whoever started it gets the error
            self._failure = exc
            rt.problems.say(
                logging.ERROR,
                "the Stampede's background work failed; the instance is closed (calls "
                "raise ClosedError, aclose() raises this error)",
                exc_info=exc,
            )
        finally:
            self._closed = True
            # Once every task of the group has ended, before the backend is
            # released: a call it outlived (a first read still on its way)
            # finds no task group to start work in, and tells its callers
            # so (ClosedError).
            rt.tg = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_BOUND):
                await rt.backend.aclose()
            self._done.set()

    async def close(self) -> None:
        """Stop the host and wait until it has released everything (idempotent).

        Raises:
            ReentrantCallError: called from inside one of this instance's computes.
            WrongEventLoopError: called from another event loop.
            Exception: what ended the background work, if it failed (raised once).

        """
        done = self._done
        if done is None:  # never entered: nothing runs
            self._closed = True
            return
        if not done.is_set():
            self.check_loop()
            if any(c.owner == id(self._rt) and c.active for c in computing.get()):
                raise ReentrantCallError(
                    "aclose() was called from inside a compute of this Stampede, which would "
                    "cancel that compute half-way; close it from outside its computes"
                )
            self._closed = True
            assert self._stop is not None
            self._stop.set()
            await done.wait()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def task_group(self) -> anyio.abc.TaskGroup:
        """Return the instance's task group, refusing a call it cannot serve.

        Raises:
            ClosedError: not entered, or closed.
            WrongEventLoopError: called from another event loop.

        """
        tg = self._rt.tg
        if tg is None or self._closed:
            raise ClosedError(
                "use the Stampede inside 'async with' (it is not entered, or it is closed)"
            )
        # In the owner's thread, while the owner's loop runs, the running loop
        # is the owner's (a thread runs one loop at a time): no need to ask
        # for it (asyncio.get_running_loop costs a getpid() here).
        running = self._running
        if threading.get_ident() != self._thread or running is None or not running():
            self.check_loop()
        return tg

    def check_loop(self) -> None:
        """Refuse a call from an event loop other than the owner's, before it touches anything."""
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:  # trio, or no event loop at all
            loop = _current_loop()
        if loop is not self._loop and loop != self._loop:  # (trio: equal tokens)
            raise WrongEventLoopError(
                "this Stampede belongs to another event loop (the one that entered it); "
                "create one Stampede per event loop (e.g. per worker thread), or run the call "
                "on the owner's loop with asyncio.run_coroutine_threadsafe()"
            )
