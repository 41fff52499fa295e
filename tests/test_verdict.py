"""The one freshness verdict: a pure function of the envelope, the reader's clock and policy."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asyncstampede._envelope import Envelope
from asyncstampede._freshness import Policy, Verdict, fallback_usable, judge

# A value computed at t=1000 with a TTL of 1 s, re-stamped fresh until 2500.
VALUE = Envelope("v", created_ms=1000, delta_ms=10, fresh_until_ms=2500, ttl_ms=1000)
FAILURE = Envelope(b"E", created_ms=1000, delta_ms=0, fresh_until_ms=2000, failed=True)


def test_each_window_gives_its_verdict() -> None:
    """Fresh until fresh_until; the stale windows count from created + ttl, not the re-stamp."""
    policy = Policy(swr_ms=2000, sie_ms=5000)
    assert judge(VALUE, 2499, policy) is Verdict.FRESH
    assert judge(VALUE, 2500, policy) is Verdict.STALE  # within 2000 + 2000
    assert judge(VALUE, 3999, policy) is Verdict.STALE
    assert judge(VALUE, 4000, policy) is Verdict.FALLBACK  # within 2000 + 5000
    assert judge(VALUE, 6999, policy) is Verdict.FALLBACK
    assert judge(VALUE, 7000, policy) is Verdict.EXPIRED


def test_a_cached_failure_is_raised_while_fresh_and_never_stale() -> None:
    """A failure marker is a verdict of its own while fresh, and useless after."""
    policy = Policy(swr_ms=60_000, sie_ms=60_000, negative_ms=1000)
    assert judge(FAILURE, 1999, policy) is Verdict.FAILED
    assert judge(FAILURE, 2000, policy) is Verdict.EXPIRED
    assert not fallback_usable(FAILURE, 1500, policy)


def test_a_reader_without_negative_caching_takes_a_cached_failure_for_a_miss() -> None:
    """negative_ttl off for the reader: another caller's remembered failure is not raised."""
    assert judge(FAILURE, 1500, Policy(negative_ms=0)) is Verdict.EXPIRED


def test_two_readers_judge_one_value_by_their_own_windows_and_clocks() -> None:
    """A lenient reader serves what a strict one refuses; a reader whose clock runs ahead too."""
    lenient, strict = Policy(swr_ms=60_000), Policy()
    assert judge(VALUE, 3000, lenient).servable
    assert not judge(VALUE, 3000, strict).servable
    skew_ms = 1000  # the strict reader's host clock runs a second ahead of the writer's
    assert judge(VALUE, 2000, strict) is Verdict.FRESH
    assert judge(VALUE, 2000 + skew_ms, strict) is Verdict.EXPIRED


@given(
    created=st.integers(0, 10**12),
    ttl=st.integers(1, 10**9),
    extra=st.integers(0, 10**9),
    swr=st.integers(0, 10**9),
    sie=st.integers(0, 10**9),
    offset=st.integers(-(10**9), 3 * 10**9),
    failed=st.booleans(),
    negative=st.integers(0, 10**9),
)
def test_the_verdict_matches_its_definition(
    created: int, ttl: int, extra: int, swr: int, sie: int, offset: int, failed: bool,
    negative: int,
) -> None:  # fmt: skip
    """Servable iff fresh (a failure: to negative caching), or within swr of created + ttl."""
    envelope = Envelope(
        "v", created_ms=created, delta_ms=0, fresh_until_ms=created + ttl + extra, failed=failed,
        ttl_ms=ttl,
    )  # fmt: skip
    policy = Policy(swr_ms=swr, sie_ms=sie, negative_ms=negative)
    now = created + ttl + offset
    verdict = judge(envelope, now, policy)
    fresh = now < envelope.fresh_until_ms
    if failed:
        assert verdict.servable == (fresh and negative > 0)
        assert (verdict is Verdict.FAILED) == verdict.servable
        return
    assert verdict.servable == (fresh or now < created + ttl + swr)
    if not fresh and not failed and created + ttl + swr <= now < created + ttl + sie:
        assert verdict is Verdict.FALLBACK
