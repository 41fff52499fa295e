"""The runnable examples under examples/, run as a user runs them, against real servers.

Each starts on a free loopback port (uvicorn with two workers, aiohttp's
runner, a plain anyio script) over a throwaway Redis of its own, then 200
concurrent requests ask for one cold key: exactly one compute, counted in
Redis (where both uvicorn workers' builds add up).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HERD = 200  # concurrent requests on one cold key
START_WITHIN = 30.0  # seconds: a hang guard for a server's start, not a measurement


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run *args* in a session of its own; stop it, and anything it started, on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=EXAMPLES.parent,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # uvicorn's parent stops its workers on SIGTERM
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker its parent left behind


def wait_serving(
    proc: subprocess.Popen[bytes], log: Path, base: str, ready: Callable[[str], bool]
) -> None:
    """Return once *ready* holds for the log and ``/health`` answers; fail with the log if not."""
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        if ready(log.read_text()):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
        time.sleep(0.02)  # a poll interval: the condition is the health answer
    pytest.fail(f"not serving within {START_WITHIN} s:\n{log.read_text()}")


async def herd(url: str, n: int = HERD) -> list[Any]:
    """Send *n* GETs to *url* at once, each on a connection of its own; return the JSON bodies."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> Any:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as reply:
                reply.raise_for_status()
                return await reply.json()

        return list(await asyncio.gather(*(one() for _ in range(n))))


def counter(server: RedisServer, key: str) -> int:
    with redis.Redis.from_url(server.url) as client:
        return int(client.get(key) or 0)


def test_fastapi_example_two_uvicorn_workers_compute_once(
    own_server: RedisServer, tmp_path: Path
) -> None:
    """uvicorn --workers 2, 200 concurrent requests per cold report: one build, both workers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn.log"
    args = [
        sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES),
        "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    with running(args, {"REDIS_URL": own_server.url}, log) as proc:
        # Both workers have run the lifespan (each has its Stampede entered).
        wait_serving(proc, log, base, lambda text: text.count("Application startup complete") == 2)
        # The kernel hands the herd's connections to either worker; a herd
        # all on one would prove nothing across processes, so a fresh cold
        # report is asked for until one herd spans both (each must build once).
        for report_id in range(1, 6):
            answers = asyncio.run(herd(f"{base}/reports/{report_id}"))
            assert counter(own_server, "examples:report-builds") == report_id  # one more build
            # One build: one report (one built_at), in every answer, from either worker.
            reports = {repr(a["report"]) for a in answers}
            assert len(reports) == 1
            assert answers[0]["report"]["total"] == report_id * 100
            if len({a["worker"] for a in answers}) == 2:
                break
        else:
            pytest.fail("5 herds of 200 requests, each answered by a single worker")


def test_aiohttp_example_computes_once(own_server: RedisServer, tmp_path: Path) -> None:
    """aiohttp's runner on loopback, 200 concurrent requests for one cold item: one build."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "aiohttp.log"
    args = [sys.executable, str(EXAMPLES / "aiohttp_app.py")]
    with running(args, {"REDIS_URL": own_server.url, "PORT": str(port)}, log) as proc:
        wait_serving(proc, log, base, lambda text: True)
        answers = asyncio.run(herd(f"{base}/items/7"))
        assert answers == [{"id": 7, "price": 21}] * HERD
        assert counter(own_server, "examples:item-builds") == 1
        proc.terminate()  # aiohttp's runner cleans up on SIGTERM: the cleanup context closes it
        assert proc.wait(10) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_anyio_example_computes_once(own_server: RedisServer) -> None:
    """The task-group script: 200 concurrent calls on a cold key, one compute, a clean exit."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "anyio_taskgroup.py")],
        env={**os.environ, "REDIS_URL": own_server.url},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "200 calls, 1 distinct answer, 1 compute"
    assert done.stderr == ""
