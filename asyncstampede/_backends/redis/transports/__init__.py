"""Wake transports: how a waiting process hears that a lock it waits on changed.

Four ways of hearing it, one interface (`Transport`); `RedisListener` tries
them in this order under ``wake="auto"`` and uses the first the server allows:

``tracking``
    ``CLIENT TRACKING ON REDIRECT`` to a RESP2 connection subscribed to
    ``__redis__:invalidate``. The waiter's ``PTTL`` of the lock, sent on the
    tracking connection, is also its subscription: one command per waiting
    process, and the holder publishes nothing.
``tracking-resp3``
    ``CLIENT TRACKING ON`` on one RESP3 connection: the invalidations arrive
    in-band, between the replies. No ``REDIRECT`` (which Redis Cloud refuses)
    and no channel permission (Redis 7's default for new ACL users).
``keyspace``
    ``SUBSCRIBE __keyspace@<db>__:<name>`` for the lock and the value, where
    the server's ``notify-keyspace-events`` already reports what happens to
    them (``K`` with ``g`` and ``$``, or ``A``; read with ``CONFIG GET``,
    never set). A value written by a program that does not use this library
    wakes the waiters too.
``channel``
    ``SUBSCRIBE`` to the key's own channel (`channel_name_of`), on which the
    holder's scripts publish (see ``scripts``); a commit publishes the
    value itself, so nobody reads it afterwards.

With none of them (refused, or ``wake="poll"``), waiters look by themselves
(``_wait``). For the two subscribing transports the order is *subscribe,
then read*: `Transport.watch` returns once the subscription is confirmed, and
only then does the waiter read the lock, so no change between the two is
lost. After every (re)connect each interest is told to re-check
(`Signal.RECHECK`): what happened during the gap was never told.
"""

from __future__ import annotations

from typing import Final

from .base import Transport, WakeConfig
from .subscribing import Channel, Keyspace, keyspace_events_cover
from .tracking import INVALIDATIONS, Tracking, TrackingResp3

__all__ = [
    "AUTO_ORDER",
    "INVALIDATIONS",
    "TRANSPORTS",
    "Transport",
    "WakeConfig",
    "keyspace_events_cover",
]

TRANSPORTS: Final[dict[str, type[Transport]]] = {
    kind.name: kind for kind in (Tracking, TrackingResp3, Keyspace, Channel)
}
AUTO_ORDER: Final = ("tracking", "tracking-resp3", "keyspace", "channel")
