"""The README's example runs as shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def test_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The runnable example computes once for 100 concurrent callers."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "anyio.run(main)" in b)
    exec(compile(example, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert out.startswith("1 Statistics(hits=0, misses=1, computes=1")
    assert "coalesced=99" in out
