"""aiohttp: one `Stampede` for the application's life, under a typed application key.

Install with ``pip install "asyncstampede[aiohttp]"``; ``import asyncstampede``
alone never imports aiohttp.

`cleanup_context` enters the instance a factory builds when the application
starts and closes it at clean-up; handlers find it under `STAMPEDE_KEY`
(an ``aiohttp.web.AppKey``, so there is no ``NotAppKeyWarning`` and the
type checker knows what it holds):

```python
from aiohttp import web

from asyncstampede import Stampede
from asyncstampede.aiohttp import STAMPEDE_KEY, cleanup_context


async def get_item(request: web.Request) -> web.Response:
    cache = request.config_dict[STAMPEDE_KEY]
    item_id = request.match_info["item_id"]
    item = await cache.get_or_compute(f"item:{item_id}", load_item, 60, item_id)
    return web.json_response(item)


app = web.Application()
app.cleanup_ctx.append(cleanup_context(lambda: Stampede.from_url(REDIS_URL, namespace="web")))
app.router.add_get("/items/{item_id}", get_item)
```

``request.config_dict`` looks the key up in the request's application and
then in the applications it is nested in, so sub-applications share the
main one's instance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        'asyncstampede.aiohttp needs aiohttp: pip install "asyncstampede[aiohttp]"'
    ) from exc

from ._stampede import Stampede

__all__ = ["STAMPEDE_KEY", "cleanup_context", "get_stampede"]

STAMPEDE_KEY: web.AppKey[Stampede] = web.AppKey("stampede", Stampede)
"""Where `cleanup_context` puts the instance: ``request.config_dict[STAMPEDE_KEY]``."""


def cleanup_context(
    factory: Callable[[], Stampede],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a cleanup context that runs the `Stampede` *factory* builds while the app runs.

    Append it to ``app.cleanup_ctx``: at start-up it builds and enters a
    fresh instance and stores it as ``app[STAMPEDE_KEY]``; at clean-up it
    closes it (aiohttp may run the two in different tasks: any task may
    close a `Stampede`).

    Args:
        factory: A callable taking no arguments that returns a new, not yet
            entered `Stampede`, e.g. ``lambda: Stampede.from_url(url)``.

    Returns:
        An async generator function taking the application, as
        ``app.cleanup_ctx`` expects.

    Raises:
        TypeError: *factory* is a `Stampede` rather than a callable that
            builds one (an instance runs only once), or is not callable;
            or, at start-up, what it returned is not a `Stampede`.

    """
    if isinstance(factory, Stampede) or not callable(factory):
        raise TypeError(
            "cleanup_context() takes a function that builds the Stampede, e.g. "
            "cleanup_context(lambda: Stampede.from_url(url)), not "
            f"{type(factory).__name__}: an instance runs only once"
        )

    async def run(app: web.Application) -> AsyncIterator[None]:
        stampede = factory()
        if not isinstance(stampede, Stampede):
            raise TypeError(
                f"the factory given to cleanup_context() returned {type(stampede).__name__}, "
                "not a Stampede"
            )
        async with stampede:
            app[STAMPEDE_KEY] = stampede
            yield

    return run


def get_stampede(request: web.Request) -> Stampede:
    """Return the `Stampede` that `cleanup_context` runs for the request's application.

    The same as ``request.config_dict[STAMPEDE_KEY]``, with an error that
    says what is missing.

    Raises:
        RuntimeError: no application the request belongs to has
            `cleanup_context` in its ``cleanup_ctx``, or it has not started.

    """
    try:
        return request.config_dict[STAMPEDE_KEY]
    except KeyError:
        raise RuntimeError(
            "no Stampede in this application: add "
            "app.cleanup_ctx.append(asyncstampede.aiohttp.cleanup_context("
            "lambda: Stampede.from_url(url))) before it starts"
        ) from None
