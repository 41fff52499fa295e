"""The request connection and redis-py's internals: replies stay in step, writes push back.

The multiplexer matches replies to callers by order alone; these tests hold
it to that when a command cannot be encoded, and hold its write buffer to a
bound when the server stops reading. The last one runs an instance on a
redis-py that lacks what its own connections need (as a future release
might): it falls back to the pool and still serves one compute per herd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import pytest
from redis.exceptions import DataError

from asyncstampede import Stampede
from asyncstampede._backends.redis import backend as redis_backend
from asyncstampede._backends.redis.mux import _HIGH_WATER, Multiplexer
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio


def _mux(cache: Stampede) -> Multiplexer:
    mux = cache._rt.backend._mux  # type: ignore[attr-defined]
    assert isinstance(mux, Multiplexer)
    return mux


async def _until_connected(mux: Multiplexer) -> None:
    with anyio.fail_after(5):
        while not mux.connected:
            await anyio.sleep(0.01)


@pytest.fixture
def paused_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_a_command_that_cannot_be_encoded_fails_only_its_caller(
    redis_url: str, namespace: str
) -> None:
    """Among 300 concurrent reads an unencodable command fails alone; each read gets its reply."""
    async with Stampede.from_url(redis_url, namespace=namespace) as cache:
        mux = _mux(cache)
        await _until_connected(mux)
        for i in range(50):
            await mux.execute("SET", f"{namespace}:w{i}", f"v{i}")
        got: dict[int, object] = {}
        refused: list[BaseException] = []

        async def read(n: int) -> None:
            got[n] = await mux.execute("GET", f"{namespace}:w{n % 50}")

        async def bad() -> None:
            try:
                await mux.execute("GET", {"not": "a key"})
            except DataError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            for n in range(300):
                tg.start_soon(read, n)
                if n % 100 == 50:
                    tg.start_soon(bad)
        assert len(refused) == 3
        assert got == {n: f"v{n % 50}".encode() for n in range(300)}
        assert await mux.execute("GET", f"{namespace}:w7") == b"v7"  # still in step


async def test_a_stopped_server_pushes_back_instead_of_growing_the_write_buffer(
    paused_server: RedisServer,
) -> None:
    """32 MiB of writes to a frozen server: the unsent bytes stay near the high-water mark."""
    value = b"x" * (512 * 1024)
    rounds, per_round = 8, 8
    async with Stampede.from_url(paused_server.url, socket_timeout=30) as cache:
        mux = _mux(cache)
        await _until_connected(mux)
        writer = mux._writer
        assert writer is not None
        done: list[object] = []

        async def put(i: int) -> None:
            done.append(await mux.execute("SET", f"big{i}", value))

        most = 0
        paused_server.pause()
        try:
            async with anyio.create_task_group() as tg:
                for r in range(rounds):
                    for i in range(per_round):
                        tg.start_soon(put, r * per_round + i)
                    # Every task has run as far as it can: written, or held back.
                    await anyio.wait_all_tasks_blocked()
                    most = max(most, writer.transport.get_write_buffer_size())
                paused_server.resume()
        finally:
            paused_server.resume()
        assert done == [b"OK"] * rounds * per_round  # nothing lost once the server runs again
    # Without push-back the buffer holds what the kernel does not: about 32 MiB
    # less the socket buffers. With it: the mark, plus one round's commands.
    assert most <= _HIGH_WATER + per_round * (len(value) + 1024)


async def test_a_redis_py_without_the_internals_it_needs_falls_back_to_the_pool(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Missing redis-py internals: an ERROR naming them, no own connections, still one compute."""
    missing = ("AbstractConnection.read_response() takes no disconnect_on_error=",)
    monkeypatch.setattr(redis_backend, "redis_py_problems", lambda: missing)
    computes = 0
    release = anyio.Event()

    async def compute() -> str:
        nonlocal computes
        computes += 1
        await release.wait()
        return "v"

    async def call(cache: Stampede) -> None:
        assert await cache.get_or_compute("k", compute, ttl=60) == "v"

    with caplog.at_level(logging.ERROR, logger="asyncstampede"):
        async with (
            Stampede.from_url(redis_url, namespace=namespace, lock_ttl=0.5) as a,
            Stampede.from_url(redis_url, namespace=namespace, lock_ttl=0.5) as b,
        ):
            async with anyio.create_task_group() as tg:
                for cache in (a, b):
                    for _ in range(5):
                        tg.start_soon(call, cache)
                with anyio.fail_after(10):
                    while a.statistics().computing + b.statistics().computing == 0:
                        await anyio.sleep(0.01)
                    while (a.statistics().waiting or b.statistics().waiting) == 0:
                        await anyio.sleep(0.01)
                release.set()
            assert not _mux(a).connected
            assert not _mux(b).connected
    assert computes == 1
    assert any("disconnect_on_error" in r.getMessage() for r in caplog.records)
