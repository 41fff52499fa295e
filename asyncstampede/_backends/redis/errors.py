"""The Redis error boundary: every redis-py or socket error becomes a `BackendError` here.

Two families (see ``_exceptions``):

- *unavailable*: Redis could not be reached, the connection dropped, a reply
  did not come in time, or the server is busy in a way that passes by itself
  (``LOADING``, ``READONLY`` during a failover, ``TRYAGAIN``, ``BUSY``...);
- *refused*: Redis answered and said no, and will keep saying it until
  somebody changes its configuration or the app's: ``NOPERM``, a wrong or
  missing password, ``OOM`` on a full ``noeviction`` server, ``WRONGTYPE``,
  an invalid DB index, a TLS certificate the client does not trust.

Every mapped error names the server's address, the command, the server's
own words, and, where it is known, what to change (`hint`); ``_problems``
logs them.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ..._exceptions import BackendError, BackendRefusedError, BackendUnavailableError

__all__ = [
    "blocked_loop",
    "BASE_ACL",
    "MINIMUM_ACL",
    "WAKE_ACL",
    "PrimaryAddress",
    "Redirected",
    "is_connection_trouble",
    "address_of",
    "describe",
    "is_refusal",
    "map_error",
    "readonly_reply",
    "server_text",
]


# What asyncstampede sends, as ACL rules (``<namespace>`` is the instance's).
# redis-py adds HELLO on each connection (asyncstampede's own connections skip
# its CLIENT SETINFO: see wire.quiet_handshake), and SELECT for a DB other than
# 0; HELLO also tells asyncstampede the server's version at start. The scripts
# run GET, SET, DEL, PEXPIRE and PTTL, which ACLs check like any command; their
# PUBLISH is a pcall (refused, it is skipped). Then each wake transport needs
# its own.
BASE_ACL: Final = (
    "resetchannels -@all +hello +ping +select +get +mget +set +del +pexpire +pttl "
    "+evalsha +script|load +watch +multi +exec ~<namespace>:*"
)
WAKE_ACL: Final = {
    "tracking": "+client|id +client|tracking +subscribe &__redis__:invalidate",
    "tracking-resp3": "+client|tracking",
    "keyspace": "+config|get +subscribe +unsubscribe &__keyspace@*__:<namespace>:*",
    "channel": "+subscribe +unsubscribe +publish &<namespace>:*",
}
# The base and the first transport `wake="auto"` tries: the rules to grant
# where nothing else is known.
MINIMUM_ACL: Final = (
    "resetchannels &__redis__:invalidate -@all +hello +ping +select "
    "+get +mget +set +del +pexpire +pttl +evalsha +script|load +watch +multi +exec "
    "+client|id +client|tracking +subscribe ~<namespace>:*"
)

# Error prefixes of conditions that pass by themselves: unavailable, not refused.
_TRANSIENT_PREFIXES = ("BUSY", "LOADING", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")
_NOPERM_COMMAND = re.compile(r"run the '([^']+)' command")


class Redirected(BackendUnavailableError):
    """A Redis Cluster node answered ``MOVED`` or ``ASK``: the key's slot is served elsewhere.

    Handled by the cluster backend (it learns the new owner and sends the
    work there); it reaches a caller only when that keeps failing, as an
    unavailable Redis (the caller fails open). It opens no circuit breaker:
    the node is fine.

    Attributes:
        slot: The hash slot.
        target: ``(host, port)`` of the node the server named.
        ask: ``ASK`` (a slot being migrated) rather than ``MOVED``.

    """

    def __init__(
        self,
        message: str,
        *,
        address: str,
        command: str | None,
        slot: int,
        target: tuple[str, int],
        ask: bool,
    ) -> None:
        super().__init__(message, address=address, command=command)
        self.slot = slot
        self.target = target
        self.ask = ask


class PrimaryAddress(str):
    """The address of a primary the sentinels name: one string, whichever server that is now.

    The string (``sentinel:<service>/<db>``) is what metrics, log fields and
    `BackendError.address` carry, so a failover starts no new series;
    `described` adds the server the sentinels named last, for messages.
    """

    _current: Callable[[], object] | None

    def __new__(cls, text: str, current: Callable[[], object] | None = None) -> PrimaryAddress:
        self = super().__new__(cls, text)
        self._current = current  # -> (host, port), or None before the first connection
        return self

    def described(self) -> str:
        """Return the address with the primary now named: ``sentinel:app/0 (primary h:p)``."""
        try:
            now = self._current() if self._current is not None else None
        except ReferenceError:  # the pool is gone
            now = None
        if isinstance(now, tuple) and len(now) == 2:
            return f"{self} (primary {now[0]}:{now[1]})"
        return f"{self} (primary not resolved yet)"


def describe(address: str) -> str:
    """Return *address* as messages show it (a Sentinel service with its primary now)."""
    return address.described() if isinstance(address, PrimaryAddress) else address


def address_of(connection_kwargs: dict[str, Any]) -> str:
    """Return ``host:port/db`` (or the socket path) from a redis-py pool's connection kwargs.

    For a Sentinel-managed pool (whose connections find the primary by
    asking the sentinels), a `PrimaryAddress` naming the service.
    """
    db = connection_kwargs.get("db", 0) or 0
    pool = connection_kwargs.get("connection_pool")  # (a weak proxy to the pool)
    service = getattr(pool, "service_name", None)
    if isinstance(service, str):
        return PrimaryAddress(
            f"sentinel:{service}/{db}", lambda: getattr(pool, "master_address", None)
        )
    path = connection_kwargs.get("path")
    if path:
        return f"{path}/{db}"
    host = connection_kwargs.get("host", "localhost")
    port = connection_kwargs.get("port", 6379)
    return f"{host}:{port}/{db}"


def server_text(exc: BaseException) -> str:
    """Return the error as the server worded it (redis-py strips its leading code)."""
    code = getattr(exc, "status_code", None)
    text = str(exc)
    if isinstance(code, str) and code and not text.startswith(code):
        return f"{code} {text}"
    return text or type(exc).__name__


def is_refusal(exc: BaseException) -> bool:
    """Whether *exc* (from redis-py or a socket) is a refusal rather than unavailability."""
    if isinstance(exc, BusyLoadingError | ReadOnlyError | TryAgainError | ClusterDownError):
        return False
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return True
    if isinstance(exc, ResponseError):
        return not server_text(exc).startswith(_TRANSIENT_PREFIXES)
    # A certificate that does not verify is a configuration, not an outage.
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _hint(exc: BaseException, text: str, namespace: str | None) -> str | None:
    """Return what to change for a refusal, when it is known."""
    upper = text.upper()
    if upper.startswith("NOPERM"):
        match = _NOPERM_COMMAND.search(text)
        if match:
            return f"grant the ACL rule +{match.group(1).lower()}"
        if "channel" in text:
            ns = namespace or "<namespace>"
            return (
                "grant the channel of the wake transport: &__redis__:invalidate (tracking), "
                f"&__keyspace@*__:{ns}:* (keyspace) or &{ns}:* (channel)"
            )
        if "key" in text:
            keys = f"~{namespace}:*" if namespace else "~<namespace>:*"
            return f"grant the ACL rule {keys}"
        return f"grant what asyncstampede needs: {MINIMUM_ACL}"
    if "can't run this command" in text:  # an ACL refusing a command inside a script
        return f"a script ran a command the ACL user lacks; grant: {MINIMUM_ACL}"
    if upper.startswith("OOM") or "maxmemory" in text:
        return (
            "Redis is full and may evict nothing (maxmemory-policy noeviction, or a "
            "volatile-* policy and no key with a TTL): raise maxmemory, or, if it holds only "
            "cache, use an evicting policy such as allkeys-lru (it evicts keys without a TTL "
            "too: keep data that must stay on a Redis of its own)"
        )
    if upper.startswith("WRONGTYPE"):
        return "another program stores other data under this namespace: give asyncstampede one"
    if upper.startswith(("WRONGPASS", "NOAUTH", "INVALID PASSWORD")) or isinstance(
        exc, AuthenticationError
    ):
        return "check the username and password in the Redis URL"
    if "DB index" in text:
        return "use a database index below the server's 'databases' setting"
    if "unknown command" in text.lower():
        return "this server or proxy lacks a command asyncstampede needs (Redis 6.2 or later)"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "pass the server's CA (ssl_ca_certs=...) or fix the certificate"
    return None


def map_error(
    exc: BaseException,
    *,
    address: str,
    command: str | None = None,
    namespace: str | None = None,
) -> BackendError:
    """Return the `BackendError` for a redis-py or socket error.

    Args:
        exc: What redis-py (or the socket) raised.
        address: The server's address, for the message.
        command: The command that failed, if one did (None: the connection).
        namespace: The instance's namespace, for hints about key permissions.

    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]  # a task group's: the first failure stands for it
    if isinstance(exc, BackendError):
        return exc
    text = server_text(exc)
    what = f" {command.upper()}" if command else ""
    where = describe(address)
    if isinstance(exc, AskError):  # (MovedError is one: an ASK that stays)
        return Redirected(
            f"Redis at {address} answered{what}: {text} (its hash slot is served elsewhere)",
            address=address,
            command=command,
            slot=int(exc.slot_id),
            target=(str(exc.host), int(exc.port)),
            ask=not isinstance(exc, MovedError),
        )
    if is_refusal(exc):
        hint = _hint(exc, text, namespace)
        # A login or certificate refused while connecting refuses the
        # connection, whatever command was about to go out on it.
        if isinstance(exc, RedisConnectionError) or not what:
            what, command = " the connection", None
        message = f"Redis at {where} refused{what}: {text}"
        if hint:
            message += f" ({hint})"
        return BackendRefusedError(message, address=address, command=command, hint=hint)
    name = type(exc).__name__
    detail = text if text.startswith(name) or isinstance(exc, ResponseError) else f"{name}: {text}"
    said = readonly_reply(exc)
    if said is not None and said is not exc:  # redis-py's Sentinel connection dropped on it
        detail = f"{server_text(said)} ({detail})"
    message = f"Redis at {where} unavailable{' for' + what if what else ''}: {detail}"
    # A TLS port answers a plain-text client by resetting the connection (a
    # restart, by contrast, closes it: "Connection closed by server").
    if isinstance(exc, RedisError) and "connection reset" in text.lower():
        message += " (if the server expects TLS, use a rediss:// URL)"
    if isinstance(exc, MasterNotFoundError):
        message += (
            " (no sentinel names a primary for the service now: a failover under way, "
            "no sentinel reachable, or a service name they do not monitor; "
            "Stampede.check() says which)"
        )
    return BackendUnavailableError(message, address=address, command=command)


def readonly_reply(exc: BaseException) -> BaseException | None:
    """Return the ``READONLY`` reply *exc* is, or was raised from, or None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ReadOnlyError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def is_connection_trouble(exc: BaseException) -> bool:
    """Whether *exc* (or every exception in a group) is a Redis, socket or timeout error."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_connection_trouble(e) for e in exc.exceptions)
    return isinstance(exc, (RedisError, OSError, TimeoutError, BackendError))


# A timer that runs this much later than set says the loop was blocked (seconds).
_BLOCKED = 0.05


def blocked_loop(late: float) -> str:
    """Return what to add to a budget's overrun that the loop noticed *late* seconds late.

    Nothing when it noticed in time; else that the event loop was blocked,
    so the reply may have come in time and waited unread (a sync hook or
    compute that sleeps, heavy CPU work): Redis may not be at fault.
    """
    if late <= _BLOCKED:
        return ""
    return (
        f"; but this process's event loop noticed {late:.3f}s late (something in it blocked "
        "the loop: the reply may have been there, unread, so Redis may not be at fault)"
    )
