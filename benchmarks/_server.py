"""The Redis the harness runs on, and how it counts the commands that server executes.

Commands are counted by the server, not by the clients: ``INFO commandstats``
read before and after a measured stretch, and the difference taken. That
counts every command a client sent (a pipeline of ten counts ten, the pub/sub
and tracking connections count too) and every command a Lua script ran with
``redis.call``, and nothing in any client library has to be patched for it.
The harness never runs ``CONFIG SET`` or ``CONFIG RESETSTAT`` to count, so the
same code is safe on a server given with ``--url`` (there, other clients'
commands in the same stretch are counted too: use a server of your own).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from asyncstampede.testing import RedisServer

# The throwaway server's keyspace notifications: keyspace channels (K) for
# generic commands such as DEL (g), string commands such as SET ($) and
# expiries (x), what the keyspace wake transport needs. With no subscriber a
# notification costs the server a lookup of the channel and nothing else;
# only the wake-transports scenario's keyspace row subscribes.
KEYSPACE_EVENTS = ("--notify-keyspace-events", "K$gx")


@contextmanager
def throwaway_server(*server_args: str) -> Iterator[str]:
    """Start a Redis on a free loopback port, yield its URL, stop it on exit.

    *server_args* are more ``redis-server`` arguments, such as ``--maxmemory``:
    settings the harness only ever gives a server it started itself.
    """
    with RedisServer(*server_args) as server:
        yield server.url


class CommandCounter:
    """Counts the commands a server executes between two readings of ``INFO commandstats``.

    Usage: ``before = counter.read()``, run the stretch, then
    ``counter.since(before)``: commands executed meanwhile, by name (lower
    case, ``client|setname`` for subcommands). The counter's own ``INFO``
    is taken out of the figure.
    """

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)

    def read(self) -> Counter[str]:
        """The server's count of calls per command so far."""
        stats: dict[str, dict[str, Any]] = self._client.info("commandstats")
        return Counter(
            {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}
        )

    def since(self, before: Counter[str]) -> Counter[str]:
        """The commands executed since *before* was read, without the reading itself."""
        delta = self.read()
        delta.subtract(before)
        delta["info"] -= 1  # the INFO that read `before`; this one counts itself only next time
        return Counter({name: n for name, n in delta.items() if n > 0})

    def close(self) -> None:
        self._client.close()


def server_info(url: str) -> dict[str, Any]:
    """The server's ``INFO server`` section (version, executable, ...)."""
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("server")
        return info
    finally:
        client.close()


def evicted_keys(url: str) -> int:
    """How many keys the server has evicted under ``maxmemory`` since it started."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["evicted_keys"])
    finally:
        client.close()
