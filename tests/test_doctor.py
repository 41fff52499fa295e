"""``asyncstampede doctor`` on real servers set up well and badly, each started here."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio

from asyncstampede import Stampede
from asyncstampede.__main__ import _table, main
from asyncstampede._doctor import judge
from asyncstampede.doctor import Diagnosis, diagnose
from asyncstampede.testing import RedisServer


def _doctor(url: str, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status = main(["doctor", url, "--json", *more])
    return status, json.loads(capsys.readouterr().out)


def _app_user(server: RedisServer, commands: list[str], **acl: Any) -> str:
    """Create the ACL user ``app`` (password ``pw``, every key) with *commands*; its URL."""
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("app", enabled=True, passwords=["+pw"], commands=commands, keys=["*"], **acl)
    admin.close()
    return f"redis://app:pw@127.0.0.1:{server.port}/0"


def _codes(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {v["code"]: v["severity"] for v in report["verdicts"]}


def _verdict(report: dict[str, Any], code: str) -> dict[str, Any]:
    found: dict[str, Any] = next(v for v in report["verdicts"] if v["code"] == code)
    return found


def _fill(server: RedisServer, **ttl: int) -> None:
    """Write 1,000-byte values (with *ttl*, e.g. ``ex=3600``) until the server refuses with OOM."""
    client = redis.Redis(port=server.port)
    refused = ""
    for i in range(10_000):  # bounded: 10 MB would do, the tests' maxmemory is less
        try:
            client.set(f"k{i}", b"x" * 1000, **ttl)  # type: ignore[arg-type]
        except redis.exceptions.ResponseError as exc:  # OOM: full
            refused = str(exc)
            break
    client.close()
    assert "maxmemory" in refused


@pytest.fixture
def full_noeviction() -> Iterator[RedisServer]:
    """A noeviction server filled to OOM with keys without a TTL."""
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        _fill(server)
        yield server


def test_a_full_noeviction_server_is_critical(
    full_noeviction: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = _doctor(full_noeviction.url, capsys, "--interval", "0.2")
    assert status == 2
    assert _codes(report)["noeviction"] == "critical"
    assert report["figures"]["memory_share"] >= 0.98  # full (its OOMs came before)
    assert report["config"]["maxmemory-policy"] == "noeviction"
    noeviction = next(v for v in report["verdicts"] if v["code"] == "noeviction")
    assert "allkeys-lru" in noeviction["advice"]


def test_advice_to_evict_every_key_warns_of_the_keys_without_a_ttl(
    full_noeviction: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """allkeys-* evicts keys without a TTL too (often data that must stay): advice says so.

    noeviction and maxmemory-unset advise an allkeys-* policy: with keys
    without a TTL here, the advice names them and the alternatives (a Redis
    of its own, volatile-lru); where every key has a TTL it stands alone.
    """
    _, full = _doctor(full_noeviction.url, capsys, "--interval", "0")
    without = full["figures"]["keys_without_ttl"]
    assert without >= 1_000
    advice = _verdict(full, "noeviction")["advice"]
    assert "CONFIG SET maxmemory-policy allkeys-lru" in advice
    sampled = full["figures"]["sample"]["sampled"]
    assert f"But {without:,} keys here have no TTL ({sampled:,} of the {sampled:,} sampled)" in (
        advice
    )
    assert "a Redis of its own" in advice
    assert "volatile-lru" in advice
    assert _verdict(full, "noeviction")["figures"]["keys_without_ttl"] == without
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        _fill(server, ex=3600)  # every key a TTL: allkeys-lru evicts nothing that must stay
        _, cache = _doctor(server.url, capsys, "--interval", "0")
    assert cache["figures"]["keys_without_ttl"] == 0
    advice = _verdict(cache, "noeviction")["advice"]
    assert "allkeys-lru" in advice
    assert "no TTL" not in advice
    assert "of its own" not in advice
    with RedisServer() as server:  # maxmemory 0: a bound would start evictions
        client = redis.Redis(port=server.port)
        client.set("session:1", b"v")
        client.set("cache:1", b"v", ex=60)
        client.close()
        _, unbounded = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
    advice = _verdict(unbounded, "maxmemory-unset")["advice"]
    assert "allkeys-lru" in advice
    assert "But 1 key here has no TTL, which an allkeys-* policy evicts" in advice
    assert "a Redis of its own" in advice


def test_a_healthy_cache_server_passes(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        client = redis.Redis(port=server.port)
        for i in range(100):
            client.set(f"k{i}", b"v", ex=60 + i)  # TTLs with jitter
            client.get(f"k{i}")
        client.close()
        status, report = _doctor(server.url, capsys, "--interval", "0.2")
    assert status == 0, report["verdicts"]
    assert report["severity"] in ("ok", "info")
    assert set(report) >= {"address", "version", "interval", "config", "figures", "verdicts"}
    assert report["figures"]["keys"] == 100
    assert report["figures"]["keys_without_ttl"] == 0
    assert report["figures"]["wake"]["transport"] == "tracking"
    assert _codes(report)["wake"] == "info"


def test_volatile_lru_filled_by_keys_without_ttl_is_info_then_critical(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Keys without a TTL nobody may evict: information; once they fill memory, a warning,
    and the full server that refuses writes is critical (exit 2), as a full noeviction one."""
    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru") as server:
        client = redis.Redis(port=server.port)
        for i in range(50):
            client.set(f"forever{i}", b"v")
        roomy_status, roomy = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
        for i in range(10_000):  # bounded: 4 MB fills well before
            try:
                client.set(f"more{i}", b"x" * 1000)
            except redis.exceptions.ResponseError:  # OOM: nothing can be evicted
                break
        client.close()
        status, report = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
    assert _codes(roomy)["volatile-without-ttl"] == "info"
    assert roomy["figures"]["keys_without_ttl"] == 50
    assert _codes(report)["volatile-without-ttl"] == "warning"
    verdict = next(v for v in report["verdicts"] if v["code"] == "volatile-without-ttl")
    assert "a Redis of its own" in verdict["advice"]
    assert _codes(report)["headroom"] == "critical"
    assert (roomy_status, status) == (0, 2)


def test_headroom_says_what_the_policy_can_evict(capsys: pytest.CaptureFixture[str]) -> None:
    """Memory past 90%: evictions decide only where the policy may evict some key.

    volatile-lru with no key that has a TTL can evict nothing (a warning:
    writes fail once full); with some, only those; allkeys-lru, any.
    """
    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru") as server:
        client = redis.Redis(port=server.port)
        maxmemory = 4 * 1024 * 1024
        written = 0
        while client.info("memory")["used_memory"] < 0.93 * maxmemory:  # short of OOM
            assert written < 10_000
            client.mset({f"forever{written + i}": b"x" * 1000 for i in range(20)})
            written += 20
        _, none = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
        for i in range(0, written, 2):
            client.expire(f"forever{i}", 3600)  # half of them a TTL
        _, half = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
        client.config_set("maxmemory-policy", "allkeys-lru")
        _, every = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
        client.close()
    headroom = _verdict(none, "headroom")
    assert headroom["severity"] == "warning"
    assert headroom["title"].endswith(
        "of maxmemory and nothing can be evicted: no key has a TTL, and volatile-lru evicts "
        "only keys with one"
    )
    assert "evictions decide" not in headroom["title"]
    assert "Expected" not in headroom["advice"]
    assert "every write fails with OOM" in headroom["advice"]
    assert headroom["figures"]["evictable"] == 0
    headroom = _verdict(half, "headroom")
    assert headroom["severity"] == "info"
    with_ttl = half["figures"]["keys"] - half["figures"]["keys_without_ttl"]
    assert with_ttl == written // 2
    assert f"evictions decide which of the {with_ttl:,} keys with a TTL stay" in (headroom["title"])
    assert "evicts only keys with a TTL" in headroom["advice"]
    headroom = _verdict(every, "headroom")
    assert headroom["severity"] == "info"
    assert headroom["title"].endswith("of maxmemory: evictions decide what stays")
    assert "Expected for a cache under an evicting policy" in headroom["advice"]


def test_a_full_server_that_can_evict_nothing_is_critical(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """volatile-lru, no key with a TTL, filled until writes fail (before the interval): exit 2.

    It refuses writes as a full noeviction server does, and is judged so.
    """
    with RedisServer("--maxmemory", "3mb", "--maxmemory-policy", "volatile-lru") as server:
        client = redis.Redis(port=server.port)
        written = 0
        while True:
            try:
                client.mset({f"forever{written + i}": b"x" * 1000 for i in range(20)})
            except redis.exceptions.ResponseError:  # OOM: nothing can be evicted
                break
            written += 20
            assert written < 10_000
        client.close()
        status, full = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
    headroom = _verdict(full, "headroom")
    assert (headroom["severity"], status) == ("critical", 2)
    assert headroom["title"].endswith("the server is full and refuses writes (OOM)")
    assert full["figures"]["oom_errors"] == 0  # (refused before the doctor's interval)


# A count of four digits or more written without its thousands separator.
_BARE_NUMBER = re.compile(r"(?<![\d.,:/])\d{4,}(?!\d)")


def test_counts_of_a_thousand_or_more_have_separators(capsys: pytest.CaptureFixture[str]) -> None:
    """Every count is written 1,500, never 1500: in titles, advice and figures alike."""
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru") as server:
        client = redis.Redis(port=server.port)
        client.mset({f"forever{i}": b"v" for i in range(1500)})
        pipe = client.pipeline(transaction=False)
        for i in range(1200):
            pipe.set(f"cached{i}", b"v", ex=300)  # one TTL, written together
        pipe.execute()
        client.close()
        assert main(["doctor", server.url, "--interval", "0", "--sample", "5000"]) == 1
        table = capsys.readouterr().out
        _, report = _doctor(server.url, capsys, "--interval", "0", "--sample", "5000")
    titles = {v["code"]: v["title"] for v in report["verdicts"]}
    assert "volatile-lru and 1,500 keys have no TTL" in titles["volatile-without-ttl"]
    assert re.match(r"[\d,]+ of 1,200 sampled keys with a TTL", titles["ttl-cluster"])
    lines = table.splitlines()[1:]  # (the first names the server: host:port)
    assert [line for line in lines if _BARE_NUMBER.search(line)] == []
    # The clients' figures and maxclients' verdict, at counts no test server reaches.
    crowd = {**_reading(0, 0, 0, clients=9500), "blocked_clients": 1200}
    config = {"maxmemory": "1000000", "maxclients": "10000"}
    found = judge("127.0.0.1:6379/0", crowd, crowd, 0, config, None)
    crowded = next(v for v in found.verdicts if v.code == "maxclients")
    assert crowded.title == "9,499 other clients connected of maxclients 10,000: 501 free"
    table = _table(found, width=100)
    assert "clients  9,500 connected (the doctor included) of maxclients 10,000, 1,200 blocked" in (
        table
    )
    assert [line for line in table.splitlines()[1:] if _BARE_NUMBER.search(line)] == []


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_evictions_while_sampling_are_a_warning(
    policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its LFU advice keeps the policy's kind, and says what allkeys-* does to keys without a TTL.

    Under allkeys-lru the writes have no TTL (and are evicted all the same);
    under volatile-lru they have one, and one key without a TTL stays.
    """
    ttl = {"ex": 3600} if policy == "volatile-lru" else {}
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", policy) as server:
        client = redis.Redis(port=server.port)
        client.set("session:1", b"v")  # without a TTL
        client.close()
        stop = threading.Event()

        def write() -> None:  # a bounded loopback write load, while the doctor samples
            client = redis.Redis(port=server.port)
            for i in range(20_000):
                if stop.is_set():
                    break
                client.set(f"k{i}", b"x" * 2000, **ttl)  # type: ignore[arg-type]
            client.close()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            status, report = _doctor(server.url, capsys, "--interval", "1")
        finally:
            stop.set()
            writer.join()
    assert status == 1
    assert _codes(report)["evictions"] == "warning"
    assert report["figures"]["evicted_keys_per_s"] > 0
    advice = _verdict(report, "evictions")["advice"]
    assert report["figures"]["keys_without_ttl"] >= 1
    if policy == "volatile-lru":
        assert "use volatile-lfu so hot keys stay" in advice
        assert "allkeys" not in advice
    else:
        assert "use allkeys-lfu so hot keys stay" in advice
        assert "no TTL, and allkeys-lru evicts them too" in advice
        assert "a Redis of its own" in advice


def test_a_user_refused_config_is_told_and_judged_from_info(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        url = _app_user(server, ["+@all", "-config"])
        status, report = _doctor(url, capsys, "--interval", "0")
    assert report["config"] is None
    assert "NOPERM" in report["config_refused"]
    codes = _codes(report)
    assert codes["config-refused"] == "info"
    assert codes["noeviction"] == "warning"  # from INFO's maxmemory_policy, not yet full
    assert status == 1
    # A new user has no channels (Redis 7): no REDIRECT, but RESP3 tracking.
    assert report["figures"]["wake"]["transport"] == "tracking-resp3"
    wake = next(v for v in report["verdicts"] if v["code"] == "wake")
    assert "&__redis__:invalidate" in wake["advice"]


def test_a_user_allowed_no_wake_transport_is_told_what_to_grant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with RedisServer() as server:
        url = _app_user(server, ["+@all", "-client", "-config"], channels=[], reset_channels=True)
        status, report = _doctor(url, capsys, "--interval", "0", "--namespace", "app")
    assert report["figures"]["wake"]["transport"] == "poll"
    wake = next(v for v in report["verdicts"] if v["code"] == "wake")
    assert wake["severity"] == "warning"
    assert "NOPERM" in wake["advice"]
    assert "+client|tracking" in wake["advice"]
    assert status == 1


def test_an_unreachable_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer() as server:
        url = server.url
    assert main(["doctor", url, "--interval", "0"]) == 3
    assert "unavailable" in capsys.readouterr().err


def test_the_table_for_a_person(
    full_noeviction: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", full_noeviction.url, "--interval", "0"]) == 2
    out = capsys.readouterr().out
    assert "CRITICAL noeviction" in out
    assert "policy noeviction" in out


def test_the_table_wraps_to_the_terminal_and_shortens_long_key_names(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 MB value under a 300-byte binary name: the title shows its start, JSON all of it."""
    name = b"app:\xff" + b"n" * 300
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        client = redis.Redis(port=server.port)
        client.set(name, b"\0" * (2 * 1024 * 1024), ex=3000)
        client.close()
        monkeypatch.setenv("COLUMNS", "72")
        assert main(["doctor", server.url, "--interval", "0", "--sample", "10"]) == 1
        table = capsys.readouterr().out
        _, report = _doctor(server.url, capsys, "--interval", "0", "--sample", "10")
    assert max(len(line) for line in table.splitlines()) <= 72
    assert "big-values: values of" in table
    assert "…'" in table  # the name's start, then an ellipsis
    assert "sample   1 key:" in table
    assert "under 1% of their size" in " ".join(table.split())  # 2 MiB of zeros: not "0%"
    assert "no rates or traffic verdicts (--interval 0)" in table
    assert report["figures"]["sample"]["biggest"][0]["key"] == "app:\\xff" + "n" * 300


def test_big_values_tell_only_what_was_read(capsys: pytest.CaptureFixture[str]) -> None:
    """Type and lz4 ratio for the values of 1 MiB or more among the three biggest, as documented.

    Neither is guessed: a user refused TYPE gets neither, and the title names no type.
    """
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        client = redis.Redis(port=server.port)
        client.set("big", b"x" * (2 * 1024 * 1024), ex=3000)
        client.rpush("biglist", *[b"y" * 1000] * 1100)  # over 1 MiB, not a string
        client.set("small", b"z" * 1000, ex=3000)
        client.close()
        _, report = _doctor(server.url, capsys, "--interval", "0")
        _, refused = _doctor(_app_user(server, ["+@all", "-type"]), capsys, "--interval", "0")
    biggest = {b["key"]: b for b in report["figures"]["sample"]["biggest"]}
    assert biggest["big"]["type"] == "string"
    assert biggest["big"]["lz4_ratio"] < 0.1
    assert biggest["biglist"]["type"] == "list"
    assert "lz4_ratio" not in biggest["biglist"]
    assert set(biggest["small"]) == {"key", "bytes"}  # under 1 MiB: neither read
    assert _verdict(report, "big-values")["title"].endswith("(the biggest: 'big', a string)")
    assert all(set(b) == {"key", "bytes"} for b in refused["figures"]["sample"]["biggest"])
    assert _verdict(refused, "big-values")["title"].endswith("(the biggest: 'big')")


def test_a_server_without_room_for_a_process_is_told_and_its_wake_probe_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """maxclients 1: room for the doctor's connection only; the watcher's is refused."""
    with RedisServer("--maxclients", "1") as server:
        status, report = _doctor(server.url, capsys, "--interval", "0")
    codes = _codes(report)
    assert codes["maxclients"] == "warning"  # one slot (the doctor's): a process needs three
    assert report["figures"]["maxclients"] == 1
    assert report["figures"]["wake"]["transport"] is None
    assert report["figures"]["wake"]["error"]
    assert codes["wake"] == "warning"
    wake = next(v for v in report["verdicts"] if v["code"] == "wake")
    assert "maxclients" in wake["advice"]
    assert status == 1


def test_maxclients_counts_the_others_and_a_full_server_is_critical(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """8 of 10 held: a warning about 2 free (not counting the doctor); 10 of 10: exit 2."""
    with RedisServer("--maxclients", "10") as server:
        held = [redis.Redis(port=server.port) for _ in range(10)]
        try:
            for client in held[:8]:
                client.ping()
            status, report = _doctor(server.url, capsys, "--interval", "0", "--sample", "0")
            crowded = next(v for v in report["verdicts"] if v["code"] == "maxclients")
            for client in held[8:]:
                client.ping()
            full = main(["doctor", server.url, "--interval", "0", "--sample", "0"])
            said = capsys.readouterr().err
        finally:
            for client in held:
                client.close()
    figures = crowded["figures"]
    assert (crowded["severity"], figures["others"], figures["free"]) == ("warning", 8, 2)
    assert status == 1
    assert full == 2
    assert "at maxclients" in said
    assert "is the server up" not in said


@pytest.mark.parametrize(
    ("more", "words"),
    [
        (["redis://127.0.0.1:6379/abc"], "names the database by number"),
        (["--namespace", "\udcff"], "--namespace must be UTF-8"),  # (argv's undecodable byte)
        (["--interval", "nan"], "--interval must be"),
        (["--interval", "1e-310"], "--interval must be"),
        (["--sample", "-1"], "--sample must be"),
        (["redis://[::1"], "the URL cannot be read"),
        (["--namespace", "a{b}"], "brace-free"),
    ],
)
def test_bad_arguments_exit_3_and_say_what_to_give(
    more: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["doctor", *more])
    assert stopped.value.code == 3
    assert words in capsys.readouterr().err


def test_watch_reads_again_a_second_apart_until_interrupted() -> None:
    """--watch with --interval 0: each reading waits a second (no busy loop); Ctrl-C exits 130."""
    seen: list[float] = []
    with RedisServer() as server, subprocess.Popen(
        [sys.executable, "-m", "asyncstampede", "doctor", server.url, "--watch",
         "--interval", "0", "--sample", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as watching:  # fmt: skip
        assert watching.stdout is not None
        for line in watching.stdout:
            if line.startswith("Redis at"):
                seen.append(time.monotonic())
                if len(seen) == 3:
                    break
        watching.send_signal(signal.SIGINT)
        assert watching.wait(timeout=30) == 130
    assert len(seen) == 3
    assert min(b - a for a, b in itertools.pairwise(seen)) >= 0.9  # the pause is the behaviour


def test_the_key_sample_finds_clustered_ttls_big_values_and_hot_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bounded SCAN of one namespace: TTLs written together, a 2 MB value, LFU's hot keys."""
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lfu") as server:
        client = redis.Redis(port=server.port)
        for i in range(50):
            client.set(f"app:k{i}", b"v", ex=300)  # one TTL, written together
        client.set("app:big", b"x" * (2 * 1024 * 1024), ex=3000)
        for _ in range(200):
            client.get("app:k7")  # a hot key
        for i in range(30):
            client.set(f"other:{i}", b"v")  # not in the namespace: not sampled
        client.close()
        status, report = _doctor(
            server.url, capsys, "--interval", "0", "--namespace", "app", "--sample", "100"
        )
    sample = report["figures"]["sample"]
    assert sample["sampled"] == 51
    assert sample["without_ttl"] == 0
    assert sample["biggest"][0]["key"] == "app:big"
    assert sample["lz4_ratio"] < 0.1  # 2 MiB of one byte: lz4 would help, and it says so
    big = next(v for v in report["verdicts"] if v["code"] == "big-values")
    assert "lz4 makes" in big["advice"]
    codes = _codes(report)
    assert codes["ttl-cluster"] == "warning"
    assert codes["big-values"] == "warning"
    assert codes["hot-keys"] == "info"
    hot = next(v for v in report["verdicts"] if v["code"] == "hot-keys")
    assert hot["figures"]["hottest"][0]["key"] == "app:k7"
    assert status == 1


@pytest.mark.anyio
async def test_an_application_gets_the_same_record_from_its_stampede(namespace: str) -> None:
    """await cache.diagnose(): the namespace's keys sampled, the verdicts as the CLI's."""
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru") as server:
        client = redis.Redis(port=server.port)
        for i in range(5):
            client.set(f"{namespace}:forever{i}", b"v")  # written by some other program
        client.close()
        async with Stampede.from_url(server.url, namespace=namespace) as cache:

            async def value() -> str:
                return "v"

            await cache.get_or_compute("k", value, ttl=60)
            found = await cache.diagnose(interval=0)
    assert isinstance(found, Diagnosis)
    assert found.exit_status == 0  # (no memory pressure: information only)
    assert {v.code for v in found.verdicts} >= {"volatile-without-ttl", "wake"}
    # Its value (and the commit's marker on the lock, while it lasts) and the five others.
    assert found.figures["sample"]["sampled"] in (6, 7)
    assert found.figures["sample"]["without_ttl"] == 5


@pytest.mark.anyio
async def test_an_embedded_stampede_has_no_redis_to_diagnose() -> None:
    async with Stampede() as cache:
        with pytest.raises(RuntimeError, match="embedded"):
            await cache.diagnose()


# The --json shape the operations guide documents.
DOCUMENTED_FIGURES = {
    "used_memory", "maxmemory", "maxmemory_policy", "memory_share", "keys",
    "keys_without_ttl", "evicted_keys_per_s", "expired_keys_per_s", "hits_per_s",
    "misses_per_s", "hit_ratio", "rates", "restarted", "ops_per_s", "ops_per_s_first_half",
    "ops_per_s_second_half", "connected_clients", "connected_clients_before",
    "connected_clients_least", "connected_clients_most", "maxclients",
    "blocked_clients", "oom_errors", "sample", "wake",
}  # fmt: skip
DOCUMENTED_SAMPLE = {
    "sampled", "gone", "without_ttl", "with_ttl", "ttl_busiest_second", "size_p50", "size_max",
    "biggest", "lz4_ratio", "refused", "scanned", "complete",
}  # fmt: skip


def test_the_json_has_the_documented_shape(
    full_noeviction: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _, report = _doctor(full_noeviction.url, capsys, "--interval", "0")
    assert set(report) == {
        "address", "version", "interval", "config", "config_refused", "figures",
        "verdicts", "severity", "exit_status",
    }  # fmt: skip
    assert set(report["figures"]) == DOCUMENTED_FIGURES
    assert set(report["figures"]["sample"]) == DOCUMENTED_SAMPLE
    assert set(report["figures"]["wake"]) == {"transport", "refused", "error", "namespace"}
    for verdict in report["verdicts"]:
        assert set(verdict) == {"code", "severity", "title", "advice", "figures"}
        assert verdict["severity"] in ("info", "warning", "critical")


def _reading(commands: int, hits: int, misses: int, clients: int = 50) -> dict[str, Any]:
    return {"redis_version": "7.0.15", "run_id": "a", "maxmemory_policy": "allkeys-lru",
            "total_commands_processed": commands, "keyspace_hits": hits,
            "keyspace_misses": misses, "connected_clients": clients}  # fmt: skip


def test_misses_outpacing_hits_while_ops_fall_read_as_a_stampede() -> None:
    """The runbook's signature, judged from three INFO readings (a pure function)."""
    config = {"maxmemory": "1000000"}
    before, middle = _reading(0, 1000, 100), _reading(10_000, 1050, 1100)
    after = _reading(12_000, 1100, 2100)  # 10,000 commands in the first second, 2,000 after
    found = judge("127.0.0.1:6379/0", before, after, 2.0, config, None, middle=middle)
    stampede = next(v for v in found.verdicts if v.code == "stampede")
    assert stampede.severity == "warning"  # an inference from counters: never critical
    assert found.exit_status == 1
    # (less the doctor's own INFO, one per reading)
    assert (found.figures["ops_per_s_first_half"], found.figures["ops_per_s_second_half"]) == (
        9_999,
        1_999,
    )
    calm = judge("127.0.0.1:6379/0", before, {**after, "total_commands_processed": 21_000},
                 2.0, config, None, middle=middle)  # fmt: skip
    assert "stampede" not in {v.code for v in calm.verdicts}
    assert "misses" in {v.code for v in calm.verdicts}
    # The clients went away (a job ended): ops fell because nobody asks, not a stampede.
    gone = judge("127.0.0.1:6379/0", before, {**after, "connected_clients": 1},
                 2.0, config, None, middle=middle)  # fmt: skip
    assert "stampede" not in {v.code for v in gone.verdicts}
    # A job that came after the first reading and left before the last.
    came = judge("127.0.0.1:6379/0", _reading(0, 1000, 100, clients=2),
                 {**after, "connected_clients": 2}, 2.0, config, None,
                 middle={**middle, "connected_clients": 3})  # fmt: skip
    assert "stampede" not in {v.code for v in came.verdicts}
    # A trickle: too few misses and commands to tell anything.
    trickle = judge("127.0.0.1:6379/0", _reading(0, 0, 0), _reading(60, 0, 16), 2.0, config,
                    None, middle=_reading(40, 0, 8))  # fmt: skip
    assert "stampede" not in {v.code for v in trickle.verdicts}


def test_a_restart_or_reset_between_the_readings_gives_no_rates() -> None:
    """Counters that went back (CONFIG RESETSTAT) or a new run_id: no rates, no traffic verdict."""
    config = {"maxmemory": "1000000"}
    before, middle = _reading(90_000, 80_000, 1000), _reading(90_100, 80_050, 1100)
    for after in (_reading(200, 0, 500), {**_reading(95_000, 80_100, 9000), "run_id": "b"}):
        found = judge("127.0.0.1:6379/0", before, after, 2.0, config, None, middle=middle)
        assert found.figures["restarted"] is True
        assert found.figures["hits_per_s"] is found.figures["misses_per_s"] is None
        codes = {v.code for v in found.verdicts}
        assert "restarted" in codes
        assert not codes & {"misses", "stampede", "evictions"}


def test_the_last_run_s_key_sample_makes_no_stampede_in_the_next(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Runs back to back on a quiet server with steady misses: never a stampede.

    Redis's moving average of ops/s still held the previous run's sample burst;
    the halves come from its exact command count.
    """
    with RedisServer() as server:
        client = redis.Redis(port=server.port)
        client.mset({f"k{i}": b"v" for i in range(5000)})
        stop = threading.Event()

        def miss() -> None:  # about 50 misses a second until stopped (at most 20 s)
            reader = redis.Redis(port=server.port)
            for _ in range(1000):
                if stop.wait(0.02):
                    break
                reader.get("nokey")
            reader.close()

        thread = threading.Thread(target=miss)
        thread.start()
        try:
            runs = [_doctor(server.url, capsys, "--interval", "1", "--sample", "5000")
                    for _ in range(3)]  # fmt: skip
        finally:
            stop.set()
            thread.join()
            client.close()
    for status, report in runs:
        assert "stampede" not in _codes(report)
        assert _codes(report)["misses"] == "warning"
        assert status == 1


def test_a_closed_pipe_keeps_the_exit_status_and_prints_no_traceback(
    full_noeviction: RedisServer,
) -> None:
    """asyncstampede doctor | true: the reader has gone; the verdict's status still comes back."""
    with subprocess.Popen(
        [sys.executable, "-m", "asyncstampede", "doctor", full_noeviction.url, "--interval", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as doctor:
        assert doctor.stdout is not None
        assert doctor.stderr is not None
        doctor.stdout.close()  # (as `| true` does, before the doctor writes)
        said = doctor.stderr.read()
        assert doctor.wait(timeout=30) == 2
    assert b"Traceback" not in said


def test_json_says_why_it_cannot_judge(capsys: pytest.CaptureFixture[str]) -> None:
    """--json at exit 3 prints a document with the error, for the machine reading it."""
    with RedisServer() as server:
        url = server.url
    assert main(["doctor", url, "--json", "--interval", "0"]) == 3
    said = json.loads(capsys.readouterr().out)
    assert said["exit_status"] == 3
    assert "unavailable" in said["error"]


def test_narrow_terminals_and_commands_are_never_cut(full_noeviction: RedisServer) -> None:
    """From 1 to 120 columns: no error, no line past the width (40 at least), no command cut."""

    async def run() -> Diagnosis:
        client = redis.asyncio.Redis(port=full_noeviction.port)
        try:
            return await diagnose(client, interval=0, sample=10)
        finally:
            await client.aclose()

    found = anyio.run(run)
    for width in range(1, 121):
        table = _table(found, width=width)
        assert max(len(line) for line in table.splitlines()) <= max(width, 40)
        words = table.split()
        assert "maxmemory-" not in words  # a command cut at its hyphen
        assert "allkeys-" not in words
        assert "maxmemory-policy" in words


def test_ooms_before_the_readings_do_not_make_a_freed_server_critical(
    full_noeviction: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server counts OOM errors since it started: only those over the interval count."""
    client = redis.Redis(port=full_noeviction.port)
    client.flushall()
    client.close()
    status, report = _doctor(full_noeviction.url, capsys, "--interval", "0")
    assert _codes(report)["noeviction"] == "warning"
    assert report["figures"]["oom_errors"] == 0
    assert status == 1


def test_short_ttls_and_its_own_locks_are_no_ttl_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TTLs of a few seconds end close together anyway; asyncstampede's locks are left out."""
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        client = redis.Redis(port=server.port)
        for i in range(50):
            client.set(f"app:{{k{i}}}:v", b"v", ex=5)  # short TTLs, written together
            client.set(f"app:{{k{i}}}:l", b"marker", ex=60)  # its lock (or commit marker)
        client.close()
        status, report = _doctor(server.url, capsys, "--interval", "0", "--namespace", "app")
    assert report["figures"]["sample"]["sampled"] == 50  # the locks left out
    assert "ttl-cluster" not in _codes(report)
    assert status == 0, report["verdicts"]


class _EvictingClient(redis.asyncio.Redis):
    """A client after whose every SCAN half the keys found are gone, as under heavy eviction.

    (Deleted, here: the doctor reads them as it reads evicted keys, PTTL -2.)
    """

    deleted = 0

    async def scan(self, *args: Any, **kwargs: Any) -> Any:
        cursor, names = await super().scan(*args, **kwargs)
        if names[::2]:
            self.deleted += await self.delete(*names[::2])
        return cursor, names


def test_keys_gone_between_scan_and_their_reading_are_counted_as_gone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1,000 keys found, half evicted before PTTL: 500 sampled, 500 gone, the SCAN complete.

    Never replaced by others (which heavy eviction would evict too), never
    counted as sampled; complete is about the SCAN only (it reached the end,
    or found as many keys as asked for).
    """

    async def run(port: int) -> Diagnosis:
        client = _EvictingClient(port=port)
        try:
            found = await diagnose(client, interval=0, sample=1000, wake=False)
        finally:
            await client.aclose()
        assert client.deleted == 500
        return found

    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        client = redis.Redis(port=server.port)
        client.mset({f"k{i}": b"v" for i in range(1000)})
        client.close()
        found = anyio.run(run, server.port)
    sample = found.figures["sample"]
    assert (sample["sampled"], sample["gone"], sample["complete"]) == (500, 500, True)
    assert sample["without_ttl"] == 500
    assert "sample   500 keys (500 more gone before they were read (evicted or expired)): 500 " in (
        _table(found, width=100)
    )


def test_the_sample_leaves_out_its_own_locks_before_it_has_enough(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A SCAN batch of asyncstampede's locks is not "enough": it scans on for cached values."""
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        client = redis.Redis(port=server.port)
        client.mset({f"app:{{k{i}}}:l": b"marker" for i in range(5000)})  # locks
        client.mset({f"app:{{k{i}}}:v": b"value" for i in range(200)})
        client.close()
        _, report = _doctor(server.url, capsys, "--interval", "0", "--sample", "150")
    sample = report["figures"]["sample"]
    assert (sample["sampled"], sample["gone"], sample["complete"]) == (150, 0, True)


def test_a_user_refused_scan_gets_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        url = _app_user(server, ["+@all", "-scan"])
        status, report = _doctor(url, capsys, "--interval", "0")
    assert "NOPERM" in report["figures"]["sample"]["refused"]
    assert _codes(report)["sample-refused"] == "info"
    assert status in (0, 1)  # judged: not "cannot judge" (3)


def test_a_sample_cut_short_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """210,000 keys and none of the namespace's: the bounded SCAN stops, and says where."""
    with RedisServer("--enable-debug-command", "yes") as server:
        server.command("DEBUG", "POPULATE", "210000")
        assert main(["doctor", server.url, "--interval", "0", "--namespace", "app"]) == 1
        table = capsys.readouterr().out
        _, report = _doctor(server.url, capsys, "--interval", "0", "--namespace", "app")
    sample = report["figures"]["sample"]
    assert (sample["sampled"], sample["complete"], sample["scanned"]) == (0, False, 200_000)
    assert "no keys matched, stopped after about 200,000 keys" in " ".join(table.split())


def test_writes_refused_under_an_evicting_policy_are_critical(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """allkeys-lru with maxmemory below what Redis needs: every write OOM, nothing to evict."""
    with RedisServer("--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru") as server:
        stop = threading.Event()

        def write() -> None:  # a bounded loopback write load, refused
            client = redis.Redis(port=server.port)
            for i in range(50_000):
                if stop.is_set():
                    break
                with contextlib.suppress(redis.exceptions.ResponseError):
                    client.set(f"w{i}", b"x" * 100)
            client.close()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            status, report = _doctor(server.url, capsys, "--interval", "0.5", "--sample", "0")
        finally:
            stop.set()
            writer.join()
    assert report["figures"]["oom_errors"] > 0
    oom = next(v for v in report["verdicts"] if v["code"] == "oom")
    assert oom["severity"] == "critical"
    assert "headroom" not in _codes(report)
    assert status == 2


def test_writes_refused_are_said_apart_from_ops(full_noeviction: RedisServer) -> None:
    """Redis counts no refused command in its ops: "0 ops/s" beside "N writes refused" says so."""
    stop = threading.Event()

    def write() -> None:  # a bounded loopback write load, every write refused (OOM)
        client = redis.Redis(port=full_noeviction.port)
        for i in range(50_000):
            if stop.is_set():
                break
            with contextlib.suppress(redis.exceptions.ResponseError):
                client.set(f"w{i}", b"x" * 100)
        client.close()

    async def run() -> Diagnosis:
        client = redis.asyncio.Redis(port=full_noeviction.port)
        try:
            return await diagnose(client, interval=0.5, sample=0, wake=False)
        finally:
            await client.aclose()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        found = anyio.run(run)
    finally:
        stop.set()
        writer.join()
    refused = found.figures["oom_errors"]
    assert refused > 0
    traffic = " ".join(_table(found, width=100).split())
    ops = f"{found.figures['ops_per_s']:,.0f} ops/s"
    assert f"{ops} (first half " in traffic
    assert f"), not counting {refused:,} writes refused (OOM), hits " in traffic


def test_a_restart_during_the_interval_is_a_verdict_not_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The server restarts between the readings: 'restarted', no rates, not exit 3."""
    with RedisServer() as server:
        restarted = threading.Event()

        def restart() -> None:
            server.restart()
            restarted.set()

        thread = threading.Timer(0.3, restart)
        thread.start()
        try:
            status, report = _doctor(server.url, capsys, "--interval", "2", "--sample", "0")
        finally:
            thread.join()
    assert restarted.is_set()
    assert report["figures"]["restarted"] is True
    assert "restarted" in _codes(report)
    assert status in (0, 1)


def test_bad_arguments_with_json_print_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json and a bad argument: the machine still gets a document saying why."""
    with pytest.raises(SystemExit) as stopped:
        main(["doctor", "--json", "--interval", "-1"])
    assert stopped.value.code == 3
    said = json.loads(capsys.readouterr().out)
    assert said["exit_status"] == 3
    assert "interval" in said["error"]


def _errorstats(server: RedisServer) -> dict[str, str]:
    """The server's INFO errorstats, read on a bare socket (no client handshake of its own)."""
    reply = server.command("INFO", "errorstats").decode()
    return dict(
        line.strip().split(":", 1) for line in reply.splitlines() if line.startswith("errorstat_")
    )


def test_neither_the_doctor_nor_a_session_adds_to_the_servers_errors(
    server_of_each_kind: RedisServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing asyncstampede sends is refused: INFO errorstats stay as they were.

    redis-py's handshake sends CLIENT SETINFO (Redis 7.0 and 6.2 refuse it)
    and CLIENT MAINT_NOTIFICATIONS (Redis 7.0, 6.2 and Valkey 9 refuse it),
    and SET NX GET is a syntax error before 7.0: an alert on the server's
    error rate would fire for each doctor run and each process started.
    """
    server = server_of_each_kind

    async def session() -> None:
        computes = 0

        async def compute() -> str:
            nonlocal computes
            computes += 1
            await anyio.sleep(0.05)
            return "v"

        async with Stampede.from_url(server.url, namespace=namespace) as cache:
            await cache.check()  # every kind of command asyncstampede sends, once
            async with anyio.create_task_group() as tg:  # a herd: one computes, four wake
                for _ in range(5):
                    tg.start_soon(lambda: cache.get_or_compute("herd", compute, ttl=60))
            for i in range(5):
                await cache.get_or_compute(f"k{i}", compute, ttl=60)
                await cache.get_or_compute(f"k{i}", compute, ttl=60)  # a hit
        assert computes == 6

    before = _errorstats(server)
    anyio.run(session)
    after_session = _errorstats(server)
    main(["doctor", server.url, "--interval", "0.2", "--namespace", namespace])
    capsys.readouterr()
    assert (after_session, _errorstats(server)) == (before, before)


def test_no_wake_skips_the_probe(capsys: pytest.CaptureFixture[str]) -> None:
    """--no-wake: a monitoring user's rights are not judged as the application's."""
    with RedisServer() as server:
        url = _app_user(server, ["-@all", "+info", "+config|get", "+hello", "+ping"])
        status, report = _doctor(url, capsys, "--interval", "0", "--sample", "0", "--no-wake")
    assert report["figures"]["wake"] is None
    assert "wake" not in _codes(report)
    assert status == 1  # (maxmemory 0 only)
