"""Redis Sentinel: the ``redis+sentinel://`` URL, and following the primary through failovers.

A client from ``Sentinel(...).master_for(service)`` is a plain
``redis.asyncio.Redis`` whose pool (a ``SentinelConnectionPool``) asks the
sentinels where the primary is each time it connects. asyncstampede's own
connections (the request connection, the wake transport's) are made the
same way (see ``wire``), so each one reaches the primary named when it
connects. What redis-py does not do is move a connection that is already
up. After ``SENTINEL FAILOVER`` the old primary stays up and keeps taking
writes until the sentinels turn it into a replica (about ten seconds later,
with Sentinel's own timers): a lock taken or a value committed there in
the meantime is lost, and a waiter watching it is never told of a commit
on the new one.

`PrimaryWatch` closes that gap the way the Sentinel client guidelines
suggest: it subscribes to ``+switch-master`` on every sentinel, and when
one announces a new primary for the service it has the pool ask again
(idle pooled connections to the old primary are dropped by redis-py then)
and tells its backend to replace its own connections (``on_move``): the
request connection's commands in flight are sent again on the pool, and
every waiter looks at its lock again, on the new primary. A ``READONLY``
reply (a primary demoted behind the sentinels' backs, where nothing
dropped our connections) makes redis-py drop the connection that got it;
the watch then asks the sentinels, and moves the rest if they name
another primary. Where no sentinel's announcements can be heard (an ACL
refuses them, none is reachable) the sentinels are asked every second.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, final
from urllib.parse import parse_qsl, unquote

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel as SyncSentinel

from ..._exceptions import (
    BackendRefusedError,
    BackendUnavailableError,
    InvalidURLError,
)
from ..._problems import ProblemLog
from .errors import describe, is_connection_trouble, map_error, readonly_reply, server_text
from .wire import Link, LinkFactory, link_factory, quiet_handshake

__all__ = [
    "SENTINEL_ACL",
    "PrimaryWatch",
    "SentinelURL",
    "check_sentinel_client",
    "close_owned",
    "is_sentinel_url",
    "parse_sentinel_url",
    "primary_watch",
    "sentinel_client_from_url",
    "scrubbed",
    "shown_url",
]

log = logging.getLogger("asyncstampede.sentinel")

_SCHEMES: Final = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
_FORM: Final = "redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"
_DEFAULT_PORT: Final = 26379
# Query parameters the URL takes: the sentinels' own login (where they have
# one: Redis 6.2+ sentinels take requirepass and ACL users) and, for
# rediss+sentinel://, redis-py's TLS settings (for the sentinels and the
# servers alike).
_SENTINEL_LOGIN: Final = ("sentinel_username", "sentinel_password")
_TLS_OPTIONS: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_CERT_REQS: Final = ("none", "optional", "required")

# What a client needs of the sentinels, as ACL rules for their user (a
# sentinel of Redis 6.2 or later).
SENTINEL_ACL: Final = (
    "resetchannels &+switch-master -@all +hello +ping +auth "
    "+sentinel|masters +sentinel|master +subscribe"
)
CHANNEL: Final = b"+switch-master"  # "<service> <old ip> <old port> <new ip> <new port>"
# A subscribed sentinel connection silent this long is pinged; a ping
# unanswered as long again ends it (it is made anew).
_QUIET: Final = 30.0
# After a READONLY, the sentinels are asked again at most this often.
_READONLY_EVERY: Final = 1.0
# While no sentinel's announcements can be heard, they are asked this often.
_DEAF_LOOK: Final = 1.0


def is_sentinel_url(url: str) -> bool:
    """Whether *url* is a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


@final
@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says (`parse_sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]  # (host, port) of each sentinel, in the URL's order
    service: str  # the name the sentinels monitor the primary under
    db: int
    username: str | None  # for the primary (and its replicas)
    password: str | None = None
    tls: bool = False  # rediss+sentinel://: the sentinels and the servers
    options: tuple[tuple[str, str], ...] = ()  # the query's parameters (see _SENTINEL_LOGIN...)

    def __repr__(self) -> str:  # never the passwords
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelURL({hosts}/{self.service}/{self.db}, tls={self.tls})"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read a ``redis+sentinel://`` URL; see `Stampede.from_url` for its form.

    Raises:
        InvalidURLError: the URL is malformed; the message says what to
            write instead and never repeats a password.

    """
    scheme, _, rest = url.partition("://")
    tls = _SCHEMES[scheme.lower()]
    shown = shown_url(url)
    if "#" in rest:
        raise _invalid(shown, "it has a fragment (#...): remove it, or percent-encode a # (%23)")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(item, shown) for item in hosts.split(",")) if hosts else ()
    if not sentinels:
        raise _invalid(shown, "it names no sentinel: give each as host:port, separated by commas")
    segments = path.split("/") if slash else []
    if not segments or not segments[0]:
        raise _invalid(
            shown,
            "it names no service: add the name the sentinels monitor the primary under "
            "(their 'sentinel monitor <name> ...'), e.g. .../mymaster",
        )
    service = unquote(segments[0])
    db = 0
    if len(segments) > 2 or (len(segments) == 2 and not segments[1]):
        raise _invalid(shown, "its path has more than /service_name/db: remove the rest")
    if len(segments) == 2:
        text = segments[1]
        if not text.isdigit() or not text.isascii():
            raise _invalid(
                shown,
                f"the database {text!r} is not a number: write /{segments[0]}/0 or leave it out",
            )
        db = int(text)
    options = _options(query, shown, tls)
    return SentinelURL(sentinels, service, db, username, password, tls, options)


def _host_port(item: str, shown: str) -> tuple[str, int]:
    """Read one sentinel's ``host:port`` (``[v6]:port``; the port defaults to 26379)."""
    item = item.strip()
    if item.startswith("["):  # an IPv6 literal
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise _invalid(shown, f"the sentinel {item!r} is not [ipv6]:port")
        port_text = tail[1:] if tail else ""
    else:
        host, colon, port_text = item.rpartition(":")
        if not colon:
            host, port_text = item, ""
    if not host:
        raise _invalid(
            shown, f"a sentinel has no host ({item!r}): write host:port, e.g. 10.0.0.5:26379"
        )
    if not port_text:
        return host, _DEFAULT_PORT
    if not port_text.isdigit() or not port_text.isascii() or not 0 < int(port_text) < 65536:
        raise _invalid(
            shown,
            f"the sentinel {item!r} has a bad port {port_text!r}: write host:port with a "
            f"port from 1 to 65535, e.g. {host}:{_DEFAULT_PORT}",
        )
    return host, int(port_text)


def _options(query: str, shown: str, tls: bool) -> tuple[tuple[str, str], ...]:
    allowed = _SENTINEL_LOGIN + (_TLS_OPTIONS if tls else ())
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise _invalid(shown, "its query is not name=value pairs joined by &") from None
    for name, value in pairs:
        if name not in allowed:
            also = "" if tls else f" ({', '.join(_TLS_OPTIONS)} with rediss+sentinel://)"
            raise _invalid(
                shown, f"it has an unknown parameter {name!r}: it takes {', '.join(allowed)}{also}"
            )
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise _invalid(shown, f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    return tuple(pairs)


_PASSWORD_PARAMETERS: Final = ("sentinel_password=", "password=")


def _at_password(url: str) -> tuple[str, str | None, str]:
    """Split *url* around its user information's password: (before it, it, after it).

    The password runs from the user's ``:`` to the last ``@``, whatever it
    holds (an unencoded ``/``, ``?`` or ``#``), past ``://`` or, in a
    malformed URL, from the start. None: no password (no ``@``, or no
    ``:`` before it). The three parts always make *url* again.
    """
    head, at, tail = url.rpartition("@")
    if not at:
        return "", None, url
    begin = head.find("://")
    begin = 0 if begin < 0 else begin + 3
    user, colon, password = head[begin:].partition(":")
    if not colon:
        return head, None, at + tail
    return f"{head[:begin]}{user}:", password, at + tail


def shown_url(url: str) -> str:
    """Return *url* with its passwords (the server's, the sentinels') replaced by ``***``.

    (Any Redis URL, malformed ones included: its user information's password
    (see `_at_password`), and ``password=`` or ``sentinel_password=`` in its
    query.)
    """
    before, password, after = _at_password(url)
    rest, question, query = after.partition("?")
    query = "&".join(
        f"{part.partition('=')[0]}=***" if part.startswith(_PASSWORD_PARAMETERS) else part
        for part in query.split("&")
    )
    return f"{before}{'' if password is None else '***'}{rest}{question}{query}"


def secrets_of(url: str) -> list[str]:
    """Return the passwords *url* holds, and the pieces a parser may have cut them into.

    For scrubbing them out of another library's message about *url*
    (redis-py names the piece of a password it took for a port).
    """
    _, password, after = _at_password(url)
    found = [password] if password else []
    found.extend(
        part.partition("=")[2]
        for part in after.partition("?")[2].split("&")
        if part.startswith(_PASSWORD_PARAMETERS)
    )
    pieces = [piece for secret in found for piece in re.split(r"[/?#@:&=]", secret)]
    return sorted({*found, *(p for p in pieces if len(p) >= 3)}, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """Return *text* (a message about *url*) with *url*'s passwords, and pieces, as ``***``."""
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _invalid(shown: str, why: str) -> InvalidURLError:
    return InvalidURLError(f"bad Sentinel URL {shown!r}: {why}. The form is {_FORM}")


def sentinel_client_from_url(url: str, **pool: Any) -> Redis:
    """Return a client of the primary of the service *url* names, through its sentinels.

    *pool* is what a plain URL's pool gets (``max_connections``, timeouts,
    ``retry``): the primary's connections get all of it; the sentinels get
    the timeouts (the connect timeout as their reply timeout too: a
    sentinel answers at once or is skipped for the next) and no retries
    (redis-py asks the next sentinel instead). Both are asyncstampede's
    own connections: no handshake a supported server refuses (see
    `quiet_handshake`).

    Raises:
        InvalidURLError: the URL is malformed.

    """
    parsed = parse_sentinel_url(url)
    options = dict(parsed.options)
    tls: dict[str, Any] = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    if parsed.tls:
        tls["ssl"] = True
    connect_timeout = pool.get("socket_connect_timeout", 2.0)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": connect_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        **quiet_handshake(Redis),
        **tls,
    }
    if "sentinel_username" in options:
        sentinel_kwargs["username"] = options["sentinel_username"] or None
    if "sentinel_password" in options:
        sentinel_kwargs["password"] = options["sentinel_password"] or None
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(
        parsed.service,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **tls,
        **{**quiet_handshake(SentinelConnectionPool, SentinelManagedConnection), **pool},
    )
    return client


def check_sentinel_client(redis: object) -> None:
    """Refuse a `Sentinel` itself, or a client of a service's replicas, saying what to pass.

    Raises:
        TypeError: *redis* is a ``Sentinel`` (asyncio or not), or a client
            from ``slave_for`` (replicas refuse the locks' writes).

    """
    if isinstance(redis, Sentinel | SyncSentinel):
        raise TypeError(
            "Stampede() takes the primary's client: pass Sentinel(...).master_for(service_name) "
            "(a redis.asyncio.sentinel.Sentinel), or use "
            "Stampede.from_url('redis+sentinel://host:port/service_name')"
        )
    pool = getattr(redis, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool) and not pool.is_master:
        raise TypeError(
            "Stampede() needs the primary: pass Sentinel(...).master_for(service_name), not "
            "slave_for()/replica_for() (replicas refuse the locks' writes)"
        )


async def close_owned(client: Redis) -> None:
    """Close the sentinels' connections of a client `sentinel_client_from_url` made."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


def primary_watch(
    client: Redis,
    *,
    address: str,
    problems: ProblemLog,
    on_move: Callable[[], Awaitable[None]],
    reply_timeout: float,
) -> PrimaryWatch | None:
    """Return the watch for *client*'s Sentinel service, or None for a client of one server."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    return PrimaryWatch(
        pool, address=address, problems=problems, on_move=on_move, reply_timeout=reply_timeout
    )


@final
class PrimaryWatch:
    """Follows the primary of one Sentinel service; moves a backend's connections with it.

    Started by the backend (`run`); `saw` is handed the request path's
    errors (what ended the request connection, what a command met);
    `check` is part of ``Stampede.check()``.
    """

    def __init__(
        self,
        pool: SentinelConnectionPool,
        *,
        address: str,
        problems: ProblemLog,
        on_move: Callable[[], Awaitable[None]],
        reply_timeout: float,
    ) -> None:
        self._pool = pool
        self._service: str = pool.service_name
        self._address = address
        self._problems = problems
        self._on_move = on_move
        self._timeout = reply_timeout
        self._manager: Sentinel = pool.sentinel_manager
        # The sentinels as the client was made with them (redis-py reorders
        # its own list: the one that answered last goes first).
        self._sentinels: list[Redis] = list(self._manager.sentinels)
        self._links: list[LinkFactory] = [
            link_factory(s.connection_pool, protocol=2) for s in self._sentinels
        ]
        self._following = anyio.Lock()
        # The primary our connections are at (as the sentinels named it first,
        # or the last one moved to).
        self._moved_to: tuple[str, int] | None = None
        self._epoch = -1  # the highest config epoch a sentinel reported
        self._readonly_at = -_READONLY_EVERY  # when a READONLY last made us ask
        self._tg: anyio.abc.TaskGroup | None = None
        self.moves = 0  # times the connections were moved to another primary
        self.subscribed = 0  # sentinels whose announcements are heard now

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen to every sentinel until cancelled (each one reconnected when it fails)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for index in range(len(self._sentinels)):
                tg.start_soon(self._listen, index)
            tg.start_soon(self._look_while_deaf)
            task_status.started()

    def saw(self, exc: BaseException) -> None:
        """Hear an error of the request path: a ``READONLY`` makes the sentinels be asked.

        (redis-py's Sentinel connection drops itself on that reply and
        raises ``ConnectionError`` from it: the reply is in its context.)
        """
        reply = readonly_reply(exc)
        if self._tg is None or reply is None:
            return
        now = anyio.current_time()
        if now - self._readonly_at < _READONLY_EVERY:
            return  # asked a moment ago: its answer stands
        self._readonly_at = now
        self._tg.start_soon(_logged, self._after_readonly(server_text(reply)))

    async def check(self) -> None:
        """Ask every sentinel about the service; raise what would stop the primary being found.

        Raises:
            BackendRefusedError: a sentinel does not monitor the service (the
                message lists those it does), or refuses the subscription to
                its announcements.
            BackendUnavailableError: no sentinel answered, or none names a
                primary that is up (a failover under way).

        """
        errors: list[str] = []
        named: list[str] = []
        for client in self._sentinels:
            where = _sentinel_address(client)
            try:
                state = await _master_state(client, self._service, self._timeout)
            except (ResponseError, AuthenticationError, AuthorizationError) as exc:
                text = server_text(exc)
                if "no such master" not in text.lower():
                    raise self._refused(where, text, _hint(exc)) from exc
                known = await _services(client, self._timeout)
                raise self._refused(
                    where,
                    text,
                    f"it monitors {', '.join(known)}: use one of those as the service name"
                    if known
                    else "this sentinel monitors nothing: check its 'sentinel monitor' lines",
                ) from exc
            except (RedisError, OSError, TimeoutError) as exc:
                errors.append(f"{where}: {server_text(exc) or type(exc).__name__}")
                continue
            if state.get("is_master") and not state.get("is_sdown") and not state.get("is_odown"):
                named.append(f"{state['ip']}:{state['port']}")
            else:
                errors.append(f"{where} names {state['ip']}:{state['port']} ({state['flags']})")
        if not named:
            raise BackendUnavailableError(
                f"Redis at {describe(self._address)} unavailable: no sentinel names a primary "
                f"that is up ({'; '.join(errors)})",
                address=self._address,
                command="SENTINEL MASTER",
            )
        await self._check_subscription()

    async def _check_subscription(self) -> None:
        """Subscribe to one sentinel's announcements and unsubscribe (an ACL may refuse it)."""
        for index, client in enumerate(self._sentinels):
            link = self._links[index]()
            try:
                await _subscribe(link, self._timeout)
                return
            except (ResponseError, AuthenticationError, AuthorizationError) as exc:
                raise self._refused(
                    _sentinel_address(client), server_text(exc), _hint(exc), command="SUBSCRIBE"
                ) from exc
            except (RedisError, OSError, TimeoutError):
                continue  # unreachable: check() said whether any sentinel answers
            finally:
                with anyio.CancelScope(shield=True):
                    await link.close()

    def _refused(
        self, where: str, text: str, hint: str | None, command: str = "SENTINEL MASTER"
    ) -> BackendRefusedError:
        asked = (
            f"SUBSCRIBE {CHANNEL.decode()}"
            if command == "SUBSCRIBE"
            else f"{command} {self._service}"
        )
        message = f"Sentinel {where} refused {asked}: {text}"
        if hint:
            message += f" ({hint})"
        return BackendRefusedError(message, address=self._address, command=command, hint=hint)

    async def _listen(self, index: int) -> None:
        """Hear one sentinel's ``+switch-master`` announcements; reconnect when it fails."""
        client = self._sentinels[index]
        where = _sentinel_address(client)
        backoff = 0.05
        while True:
            link = self._links[index]()
            heard = False
            try:
                await _subscribe(link, self._timeout)
                heard = True
                self.subscribed += 1
                # What was announced while nobody listened: asked once (the
                # first time, it only sets what is known).
                await self._compare(client)
                backoff = 0.05
                await self._hear(link, client)
            except anyio.get_cancelled_exc_class():
                raise
            except (ResponseError, AuthenticationError, AuthorizationError) as exc:
                # Refused (a sentinel's ACL, or its password): said once in a
                # while; meanwhile the sentinels are asked every second.
                self._problems.report(
                    self._refused(where, server_text(exc), _hint(exc), command="SUBSCRIBE"),
                    "hearing of failovers (the sentinels are asked every second instead)",
                )
                backoff = 30.0
            except Exception as exc:
                if not is_connection_trouble(exc):
                    self._problems.say(
                        logging.ERROR, f"listening to sentinel {where} failed", exc_info=True
                    )
                else:
                    level = logging.INFO if heard else logging.DEBUG
                    self._problems.say(
                        level,
                        f"sentinel {where} not heard ({server_text(exc) or type(exc).__name__}); "
                        "listening again",
                    )
            finally:
                if heard:
                    self.subscribed -= 1
                with anyio.CancelScope(shield=True):
                    await link.close()
            await anyio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0) if backoff < 5.0 else backoff

    async def _hear(self, link: Link, client: Redis) -> None:
        """Read *link*'s announcements and follow them; raise when it fails or falls silent."""
        where = _sentinel_address(client)
        pinged = False
        while True:
            message = await link.read(within=_QUIET)
            if message is None:
                if pinged:
                    raise TimeoutError(f"no reply to PING within {_QUIET}s")
                await link.send("PING")
                pinged = True
                continue
            pinged = False
            target = self._announced(message)
            if target is not None:
                await self._follow(client, target, f"sentinel {where} announced it")

    def _announced(self, message: Any) -> tuple[str, int] | None:
        """Return the new primary a ``+switch-master`` message names for our service, or None."""
        if not _is_reply(message, b"message") or len(message) < 3 or message[1] != CHANNEL:
            return None
        words = bytes(message[2]).decode(errors="replace").split()
        if len(words) != 5 or words[0] != self._service or not words[4].isdigit():
            return None
        return words[3], int(words[4])

    async def _compare(self, client: Redis) -> None:
        """Ask *client* which primary it names; follow it if that is news (a newer epoch).

        The first answer only sets what is known (the connections were made
        to the primary named then).
        """
        try:
            state = await _master_state(client, self._service, self._timeout)
        except (RedisError, OSError, TimeoutError):
            return  # check() reports what is wrong
        if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
            return  # a failover under way: its announcement (or the next look) follows
        epoch = int(state.get("config-epoch", 0))
        target = (str(state["ip"]), int(state["port"]))
        newer, self._epoch = epoch > self._epoch, max(self._epoch, epoch)
        if self._moved_to is None:
            self._moved_to = target
        elif newer and target != self._moved_to:
            await self._follow(client, target, f"sentinel {_sentinel_address(client)} names it")

    async def _look_while_deaf(self) -> None:
        """Ask the sentinels where the primary is every `_DEAF_LOOK` s while none is heard.

        (Their announcements refused by an ACL, or none reachable: a
        failover that leaves the old primary up would otherwise go unseen
        until the sentinels demote it, ten seconds later by their timers.)
        """
        while True:
            if not self.subscribed:  # (none yet, at the start: that sets what is known)
                try:
                    for client in list(self._manager.sentinels):
                        await self._compare(client)
                        if self._moved_to is not None:
                            break  # one answer is enough
                except Exception:  # a bug: logged, and never the instance's end
                    self._problems.say(logging.ERROR, "asking the sentinels failed", exc_info=True)
            await anyio.sleep(_DEAF_LOOK)

    async def _follow(self, client: Redis, target: tuple[str, int], why: str) -> None:
        """Have the pool find *target* through the sentinels, then move our connections there."""
        async with self._following:
            if target == self._moved_to:
                return  # announced by another sentinel too: moved already
            # The sentinel that announced it is asked first (redis-py asks
            # its list in order; one not yet told would name the old one).
            sentinels = self._manager.sentinels
            if client in sentinels:
                at = sentinels.index(client)
                sentinels[0], sentinels[at] = sentinels[at], sentinels[0]
            previous = self._pool.master_address
            try:
                with anyio.fail_after(self._timeout):
                    found = await self._pool.get_master_address()  # type: ignore[no-untyped-call]
            except (RedisError, OSError, TimeoutError) as exc:
                self._problems.say(
                    logging.WARNING,
                    f"the primary of {self._address} moved to {target[0]}:{target[1]} ({why}), "
                    f"but the sentinels could not be asked where it is: {server_text(exc)}",
                )
                return
            if tuple(found) != target:
                return  # the sentinels disagree for now: the next announcement decides
            self._moved_to = target
            self.moves += 1
            was = f" from {previous[0]}:{previous[1]}" if previous else ""
            self._problems.say(
                logging.INFO,
                f"the primary of {self._address} moved{was} to {target[0]}:{target[1]} ({why}); "
                "moving the connections there",
            )
            await self._on_move()

    async def _after_readonly(self, text: str) -> None:
        """Ask the sentinels where the primary is, and move there: a write got ``READONLY``."""
        known = self._moved_to or self._pool.master_address  # (before it is asked again)
        try:
            with anyio.fail_after(self._timeout):
                found = await self._pool.get_master_address()  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            error = map_error(exc, address=self._address, command="SENTINEL MASTER")
            self._problems.report(error, f"asking the sentinels after {text!r}")
            return
        target = (str(found[0]), int(found[1]))
        async with self._following:
            if target == (self._moved_to or known):
                # Demoted by something else than the sentinels (the FAILOVER
                # command, an operator's REPLICAOF), and they have not seen
                # it yet: writes fail (calls fail open) until they name another.
                self._problems.say(
                    logging.WARNING,
                    f"Redis at {describe(self._address)} answered {text!r}, and the sentinels "
                    "still name it the primary: writes fail until they name another",
                )
                return
            self._moved_to = target
            self.moves += 1
        self._problems.say(
            logging.INFO,
            f"Redis at {self._address} answered {text!r}: the sentinels name "
            f"{target[0]}:{target[1]}; moving the connections there",
        )
        await self._on_move()


async def _subscribe(link: Link, within: float) -> None:
    """Connect *link* and subscribe it to the announcements, confirmed within *within* seconds.

    Raises:
        ResponseError: the sentinel refused (an ACL).
        RedisError, OSError, TimeoutError: it could not be reached or did not confirm.

    """
    await link.connect(within)
    await link.send("SUBSCRIBE", CHANNEL)
    confirmed = await link.read(within=within)
    if not _is_reply(confirmed, b"subscribe"):
        raise ConnectionError(f"no subscription confirmed: {confirmed!r}")


async def _logged(work: Awaitable[None]) -> None:
    """Run *work*; a bug in it is logged, never the instance's end."""
    try:
        await work
    except Exception:
        log.exception("asyncstampede: following the primary failed")


def _hint(exc: BaseException) -> str | None:
    """Return what to change for a sentinel's refusal."""
    text = server_text(exc).upper()
    if isinstance(exc, AuthenticationError | AuthorizationError) or text.startswith(
        ("NOAUTH", "WRONGPASS")
    ):
        return (
            "give the sentinels' own login: ?sentinel_password=... (and sentinel_username=) "
            "in the redis+sentinel:// URL, or Sentinel(..., sentinel_kwargs={'password': ...})"
        )
    if text.startswith("NOPERM"):
        return "grant the sentinels' user +subscribe and the channel &+switch-master"
    return None


def _is_reply(message: Any, kind: bytes) -> bool:
    return isinstance(message, list) and len(message) >= 1 and message[0] == kind


def _sentinel_address(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', _DEFAULT_PORT)}"


async def _master_state(client: Redis, service: str, within: float) -> dict[str, Any]:
    """Return what *client* (a sentinel) says of *service*'s primary (``SENTINEL MASTER``).

    Raises:
        ResponseError: the sentinel does not monitor it (or refused).
        RedisError, OSError, TimeoutError: no answer within *within* seconds.

    """
    with anyio.fail_after(within):
        state = await client.sentinel_master(service)
    if not isinstance(state, dict):
        raise ResponseError(f"SENTINEL MASTER {service} answered {state!r}")
    return state


async def _services(client: Redis, within: float) -> list[str]:
    """Return the service names *client* (a sentinel) monitors, or [] if it cannot tell."""
    try:
        with anyio.fail_after(within):
            masters = await client.sentinel_masters()
    except (RedisError, OSError, TimeoutError):
        return []
    return sorted(str(name) for name in masters)
