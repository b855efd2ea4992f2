"""The selection rules of docs/design.md as pure functions (``engine.watermark``), at their boundaries: the
lookback horizon of strategy files, and the cursor of strategy column (nulls, ties, every type stored exactly).
tests/local/test_documented_behaviour.py checks the same rules through whole exports."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from dsexport.engine import watermark
from dsexport.engine.manifest import ColumnState, FilesState
from dsexport.engine.sources import SourceFile

MINUTE_NS = 60 * 10**9
LOOKBACK_NS = 15 * MINUTE_NS
M = 1_796_083_200 * 10**9  # 2026-12-01T00:00:00Z, the newest modification time exported so far


def state(recent: dict[str, int]) -> FilesState:
    return FilesState(max_modified_ns=M, max_modified="2026-12-01T00:00:00.000000000Z", recent=recent)


def test_a_file_is_new_when_younger_than_the_horizon_and_not_exported_before() -> None:
    """ "A file is new when it is younger than maxModified - lookback and not among those paths"; the paths kept are
    those exported within lookback of the new maximum."""
    horizon = M - LOOKBACK_NS
    listing = [
        SourceFile("late", 1, horizon - 1),  # arrived later than lookback: never exported
        SourceFile("at-horizon", 1, horizon),  # not younger than the horizon
        SourceFile("inside", 1, horizon + 1),  # late, but within lookback: exported once
        SourceFile("seen", 1, M),  # exported by the previous run
        SourceFile("new", 1, M + 5),
    ]
    chosen = watermark.select_files(listing, state({"seen": M}), lookback_ns=LOOKBACK_NS)
    assert [f.path for f in chosen.files] == ["inside", "new"]
    assert chosen.state.max_modified_ns == M + 5
    assert chosen.state.recent == {"new": M + 5, "seen": M}  # "inside" is older than the new horizon
    assert watermark.horizon_ns(chosen.state, LOOKBACK_NS) == M + 5 - LOOKBACK_NS

    again = watermark.select_files(listing, chosen.state, lookback_ns=LOOKBACK_NS)
    assert again.files == [] and again.state.max_modified_ns == M + 5


def test_the_first_export_takes_every_file_whatever_its_age() -> None:
    listing = [SourceFile("old", 1, 5), SourceFile("new", 1, M)]
    chosen = watermark.select_files(listing, None, lookback_ns=LOOKBACK_NS)
    assert [f.path for f in chosen.files] == ["old", "new"]
    assert watermark.horizon_ns(None, LOOKBACK_NS) is None


def test_the_cursor_filter_never_lets_a_null_through_and_is_strictly_greater() -> None:
    table = pa.table({"_id": [0, 1, 2, 3, 4], "c": pa.array([None, 1, 2, None, 2], pa.int64())})

    def ids(cursor: watermark.ColumnCursor) -> list[int]:
        filtered = pads.dataset(table).to_table(filter=cursor.filter(table.schema))
        return sorted(filtered.column("_id").to_pylist())

    assert ids(watermark.column_cursor("c", None)) == [1, 2, 4]
    assert ids(watermark.column_cursor("c", ColumnState(column="c"))) == [1, 2, 4]  # a chain with no cursor yet
    resumed = watermark.column_cursor("c", ColumnState(column="c", type="int64", value=1, display="1"))
    assert ids(resumed) == [2, 4]
    at_max = watermark.column_cursor("c", ColumnState(column="c", type="int64", value=2, display="2"))
    assert ids(at_max) == []


def _timestamp(unit: str, tz: str | None) -> pa.Scalar:
    ticks = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    below = {"s": 0, "ms": 123, "us": 123_456, "ns": 123_456_789}[unit]
    return pa.scalar(1_796_083_200 * ticks + below, pa.int64()).cast(pa.timestamp(unit, tz=tz))


VALUES: list[tuple[pa.Scalar, Any]] = [
    *[(pa.scalar(v, t), v) for t, v in ((pa.int8(), -128), (pa.int16(), 32_767), (pa.int32(), -(2**31)))],
    (pa.scalar(2**63 - 1, pa.int64()), 2**63 - 1),
    *[(pa.scalar(v, t), v) for t, v in ((pa.uint8(), 255), (pa.uint16(), 65_535), (pa.uint32(), 2**32 - 1))],
    (pa.scalar(2**64 - 1, pa.uint64()), 2**64 - 1),
    (pa.scalar("2026-12-01T00:00:00Z", pa.string()), "2026-12-01T00:00:00Z"),
    (pa.scalar("zebra", pa.large_string()), "zebra"),
    (pa.scalar(dt.date(2026, 12, 1), pa.date32()), 20_788),
    (pa.scalar(dt.date(2026, 12, 1), pa.date64()), 1_796_083_200_000),
    *[
        (_timestamp(unit, tz), _timestamp(unit, tz).cast(pa.int64()).as_py())
        for unit in ("s", "ms", "us", "ns")
        for tz in (None, "UTC", "Europe/Paris", "+05:30")
    ],
]


MORE_VALUES: list[tuple[pa.Scalar, Any]] = [  # the mutation tests' (docs/mutation.md)
    (pa.scalar(decimal.Decimal("12345.67"), pa.decimal128(38, 2)), "12345.67"),
    (pa.scalar(decimal.Decimal("-0.001"), pa.decimal128(5, 3)), "-0.001"),
    (pa.scalar(decimal.Decimal("1" * 37 + ".25"), pa.decimal256(39, 2)), "1" * 37 + ".25"),
    (pa.scalar(b"\x00\xffab", pa.binary()), "00ff6162"),
    (pa.scalar(b"\x01", pa.large_binary()), "01"),
    (pa.scalar(1.5, pa.float64()), 1.5),
    (pa.scalar(True, pa.bool_()), True),
    (pa.scalar(86_399_999, pa.int32()).cast(pa.time32("ms")), 86_399_999),
    (pa.scalar(86_399_999_999, pa.int64()).cast(pa.time64("us")), 86_399_999_999),
    (pa.scalar(3_600, pa.int64()).cast(pa.duration("s")), 3_600),
]


@pytest.mark.parametrize(("value", "stored"), VALUES + MORE_VALUES, ids=[str(v.type) for v, _ in VALUES + MORE_VALUES])
def test_every_cursor_type_is_stored_exactly_and_read_back_as_itself(value: pa.Scalar, stored: Any) -> None:
    """design.md: "The value is stored exactly (timestamps as integers in their unit)", through the manifest's
    JSON and back, with its type (unit and zone included)."""
    committed = watermark.column_state(watermark.ColumnCursor("c", None), value)
    assert (committed.type, committed.value) == (str(value.type), stored)
    on_the_wire = ColumnState.model_validate(json.loads(json.dumps(committed.to_json_dict())))
    resumed = watermark.column_cursor("c", on_the_wire).value
    assert resumed is not None
    assert (resumed.type, resumed) == (value.type, value)


def test_a_nanosecond_cursor_value_is_stored_exactly() -> None:
    value = pa.scalar(1_796_083_200_123_456_789, pa.int64()).cast(pa.timestamp("ns"))
    committed = watermark.column_state(watermark.ColumnCursor("c", None), value)
    assert committed.value == 1_796_083_200_123_456_789
