"""End-to-end local mode against a filesystem destination: backfill, incremental, full, formats, reset."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from examples import sample
from tests.helpers import START, committed, flow_yaml, read_committed_ids, source_ids
from tests.helpers import run_local as run

from dsexport.engine import Outcome

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # slot 2026-12-01 00:00 (hourly, every 3 h)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "lake"
    sample.write_files(path, files=3, rows_per_file=2_000, seed=1, start=START)
    return path


@pytest.mark.parametrize(
    ("fmt", "compression", "suffix"),
    [
        ("parquet", None, ".parquet"),
        ("parquet", "zstd", ".parquet"),
        ("json", None, ".json"),
        ("json", "gzip", ".json.gz"),
    ],
)
def test_backfill_then_incremental(tmp_path: Path, src: Path, fmt: str, compression: str | None, suffix: str) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest, fmt=fmt, compression=compression, max_records=2_500)

    [first] = run(flow, T0)
    assert first.outcome == Outcome.exported, first.message
    assert (first.records, first.files, first.export_time) == (6_000, 3, "202612010000")
    slot = dest / "out" / "events" / "exportTime=202612010000"
    names = sorted(p.name for p in slot.iterdir())
    assert names[:2] == ["_SUCCESS", "_manifest.json"]
    [run_id] = {m["runId"] for m in committed(dest)}
    assert re.fullmatch(r"[0-9a-f]{16}", run_id)  # random: no other attempt writes these names
    assert names[2:] == [f"part-0000{i}-{run_id}{suffix}" for i in range(3)]

    sample.write_files(src, files=1, rows_per_file=1_000, seed=7, start=START, id_offset=10_000)
    [second] = run(flow, T0 + dt.timedelta(hours=3))
    assert second.outcome == Outcome.exported, second.message
    assert second.records == 1_000
    manifests_ = committed(dest)
    assert [m["backfill"] for m in manifests_] == [True, False]
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))


def test_manifest_describes_every_file(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    run(flow_yaml(tmp_path, source=src, dest=dest, max_records=4_000), T0)
    [manifest] = committed(dest)
    slot = dest / "out" / "events" / "exportTime=202612010000"
    for entry in manifest["files"]:
        data = (slot / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert pq.ParquetFile(slot / entry["path"]).metadata.num_rows == entry["records"] <= 4_000
    assert manifest["records"] == 6_000
    assert manifest["mode"] == "incremental"
    assert manifest["watermark"]["from"] is None
    assert manifest["schema"]["fields"][0] == {"name": "_id", "type": "int64", "nullable": True}
    assert len(manifest["sourceFiles"]) == 3


def test_no_new_data_leaves_nothing_behind(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    [result] = run(flow, T0 + dt.timedelta(hours=3))
    assert result.outcome == Outcome.no_new_data
    assert sorted(p.name for p in (dest / "out" / "events").iterdir()) == ["_first.json", "exportTime=202612010000"]


def test_same_slot_twice_is_a_no_op(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    [again] = run(flow, T0 + dt.timedelta(minutes=30))
    assert again.outcome == Outcome.already_committed
    assert len(read_committed_ids(dest)) == 6_000


def test_full_mode_exports_a_snapshot_every_run(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest, mode="full")
    run(flow, T0)
    [second] = run(flow, T0 + dt.timedelta(hours=3))
    assert second.records == 6_000
    assert [m["mode"] for m in committed(dest)] == ["full", "full"]


def test_reset_makes_the_next_export_a_backfill(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    [reset] = run(flow, T0 + dt.timedelta(hours=3), resets=("events",))
    assert (reset.outcome, reset.records) == (Outcome.exported, 6_000)
    assert committed(dest)[-1]["reset"] is True
    [after] = run(flow, T0 + dt.timedelta(hours=6))
    assert after.outcome == Outcome.no_new_data


def test_column_strategy_exports_rows_above_the_cursor(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="ingested_at")
    [first] = run(flow, T0)
    assert first.records == 6_000
    later = START + dt.timedelta(days=1)
    sample.write_files(src, files=1, rows_per_file=500, seed=5, start=later, id_offset=20_000)
    [second] = run(flow, T0 + dt.timedelta(hours=3))
    assert second.records == 500
    assert committed(dest)[-1]["state"]["column"] == "ingested_at"
    [third] = run(flow, T0 + dt.timedelta(hours=6))
    assert third.outcome == Outcome.no_new_data
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))


def test_late_file_inside_lookback_is_exported_once(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest, lookback="15m")
    run(flow, T0)
    newest = max(p.stat().st_mtime_ns for p in src.glob("*.parquet"))
    sample.write_files(src, files=1, rows_per_file=100, seed=9, start=START, id_offset=90_000)
    late = src / "events-000000090000.parquet"
    os.utime(late, ns=(newest - 5 * 60 * 10**9, newest - 5 * 60 * 10**9))  # visible late, modified 5 min earlier
    [second] = run(flow, T0 + dt.timedelta(hours=3))
    assert second.records == 100
    [third] = run(flow, T0 + dt.timedelta(hours=6))
    assert third.outcome == Outcome.no_new_data
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    slot = dest / "out" / "events" / "exportTime=202612010000"
    slot.mkdir(parents=True)
    (slot / "part-00007-deadbeef.parquet").write_bytes(b"half a file")
    (slot / ".part-00000-x.parquet.tmp-1234").write_bytes(b"temp")
    [result] = run(flow, T0)
    assert result.outcome == Outcome.exported
    assert not (slot / "part-00007-deadbeef.parquet").exists()
    assert not list(slot.glob(".*"))


def test_manifest_without_success_marker_is_completed(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    marker = dest / "out" / "events" / "exportTime=202612010000" / "_SUCCESS"
    marker.unlink()
    [again] = run(flow, T0)
    assert again.outcome == Outcome.already_committed
    assert marker.exists()


def test_watermark_survives_losing_everything_but_the_destination(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    [result] = run(flow_yaml(fresh, source=src, dest=dest), T0 + dt.timedelta(hours=3))
    assert result.outcome == Outcome.no_new_data


def test_a_run_behind_the_latest_commit_ends_without_writing(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0 + dt.timedelta(days=1))
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    [behind] = run(flow, T0)
    assert (behind.outcome, behind.records) == (Outcome.already_committed, 0)
    assert "is before the latest committed export 202612020000, which already covers it" in behind.message
    assert [m["exportTime"] for m in committed(dest)] == ["202612020000"]
    assert sorted(p.name for p in (dest / "out" / "events").iterdir()) == ["_first.json", "exportTime=202612020000"]
    [later] = run(flow, T0 + dt.timedelta(days=1, hours=3))
    assert (later.outcome, later.records) == (Outcome.exported, 10)  # the new file waited for a later slot


def test_export_time_picks_the_folder_instead_of_the_slot(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    [now] = run(flow, T0 + dt.timedelta(hours=9), export_time="202612011007")  # the slot would be 202612010900
    assert (now.outcome, now.export_time, now.records) == (Outcome.exported, "202612011007", 6_000)
    assert now.folder is not None and now.folder.endswith("out/events/exportTime=202612011007")
    # A retry of the same run-now Job, later and with new data at the source: same folder, nothing exported twice.
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    [retry] = run(flow, T0 + dt.timedelta(hours=12), export_time="202612011007")
    assert (retry.outcome, retry.export_time) == (Outcome.already_committed, "202612011007")
    assert len(read_committed_ids(dest)) == 6_000
    # Any minute is accepted, in the future too.
    [future] = run(flow, T0, export_time="203001010001")
    assert (future.outcome, future.records) == (Outcome.exported, 10)
    assert [m["exportTime"] for m in committed(dest)] == ["202612011007", "203001010001"]


def test_a_scheduled_run_starting_late_after_a_run_now_is_not_a_failure(tmp_path: Path, src: Path) -> None:
    """Run-now at 10:07, then the 09:00 slot's Job starts late: it is covered by 10:07, and 12:00 goes on."""
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    [now] = run(flow, T0 + dt.timedelta(hours=9, minutes=7), export_time="202612011007")
    assert now.outcome == Outcome.exported
    [late] = run(flow, T0 + dt.timedelta(hours=9, minutes=30))  # slot 202612010900
    assert late.outcome == Outcome.already_committed
    assert late.message == (
        "exportTime 202612010900 is before the latest committed export 202612011007, which already covers it; "
        "a later slot exports what is new"
    )
    assert now.watermark is not None and late.watermark == now.watermark
    assert not (dest / "out" / "events" / "exportTime=202612010900").exists()
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    [next_slot] = run(flow, T0 + dt.timedelta(hours=12))
    assert (next_slot.outcome, next_slot.records, next_slot.export_time) == (Outcome.exported, 10, "202612011200")
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))


def test_an_invalid_export_time_fails_the_dataset(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0, export_time="202613011007")
    assert (result.outcome, result.reason, result.transient) == (Outcome.failed, "InvalidSpec", False)
    assert "not an export time folder: '202613011007'" in result.message
    assert not dest.exists()


def test_an_invalid_reset_token_fails_the_dataset(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0, resets=("events",), reset_token="a/b")
    assert (result.outcome, result.reason) == (Outcome.failed, "InvalidSpec")
    assert result.message == "reset token 'a/b' is not 1 to 64 characters of A-Z a-z 0-9 . _ -"
    assert not dest.exists()


def test_a_reset_token_is_recorded_and_carried_forward(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    assert "resetToken" not in committed(dest)[0]
    run(flow, T0 + dt.timedelta(hours=3), resets=("events",), reset_token="r-1")
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    run(flow, T0 + dt.timedelta(hours=6))
    assert [(m["reset"], m["backfill"], m.get("resetToken")) for m in committed(dest)] == [
        (False, True, None),
        (True, True, "r-1"),
        (False, False, "r-1"),
    ]
    assert [m["version"] for m in committed(dest)] == [2, 2, 2]


def test_a_reset_without_a_token_backfills_every_time(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0, resets=("events",))
    [again] = run(flow, T0 + dt.timedelta(hours=3), resets=("events",))
    assert (again.outcome, again.records, again.message) == (Outcome.exported, 6_000, "full backfill (reset)")
    assert [("resetToken" in m, m["reset"]) for m in committed(dest)] == [(False, True), (False, True)]


def test_a_retried_reset_in_the_same_folder_is_already_committed(tmp_path: Path, src: Path) -> None:
    """A reset Job's retry with the same --export-time finds its folder committed."""
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    [first] = run(flow, T0 + dt.timedelta(hours=9), resets=("events",), reset_token="r-1", export_time="202612011007")
    assert (first.outcome, first.records) == (Outcome.exported, 6_000)
    [retry] = run(flow, T0 + dt.timedelta(hours=12), resets=("events",), reset_token="r-1", export_time="202612011007")
    assert retry.outcome == Outcome.already_committed
    assert [m["reset"] for m in committed(dest)] == [False, True]


def test_a_retried_reset_in_a_later_slot_does_not_backfill_again(tmp_path: Path, src: Path) -> None:
    """Without --export-time the retry lands in a later slot: the token says the reset was applied."""
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    [first] = run(flow, T0 + dt.timedelta(hours=3), resets=("events",), reset_token="r-1")
    assert (first.outcome, first.records, first.message) == (Outcome.exported, 6_000, "full backfill (reset)")
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    [retry] = run(flow, T0 + dt.timedelta(hours=6), resets=("events",), reset_token="r-1")
    assert (retry.outcome, retry.records) == (Outcome.exported, 10)
    assert retry.message == "incremental (the reset was already applied)"
    last = committed(dest)[-1]
    assert (last["reset"], last["backfill"], last["resetToken"], last["sequence"]) == (False, False, "r-1", 3)
    # A scheduled export between two attempts carries the token forward: the reset still counts as applied.
    sample.write_files(src, files=1, rows_per_file=5, seed=4, start=START, id_offset=60_000)
    [scheduled] = run(flow, T0 + dt.timedelta(hours=9))
    assert (scheduled.outcome, scheduled.records) == (Outcome.exported, 5)
    [nothing_new] = run(flow, T0 + dt.timedelta(hours=12), resets=("events",), reset_token="r-1")
    assert nothing_new.outcome == Outcome.no_new_data
    # Another token is another reset.
    [second] = run(flow, T0 + dt.timedelta(hours=15), resets=("events",), reset_token="r-2")
    assert (second.outcome, second.records) == (Outcome.exported, 6_015)
    assert [(m["reset"], m.get("resetToken")) for m in committed(dest)] == [
        (False, None),
        (True, "r-1"),
        (False, "r-1"),
        (False, "r-1"),
        (True, "r-2"),
    ]


def test_a_reset_behind_the_latest_commit_is_refused_unless_applied(tmp_path: Path, src: Path) -> None:
    """Nothing covers a reset that was never applied: reporting it as done would drop it silently."""
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0 + dt.timedelta(hours=3))
    [behind] = run(flow, T0 + dt.timedelta(hours=9), resets=("events",), reset_token="r-1", export_time="202612010100")
    assert (behind.outcome, behind.reason, behind.transient) == (Outcome.failed, "DestinationStateRefused", False)
    assert behind.message.endswith(
        "exportTime 202612010100 is before the latest committed export 202612010300, where the reset cannot be "
        "committed: reset again at a later exportTime"
    )
    run(flow, T0 + dt.timedelta(hours=6), resets=("events",), reset_token="r-1")
    [applied] = run(flow, T0 + dt.timedelta(hours=9), resets=("events",), reset_token="r-1", export_time="202612010100")
    assert applied.outcome == Outcome.already_committed
    assert [(m["exportTime"], m["reset"]) for m in committed(dest)] == [("202612010300", False), ("202612010600", True)]


def test_missing_source_fails_with_the_uri(tmp_path: Path) -> None:
    flow = flow_yaml(tmp_path, source=tmp_path / "nope", dest=tmp_path / "dest")
    [result] = run(flow, T0)
    assert result.outcome == Outcome.failed
    assert "nope" in result.message


def test_run_before_the_first_slot_names_it(tmp_path: Path, src: Path) -> None:
    flow = flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")
    [result] = run(flow, dt.datetime(2026, 10, 1, tzinfo=dt.UTC))
    assert result.outcome == Outcome.failed
    assert "first slot is 2026-11-01T00:00Z" in result.message


def test_json_source_and_csv_source(tmp_path: Path) -> None:
    src = tmp_path / "json-lake"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(json.dumps({"_id": i, "v": f"x{i}"}) for i in range(10)) + "\n")
    dest = tmp_path / "dest"
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest, source_format="json"), T0)
    assert (result.outcome, result.records) == (Outcome.exported, 10)
    csv_src = tmp_path / "csv-lake"
    csv_src.mkdir()
    (csv_src / "a.csv").write_text("_id,v\n" + "".join(f"{i},y{i}\n" for i in range(5)))
    dest2 = tmp_path / "dest2"
    [result2] = run(flow_yaml(tmp_path, source=csv_src, dest=dest2, source_format="csv"), T0)
    assert (result2.outcome, result2.records) == (Outcome.exported, 5)
    assert sorted(read_committed_ids(dest2)) == list(range(5))


def test_schema_evolution_across_files_is_unified(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    src.mkdir()
    pq.write_table(pa.table({"_id": pa.array([1, 2], pa.int32())}), src / "a.parquet")
    pq.write_table(pa.table({"_id": pa.array([3], pa.int64()), "added": ["x"]}), src / "b.parquet")
    dest = tmp_path / "dest"
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    assert result.outcome == Outcome.exported, result.message
    [manifest] = committed(dest)
    assert [(f["name"], f["type"]) for f in manifest["schema"]["fields"]] == [("_id", "int64"), ("added", "string")]
    assert sorted(read_committed_ids(dest)) == [1, 2, 3]


def test_an_older_committed_slot_is_reported_as_committed(tmp_path: Path, src: Path) -> None:
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    run(flow, T0)
    sample.write_files(src, files=1, rows_per_file=10, seed=3, start=START, id_offset=50_000)
    [later] = run(flow, T0 + dt.timedelta(days=1))  # a second commit, so that T0's slot is not the latest
    assert later.outcome == Outcome.exported
    [again] = run(flow, T0)
    assert again.outcome == Outcome.already_committed
    assert again.message == "exportTime 202612010000 is already committed; a later slot exports what is new"
    assert [m["sequence"] for m in committed(dest)] == [1, 2]
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))  # the older commit's data is still there


def test_many_small_source_files_make_few_row_groups(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    src.mkdir()
    for i in range(300):
        pq.write_table(pa.table({"_id": [2 * i, 2 * i + 1]}), src / f"f-{i:04d}.parquet")
    dest = tmp_path / "dest"
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    assert result.records == 600
    [part] = (dest / "out" / "events" / "exportTime=202612010000").glob("part-*.parquet")
    assert pq.ParquetFile(part).metadata.num_row_groups == 1
    assert sorted(read_committed_ids(dest)) == list(range(600))
