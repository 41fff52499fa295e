"""The client a `Stampede` is given, or builds from a URL."""

from __future__ import annotations

import re

from redis import Redis as SyncRedis
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from ..._exceptions import InvalidURLError
from .sentinel import (
    check_sentinel_client,
    is_sentinel_url,
    scrubbed,
    sentinel_client_from_url,
    shown_url,
)
from .wire import quiet_handshake

__all__ = ["check_client", "client_from_url", "cluster_from_url"]


def check_client(redis: object) -> None:
    """Refuse anything but a ``redis.asyncio`` ``Redis`` or ``RedisCluster``, saying what to pass.

    Raises:
        TypeError: *redis* is a URL, a synchronous client...

    """
    check_sentinel_client(redis)  # a Sentinel itself, or its replicas' client
    if isinstance(redis, Redis | RedisCluster):
        return
    if isinstance(redis, str):
        raise TypeError(  # the URL is not repeated: it may hold a password
            "Stampede() takes a redis.asyncio.Redis client; for a URL use Stampede.from_url(url)"
        )
    if isinstance(redis, SyncRedis):
        raise TypeError(
            "Stampede() needs an asyncio client: pass redis.asyncio.Redis (not redis.Redis), "
            "or use Stampede.from_url(url)"
        )
    raise TypeError(
        f"Stampede() takes a redis.asyncio.Redis (or RedisCluster) client, not "
        f"{type(redis).__module__}.{type(redis).__qualname__}"
    )


def client_from_url(url: str, *, max_connections: int, socket_timeout: float) -> Redis:
    """Return a client for *url* with a pool of *max_connections* and retried commands.

    A ``redis+sentinel://`` URL gives a client of the service's primary
    (``Sentinel.master_for``) with the same pool settings (see ``sentinel``).

    A plain pool behind the backend's own semaphore (see ``RedisBackend``)
    rather than a ``BlockingConnectionPool``: same guarantee, but no
    ``asyncio.Condition`` round on every command, which cost 5-10% of a
    cache hit. A failed command is retried (every command and script
    asyncstampede sends is safe to run twice). Its connections send no
    handshake a supported server refuses (see `quiet_handshake`).

    Raises:
        TypeError: *url* is not a str, *max_connections* not an int, or
            *socket_timeout* not a number.
        InvalidURLError: *url* is malformed (an unknown scheme, a port that
            is not a number, a ``redis+sentinel://`` URL without a service...).
        ValueError: *max_connections* is below 1, or *socket_timeout* is not
            a positive number of seconds (at most a day).

    """
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise TypeError(f"max_connections must be an int, not {type(max_connections).__name__}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    if not isinstance(url, str):
        raise TypeError(
            f"url must be a str such as 'redis://host:6379/0', not {type(url).__name__}"
        )
    if isinstance(socket_timeout, bool) or not isinstance(socket_timeout, (int, float)):
        raise TypeError(
            f"socket_timeout must be a number of seconds, not {type(socket_timeout).__name__}"
        )
    if not 0 < socket_timeout <= 86_400:
        raise ValueError(
            f"socket_timeout must be a positive number of seconds, got {socket_timeout!r}"
        )
    options = {
        "max_connections": max_connections,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 2.0),
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.01), 2),
    }
    if is_sentinel_url(url):
        return sentinel_client_from_url(url, **options)
    _check_database(url)
    try:
        pool = ConnectionPool.from_url(url, **options, **quiet_handshake(ConnectionPool))
        # A connection made (not connected) now: what its query sets is
        # checked here, not at the first connection, where it would end the
        # instance's start (ssl_cert_reqs=bogus, an unknown parameter).
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError, RedisError) as exc:  # (an unknown scheme, a bad port...)
        raise InvalidURLError(
            f"bad Redis URL {shown_url(url)!r}: {scrubbed(str(exc), url).rstrip('.')}. {_FORMS}"
        ) from None
    return Redis.from_pool(pool)


_FORMS = (
    "The forms are redis://[[user]:password@]host[:port][/db] (rediss:// for TLS), "
    "unix://[[user]:password@]/path/to/socket[?db=N], and "
    "redis+sentinel://host:port[,host:port...]/service_name[/db]"
)


def _check_database(url: str) -> None:
    """Refuse a ``redis://`` path that is not a database number (redis-py would use 0).

    Raises:
        InvalidURLError: the path is not ``/<number>`` (``/abc``, ``/0/extra``).

    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        return  # (unix:// takes the database in its query; a bad scheme is refused below)
    path = rest.rpartition("@")[2].partition("?")[0].partition("#")[0].partition("/")[2]
    if path and not re.fullmatch(r"\d+/?", path):
        raise InvalidURLError(
            f"bad Redis URL {shown_url(url)!r}: its path {'/' + path!r} is not a database "
            f"number (redis://host:6379/0 is database 0). {_FORMS}"
        )


def cluster_from_url(url: str, *, max_connections: int, socket_timeout: float) -> RedisCluster:
    """Return a ``RedisCluster`` for *url* (any node), holding the settings for each primary.

    No connection is made here, and none through it later: asyncstampede
    reads the topology and talks to each primary itself (see ``cluster``),
    with a pool of *max_connections* per primary.

    Raises:
        TypeError, ValueError: as `client_from_url`, or *url* is a
            ``redis+sentinel://`` one (Sentinel watches one primary, not a cluster).
        InvalidURLError: a URL a cluster cannot take (a database other than
            0, a socket path).

    """
    if isinstance(url, str) and is_sentinel_url(url):
        raise ValueError(
            "cluster=True takes the URL of a node of the cluster (redis:// or rediss://); "
            "for Sentinel, give the redis+sentinel:// URL without cluster=True"
        )
    client_from_url(url, max_connections=max_connections, socket_timeout=socket_timeout)
    try:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
        )
    except (RedisClusterException, ValueError) as exc:  # (database 1, a socket path...)
        raise InvalidURLError(
            f"cluster=True takes the URL of a node of the cluster, "
            f"redis://[user:password@]host:port[/0]: {scrubbed(str(exc), url)}"
        ) from None
