"""asyncstampede: one compute per key across every process, no polling."""

from __future__ import annotations

from ._cached import Cached as Cached
from ._codec import Codec as Codec
from ._exceptions import BackendError as BackendError
from ._exceptions import BackendRefusedError as BackendRefusedError
from ._exceptions import BackendUnavailableError as BackendUnavailableError
from ._exceptions import CircuitOpenError as CircuitOpenError
from ._exceptions import ClosedError as ClosedError
from ._exceptions import ComputeFailedError as ComputeFailedError
from ._exceptions import ComputeTimeoutError as ComputeTimeoutError
from ._exceptions import InvalidURLError as InvalidURLError
from ._exceptions import MissingFromBatchError as MissingFromBatchError
from ._exceptions import ReentrantCallError as ReentrantCallError
from ._exceptions import SerializationError as SerializationError
from ._exceptions import StampedeError as StampedeError
from ._exceptions import ValueTooLargeError as ValueTooLargeError
from ._exceptions import WaitTimeoutError as WaitTimeoutError
from ._exceptions import WrongEventLoopError as WrongEventLoopError
from ._freshness import Freshness as Freshness
from ._stampede import Stampede as Stampede
from ._stats import NodeStatistics as NodeStatistics
from ._stats import Statistics as Statistics

__all__ = [
    "BackendError",
    "BackendRefusedError",
    "BackendUnavailableError",
    "Cached",
    "CircuitOpenError",
    "ClosedError",
    "Codec",
    "ComputeFailedError",
    "ComputeTimeoutError",
    "Freshness",
    "InvalidURLError",
    "MissingFromBatchError",
    "NodeStatistics",
    "ReentrantCallError",
    "SerializationError",
    "Stampede",
    "StampedeError",
    "Statistics",
    "ValueTooLargeError",
    "WaitTimeoutError",
    "WrongEventLoopError",
    "__version__",
]

for _name in __all__[:-1]:
    globals()[_name].__module__ = __name__
del _name


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("asyncstampede")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
