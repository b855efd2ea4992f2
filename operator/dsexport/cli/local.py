"""Local mode: run the DatasetExports of a set of manifests once, in this process, with no cluster."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

from dsexport import api
from dsexport.api.loader import Bundle, ManifestError
from dsexport.destinations import open_transport
from dsexport.engine import DatasetResult, ExportRequest, Outcome, export_dataset
from dsexport.errors import DsexportError

log = logging.getLogger(__name__)


def requests(
    bundle: Bundle,
    *,
    dataset_exports: Iterable[str] = (),
    datasets: Iterable[str] = (),
    at: dt.datetime,
    resets: Iterable[str] = (),
    reset_token: str | None = None,
    export_time: str | None = None,
    removed_ok: bool = False,
    memory_budget: str | None = None,
) -> list[ExportRequest]:
    """One request per (DatasetExport, dataset entry); an entry's own schedule overrides the DatasetExport's.

    ``datasets`` limits the run to those entries (a CronJob runs the datasets that share its schedule). With
    ``removed_ok`` (a pod, whose Job may have been made before a dataset left the flow it reads now) a dataset no
    longer in the flow is skipped instead of refused; only the others run, and none if none is left.
    ``reset_token`` identifies the reset of the ``resets`` datasets, so that a retried reset is applied once;
    ``export_time`` (YYYYMMDDHHMM) is the exportTime folder of every dataset, instead of the slot of ``at``;
    ``memory_budget`` (``--memory-budget``) overrides the DatasetExports' and Destinations' ``memoryBudget``.
    """
    names = list(dataset_exports) or sorted(bundle.dataset_exports)
    unknown = [n for n in names if n not in bundle.dataset_exports]
    if unknown:
        raise ManifestError(f"DatasetExport {', '.join(map(repr, unknown))} not found in the given files")
    only = set(datasets)
    listed = {e.name for n in names for e in bundle.dataset_exports[n].spec.datasets}
    if only - listed:
        missing = ", ".join(map(repr, sorted(only - listed)))
        if not removed_ok:
            raise ManifestError(f"dataset {missing} is not in {'/'.join(names) or 'any DatasetExport'}")
        log.warning("dataset %s left %s since this run was started: not exported", missing, "/".join(names))
        only &= listed
        if not only:
            return []
    reset = set(resets)
    out = []
    for name in names:
        dataset_export = bundle.dataset_exports[name]
        for entry in dataset_export.spec.datasets:
            if only and entry.name not in only:
                continue
            dataset = bundle.datasets[entry.name]
            destination = bundle.destinations[dataset_export.spec.destination_ref.name]
            budget = memory_budget or api.memory_budget(dataset_export, destination)
            out.append(
                ExportRequest(
                    dataset_export=name,
                    dataset=dataset,
                    destination=destination,
                    mode=dataset_export.spec.mode,
                    schedule=entry.schedule or dataset_export.spec.schedule,
                    at=at,
                    reset=entry.name in reset,
                    source_credentials=bundle.secret(dataset.spec.source.credentials_secret_ref),
                    reset_token=reset_token if entry.name in reset else None,
                    export_time=export_time,
                    memory_budget=api.parse_quantity(budget),
                )
            )
    return out


def run(
    bundle: Bundle,
    plan: list[ExportRequest],
    *,
    on_start: Callable[[ExportRequest], None] | None = None,
    on_records: Callable[[int], None] | None = None,
) -> list[DatasetResult]:
    results = []
    for request in plan:
        if on_start is not None:
            on_start(request)
        if bundle.dataset_exports[request.dataset_export].spec.suspend:
            results.append(_not_run(request, Outcome.suspended, "spec.suspend is true"))
            continue
        destination = request.destination
        try:
            transport = open_transport(destination, bundle.secret(destination.spec.credentials_secret_ref))
        except DsexportError as e:
            results.append(_not_run(request, Outcome.failed, str(e), error=e))
            continue
        try:
            results.append(export_dataset(request, transport, on_records=on_records))
        finally:
            transport.close()
    return results


def _not_run(
    request: ExportRequest, outcome: Outcome, message: str, *, error: DsexportError | None = None
) -> DatasetResult:
    return DatasetResult(
        dataset_export=request.dataset_export,
        dataset=request.dataset.metadata.name,
        dataset_id=request.dataset.dataset_id,
        outcome=outcome,
        message=message,
        reason=error.reason if error else None,
        transient=error.transient if error else None,
    )
