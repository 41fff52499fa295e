"""The faults the soak injects, one at a time; each returns what it did, for the report.

- ``restart``: the server is killed and started again on the same port, with
  nothing in it (no values, no locks, no scripts): a crash, or a failover
  to an empty replica.
- ``client-kill``: the connections that watch locks are killed, as a proxy
  or an idle timeout would: ``CLIENT KILL TYPE pubsub``, and by id every
  connection ``CLIENT LIST`` flags with ``t`` (client tracking on), in a
  random order.
- ``script-flush``: ``SCRIPT FLUSH``: the next script call gets
  ``NOSCRIPT``.
- ``kill-holder``: a worker is told to block its next compute; once it is
  blocking, with the key's lock held, it is SIGKILLed, and a new worker
  takes its slot. The others must take the lock over when it expires.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import redis

from asyncstampede.testing import RedisServer

from ._fleet import Fleet, shielded

KINDS = ("restart", "client-kill", "script-flush", "kill-holder")
HOLD_WAIT = 15.0  # seconds a worker is given to start a compute it will hold


class Deck:
    """The kinds in a fresh random order each round, so every kind comes once per round."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._left: list[str] = []

    def draw(self) -> str:
        if not self._left:
            self._left = list(KINDS)
            self._rng.shuffle(self._left)
        return self._left.pop()


def inject(kind: str, server: RedisServer, fleet: Fleet, rng: random.Random) -> dict[str, Any]:
    """Inject one fault of *kind*; what it did (``injected`` False: it could not be done)."""
    started = time.time()
    if kind == "restart":
        with shielded():
            server.restart()
        done: dict[str, Any] = {"injected": True}
    elif kind == "client-kill":
        done = _client_kill(server.url, rng)
    elif kind == "script-flush":
        client = redis.Redis.from_url(server.url)
        try:
            client.script_flush()
        finally:
            client.close()
        done = {"injected": True}
    elif kind == "kill-holder":
        done = _kill_holder(fleet, rng)
    else:  # pragma: no cover - KINDS is the list
        raise ValueError(kind)
    return {"kind": kind, "t": started, "took_s": time.time() - started, **done}


def _client_kill(url: str, rng: random.Random) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    # Which go first, at random: asyncstampede closes its tracking connection
    # within a millisecond of losing the subscriber it redirects to (and the
    # other way round), so whichever is killed second is mostly gone already.
    # Both orders are its paths to test.
    tracking_first = rng.random() < 0.5
    try:
        own = client.client_id()
        tracking = [
            c["id"] for c in client.client_list() if "t" in c["flags"] and int(c["id"]) != own
        ]
        pubsub: int = 0 if tracking_first else client.client_kill_filter(_type="pubsub")
        killed = 0
        for client_id in tracking:
            # One may be gone already (closed by its client): an error, or 0.
            with contextlib.suppress(redis.ResponseError):
                killed += client.client_kill_filter(_id=client_id)
        if tracking_first:
            pubsub = client.client_kill_filter(_type="pubsub")
    finally:
        client.close()
    return {
        "injected": True,
        "first": "tracking" if tracking_first else "pubsub",
        "pubsub": pubsub,
        "tracking": killed,
        "tracking_gone": len(tracking) - killed,
    }


def _kill_holder(fleet: Fleet, rng: random.Random) -> dict[str, Any]:
    live = fleet.live()
    if not live:
        return {"injected": False, "why": "no live worker"}
    victim = rng.choice(live)
    if not fleet.send(victim, "hold"):
        return {"injected": False, "why": "the worker no longer reads"}
    holding = victim.wait_event("holding", HOLD_WAIT)
    if holding is None:
        fleet.send(victim, "unhold")  # and let any compute it holds later go on
        return {"injected": False, "why": f"no compute started within {HOLD_WAIT:g} s"}
    fleet.kill(victim)
    replacement = fleet.start(victim.slot)
    return {
        "injected": True,
        "pid": victim.pid,
        "key": holding["k"],
        "held_at": holding["t"],
        "replacement": replacement.pid,
    }
