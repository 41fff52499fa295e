"""Freshness: the policy, and one pure verdict on every value a caller can be handed.

`judge` is the only place that decides whether a stored value may be
served: on the first read, on a re-read, when it comes with a wake-up, and
on a takeover's read. It is a pure function of the envelope, the reader's
clock and the reader's `Policy`, so two callers with different windows
(or two hosts whose clocks differ) each get their own answer for one
stored value. `xfetch_due` decides early refreshes, given the random draw.

All durations a user passes are seconds; internally, milliseconds.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, TypedDict, final

from ._envelope import Envelope

__all__ = [
    "FRESHNESS",
    "Freshness",
    "refuse_unknown",
    "MAX_SECONDS",
    "UNSET",
    "Policy",
    "Unset",
    "Verdict",
    "fallback_usable",
    "judge",
    "non_negative",
    "positive",
    "ttl_ms",
    "xfetch_due",
]

# The longest duration accepted (about 317 years): in milliseconds, with the
# stale windows added, it stays well inside what Redis accepts for PX.
MAX_SECONDS: Final = 10**10

# XFetch's early-refresh window is at most this many (delta * beta) wide, and
# at most this fraction of the value's TTL; see xfetch_due. (The benchmark
# harness sets them to inf and 1 to show published XFetch side by side.)
_XFETCH_REACH = 2.0
_XFETCH_SHARE_OF_TTL = 0.5


@final
class Unset(enum.Enum):
    """The type of `UNSET`: a per-call setting left to the instance's."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


class Freshness(TypedDict, total=False):
    """A call's freshness settings, each overriding the instance's (see `Stampede`).

    Seconds throughout. Left out, the instance's setting applies; ``None``
    turns ``soft_timeout``, ``hard_timeout`` or ``negative_ttl`` off for
    the call, ``0`` turns ``beta`` or a stale window off.
    """

    beta: float
    stale_while_revalidate: float
    stale_if_error: float
    soft_timeout: float | None
    hard_timeout: float | None
    ttl_jitter: float
    negative_ttl: float | None


FRESHNESS: Final = frozenset(Freshness.__optional_keys__)


def refuse_unknown(overrides: Freshness, where: str) -> Freshness:
    """Return *overrides*, if each is a freshness setting.

    Raises:
        TypeError: one is not (an argument meant for the compute, say).

    """
    unknown = sorted(overrides.keys() - FRESHNESS)
    if unknown:
        raise TypeError(
            f"{where}() got keyword arguments that are not freshness settings: {unknown}; "
            "pass the compute's arguments positionally after ttl, or bind keywords with "
            "functools.partial(fn, name=value)"
        )
    return overrides


@final
class Verdict(enum.Enum):
    """What one reader may do with one stored value, now."""

    FRESH = "fresh"
    """Serve it."""
    STALE = "stale"
    """Serve it (within ``stale_while_revalidate``) while one refresh runs."""
    FALLBACK = "fallback"
    """Do not serve it now; serve it if the compute or Redis fails (``stale_if_error``)."""
    EXPIRED = "expired"
    """Past every window: useless to this reader."""
    FAILED = "failed"
    """A cached failure, still fresh: raise it (never served stale)."""

    @property
    def servable(self) -> bool:
        """Whether the reader is handed it (a cached failure is raised)."""
        return self is Verdict.FRESH or self is Verdict.STALE or self is Verdict.FAILED


@final
@dataclass(frozen=True, slots=True)
class Policy:
    """Freshness settings, resolved once per instance and per overriding call.

    ``soft_timeout``/``hard_timeout`` are seconds (None: off); the windows
    are milliseconds (0: off).
    """

    beta: float = 1.0
    swr_ms: int = 0
    sie_ms: int = 0
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    ttl_jitter: float = 0.0
    negative_ms: int = 0

    @classmethod
    def build(
        cls,
        *,
        beta: float,
        stale_while_revalidate: float,
        stale_if_error: float,
        soft_timeout: float | None,
        hard_timeout: float | None,
        ttl_jitter: float,
        negative_ttl: float | None,
    ) -> Policy:
        """Validate and convert user-facing seconds.

        Raises:
            TypeError: a setting is not a number (or None where allowed).
            ValueError: a setting is negative, NaN, or too large; ``ttl_jitter``
                is over 1; ``soft_timeout`` is not shorter than ``hard_timeout``
                (it could never pass).

        """
        soft = None if soft_timeout is None else positive("soft_timeout", soft_timeout)
        hard = None if hard_timeout is None else positive("hard_timeout", hard_timeout)
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(
                f"soft_timeout ({soft!r} s) must be shorter than hard_timeout ({hard!r} s): "
                "the soft timeout serves the stale value while the compute goes on, the hard "
                "one ends the compute, so a soft one as long could never pass (one of them may "
                "be the instance's: a call turns either off with None, soft_timeout=None)"
            )
        jitter = non_negative("ttl_jitter", ttl_jitter, "a fraction of the TTL")
        if jitter > 1:
            raise ValueError(
                f"ttl_jitter is the fraction of the TTL added at random, from 0 to 1 (0.1 adds "
                f"up to 10%), not {ttl_jitter!r}"
            )
        return cls(
            beta=non_negative("beta", beta, "a factor"),
            swr_ms=round(non_negative("stale_while_revalidate", stale_while_revalidate) * 1000),
            sie_ms=round(non_negative("stale_if_error", stale_if_error) * 1000),
            soft_timeout=soft,
            hard_timeout=hard,
            ttl_jitter=jitter,
            negative_ms=0
            if negative_ttl is None
            else round(positive("negative_ttl", negative_ttl) * 1000),
        )

    def override(
        self,
        *,
        beta: float | Unset = UNSET,
        stale_while_revalidate: float | Unset = UNSET,
        stale_if_error: float | Unset = UNSET,
        soft_timeout: float | Unset | None = UNSET,
        hard_timeout: float | Unset | None = UNSET,
        ttl_jitter: float | Unset = UNSET,
        negative_ttl: float | Unset | None = UNSET,
    ) -> Policy:
        """Return this policy with a call's arguments applied (`UNSET` keeps the instance's).

        ``None`` turns ``soft_timeout``, ``hard_timeout`` or ``negative_ttl``
        off for the call; ``0`` turns ``beta`` or a stale window off.
        """
        return Policy.build(
            beta=self.beta if beta is UNSET else beta,
            stale_while_revalidate=(
                self.swr_ms / 1000 if stale_while_revalidate is UNSET else stale_while_revalidate
            ),
            stale_if_error=self.sie_ms / 1000 if stale_if_error is UNSET else stale_if_error,
            soft_timeout=self.soft_timeout if soft_timeout is UNSET else soft_timeout,
            hard_timeout=self.hard_timeout if hard_timeout is UNSET else hard_timeout,
            ttl_jitter=self.ttl_jitter if ttl_jitter is UNSET else ttl_jitter,
            negative_ttl=(self.negative_ms / 1000 or None)
            if negative_ttl is UNSET
            else negative_ttl,
        )


def judge(envelope: Envelope, now_ms: int, policy: Policy) -> Verdict:
    """Return what a reader with *policy* may do with *envelope* at *now_ms* (its own clock).

    Fresh until the envelope's ``fresh_until`` (which a fail-safe re-stamp
    may push out, never past the windows); then stale for
    ``stale_while_revalidate``, then a fallback for ``stale_if_error``, both
    counted from the end of the freshness the value was computed with
    (``created + ttl``), which no re-stamp moves. A cached failure is
    raised while fresh, to readers with negative caching on (``negative_ttl``;
    to others it is a miss), and is never stale. RFC 5861 names the two
    windows.
    """
    if envelope.failed:
        # Remembered failures are for readers that use negative caching;
        # one that turned it off computes (and overwrites it).
        fresh = now_ms < envelope.fresh_until_ms and policy.negative_ms
        return Verdict.FAILED if fresh else Verdict.EXPIRED
    if now_ms < envelope.fresh_until_ms:
        return Verdict.FRESH
    origin_ms = envelope.origin_fresh_until_ms
    if now_ms < origin_ms + policy.swr_ms:
        return Verdict.STALE
    if now_ms < origin_ms + policy.sie_ms:
        return Verdict.FALLBACK
    return Verdict.EXPIRED


def fallback_usable(envelope: Envelope, now_ms: int, policy: Policy) -> bool:
    """Tell whether *envelope*, kept as the fallback, may be served on failure at *now_ms*.

    That is, within ``stale_if_error`` of the end of its original freshness
    (fresh values included); the fallback for a failed compute, a soft
    timeout, a wait timeout or a Redis failure (RFC 5861's stale-if-error).
    """
    return not envelope.failed and now_ms < envelope.origin_fresh_until_ms + policy.sie_ms


def xfetch_due(now_ms: int, envelope: Envelope, beta: float, draw: float) -> bool:
    """Tell whether an early refresh is due at *now_ms*: XFetch, its window bounded.

    XFetch (Vattani, Chierichetti, Lowenstein, "Optimal Probabilistic Cache
    Stampede Prevention", VLDB 2015) refreshes when
    ``now - delta * beta * ln(draw) >= expiry``, ``delta`` being how long
    the last compute took and *draw* uniform in ``(0, 1]``. Each read draws
    once, so with N reads in the last stretch the earliest draw fires about
    ``delta * beta * ln(N)`` before expiry: at high read rates, refreshes
    come far too early (two or more per TTL period). Here the window is cut
    at ``_XFETCH_REACH * delta * beta`` (and at half the value's TTL): at
    low read rates it is XFetch as published; at high ones the refresh
    starts right at that edge, once per period, with the compute's own
    duration to spare before expiry.
    """
    if not beta or not envelope.delta_ms:
        return False
    gap = envelope.fresh_until_ms - now_ms
    reach = envelope.delta_ms * beta
    if gap > reach * _XFETCH_REACH or gap > envelope.ttl_ms * _XFETCH_SHARE_OF_TTL:
        return False
    return -reach * math.log(draw) >= gap


def ttl_ms(ttl: object) -> int:
    """Return *ttl* (seconds, or a ``timedelta``) in milliseconds, at least 1.

    Raises:
        TypeError: *ttl* is not a number or a ``timedelta``.
        ValueError: *ttl* is not positive, or over `MAX_SECONDS`.

    """
    if type(ttl) is int and 0 < ttl <= MAX_SECONDS:
        return ttl * 1000
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or a timedelta, not {type(ttl).__name__}")
    if not (0 < ttl <= MAX_SECONDS):
        raise ValueError(
            f"ttl must be a positive number of seconds, at most {MAX_SECONDS:.0e}, got {ttl!r}"
        )
    return max(1, round(ttl * 1000))


def non_negative(name: str, value: object, unit: str = "seconds") -> float:
    """Return *value* as a float, if it is a number in [0, `MAX_SECONDS`].

    Raises:
        TypeError: *value* is not an int or float (a bool is not one).
        ValueError: *value* is negative, NaN, or over `MAX_SECONDS`.

    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number ({unit}), not {type(value).__name__}")
    if not value >= 0:  # also NaN
        raise ValueError(f"{name} must be a non-negative number ({unit}), got {value!r}")
    if not value <= MAX_SECONDS:  # also infinity
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0e} ({unit}), got {value!r}")
    return float(value)


def positive(name: str, value: object, unit: str = "seconds") -> float:
    """Like `non_negative`, and zero is refused too."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
        raise ValueError(f"{name} must be a positive number ({unit}), got {value!r}")
    return non_negative(name, value, unit)
