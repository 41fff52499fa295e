"""The metrics the OpenTelemetry and Prometheus hooks record, written once for both.

Names follow OpenTelemetry's style (lowercase, dot-separated, counters
named by what they count, durations in seconds with unit ``s``);
`prometheus_name` gives the name OpenTelemetry's own Prometheus exporter
would give each (dots to underscores, ``_seconds`` for a duration,
``_total`` for a counter), which is the name ``asyncstampede.prometheus``
registers, so one dashboard reads either. Attribute names translate the
same way (``asyncstampede.namespace`` is the label
``asyncstampede_namespace``: a label called ``namespace`` would clash with
the one Kubernetes service discovery puts on every target).

No metric has the cache key among its attributes: keys are unbounded, and
every distinct value of an attribute is a time series of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, final

__all__ = [
    "ADDRESS",
    "COMPUTE_BUCKETS",
    "ERROR_TYPE",
    "HIT_BUCKETS",
    "KEY",
    "KIND",
    "METRICS",
    "NAMESPACE",
    "OPERATION",
    "OUTCOME",
    "REASON",
    "REFUSED",
    "STATE",
    "TRANSPORT",
    "SEEDS",
    "FirstSight",
    "Metric",
    "buckets",
    "every_nth",
    "label",
    "prometheus_name",
]

# Attribute names (OpenTelemetry); `label` gives the Prometheus label.
NAMESPACE = "asyncstampede.namespace"
OUTCOME = "asyncstampede.outcome"
OPERATION = "asyncstampede.operation"
REASON = "asyncstampede.reason"
KIND = "asyncstampede.kind"
REFUSED = "asyncstampede.refused"
ADDRESS = "asyncstampede.address"
STATE = "asyncstampede.state"
TRANSPORT = "asyncstampede.transport"
ERROR_TYPE = "error.type"  # OpenTelemetry's semantic convention for a failure's class
KEY = "asyncstampede.key"  # spans only, and only when asked for (``keys=True``)

# Histogram bucket bounds, seconds. A hit, and each step of Redis work, is
# one Redis round trip (tens of microseconds on a loopback to a few
# milliseconds across a zone); computes and waits last as long as the
# application's own work.
HIT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
COMPUTE_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@final
@dataclass(frozen=True, slots=True)
class Metric:
    """One instrument.

    Attributes:
        name: Its OpenTelemetry name.
        kind: ``counter`` (only goes up), ``histogram`` (seconds), or
            ``updown`` (a count that goes up and down: a gauge in Prometheus).
        unit: Its unit (UCUM; ``{...}`` for a count of things).
        description: What it counts, in one sentence.
        attributes: The attribute names each data point has.

    """

    name: str
    kind: Literal["counter", "histogram", "updown"]
    unit: str
    description: str
    attributes: tuple[str, ...]


def _c(name: str, unit: str, description: str, *extra: str) -> Metric:
    return Metric(name, "counter", unit, description, (NAMESPACE, *extra))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _c("asyncstampede.hits", "{hit}", "Calls served a fresh value from the store."),
        Metric(
            "asyncstampede.hit.duration",
            "histogram",
            "s",
            "Seconds from a call's first read to its fresh value, for hits on that first read.",
            (NAMESPACE,),
        ),
        _c("asyncstampede.misses", "{miss}", "Resolutions that found no value to serve."),
        _c(
            "asyncstampede.coalesced",
            "{call}",
            "Calls that joined a resolution of their key already in flight in the process.",
        ),
        _c(
            "asyncstampede.computes",
            "{compute}",
            "Calls of a compute function, by how they ended (error.type names a raised one).",
            OUTCOME,
            ERROR_TYPE,
        ),
        Metric(
            "asyncstampede.compute.duration",
            "histogram",
            "s",
            "Seconds a compute function ran, by how it ended.",
            (NAMESPACE, OUTCOME),
        ),
        Metric(
            "asyncstampede.wait.duration",
            "histogram",
            "s",
            "Seconds a resolution waited for another holder of its lock, by how the wait ended.",
            (NAMESPACE, OUTCOME),
        ),
        Metric(
            "asyncstampede.redis.duration",
            "histogram",
            "s",
            "Seconds each step of Redis work off the hit path took (a miss's read, the lock, "
            "the commit...), by step and how it ended; a hit's read is hit.duration.",
            (NAMESPACE, OPERATION, OUTCOME),
        ),
        _c(
            "asyncstampede.wakeups",
            "{wakeup}",
            "Lock changes Redis pushed to a waiting resolution (never a poll).",
        ),
        _c(
            "asyncstampede.takeovers",
            "{takeover}",
            "Locks taken after their holder's lock ran out (it died or hung).",
        ),
        _c(
            "asyncstampede.locks_lost",
            "{lock}",
            "Computes whose lock was gone at commit: their value was not stored.",
        ),
        _c(
            "asyncstampede.early_refreshes",
            "{refresh}",
            "Background refreshes XFetch started for values still fresh.",
        ),
        _c(
            "asyncstampede.stale_served",
            "{call}",
            "Values served past their freshness, by why.",
            REASON,
        ),
        _c(
            "asyncstampede.fail_safes",
            "{value}",
            "Stale values re-stamped fresh for fail_safe_throttle after a failed compute.",
        ),
        _c("asyncstampede.timeouts", "{timeout}", "Soft and wait timeouts that passed.", KIND),
        _c(
            "asyncstampede.corrupt",
            "{value}",
            "Stored values not served: undecodable, or not fitting the call's model.",
            REASON,
        ),
        _c(
            "asyncstampede.backend_failures",
            "{failure}",
            "Redis failures met by the instance: refused (a person must act) or unavailable.",
            REFUSED,
        ),
        Metric(
            "asyncstampede.breaker.changes",
            "counter",
            "{change}",
            "Circuit breaker openings and closings, per Redis server.",
            (ADDRESS, STATE),
        ),
        Metric(
            "asyncstampede.breaker.open",
            "updown",
            "{breaker}",
            "Circuit breakers open now, per Redis server (1 per instance whose breaker is open).",
            (ADDRESS,),
        ),
        Metric(
            "asyncstampede.wake.changes",
            "counter",
            "{change}",
            "Changes of the wake transport, per Redis server, by the new one ('poll': none).",
            (ADDRESS, TRANSPORT),
        ),
        Metric(
            "asyncstampede.wake.transport",
            "updown",
            "{instance}",
            "Instances whose waiters are woken by each transport now, per Redis server.",
            (ADDRESS, TRANSPORT),
        ),
    )
}


def buckets(metric: Metric) -> tuple[float, ...]:
    """Return the bucket bounds of a histogram: a round trip's, or a compute's (seconds)."""
    return HIT_BUCKETS if metric.name in _ROUND_TRIPS else COMPUTE_BUCKETS


_ROUND_TRIPS = frozenset({"asyncstampede.hit.duration", "asyncstampede.redis.duration"})


def label(attribute: str) -> str:
    """Return the Prometheus label of an attribute name: its dots made underscores."""
    return attribute.replace(".", "_")


def prometheus_name(metric: Metric) -> str:
    """Return the name OpenTelemetry's Prometheus exporter gives *metric* (and ours does).

    Without the ``_total`` of a counter: prometheus_client adds it itself.
    """
    name = metric.name.replace(".", "_")
    if metric.unit == "s":
        name += "_seconds"
    return name


# The series of each counter made at zero the first time a namespace (or,
# for the breaker's and the transport's, a server) is seen: the label
# values known in advance, after the namespace or the address. A counter
# born at 1 reads as no increase to Prometheus's ``increase()``, so an
# alert on the first lost lock (or refusal, or fall-back to polling) would
# never fire. (A compute error's type is not known in advance.)
SEEDS: dict[str, tuple[tuple[str | bool | None, ...], ...]] = {
    **{
        m.name: ((),)
        for m in METRICS.values()
        if m.kind == "counter" and m.attributes == (NAMESPACE,)
    },
    "asyncstampede.computes": (("ok", None), ("timeout", None), ("cancelled", None)),
    "asyncstampede.stale_served": (
        ("revalidate",),
        ("error",),
        ("soft-timeout",),
        ("wait-timeout",),
    ),
    "asyncstampede.timeouts": (("soft",), ("wait",)),
    "asyncstampede.corrupt": (("undecodable",), ("misfit",)),
    "asyncstampede.backend_failures": ((True,), (False,)),
    "asyncstampede.breaker.changes": (("open",), ("closed",)),
    "asyncstampede.wake.changes": tuple(
        (t,) for t in ("tracking", "tracking-resp3", "keyspace", "channel", "poll")
    ),
}


def every_nth(hit_durations: object) -> int:
    """Return *hit_durations* (record one hit's duration in this many; 0: none), checked.

    Raises:
        ValueError: it is not a non-negative int.

    """
    if isinstance(hit_durations, bool) or not isinstance(hit_durations, int) or hit_durations < 0:
        raise ValueError(
            f"hit_durations is one hit in how many (1: every hit, 0: none), not {hit_durations!r}"
        )
    return hit_durations


@final
class FirstSight:
    """Which `SEEDS` series to make at zero, the first time a namespace (or server) is seen.

    Both hooks ask `seeds` on every event; it answers nothing once the
    event's namespace (or, for the breaker's and the transport's events,
    its server) has been seen.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[object] = set()

    def seeds(self, event: Any) -> list[tuple[str, tuple[str | bool | None, ...]]]:
        """Return (metric name, its label values) for each series to make at zero now.

        (Every event, a hit included, asks: once seen, one set lookup and nothing built.)
        """
        first = getattr(event, "namespace", None)
        by_address = first is None
        if by_address:
            first = event.address
        if first in self._seen:
            return _NONE
        self._seen.add(first)
        return [
            (name, (first, *extra))
            for name, extras in SEEDS.items()
            if (METRICS[name].attributes[0] == ADDRESS) == by_address
            for extra in extras
        ]


_NONE: list[tuple[str, tuple[str | bool | None, ...]]] = []  # (never changed)
