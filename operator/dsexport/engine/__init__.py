"""The export of one dataset, independent of Kubernetes and of any command line.

Callers (local mode, the exporter pod) build an :class:`ExportRequest` per dataset, open the destination's
transport and call :func:`export_dataset`; what comes back is a :class:`DatasetResult`, and a run's results
together are a versioned :class:`RunResult`. :func:`check_destination` probes a destination step by step.
"""

from dsexport.engine.check import Report, check_destination
from dsexport.engine.exporter import ExportRequest, export_dataset
from dsexport.engine.result import DatasetResult, Outcome, RunResult

__all__ = ["DatasetResult", "ExportRequest", "Outcome", "Report", "RunResult", "check_destination", "export_dataset"]
