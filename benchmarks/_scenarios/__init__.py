"""The scenarios, one module each; each module's ``run(url, options)`` returns its rows."""

from __future__ import annotations

from .._base import Scenario
from . import churn, crash, herd, hits, hooks, outage, steady, wake_transports, wakeup

SCENARIOS: dict[str, Scenario] = {
    "herd": herd.run,
    "hits": hits.run,
    "hooks": hooks.run,
    "churn": churn.run,
    "crash": crash.run,
    "steady": steady.run,
    "wakeup": wakeup.run,
    "wake-transports": wake_transports.run,
    "outage": outage.run,
}

__all__ = ["SCENARIOS"]
