"""Prometheus metrics from a `Stampede`'s events (``asyncstampede[prometheus]``).

Example::

    from asyncstampede.prometheus import PrometheusHook

    cache = Stampede.from_url(url, namespace="api", hooks=[PrometheusHook()])

The metrics are prometheus_client's own `Counter`, `Histogram` and `Gauge`
objects, registered on the registry given (the default one unless told),
named as OpenTelemetry's Prometheus exporter names the OpenTelemetry
hook's (``asyncstampede_hits_total``, ``asyncstampede_compute_duration_seconds``...;
the list is in the operations guide). Hooks made for one registry share
its metrics, so several instances in a process may each have their own.

Multiprocess mode (gunicorn or uvicorn workers): set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers
start (before prometheus_client is imported) and serve ``/metrics`` from a
`prometheus_client.multiprocess.MultiProcessCollector` on a registry of
its own; the metrics here then write to that directory like any other.
The two gauges (breaker open, wake transport) sum over the live workers
(``livesum``): call ``multiprocess.mark_process_dead(pid)`` when a worker
exits (gunicorn's ``child_exit``) so a dead one's state leaves the sum. In
that mode make one hook per process per registry (a second registry
would have metric objects of the same names writing over each other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final
from weakref import WeakKeyDictionary

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "asyncstampede.prometheus needs prometheus-client: pip install 'asyncstampede[prometheus]'"
    ) from exc

from . import _metrics as m
from ._events import (
    BackendFailure,
    BreakerChange,
    Coalesced,
    ComputeEnded,
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

__all__ = ["PrometheusHook"]

_Families = dict[str, Any]  # OpenTelemetry name -> the prometheus_client metric
_REGISTERED: WeakKeyDictionary[CollectorRegistry, _Families] = WeakKeyDictionary()


def _families(registry: CollectorRegistry | None) -> _Families:
    """Return the metrics on *registry*, registered there the first time (None: nowhere)."""
    if registry is not None:
        known = _REGISTERED.get(registry)
        if known is not None:
            return known
    made: _Families = {}
    for metric in m.METRICS.values():
        name, labels = m.prometheus_name(metric), [m.label(a) for a in metric.attributes]
        if metric.kind == "counter":
            made[metric.name] = Counter(name, metric.description, labels, registry=registry)
        elif metric.kind == "updown":
            made[metric.name] = Gauge(
                name, metric.description, labels, registry=registry, multiprocess_mode="livesum"
            )
        else:
            made[metric.name] = Histogram(
                name, metric.description, labels, registry=registry, buckets=m.buckets(metric)
            )
    if registry is not None:
        _REGISTERED[registry] = made
    return made


@final
class PrometheusHook:
    """A hook (``Stampede(hooks=[...])``) counting events in prometheus_client metrics.

    One hook may serve several instances (each series names its namespace,
    ``asyncstampede_namespace``; never a cache key).
    """

    __slots__ = ("_children", "_every", "_families", "_first_sight", "_handlers")

    def __init__(
        self, registry: CollectorRegistry | None = REGISTRY, *, hit_durations: int = 16
    ) -> None:
        """Register the metrics on *registry* (the default one), or find them there.

        Args:
            registry: Where the metrics are registered; None: nowhere (read
                them with `metric`).
            hit_durations: Observe the duration of one hit in this many
                (``asyncstampede_hit_duration_seconds``: a sample, for its
                quantiles; every hit is counted in ``asyncstampede_hits_total``);
                1 every hit, 0 none.

        Raises:
            ValueError: *hit_durations* is negative.

        """
        self._every = m.every_nth(hit_durations)
        self._first_sight = m.FirstSight()
        self._families = _families(registry)
        self._children: dict[tuple[str, ...], Any] = {}
        self._handlers = self._dispatch()

    def metric(self, name: str) -> Any:
        """Return the prometheus_client metric of an OpenTelemetry name (``asyncstampede.hits``)."""
        return self._families[name]

    def __call__(self, event: Event) -> None:
        """Count *event* (kinds this version does not know are ignored)."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            # (The counters' known series at zero: see _metrics.SEEDS.)
            for name, values in self._first_sight.seeds(event):
                labels = ["" if v is None else str(v).lower() if isinstance(v, bool) else v
                          for v in values]  # fmt: skip
                self._child(name, *labels)
            handler(event)

    def _child(self, name: str, *values: str) -> Any:
        key = (name, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._families[name].labels(*values)
        return child

    def _dispatch(self) -> dict[type, Callable[[Any], None]]:
        child = self._child

        def counted(name: str) -> Callable[[Any], None]:
            return lambda e: child(name, e.namespace).inc()

        every = self._every
        seen = 0

        def hit(e: Hit) -> None:
            nonlocal seen
            child("asyncstampede.hits", e.namespace).inc()
            seen += 1
            if every and seen >= every and e.seconds is not None:
                seen = 0
                child("asyncstampede.hit.duration", e.namespace).observe(e.seconds)

        def compute_ended(e: ComputeEnded) -> None:
            child("asyncstampede.computes", e.namespace, e.outcome, e.error or "").inc()
            child("asyncstampede.compute.duration", e.namespace, e.outcome).observe(e.seconds)

        def waited(e: Waited) -> None:
            child("asyncstampede.wait.duration", e.namespace, e.outcome).observe(e.seconds)

        def redis_call(e: RedisCall) -> None:
            child("asyncstampede.redis.duration", e.namespace, e.operation, e.outcome).observe(
                e.seconds
            )

        def breaker(e: BreakerChange) -> None:
            child("asyncstampede.breaker.changes", e.address, e.state).inc()
            if e.state == "open":
                child("asyncstampede.breaker.open", e.address).inc()
            elif e.previous != "closed":
                child("asyncstampede.breaker.open", e.address).dec()

        def transport(e: TransportChange) -> None:
            # (previous None: the instance's first; transport None: it closed.)
            if e.previous is not None:
                child("asyncstampede.wake.transport", e.address, e.previous).dec()
            if e.transport is not None:
                child("asyncstampede.wake.changes", e.address, e.transport).inc()
                child("asyncstampede.wake.transport", e.address, e.transport).inc()

        return {
            Hit: hit,
            Miss: counted("asyncstampede.misses"),
            Coalesced: counted("asyncstampede.coalesced"),
            ComputeEnded: compute_ended,
            Waited: waited,
            RedisCall: redis_call,
            WakeUp: counted("asyncstampede.wakeups"),
            Takeover: counted("asyncstampede.takeovers"),
            LockLost: counted("asyncstampede.locks_lost"),
            EarlyRefresh: counted("asyncstampede.early_refreshes"),
            FailSafe: counted("asyncstampede.fail_safes"),
            StaleServed: lambda e: child("asyncstampede.stale_served", e.namespace, e.reason).inc(),
            Timeout: lambda e: child("asyncstampede.timeouts", e.namespace, e.kind).inc(),
            Corrupt: lambda e: child("asyncstampede.corrupt", e.namespace, e.reason).inc(),
            BackendFailure: lambda e: child(
                "asyncstampede.backend_failures", e.namespace, "true" if e.refused else "false"
            ).inc(),
            BreakerChange: breaker,
            TransportChange: transport,
        }
