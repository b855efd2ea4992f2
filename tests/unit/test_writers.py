"""Part files on their own: rotation at the record and size limits, names, hashes, and nothing left on failure."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from examples import sample
from tests.helpers import SwappedPairs

from dsexport.api import Format
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import jsonenc, rowgroups, writers
from dsexport.engine.memory import DEFAULT_BUDGET, Plan
from dsexport.errors import SchemaError

PLAN = Plan.of(DEFAULT_BUDGET)

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
        plan=PLAN,
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
            plan=PLAN,
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


# ------------------------------------------------------------------------------------ encoding on several threads


def events(batches: int, rows: int, seed: int = 0) -> Iterator[pa.RecordBatch]:
    """Nested rows (the shapes the encoder spends its time on), ``batches`` batches of ``rows``."""
    table = sample.events(batches * rows, seed=seed, start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    for i in range(batches):
        yield from table.slice(i * rows, rows).to_batches(max_chunksize=rows)


EVENTS_SCHEMA = next(events(1, 1000)).schema


def write_events(
    folder: Path, fmt: dict[str, object], sizes: tuple[int, int] = (9, 7000), plan: Plan = PLAN
) -> list[writers.PartFile]:
    return writers.write_parts(
        events(*sizes),
        schema=EVENTS_SCHEMA,
        fmt=Format.model_validate(fmt),
        transport=FilesystemTransport(folder),
        folder="slot",
        run_id="r1",
        plan=plan,
    )


def row_groups(folder: Path, parts: list[writers.PartFile]) -> list[list[int]]:
    """Rows of each row group, part by part."""
    files = [pq.ParquetFile(folder / "slot" / p.path).metadata for p in parts]
    return [[meta.row_group(i).num_rows for i in range(meta.num_row_groups)] for meta in files]


def shaken(monkeypatch: pytest.MonkeyPatch) -> SwappedPairs:
    """Four threads, and of each pair of pieces encoded on them the second finishes first."""
    swapped = SwappedPairs(thread_prefix="dsexport-encode")
    monkeypatch.setattr(writers, "ENCODE_WORKERS", 4)
    monkeypatch.setattr(writers, "JSON_QUEUED", 3)
    monkeypatch.setattr(writers, "PARQUET_QUEUED", 3)
    monkeypatch.setattr(rowgroups, "encode", swapped.wrap(rowgroups.encode))
    monkeypatch.setattr(jsonenc, "ndjson_chunks", swapped.wrap(jsonenc.ndjson_chunks))
    # The last piece of a pair waits for no second one: the workers are told when no more pieces come.
    ranges, slices = writers._Parquet._ranges, writers._Json._slices
    monkeypatch.setattr(writers._Parquet, "_ranges", lambda self, *a, **k: swapped.ending(ranges(self, *a, **k)))
    monkeypatch.setattr(writers._Json, "_slices", staticmethod(lambda *a, **k: swapped.ending(slices(*a, **k))))
    return swapped


FORMATS = [
    {"type": "parquet"},
    {"type": "parquet", "compression": "zstd", "maxRecordsPerFile": 10_000},
    {"type": "parquet", "maxFileSize": 300_000},
    {"type": "parquet", "maxFileSize": 300_000, "maxRecordsPerFile": 25_000},  # size rolls move record rolls
    {"type": "json"},
    {"type": "json", "compression": "gzip", "maxRecordsPerFile": 10_000},
    {"type": "json", "maxFileSize": 2_000_000, "maxRecordsPerFile": 25_000},
]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_parts_are_the_same_bytes_whatever_the_threads_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: dict[str, object]
) -> None:
    """One thread encoding one piece at a time, and four threads with pieces finishing out of order, write the
    same parts, byte for byte: what is written depends on the rows alone."""
    with monkeypatch.context() as m:
        m.setattr(writers, "ENCODE_WORKERS", 1)
        m.setattr(writers, "JSON_QUEUED", 0)
        m.setattr(writers, "PARQUET_QUEUED", 0)
        one = write_events(tmp_path / "one", fmt)
    with monkeypatch.context() as m:
        swapped = shaken(m)
        many = write_events(tmp_path / "many", fmt)
    assert swapped.swapped > 0
    assert many == one
    for p in one:
        assert (tmp_path / "many" / "slot" / p.path).read_bytes() == (tmp_path / "one" / "slot" / p.path).read_bytes()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_parts_hold_every_row_once_in_order_within_their_limits(tmp_path: Path, fmt: dict[str, object]) -> None:
    parts = write_events(tmp_path, fmt)
    limits = Format.model_validate(fmt)
    ids: list[int] = []
    for p in parts:
        path = tmp_path / "slot" / p.path
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (p.bytes, p.sha256)
        if limits.type.value == "parquet":
            part_ids = pq.read_table(path).column("_id").to_pylist()
        else:
            text = gzip.decompress(data) if p.path.endswith(".gz") else data
            part_ids = [json.loads(line)["_id"] for line in text.splitlines()]
        assert len(part_ids) == p.records <= limits.effective_max_records
        ids += part_ids
    assert ids == list(range(9 * 7000))
    for p in parts[:-1]:  # every part but the last ended at a limit
        assert p.records == limits.effective_max_records or p.bytes >= limits.effective_max_bytes


def test_ndjson_parts_are_the_text_the_serial_writer_writes(tmp_path: Path) -> None:
    parts = write_events(tmp_path, {"type": "json", "maxRecordsPerFile": 10_000})
    expected = io.BytesIO()
    writer = jsonenc.NdjsonWriter(expected)
    for batch in events(9, 7000):
        writer.write(batch)
    assert b"".join((tmp_path / "slot" / p.path).read_bytes() for p in parts) == expected.getvalue()


def test_parquet_row_groups_are_the_batches_or_coalesced_to_the_row_group_size(tmp_path: Path) -> None:
    """Large batches are row groups of their own, small ones are coalesced, and a part's end ends a row group."""
    roomy = dataclasses.replace(PLAN, row_group_bytes=1 << 30)
    parts = write_events(tmp_path, {"type": "parquet", "maxRecordsPerFile": 100_000}, sizes=(60, 2_000), plan=roomy)
    assert row_groups(tmp_path, parts) == [[66_000, 34_000], [20_000]]


def test_parquet_row_groups_of_wide_rows_stop_at_the_planned_bytes(tmp_path: Path) -> None:
    """Coalescing stops before a row group would pass the plan's bytes: wide rows make short row groups, which
    is what bounds the encoders' memory."""
    batch_bytes = next(iter(events(1, 2_000))).nbytes
    tight = dataclasses.replace(PLAN, row_group_bytes=batch_bytes * 5 + batch_bytes // 2)
    parts = write_events(tmp_path, {"type": "parquet", "maxRecordsPerFile": 100_000}, sizes=(60, 2_000), plan=tight)
    groups = row_groups(tmp_path, parts)
    assert {g for part in groups for g in part[:-1]} == {10_000}, groups  # five batches of 2,000 rows each
    assert sum(map(sum, groups)) == 120_000


def test_memory_stays_bounded_however_long_the_stream(tmp_path: Path) -> None:
    """The Arrow memory held while writing does not grow with the number of batches: at most a few row groups
    are decoded, being encoded or waiting to be written at once."""

    def peak(batches: int) -> float:
        def stream() -> Iterator[pa.RecordBatch]:
            for i in range(batches):  # fresh buffers each time, about 1 MiB a batch
                yield pa.record_batch({f"c{j}": np.arange(i, i + 16_384, dtype=np.int64) + j for j in range(8)})

        held = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal held
            while not done.wait(0.002):
                held = max(held, pa.total_allocated_bytes())

        sampler = threading.Thread(target=sample)
        sampler.start()
        base = pa.total_allocated_bytes()
        try:
            writers.write_parts(
                stream(),
                schema=stream().__next__().schema,
                fmt=Format.model_validate({"type": "parquet", "compression": "none"}),
                transport=FilesystemTransport(tmp_path / str(batches)),
                folder="slot",
                run_id="r1",
                plan=PLAN,
            )
        finally:
            done.set()
            sampler.join()
        return float(held - base) / 2**20

    short, long = peak(40), peak(400)
    assert long < 40  # MiB: a row group is 4 batches (64 Ki rows), 4 MiB
    assert long < 2 * short + 8


@pytest.mark.parametrize("ranges_per_worker", [1, 2, 50])
def test_rows_that_do_not_match_the_schema_fail_the_part_instead_of_corrupting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranges_per_worker: int
) -> None:
    """Each range is encoded by a writer of the part's schema, which refuses other rows as a writer of the whole
    part would; the footer, written from the part's schema, could otherwise describe bytes of another type."""
    monkeypatch.setattr(writers, "RANGES_PER_WORKER", ranges_per_worker)
    declared = pa.schema([("id", pa.int64()), ("text", pa.null())])
    with pytest.raises(ValueError, match="does not match"):
        writers.write_parts(
            batches([100, 100]),
            schema=declared,
            fmt=Format.model_validate({}),
            transport=FilesystemTransport(tmp_path),
            folder="slot",
            run_id="r1",
            plan=PLAN,
        )
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
