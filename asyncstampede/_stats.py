"""Counters of what a `Stampede` did, and the frozen record handed to users."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, final

from ._events import BreakerState

__all__ = ["Counters", "NodeStatistics", "Statistics"]


@final
@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """One primary of a Redis Cluster, as `Statistics.nodes` reports it.

    Attributes:
        address: The primary's ``host:port``.
        slots: Hash slots it serves for this instance now (16384 in all).
        wake: Its wake transport now (see `Statistics.wake`).
        breaker: Its circuit breaker now (see `Statistics.breaker`).
        breaker_opens: Times its breaker opened.
        short_circuited: Commands its open breaker kept from it.
        reconnects: Times one of the instance's connections to it was
            re-established.
        connect_errors: Failed attempts to (re)connect to it.

    """

    address: str
    slots: int
    wake: str
    breaker: BreakerState
    breaker_opens: int
    short_circuited: int
    reconnects: int
    connect_errors: int


@final
@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of one `Stampede`'s counters since it was created.

    Attributes:
        hits: Resolutions served from the store without waiting.
        misses: Resolutions that found no usable value in the store.
        computes: Calls of a compute function made by this instance.
        compute_errors: Computes that raised or passed ``hard_timeout``
            (whether their error reached the callers, a stale value was
            served instead, or nobody waited: a background refresh).
        coalesced: Callers that joined a resolution already in flight in this
            process instead of starting their own.
        remote_waits: Resolutions that waited for another holder of the lock.
        wakeups: Lock changes reported to waiting resolutions (a commit, a
            release, an extension...), each a reason to look again; not
            timers.
        takeovers: Locks taken after the previous holder's lock expired
            while others waited (the holder died or stalled).
        decode_errors: Stored or published bytes that were not a valid envelope
            (treated as a miss).
        lock_lost: Computes whose lock expired or was invalidated before commit,
            so their value was not written.
        wait_timeouts: Waits that reached ``wait_timeout`` and computed locally.
        backend_errors: Redis failures met on the request path (refusals
            included; a call that ran out of ``redis_budget`` is one). Calls
            the open breaker kept from Redis are not: see ``short_circuited``.
        refused: Refusals: Redis answered with an error that will not pass by
            itself (``NOPERM``, ``OOM``, ``WRONGTYPE``, a wrong password...), on
            the request path or when connecting the instance's own connections
            (requests, lock watching). Each is also logged at ERROR.
        reconnects: Times one of the instance's own connections (requests, lock
            watching) was re-established after it had been lost.
        connect_errors: Attempts to (re)connect those connections that failed.
        early_refreshes: Early (XFetch) background refreshes started by
            this process (at most one per key at a time; the lock then lets
            one process in the fleet compute).
        stale_served: Reads served a value within ``stale_while_revalidate``
            (a background refresh runs for it).
        fail_safe: Stale values served because the compute (or Redis)
            failed, within ``stale_if_error``.
        soft_timeouts: Resolutions that served their stale value because the
            compute (here, or another holder's) passed ``soft_timeout``; the
            compute went on, and still filled the cache.
        refresh_errors: Background refreshes whose compute failed (logged at
            WARNING; the served value stays, and the key is not refreshed in
            the background again for ``fail_safe_throttle``).
        polls: Looks a waiter took by itself at a lock whose changes nothing
            pushes (Redis allows no wake transport, ``wake="poll"``, or the
            connections that watch locks were down); each is two commands.
        in_flight: Keys being resolved right now.
        locks_held: Locks this instance holds right now (its computes';
            each is extended while its compute runs).
        waiting: Resolutions waiting right now for another holder's lock
            (a gauge: tests and dashboards can wait for it).
        computing: Computes of this instance running right now (a gauge;
            background refreshes included).
        refreshing: Background refreshes running right now (a gauge: at
            most one per key per process).
        wake: The wake transport waiters in other processes learn of lock
            changes by right now (see `Stampede`'s ``wake``): ``"tracking"``,
            ``"tracking-resp3"``, ``"keyspace"``, ``"channel"``; ``"poll"``
            (they look by themselves: none allowed, its connections down,
            or ``wake="poll"``); or ``"in-process"`` (embedded mode).
        breaker: The circuit breaker in front of Redis right now:
            ``"closed"`` (calls use Redis; always, in embedded mode),
            ``"open"`` (they skip it and fail open) or ``"half-open"`` (a
            probe is asking Redis; calls still skip it).
        breaker_opens: Times the breaker opened: Redis failed to answer a
            call within ``redis_budget``, or could not be connected to.
        short_circuited: Commands not sent because the breaker was open
            (each raised `CircuitOpenError` at once, instead of a round trip).
        nodes: On a Redis Cluster, each primary in use now (`NodeStatistics`:
            its slots, wake transport, breaker, reconnects), by address;
            empty otherwise. The fields above add them up (``wake`` names
            each transport in use, ``"tracking+poll"``; ``breaker`` is the
            worst), counting primaries that have left too.

    """

    hits: int
    misses: int
    computes: int
    compute_errors: int
    coalesced: int
    remote_waits: int
    wakeups: int
    takeovers: int
    decode_errors: int
    lock_lost: int
    wait_timeouts: int
    backend_errors: int
    refused: int
    reconnects: int
    connect_errors: int
    early_refreshes: int
    stale_served: int
    fail_safe: int
    soft_timeouts: int
    refresh_errors: int
    polls: int
    in_flight: int
    locks_held: int
    waiting: int
    computing: int
    refreshing: int
    wake: str
    breaker: BreakerState
    breaker_opens: int
    short_circuited: int
    nodes: tuple[NodeStatistics, ...] = ()


@final
@dataclass(slots=True)
class Counters:
    """The counters and gauges one `Stampede` keeps itself (no locking: one event loop).

    Each is the `Statistics` field of the same name (documented there); the
    rest of `Statistics` is read from the parts that know it (`snapshot`).
    """

    hits: int = 0
    misses: int = 0
    computes: int = 0
    compute_errors: int = 0
    coalesced: int = 0
    remote_waits: int = 0
    wakeups: int = 0
    takeovers: int = 0
    decode_errors: int = 0
    lock_lost: int = 0
    wait_timeouts: int = 0
    backend_errors: int = 0
    refused: int = 0
    early_refreshes: int = 0
    stale_served: int = 0
    fail_safe: int = 0
    soft_timeouts: int = 0
    refresh_errors: int = 0
    polls: int = 0
    waiting: int = 0  # gauges
    computing: int = 0

    def snapshot(self, *, refused_connections: int, **gauges: Any) -> Statistics:
        """Freeze the counters, with *gauges* (the other fields), into a `Statistics` record."""
        counted = {f.name: getattr(self, f.name) for f in fields(self)}
        counted["refused"] += refused_connections
        return Statistics(**counted, **gauges)
