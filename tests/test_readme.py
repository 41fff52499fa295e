"""The README's and the quickstart's examples run as shown."""

from __future__ import annotations

import re
import sys
import types
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


def test_quickstart_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The quickstart's example runs on its own and gives a User back."""
    quickstart = Path(__file__).parent.parent / "docs" / "quickstart.md"
    blocks = re.findall(r"```python\n(.*?)```", quickstart.read_text(), re.S)
    example = next(b for b in blocks if "anyio.run(main)" in b)
    module = types.ModuleType("quickstart")  # (a dataclass looks its module up)
    sys.modules["quickstart"] = module
    try:
        exec(compile(example, str(quickstart), "exec"), module.__dict__)
    finally:
        del sys.modules["quickstart"]
    out = capsys.readouterr().out
    assert out.startswith("User(id=42, name='Ada'")
    assert "computes=1" in out
