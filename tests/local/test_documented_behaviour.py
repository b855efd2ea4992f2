"""One test per documented behaviour that no other test pinned down (issue 15, item 2): each fails if the
behaviour is deleted from the code. docs/design.md is the specification; the test names say which rule.

Every test runs whole exports in this process against a local folder, as ``dsexport run`` would, and reads the
result back from the destination.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from examples import sample
from tests.helpers import (
    START,
    assert_only_committed_files,
    committed,
    flow_yaml,
    read_committed_ids,
    source_ids,
)
from tests.helpers import run_local as run

from dsexport.cli import main
from dsexport.engine import DatasetResult, Outcome

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # slot 202612010000 of the helper's 3-hourly schedule
H = dt.timedelta(hours=1)
SLOT0, SLOT3 = "202612010000", "202612010300"
MINUTE_NS = 60 * 10**9

Docs = list[dict[str, Any]]


# ------------------------------------------------------------------------------------------------ helpers


def edit(flow: Path, change: Callable[[Docs], None]) -> Path:
    """``flow`` with its documents changed in place by ``change``."""
    docs: Docs = list(yaml.safe_load_all(flow.read_text()))
    change(docs)
    flow.write_text(yaml.safe_dump_all(docs))
    return flow


def kind(docs: Docs, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == name]
    return doc


def with_format(flow: Path, **fmt: object) -> Path:
    return edit(flow, lambda docs: kind(docs, "Destination")["spec"]["format"].update(fmt))


def slot_dir(dest: Path, slot: str, dataset_id: str = "events", folder: str = "out") -> Path:
    return dest / folder / dataset_id / f"exportTime={slot}"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what a run that must not write anything must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_ids(path: Path, ids: range, **columns: pa.Array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"_id": pa.array(ids, pa.int64()), **columns}), path)
    return path


def set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


def exported(result: DatasetResult) -> DatasetResult:
    assert result.outcome == Outcome.exported, result.message
    return result


# ------------------------------------------------------------- the folder of another DatasetExport is refused


def test_a_folder_another_dataset_export_committed_to_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """design.md, Decide: "The latest commit belongs to another DatasetExport: refused; two DatasetExports sharing
    a folder would share a watermark." The refusal holds even with new data to export, writes nothing, and is
    permanent (the spec must change); another datasetId in the same folder is the fix the message gives."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    next_id = sample.write_files(src, files=2, rows_per_file=200, seed=1, start=START)
    owner = flow_yaml(tmp_path, source=src, dest=dest)
    exported(run(owner, T0)[0])
    sample.write_files(src, files=1, rows_per_file=50, seed=2, start=START, id_offset=next_id)
    before = tree(dest)

    (tmp_path / "intruder").mkdir()
    intruder = edit(
        flow_yaml(tmp_path / "intruder", source=src, dest=dest),
        lambda docs: kind(docs, "DatasetExport")["metadata"].update(name="intruder"),
    )
    [refused] = run(intruder, T0 + 3 * H)
    assert (refused.outcome, refused.reason, refused.transient) == (Outcome.failed, "DestinationStateRefused", False)
    assert refused.message.endswith(
        "out/events: the folder is already used by DatasetExport 'flow'; give this export another folder or datasetId"
    )
    assert tree(dest) == before, "a refused run must not write, clean or delete anything"

    # The owner goes on from its own watermark: only the new file.
    assert exported(run(owner, T0 + 3 * H)[0]).records == 50
    # With a datasetId of its own, the other DatasetExport has a folder (and a watermark) of its own.
    edit(intruder, lambda docs: kind(docs, "Dataset")["spec"].update(datasetId="events-intruder"))
    assert exported(run(intruder, T0 + 3 * H)[0]).records == 450
    assert [m["datasetExport"] for m in committed(dest, dataset_id="events-intruder")] == ["intruder"]
    assert [m["datasetExport"] for m in committed(dest)] == ["flow", "flow"]


# ----------------------------------------------------------------------------------- maxFileSize rolls parts


def random_ints(path: Path, start: int, rows: int, *, row_group: int) -> None:
    """Rows whose random half no codec shrinks (about 9 bytes each once encoded), so sizes follow row counts."""
    rng = np.random.default_rng(start)
    table = pa.table(
        {"_id": pa.array(np.arange(start, start + rows, dtype=np.int64)), "v": rng.integers(0, 2**62, rows)}
    )
    pq.write_table(table, path, row_group_size=row_group)


def row_group_spans(path: Path) -> list[tuple[int, int]]:
    """(start offset, end offset) of each row group of a Parquet file, in file order."""
    meta = pq.ParquetFile(path).metadata
    spans = []
    for i in range(meta.num_row_groups):
        columns = [meta.row_group(i).column(c) for c in range(meta.num_columns)]
        start = min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in columns)
        spans.append((start, start + sum(c.total_compressed_size for c in columns)))
    return spans


def test_parquet_parts_roll_at_max_file_size(tmp_path: Path) -> None:
    """design.md, Write parts: "A new part starts after ... maxFileSize bytes (checked after each batch, so a part
    may exceed it by one batch)". The encoder writes whole row groups, so a part ends with the first row group that
    takes it to the limit: what it held before that row group is under the limit, and with it, at or above."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    for i in range(4):
        random_ints(src / f"f{i}.parquet", i * 200_000, 200_000, row_group=40_000)
    limit = 2 * 2**20
    flow = with_format(flow_yaml(tmp_path, source=src, dest=dest, compression="zstd"), maxFileSize="2Mi")
    result = exported(run(flow, T0)[0])

    [manifest] = committed(dest)
    parts = [slot_dir(dest, SLOT0) / f["path"] for f in manifest["files"]]
    assert len(parts) >= 3 and result.files == len(parts)
    for i, part in enumerate(parts):
        spans = row_group_spans(part)
        assert spans[-1][0] < limit, f"{part.name} went on past the limit for a whole row group"
        if i < len(parts) - 1:
            assert spans[-1][1] >= limit, f"{part.name} was closed before reaching the limit"
    assert [f["via"] for f in manifest["files"]] == ["encode"] * len(parts)
    assert sorted(read_committed_ids(dest)) == list(range(800_000))  # every row once, each part as its manifest says


def test_json_parts_roll_at_max_file_size_after_whole_batches(tmp_path: Path) -> None:
    """The same rule for NDJSON, where every line here has the same length: a source row group is one batch, so a
    part holds the fewest whole batches that reach the limit, and less than that plus one batch."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    batch_rows, files, rows_per_file = 10_000, 3, 60_000
    for f in range(files):
        ids = range(10**7 + f * rows_per_file, 10**7 + (f + 1) * rows_per_file)  # as many digits in every id
        src.mkdir(exist_ok=True)
        table = pa.table({"_id": pa.array(ids, pa.int64()), "v": pa.array([f"value-{i:034d}" for i in ids])})
        pq.write_table(table, src / f"f{f}.parquet", row_group_size=batch_rows)
    limit = 2**20
    flow = with_format(flow_yaml(tmp_path, source=src, dest=dest, fmt="json"), maxFileSize=limit)
    exported(run(flow, T0)[0])

    [manifest] = committed(dest)
    entries = manifest["files"]
    line = entries[0]["bytes"] // entries[0]["records"]
    batch_bytes = batch_rows * line
    per_part = math.ceil(limit / batch_bytes) * batch_rows
    assert 1 < per_part // batch_rows < files * rows_per_file // batch_rows  # the limit falls between batches
    assert [e["records"] for e in entries[:-1]] == [per_part] * (len(entries) - 1)
    for e in entries:
        text = (slot_dir(dest, SLOT0) / e["path"]).read_bytes()
        assert {len(x) + 1 for x in text.splitlines()} == {line}
        assert e["bytes"] - batch_bytes < limit
    assert all(e["bytes"] >= limit for e in entries[:-1])
    assert sorted(read_committed_ids(dest)) == list(range(10**7, 10**7 + files * rows_per_file))


# --------------------------------------------------------------------- `_` and `.` source names are ignored


def test_source_files_and_folders_named_with_underscore_or_dot_are_ignored(tmp_path: Path) -> None:
    """design.md, Selecting new data: "names starting with _ or . (markers, writers' temporary files) and files
    without the format's extension are ignored", at any depth, and whatever their content."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    write_ids(src / "a.parquet", range(0, 10))
    write_ids(src / "date=2026-12-01" / "b.parquet", range(10, 20))
    hidden = {
        "_tmp.parquet": range(100, 110),
        ".c.parquet": range(110, 120),
        "_temporary/0/task/d.parquet": range(120, 130),
        ".hidden/e.parquet": range(130, 140),
        "date=2026-12-01/_f.parquet": range(140, 150),
        "date=2026-12-01/.g.parquet": range(150, 160),
        "date=2026-12-01/_delta/h.parquet": range(160, 170),
    }
    for name, ids in hidden.items():
        write_ids(src / name, ids)  # valid data files: only their names keep them out
    (src / "_SUCCESS").write_bytes(b"")
    (src / "notes.txt").write_text("not data")
    flow = flow_yaml(tmp_path, source=src, dest=dest)

    assert exported(run(flow, T0)[0]).records == 20
    assert sorted(read_committed_ids(dest)) == list(range(20))
    assert sorted(committed(dest)[0]["sourceFiles"]) == ["a.parquet", "date=2026-12-01/b.parquet"]
    # Hidden files that appear later are not new data either.
    write_ids(src / "_late.parquet", range(200, 210))
    write_ids(src / ".staging" / "i.parquet", range(210, 220))
    [later] = run(flow, T0 + 3 * H)
    assert later.outcome == Outcome.no_new_data, later.message


# -------------------------------------------------------------------- rows with a null cursor never go out


def cursor_file(path: Path, ids: range, cursors: list[int | None]) -> None:
    write_ids(path, ids, ingested=pa.array(cursors, pa.int64()))


def test_rows_with_a_null_cursor_are_never_exported(tmp_path: Path) -> None:
    """design.md, strategy column: "rows with a null cursor are never exported", by the backfill, by later runs,
    by a reset and by mode full alike; a backfill that finds only nulls commits no row and no cursor."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    cursor_file(src / "a.parquet", range(0, 4), [None, None, None, None])
    flow = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="ingested")
    first = exported(run(flow, T0)[0])
    assert (first.records, committed(dest)[0]["state"].get("value")) == (0, None)

    cursor_file(src / "b.parquet", range(10, 16), [5, None, 7, None, 7, 1])
    assert exported(run(flow, T0 + 3 * H)[0]).records == 4
    cursor_file(src / "c.parquet", range(20, 24), [None, 9, None, 8])
    assert exported(run(flow, T0 + 6 * H)[0]).records == 2
    assert sorted(read_committed_ids(dest)) == [10, 12, 14, 15, 21, 23]
    assert committed(dest)[-1]["state"]["value"] == 9

    [reset] = run(flow, T0 + 9 * H, resets=("events",))
    assert (exported(reset).records, reset.message) == (6, "full backfill (reset)")
    assert sorted(read_committed_ids(dest)) == sorted([10, 12, 14, 15, 21, 23] * 2)

    full_dest = tmp_path / "full"
    (tmp_path / "full-flow").mkdir()
    full = flow_yaml(
        tmp_path / "full-flow", source=src, dest=full_dest, strategy="column", column="ingested", mode="full"
    )
    for k in range(2):
        assert exported(run(full, T0 + 3 * k * H)[0]).records == 6
    assert sorted(read_committed_ids(full_dest)) == sorted([10, 12, 14, 15, 21, 23] * 2)


# ------------------------------------------------------------ temporary files in a committed folder are removed


def test_a_rerun_of_a_committed_slot_removes_its_temporary_files_and_keeps_its_parts(tmp_path: Path) -> None:
    """design.md, Decide: "The slot is already committed: nothing to do ...; a missing _SUCCESS is written and
    temporary files are removed." Here the marker is there: only the temporary files of a killed attempt go."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=2, rows_per_file=300, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest, max_records=250)
    first = exported(run(flow, T0)[0])
    slot = slot_dir(dest, SLOT0)
    committed_files = tree(slot)
    rid = "0123456789abcdef"  # a killed attempt's
    temporaries = [slot / f".part-00001-{rid}.parquet.tmp-4242", slot / f".part-00009-{rid}.parquet.tmp-7"]
    for t in temporaries:
        t.write_bytes(b"an interrupted write")

    [again] = run(flow, T0 + H)  # the same slot, retried
    assert (again.outcome, again.export_time) == (Outcome.already_committed, SLOT0)
    assert again.message == f"exportTime {SLOT0} is already committed; a later slot exports what is new"
    assert again.watermark == first.watermark
    assert not any(t.exists() for t in temporaries)
    assert tree(slot) == committed_files
    assert_only_committed_files(dest)
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))


# ------------------------------------------------------------------------------ an older committed slot


def test_a_run_for_an_older_committed_slot_completes_it_and_keeps_its_data(tmp_path: Path) -> None:
    """design.md, Decide: a slot that is already committed is finished (marker, temporary files), never cleaned,
    also when it is not the latest commit: recover() asks whether the slot's own folder holds a manifest, not
    only whether it is the latest. Cleaning it as a folder "behind the latest commit" would delete committed
    data. The newer commit, which holds the watermark, is left alone and the run reports it."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    next_id = sample.write_files(src, files=2, rows_per_file=300, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    exported(run(flow, T0)[0])
    next_id = sample.write_files(src, files=1, rows_per_file=40, seed=2, start=START, id_offset=next_id)
    newer = exported(run(flow, T0 + 3 * H)[0])
    assert [m["exportTime"] for m in committed(dest)] == [SLOT0, SLOT3]

    old = slot_dir(dest, SLOT0)
    (old / "_SUCCESS").unlink()  # killed between the manifest and the marker, long ago
    temporary = old / ".part-00000-0123456789abcdef.parquet.tmp-99"
    temporary.write_bytes(b"temp")
    old_files = {k: v for k, v in tree(old).items() if not k.startswith(".")}
    newer_files = tree(slot_dir(dest, SLOT3))
    sample.write_files(src, files=1, rows_per_file=25, seed=3, start=START, id_offset=next_id)  # waits for later

    [late] = run(flow, T0 + H)  # slot 202612010000 again, now behind 202612010300
    assert (late.outcome, late.export_time, late.records) == (Outcome.already_committed, SLOT0, 0)
    assert late.message == f"exportTime {SLOT0} is already committed; a later slot exports what is new"
    assert late.watermark == newer.watermark
    assert tree(old) == {**old_files, "_SUCCESS": b""}
    assert tree(slot_dir(dest, SLOT3)) == newer_files
    assert [m["sequence"] for m in committed(dest)] == [1, 2]
    assert_only_committed_files(dest)

    assert exported(run(flow, T0 + 6 * H)[0]).records == 25
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))


# ------------------------------------------------------------------------- files later than lookback


def test_a_file_that_arrives_later_than_lookback_is_not_exported(tmp_path: Path) -> None:
    """design.md, Selecting new data: a file is new "when it is younger than maxModified - lookback and not among
    those paths ... one that shows up later than that is not exported (raise lookback)". The horizon itself is
    not younger than itself; a nanosecond more is."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    write_ids(src / "a.parquet", range(0, 10))
    flow = flow_yaml(tmp_path, source=src, dest=dest, lookback="15m")
    exported(run(flow, T0)[0])
    newest = committed(dest)[0]["state"]["maxModifiedNs"]
    assert newest == (src / "a.parquet").stat().st_mtime_ns
    horizon = newest - 15 * MINUTE_NS

    arrivals = {"late.parquet": horizon - 5 * MINUTE_NS, "at-horizon.parquet": horizon, "inside.parquet": horizon + 1}
    for k, (name, mtime) in enumerate(arrivals.items()):
        set_mtime(write_ids(src / name, range(100 * (k + 1), 100 * (k + 1) + 5)), mtime)
    second = exported(run(flow, T0 + 3 * H)[0])
    assert second.records == 5
    assert committed(dest)[-1]["sourceFiles"] == ["inside.parquet"]
    [third] = run(flow, T0 + 6 * H)
    assert third.outcome == Outcome.no_new_data  # never exported later either
    assert sorted(read_committed_ids(dest)) == [*range(10), *range(300, 305)]


# ------------------------------------------------------------------------------- new files with zero rows


@pytest.mark.parametrize("source_format", ["parquet", "csv"])
def test_new_files_with_zero_rows_commit_and_move_the_watermark(tmp_path: Path, source_format: str) -> None:
    """design.md, step 4: "A run whose new files hold zero rows does commit: the watermark moves past those
    files", so the next run does not select them again."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    first, empty = src / f"a.{source_format}", src / f"empty.{source_format}"
    if source_format == "parquet":
        write_ids(first, range(5))
    else:
        first.write_text("_id\n" + "".join(f"{i}\n" for i in range(5)))
    flow = flow_yaml(tmp_path, source=src, dest=dest, source_format=source_format)
    exported(run(flow, T0)[0])
    if source_format == "parquet":
        write_ids(empty, range(0))
    else:
        empty.write_text("_id\n")
    set_mtime(empty, first.stat().st_mtime_ns + 10**9)

    second = exported(run(flow, T0 + 3 * H)[0])
    assert (second.records, second.files, second.message) == (0, 0, "incremental")
    manifest = committed(dest)[-1]
    assert (manifest["records"], manifest["files"], manifest["sourceFiles"]) == (0, [], [empty.name])
    assert manifest["state"]["maxModifiedNs"] == empty.stat().st_mtime_ns
    assert_only_committed_files(dest)
    [third] = run(flow, T0 + 6 * H)
    assert (third.outcome, third.message) == (Outcome.no_new_data, "no new files")
    assert sorted(read_committed_ids(dest)) == list(range(5))


def test_a_new_empty_ndjson_file_commits_zero_rows(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"_id": i}) + "\n" for i in range(5)))
    flow = flow_yaml(tmp_path, source=src, dest=dest, source_format="json")
    exported(run(flow, T0)[0])
    (src / "empty.jsonl").write_bytes(b"")
    second = exported(run(flow, T0 + 3 * H)[0])
    assert (second.records, committed(dest)[-1]["sourceFiles"]) == (0, ["empty.jsonl"])


# ----------------------------------------------------------------------------- null-typed columns unify


@pytest.mark.parametrize("null_first", [True, False], ids=["null-typed-file-first", "typed-file-first"])
def test_a_column_all_null_in_one_file_takes_its_type_from_the_others(tmp_path: Path, null_first: bool) -> None:
    """design.md: "their schemas are unified (new columns appear, null-typed columns of empty files take the other
    files' type ...)", whichever file is read first: Parquet files with a null-typed column (all null, or no row)
    and a file where it is a string."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    nulls = write_ids(src / "nulls.parquet", range(0, 3), v=pa.nulls(3), w=pa.array([1, 2, 3], pa.int32()))
    empty = write_ids(src / "empty.parquet", range(0), v=pa.nulls(0), w=pa.nulls(0))
    typed = write_ids(src / "typed.parquet", range(3, 5), v=pa.array(["x", None]), w=pa.array([None, 7], pa.int64()))
    base = typed.stat().st_mtime_ns
    order = [nulls, empty, typed] if null_first else [typed, empty, nulls]
    for k, path in enumerate(order):
        set_mtime(path, base + k * 10**9)  # listing (and reading) order is by modification time
    flow = flow_yaml(tmp_path, source=src, dest=dest, compression="zstd")
    assert exported(run(flow, T0)[0]).records == 5

    [manifest] = committed(dest)
    assert [(f["name"], f["type"]) for f in manifest["schema"]["fields"]] == [
        ("_id", "int64"),
        ("v", "string"),
        ("w", "int64"),
    ]
    rows = pq.read_table(slot_dir(dest, SLOT0) / manifest["files"][0]["path"]).to_pylist()
    assert sorted((r["_id"], r["v"], r["w"]) for r in rows) == [
        (0, None, 1),
        (1, None, 2),
        (2, None, 3),
        (3, "x", None),
        (4, None, 7),
    ]


def test_an_ndjson_column_null_in_one_file_takes_its_type_from_the_others(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    (src / "a.jsonl").write_text('{"_id": 1, "v": null}\n{"_id": 2, "v": null}\n')
    (src / "b.jsonl").write_text('{"_id": 3, "v": "x"}\n')
    set_mtime(src / "b.jsonl", (src / "a.jsonl").stat().st_mtime_ns + 10**9)
    flow = flow_yaml(tmp_path, source=src, dest=dest, source_format="json")
    assert exported(run(flow, T0)[0]).records == 3
    [manifest] = committed(dest)
    assert ("v", "string") in [(f["name"], f["type"]) for f in manifest["schema"]["fields"]]
    rows = pq.read_table(slot_dir(dest, SLOT0) / manifest["files"][0]["path"]).to_pylist()
    assert sorted((r["_id"], r["v"]) for r in rows) == [(1, None), (2, None), (3, "x")]


# ------------------------------------------------------------------- cursor columns of every supported type


def _ts(unit: str, tz: str | None) -> Callable[[int], pa.Scalar]:
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    base = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp())
    # Below the second, so that a unit's precision matters; whole microseconds (see the nanosecond test below).
    below = {"s": 0, "ms": 7, "us": 7, "ns": 7_000}[unit]
    return lambda k: pa.scalar((base + k * 3_661) * per_second + k * below).cast(pa.timestamp(unit, tz=tz))


_BIG = 2**62
CURSOR_TYPES: dict[str, tuple[pa.DataType, Callable[[int], Any]]] = {
    **{str(t): (t, lambda k: k) for t in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32())},
    # Above 2**53, where a float would round: the value must be kept exactly.
    "int64": (pa.int64(), lambda k: _BIG + k),
    "uint64": (pa.uint64(), lambda k: 2 * _BIG + k),
    "string": (pa.string(), lambda k: f"2026-12-01T00:00:0{k}.000001"),
    "large_string": (pa.large_string(), lambda k: f"key-{k:04d}"),
    "date32": (pa.date32(), lambda k: dt.date(2026, 12, 1) + dt.timedelta(days=k)),
}
for _unit in ("ms", "us", "ns"):
    for _tz in (None, "UTC", "Europe/Paris"):
        _type = pa.timestamp(_unit, tz=_tz)
        CURSOR_TYPES[str(_type)] = (_type, _ts(_unit, _tz))


def _cursor_column(type_: pa.DataType, make: Callable[[int], Any], levels: list[int | None]) -> pa.Array:
    values = [None if k is None else make(k) for k in levels]
    if pa.types.is_timestamp(type_):
        return pa.array([None if v is None else v.value for v in values], pa.int64()).cast(type_)
    return pa.array(values, type_)


# Levels of the cursor in the two files: ties at the first run's maximum (2), a later tie with it, rows below
# it, ties among the new maximum (4), and nulls in both.
FIRST = [1, 2, None, 2, 0]
SECOND = [2, 3, None, 4, 1, 4]


def _expected_encoding(value: pa.Scalar) -> Any:
    """What design.md promises the manifest holds: the value exactly, timestamps and dates as integers in their
    unit."""
    if pa.types.is_timestamp(value.type) or pa.types.is_date32(value.type):
        return value.cast(pa.int32() if pa.types.is_date32(value.type) else pa.int64()).as_py()
    return value.as_py()


@pytest.mark.parametrize("name", list(CURSOR_TYPES))
def test_cursor_column_of_every_type_with_ties_and_nulls(tmp_path: Path, name: str) -> None:
    """design.md, strategy column: rows whose cursor is greater than the largest value exported so far; nulls
    never; the value stored exactly. So rows tying the maximum go out together in one run, and a later row equal
    to (or below) that maximum does not (the cursor must only grow)."""
    type_, make = CURSOR_TYPES[name]
    src, dest = tmp_path / "lake", tmp_path / "dest"
    write_ids(src / "a.parquet", range(0, 5), c=_cursor_column(type_, make, FIRST))
    flow = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="c")
    assert exported(run(flow, T0)[0]).records == 4

    first_max = _cursor_column(type_, make, [2])[0]
    state = committed(dest)[0]["state"]
    assert (state["column"], state["type"], state["value"]) == ("c", str(type_), _expected_encoding(first_max))
    write_ids(src / "b.parquet", range(10, 16), c=_cursor_column(type_, make, SECOND))
    second = exported(run(flow, T0 + 3 * H)[0])
    assert second.records == 3
    assert committed(dest)[-1]["state"]["value"] == _expected_encoding(_cursor_column(type_, make, [4])[0])
    [third] = run(flow, T0 + 6 * H)
    assert (third.outcome, third.message) == (Outcome.no_new_data, "no new rows")
    assert sorted(read_committed_ids(dest)) == [0, 1, 3, 4, 11, 13, 15]
    # The column keeps its type in the parts.
    assert pq.read_schema(slot_dir(dest, SLOT3) / committed(dest)[-1]["files"][0]["path"]).field("c").type == type_


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_a_cursor_of_whole_seconds_from_csv(tmp_path: Path, tz: str | None) -> None:
    """Parquet has no second unit (it stores milliseconds); a CSV source's timestamps are timestamp[s]."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    z = "Z" if tz else ""

    def csv(rows: list[tuple[int, str | None]]) -> str:
        return "_id,c\n" + "".join(f"{i},{'' if c is None else c + z}\n" for i, c in rows)

    ties = [(0, "2026-12-01 10:00:00"), (1, "2026-12-01 10:00:05"), (2, None), (3, "2026-12-01 10:00:05")]
    (src / "a.csv").write_text(csv(ties))
    flow = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="c", source_format="csv")
    assert exported(run(flow, T0)[0]).records == 3
    state = committed(dest)[0]["state"]
    expected_type = str(pa.timestamp("s", tz=tz))
    ten_o_five = dt.datetime(2026, 12, 1, 10, 0, 5, tzinfo=dt.UTC).timestamp()
    assert (state["type"], state["value"]) == (expected_type, ten_o_five)
    (src / "b.csv").write_text(csv([(10, "2026-12-01 10:00:05"), (11, "2026-12-01 10:00:06"), (12, None)]))
    set_mtime(src / "b.csv", (src / "a.csv").stat().st_mtime_ns + 10**9)
    assert exported(run(flow, T0 + 3 * H)[0]).records == 1
    assert run(flow, T0 + 6 * H)[0].outcome == Outcome.no_new_data
    assert sorted(read_committed_ids(dest)) == [0, 1, 3, 11]


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_a_nanosecond_cursor_keeps_its_nanoseconds(tmp_path: Path, tz: str | None) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    type_ = pa.timestamp("ns", tz=tz)
    ns = 1_764_547_200_123_456_789
    write_ids(src / "a.parquet", range(3), c=pa.array([ns - 1, ns, None], pa.int64()).cast(type_))
    flow = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="c")
    assert exported(run(flow, T0)[0]).records == 2
    assert committed(dest)[0]["state"]["value"] == ns
    write_ids(src / "b.parquet", range(10, 12), c=pa.array([ns, ns + 1], pa.int64()).cast(type_))
    assert exported(run(flow, T0 + 3 * H)[0]).records == 1
    assert sorted(read_committed_ids(dest)) == [0, 1, 11]


# ------------------------------------------------------------------------------- --export and --reset


def invoke(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["run", *args, "-o", "json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def outcomes(summary: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    return [(r["datasetExport"], r["dataset"], r["outcome"], r["records"]) for r in summary["results"]]


def test_export_option_runs_only_the_named_dataset_exports(tmp_path: Path) -> None:
    """README, run options: "--export NAME (repeatable) runs only those DatasetExports"."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=1, rows_per_file=30, seed=1, start=START)

    def three_exports(docs: Docs) -> None:
        first, first_destination = kind(docs, "DatasetExport"), kind(docs, "Destination")
        for name, folder in (("second", "out2"), ("third", "out3")):
            destination = {**first_destination, "metadata": {"name": f"dest-{name}"}}
            destination["spec"] = {**destination["spec"], "folder": folder}
            spec = {**first["spec"], "destinationRef": {"name": f"dest-{name}"}}
            docs += [destination, {**first, "metadata": {"name": name}, "spec": spec}]

    flow = edit(flow_yaml(tmp_path, source=src, dest=dest), three_exports)
    code, summary = invoke("-f", str(flow), "--at", T0.isoformat(), "--export", "second")
    assert code == 0 and outcomes(summary) == [("second", "events", "exported", 30)]
    assert sorted(p.name for p in dest.iterdir()) == ["out2"]

    code, summary = invoke("-f", str(flow), "--at", T0.isoformat(), "--export", "third", "--export", "flow")
    assert code == 0
    assert sorted(outcomes(summary)) == [("flow", "events", "exported", 30), ("third", "events", "exported", 30)]
    assert sorted(p.name for p in dest.iterdir()) == ["out", "out2", "out3"]

    code, summary = invoke("-f", str(flow), "--at", (T0 + 3 * H).isoformat())  # without --export: every one
    assert code == 0 and sorted(r["datasetExport"] for r in summary["results"]) == ["flow", "second", "third"]


def test_reset_option_backfills_only_the_named_dataset(tmp_path: Path) -> None:
    """README, run options: "--reset DATASET makes that dataset's next export a full backfill" (design.md: the
    manifest records "reset": true); the other datasets of the run continue incrementally."""
    dest = tmp_path / "dest"
    sample.write_files(tmp_path / "lake", files=2, rows_per_file=40, seed=1, start=START)
    sample.write_files(tmp_path / "clicks", files=1, rows_per_file=15, seed=2, start=START)

    def two_datasets(docs: Docs) -> None:
        clicks = {**kind(docs, "Dataset"), "metadata": {"name": "clicks"}}
        clicks["spec"] = {**clicks["spec"], "source": {"uri": str(tmp_path / "clicks"), "format": "parquet"}}
        docs.append(clicks)
        kind(docs, "DatasetExport")["spec"]["datasets"].append({"name": "clicks"})

    flow = edit(flow_yaml(tmp_path, source=tmp_path / "lake", dest=dest), two_datasets)
    code, summary = invoke("-f", str(flow), "--at", T0.isoformat())
    assert code == 0 and outcomes(summary) == [("flow", "events", "exported", 80), ("flow", "clicks", "exported", 15)]

    code, summary = invoke("-f", str(flow), "--at", (T0 + 3 * H).isoformat(), "--reset", "events")
    assert code == 0
    assert outcomes(summary) == [("flow", "events", "exported", 80), ("flow", "clicks", "no-new-data", 0)]
    assert summary["results"][0]["message"] == "full backfill (reset)"
    assert [(m["reset"], m["backfill"]) for m in committed(dest)] == [(False, True), (True, True)]
    assert len(committed(dest, dataset_id="clicks")) == 1

    code, summary = invoke("-f", str(flow), "--at", (T0 + 6 * H).isoformat())  # the reset happened once
    assert code == 0 and [r["outcome"] for r in summary["results"]] == ["no-new-data", "no-new-data"]
