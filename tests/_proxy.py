"""A loopback TCP proxy in front of Redis whose connections can be made half-open.

``blackhole()`` makes every connection open so far silent in both
directions, without closing it: what a client sees when a network path dies
without a FIN or RST. Connections made afterwards work normally.
``answered`` counts the connections the server has replied on: a client's
connection is up (its handshake done) once it is counted there.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class BlackholeProxy:
    """Forward 127.0.0.1:<port> to a Redis on loopback; see `blackhole`."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0
        self.answered = 0  # connections the server has replied on so far

    def blackhole(self) -> None:
        """Silence every connection made so far (they stay open)."""
        self._generation += 1

    async def __aenter__(self) -> BlackholeProxy:
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
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]
        generation = self._generation
        for src, dst, up in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst, generation, up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, generation: int, up: bool
    ) -> None:
        first = up  # the server's side: count the connection at its first reply
        while data := await src.read(65536):
            if self._generation == generation:  # else: swallowed, like a dead path
                dst.write(data)
                await dst.drain()
                if first:
                    first = False
                    self.answered += 1
        dst.close()
