"""The export of one dataset, independent of Kubernetes and of any command line.

Callers (local mode, the exporter pod) build an :class:`ExportRequest` per dataset, open the destination's
transport and call :func:`export_dataset`; what comes back is a :class:`DatasetResult`, and a run's results
together are a versioned :class:`RunResult`. :func:`check_destination` probes a destination step by step.

The names are imported on first use: the operator needs only the schedule and the result models, and importing
the exporter would load pyarrow, polars and every destination's client into a process that never exports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsexport.engine.check import Report, check_destination
    from dsexport.engine.exporter import ExportRequest, export_dataset
    from dsexport.engine.result import DatasetResult, Outcome, RunResult

__all__ = ["DatasetResult", "ExportRequest", "Outcome", "Report", "RunResult", "check_destination", "export_dataset"]

_HOME = {
    "Report": "check",
    "check_destination": "check",
    "ExportRequest": "exporter",
    "export_dataset": "exporter",
    "DatasetResult": "result",
    "Outcome": "result",
    "RunResult": "result",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
