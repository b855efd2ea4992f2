"""The byte-copy fast path, end to end on a local folder: which files it takes, what it writes (the source's own
bytes, counted and hashed), what the manifest says, and that everything else is re-encoded file by file with the
same result a reader sees, and fails cleanly."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from examples import sample
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids
from tests.helpers import run_local as run

from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import Outcome, bytecopy, writers
from dsexport.engine.manifest import PartEntry, parse
from dsexport.engine.writers import Hashed
from dsexport.errors import SourceError, StateError

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # slot 202612010000 of the helper's 3-hourly schedule
SLOT = Path("out/events/exportTime=202612010000")
BIG_ROWS = 20_000  # about 1.3 MB of sample events: above MIN_COPY_BYTES


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_files_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let files of any size be copied, so a test can use a few rows a file."""
    monkeypatch.setattr(bytecopy, "MIN_COPY_BYTES", 0)


def table(ids: range, **extra: pa.Array) -> pa.Table:
    return pa.table({"_id": pa.array(ids, pa.int64()), "v": pa.array([f"v{i}" for i in ids]), **extra})


def write_log(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The fields of the write phase's log line."""
    [record] = [r for r in caplog.records if getattr(r, "fields", {}).get("phase") == "write"]
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    return fields


def with_format(flow: Path, **fmt: object) -> Path:
    """``flow`` with these keys added to the Destination's format block."""
    docs = list(yaml.safe_load_all(flow.read_text()))
    for doc in docs:
        if doc["kind"] == "Destination":
            doc["spec"]["format"].update(fmt)
    flow.write_text(yaml.safe_dump_all(docs))
    return flow


def test_eligible_files_are_exported_as_their_own_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=3, rows_per_file=BIG_ROWS, seed=1, start=START)
    caplog.set_level(logging.INFO, logger="dsexport")

    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0)

    assert (result.outcome, result.records, result.files) == (Outcome.exported, 3 * BIG_ROWS, 3), result.message
    [manifest] = committed(dest)
    sources = sorted(src.glob("*.parquet"))
    assert [f["via"] for f in manifest["files"]] == ["copy"] * 3
    assert [f["source"] for f in manifest["files"]] == [p.name for p in sources]
    for entry, source in zip(manifest["files"], sources, strict=True):
        part = dest / SLOT / entry["path"]
        assert part.read_bytes() == source.read_bytes()
        assert (entry["bytes"], entry["sha256"]) == (source.stat().st_size, sha256(source))
        assert entry["records"] == pq.ParquetFile(source).metadata.num_rows == BIG_ROWS
    assert [f["path"] for f in manifest["files"]] == [f"part-0000{i}-{manifest['runId']}.parquet" for i in range(3)]
    assert Counter(read_committed_ids(dest)) == Counter(source_ids(src))
    logged = write_log(caplog)
    assert (logged["copiedFiles"], logged["encodedFiles"], logged["encodeReasons"]) == (3, 0, "")


def test_a_reader_sees_the_same_export_whichever_path_made_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's schema, records and format, and the rows read back, are the re-encoding path's."""
    src = tmp_path / "lake"
    sample.write_files(src, files=2, rows_per_file=BIG_ROWS, seed=2, start=START)
    (tmp_path / "copy").mkdir()
    (tmp_path / "encode").mkdir()
    [copied] = run(flow_yaml(tmp_path / "copy", source=src, dest=tmp_path / "copy" / "dest"), T0)
    flow = flow_yaml(tmp_path / "encode", source=src, dest=tmp_path / "encode" / "dest", byte_copy=False)
    [encoded] = run(flow, T0)

    [by_copy] = committed(tmp_path / "copy" / "dest")
    [by_encoding] = committed(tmp_path / "encode" / "dest")
    assert {f["via"] for f in by_copy["files"]} == {"copy"}
    assert {f["via"] for f in by_encoding["files"]} == {"encode"}
    for key in ("schema", "records", "format", "state", "watermark", "sourceFiles"):
        assert by_copy[key] == by_encoding[key], key
    assert copied.records == encoded.records

    def rows(dest: Path) -> pa.Table:
        return pa.concat_tables(pq.read_table(p) for p in sorted((dest / SLOT).glob("part-*"))).sort_by("_id")

    assert rows(tmp_path / "copy" / "dest").equals(rows(tmp_path / "encode" / "dest"), check_metadata=False)


def _zstd(src: Path) -> None:
    pq.write_table(table(range(100, 200)), src / "b.parquet", compression="zstd")


def _one_column_zstd(src: Path) -> None:
    pq.write_table(table(range(100, 200)), src / "b.parquet", compression={"_id": "zstd", "v": "snappy"})


def _decimal_as_integer(src: Path) -> None:
    """Same Arrow schema as the other files, other Parquet types: a reader other than Arrow could tell."""
    d = pa.array([decimal.Decimal(i) / 4 for i in range(100, 200)], pa.decimal128(9, 2))
    pq.write_table(table(range(100, 200), d=d), src / "b.parquet", store_decimal_as_integer=True)


def _int96(src: Path) -> None:
    ts = pa.array(range(100, 200), pa.timestamp("ns"))
    pq.write_table(table(range(100, 200), t=ts), src / "b.parquet", use_deprecated_int96_timestamps=True)


def _too_many_records(src: Path) -> None:
    pq.write_table(table(range(100, 400)), src / "b.parquet")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_zstd, "codec"),
        (_one_column_zstd, "codec"),
        (_decimal_as_integer, "parquetTypes"),
        (_int96, "parquetTypes"),
        (_too_many_records, "maxRecordsPerFile"),
    ],
)
def test_a_file_the_fast_path_cannot_take_is_re_encoded_and_the_others_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make: Any, reason: str
) -> None:
    """File b fails one condition: it alone is re-encoded, into the part after the copies of a and c."""
    small_files_copy(monkeypatch)
    caplog.set_level(logging.INFO, logger="dsexport")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    make(src)
    b = pq.read_table(src / "b.parquet")
    extra = {name: b.column(name).slice(0, 100).combine_chunks() for name in b.column_names[2:]}
    pq.write_table(table(range(100), **extra), src / "a.parquet")
    pq.write_table(table(range(400, 500), **extra), src / "c.parquet")
    flow = flow_yaml(tmp_path, source=src, dest=dest, max_records=250)

    [result] = run(flow, T0)

    assert result.outcome == Outcome.exported, result.message
    [manifest] = committed(dest)
    assert [(f["via"], f.get("source")) for f in manifest["files"]] == [
        ("copy", "a.parquet"),
        ("copy", "c.parquet"),
        *[("encode", None)] * (len(manifest["files"]) - 2),
    ]
    names = [f"part-{i:05d}-{manifest['runId']}.parquet" for i in range(len(manifest["files"]))]
    assert [f["path"] for f in manifest["files"]] == names  # the encoded parts are numbered after the copies
    assert write_log(caplog)["encodeReasons"] == f"{reason}:1"
    assert Counter(read_committed_ids(dest)) == Counter(source_ids(src))


def test_a_file_larger_than_max_file_size_is_re_encoded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dsexport")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=2, rows_per_file=BIG_ROWS, seed=3, start=START)
    [result] = run(with_format(flow_yaml(tmp_path, source=src, dest=dest), maxFileSize="1Mi"), T0)
    assert result.outcome == Outcome.exported, result.message
    assert {f["via"] for f in committed(dest)[0]["files"]} == {"encode"}
    assert write_log(caplog)["encodeReasons"] == "maxFileSize:2"


def test_small_files_are_coalesced_by_re_encoding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One part per small file would make a lake of small files as many small parts at the destination."""
    caplog.set_level(logging.INFO, logger="dsexport")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=2, rows_per_file=BIG_ROWS, seed=4, start=START)
    next_id = 10 * BIG_ROWS
    sample.write_files(src, files=5, rows_per_file=100, seed=5, start=START, id_offset=next_id)
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    assert (result.outcome, result.files) == (Outcome.exported, 3), result.message
    files = committed(dest)[0]["files"]
    assert [(f["via"], f["records"]) for f in files] == [("copy", BIG_ROWS), ("copy", BIG_ROWS), ("encode", 500)]
    assert write_log(caplog)["encodeReasons"] == "small:5"
    assert Counter(read_committed_ids(dest)) == Counter(source_ids(src))


def test_files_that_differ_from_the_unified_schema_are_re_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A column added over time: the new files have the dataset's schema and are copied; the older ones, which
    lack the column, are re-encoded with it (null), so every part has the manifest's one schema."""
    small_files_copy(monkeypatch)
    caplog.set_level(logging.INFO, logger="dsexport")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    pq.write_table(table(range(100)), src / "a.parquet")
    pq.write_table(table(range(100, 200), added=pa.array(["x"] * 100)), src / "b.parquet")
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    assert result.outcome == Outcome.exported, result.message
    [manifest] = committed(dest)
    assert [(f["via"], f.get("source")) for f in manifest["files"]] == [("copy", "b.parquet"), ("encode", None)]
    assert [f["name"] for f in manifest["schema"]["fields"]] == ["_id", "v", "added"]
    for entry in manifest["files"]:
        assert pq.read_schema(dest / SLOT / entry["path"]).names == ["_id", "v", "added"]
    assert write_log(caplog)["encodeReasons"] == "schema:1"


def test_schema_metadata_does_not_stop_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers such as pandas store per-file metadata (its index range): not part of the data's schema."""
    small_files_copy(monkeypatch)
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    for i in range(3):
        t = table(range(i * 100, (i + 1) * 100)).replace_schema_metadata({"writer": f"file {i}"})
        pq.write_table(t, src / f"f{i}.parquet")
    run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    assert [f["via"] for f in committed(dest)[0]["files"]] == ["copy"] * 3


@pytest.mark.parametrize(("compression", "source_compression"), [("none", "none"), ("zstd", "zstd"), ("gzip", "gzip")])
def test_the_codec_must_match_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str, source_compression: str
) -> None:
    """``compression: none`` is a Parquet footer's UNCOMPRESSED."""
    small_files_copy(monkeypatch)
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    pq.write_table(table(range(100)), src / "a.parquet", compression=source_compression)
    pq.write_table(table(range(100, 200)), src / "b.parquet", compression="snappy")
    run(flow_yaml(tmp_path, source=src, dest=dest, compression=compression), T0)
    assert [(f["via"], f.get("source")) for f in committed(dest)[0]["files"]] == [
        ("copy", "a.parquet"),
        ("encode", None),
    ]


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"fmt": "json"}, "format"),
        ({"strategy": "column", "column": "_id"}, "rowFilter"),
    ],
)
def test_runs_that_transform_rows_re_encode_every_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, Any],
    reason: str,
) -> None:
    """NDJSON is another format; the column strategy filters rows (and drops null cursors) and tracks a maximum."""
    small_files_copy(monkeypatch)
    caplog.set_level(logging.INFO, logger="dsexport")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    pq.write_table(table(range(100)), src / "a.parquet")
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest, **settings), T0)
    assert (result.outcome, result.records) == (Outcome.exported, 100), result.message
    assert {f["via"] for f in committed(dest)[0]["files"]} == {"encode"}
    assert write_log(caplog)["encodeReasons"] == f"{reason}:1"


def test_incremental_and_full_runs_copy_what_they_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_files_copy(monkeypatch)
    src = tmp_path / "lake"
    src.mkdir()
    pq.write_table(table(range(100)), src / "a.parquet")
    incremental = flow_yaml(tmp_path, source=src, dest=tmp_path / "inc")
    [first] = run(incremental, T0)
    pq.write_table(table(range(100, 150)), src / "b.parquet")
    [second] = run(incremental, T0 + dt.timedelta(hours=3))
    assert (first.records, second.records) == (100, 50)
    assert [[(f["via"], f["source"]) for f in m["files"]] for m in committed(tmp_path / "inc")] == [
        [("copy", "a.parquet")],
        [("copy", "b.parquet")],
    ]
    (tmp_path / "full").mkdir()
    full = flow_yaml(tmp_path / "full", source=src, dest=tmp_path / "full-dest", mode="full")
    run(full, T0)
    run(full, T0 + dt.timedelta(hours=3))
    assert [[f["source"] for f in m["files"]] for m in committed(tmp_path / "full-dest")] == [
        ["a.parquet", "b.parquet"]
    ] * 2


def test_a_file_read_in_many_chunks_is_copied_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bytecopy, "COPY_CHUNK", 4096)
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=3, rows_per_file=BIG_ROWS, seed=6, start=START)
    run(flow_yaml(tmp_path, source=src, dest=dest), T0)
    [manifest] = committed(dest)
    assert [f["sha256"] for f in manifest["files"]] == [sha256(p) for p in sorted(src.glob("*.parquet"))]


def _after_planning(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Run ``change`` once the fast path has checked every file, before it copies the first."""
    copies = bytecopy.Plan.copies

    def checked_then_change(self: bytecopy.Plan) -> Iterator[bytecopy.CopyFile]:
        checked = list(copies(self))
        change()
        yield from checked

    monkeypatch.setattr(bytecopy.Plan, "copies", checked_then_change)


def test_a_file_replaced_after_it_was_checked_fails_the_run_transiently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy must be of the file whose footer was checked; a retry lists and checks the new one."""
    small_files_copy(monkeypatch)
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    for i in range(4):
        pq.write_table(table(range(i * 100, (i + 1) * 100)), src / f"f{i}.parquet")
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    _after_planning(monkeypatch, lambda: pq.write_table(table(range(1000, 1300)), src / "f2.parquet"))

    [failed] = run(flow, T0)

    assert (failed.outcome, failed.reason, failed.transient) == (Outcome.failed, "SourceFailed", True)
    assert "source file f2.parquet changed while it was exported" in failed.message
    assert committed(dest) == []
    monkeypatch.undo()
    [retried] = run(flow, T0)
    assert (retried.outcome, retried.records) == (Outcome.exported, 600), retried.message
    assert Counter(read_committed_ids(dest)) == Counter(source_ids(src))
    assert_only_committed_files(dest)


def test_a_file_gone_before_it_is_copied_fails_the_run_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_files_copy(monkeypatch)
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    for i in range(4):
        pq.write_table(table(range(i * 100, (i + 1) * 100)), src / f"f{i}.parquet")
    _after_planning(monkeypatch, (src / "f1.parquet").unlink)

    [failed] = run(flow_yaml(tmp_path, source=src, dest=dest), T0)

    assert (failed.outcome, failed.reason, failed.transient) == (Outcome.failed, "SourceFailed", False)
    assert failed.message.startswith("cannot read source file f1.parquet: ")
    assert committed(dest) == []
    slot = dest / SLOT
    assert not [p.name for p in slot.iterdir() if p.name.startswith(".")], "no temporary file may remain"


# ------------------------------------------------------------------------------------------- the pieces


def test_copy_part_refuses_a_source_of_another_length_and_leaves_no_file(tmp_path: Path) -> None:
    transport = FilesystemTransport(tmp_path)
    with pytest.raises(SourceError, match="changed while it was exported") as raised:
        writers.copy_part(
            iter([b"abc", b"def", Hashed(lambda: "0" * 64)]),
            origin="a.parquet",
            size=7,
            records=1,
            transport=transport,
            folder="slot",
            name="part-00000-r.parquet",
        )
    assert raised.value.transient
    assert list((tmp_path / "slot").iterdir()) == []


def test_copy_part_writes_the_bytes_and_takes_the_readers_hash(tmp_path: Path) -> None:
    part = writers.copy_part(
        iter([b"abc", b"def", Hashed(hashlib.sha256(b"abcdef").hexdigest)]),
        origin="a.parquet",
        size=6,
        records=3,
        transport=FilesystemTransport(tmp_path),
        folder="slot",
        name="part-00000-r.parquet",
    )
    assert (tmp_path / "slot" / part.path).read_bytes() == b"abcdef"
    assert (part.via, part.source, part.bytes, part.records) == ("copy", "a.parquet", 6, 3)
    assert part.sha256 == hashlib.sha256(b"abcdef").hexdigest()


def _manifest_with(files: list[dict[str, Any]]) -> bytes:
    doc = {
        "version": 2,
        "datasetExport": "flow",
        "dataset": "events",
        "datasetId": "events",
        "exportTime": "202612010000",
        "runId": "r",
        "sequence": 1,
        "mode": "incremental",
        "backfill": True,
        "reset": False,
        "createdAt": "2026-12-01T00:00:00Z",
        "format": {"type": "parquet", "compression": "snappy"},
        "records": sum(f["records"] for f in files),
        "bytes": sum(f["bytes"] for f in files),
        "files": files,
        "watermark": {"strategy": "files", "from": None, "to": "x"},
        "state": {"strategy": "files", "maxModifiedNs": 1, "maxModified": "x"},
        "schema": {"fields": [], "arrow": ""},
    }
    return json.dumps(doc).encode()


ENTRY = {"path": "part-00000-r.parquet", "records": 1, "bytes": 2, "sha256": "0" * 64}


def test_a_manifest_from_before_the_fast_path_reads_as_encoded_parts() -> None:
    manifest = parse(_manifest_with([ENTRY]), path="m", dataset_id="events", export_time="202612010000")
    assert manifest.files == [PartEntry(path=ENTRY["path"], records=1, bytes=2, sha256="0" * 64, via="encode")]
    assert manifest.to_json_dict()["files"][0] == {**ENTRY, "via": "encode"}


@pytest.mark.parametrize(
    "entry",
    [
        {**ENTRY, "via": "copy"},
        {**ENTRY, "via": "encode", "source": "a.parquet"},
        {**ENTRY, "via": "move"},
        {**ENTRY, "via": "server-copy", "source": "a.parquet"},  # no entity tag
        {**ENTRY, "via": "copy", "source": "a.parquet", "etag": "abc"},  # a tag only a copy in the store has
        {**ENTRY, "sha256": None},  # only the store may have left it out
        {**ENTRY, "via": "copy", "source": "a.parquet", "sha256": None},
    ],
)
def test_a_part_entry_must_say_consistently_how_it_was_made(entry: dict[str, Any]) -> None:
    with pytest.raises(StateError, match="is not a valid dsexport manifest"):
        parse(_manifest_with([entry]), path="m", dataset_id="events", export_time="202612010000")


@pytest.mark.parametrize(
    "entry",
    [
        {**ENTRY, "via": "copy", "source": "lake/a.parquet"},
        {**ENTRY, "via": "server-copy", "source": "lake/a.parquet", "etag": "9b2cf535f27731c974343645a3985328"},
        {**ENTRY, "via": "server-copy", "source": "lake/a.parquet", "etag": "9b2c-2", "sha256": None},
    ],
)
def test_a_copied_part_entry_round_trips(entry: dict[str, Any]) -> None:
    manifest = parse(_manifest_with([entry]), path="m", dataset_id="events", export_time="202612010000")
    assert manifest.to_json_dict()["files"] == [entry]
