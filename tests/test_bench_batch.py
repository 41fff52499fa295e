"""The batch command-count script runs and prints its four rows."""

from __future__ import annotations

import pytest

from asyncstampede.testing import RedisServer
from benchmarks import batch_commands


def test_batch_commands_script_prints_the_four_cases(
    own_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """N=10 on a server of its own: a warm batch is one MGET, ten separate calls ten GETs."""
    batch_commands.main(["--n", "10", "--url", own_server.url])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    cells = {(row[0].strip(), row[1].strip()): row for row in rows}
    assert len(cells) == 4
    assert _commands(cells["get_many_or_compute", "warm"][4]) == {"MGET": 1}
    assert _commands(cells["N x get_or_compute", "warm"][4]) == {"GET": 10}
    cold = int(cells["get_many_or_compute", "cold"][2])
    assert cold < int(cells["N x get_or_compute", "cold"][2])


def _commands(detail: str) -> dict[str, int]:
    """``"SET 3, GET 1"`` as a dict, the listener's heartbeat PINGs left out."""
    pairs = (item.split() for item in detail.split(","))
    return {name: int(n) for name, n in pairs if name != "PING"}
