"""Part files on their own: rotation at the record and size limits, names, hashes, and nothing left on failure."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsexport.api import Format
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import writers
from dsexport.errors import SchemaError

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])


def batches(sizes: list[int]) -> Iterator[pa.RecordBatch]:
    start = 0
    for n in sizes:
        ids = pa.array(range(start, start + n), pa.int64())
        yield pa.record_batch([ids, pa.array([f"row {i:08d} " * 4 for i in range(start, start + n)])], schema=SCHEMA)
        start += n


def write(tmp_path: Path, sizes: list[int], **fmt: object) -> list[writers.PartFile]:
    return writers.write_parts(
        batches(sizes),
        schema=SCHEMA,
        fmt=Format.model_validate(fmt),
        transport=FilesystemTransport(tmp_path),
        folder="slot",
        run_id="r1",
    )


def test_parts_roll_at_exactly_max_records_across_batch_boundaries(tmp_path: Path) -> None:
    parts = write(tmp_path, [700, 700, 700, 50], maxRecordsPerFile=1000)
    assert [p.records for p in parts] == [1000, 1000, 150]
    assert [p.path for p in parts] == [f"part-0000{i}-r1.parquet" for i in range(3)]
    ids: list[int] = []
    for p in parts:
        data = (tmp_path / "slot" / p.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (p.bytes, p.sha256)
        ids += pq.read_table(tmp_path / "slot" / p.path).column("id").to_pylist()
    assert ids == list(range(2150))


def test_parts_roll_after_max_file_size(tmp_path: Path) -> None:
    """The size check runs after each batch, so a part may exceed the limit by at most one batch."""
    parts = write(tmp_path, [2000] * 10, type="json", maxFileSize=100_000)
    assert len(parts) > 3
    assert sum(p.records for p in parts) == 20_000
    assert all(p.bytes >= 100_000 for p in parts[:-1])
    assert all(p.bytes < 100_000 + 2000 * 60 for p in parts)
    assert [p.path for p in parts] == [f"part-{i:05d}-r1.json" for i in range(len(parts))]


def test_a_failure_mid_part_leaves_no_file(tmp_path: Path) -> None:
    def failing() -> Iterator[pa.RecordBatch]:
        yield from batches([500])
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        writers.write_parts(
            failing(),
            schema=SCHEMA,
            fmt=Format.model_validate({"maxRecordsPerFile": 300}),
            transport=FilesystemTransport(tmp_path),
            folder="slot",
            run_id="r1",
        )
    # The first, full part is complete (a later run of the slot removes it); the open one left nothing behind.
    assert sorted(p.name for p in (tmp_path / "slot").iterdir()) == ["part-00000-r1.parquet"]


@pytest.mark.parametrize(
    ("fmt", "column_type", "expected"),
    [
        ("json", pa.month_day_nano_interval(), r"column 'bad' has Arrow type month_day_nano_interval"),
        ("parquet", pa.dense_union([pa.field("a", pa.int32())]), r"column 'bad' has Arrow type dense_union"),
    ],
)
def test_a_column_the_format_cannot_hold_is_named_before_anything_is_written(
    fmt: str, column_type: pa.DataType, expected: str
) -> None:
    schema = pa.schema([("ok", pa.int64()), ("bad", column_type)])
    with pytest.raises(SchemaError, match=expected) as raised:
        writers.check_schema(schema, Format.model_validate({"type": fmt}))
    assert raised.value.permanent
    writers.check_schema(SCHEMA, Format.model_validate({"type": fmt}))
