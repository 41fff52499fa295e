"""OpenTelemetry metrics and spans from a `Stampede`'s events (``asyncstampede[otel]``).

Example::

    from asyncstampede.otel import OpenTelemetryHook

    cache = Stampede.from_url(url, namespace="api", hooks=[OpenTelemetryHook()])

Without providers the hook uses the global ones (``opentelemetry.metrics``
and ``opentelemetry.trace``), so it records nothing until the application
configures OpenTelemetry (the API alone records nothing). The metric names
are in the operations guide; every data point has the instance's
namespace (``asyncstampede.namespace``), never a cache key.

Spans:

- ``asyncstampede.compute`` from the moment the compute function is called
  until it returns, made the current span meanwhile, so what the function
  does (a database query an instrumentation traces) is its child; its
  parent is the span current in the caller (the request). It is started
  on `ComputeStarted` and ended on `ComputeEnded`, which the instance
  emits in the same task, around the call.
- ``asyncstampede.wait``: a wait for another process's value. Its start is
  not an event, so the span is recorded when the wait ends, with explicit
  start and end times (the end minus the wait's measured ``seconds``).

Both carry the namespace and the outcome, and the cache key
(``asyncstampede.key``) only with ``keys=True``: a key may be personal data.
Rarer events (a takeover, a lost lock, a stale value served, a timeout, a
corrupt value, a Redis failure) are added as events to the span current
where they happened. Hits and misses make no span: one per hit would cost
more than the hit.

redis-py's own OpenTelemetry instrumentation (``redis[otel]``) and
``opentelemetry-instrumentation-redis`` record per Redis command, at
``Redis.execute_command``; asyncstampede sends its commands on connections
of its own below that layer, so they see none of them (but the rare
``WATCH`` transaction of a commit where scripts are refused). This hook
times asyncstampede's own steps instead (``asyncstampede.redis.duration``,
by step, and ``asyncstampede.hit.duration``): nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "asyncstampede.otel needs opentelemetry-api: pip install 'asyncstampede[otel]'"
    ) from exc

from . import _metrics as m
from ._events import (
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

__all__ = ["OpenTelemetryHook"]

_SCOPE = "asyncstampede"

# A compute whose span is open in this task: (namespace, key, span, context token).
_Open = tuple[str, str, Span, object]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("asyncstampede")
    except Exception:  # pragma: no cover - an uninstalled checkout
        return ""


@final
class _Tally:
    """A counter (or up-down counter) kept here and observed by the SDK when it collects.

    The SDK's synchronous ``Counter.add`` costs about 6 microseconds (its
    attributes are checked and hashed on every call): a large share of a
    cache hit. Counting in a dict costs a tenth of a microsecond, and
    an observable instrument reports the same cumulative sums. Counted in
    the event loop's thread, read (copied whole) in the SDK's.
    """

    __slots__ = ("_attributes", "counts")

    def __init__(self, attributes: tuple[str, ...]) -> None:
        self._attributes = attributes
        self.counts: dict[tuple[str | bool | None, ...], int] = {}

    def add(self, n: int, *values: str | bool | None) -> None:
        self.counts[values] = self.counts.get(values, 0) + n

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                n, {a: v for a, v in zip(self._attributes, values, strict=True) if v is not None}
            )
            for values, n in self.counts.copy().items()
        ]


@final
class OpenTelemetryHook:
    """A hook (``Stampede(hooks=[...])``) recording metrics and spans with OpenTelemetry.

    One hook may serve several instances (each data point names its
    namespace). Like every hook it runs in the task where the event
    happened; an exception in it (an SDK's processor that raises) is logged
    by the instance and never reaches a call.
    """

    __slots__ = (
        "_attrs",
        "_first_sight",
        "_handlers",
        "_histograms",
        "_hit_durations",
        "_keys",
        "_open",
        "_spans",
        "_tallies",
        "_tracer",
    )

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        spans: bool = True,
        keys: bool = False,
        hit_durations: int = 16,
    ) -> None:
        """Create the instruments on *meter_provider*'s meter ``asyncstampede``.

        Args:
            meter_provider: Where the metrics go; None: the global one.
            tracer_provider: Where the spans go; None: the global one.
            spans: False records metrics only.
            keys: Put the cache key on spans (``asyncstampede.key``). Off by
                default: a key may name a user. Metrics never carry it.
            hit_durations: Record the duration of one hit in this many
                (``asyncstampede.hit.duration``): a sample, for its
                percentiles, since the SDK's histogram costs a few
                microseconds a hit (see Benchmarks). 1 records every hit,
                0 none; hits are counted either way.

        Raises:
            ValueError: *hit_durations* is negative.

        """
        version = _version()
        meter = metrics.get_meter(_SCOPE, version, meter_provider)
        self._tallies: dict[str, _Tally] = {}
        self._first_sight = m.FirstSight()
        self._histograms: dict[str, metrics.Histogram] = {}
        for metric in m.METRICS.values():
            if metric.kind != "histogram":
                tally = self._tallies[metric.name] = _Tally(metric.attributes)
                create = (
                    meter.create_observable_counter
                    if metric.kind == "counter"
                    else meter.create_observable_up_down_counter
                )
                create(metric.name, [tally.observe], metric.unit, metric.description)
            else:
                self._histograms[metric.name] = meter.create_histogram(
                    metric.name,
                    metric.unit,
                    metric.description,
                    explicit_bucket_boundaries_advisory=m.buckets(metric),
                )
        self._tracer = trace.get_tracer(_SCOPE, version, tracer_provider)
        self._spans = spans
        self._hit_durations = m.every_nth(hit_durations)
        self._keys = keys
        # Attribute dicts, made once per combination and never changed (the
        # SDK may keep a reference): a hit allocates nothing here.
        self._attrs: dict[tuple[object, ...], dict[str, Any]] = {}
        self._open: ContextVar[tuple[_Open, ...]] = ContextVar("asyncstampede_otel_open")
        self._handlers = self._dispatch()

    def __call__(self, event: Event) -> None:
        """Record *event* (kinds this version does not know are ignored)."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            # (The counters' known series at zero: see _metrics.SEEDS.)
            for name, values in self._first_sight.seeds(event):
                self._tallies[name].add(0, *values)
            handler(event)

    # -- attributes -------------------------------------------------------

    def _a(self, *pairs: tuple[str, object]) -> dict[str, Any]:
        attrs = self._attrs.get(pairs)
        if attrs is None:
            attrs = self._attrs[pairs] = dict(pairs)
        return attrs

    def _ns(self, namespace: str) -> dict[str, Any]:
        return self._a((m.NAMESPACE, namespace))

    # -- dispatch ---------------------------------------------------------

    def _dispatch(self) -> dict[type, Callable[[Any], None]]:
        t = self._tallies
        hits, hit_duration = t["asyncstampede.hits"], self._histograms["asyncstampede.hit.duration"]
        count: dict[type, _Tally] = {
            Miss: t["asyncstampede.misses"],
            Coalesced: t["asyncstampede.coalesced"],
            WakeUp: t["asyncstampede.wakeups"],
            EarlyRefresh: t["asyncstampede.early_refreshes"],
        }

        every = self._hit_durations
        seen = 0

        def hit(e: Hit) -> None:
            nonlocal seen
            hits.add(1, e.namespace)
            seen += 1
            if seen >= every and e.seconds is not None:
                seen = 0
                hit_duration.record(e.seconds, self._ns(e.namespace))

        def hit_counted(e: Hit) -> None:
            hits.add(1, e.namespace)

        def counted(tally: _Tally) -> Callable[[Any], None]:
            def add(e: Any) -> None:
                tally.add(1, e.namespace)

            return add

        handlers: dict[type, Callable[[Any], None]] = {
            Hit: hit if every else hit_counted,
            **{kind: counted(instrument) for kind, instrument in count.items()},
            ComputeStarted: self._compute_started,
            ComputeEnded: self._compute_ended,
            Waited: self._waited,
            RedisCall: self._redis_call,
            Takeover: self._noted(t["asyncstampede.takeovers"], "asyncstampede.takeover"),
            LockLost: self._noted(t["asyncstampede.locks_lost"], "asyncstampede.lock_lost"),
            FailSafe: self._noted(t["asyncstampede.fail_safes"], "asyncstampede.fail_safe"),
            StaleServed: self._stale_served,
            Timeout: self._timeout,
            Corrupt: self._corrupt,
            BackendFailure: self._backend_failure,
            BreakerChange: self._breaker_change,
            TransportChange: self._transport_change,
        }
        return handlers

    def _noted(self, tally: _Tally, name: str) -> Callable[[Any], None]:
        """Count an event, and add it to the current span."""

        def note(e: Any) -> None:
            tally.add(1, e.namespace)
            self._span_event(name, self._ns(e.namespace), e.key)

        return note

    def _span_event(self, name: str, attrs: dict[str, Any], key: str | None) -> None:
        if not self._spans:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, {**attrs, m.KEY: key} if self._keys and key is not None else attrs)

    # -- computes and waits -------------------------------------------------

    def _compute_started(self, e: ComputeStarted) -> None:
        if not self._spans:
            return
        attributes: dict[str, Any] = {m.NAMESPACE: e.namespace}
        if self._keys:
            attributes[m.KEY] = e.key
        span = self._tracer.start_span(
            "asyncstampede.compute", kind=SpanKind.INTERNAL, attributes=attributes
        )
        # Current until the compute ends, so the function's own spans are its
        # children. ComputeEnded comes in this same task (the instance emits
        # both around the call), where the context is restored.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._open.set((*self._open.get(()), (e.namespace, e.key, span, token)))

    def _compute_ended(self, e: ComputeEnded) -> None:
        outcome = self._a((m.NAMESPACE, e.namespace), (m.OUTCOME, e.outcome))
        self._tallies["asyncstampede.computes"].add(1, e.namespace, e.outcome, e.error)
        self._histograms["asyncstampede.compute.duration"].record(e.seconds, outcome)
        if not self._spans:
            return
        stack = self._open.get(())
        span: Span | None = None
        if stack and stack[-1][:2] == (e.namespace, e.key):
            *rest, (_, _, span, token) = stack
            self._open.set(tuple(rest))
            otel_context.detach(token)  # type: ignore[arg-type]
        if span is None:
            # Its start was not seen (the hook raised then): recorded from
            # the duration instead, as a wait is.
            end = time.time_ns()
            attributes: dict[str, Any] = {m.NAMESPACE: e.namespace}
            if self._keys:
                attributes[m.KEY] = e.key
            span = self._tracer.start_span(
                "asyncstampede.compute",
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=end - int(e.seconds * 1e9),
            )
            self._finish(span, e, end)
        else:
            self._finish(span, e, None)

    @staticmethod
    def _finish(span: Span, e: ComputeEnded, end: int | None) -> None:
        span.set_attribute(m.OUTCOME, e.outcome)
        if e.error is not None:
            span.set_attribute(m.ERROR_TYPE, e.error)
        if e.outcome in ("error", "timeout"):
            span.set_status(Status(StatusCode.ERROR, e.error or e.outcome))
        span.end(end_time=end)

    def _waited(self, e: Waited) -> None:
        attrs = self._a((m.NAMESPACE, e.namespace), (m.OUTCOME, e.outcome))
        self._histograms["asyncstampede.wait.duration"].record(e.seconds, attrs)
        if not self._spans:
            return
        end = time.time_ns()
        span = self._tracer.start_span(
            "asyncstampede.wait",
            kind=SpanKind.INTERNAL,
            attributes={**attrs, m.KEY: e.key} if self._keys else attrs,
            start_time=end - int(e.seconds * 1e9),
        )
        if e.outcome == "failed":
            span.set_status(Status(StatusCode.ERROR, "Redis failed during the wait"))
        span.end(end_time=end)

    def _redis_call(self, e: RedisCall) -> None:
        attrs = self._a(
            (m.NAMESPACE, e.namespace), (m.OPERATION, e.operation), (m.OUTCOME, e.outcome)
        )
        self._histograms["asyncstampede.redis.duration"].record(e.seconds, attrs)

    # -- the rest ---------------------------------------------------------

    def _stale_served(self, e: StaleServed) -> None:
        self._tallies["asyncstampede.stale_served"].add(1, e.namespace, e.reason)
        attrs = self._a((m.NAMESPACE, e.namespace), (m.REASON, e.reason))
        self._span_event("asyncstampede.stale_served", attrs, e.key)

    def _timeout(self, e: Timeout) -> None:
        self._tallies["asyncstampede.timeouts"].add(1, e.namespace, e.kind)
        attrs = self._a((m.NAMESPACE, e.namespace), (m.KIND, e.kind))
        self._span_event("asyncstampede.timeout", attrs, e.key)

    def _corrupt(self, e: Corrupt) -> None:
        self._tallies["asyncstampede.corrupt"].add(1, e.namespace, e.reason)
        attrs = self._a((m.NAMESPACE, e.namespace), (m.REASON, e.reason))
        self._span_event("asyncstampede.corrupt", attrs, e.key)

    def _backend_failure(self, e: BackendFailure) -> None:
        self._tallies["asyncstampede.backend_failures"].add(1, e.namespace, e.refused)
        attrs = self._a((m.NAMESPACE, e.namespace), (m.REFUSED, e.refused))
        self._span_event("asyncstampede.backend_failure", attrs, None)

    def _breaker_change(self, e: BreakerChange) -> None:
        self._tallies["asyncstampede.breaker.changes"].add(1, e.address, e.state)
        # Opened from closed; closed from open or half-open: one of each per outage.
        if e.state == "open":
            self._tallies["asyncstampede.breaker.open"].add(1, e.address)
        elif e.previous != "closed":
            self._tallies["asyncstampede.breaker.open"].add(-1, e.address)

    def _transport_change(self, e: TransportChange) -> None:
        # (previous None: the instance's first; transport None: it closed.)
        gauge = self._tallies["asyncstampede.wake.transport"]
        if e.previous is not None:
            gauge.add(-1, e.address, e.previous)
        if e.transport is not None:
            self._tallies["asyncstampede.wake.changes"].add(1, e.address, e.transport)
            gauge.add(1, e.address, e.transport)
