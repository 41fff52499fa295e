"""`ProblemLog`: loud about a failing store, without flooding the log."""

from __future__ import annotations

import logging
import re
import time
from typing import final

from ._exceptions import BackendError, BackendRefusedError

__all__ = ["ProblemLog", "log"]

log = logging.getLogger("asyncstampede")

_FIGURES = re.compile(r"\d+(?:\.\d+)?")


@final
class ProblemLog:
    """Logs Redis problems, each kind at most once per *interval* seconds.

    A kind is the message; what was suppressed since the
    last line of a kind is counted in the next one. Refusals are logged at
    ERROR (somebody must act), unavailability at WARNING.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def report(self, exc: BackendError, doing: str, *, key: str | None = None) -> None:
        """Log *exc*, met while *doing* something (a short phrase), unless logged lately.

        ``{key}`` in *doing* is replaced by *key*; messages that differ only
        by their key are one kind, so an outage over many keys logs one line
        per interval, not one per key.
        """
        level = logging.ERROR if isinstance(exc, BackendRefusedError) else logging.WARNING
        self.say(
            level,
            f"{doing.replace('{key}', repr(key))}: {exc}",
            kind=f"{doing}: {exc}",
        )

    def say(self, level: int, message: str, *, kind: str | None = None) -> None:
        """Log *message* (prefixed ``asyncstampede:``) unless its *kind* was logged lately.

        The kind defaults to the message itself. Figures do not make a kind
        of their own ("no reply within 0.498s" and "... 0.501s" are one), so
        an outage logs each kind once per interval however its timings vary.
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
        log.log(level, "asyncstampede: %s%s", message, more)
