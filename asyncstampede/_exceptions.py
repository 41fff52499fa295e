"""The exception family: one root, a few specific errors under it."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ClosedError",
    "ComputeFailedError",
    "ComputeTimeoutError",
    "SerializationError",
    "StampedeError",
    "ValueTooLargeError",
    "WaitTimeoutError",
]


class StampedeError(Exception):
    """Root of every error asyncstampede raises on its own account."""


class SerializationError(StampedeError, TypeError):
    """Raised when a computed value cannot be encoded; nothing is written."""


class ValueTooLargeError(StampedeError, ValueError):
    """Raised when an encoded value exceeds ``max_value_bytes``; nothing is written."""


class BackendError(StampedeError):
    """Raised when Redis fails (down, slow, or answering with an error)."""


class WaitTimeoutError(StampedeError, TimeoutError):
    """Raised when waiting for another process's compute exceeds ``wait_timeout``."""


class ClosedError(StampedeError, RuntimeError):
    """Raised when a `Stampede` is used before ``__aenter__`` or after it closed."""


class ComputeTimeoutError(StampedeError, TimeoutError):
    """Raised when a compute runs past ``hard_timeout`` and no stale value can be served."""


class ComputeFailedError(StampedeError):
    """Raised for a key whose compute failed less than ``negative_ttl`` ago (a cached failure)."""
