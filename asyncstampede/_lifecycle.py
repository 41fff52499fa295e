"""An instance's life: entering (its task group and background tasks), owner checks, closing.

An instance belongs to the event loop (or trio run) and the task that
entered it: calls from another loop are refused before they touch
anything, and only the entering task may close it (its task group is that
task's).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import final

import anyio
import anyio.abc
import anyio.lowlevel

from ._exceptions import ClosedError, ReentrantCallError, WrongEventLoopError
from ._flight import computing
from ._runtime import Runtime

__all__ = ["Lifecycle"]


def _current_loop() -> object:
    """Return the running asyncio loop, or the trio run's token: what an instance belongs to."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token()


@final
class Lifecycle:
    """Enters and closes one instance's `Runtime`, and guards every call's loop."""

    __slots__ = ("_closed", "_loop", "_rt", "_running", "_stack", "_task", "_thread")

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._loop: object = None
        self._task = 0  # the task that entered: the only one that may close
        # The owner's thread, and its loop's is_running (None under trio): the
        # cheap test that a call comes from the owner (see task_group).
        self._thread = 0
        self._running: Callable[[], bool] | None = None
        self._stack: AsyncExitStack | None = None
        self._closed = False

    async def enter(self, *, needs_asyncio: bool) -> None:
        """Start the backend's tasks and the lock keeper under a task group of the current task.

        Raises:
            ClosedError: entered before.
            RuntimeError: *needs_asyncio* and the loop is not asyncio's (trio).

        """
        if self._closed or self._stack is not None:
            raise ClosedError("a Stampede can be entered only once")
        self._loop = _current_loop()
        if needs_asyncio and not isinstance(self._loop, asyncio.AbstractEventLoop):
            raise RuntimeError(
                "a Stampede over Redis needs asyncio (redis-py's client is asyncio-only); "
                "under trio, use embedded mode (Stampede() without a client)"
            )
        self._task = anyio.get_current_task().id
        self._thread = threading.get_ident()
        self._running = getattr(self._loop, "is_running", None)
        rt = self._rt
        async with AsyncExitStack() as stack:
            # Registered first so it runs last, once the task group (whose
            # cancel scope the caller's task is inside) has exited.
            stack.push_async_callback(rt.backend.aclose)
            # Runs once the task group has exited, before the backend closes:
            # a call it outlived (a first read still on its way) finds no task
            # group to start work in, and tells its callers so (ClosedError).
            stack.callback(setattr, rt, "tg", None)
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(rt.backend.run)
            tg.start_soon(rt.keeper.run)
            await rt.backend.prepare()
            rt.tg = tg
            self._stack = stack.pop_all()

    async def close(self) -> None:
        """Cancel everything the instance runs and release the backend (idempotent).

        Raises:
            RuntimeError: called from a task other than the entering one.
            ReentrantCallError: called from inside one of this instance's computes.
            WrongEventLoopError: called from another event loop.

        """
        if self._stack is not None:
            self.check_loop()
            if any(c.owner == id(self._rt) and c.active for c in computing.get()):
                raise ReentrantCallError(
                    "aclose() was called from inside a compute of this Stampede, which would "
                    "cancel that compute half-way; close it where it was entered"
                )
            if anyio.get_current_task().id != self._task:
                raise RuntimeError(
                    "aclose() must be called by the task that entered the Stampede (its task "
                    "group is that task's); end that task's 'async with', or cancel that task"
                )
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is None:
            return
        rt = self._rt
        if rt.tg is not None:
            rt.tg.cancel_scope.cancel()
        await stack.aclose()

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
