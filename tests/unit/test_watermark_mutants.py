"""The watermark at the edges test_documented_rules.py leaves out, found by mutation testing (docs/mutation.md):
what a run commits and shows for strategy files, every cursor type stored exactly (decimals, binaries, floats,
booleans), and the cursor's errors and running maximum."""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pytest

from dsexport.engine import watermark
from dsexport.engine.manifest import ColumnState, FilesState, WatermarkRange
from dsexport.engine.sources import SourceFile
from dsexport.errors import ConfigError

MINUTE_NS = 60 * 10**9
LOOKBACK_NS = 15 * MINUTE_NS
M = 1_796_083_200 * 10**9  # 2026-12-01T00:00:00Z


def files_state(max_ns: int, recent: dict[str, int], since_ns: int | None = None) -> FilesState:
    return FilesState(
        max_modified_ns=max_ns, max_modified=watermark._iso_ns(max_ns), recent=recent, recent_since_ns=since_ns
    )


def test_the_files_watermark_and_range_are_shown_to_the_nanosecond() -> None:
    first = watermark.select_files([SourceFile("a", 1, M + 5), SourceFile("b", 1, M - 7)], None, lookback_ns=0)
    assert first.state.max_modified == "2026-12-01T00:00:00.000000005Z"
    assert first.range == WatermarkRange(strategy="files", from_=None, to="2026-12-01T00:00:00.000000005Z")

    nxt = watermark.select_files([SourceFile("c", 1, M + 61 * 10**9 + 999_999_999)], first.state, lookback_ns=0)
    assert nxt.state.max_modified == "2026-12-01T00:01:01.999999999Z"
    assert nxt.range == WatermarkRange(
        strategy="files", from_="2026-12-01T00:00:00.000000005Z", to="2026-12-01T00:01:01.999999999Z"
    )


def test_the_files_watermark_is_shown_in_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        chosen = watermark.select_files([SourceFile("a", 1, M)], None, lookback_ns=0)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert chosen.state.max_modified == "2026-12-01T00:00:00.000000000Z"


def test_an_empty_first_listing_selects_nothing_from_the_epoch() -> None:
    chosen = watermark.select_files([], None, lookback_ns=LOOKBACK_NS)
    assert chosen.files == []
    assert chosen.state == FilesState(
        max_modified_ns=0, max_modified="1970-01-01T00:00:00.000000000Z", recent={}, recent_since_ns=-LOOKBACK_NS
    )
    assert chosen.range == WatermarkRange(strategy="files", from_=None, to="1970-01-01T00:00:00.000000000Z")


def test_nothing_new_keeps_the_watermark_and_the_paths_inside_the_lookback() -> None:
    previous = files_state(M, {"inside": M - LOOKBACK_NS + 1, "at-horizon": M - LOOKBACK_NS, "newest": M})
    chosen = watermark.select_files([SourceFile("newest", 1, M)], previous, lookback_ns=LOOKBACK_NS)
    assert chosen.files == []
    # The path exactly at the horizon can never be selected again (not younger than it), so it is forgotten.
    assert chosen.state == files_state(M, {"inside": M - LOOKBACK_NS + 1, "newest": M}, M - LOOKBACK_NS)
    assert chosen.range.from_ == chosen.range.to == "2026-12-01T00:00:00.000000000Z"


def test_remembered_paths_are_stored_in_path_order() -> None:
    """The same files give the same manifest bytes, whatever order the source listed them in."""
    listing = [SourceFile(p, 1, M + i) for i, p in enumerate(["c", "a", "b"])]
    chosen = watermark.select_files(listing, None, lookback_ns=LOOKBACK_NS)
    assert list(chosen.state.recent) == ["a", "b", "c"]
    assert json.dumps(chosen.state.to_json_dict()).index('"a"') < json.dumps(chosen.state.to_json_dict()).index('"c"')


def test_the_cursor_column_may_be_the_first_and_a_missing_one_is_named() -> None:
    schema = pa.schema([(f"col{i}", pa.int64()) for i in range(25)])
    assert str(watermark.ColumnCursor("col0", None).filter(schema)) == "is_valid(col0)"
    with pytest.raises(ConfigError) as missing:
        watermark.ColumnCursor("updated_at", None).filter(schema)
    listed = ", ".join(f"col{i}" for i in range(20))
    assert str(missing.value) == f"cursor column 'updated_at' is not in the dataset (columns: {listed})"


def test_a_watermark_on_another_column_or_of_a_wrong_value_is_refused() -> None:
    with pytest.raises(ConfigError) as other:
        watermark.column_cursor("b", ColumnState(column="a", type="int64", value=1, display="1"))
    assert str(other.value) == (
        "the committed watermark is on column 'a', not 'b': reset the dataset to start over with the new cursor column"
    )
    with pytest.raises(ConfigError) as wrong:
        watermark.column_cursor("a", ColumnState(column="a", type="int64", value="soon", display="soon"))
    assert str(wrong.value).startswith("the committed watermark 'soon' is not a int64 value (")
    assert str(wrong.value).endswith("); reset the dataset to start over")
    # A state with a value but no type (hand-edited) is not trusted as a cursor.
    assert watermark.column_cursor("a", ColumnState(column="a", value=5)).value is None


def test_a_run_that_found_no_cursor_value_keeps_the_committed_one() -> None:
    cursor = watermark.ColumnCursor("c", pa.scalar(7, pa.int64()))
    kept = ColumnState(column="c", type="int64", value=7, display="7")
    assert watermark.column_state(cursor, None) == kept
    assert watermark.column_state(cursor, pa.scalar(None, pa.int64())) == kept
    assert watermark.column_state(cursor, pa.scalar(9, pa.int64())).value == 9
    assert watermark.column_state(watermark.ColumnCursor("c", None), None) == ColumnState(column="c")


def test_the_range_shows_cursor_values_as_people_read_them() -> None:
    ns = pa.scalar(1_796_083_200_123_456_789, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    us = pa.scalar(1_796_083_200_123_456, pa.int64()).cast(pa.timestamp("us"))
    state = watermark.column_state(watermark.ColumnCursor("c", us), ns)
    assert state.display == "2026-12-01 00:00:00.123456789Z"
    assert watermark.column_range(watermark.ColumnCursor("c", us), state) == WatermarkRange(
        strategy="column", from_="2026-12-01 00:00:00.123456", to="2026-12-01 00:00:00.123456789Z"
    )
    assert watermark.column_range(watermark.ColumnCursor("c", None), ColumnState(column="c")) == WatermarkRange(
        strategy="column", from_=None, to=None
    )


def test_the_running_maximum_skips_batches_without_a_value() -> None:
    def batch(values: list[Any]) -> pa.RecordBatch:
        return pa.record_batch({"c": pa.array(values, pa.int64())})

    assert watermark.scan_max(batch([None, None]), "c", None) is None
    found = watermark.scan_max(batch([3, None, 5]), "c", None)
    assert found == pa.scalar(5, pa.int64())
    assert watermark.scan_max(batch([None]), "c", found) == found
    assert watermark.scan_max(batch([4]), "c", found) == found
    assert watermark.scan_max(batch([6]), "c", found) == pa.scalar(6, pa.int64())


def test_a_raised_lookback_never_looks_below_what_the_latest_commit_remembers() -> None:
    """Paths were remembered from ``recentSinceNs`` on: below it a file may have been exported, so after lookback
    is raised the horizon stays there, and the window grows only as the watermark moves on."""
    previous = files_state(M, {"a": M}, since_ns=M - 10)  # written with a lookback of 10 ns
    assert watermark.horizon_ns(previous, lookback_ns=100) == M - 10
    assert watermark.horizon_ns(previous, lookback_ns=5) == M - 5
    listing = [SourceFile("a", 1, M), SourceFile("below", 1, M - 50), SourceFile("b", 1, M + 5)]
    chosen = watermark.select_files(listing, previous, lookback_ns=100)
    assert [f.path for f in chosen.files] == ["b"]
    assert chosen.state == files_state(M + 5, {"a": M, "b": M + 5}, M - 10)
