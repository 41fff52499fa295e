"""FastAPI with asyncstampede: a cold report is built once, however many workers ask for it.

Run it against a Redis (``REDIS_URL``, by default ``redis://127.0.0.1:6379/0``)::

    pip install "asyncstampede[fastapi]" uvicorn
    uvicorn fastapi_app:app --app-dir examples --workers 2 --port 8000

then ask for one report 200 times at once (each worker answers some)::

    seq 200 | xargs -P 200 -I{} curl -s localhost:8000/reports/7 -o /dev/null
    redis-cli GET examples:report-builds    # 1: one build for 200 requests

Each worker runs the lifespan, so each has a `Stampede` of its own; the
Redis lock they share makes one of them build the report while the others
wait for it (and are woken the moment it is stored).
"""

from __future__ import annotations

import datetime
import os

import anyio
from fastapi import FastAPI
from pydantic import BaseModel
from redis.asyncio import Redis

from asyncstampede import Stampede
from asyncstampede.fastapi import StampedeDep, lifespan

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = FastAPI(lifespan=lifespan(lambda: Stampede.from_url(REDIS_URL, namespace="reports")))


class Report(BaseModel):
    """What a handler returns: a pydantic model, cached as itself (``model=Report``)."""

    id: int
    total: int
    built_at: datetime.datetime


class Answer(BaseModel):
    """The response: the report, and which worker answered."""

    report: Report
    worker: int


async def build_report(report_id: int) -> Report:
    """Build it the slow way: this stands for a database query (half a second)."""
    # Counted in Redis, where every worker's builds add up, to show how many ran.
    async with Redis.from_url(REDIS_URL) as redis:
        await redis.incr("examples:report-builds")
    await anyio.sleep(0.5)
    return Report(id=report_id, total=report_id * 100, built_at=datetime.datetime.now(datetime.UTC))


@app.get("/reports/{report_id}")
async def get_report(report_id: int, cache: StampedeDep) -> Answer:
    """Return a report, built at most once a minute across every worker."""
    report = await cache.get_or_compute(
        f"report:{report_id}", build_report, 60, report_id, model=Report
    )
    return Answer(report=report, worker=os.getpid())


@app.get("/health")
async def health() -> dict[str, str]:
    """Answer once the app has started."""
    return {"status": "ok"}
