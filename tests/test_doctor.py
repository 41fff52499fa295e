"""``asyncstampede doctor`` on real servers set up well and badly, each started here."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from asyncstampede import Stampede
from asyncstampede.__main__ import main
from asyncstampede._doctor import judge
from asyncstampede.doctor import Diagnosis
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


@pytest.fixture
def full_noeviction() -> Iterator[RedisServer]:
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        client = redis.Redis(port=server.port)
        refused = None
        for i in range(10_000):  # bounded: 10 MB would do, 2 MB is the limit
            try:
                client.set(f"k{i}", b"x" * 1000)
            except redis.exceptions.ResponseError as exc:  # OOM: full
                refused = exc
                break
        client.close()
        assert refused is not None
        assert "maxmemory" in str(refused)
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


def test_volatile_lru_with_keys_without_ttl_is_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru") as server:
        client = redis.Redis(port=server.port)
        for i in range(50):
            client.set(f"forever{i}", b"v")
        client.close()
        status, report = _doctor(server.url, capsys, "--interval", "0")
    assert status == 1
    assert _codes(report)["volatile-without-ttl"] == "warning"
    assert report["figures"]["keys_without_ttl"] == 50


def test_evictions_while_sampling_are_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru") as server:
        stop = threading.Event()

        def write() -> None:  # a bounded loopback write load, while the doctor samples
            client = redis.Redis(port=server.port)
            for i in range(20_000):
                if stop.is_set():
                    break
                client.set(f"k{i}", b"x" * 2000)
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


def test_a_server_at_maxclients_is_critical_and_its_wake_probe_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """maxclients 1: the doctor's own connection is the last one; the watcher's is refused."""
    with RedisServer("--maxclients", "1") as server:
        status, report = _doctor(server.url, capsys, "--interval", "0")
    codes = _codes(report)
    assert codes["maxclients"] == "critical"
    assert report["figures"]["maxclients"] == 1
    assert report["figures"]["wake"]["transport"] is None
    assert report["figures"]["wake"]["error"]
    assert codes["wake"] == "warning"
    wake = next(v for v in report["verdicts"] if v["code"] == "wake")
    assert "maxclients" in wake["advice"]
    assert status == 2


@pytest.mark.parametrize(
    ("more", "words"),
    [
        (["redis://127.0.0.1:6379/abc"], "names the database by number"),
        (["--namespace", "\udcff"], "--namespace must be UTF-8"),  # (argv's undecodable byte)
        (["--interval", "nan"], "--interval must be"),
        (["--sample", "-1"], "--sample must be"),
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
    assert found.exit_status == 1
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
    "misses_per_s", "hit_ratio", "ops_per_s", "ops_per_s_before", "connected_clients",
    "maxclients", "blocked_clients", "oom_errors", "sample", "wake",
}  # fmt: skip
DOCUMENTED_SAMPLE = {
    "sampled", "without_ttl", "with_ttl", "ttl_busiest_second", "size_p50", "size_max",
    "biggest", "lz4_ratio", "refused",
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
    assert set(report["figures"]["wake"]) == {"transport", "refused", "error"}
    for verdict in report["verdicts"]:
        assert set(verdict) == {"code", "severity", "title", "advice", "figures"}
        assert verdict["severity"] in ("info", "warning", "critical")


def test_misses_outpacing_hits_while_ops_fall_read_as_a_stampede() -> None:
    """The runbook's signature, judged from two INFO readings (the verdict is a pure function)."""
    before = {"redis_version": "7.0.15", "keyspace_hits": 1000, "keyspace_misses": 100,
              "instantaneous_ops_per_sec": 5000, "maxmemory_policy": "allkeys-lru"}  # fmt: skip
    after = {**before, "keyspace_hits": 1100, "keyspace_misses": 2100,
             "instantaneous_ops_per_sec": 1200}  # fmt: skip
    found = judge("127.0.0.1:6379/0", before, after, 2.0, {"maxmemory": "1000000"}, None)
    stampede = next(v for v in found.verdicts if v.code == "stampede")
    assert stampede.severity == "critical"
    assert found.exit_status == 2
    calm = judge("127.0.0.1:6379/0", before, {**after, "instantaneous_ops_per_sec": 5200},
                 2.0, {"maxmemory": "1000000"}, None)  # fmt: skip
    assert "stampede" not in {v.code for v in calm.verdicts}
    assert "misses" in {v.code for v in calm.verdicts}


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


def test_a_user_refused_scan_gets_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        url = _app_user(server, ["+@all", "-scan"])
        status, report = _doctor(url, capsys, "--interval", "0")
    assert "NOPERM" in report["figures"]["sample"]["refused"]
    assert _codes(report)["sample-refused"] == "info"
    assert status in (0, 1)  # judged: not "cannot judge" (3)
