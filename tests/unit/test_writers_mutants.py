"""The part writer at the edges test_writers.py leaves out, found by mutation testing (docs/mutation.md): a record
limit falling inside a piece after a part ended on its size, and the byte copy's parts."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.unit.test_writers import PLAN, SCHEMA, batches, write

from dsexport.api import Format
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import writers
from dsexport.errors import SchemaError, SourceError


def part_ids(path: Path) -> list[int]:
    if path.suffix == ".parquet":
        return list(pq.read_table(path).column("id").to_pylist())
    return [json.loads(line)["id"] for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(("fmt", "size"), [("json", 40_000), ("parquet", 8_000)])
def test_a_part_ended_by_its_size_moves_where_the_next_record_limit_cuts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, size: int
) -> None:
    """700 rows end the first part on its size; the next part's record limit then falls 700 rows into the next
    1000-row piece, which is cut there (text between two lines, a row group encoded again as two)."""
    monkeypatch.setattr(writers, "ROW_GROUP_ROWS", 100)  # row groups as the batches are cut, not coalesced
    parts = write(tmp_path, [700, 2000], type=fmt, maxRecordsPerFile=1000, maxFileSize=size)
    assert [p.records for p in parts] == [700, 1000, 1000]
    ids: list[int] = []
    for p in parts:
        path = tmp_path / "slot" / p.path
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (p.bytes, p.sha256)
        assert len(part_ids(path)) == p.records
        ids += part_ids(path)
    assert ids == list(range(2700))
    if fmt == "parquet":
        groups = [pq.ParquetFile(tmp_path / "slot" / p.path).metadata for p in parts]
        assert [[m.row_group(i).num_rows for i in range(m.num_row_groups)] for m in groups] == [
            [700],
            [300, 700],
            [300, 700],
        ]


def test_ndjson_text_is_cut_between_two_lines() -> None:
    chunks = [b'{"a":1}\n{"a":2}\n', b'{"a":3}\n{"a":4}\n{"a":5}\n']
    assert writers._split_lines(chunks, 3) == ([chunks[0], b'{"a":3}\n'], [b'{"a":4}\n{"a":5}\n'])
    assert writers._split_lines(chunks, 2) == ([chunks[0]], [chunks[1]])
    assert writers._split_lines(chunks, 1) == ([b'{"a":1}\n'], [b'{"a":2}\n', chunks[1]])
    assert writers._split_lines(chunks, 5) == ([*chunks], [])
    with pytest.raises(ValueError, match="the text holds fewer than 1 more lines"):
        writers._split_lines(chunks, 6)


def pieces(data: bytes, chunk: int) -> Iterator[bytes | writers.Hashed]:
    for offset in range(0, len(data), chunk):
        yield data[offset : offset + chunk]
    yield writers.Hashed(lambda: hashlib.sha256(data).hexdigest())


def test_the_byte_copy_writes_the_file_unchanged(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    part = writers.copy_part(
        pieces(data, 1000),
        origin="in/a.parquet",
        size=len(data),
        records=12,
        transport=FilesystemTransport(tmp_path),
        folder="slot",
        name="part-00000-r1.parquet",
    )
    assert part == writers.PartFile(
        "part-00000-r1.parquet", 12, len(data), hashlib.sha256(data).hexdigest(), via="copy", source="in/a.parquet"
    )
    assert (tmp_path / "slot" / "part-00000-r1.parquet").read_bytes() == data


def test_a_source_file_that_changed_size_is_not_copied(tmp_path: Path) -> None:
    data = b"x" * 5000
    with pytest.raises(SourceError) as changed:
        writers.copy_part(
            pieces(data, 1000),
            origin="in/a.parquet",
            size=4000,
            records=1,
            transport=FilesystemTransport(tmp_path),
            folder="slot",
            name="part-00000-r1.parquet",
        )
    assert str(changed.value) == (
        "source file in/a.parquet changed while it was exported (5000 bytes, listed with 4000); "
        "source files must not change once visible"
    )
    assert changed.value.transient
    assert list((tmp_path / "slot").iterdir()) == []


def test_the_byte_copys_chunks_must_end_with_the_files_hash(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as bug:
        writers.copy_part(
            iter([b"abc"]),
            origin="in/a.parquet",
            size=3,
            records=1,
            transport=FilesystemTransport(tmp_path),
            folder="slot",
            name="part-00000-r1.parquet",
        )
    assert str(bug.value) == "the byte copy's chunks ended inside a file"


@pytest.mark.parametrize("fmt", ["parquet", "json"])
@pytest.mark.parametrize("error", [OSError("source vanished"), SourceError("source vanished", transient=True)])
def test_a_failure_inside_an_open_part_raises_it_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, error: Exception
) -> None:
    """The first batch is in the part when the source fails: the source's error comes out unchanged, and the part
    (its temporary file included) is gone."""
    monkeypatch.setattr(writers, "ROW_GROUP_ROWS", 10)  # the batch is a row group of its own, written at once

    def failing() -> Iterator[pa.RecordBatch]:
        yield from batches([100])
        time.sleep(0.2)  # the first batch is encoded and in the part by now
        raise error

    transport = FilesystemTransport(tmp_path)
    with pytest.raises(type(error), match="source vanished"):
        writers.write_parts(
            failing(),
            schema=SCHEMA,
            fmt=Format.model_validate({"type": fmt}),
            transport=transport,
            folder="slot",
            run_id="r1",
            plan=PLAN,
        )
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_batch_far_above_the_planned_bytes_is_cut_into_row_groups_of_about_that_size(tmp_path: Path) -> None:
    """A source whose batches the reader does not size: a batch over four times the plan's row group bytes is cut
    into row groups of as many rows as fit in them, so the encoders' memory stays bounded."""
    batch = next(batches([10_000]))
    per_row = batch.nbytes / batch.num_rows
    tight = dataclasses.replace(PLAN, row_group_bytes=int(per_row * 1_000))
    parts = writers.write_parts(
        iter([batch]),
        schema=SCHEMA,
        fmt=Format.model_validate({"maxRecordsPerFile": 100_000}),
        transport=FilesystemTransport(tmp_path),
        folder="slot",
        run_id="r1",
        plan=tight,
    )
    meta = pq.ParquetFile(tmp_path / "slot" / parts[0].path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1_000] * 10
    assert part_ids(tmp_path / "slot" / parts[0].path) == list(range(10_000))

    # Exactly four times the planned bytes (640,000 bytes): one row group, as the batch came.
    roomy = dataclasses.replace(PLAN, row_group_bytes=batch.nbytes // 4)
    parts = writers.write_parts(
        iter([batch]),
        schema=SCHEMA,
        fmt=Format.model_validate({"maxRecordsPerFile": 100_000}),
        transport=FilesystemTransport(tmp_path / "roomy"),
        folder="slot",
        run_id="r1",
        plan=roomy,
    )
    assert pq.ParquetFile(tmp_path / "roomy" / "slot" / parts[0].path).metadata.num_row_groups == 1


@pytest.mark.parametrize(("fmt", "size"), [("json", 40_000), ("parquet", 8_000)])
def test_the_rest_of_a_cut_piece_can_end_the_next_part_on_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, size: int
) -> None:
    """As above, but the 300 rows left of the cut piece are wide enough to pass the size limit on their own: the
    part they start ends with them, as it would have had the piece not been cut."""
    monkeypatch.setattr(writers, "ROW_GROUP_ROWS", 100)

    def text(i: int) -> str:
        wide = 1_700 <= i < 2_000
        return hashlib.sha256(str(i).encode()).hexdigest() * 8 if wide else f"row {i:08d} " * 4

    def wide_batches() -> Iterator[pa.RecordBatch]:
        for start, stop in ((0, 700), (700, 2_700)):
            ids = pa.array(range(start, stop), pa.int64())
            yield pa.record_batch([ids, pa.array([text(i) for i in range(start, stop)])], schema=SCHEMA)

    parts = writers.write_parts(
        wide_batches(),
        schema=SCHEMA,
        fmt=Format.model_validate({"type": fmt, "maxRecordsPerFile": 1_000, "maxFileSize": size}),
        transport=FilesystemTransport(tmp_path),
        folder="slot",
        run_id="r1",
        plan=PLAN,
    )
    assert [p.records for p in parts] == [700, 1_000, 300, 700]
    assert [i for p in parts for i in part_ids(tmp_path / "slot" / p.path)] == list(range(2_700))


def test_ndjson_batches_longer_than_a_slice_are_written_whole_in_order(tmp_path: Path) -> None:
    parts = write(tmp_path, [20_000, 3], type="json")
    assert [p.records for p in parts] == [20_003]
    assert part_ids(tmp_path / "slot" / parts[0].path) == list(range(20_003))


def test_gzip_parts_are_the_text_compressed_at_level_6_without_a_timestamp(tmp_path: Path) -> None:
    """mtime 0: a retried part has the same bytes, so the same sha256."""
    [gz] = write(tmp_path / "gz", [500], type="json", compression="gzip")
    [plain] = write(tmp_path / "plain", [500], type="json")
    text = (tmp_path / "plain" / "slot" / plain.path).read_bytes()
    expected = io.BytesIO()
    with gzip.GzipFile(fileobj=expected, mode="wb", compresslevel=6, mtime=0) as f:
        f.write(text)
    assert (tmp_path / "gz" / "slot" / gz.path).read_bytes() == expected.getvalue()


def test_parquet_parts_carry_column_statistics(tmp_path: Path) -> None:
    """Readers skip row groups by their min and max: the parts keep them."""
    [part] = write(tmp_path, [1_000], compression="zstd")
    column = pq.ParquetFile(tmp_path / "slot" / part.path).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert column.statistics is not None and (column.statistics.min, column.statistics.max) == (0, 999)


def test_each_format_refuses_only_what_it_cannot_hold_and_says_why_and_what_to_do() -> None:
    """An empty struct is valid NDJSON (``{}``) but not Parquet; a month-day-nano interval is neither. The
    check is the destination format's own, and its message names the column, the type, the reason and the fix."""
    empty_struct = pa.schema([("ok", pa.int64()), ("empty", pa.struct([]))])
    writers.check_schema(empty_struct, Format.model_validate({"type": "json"}))
    with pytest.raises(SchemaError) as raised:
        writers.check_schema(empty_struct, Format.model_validate({"type": "parquet"}))
    message = str(raised.value)
    assert message.startswith("column 'empty' has Arrow type struct<>, which Parquet cannot hold (")
    assert "no child field" in message  # pyarrow's own reason
    assert message.endswith("); leave the column out of the source")
