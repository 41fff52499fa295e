"""FastAPI (and Starlette): one `Stampede` for the app's life, given to handlers as a dependency.

Install with ``pip install "asyncstampede[fastapi]"``; ``import asyncstampede``
alone never imports FastAPI.

`lifespan` enters the instance a factory builds when the app starts and
closes it when the app stops; the instance travels in the lifespan's state
(Starlette's ``request.state``), so every request of the app and of the
apps mounted in it finds it. Handlers ask for it with `StampedeDep`:

```python
from fastapi import FastAPI

from asyncstampede import Stampede
from asyncstampede.fastapi import StampedeDep, lifespan

app = FastAPI(lifespan=lifespan(lambda: Stampede.from_url(REDIS_URL, namespace="api")))


@app.get("/users/{user_id}")
async def get_user(user_id: int, cache: StampedeDep) -> dict[str, object]:
    return await cache.get_or_compute(f"user:{user_id}", load_user, 300, user_id)
```

Each worker process (``uvicorn --workers N``) runs the lifespan, so each has
an instance of its own; Redis makes them compute each key once between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import Depends
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        'asyncstampede.fastapi needs FastAPI: pip install "asyncstampede[fastapi]"'
    ) from exc

from ._stampede import Stampede

__all__ = ["STATE_KEY", "StampedeDep", "get_stampede", "lifespan"]

STATE_KEY = "asyncstampede"
"""The key of the instance in the lifespan's state (``request.state.asyncstampede``)."""


def lifespan(
    factory: Callable[[], Stampede],
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """Return a lifespan that runs the `Stampede` *factory* builds while the app runs.

    Pass it as ``FastAPI(lifespan=...)`` (or Starlette's). Each run of the
    lifespan (each worker process; each ``TestClient`` block) builds and
    enters a fresh instance, yields ``{STATE_KEY: instance}`` as the
    lifespan's state, and closes the instance when the app stops.

    To run other things in the same lifespan, enter this one inside yours
    and pass its state on:

    ```python
    cache_lifespan = lifespan(lambda: Stampede.from_url(REDIS_URL))


    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with cache_lifespan(app) as state, open_database() as db:
            yield {**state, "db": db}
    ```

    Args:
        factory: A callable taking no arguments that returns a new, not yet
            entered `Stampede`, e.g. ``lambda: Stampede.from_url(url)``.

    Returns:
        A lifespan: a callable taking the app, returning an async context
        manager whose value is the lifespan's state.

    Raises:
        TypeError: *factory* is a `Stampede` rather than a callable that
            builds one (an instance runs once, and a lifespan may run more
            than once), or is not callable; or, when the app starts, what
            it returned is not a `Stampede`.

    """
    if isinstance(factory, Stampede) or not callable(factory):
        raise TypeError(
            "lifespan() takes a function that builds the Stampede, e.g. "
            "lifespan(lambda: Stampede.from_url(url)), not "
            f"{type(factory).__name__}: an instance runs only once, and an app's "
            "lifespan may run more than once (one per TestClient block)"
        )

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        stampede = factory()
        if not isinstance(stampede, Stampede):
            raise TypeError(
                f"the factory given to lifespan() returned {type(stampede).__name__}, "
                "not a Stampede"
            )
        async with stampede:
            yield {STATE_KEY: stampede}

    return run


def get_stampede(connection: HTTPConnection) -> Stampede:
    """FastAPI dependency: the `Stampede` that `lifespan` runs for this app.

    Works in HTTP and WebSocket handlers alike. Prefer the `StampedeDep`
    annotation, which carries it.

    Raises:
        RuntimeError: the app's lifespan has not run `lifespan` (the
            message says how to add it).

    """
    stampede: Stampede | None = getattr(connection.state, STATE_KEY, None)
    if stampede is None:
        raise RuntimeError(
            "no Stampede in this request's state: create the app with "
            "FastAPI(lifespan=asyncstampede.fastapi.lifespan(lambda: Stampede.from_url(url))), "
            "or yield that lifespan's state from your own"
        )
    return stampede


StampedeDep = Annotated[Stampede, Depends(get_stampede)]
"""The `Stampede` of the app, as a handler's parameter type: ``cache: StampedeDep``."""
