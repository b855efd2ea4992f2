"""Watermarks: what has been exported so far, as the typed state stored in every manifest.

Storing the whole state in the manifest (not in the operator) is what lets a run recover it from the
destination alone: the latest committed manifest of a dataset is its watermark.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dsexport.engine.manifest import ColumnState, FilesState, WatermarkRange
from dsexport.engine.sources import SourceFile
from dsexport.errors import ConfigError


def _iso_ns(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}Z"


@dataclass(frozen=True)
class FilesSelection:
    """The files a run exports and the state to commit once they are exported."""

    files: list[SourceFile]
    state: FilesState
    range: WatermarkRange


def horizon_ns(previous: FilesState | ColumnState | None, lookback_ns: int) -> int | None:
    """Strategy files exports no file modified at or before this instant (None: the first export, everything).

    That is ``maxModified - lookback``, but never below the oldest time the previous commit remembers paths for
    (``recentSinceNs``): after ``lookback`` is raised, a file older than that may have been exported already, and
    its path was not kept, so taking it again could export it twice.
    """
    if not isinstance(previous, FilesState):
        return None
    horizon = previous.max_modified_ns - lookback_ns
    return horizon if previous.recent_since_ns is None else max(horizon, previous.recent_since_ns)


def select_files(listing: Sequence[SourceFile], previous: FilesState | None, *, lookback_ns: int) -> FilesSelection:
    """New files since the watermark.

    A file counts as new when it is younger than ``maxModified - lookback`` and was not exported before. Files
    exported inside that window are remembered by path, so a file that becomes visible late (an object store's
    listing lag, a slow writer's rename) is exported exactly once, while state stays bounded by the window.
    """
    prev_max = previous.max_modified_ns if previous else None
    seen: dict[str, int] = dict(previous.recent) if previous else {}
    since = horizon_ns(previous, lookback_ns)
    chosen = list(listing) if since is None else [f for f in listing if f.mtime_ns > since and f.path not in seen]
    new_max = max([prev_max or 0, *(f.mtime_ns for f in chosen)])
    horizon = new_max - lookback_ns
    seen.update({f.path: f.mtime_ns for f in chosen})
    recent = {p: m for p, m in sorted(seen.items()) if m > horizon}
    # What ``recent`` is complete after: above the new horizon, and above what the previous state was complete after
    # (a raised lookback widens the window only as maxModified moves on).
    complete_after = horizon if since is None else max(horizon, since)
    state = FilesState(
        max_modified_ns=new_max, max_modified=_iso_ns(new_max), recent=recent, recent_since_ns=complete_after
    )
    wm_range = WatermarkRange(
        strategy="files", from_=_iso_ns(prev_max) if prev_max is not None else None, to=_iso_ns(new_max)
    )
    return FilesSelection(files=chosen, state=state, range=wm_range)


@dataclass(frozen=True)
class ColumnCursor:
    """Rows whose cursor column is greater than ``value`` (None: every row with a cursor)."""

    column: str
    value: pa.Scalar | None

    def filter(self, schema: pa.Schema) -> pc.Expression:
        if schema.get_field_index(self.column) < 0:
            names = ", ".join(schema.names[:20])
            raise ConfigError(f"cursor column {self.column!r} is not in the dataset (columns: {names})")
        field = pc.field(self.column)
        if self.value is None:
            return field.is_valid()
        return field > self.value.cast(schema.field(self.column).type)


def column_cursor(column: str, previous: ColumnState | None) -> ColumnCursor:
    if previous is None:
        return ColumnCursor(column, None)
    if previous.column != column:
        raise ConfigError(
            f"the committed watermark is on column {previous.column!r}, not {column!r}: "
            "reset the dataset to start over with the new cursor column"
        )
    if previous.value is None or previous.type is None:
        return ColumnCursor(column, None)
    try:
        return ColumnCursor(column, _decode(previous.value, previous.type))
    except (ValueError, TypeError, ArithmeticError, pa.ArrowException) as e:
        # A manifest is validated, but a value must also be one of its declared type to be trusted.
        raise ConfigError(
            f"the committed watermark {previous.value!r} is not a {previous.type} value ({e}); "
            "reset the dataset to start over"
        ) from None


def column_state(cursor: ColumnCursor, new_max: pa.Scalar | None) -> ColumnState:
    """The committed state: the largest cursor exported so far (unchanged if the run exported nothing)."""
    value = new_max if new_max is not None and new_max.is_valid else cursor.value
    if value is None:
        return ColumnState(column=cursor.column)
    return ColumnState(column=cursor.column, type=str(value.type), value=_encode(value), display=_display(value))


def _display(value: pa.Scalar) -> str:
    """A cursor value for people: as Python shows it, but a nanosecond timestamp as Arrow does (Python's datetime
    has no nanoseconds, and pyarrow converts one through pandas, which the exporter does not install)."""
    if pa.types.is_timestamp(value.type) and value.type.unit == "ns":
        return str(value.cast(pa.string()).as_py())
    return str(value)


def column_range(cursor: ColumnCursor, state: ColumnState) -> WatermarkRange:
    """From the cursor the run started at to the one it commits, for people."""
    start = _display(cursor.value) if cursor.value is not None else None
    return WatermarkRange(strategy="column", from_=start, to=state.display)


def scan_max(batch: pa.RecordBatch, column: str, current: pa.Scalar | None) -> pa.Scalar | None:
    """The running maximum of the cursor column, batch by batch, so the watermark needs no second pass."""
    found = pc.max(batch.column(column))
    if not found.is_valid:
        return current
    if current is None or pc.greater(found, current).as_py():
        return found
    return current


def _encode(value: pa.Scalar) -> Any:
    """An exact JSON form: temporal values as their integer count (so nanoseconds survive), decimals as text."""
    if pa.types.is_temporal(value.type):
        return value.cast(_storage_int(value.type)).as_py()
    if pa.types.is_decimal(value.type):
        return str(value.as_py())
    if pa.types.is_binary(value.type) or pa.types.is_large_binary(value.type):
        return value.as_py().hex()
    return value.as_py()


def _storage_int(type_: pa.DataType) -> pa.DataType:
    return pa.int32() if type_.bit_width == 32 else pa.int64()


def _decode(value: Any, type_name: str) -> pa.Scalar | None:
    if value is None:
        return None
    type_ = pa.type_for_alias(type_name) if not type_name.startswith(("timestamp", "decimal")) else None
    if type_name.startswith("timestamp"):
        unit, _, tz = type_name[len("timestamp[") : -1].partition(", tz=")
        type_ = pa.timestamp(unit, tz=tz or None)
    elif type_name.startswith("decimal"):
        precision, scale = (int(x) for x in type_name.split("(")[1][:-1].split(","))
        type_ = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        return pa.scalar(decimal.Decimal(value), type=type_)
    if pa.types.is_temporal(type_):
        return pa.scalar(value, type=_storage_int(type_)).cast(type_)
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return pa.scalar(bytes.fromhex(value), type=type_)
    return pa.scalar(value, type=type_)
