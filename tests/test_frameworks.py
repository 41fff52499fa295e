"""asyncstampede.fastapi, asyncstampede.aiohttp and the pytest plugin, on real servers.

The examples (tests/test_examples.py) show the helpers under load; these
pin what they promise: a fresh instance per run of the app, closing from
whichever task the framework cleans up in, typed keys (no
``NotAppKeyWarning``), errors that say what to add, imports only when used.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from fastapi import FastAPI
from starlette.requests import HTTPConnection

from asyncstampede import ClosedError, Stampede
from asyncstampede import aiohttp as stampede_aiohttp
from asyncstampede import fastapi as stampede_fastapi

pytestmark = pytest.mark.anyio


async def value() -> str:
    return "v"


@pytest.fixture
def build(redis_url: str, namespace: str) -> Callable[[], Stampede]:
    """A factory of Stampedes on the session's Redis, counting what it built."""
    return lambda: Stampede.from_url(redis_url, namespace=namespace)


def test_importing_asyncstampede_imports_no_framework() -> None:
    """``import asyncstampede`` leaves FastAPI, Starlette and aiohttp unimported."""
    names = "{'fastapi', 'starlette', 'aiohttp'}"
    code = f"import sys, asyncstampede; print(sorted({names} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- FastAPI


async def test_fastapi_lifespan_builds_a_fresh_instance_each_run(
    build: Callable[[], Stampede],
) -> None:
    """Two runs of the app's lifespan (two TestClient blocks): two instances, each closed after."""
    app = FastAPI()
    run = stampede_fastapi.lifespan(build)
    seen: list[Stampede] = []
    for _ in range(2):
        async with run(app) as state:
            cache = state[stampede_fastapi.STATE_KEY]
            assert await cache.get_or_compute("k", value, ttl=30) == "v"
            seen.append(cache)
        with pytest.raises(ClosedError):
            await cache.get_or_compute("k", value, ttl=30)
    assert seen[0] is not seen[1]


async def test_fastapi_lifespan_closes_from_another_task(build: Callable[[], Stampede]) -> None:
    """Started in one task, stopped in another (as servers may run a lifespan): it closes."""
    run = stampede_fastapi.lifespan(build)
    manager = run(FastAPI())
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.__aenter__)
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.__aexit__, None, None, None)


def test_fastapi_lifespan_refuses_an_instance() -> None:
    """lifespan(Stampede()) is refused: it takes a factory, and says why."""
    with pytest.raises(TypeError, match=r"lambda: Stampede\.from_url\(url\).*more than once"):
        stampede_fastapi.lifespan(Stampede())  # type: ignore[arg-type]


async def test_fastapi_lifespan_refuses_a_factory_that_builds_something_else() -> None:
    """A factory returning a client (not a Stampede): TypeError when the app starts."""
    run = stampede_fastapi.lifespan(lambda: "redis://127.0.0.1")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned str, not a Stampede"):
        async with run(FastAPI()):
            pass


def test_fastapi_dependency_without_the_lifespan_says_what_to_add() -> None:
    """A handler asking for the instance of an app without the lifespan: what to pass to FastAPI."""
    connection = HTTPConnection({"type": "http", "state": {}})
    with pytest.raises(RuntimeError, match=r"FastAPI\(lifespan=asyncstampede\.fastapi\.lifespan"):
        stampede_fastapi.get_stampede(connection)


# --------------------------------------------------------------------------- aiohttp


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start *app* with aiohttp's runner on a free loopback port; return it and its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_aiohttp_cleanup_context_serves_and_closes_from_another_task(
    build: Callable[[], Stampede],
) -> None:
    """Started by the runner in this task, cleaned up in another: served, then closed; typed key."""

    async def handler(request: web.Request) -> web.Response:
        cache = request.config_dict[stampede_aiohttp.STAMPEDE_KEY]
        return web.json_response(await cache.get_or_compute("k", value, ttl=30))

    sub = web.Application()
    sub.router.add_get("/", handler)  # a sub-application finds the main one's instance
    app = web.Application()
    app.cleanup_ctx.append(stampede_aiohttp.cleanup_context(build))
    app.add_subapp("/sub", sub)
    with warnings.catch_warnings():
        warnings.simplefilter("error", web.NotAppKeyWarning)
        runner, base = await serve(app)
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{base}/sub/") as reply:
                assert await reply.json() == "v"
            cache = app[stampede_aiohttp.STAMPEDE_KEY]
        finally:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.cleanup)  # a task other than the one that started it
    with pytest.raises(ClosedError):
        await cache.get_or_compute("k", value, ttl=30)


async def test_aiohttp_get_stampede_without_the_cleanup_context_says_what_to_add() -> None:
    """An application without the cleanup context: RuntimeError naming what to append."""
    said: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        try:
            stampede_aiohttp.get_stampede(request)
        except RuntimeError as exc:
            said.append(str(exc))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    runner, base = await serve(app)
    try:
        async with aiohttp.ClientSession() as session, session.get(base) as reply:
            assert reply.status == 200
    finally:
        await runner.cleanup()
    assert len(said) == 1
    assert "app.cleanup_ctx.append(asyncstampede.aiohttp.cleanup_context(" in said[0]


def test_aiohttp_cleanup_context_refuses_an_instance() -> None:
    """cleanup_context(Stampede()) is refused: it takes a factory."""
    with pytest.raises(TypeError, match=r"cleanup_context\(lambda: Stampede\.from_url\(url\)\)"):
        stampede_aiohttp.cleanup_context(Stampede())  # type: ignore[arg-type]


# ----------------------------------------------------------------- the pytest plugin

USERS_TESTS = """
import pytest

from asyncstampede import Stampede
from asyncstampede.testing import RedisServer

pytestmark = pytest.mark.anyio
calls: list[str] = []


async def load() -> str:
    calls.append("load")
    return "v"


async def test_one_compute(stampede: Stampede) -> None:
    assert await stampede.get_or_compute("k", load, ttl=30) == "v"
    assert await stampede.get_or_compute("k", load, ttl=30) == "v"
    assert calls == ["load"]


async def test_a_namespace_of_its_own(stampede: Stampede) -> None:
    assert await stampede.get_or_compute("k", load, ttl=30) == "v"  # not the other test's
    assert calls == ["load", "load"]


def test_the_server(stampede_server: RedisServer) -> None:
    assert stampede_server.url.startswith("redis://127.0.0.1:")
"""


def test_pytest_plugin_gives_a_users_tests_an_entered_instance(tmp_path: Path) -> None:
    """A user's test file, pytest with nothing configured: the fixtures are there; trio skips."""
    (tmp_path / "test_users_code.py").write_text(textwrap.dedent(USERS_TESTS))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # anyio runs async tests on every backend installed (trio is, here): the
    # two that use the instance pass on asyncio and are skipped on trio.
    assert "3 passed, 2 skipped" in done.stdout


def test_no_server_starts_unless_a_test_asks(tmp_path: Path) -> None:
    """The plugin loads in every run, but sets up no fixture (no server) for tests that ask none."""
    (tmp_path / "test_plain.py").write_text("def test_plain() -> None:\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--setup-show"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "stampede" not in done.stdout
