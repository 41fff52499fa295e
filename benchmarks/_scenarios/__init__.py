"""The scenarios, one module each; each module's ``run(url, options)`` returns its rows."""

from __future__ import annotations

from .._base import Scenario
from . import churn, cluster, crash, herd, hits, hooks, outage, steady, wake_transports, wakeup

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
    "cluster": cluster.run,
}

# What a run without --scenarios runs: every scenario but those that start
# more servers for asyncstampede alone (the cluster: --cluster adds it).
DEFAULT_SCENARIOS = [name for name in SCENARIOS if name != "cluster"]

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS"]
