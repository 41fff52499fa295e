"""The asyncstampede benchmark harness: ``python -m benchmarks`` (or ``nox -s bench``)."""
