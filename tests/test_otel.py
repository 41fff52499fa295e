"""asyncstampede.otel: the instruments and spans an in-memory reader and exporter see."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from _observed import two_instance_herd
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asyncstampede import Stampede
from asyncstampede._metrics import METRICS
from asyncstampede.events import (
    BackendFailure,
    BreakerChange,
    Coalesced,
    ComputeEnded,
    ComputeStarted,
    Corrupt,
    EarlyRefresh,
    Event,
    FailSafe,
    Hit,
    LockLost,
    Miss,
    RedisCall,
    StaleServed,
    Takeover,
    Timeout,
    TransportChange,
    Waited,
    WakeUp,
)
from asyncstampede.otel import OpenTelemetryHook

pytestmark = pytest.mark.anyio

NS = "asyncstampede.namespace"


@dataclass
class Otel:
    """A hook on SDK providers whose metrics and spans stay in memory."""

    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    tracer_provider: TracerProvider

    def hook(self, **options: Any) -> OpenTelemetryHook:
        meters = MeterProvider(metric_readers=[self.reader])
        return OpenTelemetryHook(meters, self.tracer_provider, **options)

    def points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> (attributes, value) per data point; a histogram's value is its point."""
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                assert scope.scope.name == "asyncstampede"
                for metric in scope.metrics:
                    found[metric.name] = [
                        (
                            dict(p.attributes or {}),
                            p if isinstance(p, HistogramDataPoint) else getattr(p, "value", p),
                        )
                        for p in metric.data.data_points
                    ]
        return found

    def total(self, name: str, **attrs: Any) -> Any:
        """The sum of a counter's points (a histogram's counts) whose attributes include *attrs*."""
        return sum(
            value.count if isinstance(value, HistogramDataPoint) else value
            for point_attrs, value in self.points().get(name, [])
            if all(point_attrs.get(k) == v for k, v in attrs.items())
        )

    def finished(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield Otel(InMemoryMetricReader(), spans, provider)
    provider.shutdown()


async def test_a_herd_is_measured_and_traced(otel: Otel, redis_url: str, namespace: str) -> None:
    """Two instances, 20 callers each on a cold key: one compute, misses, coalesced, one wait."""
    hook = otel.hook(hit_durations=1)
    a = Stampede.from_url(redis_url, namespace=namespace, hooks=[hook])
    b = Stampede.from_url(redis_url, namespace=namespace, hooks=[hook])
    async with a, b:
        await two_instance_herd(a, b)
        sa, sb = a.statistics(), b.statistics()
    assert otel.total("asyncstampede.computes", **{"asyncstampede.outcome": "ok"}) == 1
    assert otel.total("asyncstampede.compute.duration") == 1
    assert otel.total("asyncstampede.misses") == 2 == sa.misses + sb.misses
    assert otel.total("asyncstampede.coalesced") == 38 == sa.coalesced + sb.coalesced
    assert otel.total("asyncstampede.hits") == sa.hits + sb.hits >= 1
    assert otel.total("asyncstampede.hit.duration") >= 1
    assert otel.total("asyncstampede.wait.duration") == 1 == sb.remote_waits
    step = "asyncstampede.operation"
    assert otel.total("asyncstampede.redis.duration", **{step: "COMMIT"}) == 1
    assert otel.total("asyncstampede.redis.duration", **{step: "GET"}) == 2  # (the misses)
    assert otel.total("asyncstampede.redis.duration", **{step: "LOCK"}) >= 2
    assert otel.total("asyncstampede.wakeups") == sa.wakeups + sb.wakeups >= 1
    assert otel.total("asyncstampede.wake.changes", **{"asyncstampede.transport": "tracking"}) == 2
    points = otel.points()
    for name, metric in METRICS.items():
        for attrs, _ in points.get(name, []):
            assert set(attrs) <= set(metric.attributes), (name, attrs)
            assert "asyncstampede.key" not in attrs
            if NS in metric.attributes:
                assert attrs[NS] == namespace
    (compute,) = otel.finished("asyncstampede.compute")
    assert compute.attributes == {NS: namespace, "asyncstampede.outcome": "ok"}
    (wait,) = otel.finished("asyncstampede.wait")
    assert wait.attributes is not None
    assert wait.attributes[NS] == namespace
    assert wait.attributes["asyncstampede.outcome"] in ("value", "resolved")
    assert wait.start_time is not None
    assert wait.end_time is not None
    assert wait.start_time < wait.end_time


async def test_what_a_compute_does_is_a_child_of_its_span(otel: Otel, namespace: str) -> None:
    """The compute span is current while the function runs, a child of the caller's span."""
    tracer = otel.tracer_provider.get_tracer("app")

    async def load() -> int:
        with tracer.start_as_current_span("db.query"):
            return 1

    async with Stampede(namespace=namespace, hooks=[otel.hook()]) as cache:
        with tracer.start_as_current_span("request") as request:
            assert await cache.get_or_compute("k", load, 60) == 1
            assert trace.get_current_span() is request  # the context is given back
    (query,) = otel.finished("db.query")
    (compute,) = otel.finished("asyncstampede.compute")
    (outer,) = otel.finished("request")
    assert query.parent is not None
    assert compute.parent is not None
    assert query.parent.span_id == compute.context.span_id
    assert compute.parent.span_id == outer.context.span_id


async def test_a_failed_compute_is_counted_and_an_error_span(otel: Otel, namespace: str) -> None:
    """A compute that raises: counted with error.type, its span's status ERROR."""

    async def fails() -> int:
        raise RuntimeError("db down")

    async with Stampede(namespace=namespace, hooks=[otel.hook()]) as cache:
        with pytest.raises(RuntimeError):
            await cache.get_or_compute("k", fails, 60)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert (
        otel.total(
            "asyncstampede.computes",
            **{"asyncstampede.outcome": "error", "error.type": "RuntimeError"},
        )
        == 1
    )
    (compute,) = otel.finished("asyncstampede.compute")
    assert compute.status.status_code is StatusCode.ERROR
    assert compute.attributes is not None
    assert compute.attributes["error.type"] == "RuntimeError"
    assert "asyncstampede.key" not in compute.attributes


async def test_the_key_is_on_spans_only_when_asked(otel: Otel, namespace: str) -> None:
    """keys=True puts the cache key on the compute span; metrics never carry it."""

    async def load() -> int:
        return 1

    async with Stampede(namespace=namespace, hooks=[otel.hook(keys=True)]) as cache:
        await cache.get_or_compute("user:42", load, 60)
    (compute,) = otel.finished("asyncstampede.compute")
    assert compute.attributes is not None
    assert compute.attributes["asyncstampede.key"] == "user:42"
    assert all(
        "asyncstampede.key" not in attrs for points in otel.points().values() for attrs, _ in points
    )


def test_every_kind_of_event_has_its_instrument(otel: Otel) -> None:
    """One event of each kind, handed to the hook: each metric gets its point and attributes."""
    hook = otel.hook(hit_durations=1)
    tracer = otel.tracer_provider.get_tracer("app")
    events: list[Event] = [
        Hit("n", "k", 0.001),
        Hit("n", "k"),
        Miss("n", "k"),
        Coalesced("n", "k"),
        ComputeStarted("n", "k"),
        ComputeEnded("n", "k", 0.2, "timeout"),
        Waited("n", "k", 0.3, "failed"),
        WakeUp("n", "k"),
        Takeover("n", "k"),
        LockLost("n", "k"),
        EarlyRefresh("n", "k"),
        StaleServed("n", "k", "error"),
        FailSafe("n", "k"),
        Timeout("n", "k", "soft"),
        Corrupt("n", None, "undecodable"),
        BackendFailure("n", "storing 'k'", True, "NOPERM"),
        RedisCall("n", "COMMIT", 0.002, "timeout"),
        BreakerChange("r:6379/0", "open", "closed", "silent"),
        BreakerChange("r:6379/0", "closed", "half-open", "answers", 4.0),
        BreakerChange("r:6379/0", "open", "closed", "silent"),
        TransportChange("r:6379/0", "tracking", None),
        TransportChange("r:6379/0", None, "tracking"),
        TransportChange("r:6379/0", "channel", None),
    ]
    with tracer.start_as_current_span("request"):
        for event in events:
            hook(event)
    points = otel.points()
    assert set(points) == set(METRICS)
    for name, metric in METRICS.items():
        for attrs, _ in points[name]:
            assert set(attrs) <= set(metric.attributes), (name, attrs)
    assert otel.total("asyncstampede.hits") == 2
    assert otel.total("asyncstampede.hit.duration") == 1
    assert otel.total("asyncstampede.computes", **{"asyncstampede.outcome": "timeout"}) == 1
    assert otel.total("asyncstampede.backend_failures", **{"asyncstampede.refused": True}) == 1
    step = {"asyncstampede.operation": "COMMIT", "asyncstampede.outcome": "timeout"}
    assert otel.total("asyncstampede.redis.duration", **step) == 1
    assert otel.total("asyncstampede.breaker.changes", **{"asyncstampede.state": "open"}) == 2
    assert otel.total("asyncstampede.breaker.open") == 1
    assert otel.total("asyncstampede.wake.changes", **{"asyncstampede.transport": "poll"}) == 0
    gauge = {a["asyncstampede.transport"]: v for a, v in points["asyncstampede.wake.transport"]}
    assert gauge == {"tracking": 0, "channel": 1}  # (None: the instance closed)
    (request,) = otel.finished("request")
    assert [e.name for e in request.events] == [
        "asyncstampede.takeover",
        "asyncstampede.lock_lost",
        "asyncstampede.stale_served",
        "asyncstampede.fail_safe",
        "asyncstampede.timeout",
        "asyncstampede.corrupt",
        "asyncstampede.backend_failure",
    ]
    (compute,) = otel.finished("asyncstampede.compute")
    assert compute.status.status_code is StatusCode.ERROR


class Broken(SpanProcessor):
    """A span processor that raises as each span starts (an exporter's bug)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("exporter bug")


async def test_a_broken_exporter_never_breaks_a_call(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans failing to start: the hook raises, the call still gets its value; metrics counted."""
    provider = TracerProvider()
    provider.add_span_processor(Broken())
    reader = InMemoryMetricReader()
    hook = OpenTelemetryHook(MeterProvider(metric_readers=[reader]), provider)

    async def load() -> int:
        return 7

    with caplog.at_level(logging.ERROR, "asyncstampede"):
        async with Stampede(namespace=namespace, hooks=[hook]) as cache:
            assert await cache.get_or_compute("k", load, 60) == 7
            assert await cache.get_or_compute("k", load, 60) == 7
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert any("hook" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"asyncstampede.computes", "asyncstampede.hits"} <= names


def test_hit_durations_are_a_sample_by_default(otel: Otel) -> None:
    """One hit's duration in 16 is recorded (its cost is the SDK's); every hit is counted."""
    hook = otel.hook()
    for _ in range(40):
        hook(Hit("n", "k", 0.001))
    assert otel.total("asyncstampede.hits") == 40
    assert otel.total("asyncstampede.hit.duration") == 2
    with pytest.raises(ValueError, match="one hit in how many"):
        OpenTelemetryHook(MeterProvider(), otel.tracer_provider, hit_durations=-1)
