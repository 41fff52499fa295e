"""The benchmark harness's wake-transports rows: one forced transport each, checked."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.__main__ import parse
from benchmarks._base import ALL_TRANSPORTS
from benchmarks._scenarios import SCENARIOS
from benchmarks._scenarios.wake_transports import strategy_of, verify
from benchmarks._strategies import STRATEGIES, WAKE_STRATEGIES


def _report(wake: str, reconnects: int = 0) -> dict[str, Any]:
    return {"wake": wake, "wakeups": 1, "polls": 0, "reconnects": reconnects}


def test_every_transport_has_its_strategy() -> None:
    """Each transport the option takes is forced by one strategy the workers know."""
    for transport in ALL_TRANSPORTS:
        name = strategy_of(transport)
        assert name in STRATEGIES
        assert WAKE_STRATEGIES[name] == transport
    assert "wake-transports" in SCENARIOS


def test_a_herd_woken_by_the_named_transport_passes() -> None:
    verify("asyncstampede-keyspace", [_report("keyspace")] * 4)


@pytest.mark.parametrize(
    ("reports", "says"),
    [
        ([_report("keyspace"), _report("poll")], "process 1 woke its waiters by 'poll'"),
        ([_report("keyspace", reconnects=1)], "reconnected 1 time(s)"),
        ([{"latencies": []}], "did not say how its waiters were woken"),
    ],
)
def test_a_herd_woken_otherwise_fails_the_row(reports: list[dict[str, Any]], says: str) -> None:
    """Another transport, a reconnect, or no account at all: the row must not count."""
    with pytest.raises(RuntimeError, match="asyncstampede-keyspace") as caught:
        verify("asyncstampede-keyspace", reports)
    assert says in str(caught.value)


def test_transports_option() -> None:
    """All five by default; a subset by name; an unknown name is a usage error."""
    assert parse([]).transports == ALL_TRANSPORTS
    assert parse(["--transports", "poll,channel"]).transports == ["poll", "channel"]
    with pytest.raises(SystemExit):
        parse(["--transports", "carrier-pigeon"])
