"""A misconfigured Redis is never silent: logs with the server's words, and a start-up check.

Each case is a real server set up wrong (a password, a DB index, an ACL, a
full ``noeviction`` server, TLS) and an app that connects to it the way a
user would. With ``fail_open`` (the default) calls still return computed
values; the operator gets a log line naming the server, its own error text
and what to change, and `Stampede.check` (or ``check=True``) raises it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio
import trustme
from _conditions import until

from asyncstampede import (
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    ClosedError,
    Stampede,
)
from asyncstampede._backends.redis.errors import MINIMUM_ACL
from asyncstampede._settings import Wake
from asyncstampede.testing import RedisServer, _free_port, find_server_binary

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Case:
    """A misconfigured connection: its URL and extra client settings, and what must be said."""

    url: str
    says: tuple[str, ...]  # fragments of the log line and of check()'s error
    error: type[BackendError] = BackendRefusedError
    settings: tuple[tuple[str, object], ...] = ()


async def _value() -> str:
    return "computed"


async def _misconfigured_app_runs_and_says_so(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """The app gets computed values; the log and check() name the server and the cause."""
    settings = dict(case.settings)
    with caplog.at_level(logging.WARNING, logger="asyncstampede"):
        async with Stampede.from_url(case.url, socket_timeout=1.0, **settings) as cache:  # type: ignore[arg-type]
            with anyio.fail_after(10):
                assert await cache.get_or_compute("k", _value, ttl=5) == "computed"
            with pytest.raises(case.error) as raised:
                await cache.check()
    message = str(raised.value)
    address = case.url.split("@")[-1].split("//")[-1].split("?")[0]
    assert address in message
    for fragment in case.says:
        assert fragment in message, message
    level = logging.ERROR if case.error is BackendRefusedError else logging.WARNING
    logged = [r.getMessage() for r in caplog.records if r.levelno >= level]
    assert any(address in line and all(f in line for f in case.says) for line in logged), logged
    # Rate-limited: a burst of failing calls does not make a burst of lines.
    assert len(caplog.records) < 10, caplog.text


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    """A server that wants a password."""
    with RedisServer("--requirepass", "secret") as server:
        yield server


async def test_wrong_password(
    password_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong password: WRONGPASS, at ERROR, with what to check."""
    url = password_server.url.replace("redis://", "redis://:wrong@")
    case = Case(url, ("WRONGPASS", "invalid username-password pair", "password in the Redis URL"))
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_no_password(password_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """No password where one is required: NOAUTH."""
    case = Case(password_server.url, ("NOAUTH", "password in the Redis URL"))
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_database_index_out_of_range(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """DB 99 on a 16-database server: the server's own text and the setting to check."""
    url = redis_url.rsplit("/", 1)[0] + "/99"
    case = Case(url, ("DB index is out of range", "'databases' setting"))
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_full_noeviction_server(caplog: pytest.LogCaptureFixture) -> None:
    """A noeviction server over maxmemory: OOM on every write, and the policy to change."""
    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "noeviction") as server:
        filler = redis.Redis.from_url(server.url)
        for n in range(100_000):
            try:
                filler.set(f"filler:{n}", b"x" * 4096)
            except redis.exceptions.OutOfMemoryError:
                break
        filler.close()
        case = Case(server.url, ("OOM", "maxmemory", "allkeys-lru"))
        await _misconfigured_app_runs_and_says_so(case, caplog)


@pytest.fixture
async def acl_user(
    redis_url: str, namespace: str
) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """Make ACL users on the session's server; return their URLs. Deleted at the end."""
    admin = redis.asyncio.Redis.from_url(redis_url)
    made: list[str] = []

    async def make(rules: str) -> str:
        name = f"u{len(made)}-{namespace}"
        made.append(name)
        await admin.execute_command("ACL", "SETUSER", name, "reset", "on", "nopass", *rules.split())  # type: ignore[no-untyped-call]
        return redis_url.replace("redis://", f"redis://{name}@")

    yield make
    for name in made:
        await admin.acl_deluser(name)
    await admin.aclose()


async def test_acl_without_scripting(
    acl_user: Callable[[str], Awaitable[str]], namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL user who may not run scripts: NOPERM, and the rule to grant."""
    url = await acl_user("+@all -@scripting ~* &*")
    case = Case(url, ("NOPERM", "+script"))  # Redis 7 names script|load, 6.2 script
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_forced_tracking_without_client(
    acl_user: Callable[[str], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """wake='tracking' for an ACL user without CLIENT: the refusal names the rule to grant."""
    url = await acl_user("+@all -client ~* &*")
    case = Case(url, ("NOPERM", "+client"), settings=(("wake", "tracking"),))
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_forced_tracking_without_the_invalidation_channel(
    acl_user: Callable[[str], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """wake='tracking', Redis 7's default channel rules (none): SUBSCRIBE is refused."""
    url = await acl_user("+@all resetchannels ~*")
    case = Case(url, ("NOPERM", "&__redis__:invalidate"), settings=(("wake", "tracking"),))
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_the_documented_minimum_acl_is_enough(
    acl_user: Callable[[str], Awaitable[str]], namespace: str
) -> None:
    """MINIMUM_ACL (the operations page's rule set) passes check() and wakes waiters by Redis."""
    url = await acl_user(MINIMUM_ACL.replace("<namespace>", namespace))
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    async with (
        Stampede.from_url(url, namespace=namespace, check=True, lock_ttl=30) as leader,
        Stampede.from_url(url, namespace=namespace, check=True, lock_ttl=30) as waiter,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(leader.get_or_compute, "k", slow, 60)
        await started.wait()

        async def wait() -> None:
            assert await waiter.get_or_compute("k", _value, ttl=60) == "v"

        tg.start_soon(wait)
        await until(lambda: waiter.statistics().waiting == 1)  # it watches the lock
        release.set()
    stats = waiter.statistics()
    assert (stats.wakeups, stats.takeovers, stats.backend_errors) == (1, 0, 0)
    assert leader.statistics().backend_errors == 0


@pytest.mark.parametrize(
    ("rules", "wake"),
    [("+@all -client resetchannels ~*", "auto"), ("+@all -client ~* &*", "tracking")],
    ids=["nothing-allowed", "forced-tracking-refused"],
)
async def test_where_no_wake_is_allowed_waiters_poll_instead_of_sleeping_out_the_lock(
    acl_user: Callable[[str], Awaitable[str]], namespace: str, rules: str, wake: Wake
) -> None:
    """No CLIENT and no channels (or a refused forced transport), lock_ttl 30 s: a few looks."""
    url = await acl_user(rules)
    release = anyio.Event()
    started = anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    async with (
        Stampede.from_url(url, namespace=namespace, lock_ttl=30, wake=wake) as leader,
        Stampede.from_url(url, namespace=namespace, lock_ttl=30, wake=wake) as waiter,
        anyio.create_task_group() as tg,
    ):
        assert waiter.statistics().wake == "poll"
        tg.start_soon(leader.get_or_compute, "k", slow, 60)
        await started.wait()
        got: list[str] = []

        async def wait() -> None:
            got.append(await waiter.get_or_compute("k", _value, ttl=60))

        tg.start_soon(wait)
        await until(lambda: waiter.statistics().polls >= 3)  # looking by itself
        release.set()
        with anyio.fail_after(10):  # before: at the lock's expiry, 30 s
            await until(lambda: got == ["v"], within=10)
    stats = waiter.statistics()
    assert stats.takeovers == 0
    # Doubling from 10 ms: the look that finds the value is at most about as
    # long after the release as the wait before it; a dozen looks at most.
    assert 3 <= stats.polls <= 12


# --- TLS ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsServer:
    """A server with a plain port (for the fixture) and a TLS port (for the app)."""

    server: RedisServer
    tls_port: int
    ca_file: Path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """Redis with TLS on a second port, its certificate from a CA the client does not know."""
    binary = shutil.which("redis-server") or find_server_binary()
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    tls_args = [
        "--tls-cert-file", str(folder / "cert.pem"),
        "--tls-key-file", str(folder / "key.pem"),
        "--tls-ca-cert-file", str(folder / "ca.pem"),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    try:  # a build without TLS refuses the settings at once; one with TLS keeps running
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", str(_free_port()), "--save", "", *tls_args],
            capture_output=True,
            text=True,
            timeout=1.0,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pass
    else:
        pytest.skip(f"{binary} cannot serve TLS: {probe.stdout[-200:]}")
    tls_port = _free_port()
    with RedisServer("--tls-port", str(tls_port), *tls_args, binary=binary) as server:
        yield TlsServer(server, tls_port, folder / "ca.pem")


async def test_tls_certificate_not_trusted(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """rediss:// to a server whose CA the client lacks: a refusal naming the CA setting."""
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/0"
    case = Case(url, ("CERTIFICATE_VERIFY_FAILED", "ssl_ca_certs"))
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_plain_redis_url_to_a_tls_port(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """redis:// to the TLS port: the connection is reset, and the message suggests rediss://."""
    url = f"redis://127.0.0.1:{tls_server.tls_port}/0"
    case = Case(url, ("rediss://",), error=BackendUnavailableError)
    await _misconfigured_app_runs_and_says_so(case, caplog)


async def test_tls_with_the_ca_given_passes_the_check(
    tls_server: TlsServer, namespace: str
) -> None:
    """The same server with ssl_ca_certs: check() passes and values are cached."""
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_ca_certs={tls_server.ca_file}"
    async with Stampede.from_url(url, check=True, namespace=namespace) as cache:
        assert await cache.get_or_compute("k", _value, ttl=5) == "computed"
        assert await cache.get_or_compute("k", _value, ttl=5) == "computed"
        stats = cache.statistics()
        assert (stats.hits, stats.computes, stats.backend_errors) == (1, 1, 0)


# --- the start-up check --------------------------------------------------------


async def test_check_on_enter_raises_the_cause(password_server: RedisServer) -> None:
    """check=True: entering fails with the refusal itself (not a group); the instance is closed."""
    url = password_server.url.replace("redis://", "redis://:wrong@")
    cache = Stampede.from_url(url, check=True)
    with pytest.raises(BackendRefusedError, match="WRONGPASS"):
        async with cache:
            raise AssertionError("entered a misconfigured Stampede")
    with pytest.raises(ClosedError):
        await cache.get_or_compute("k", _value, ttl=5)


async def test_check_passes_on_a_good_server_and_in_embedded_mode(redis_url: str) -> None:
    """A working Redis and embedded mode both pass; the probe leaves no key behind."""
    async with Stampede.from_url(redis_url, namespace="checked", check=True) as cache:
        await cache.check()
    async with Stampede(check=True) as embedded:
        await embedded.check()
    sync = redis.Redis.from_url(redis_url)
    assert sync.keys("checked:*") == []
    sync.close()


def test_the_operations_page_shows_the_minimum_acl() -> None:
    """The ACL example on the operations page is MINIMUM_ACL, the set tested above."""
    page = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    line = next(line for line in page.splitlines() if line.startswith("ACL SETUSER cache"))
    assert line == f"ACL SETUSER cache on >password {MINIMUM_ACL.replace('<namespace>', 'app')}"
