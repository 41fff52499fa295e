"""asyncstampede.prometheus: the exposition parses and carries what statistics() says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from _observed import two_instance_herd
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from asyncstampede import Stampede, Statistics
from asyncstampede._metrics import METRICS, label, prometheus_name
from asyncstampede.events import (
    BackendFailure,
    BreakerChange,
    ComputeEnded,
    Corrupt,
    Hit,
    RedisCall,
    StaleServed,
    Timeout,
    TransportChange,
)
from asyncstampede.prometheus import PrometheusHook

pytestmark = pytest.mark.anyio

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(registry: CollectorRegistry) -> Samples:
    """Parse *registry*'s text exposition: sample name -> (labels, value) for each sample."""
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of *name* whose labels include *labels*."""
    return sum(
        value
        for have, value in samples.get(name, [])
        if all(have.get(k) == v for k, v in labels.items())
    )


# Each statistics() counter and the sample that carries it.
SAME = {
    "hits": "asyncstampede_hits_total",
    "misses": "asyncstampede_misses_total",
    "computes": "asyncstampede_computes_total",
    "coalesced": "asyncstampede_coalesced_total",
    "remote_waits": "asyncstampede_wait_duration_seconds_count",
    "wakeups": "asyncstampede_wakeups_total",
    "takeovers": "asyncstampede_takeovers_total",
    "lock_lost": "asyncstampede_locks_lost_total",
    "decode_errors": "asyncstampede_corrupt_total",
    "early_refreshes": "asyncstampede_early_refreshes_total",
    "backend_errors": "asyncstampede_backend_failures_total",
}


def assert_same(samples: Samples, stats: Statistics) -> None:
    for field, name in SAME.items():
        assert total(samples, name) == getattr(stats, field), (field, name)


async def test_the_exposition_carries_the_statistics(redis_url: str, namespace: str) -> None:
    """A herd over two instances, each with a registry of its own: every figure as statistics()."""
    ra, rb = CollectorRegistry(), CollectorRegistry()
    a = Stampede.from_url(
        redis_url, namespace=namespace, hooks=[PrometheusHook(ra, hit_durations=1)]
    )
    b = Stampede.from_url(redis_url, namespace=namespace, hooks=[PrometheusHook(rb)])
    async with a, b:
        await two_instance_herd(a, b)
        sa, sb = a.statistics(), b.statistics()
    pa, pb = scrape(ra), scrape(rb)
    assert (sa.computes, sb.computes, sa.misses, sb.misses) == (1, 0, 1, 1)
    assert_same(pa, sa)
    assert_same(pb, sb)
    assert total(pa, "asyncstampede_computes_total", asyncstampede_outcome="ok") == 1
    assert total(pa, "asyncstampede_compute_duration_seconds_count") == 1
    assert total(pa, "asyncstampede_hit_duration_seconds_count") >= 1
    for samples, commits in ((pa, 1), (pb, 0)):  # the Redis steps: only the holder commits
        assert (
            total(
                samples,
                "asyncstampede_redis_duration_seconds_count",
                asyncstampede_operation="COMMIT",
                asyncstampede_outcome="ok",
            )
            == commits
        )
        assert (
            total(
                samples, "asyncstampede_redis_duration_seconds_count", asyncstampede_operation="GET"
            )
            == 1
        )
    assert {
        labels["asyncstampede_namespace"] for labels, _ in pb["asyncstampede_misses_total"]
    } == {namespace}
    for samples in (pa, pb):  # (each closed instance's transport has left the gauge)
        assert (
            total(samples, "asyncstampede_wake_transport", asyncstampede_transport="tracking") == 0
        )
        assert (
            total(samples, "asyncstampede_wake_changes_total", asyncstampede_transport="tracking")
            == 1
        )


def test_hooks_on_one_registry_share_its_metrics() -> None:
    """Two hooks on one registry register once and count into the same series."""
    registry = CollectorRegistry()
    first, second = PrometheusHook(registry), PrometheusHook(registry)
    first(Hit("n", "k", 0.001))
    second(Hit("n", "k", None))
    assert total(scrape(registry), "asyncstampede_hits_total") == 2
    assert first.metric("asyncstampede.hits") is second.metric("asyncstampede.hits")


def test_every_metric_is_named_as_the_otel_exporter_would() -> None:
    """Names and labels: the OpenTelemetry names translated (dots to underscores, units, _total)."""
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    for event in (
        ComputeEnded("n", "k", 0.5, "error", "ValueError"),
        StaleServed("n", "k", "revalidate"),
        Timeout("n", "k", "wait"),
        Corrupt("n", "k", "misfit"),
        BackendFailure("n", "looking up 'k'", False, "timeout"),
        RedisCall("n", "LOCK", 0.001, "ok"),
        BreakerChange("r:6379/0", "open", "closed", "silent"),
        TransportChange("r:6379/0", "tracking", None),
        TransportChange("r:6379/0", "poll", "tracking"),
    ):
        hook(event)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    for metric in METRICS.values():
        family = families[prometheus_name(metric)]
        kind = {"counter": "counter", "updown": "gauge"}.get(metric.kind, "histogram")
        assert family.type == kind
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                assert set(sample.labels) - {"le"} == {label(a) for a in metric.attributes}
    samples = scrape(registry)
    assert (
        total(
            samples,
            "asyncstampede_computes_total",
            asyncstampede_outcome="error",
            error_type="ValueError",
        )
        == 1
    )
    assert (
        total(samples, "asyncstampede_backend_failures_total", asyncstampede_refused="false") == 1
    )
    assert total(samples, "asyncstampede_breaker_open", asyncstampede_address="r:6379/0") == 1
    assert total(samples, "asyncstampede_wake_changes_total", asyncstampede_transport="poll") == 1
    assert total(samples, "asyncstampede_wake_transport", asyncstampede_transport="tracking") == 0


WORKER = textwrap.dedent(
    """
    import json, sys
    import anyio
    from asyncstampede import Stampede
    from asyncstampede.prometheus import PrometheusHook

    async def main(url, namespace):
        async def load():
            await anyio.sleep(0.05)
            return "v"
        async with Stampede.from_url(url, namespace=namespace, hooks=[PrometheusHook()]) as cache:
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(cache.get_or_compute, "k", load, 60)
            for _ in range(5):
                await cache.get_or_compute("k", load, 60)
            stats = cache.statistics()
            print(json.dumps({"hits": stats.hits, "misses": stats.misses,
                              "computes": stats.computes, "coalesced": stats.coalesced,
                              "wake": stats.wake}), flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # scraped meanwhile

    anyio.run(main, *sys.argv[1:])
    """
)


@pytest.mark.slow
def test_multiprocess_mode_sums_the_workers(redis_url: str, namespace: str, tmp_path: Path) -> None:
    """Two processes with PROMETHEUS_MULTIPROC_DIR: MultiProcessCollector sums what each counted."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, namespace],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = []
    for p in procs:
        assert p.stdout is not None
        reports.append(json.loads(p.stdout.readline()))  # (each still has its instance open)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    samples = scrape(registry)
    summed = Counter[str]()
    for report in reports:
        summed.update({k: v for k, v in report.items() if k != "wake"})
    assert summed["computes"] == 1  # one compute across both processes
    for field in ("hits", "misses", "computes", "coalesced"):
        assert total(samples, f"asyncstampede_{field}_total") == summed[field], field
    # The gauge sums the instances open; each one closing leaves it (no
    # mark_process_dead needed, which uvicorn has no hook for; a worker killed
    # outright would need it).
    transports = Counter(r["wake"] for r in reports)
    live = total(samples, "asyncstampede_wake_transport", asyncstampede_transport="tracking")
    assert live == transports["tracking"]
    for p in procs:
        p.communicate("\n", timeout=30)
    assert [p.returncode for p in procs] == [0, 0]
    after = CollectorRegistry()
    MultiProcessCollector(after, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    assert total(scrape(after), "asyncstampede_wake_transport") == 0
    assert total(scrape(after), "asyncstampede_hits_total") == summed["hits"]


def test_hit_durations_are_a_sample_by_default() -> None:
    """One hit's duration in 16 is observed; every hit is counted."""
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    for _ in range(40):
        hook(Hit("n", "k", 0.001))
    families = scrape(registry)
    assert total(families, "asyncstampede_hits_total") == 40
    assert total(families, "asyncstampede_hit_duration_seconds_count") == 2
    with pytest.raises(ValueError, match="one hit in how many"):
        PrometheusHook(None, hit_durations=-1)


def test_counters_start_at_zero_so_the_first_event_is_an_increase() -> None:
    """A namespace's first event makes its known series at 0 (increase() sees the first 1)."""
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    hook(Hit("n", "k", 0.001))
    families = scrape(registry)

    def value(name: str, **labels: str) -> list[float]:
        return [v for have, v in families.get(name, []) if labels.items() <= have.items()]

    assert value("asyncstampede_locks_lost_total", asyncstampede_namespace="n") == [0.0]
    assert value("asyncstampede_corrupt_total", asyncstampede_reason="undecodable") == [0.0]
    assert value("asyncstampede_backend_failures_total", asyncstampede_refused="true") == [0.0]
    assert value("asyncstampede_wake_changes_total") == []  # (no server seen yet)
    hook(BreakerChange("r:6379/0", "open", "closed", "silent"))
    families = scrape(registry)
    assert value("asyncstampede_wake_changes_total", asyncstampede_transport="poll") == [0.0]
    assert value("asyncstampede_breaker_changes_total", asyncstampede_state="open") == [1.0]
