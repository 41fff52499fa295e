"""`ProblemLog`: loud about a failing store, without flooding the log."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import final

from ._exceptions import BackendError, BackendRefusedError

__all__ = ["ProblemLog", "key_hash", "log"]

log = logging.getLogger("asyncstampede")

_FIGURES = re.compile(r"\d+(?:\.\d+)?")


@final
class ProblemLog:
    """Logs Redis problems, each kind at most once per *interval* seconds.

    A kind is the message; what was suppressed since the
    last line of a kind is counted in the next one. Refusals are logged at
    ERROR (somebody must act), unavailability at WARNING.

    Each part of the library logs on a child of the ``asyncstampede``
    logger (`child`: ``asyncstampede.redis``, ``asyncstampede.wake``,
    ``asyncstampede.breaker``...). Every record carries, as ``extra``
    fields, the instance's ``namespace`` and the server's ``address`` (where
    known), the ``part`` (``request`` for the request path's own logger),
    ``key_hash`` (the first 12 hex digits of the
    key's SHA-256, never the key) when about one key, and ``transport``
    (the wake transport it is about: ``tracking``... or ``poll``) on every
    ``asyncstampede.wake`` record.
    """

    def __init__(
        self,
        interval: float = 10.0,
        *,
        part: str | None = None,
        context: dict[str, str] | None = None,
        last: dict[str, tuple[float, int]] | None = None,
    ) -> None:
        self._interval = interval
        self._part = part
        self._logger = log if part is None else log.getChild(part)
        # Shared by an instance's parts: its namespace, the server's address.
        self.context: dict[str, str] = context if context is not None else {}
        self._last: dict[str, tuple[float, int]] = last if last is not None else {}

    def child(self, part: str) -> ProblemLog:
        """Return the log of *part* (``asyncstampede.<part>``), sharing context and limits."""
        return ProblemLog(self._interval, part=part, context=self.context, last=self._last)

    def report(
        self,
        exc: BackendError,
        doing: str,
        *,
        key: str | None = None,
        passing: int = logging.WARNING,
        transport: str | None = None,
    ) -> None:
        """Log *exc*, met while *doing* something (a short phrase), unless logged lately.

        ``{key}`` in *doing* is replaced by *key*; messages that differ only
        by their key are one kind, so an outage over many keys logs one line
        per interval, not one per key. A refusal is logged at ERROR, Redis
        unavailable at *passing* (WARNING, or INFO where something else says
        it: the breaker). *transport*: the wake transport it is about, an
        ``extra`` field.
        """
        level = logging.ERROR if isinstance(exc, BackendRefusedError) else passing
        self.say(
            level,
            f"{doing.replace('{key}', repr(key))}: {exc}",
            kind=f"{doing}: {exc}",
            key=key,
            transport=transport,
        )

    def say(
        self,
        level: int,
        message: str,
        *,
        kind: str | None = None,
        key: str | None = None,
        exc_info: bool | BaseException = False,
        **fields: str | None,
    ) -> None:
        """Log *message* (prefixed ``asyncstampede:``) unless its *kind* was logged lately.

        The kind defaults to the message itself. Figures do not make a kind
        of their own ("no reply within 0.498s" and "... 0.501s" are one), so
        an outage logs each kind once per interval however its timings vary.
        *fields* are more ``extra`` fields (``transport``...); *exc_info*
        adds the exception being handled (a bug's traceback).
        """
        kind = _FIGURES.sub("#", message if kind is None else kind)
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self._interval:
            self._last[kind] = (last[0], last[1] + 1)
            return
        if len(self._last) > 256:  # many distinct kinds: forget the old ones
            self._last.clear()
        self._last[kind] = (now, 0)
        more = f" ({last[1]} more like it since)" if last is not None and last[1] else ""
        extra = {**self.context, "part": self._part or "request"}
        extra.update((name, value) for name, value in fields.items() if value is not None)
        if key is not None:
            extra["key_hash"] = key_hash(key)
        self._logger.log(
            level, "asyncstampede: %s%s", message, more, extra=extra, exc_info=exc_info
        )


def key_hash(key: str) -> str:
    """Return the first 12 hex digits of *key*'s SHA-256 (a key named in a log, not shown)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
