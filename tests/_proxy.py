"""A loopback TCP proxy in front of Redis that injects network faults.

- ``blackhole()`` makes every connection open so far silent in both
  directions, without closing it: what a client sees when a network path
  dies without a FIN or RST. Connections made afterwards work normally.
- ``partition()`` does that and keeps new connections silent too (they are
  accepted, never answered): a network partition, until ``heal()``.
- ``delay`` (seconds, settable at any time) holds every reply back that
  long before passing it on, in order: a slow network or a slow server.

``answered`` counts the connections the server has replied on: a client's
connection is up (its handshake done) once it is counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class FaultProxy:
    """Forward 127.0.0.1:<port> to a Redis on loopback; see the module."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._generation = 0
        self._partitioned = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0
        self.answered = 0  # connections the server has replied on so far
        self.delay = 0.0  # seconds every reply is held back

    def blackhole(self) -> None:
        """Silence every connection made so far (they stay open)."""
        self._generation += 1

    def partition(self) -> None:
        """Silence every connection, made so far or from now on, until `heal`."""
        self._partitioned = True
        self.blackhole()

    def heal(self) -> None:
        """New connections work again (those silenced stay silent)."""
        self._partitioned = False

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._partitioned:  # accepted, never answered: the client finds out by itself
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers.append(up_writer)
        generation = self._generation
        for src, dst, up in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst, generation, up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, generation: int, up: bool
    ) -> None:
        first = up  # the server's side: count the connection at its first reply
        loop = asyncio.get_running_loop()
        try:
            while data := await src.read(65536):
                if self._generation != generation:
                    continue  # swallowed, like a dead path
                if up and self.delay > 0:
                    # Held back, in order (timers of one delay fire in the order set).
                    loop.call_later(self.delay, self._deliver, dst, data, generation)
                else:
                    dst.write(data)
                    await dst.drain()
                if first:
                    first = False
                    self.answered += 1
        except ConnectionError:
            # One side reset its connection (a client giving up on a silent
            # one does): the other side's goes too, as through a real path.
            pass
        dst.close()

    def _deliver(self, dst: asyncio.StreamWriter, data: bytes, generation: int) -> None:
        if self._generation == generation and not dst.is_closing():
            dst.write(data)


BlackholeProxy = FaultProxy  # the name the older tests use
