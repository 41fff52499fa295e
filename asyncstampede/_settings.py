"""A `Stampede`'s settings: validated once, frozen, and typed for ``from_url(**settings)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, TypedDict, final, get_args

from ._events import Hook
from ._freshness import Policy, positive
from ._keys import validate_namespace
from ._tags import tags_of

__all__ = ["WAKES", "MiB", "Settings", "StampedeSettings", "Wake"]

MiB = 1024 * 1024

Wake: TypeAlias = Literal["auto", "tracking", "tracking-resp3", "keyspace", "channel", "poll"]
"""How waiters learn that a lock changed (see `Stampede`'s ``wake``)."""
WAKES: Final[tuple[str, ...]] = get_args(Wake)


class StampedeSettings(TypedDict, total=False):
    """The keyword arguments of `Stampede` other than the client (see `Stampede` for each)."""

    namespace: str
    lock_ttl: float
    wait_timeout: float
    fail_open: bool
    on_wait_timeout: Literal["compute", "raise"]
    beta: float
    stale_while_revalidate: float
    stale_if_error: float
    fail_safe_throttle: float
    soft_timeout: float | None
    hard_timeout: float | None
    ttl_jitter: float
    negative_ttl: float | None
    compress_threshold: int
    max_value_bytes: int
    max_entries: int
    check: bool
    share_values: bool
    wake: Wake
    redis_budget: float
    hooks: Sequence[Hook]
    tags: Sequence[str]


@final
@dataclass(frozen=True, slots=True)
class Settings:
    """The instance-wide settings the request path reads (durations in ms, except waits)."""

    namespace: str
    lock_ms: int
    wait_timeout: float  # seconds
    fail_open: bool
    on_wait_timeout: Literal["compute", "raise"]
    policy: Policy
    fail_safe_throttle_ms: int
    compress_threshold: int
    max_value_bytes: int
    max_entries: int
    check: bool
    share_values: bool
    wake: Wake
    redis_budget: float  # seconds
    tags: tuple[str, ...] = ()  # every value's (see _tags)

    @classmethod
    def build(
        cls,
        *,
        namespace: str,
        lock_ttl: float,
        wait_timeout: float,
        fail_open: bool,
        on_wait_timeout: Literal["compute", "raise"],
        beta: float,
        stale_while_revalidate: float,
        stale_if_error: float,
        fail_safe_throttle: float,
        soft_timeout: float | None,
        hard_timeout: float | None,
        ttl_jitter: float,
        negative_ttl: float | None,
        compress_threshold: int,
        max_value_bytes: int,
        max_entries: int,
        check: bool,
        share_values: bool,
        wake: Wake = "auto",
        redis_budget: float = 0.5,
        tags: Sequence[str] = (),
    ) -> Settings:
        """Validate the arguments of `Stampede` (see there for each).

        Raises:
            TypeError: a setting has the wrong type (a flag that is not a
                bool, a duration that is not a number...).
            ValueError: a setting is out of range.

        """
        if not 0.01 <= positive("lock_ttl", lock_ttl) < 86_400:
            raise ValueError(f"lock_ttl must be between 0.01 and 86400 seconds, got {lock_ttl!r}")
        positive("wait_timeout", wait_timeout)
        if not 0.001 <= positive("redis_budget", redis_budget) <= 3600:
            raise ValueError(
                f"redis_budget must be between 0.001 and 3600 seconds, got {redis_budget!r}"
            )
        positive("fail_safe_throttle", fail_safe_throttle)
        for name, n, least in (
            ("compress_threshold", compress_threshold, 0),
            ("max_value_bytes", max_value_bytes, 1024),  # (below, every value is refused)
            ("max_entries", max_entries, 1),
        ):
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"{name} must be an int, not {type(n).__name__}")
            if n < least:
                raise ValueError(f"{name} must be at least {least}, got {n!r}")
        for flag, given in (
            ("fail_open", fail_open),
            ("check", check),
            ("share_values", share_values),
        ):
            if not isinstance(given, bool):
                raise TypeError(f"{flag} must be True or False, not {given!r}")
        if wake not in WAKES:
            choices = ", ".join(repr(w) for w in WAKES)
            raise ValueError(f"wake must be one of {choices}, got {wake!r}")
        if on_wait_timeout not in ("compute", "raise"):
            raise ValueError(
                f"on_wait_timeout must be 'compute' or 'raise', got {on_wait_timeout!r}"
            )
        return cls(
            namespace=validate_namespace(namespace),
            lock_ms=max(10, round(lock_ttl * 1000)),
            wait_timeout=float(wait_timeout),
            fail_open=fail_open,
            on_wait_timeout=on_wait_timeout,
            policy=Policy.build(
                beta=beta,
                stale_while_revalidate=stale_while_revalidate,
                stale_if_error=stale_if_error,
                soft_timeout=soft_timeout,
                hard_timeout=hard_timeout,
                ttl_jitter=ttl_jitter,
                negative_ttl=negative_ttl,
            ),
            fail_safe_throttle_ms=round(positive("fail_safe_throttle", fail_safe_throttle) * 1000),
            compress_threshold=compress_threshold,
            max_value_bytes=max_value_bytes,
            max_entries=max_entries,
            check=check,
            share_values=share_values,
            wake=wake,
            redis_budget=float(redis_budget),
            tags=tags_of(tags, "Stampede()"),
        )
