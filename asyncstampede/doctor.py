"""The doctor's record: `Diagnosis`, its `Verdict` list, and `diagnose`.

The command line is ``asyncstampede doctor`` (see the operations guide).

From an application: ``await cache.diagnose()`` (`Stampede.diagnose`) reads
the instance's Redis and judges it, as the command line does.
"""

from __future__ import annotations

from ._doctor import SEVERITIES, Diagnosis, Severity, Verdict, diagnose

__all__ = ["SEVERITIES", "Diagnosis", "Severity", "Verdict", "diagnose"]

for _name in ("Diagnosis", "Verdict", "diagnose"):
    globals()[_name].__module__ = __name__
del _name
