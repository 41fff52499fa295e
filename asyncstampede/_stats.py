"""Counters of what a `Stampede` did, and the frozen record handed to users."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._events import BreakerState

__all__ = ["Counters", "Statistics"]


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
    waiting: int
    computing: int
    refreshing: int
    wake: str
    breaker: BreakerState
    breaker_opens: int
    short_circuited: int


@final
class Counters:
    """Mutable counters owned by one `Stampede` (no locking: one event loop)."""

    __slots__ = (
        "backend_errors",
        "coalesced",
        "compute_errors",
        "computes",
        "computing",
        "decode_errors",
        "early_refreshes",
        "fail_safe",
        "hits",
        "lock_lost",
        "misses",
        "polls",
        "refresh_errors",
        "refused",
        "remote_waits",
        "soft_timeouts",
        "stale_served",
        "takeovers",
        "wait_timeouts",
        "waiting",
        "wakeups",
    )

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.computes = 0
        self.compute_errors = 0
        self.coalesced = 0
        self.remote_waits = 0
        self.wakeups = 0
        self.takeovers = 0
        self.decode_errors = 0
        self.lock_lost = 0
        self.wait_timeouts = 0
        self.backend_errors = 0
        self.refused = 0
        self.early_refreshes = 0
        self.stale_served = 0
        self.fail_safe = 0
        self.soft_timeouts = 0
        self.refresh_errors = 0
        self.polls = 0
        self.waiting = 0  # gauges
        self.computing = 0

    def snapshot(
        self,
        *,
        reconnects: int,
        connect_errors: int,
        refused_connections: int,
        in_flight: int,
        refreshing: int,
        wake: str,
        breaker: BreakerState,
        breaker_opens: int,
        short_circuited: int,
    ) -> Statistics:
        """Freeze the counters into a `Statistics` record."""
        return Statistics(
            hits=self.hits,
            misses=self.misses,
            computes=self.computes,
            compute_errors=self.compute_errors,
            coalesced=self.coalesced,
            remote_waits=self.remote_waits,
            wakeups=self.wakeups,
            takeovers=self.takeovers,
            decode_errors=self.decode_errors,
            lock_lost=self.lock_lost,
            wait_timeouts=self.wait_timeouts,
            backend_errors=self.backend_errors,
            refused=self.refused + refused_connections,
            reconnects=reconnects,
            connect_errors=connect_errors,
            early_refreshes=self.early_refreshes,
            stale_served=self.stale_served,
            fail_safe=self.fail_safe,
            soft_timeouts=self.soft_timeouts,
            refresh_errors=self.refresh_errors,
            polls=self.polls,
            in_flight=in_flight,
            waiting=self.waiting,
            computing=self.computing,
            refreshing=refreshing,
            wake=wake,
            breaker=breaker,
            breaker_opens=breaker_opens,
            short_circuited=short_circuited,
        )
