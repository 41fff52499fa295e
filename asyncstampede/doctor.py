"""The doctor's records: `Diagnosis`, its `Verdict` list, and `diagnose`; and for a Cluster.

The command line is ``asyncstampede doctor`` (see the operations guide).

From an application: ``await cache.diagnose()`` (`Stampede.diagnose`) reads
the instance's Redis and judges it, as the command line does. Over a Redis
Cluster it gives a `ClusterDiagnosis`: a `ClusterNode` per primary (each with
its own `Diagnosis`) and the cluster-wide verdicts (`diagnose_cluster`).
"""

from __future__ import annotations

from ._doctor import (
    SEVERITIES,
    ClusterDiagnosis,
    ClusterNode,
    Diagnosis,
    Severity,
    Verdict,
    diagnose,
    diagnose_cluster,
)

__all__ = [
    "SEVERITIES",
    "ClusterDiagnosis",
    "ClusterNode",
    "Diagnosis",
    "Severity",
    "Verdict",
    "diagnose",
    "diagnose_cluster",
]

for _name in (
    "ClusterDiagnosis",
    "ClusterNode",
    "Diagnosis",
    "Verdict",
    "diagnose",
    "diagnose_cluster",
):
    globals()[_name].__module__ = __name__
del _name
