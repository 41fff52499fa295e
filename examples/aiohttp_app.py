"""aiohttp with asyncstampede: a cold item is built once, however many requests ask for it.

Run it against a Redis (``REDIS_URL``, by default ``redis://127.0.0.1:6379/0``)::

    pip install "asyncstampede[aiohttp]"
    PORT=8080 python examples/aiohttp_app.py

then ask for one item 200 times at once::

    seq 200 | xargs -P 200 -I{} curl -s localhost:8080/items/7 -o /dev/null
    redis-cli GET examples:item-builds    # 1: one build for 200 requests

Several processes (behind a load balancer, or ``web.run_app`` started once
per core) share the one build in the same way: the lock lives in Redis.
"""

from __future__ import annotations

import os

import anyio
from aiohttp import web
from redis.asyncio import Redis

from asyncstampede import Stampede
from asyncstampede.aiohttp import STAMPEDE_KEY, cleanup_context

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def build_item(item_id: int) -> dict[str, int]:
    """Build it the slow way: this stands for a database query (half a second)."""
    # Counted in Redis, where every process's builds add up, to show how many ran.
    async with Redis.from_url(REDIS_URL) as redis:
        await redis.incr("examples:item-builds")
    await anyio.sleep(0.5)
    return {"id": item_id, "price": item_id * 3}


async def get_item(request: web.Request) -> web.Response:
    """Return an item, built at most once a minute."""
    cache = request.config_dict[STAMPEDE_KEY]  # typed: a Stampede
    item_id = int(request.match_info["item_id"])
    item = await cache.get_or_compute(f"item:{item_id}", build_item, 60, item_id)
    return web.json_response(item)


async def health(request: web.Request) -> web.Response:
    """Answer once the app has started."""
    return web.json_response({"status": "ok"})


def make_app() -> web.Application:
    """Build the application: the Stampede lives as long as it runs."""
    app = web.Application()
    app.cleanup_ctx.append(cleanup_context(lambda: Stampede.from_url(REDIS_URL, namespace="items")))
    app.router.add_get("/items/{item_id}", get_item)
    app.router.add_get("/health", health)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
