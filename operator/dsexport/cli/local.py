"""Local mode: run the DatasetExports of a set of manifests once, in this process, with no cluster."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from dsexport import api
from dsexport.api.loader import Bundle, ManifestError
from dsexport.destinations import DestinationError, open_transport
from dsexport.engine.exporter import DatasetResult, ExportRequest, Outcome, export_dataset


def requests(
    bundle: Bundle, *, exports: Iterable[str] = (), at: dt.datetime, resets: Iterable[str] = ()
) -> list[ExportRequest]:
    """One request per (DatasetExport, dataset entry); an entry's own schedule overrides the flow's."""
    names = list(exports) or sorted(bundle.exports)
    unknown = [n for n in names if n not in bundle.exports]
    if unknown:
        raise ManifestError(f"DatasetExport {', '.join(map(repr, unknown))} not found in the given files")
    reset = set(resets)
    out = []
    for name in names:
        flow = bundle.exports[name]
        for entry in flow.spec.datasets:
            dataset = bundle.datasets[entry.name]
            out.append(
                ExportRequest(
                    flow=name,
                    dataset=dataset,
                    destination=bundle.destinations[flow.spec.destination_ref.name],
                    mode=flow.spec.mode,
                    schedule=entry.schedule or flow.spec.schedule,
                    at=at,
                    reset=entry.name in reset,
                    source_credentials=bundle.secret(dataset.spec.source.credentials_secret_ref),
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
        flow = bundle.exports[request.flow]
        if on_start is not None:
            on_start(request)
        if flow.spec.suspend:
            results.append(_skipped(request, Outcome.suspended, "spec.suspend is true"))
            continue
        destination: api.Destination = request.destination
        try:
            transport = open_transport(destination, bundle.secret(destination.spec.credentials_secret_ref))
        except DestinationError as e:
            results.append(_skipped(request, Outcome.failed, str(e)))
            continue
        try:
            results.append(export_dataset(request, transport, on_records=on_records))
        finally:
            transport.close()
    return results


def _skipped(request: ExportRequest, outcome: Outcome, message: str) -> DatasetResult:
    return DatasetResult(
        flow=request.flow,
        dataset=request.dataset.metadata.name,
        dataset_id=request.dataset.dataset_id,
        outcome=outcome,
        message=message,
    )
