"""One export of one dataset, in four phases: recover the watermark, select what is new, write parts, commit.

Exactly-once rests on three facts: the watermark is read from the latest committed manifest only; every attempt
writes parts under names of its own (a random run id), so no run touches another's files; and the commit is a
create-only claim on the latest commit's successor, so of the runs that started from one commit at most one
commits, whatever their slots (``commit``). A run killed anywhere therefore either committed everything or left
files no commit can list, which later runs remove once no live run could still commit them.

A phase that finds nothing more to do (the slot is already committed, or is behind the latest commit, which covers
it; nothing is new; another run committed first) ends the export with a :class:`Finished`, which is an outcome,
not an error.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from dsexport import api
from dsexport.destinations import Transport
from dsexport.engine import bytecopy, commit, jsonenc, memory, schedule, watermark, writers
from dsexport.engine.manifest import (
    RESET_TOKEN_PATTERN,
    ColumnState,
    FileFormat,
    FilesState,
    Manifest,
    ManifestSchema,
    PartEntry,
    SchemaField,
    WatermarkRange,
)
from dsexport.engine.result import DatasetResult, Outcome
from dsexport.engine.sources import Source, SourceFile
from dsexport.engine.writers import PartFile, write_parts
from dsexport.errors import ConfigError, DsexportError, StateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportRequest:
    """Everything one dataset export needs; built from a DatasetExport in local mode or by the operator."""

    dataset_export: str  # the DatasetExport's name: it owns the dataset's folder at the destination
    dataset: api.Dataset
    destination: api.Destination
    mode: api.Mode
    schedule: api.Schedule
    at: dt.datetime
    reset: bool = False
    source_credentials: Mapping[str, str] = field(default_factory=dict)
    # Identifies one reset request, so that it takes effect once: a reset whose token the latest commit already
    # carries was applied by an earlier attempt, and this one continues incrementally instead.
    reset_token: str | None = None
    # YYYYMMDDHHMM (UTC): the exportTime folder to write to instead of the slot of ``at``, so that every attempt
    # of a run-now Job lands in the folder of the minute it was created.
    export_time: str | None = None
    # The most memory the exporter process may use, in bytes (see ``memory``).
    memory_budget: int = memory.DEFAULT_BUDGET


class Finished(Exception):  # noqa: N818 - an outcome, raised only to leave the phases early
    """The export ends here without a commit: already committed, or nothing new."""

    def __init__(self, outcome: Outcome, message: str, watermark: WatermarkRange | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.watermark = watermark


@dataclass(frozen=True)
class Slot:
    """Where this run's export goes: its exportTime and folders."""

    export_time: str
    prefix: str  # FOLDER/DATASET_ID
    folder: str  # FOLDER/DATASET_ID/exportTime=...
    where: str  # for messages: the destination and the prefix
    run_id: str  # in every part's name: random, so that no two attempts (of this slot or any) share a name

    @classmethod
    def of(cls, request: ExportRequest, transport: Transport) -> Slot:
        export_time = _export_time(request)
        folder, dataset_id = request.destination.spec.folder, request.dataset.dataset_id
        prefix = commit.dataset_prefix(folder, dataset_id)
        return cls(
            export_time=export_time,
            prefix=prefix,
            folder=commit.slot_folder(folder, dataset_id, export_time),
            where=f"{transport.describe()}/{prefix}",
            run_id=secrets.token_hex(8),
        )


@dataclass(frozen=True)
class Recovered:
    """What the destination says before this run writes: the latest commit and the state to continue from."""

    latest: Manifest | None
    previous_state: FilesState | ColumnState | None  # None: a full export (backfill, reset or mode full)
    reset: bool = False  # this run starts a new watermark chain (False for a reset an earlier attempt applied)
    reset_already_applied: bool = False
    reset_token: str | None = None  # what the manifest records: this reset's, or the one carried forward
    slots: tuple[str, ...] = ()  # the exportTime folders there were, oldest first


@dataclass(frozen=True)
class Selection:
    """The source files to read, and for strategy files the state to commit once they are exported."""

    source: Source
    files: list[SourceFile]
    files_state: FilesState | None
    files_range: WatermarkRange | None
    cursor: watermark.ColumnCursor | None


@dataclass(frozen=True)
class Written:
    parts: list[PartFile]
    schema: pa.Schema
    state: FilesState | ColumnState
    range: WatermarkRange


def _export_time(request: ExportRequest) -> str:
    if request.export_time is None:
        return schedule.export_time_folder(schedule.export_slot(request.schedule, request.at))
    try:
        return schedule.export_time_folder(schedule.parse_export_time(request.export_time))
    except ValueError as e:
        raise ConfigError(f"the requested export time is invalid: {e}") from None


def export_dataset(
    request: ExportRequest, transport: Transport, *, on_records: Callable[[int], None] | None = None
) -> DatasetResult:
    """Run one export; failures come back as a failed result with an actionable message, never a traceback."""
    started = time.monotonic()
    slot: Slot | None = None
    try:
        slot = Slot.of(request, transport)
        result = _export(request, transport, slot, on_records)
    except Finished as done:
        result = _result(request, slot, outcome=done.outcome, message=done.message, watermark=done.watermark)
    except DsexportError as e:
        result = _result(request, slot, outcome=Outcome.failed, message=str(e), reason=e.reason, transient=e.transient)
    result = result.model_copy(update={"seconds": time.monotonic() - started})
    _log_result(result)
    return result


def _result(request: ExportRequest, slot: Slot | None, **fields: Any) -> DatasetResult:
    where = {"export_time": slot.export_time, "folder": slot.folder} if slot is not None else {}
    return DatasetResult(
        dataset_export=request.dataset_export,
        dataset=request.dataset.metadata.name,
        dataset_id=request.dataset.dataset_id,
        **where,
        **fields,
    )


def _export(
    request: ExportRequest, transport: Transport, slot: Slot, on_records: Callable[[int], None] | None
) -> DatasetResult:
    plan = memory.Plan.of(request.memory_budget)  # before anything is read or written: a budget may be refused
    recovered = recover(request, transport=transport, slot=slot)
    selection = select(request, recovered)
    try:
        written = write(
            request,
            transport=transport,
            slot=slot,
            recovered=recovered,
            selection=selection,
            memory_plan=plan,
            on_records=on_records,
        )
        manifest = build_manifest(request, slot=slot, recovered=recovered, selection=selection, written=written)
        commit.commit(transport, slot.prefix, manifest)
    except commit.Superseded as lost:
        raise _superseded(request, transport=transport, slot=slot, winner=lost.winner) from None
    except DsexportError:
        # A run that lost the race may also fail on the way: the winner removes what can no longer be committed,
        # its files among them. Then losing is what happened, not the error.
        winner = _winner(request, transport=transport, slot=slot, recovered=recovered)
        if winner is None or winner.run_id == slot.run_id:  # this run's own claim: it committed; publishing failed
            raise
        raise _superseded(request, transport=transport, slot=slot, winner=winner) from None
    _log("commit", request, slot, records=manifest.records, bytes=manifest.bytes, files=len(manifest.files))
    # What this commit made garbage: losers' files in its folder and the folders since the previous commit. The
    # export is done: if the store fails now, the next run's recovery removes them instead.
    state = commit.DatasetState(manifest, slot.export_time, (*recovered.slots, slot.export_time))
    try:
        if removed := commit.clean_behind(transport, slot.prefix, state):
            _log("clean", request, slot, removedFiles=removed)
    except DsexportError as e:
        log.warning("cleaning after the commit failed, the next run does it: %s", e)
    return _result(
        request,
        slot,
        outcome=Outcome.exported,
        records=manifest.records,
        bytes=manifest.bytes,
        files=len(manifest.files),
        watermark=manifest.watermark,
        message=_describe(request, recovered),
    )


def _winner(request: ExportRequest, *, transport: Transport, slot: Slot, recovered: Recovered) -> Manifest | None:
    """The commit another run made after the one this run started from, if any (best effort: None if the
    destination cannot say)."""
    try:
        return commit.read_claim(transport, slot.prefix, recovered.latest, dataset_id=request.dataset.dataset_id)
    except DsexportError:
        return None


def _superseded(request: ExportRequest, *, transport: Transport, slot: Slot, winner: Manifest) -> Finished:
    """This run lost: remove its own files (others may be writing beside them) and say who won."""
    try:
        removed = commit.remove_attempt(transport, slot.folder, slot.run_id)
        said = "this run removed its files"
    except DsexportError:
        removed, said = -1, "a later run removes this run's files"
    _log("superseded", request, slot, winner=winner.run_id, winnerExportTime=winner.export_time, removedFiles=removed)
    return Finished(
        Outcome.superseded,
        f"another run committed exportTime {winner.export_time} first, from the same watermark; it exports what "
        f"this run would have, and {said}",
        winner.watermark,
    )


def recover(request: ExportRequest, *, transport: Transport, slot: Slot) -> Recovered:
    """Read the dataset's state from the destination alone, refuse what would lose or duplicate rows, and remove
    what the latest commit made garbage (``commit.clean_behind``).

    A run behind the latest commit (a scheduled run starting late after a run-now) ends without writing: the
    latest commit already exported everything up to a later time, and nothing may be committed behind it. A
    reset is the exception, since nothing covers it: unless the latest commit carries its token, it is refused.
    """
    if request.reset_token is not None and not re.fullmatch(RESET_TOKEN_PATTERN, request.reset_token):
        raise ConfigError(f"reset token {request.reset_token!r} is not 1 to 64 characters of A-Z a-z 0-9 . _ -")
    dataset_id = request.dataset.dataset_id
    state = commit.read_state(transport, slot.prefix, dataset_id=dataset_id)
    commit.check_owner(state, request.dataset_export, where=slot.where)
    removed = commit.clean_behind(transport, slot.prefix, state)
    latest = state.latest
    covered = latest.watermark if latest else None
    own = None
    if latest is not None and slot.export_time < latest.export_time and slot.export_time in state.slots:
        own = commit.read_committed(transport, slot.prefix, dataset_id=dataset_id, export_time=slot.export_time)
    if own is not None or state.latest_slot == slot.export_time:
        if own is not None:
            removed += commit.finish_committed(transport, slot.folder, own)
        _log("recover", request, slot, latest=state.latest_slot, committed=True, removedFiles=removed)
        raise Finished(
            Outcome.already_committed,
            f"exportTime {slot.export_time} is already committed; a later slot exports what is new",
            covered,
        )
    applied = (
        request.reset
        and request.reset_token is not None
        and latest is not None
        and latest.reset_token == request.reset_token
    )
    if commit.is_behind(state, slot.export_time):
        if request.reset and not applied:
            raise StateError(
                f"{slot.where}: exportTime {slot.export_time} is before the latest committed export "
                f"{state.latest_slot}, where the reset cannot be committed: reset again at a later exportTime"
            )
        # Nothing can be committed behind the latest commit, so whatever this folder holds is garbage.
        removed += commit.clean_folder(transport, slot.folder)
        _log("recover", request, slot, latest=state.latest_slot, behind=True, removedFiles=removed)
        raise Finished(
            Outcome.already_committed,
            f"exportTime {slot.export_time} is before the latest committed export {state.latest_slot}, which "
            "already covers it; a later slot exports what is new",
            covered,
        )
    reset = request.reset and not applied
    incremental = request.mode == api.Mode.incremental and not reset
    previous = latest.state if (incremental and latest is not None) else None
    # A reset the latest commit carries the token of was applied by an earlier attempt: say so, and continue.
    said = {"resetAlreadyApplied": True} if applied else {}
    _log("recover", request, slot, latest=state.latest_slot, removedFiles=removed, **said)
    return Recovered(
        latest=latest,
        previous_state=previous,
        reset=reset,
        reset_already_applied=applied,
        reset_token=request.reset_token if reset else (latest.reset_token if latest else None),
        slots=state.slots,
    )


def select(request: ExportRequest, recovered: Recovered) -> Selection:
    """The files to read: new files since the watermark (strategy files), or every file (strategy column, whose
    cursor filters rows while reading)."""
    spec = request.dataset.spec
    source = Source(spec.source, request.source_credentials)
    previous = recovered.previous_state
    lookback_ns = api.parse_duration_seconds(spec.incremental.lookback) * 1_000_000_000
    files_state = previous if spec.incremental.strategy == api.Strategy.files else None
    # Strategy files exports nothing modified at or before the horizon, so a declared partitioning may skip it.
    listing = source.list_files(newer_than_ns=watermark.horizon_ns(files_state, lookback_ns))
    if spec.incremental.strategy == api.Strategy.files:
        if isinstance(previous, ColumnState):
            raise _strategy_changed(previous.strategy, spec.incremental.strategy)
        chosen = watermark.select_files(listing, previous, lookback_ns=lookback_ns)
        if previous is not None and not chosen.files:
            raise Finished(Outcome.no_new_data, "no new files", chosen.range)
        selection = Selection(source, chosen.files, chosen.state, chosen.range, None)
    else:
        if isinstance(previous, FilesState):
            raise _strategy_changed(previous.strategy, spec.incremental.strategy)
        assert spec.incremental.column is not None  # the CRD's CEL rule
        cursor = watermark.column_cursor(spec.incremental.column, previous)
        selection = Selection(source, listing, None, None, cursor)
    if not selection.files:
        raise Finished(Outcome.no_new_data, f"no source files under {spec.source.uri}")
    return selection


def _strategy_changed(committed: str, wanted: str) -> ConfigError:
    return ConfigError(
        f"the committed watermark uses strategy {committed}, the Dataset now says {wanted}: "
        "reset the dataset to start over with the new strategy"
    )


def write(
    request: ExportRequest,
    *,
    transport: Transport,
    slot: Slot,
    recovered: Recovered,
    selection: Selection,
    memory_plan: memory.Plan,
    on_records: Callable[[int], None] | None,
) -> Written:
    """Write the selected rows into part files: first the files the byte copy takes as they are (``bytecopy``),
    then the others decoded and re-encoded; for strategy column, track the cursor's maximum on the way."""
    dataset = selection.source.dataset(selection.files, plan=memory_plan)
    schema = dataset.schema
    cursor = selection.cursor
    fmt = request.destination.spec.format
    writers.check_schema(schema, fmt)  # before anything is written
    plan = bytecopy.Plan(
        dataset,
        selection.files,
        root=selection.source.root,
        fmt=fmt,
        source_format=selection.source.format,
        rows_filtered=cursor is not None,
    )
    parts = bytecopy.copy_parts(
        plan.copies(),
        dataset=dataset,
        fmt=fmt,
        transport=transport,
        folder=slot.folder,
        run_id=slot.run_id,
        on_records=on_records,
        stored=selection.source.stored_object,
    )
    cursor_max = cursor.value if cursor else None
    if plan.encode is not None:
        encoded, cursor_max = _encode(
            plan.encode,
            cursor,
            fmt=fmt,
            transport=transport,
            slot=slot,
            first_index=len(parts),
            memory_plan=memory_plan,
            on_records=on_records,
        )
        parts += encoded
    _log("write", request, slot, files=len(parts), records=sum(p.records for p in parts), **plan.log_fields())
    if cursor is None:
        assert selection.files_state is not None and selection.files_range is not None
        return Written(parts, schema, selection.files_state, selection.files_range)
    state = watermark.column_state(cursor, cursor_max)
    wm_range = watermark.column_range(cursor, state)
    if recovered.previous_state is not None and not parts:
        # Nothing above the cursor: committing an empty folder would only add noise at the destination.
        raise Finished(Outcome.no_new_data, "no new rows", wm_range)
    return Written(parts, schema, state, wm_range)


def _encode(
    dataset: pads.Dataset,
    cursor: watermark.ColumnCursor | None,
    *,
    fmt: api.Format,
    transport: Transport,
    slot: Slot,
    first_index: int,
    memory_plan: memory.Plan,
    on_records: Callable[[int], None] | None,
) -> tuple[list[PartFile], pa.Scalar | None]:
    """Decode ``dataset``'s rows (those above the cursor, if any) and encode them into parts numbered from
    ``first_index``; with the cursor column's maximum, tracked on the way so the watermark needs no second pass.

    Decoding runs on this thread (and pyarrow's pool) while the writers' threads encode what came before, so the
    two overlap without a read-ahead thread, whose queue only kept more decoded batches in memory."""
    schema = dataset.schema
    running_max: list[pa.Scalar | None] = [cursor.value if cursor else None]

    def batches() -> Iterator[pa.RecordBatch]:
        filter_ = cursor.filter(schema) if cursor is not None else None
        for batch in Source.batches(dataset, filter_, plan=memory_plan):
            if cursor is not None:
                running_max[0] = watermark.scan_max(batch, cursor.column, running_max[0])
            yield batch

    parts = write_parts(
        batches(),
        schema=schema,
        fmt=fmt,
        transport=transport,
        folder=slot.folder,
        run_id=slot.run_id,
        plan=memory_plan,
        on_batch=on_records,
        first_index=first_index,
    )
    return parts, running_max[0]


def build_manifest(
    request: ExportRequest, *, slot: Slot, recovered: Recovered, selection: Selection, written: Written
) -> Manifest:
    fmt = request.destination.spec.format
    file_schema = written.schema if fmt.type == api.OutputFormat.parquet else jsonenc.json_schema(written.schema)
    latest = recovered.latest
    return Manifest(
        dataset_export=request.dataset_export,
        dataset=request.dataset.metadata.name,
        dataset_id=request.dataset.dataset_id,
        export_time=slot.export_time,
        run_id=slot.run_id,
        sequence=latest.sequence + 1 if latest else 1,
        mode=request.mode.value,
        backfill=recovered.previous_state is None,
        reset=recovered.reset,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        format=FileFormat(type=fmt.type.value, compression=fmt.effective_compression),
        records=sum(p.records for p in written.parts),
        bytes=sum(p.bytes for p in written.parts),
        files=[
            PartEntry(
                path=p.path, records=p.records, bytes=p.bytes, sha256=p.sha256, via=p.via, source=p.source, etag=p.etag
            )
            for p in written.parts
        ],
        watermark=written.range,
        state=written.state,
        schema=ManifestSchema(
            fields=[SchemaField(name=f.name, type=str(f.type), nullable=f.nullable) for f in file_schema],
            arrow=base64.b64encode(file_schema.serialize().to_pybytes()).decode(),
        ),
        source_files=[f.path for f in selection.files] if selection.cursor is None else None,
        reset_token=recovered.reset_token,
        previous=latest.export_time if latest else None,
    )


def _describe(request: ExportRequest, recovered: Recovered) -> str:
    if request.mode == api.Mode.full:
        return "full snapshot"
    if recovered.reset:
        return "full backfill (reset)"
    if recovered.previous_state is None:
        return "full backfill"
    return "incremental (the reset was already applied)" if recovered.reset_already_applied else "incremental"


def _log(phase: str, request: ExportRequest, slot: Slot, **counts: object) -> None:
    """One line per phase; names and counts only, never a credential or a row."""
    log.info(
        "%s %s/%s exportTime=%s",
        phase,
        request.dataset_export,
        request.dataset.metadata.name,
        slot.export_time,
        extra={
            "fields": {
                "phase": phase,
                "datasetExport": request.dataset_export,
                "dataset": request.dataset.metadata.name,
                "exportTime": slot.export_time,
                **counts,
            }
        },
    )


def _log_result(result: DatasetResult) -> None:
    level = logging.WARNING if result.outcome == Outcome.failed else logging.INFO
    fields = result.to_json_dict()
    fields.pop("watermark", None)
    log.log(
        level,
        "%s %s/%s: %s",
        result.outcome.value,
        result.dataset_export,
        result.dataset,
        result.message,
        extra={"fields": {"phase": "result", **fields}},
    )
