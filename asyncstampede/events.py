"""The event records a `Stampede` hands to its hooks (``Stampede(hooks=[...])``).

A hook is any callable taking one record; it tells the kinds apart with
``isinstance`` (or ``match``) and ignores kinds it does not know, so new
kinds can be added without breaking it. Hooks run synchronously in the task
where the event happened: keep them quick (bump a metric, put the record on
a queue). A hook that raises is logged and never breaks a request.

Example::

    def on_event(event: asyncstampede.events.Event) -> None:
        if isinstance(event, BreakerChange):
            breaker_state.labels(event.address).state(event.state)

    Stampede.from_url(url, hooks=[on_event])
"""

from __future__ import annotations

from ._events import (
    BackendFailure,
    BreakerChange,
    BreakerState,
    Coalesced,
    ComputeEnded,
    ComputeStarted,
    Corrupt,
    EarlyRefresh,
    Event,
    FailSafe,
    Hit,
    Hook,
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

__all__ = [
    "BackendFailure",
    "BreakerChange",
    "BreakerState",
    "Coalesced",
    "ComputeEnded",
    "ComputeStarted",
    "Corrupt",
    "EarlyRefresh",
    "Event",
    "FailSafe",
    "Hit",
    "Hook",
    "LockLost",
    "Miss",
    "RedisCall",
    "StaleServed",
    "Takeover",
    "Timeout",
    "TransportChange",
    "Waited",
    "WakeUp",
]

for _name in (n for n in __all__ if n not in ("BreakerState", "Event", "Hook")):
    globals()[_name].__module__ = __name__
del _name
