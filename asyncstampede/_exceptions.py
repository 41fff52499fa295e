"""The exception family: one root, a few specific errors under it.

Redis errors come in two families, mapped from redis-py's in one place
(``_redis_errors``): `BackendUnavailableError` when Redis could not be
reached or did not answer in time (it may heal by itself), and
`BackendRefusedError` when it answered and said no (a misconfiguration:
permissions, a full ``noeviction`` server, a wrong password, a foreign
value under the namespace), which does not heal until somebody changes
something.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendRefusedError",
    "BackendUnavailableError",
    "CircuitOpenError",
    "ClosedError",
    "ComputeFailedError",
    "ComputeTimeoutError",
    "InvalidURLError",
    "MissingFromBatchError",
    "ReentrantCallError",
    "SerializationError",
    "StampedeError",
    "ValueTooLargeError",
    "WaitTimeoutError",
    "WrongEventLoopError",
]


class StampedeError(Exception):
    """Root of every error asyncstampede raises on its own account."""


class InvalidURLError(StampedeError, ValueError):
    """Raised when a Redis URL given to ``from_url`` is malformed; the message shows the forms.

    The message never repeats a password the URL held.
    """


class SerializationError(StampedeError, TypeError):
    """Raised when a computed value cannot be encoded; nothing is written."""


class ValueTooLargeError(StampedeError, ValueError):
    """Raised when an encoded value exceeds ``max_value_bytes``; nothing is written."""


class BackendError(StampedeError):
    """Raised when Redis fails (see the two subclasses) and ``fail_open`` is off.

    Attributes:
        address: Where the Redis is (``host:port/db`` or the socket path).
        command: The command that failed, upper-case, or None when the
            connection itself failed.
        hint: What to change, when asyncstampede knows (for example the ACL
            rule to grant), else None.

    """

    def __init__(
        self,
        message: str,
        *,
        address: str = "",
        command: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.address = address
        self.command = command
        self.hint = hint


class BackendUnavailableError(BackendError):
    """Raised when Redis cannot be reached or does not answer in time (it may come back)."""


class CircuitOpenError(BackendUnavailableError):
    """Raised when Redis is skipped because it failed moments ago (the circuit breaker is open).

    Nothing was sent: after a failure (no answer within ``redis_budget``, a
    refused or lost connection, a server still loading) calls skip Redis
    until a probe finds it answering again. See ``Stampede.statistics()``
    (``breaker``) and the operations guide.
    """


class BackendRefusedError(BackendError):
    """Raised when Redis answers with a refusal: a permission, memory, auth or data error."""


class WaitTimeoutError(StampedeError, TimeoutError):
    """Raised when waiting for another process's compute exceeds ``wait_timeout``."""


class ClosedError(StampedeError, RuntimeError):
    """Raised when a `Stampede` is used before ``__aenter__`` or after it closed."""


class ComputeTimeoutError(StampedeError, TimeoutError):
    """Raised when a compute runs past ``hard_timeout`` and no stale value can be served."""


class ComputeFailedError(StampedeError):
    """Raised when a key's compute failed with no exception of its own to hand on.

    Either a cached failure (the compute failed less than ``negative_ttl``
    ago; the message names the original error), or a compute that raised
    ``CancelledError`` by itself (it awaited something another task
    cancelled) while nothing cancelled the call: the cancellation is the
    ``__cause__``, and only that key's callers see it.
    """


class MissingFromBatchError(ComputeFailedError):
    """Raised when ``get_many_or_compute``'s ``batch_fn`` returned no value for a key it was given.

    The key's compute failed, as if its function had raised this: a stale
    value is served where ``stale_if_error`` allows, and ``negative_ttl``
    remembers it. Return a value (``None`` is one) for every key.
    """


class ReentrantCallError(StampedeError, RuntimeError):
    """Raised when a compute asks its own `Stampede` for the key it is computing.

    Also for a cycle (the compute of ``a`` asks for ``b``, whose compute asks
    for ``a``), for ``invalidate`` of that key from inside its compute, and
    for closing the instance from inside a compute: each would wait for
    itself. Pass the value down, or use another key.
    """


class WrongEventLoopError(StampedeError, RuntimeError):
    """Raised when a `Stampede` is used from an event loop other than the one that entered it.

    Its connections and tasks belong to that loop. Create one instance per
    event loop (for example per worker thread), or hand the call to the
    owner's loop with ``asyncio.run_coroutine_threadsafe``.
    """
