"""One export of one dataset: recover the watermark, select what is new, write parts, commit.

Exactly-once rests on three facts: the watermark is read from the latest committed manifest only; a slot's
part names are a function of (flow, dataset, exportTime, index), and leftovers of an uncommitted slot are
deleted before writing; the manifest is written last and create-only. A run killed anywhere therefore either
committed everything or left nothing that a retry will not remove.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from dsexport import api
from dsexport.destinations import Transport
from dsexport.engine import commit, jsonenc, schedule, watermark
from dsexport.engine.prefetch import prefetch
from dsexport.engine.sources import Source
from dsexport.engine.writers import PartFile, write_parts

PREFETCH_BATCHES = 1


class Outcome(StrEnum):
    exported = "exported"
    no_new_data = "no-new-data"
    already_committed = "already-committed"
    failed = "failed"
    suspended = "suspended"


@dataclass(frozen=True)
class DatasetResult:
    """What one dataset's export did, for the CLI summary and, later, the operator's status."""

    flow: str
    dataset: str
    dataset_id: str
    outcome: Outcome
    export_time: str | None = None
    folder: str | None = None
    records: int = 0
    bytes: int = 0
    files: int = 0
    watermark: Mapping[str, Any] | None = None
    message: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "dataset": self.dataset,
            "datasetId": self.dataset_id,
            "outcome": self.outcome.value,
            "exportTime": self.export_time,
            "folder": self.folder,
            "records": self.records,
            "bytes": self.bytes,
            "files": self.files,
            "watermark": self.watermark,
            "message": self.message,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ExportRequest:
    """Everything one dataset export needs; built from a DatasetExport in local mode or by the operator."""

    flow: str
    dataset: api.Dataset
    destination: api.Destination
    mode: api.Mode
    schedule: api.Schedule
    at: dt.datetime
    reset: bool = False
    source_credentials: Mapping[str, str] = field(default_factory=dict)


def run_id(flow: str, dataset_id: str, export_time: str) -> str:
    """Deterministic per slot, so a retry overwrites (never adds to) a killed run's parts."""
    return hashlib.sha256(f"{flow}\0{dataset_id}\0{export_time}".encode()).hexdigest()[:16]


def export_dataset(
    request: ExportRequest, transport: Transport, *, on_records: Callable[[int], None] | None = None
) -> DatasetResult:
    """Run one export; failures come back as a failed result with an actionable message, never a traceback."""
    started = time.monotonic()
    dataset = request.dataset
    try:
        result = _export(request, transport, on_records)
    except (ValueError, OSError, RuntimeError, pa.ArrowException) as e:
        result = {"outcome": Outcome.failed, "message": str(e)}
    return DatasetResult(
        flow=request.flow,
        dataset=dataset.metadata.name,
        dataset_id=dataset.dataset_id,
        seconds=time.monotonic() - started,
        **result,
    )


def _export(request: ExportRequest, transport: Transport, on_records: Callable[[int], None] | None) -> dict[str, Any]:
    dataset, spec = request.dataset, request.destination.spec
    slot = schedule.export_slot(request.schedule, request.at)
    export_time = schedule.export_time_folder(slot)
    prefix = commit.dataset_prefix(spec.folder, dataset.dataset_id)
    folder = commit.slot_folder(spec.folder, dataset.dataset_id, export_time)
    where = f"{transport.describe()}/{prefix}"
    out: dict[str, Any] = {"export_time": export_time, "folder": folder}

    state = commit.read_state(transport, prefix)
    commit.check_owner(state, request.flow, where=where)
    if state.latest_slot == export_time or commit.is_committed(transport, folder):
        commit.finish_committed(transport, folder)
        wm = state.latest.get("watermark") if state.latest else None
        msg = f"exportTime {export_time} is already committed; a later slot exports what is new"
        return out | {"outcome": Outcome.already_committed, "watermark": wm, "message": msg}
    commit.check_order(state, export_time, where=where)
    for leftover in state.uncommitted:
        commit.clean_folder(transport, commit.slot_folder(spec.folder, dataset.dataset_id, leftover))

    previous = None if request.reset or state.latest is None else state.latest
    incremental = request.mode == api.Mode.incremental and previous is not None
    prev_state = previous.get("state") if (previous is not None and incremental) else None

    source = Source(dataset.spec.source, request.source_credentials)
    listing = source.list_files()
    inc = dataset.spec.incremental
    lookback_ns = api.parse_duration_seconds(inc.lookback) * 1_000_000_000
    cursor: watermark.ColumnCursor | None = None
    if inc.strategy == api.Strategy.files:
        selection = watermark.select_files(listing, prev_state, lookback_ns=lookback_ns)
        files, new_state, wm_range = selection.files, selection.state, selection.range
        if incremental and not files:
            return out | {"outcome": Outcome.no_new_data, "watermark": wm_range, "message": "no new files"}
    else:
        assert inc.column is not None
        cursor = watermark.column_cursor(inc.column, prev_state)
        files, new_state, wm_range = listing, {}, {}
    if not files:
        return out | {
            "outcome": Outcome.no_new_data,
            "message": f"no source files under {dataset.spec.source.uri}",
        }

    pads_dataset = source.dataset(files)
    schema = pads_dataset.schema
    running_max: list[pa.Scalar | None] = [cursor.value if cursor else None]

    def batches() -> Iterator[pa.RecordBatch]:
        filter_ = cursor.filter(schema) if cursor is not None else None
        for batch in prefetch(Source.batches(pads_dataset, filter_), depth=PREFETCH_BATCHES):
            if cursor is not None:
                running_max[0] = watermark.scan_max(batch, cursor.column, running_max[0])
            yield batch

    rid = run_id(request.flow, dataset.dataset_id, export_time)
    fmt = spec.format
    parts = write_parts(
        batches(), schema=schema, fmt=fmt, transport=transport, folder=folder, run_id=rid, on_batch=on_records
    )
    if cursor is not None:
        new_state = watermark.column_state(cursor, running_max[0])
        wm_range = {
            "from": str(cursor.value) if cursor.value is not None else None,
            "to": new_state["display"],
        }
        if incremental and not parts:
            # Nothing above the cursor: committing an empty folder would only add noise at the destination.
            return out | {"outcome": Outcome.no_new_data, "watermark": wm_range, "message": "no new rows"}

    manifest = _manifest(
        request=request,
        export_time=export_time,
        rid=rid,
        sequence=int(state.latest.get("sequence", 0)) + 1 if state.latest else 1,
        backfill=prev_state is None,
        parts=parts,
        schema=schema,
        state=new_state,
        wm_range=wm_range,
        source_files=[f.path for f in files] if cursor is None else None,
    )
    commit.commit(transport, folder, manifest)
    return out | {
        "outcome": Outcome.exported,
        "records": manifest["records"],
        "bytes": manifest["bytes"],
        "files": len(parts),
        "watermark": manifest["watermark"],
        "message": _describe(request, prev_state is None),
    }


def _describe(request: ExportRequest, backfill: bool) -> str:
    if request.mode == api.Mode.full:
        return "full snapshot"
    if request.reset:
        return "full backfill (reset)"
    return "full backfill" if backfill else "incremental"


def _manifest(
    *,
    request: ExportRequest,
    export_time: str,
    rid: str,
    sequence: int,
    backfill: bool,
    parts: list[PartFile],
    schema: pa.Schema,
    state: Mapping[str, Any],
    wm_range: Mapping[str, Any],
    source_files: list[str] | None,
) -> dict[str, Any]:
    fmt = request.destination.spec.format
    file_schema = schema if fmt.type == api.OutputFormat.parquet else jsonenc.json_schema(schema)
    manifest: dict[str, Any] = {
        "version": commit.MANIFEST_VERSION,
        "flow": request.flow,
        "dataset": request.dataset.metadata.name,
        "datasetId": request.dataset.dataset_id,
        "exportTime": export_time,
        "runId": rid,
        "sequence": sequence,
        "mode": request.mode.value,
        "backfill": backfill,
        "reset": request.reset,
        "createdAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "format": {"type": fmt.type.value, "compression": fmt.effective_compression},
        "records": sum(p.records for p in parts),
        "bytes": sum(p.bytes for p in parts),
        "files": [{"path": p.path, "records": p.records, "bytes": p.bytes, "sha256": p.sha256} for p in parts],
        "watermark": {"strategy": request.dataset.spec.incremental.strategy.value, **wm_range},
        "state": dict(state),
        "schema": {
            "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in file_schema],
            "arrow": base64.b64encode(file_schema.serialize().to_pybytes()).decode(),
        },
    }
    if source_files is not None:
        manifest["sourceFiles"] = source_files
    return manifest
