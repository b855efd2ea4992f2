"""Streaming record batches into rolling part files (Parquet or NDJSON), or a source file's bytes into a part of
its own (the byte copy), hashing the bytes as they go out.

Hashing on the way out (see ``sink``) costs far less than reading each file back, and it is the only way that
works the same for local files and uploads.

Re-encoding runs in three stages, so that encoding, the expensive one, keeps every core busy (pyarrow's Parquet
writer encodes a file on the thread that calls it, and polars' NDJSON serializer keeps about one core busy for a
slice); docs/design.md#re-encoding has the measurements:

1. *cutting*, on the calling thread, which also decodes the batches: they are cut at every multiple of
   ``maxRecordsPerFile`` rows (where a part ends unless its size ended it earlier), then grouped into Parquet row
   groups (small batches coalesced up to ``ROW_GROUP_ROWS`` rows) cut into column ranges, or cut into NDJSON
   slices of ``JSON_SLICE_ROWS`` rows;
2. *encoding*, on ``ENCODE_WORKERS`` threads at once (``prefetch.ordered_map``): a column range into a Parquet
   file of its own (``rowgroups.encode``), a slice into NDJSON text (``jsonenc.ndjson_chunks``). Either depends on
   its rows alone, so it can be done before it is known which part it lands in;
3. *writing*, on the calling thread, in order: each encoded row group or slice goes into the open part
   (``rowgroups.Assembler`` joins the ranges into the file one ``ParquetWriter`` would have written), which ends
   once it holds ``maxRecordsPerFile`` records or ``maxFileSize`` bytes (checked after each batch, as always); a
   piece that would pass the record limit is cut there (NDJSON text between two lines, a row group encoded again
   as two).

What is written is therefore a function of the batches alone, whatever the threads' timing: the same batches give
the same bytes. At most ``ENCODE_WORKERS`` pieces are being encoded and a few more wait (``*_QUEUED``), which
bounds memory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from dsexport import api
from dsexport.destinations import Transport, join
from dsexport.destinations.base import Writable
from dsexport.engine import dictionary, jsonenc, memory, rowgroups
from dsexport.engine.prefetch import ordered_map
from dsexport.engine.sink import WriteBehindSink
from dsexport.errors import SchemaError, SourceError

# How a part was made: decoded and re-encoded, or the bytes of one source file as they are.
Via = Literal["encode", "copy", "server-copy"]


@dataclass(frozen=True)
class PartFile:
    """A data file as listed in the manifest."""

    path: str  # relative to the exportTime folder
    records: int
    bytes: int
    sha256: str | None  # None only for a copy made inside the store, which did not compute one
    via: Via = "encode"
    source: str | None = None  # for a copy: the source file, relative to the source root
    etag: str | None = None  # for a copy made inside the store: the store's entity tag of the part


@dataclass(frozen=True)
class Hashed:
    """The end of one file's chunks in the byte copy. ``sha256`` gives the hex SHA-256 of them all, waiting for it
    if need be: the reader's hash thread may still be hashing the last chunks while the part is made durable."""

    sha256: Callable[[], str]


# Nested rows expand several-fold as JSON text, which a slice holds until it is written: 8 Ki-row slices (about
# 5 MiB of text for the benchmark's events) kept the export's peak RSS some 50 MiB under 16 Ki-row ones, for about
# 3% more CPU (a slice costs about a millisecond of fixed overhead, most of it in polars).
JSON_SLICE_ROWS = 8 * 1024
# Small batches (a lake of many small files yields them) are coalesced into row groups of at least this many
# rows: one row group per tiny batch would make the file many times larger and slow to read.
ROW_GROUP_ROWS = 64 * 1024


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Threads encoding at once: one per core, at most four (each NDJSON slice in flight holds its text in memory).
ENCODE_WORKERS = max(1, min(4, _cpus()))
# Pieces waiting for a thread, beyond those being encoded, so that a thread done with one finds the next ready
# while the calling thread decodes: NDJSON slices are short, Parquet ranges long but many. For Parquet, two: the
# ranges of two whole row groups in flight let the calling thread decode the next one while both are encoded
# (bench data, medians of 9: 1.37 s against 1.44 s with one; three gained nothing more).
JSON_QUEUED = 2
PARQUET_QUEUED = 2
# Column ranges per thread in each row group. One: each range is a file of its own (about 1 ms of overhead), and a
# thread done early starts on the next row group's first range (``PARQUET_QUEUED``). Measured on the benchmark's
# 2,000,000 rows, seven interleaved runs each: best / median 1.25 / 1.29 s with one, 1.31 / 1.33 s with two.
RANGES_PER_WORKER = 1
# How much the Parquet writer lets the process's resident memory grow before it has Arrow's memory pool give freed
# memory back (``_MemoryGuard``).
RSS_GROWTH_BUDGET = 192 << 20


def copy_part(
    pieces: Iterator[bytes | Hashed],
    *,
    origin: str,
    size: int,
    records: int,
    transport: Transport,
    folder: str,
    name: str,
) -> PartFile:
    """Write one source file's bytes, unchanged, as the part ``name``: the byte copy.

    ``pieces`` holds the file's chunks and then its ``Hashed``: whoever reads the file hashes it (on threads of its
    own, while this one writes), so hashing and writing overlap instead of adding up, and the hash is asked for
    only once the part is written, so its last chunks are hashed while the part is flushed to storage. ``origin``
    is the source file, ``size`` its size as listed and ``records`` its rows as its footer says. A file whose
    length is not the listed size changed after it was listed, so it is no longer the file whose footer was
    checked: the part is abandoned and the run fails, transiently, since a retry lists and checks the file again.
    """
    with transport.open_write(join(folder, name)) as target:
        written, hashed = _write_file(pieces, target)
        if written != size:
            raise SourceError(
                f"source file {origin} changed while it was exported ({written} bytes, listed with {size}); "
                "source files must not change once visible",
                transient=True,
            )
    return PartFile(name, records, written, hashed.sha256(), via="copy", source=origin)


def _write_file(pieces: Iterator[bytes | Hashed], target: Writable) -> tuple[int, Hashed]:
    """The chunks of one file into ``target``, up to its ``Hashed``: the bytes written, and the ``Hashed``."""
    written = 0
    for piece in pieces:
        if isinstance(piece, Hashed):
            return written, piece
        target.write(piece)
        written += len(piece)
    raise RuntimeError("the byte copy's chunks ended inside a file")  # a bug in the caller, not a data problem


# ------------------------------------------------------------------------------------------------ re-encoding

E = TypeVar("E")  # a format's encoding of a piece of a part: NDJSON text, or a Parquet row group
E_contra = TypeVar("E_contra", contravariant=True)


@dataclass(frozen=True)
class _Encoded(Generic[E]):
    """Encoded rows, in order, and whether a batch (or a batch's share of a part) ends with them: the size limit
    is checked there, as it always was, so a part ends where it did when encoding was serial."""

    rows: int
    data: E
    batch_end: bool


class _File(Protocol[E_contra]):
    """One part's contents being written: ``add`` appends encoded rows, ``close`` ends the file."""

    def add(self, data: E_contra) -> None: ...
    def close(self) -> None: ...


class _Format(Protocol[E]):
    """What the part writer needs of a format: the batches encoded (stages 1 and 2 of the module docstring), a
    way to cut encoded rows in two, a file to append them to, and whether to keep Arrow's retained memory in check
    (``_MemoryGuard``)."""

    releases_memory: bool

    def encoded(self, batches: Iterable[tuple[pa.RecordBatch, bool]]) -> Generator[_Encoded[E]]: ...
    def split(self, encoded: _Encoded[E], rows: int) -> tuple[_Encoded[E], _Encoded[E]]: ...
    def open(self, sink: WriteBehindSink) -> _File[E]: ...


@dataclass(frozen=True)
class _RowGroup:
    """A row group's rows (kept to cut it in two, should a part's record limit fall inside it) and its column
    ranges, encoded."""

    table: pa.Table
    ranges: list[rowgroups.Columns]


@dataclass(frozen=True)
class _Range:
    """Columns ``[start, stop)`` of the row group ``table``: what one encoding thread does at a time."""

    table: pa.Table
    start: int
    stop: int
    last: bool  # the row group's last range


class _Parquet:
    """Row groups cut into column ranges, encoded on the workers (``rowgroups.encode``) and joined into the part
    by ``rowgroups.Assembler``."""

    releases_memory = True

    def __init__(self, schema: pa.Schema, compression: str, plan: memory.Plan) -> None:
        self.schema = schema
        self.compression = compression
        self.plan = plan
        # Set from the first row group, before any is encoded (``dictionary``): then never changed.
        self._dictionary: list[str] | bool = True
        self.footer = rowgroups.template(self._new_writer, schema)
        self._schemas: dict[tuple[int, int], pa.Schema] = {}
        self._paths = [column.path for column in _file_schema(schema, compression)]

    def _new_writer(self, out: pa.BufferOutputStream, schema: pa.Schema) -> pq.ParquetWriter:
        return _parquet_writer(out, schema, self.compression, dictionary=self._dictionary)

    def encoded(self, batches: Iterable[tuple[pa.RecordBatch, bool]]) -> Generator[_Encoded[_RowGroup]]:
        groups = _row_groups(batches, most_bytes=self.plan.row_group_bytes)
        ranges = self._ranges(groups, per_row_group=RANGES_PER_WORKER * ENCODE_WORKERS)
        done: list[rowgroups.Columns] = []
        in_flight = ENCODE_WORKERS + PARQUET_QUEUED
        with contextlib.closing(ordered_map(self._encode, ranges, workers=ENCODE_WORKERS, in_flight=in_flight)) as it:
            for piece, columns in it:
                done.append(columns)
                last, table = piece.last, piece.table
                del piece, columns  # a row group's rows live as long as needed, not until the next one is done
                if last:
                    group, done = _RowGroup(table, done), []
                    del table
                    yield _Encoded(group.table.num_rows, group, batch_end=True)
                    del group

    def _ranges(self, tables: Iterable[pa.Table], per_row_group: int) -> Iterator[_Range]:
        """Each row group cut into column ranges of about equal size (``RANGES_PER_WORKER`` per thread): the threads
        share a row group, which stays whole in memory, instead of each holding one of their own. The first row
        group chooses the columns with a dictionary, before any is encoded."""
        for n, table in enumerate(tables):
            if n == 0:
                self._dictionary = dictionary.dictionary_columns(table, self._paths)
            ranges = rowgroups.column_ranges(table, per_row_group)
            for i, (start, stop) in enumerate(ranges):
                yield _Range(table, start, stop, last=i == len(ranges) - 1)

    def _encode(self, piece: _Range) -> tuple[_Range, rowgroups.Columns]:
        columns = piece.table.select(range(piece.start, piece.stop))
        return piece, rowgroups.encode(columns, self._fields(piece.start, piece.stop), self._new_writer)

    def _fields(self, start: int, stop: int) -> pa.Schema:
        """The part's schema, fields ``[start, stop)``: what the rows of a range must have."""
        if (start, stop) not in self._schemas:  # dict reads and writes are atomic: at worst one is made twice
            self._schemas[start, stop] = pa.schema([self.schema.field(i) for i in range(start, stop)])
        return self._schemas[start, stop]

    def split(self, encoded: _Encoded[_RowGroup], rows: int) -> tuple[_Encoded[_RowGroup], _Encoded[_RowGroup]]:
        """Encoded again as two row groups (on this thread: it happens once per part at most, and only after a
        part ended on its size, which moves where the next parts' record limits fall)."""
        table = encoded.data.table
        head, tail = table.slice(0, rows), table.slice(rows, table.num_rows - rows)
        return (
            _Encoded(rows, _RowGroup(head, [rowgroups.encode(head, self.schema, self._new_writer)]), True),
            _Encoded(
                encoded.rows - rows, _RowGroup(tail, [rowgroups.encode(tail, self.schema, self._new_writer)]), True
            ),
        )

    def open(self, sink: WriteBehindSink) -> _ParquetFile:
        return _ParquetFile(rowgroups.Assembler(sink, self.footer))


def _row_groups(batches: Iterable[tuple[pa.RecordBatch, bool]], *, most_bytes: int) -> Iterator[pa.Table]:
    """The row groups the writer always wrote: a batch of ``ROW_GROUP_ROWS`` rows or more on its own, smaller ones
    coalesced until they reach it, ``most_bytes`` decoded bytes (the memory plan's: wide rows make short row
    groups) or a part's share of the batches ends; none longer than pyarrow's longest.

    The encoders hold several times a row group's size at once (its rows, each range's pages and its encoded
    bytes, two row groups in flight and the next being cut), so a row group is kept near the size of a source
    batch, which the reader already bounds (``memory.Plan.batch_bytes``); a batch far above that (a source whose
    batches the reader does not size) is cut too."""
    pending: list[pa.RecordBatch] = []
    rows = size = 0
    for batch, part_end in batches:
        if pending and size + batch.nbytes > most_bytes:  # it would make the row group too large: close it first
            yield pa.Table.from_batches(pending)
            pending, rows, size = [], 0, 0
        if not pending and (batch.num_rows >= ROW_GROUP_ROWS or batch.nbytes >= most_bytes):
            cut = batch.nbytes > _OVERSIZED * most_bytes
            rows_each = _group_rows(batch, most_bytes) if cut else rowgroups.MAX_ROW_GROUP_ROWS
            yield from _at_most(pa.Table.from_batches([batch]), rows_each)
            continue
        pending.append(batch)
        rows += batch.num_rows
        size += batch.nbytes
        if rows >= ROW_GROUP_ROWS or part_end:
            yield from _at_most(pa.Table.from_batches(pending), rowgroups.MAX_ROW_GROUP_ROWS)
            pending, rows, size = [], 0, 0
    if pending:
        yield from _at_most(pa.Table.from_batches(pending), rowgroups.MAX_ROW_GROUP_ROWS)


_OVERSIZED = 4


def _group_rows(batch: pa.RecordBatch, most_bytes: int) -> int:
    """Rows of ``batch`` that hold about ``most_bytes`` (at least one, at most pyarrow's longest row group)."""
    per_row = batch.nbytes / max(batch.num_rows, 1)
    return max(1, min(rowgroups.MAX_ROW_GROUP_ROWS, int(most_bytes // max(per_row, 1.0))))


def _at_most(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    if table.num_rows <= rows:
        yield table
        return
    for offset in range(0, table.num_rows, rows):
        # The length is given exactly: slicing a table without columns does not clamp it (pyarrow 26).
        yield table.slice(offset, min(rows, table.num_rows - offset))


class _ParquetFile:
    def __init__(self, assembler: rowgroups.Assembler) -> None:
        self.assembler = assembler

    def add(self, data: _RowGroup) -> None:
        self.assembler.add(data.ranges)

    def close(self) -> None:
        self.assembler.close()


def _parquet_writer(
    sink: pa.NativeFile | io.RawIOBase, schema: pa.Schema, compression: str, *, dictionary: list[str] | bool = True
) -> pq.ParquetWriter:
    """The one place the Parquet writer's options are set: ``parquet_file_schema`` must see the same ones (the
    columns with a dictionary change how values are encoded, not the schema)."""
    return pq.ParquetWriter(sink, schema, compression=compression, write_statistics=True, use_dictionary=dictionary)


def parquet_file_schema(schema: pa.Schema, fmt: api.Format) -> pq.ParquetSchema:
    """The Parquet schema (physical and logical types, column paths) the encoder writes for ``schema``.

    The byte copy compares a source file's against it: a file whose Arrow schema matches but whose Parquet types
    do not (INT96 timestamps, decimals stored as integers, legacy list layouts) reads back the same in Arrow,
    yet differs for other readers from the parts the encoder writes, so it is re-encoded instead.
    """
    return _file_schema(schema, fmt.effective_compression)


def _file_schema(schema: pa.Schema, compression: str) -> pq.ParquetSchema:
    buffer = pa.BufferOutputStream()
    _parquet_writer(buffer, schema, compression).close()
    return pq.read_metadata(pa.BufferReader(buffer.getvalue())).schema


@dataclass(frozen=True)
class _Slice:
    batch: pa.RecordBatch
    batch_end: bool


class _Json:
    """Slices of ``JSON_SLICE_ROWS`` rows serialized on the workers, their text written in order into the part
    (through gzip if compressed)."""

    releases_memory = False  # see _MemoryGuard

    def __init__(self, compression: str, plan: memory.Plan) -> None:
        self.compression = compression
        self.plan = plan

    def encoded(self, batches: Iterable[tuple[pa.RecordBatch, bool]]) -> Generator[_Encoded[list[bytes]]]:
        slices = self._slices(batches, self.plan)
        in_flight = ENCODE_WORKERS + JSON_QUEUED
        with contextlib.closing(ordered_map(self._encode, slices, workers=ENCODE_WORKERS, in_flight=in_flight)) as it:
            yield from it

    @staticmethod
    def _slices(batches: Iterable[tuple[pa.RecordBatch, bool]], plan: memory.Plan) -> Iterator[_Slice]:
        """Slices of ``JSON_SLICE_ROWS`` rows, or fewer when rows are wide: about ``plan.slice_bytes`` of decoded
        rows each, since a slice's text, a few times larger, is held until it is written."""
        for batch, _ in batches:
            rows = plan.rows(
                row_bytes=batch.nbytes / max(batch.num_rows, 1), most=JSON_SLICE_ROWS, share=plan.slice_bytes
            )
            for offset in range(0, batch.num_rows, rows):
                piece = batch if batch.num_rows <= rows else batch.slice(offset, rows)
                yield _Slice(piece, batch_end=offset + rows >= batch.num_rows)

    @staticmethod
    def _encode(piece: _Slice) -> _Encoded[list[bytes]]:
        return _Encoded(piece.batch.num_rows, jsonenc.ndjson_chunks(piece.batch), piece.batch_end)

    def split(self, encoded: _Encoded[list[bytes]], rows: int) -> tuple[_Encoded[list[bytes]], _Encoded[list[bytes]]]:
        head, tail = _split_lines(encoded.data, rows)
        return _Encoded(rows, head, batch_end=True), _Encoded(encoded.rows - rows, tail, encoded.batch_end)

    def open(self, sink: WriteBehindSink) -> _JsonFile:
        return _JsonFile(sink, self.compression)


def _split_lines(chunks: list[bytes], rows: int) -> tuple[list[bytes], list[bytes]]:
    """The first ``rows`` lines of the text in ``chunks``, and the rest (one JSON object per line, so a raw
    newline only ends a row)."""
    for i, chunk in enumerate(chunks):
        lines = chunk.count(b"\n")
        if lines < rows:
            rows -= lines
            continue
        end = -1
        for _ in range(rows):
            end = chunk.index(b"\n", end + 1)
        head, rest = chunk[: end + 1], chunk[end + 1 :]
        return [*chunks[:i], head], [c for c in (rest, *chunks[i + 1 :]) if c]
    raise ValueError(f"the text holds fewer than {rows} more lines")  # a bug in the caller, not a data problem


class _JsonFile:
    def __init__(self, sink: WriteBehindSink, compression: str) -> None:
        self.sink = sink
        # mtime=0 keeps gzip output a function of the data alone, so a retried part has the same sha256.
        self.gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) if compression == "gzip" else None

    def add(self, data: list[bytes]) -> None:
        # One deflate stream over the part's text, however it was cut into slices and chunks (zlib's output does
        # not depend on how its input is fed): the part's bytes are a function of its rows.
        for chunk in data:
            if self.gz is not None:
                self.gz.write(chunk)
            else:
                self.sink.write_frozen(chunk)

    def close(self) -> None:
        if self.gz is not None:
            self.gz.close()


def extension(fmt: api.Format) -> str:
    if fmt.type == api.OutputFormat.parquet:
        return ".parquet"
    return ".json.gz" if fmt.effective_compression == "gzip" else ".json"


def check_schema(schema: pa.Schema, fmt: api.Format) -> None:
    """Fail before anything is written if a column cannot be held by the format, naming the column."""
    if fmt.type == api.OutputFormat.json:
        jsonenc.json_schema(schema)
        return
    if _parquet_refuses(schema) is None:
        return
    for f in schema:
        if (reason := _parquet_refuses(pa.schema([f]))) is not None:
            raise SchemaError(
                f"column {f.name!r} has Arrow type {f.type}, which Parquet cannot hold ({reason}); "
                "leave the column out of the source"
            )
    raise SchemaError(f"the schema cannot be written as Parquet ({_parquet_refuses(schema)})")


def _parquet_refuses(schema: pa.Schema) -> str | None:
    try:
        pq.ParquetWriter(pa.BufferOutputStream(), schema).close()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        return str(e)
    return None


def part_name(index: int, run_id: str, fmt: api.Format) -> str:
    return f"part-{index:05d}-{run_id}{extension(fmt)}"


class _Part(Generic[E]):
    """One part file being written: finish() makes it visible, abort() leaves nothing behind."""

    def __init__(
        self, transport: Transport, folder: str, name: str, opener: Callable[[WriteBehindSink], _File[E]]
    ) -> None:
        self.name = name
        self.records = 0
        self._target = transport.open_write(join(folder, name))
        self.sink = WriteBehindSink(self._target.__enter__())
        self.file = opener(self.sink)

    def add(self, encoded: _Encoded[E]) -> None:
        self.file.add(encoded.data)
        self.records += encoded.rows

    def finish(self) -> PartFile:
        self.file.close()
        digest = self.sink.finish()
        self._target.__exit__(None, None, None)
        return PartFile(self.name, self.records, self.sink.count, digest)

    def abort(self, error: BaseException) -> None:
        self.sink.abandon()
        # Close the file too (what it still writes goes nowhere: the sink refuses it), or gzip would try again,
        # and fail, when it is garbage-collected.
        with contextlib.suppress(Exception):
            self.file.close()
        self._target.__exit__(type(error), error, error.__traceback__)


@dataclass(frozen=True)
class _Target:
    """Where parts go and how they are named and counted."""

    fmt: api.Format
    transport: Transport
    folder: str
    run_id: str
    first_index: int
    on_batch: Callable[[int], None] | None
    plan: memory.Plan


class _Parts(Generic[E]):
    """Encoded pieces, in order, into rolling parts: the part rules live here."""

    def __init__(self, encoding: _Format[E], target: _Target) -> None:
        self.encoding = encoding
        self.target = target
        self.max_records = target.fmt.effective_max_records
        self.max_bytes = target.fmt.effective_max_bytes
        self.done: list[PartFile] = []
        self.part: _Part[E] | None = None
        self._memory = _MemoryGuard(growth=min(RSS_GROWTH_BUDGET, target.plan.working * 3 // 4))

    def add(self, encoded: _Encoded[E]) -> None:
        """Append ``encoded`` to the open part (opening one if needed), cutting it where the record limit falls;
        end the part at its limits."""
        while True:
            part = self.part if self.part is not None else self._open()
            room = self.max_records - part.records
            if encoded.rows <= room:
                self._append(part, encoded)
                if part.records >= self.max_records or (encoded.batch_end and part.sink.count >= self.max_bytes):
                    self._finish(part)
                return
            head, encoded = self.encoding.split(encoded, room)
            self._append(part, head)
            self._finish(part)

    def _open(self) -> _Part[E]:
        t = self.target
        name = part_name(t.first_index + len(self.done), t.run_id, t.fmt)
        self.part = _Part(t.transport, t.folder, name, self.encoding.open)
        return self.part

    def _append(self, part: _Part[E], encoded: _Encoded[E]) -> None:
        part.add(encoded)
        if self.target.on_batch is not None:
            self.target.on_batch(encoded.rows)
        if self.encoding.releases_memory:
            self._memory.check()

    def _finish(self, part: _Part[E]) -> None:
        self.part = None
        self.done.append(part.finish())

    def close(self) -> list[PartFile]:
        if self.part is not None:
            self._finish(self.part)
        return self.done

    def abort(self, error: BaseException) -> None:
        if self.part is not None:
            part, self.part = self.part, None
            part.abort(error)


class _MemoryGuard:
    """Has Arrow's memory pool give freed memory back once the process has grown by ``growth`` since the writer
    started (``RSS_GROWTH_BUDGET``, or less for a small memory budget), checked after each row group.

    Decoded batches are allocated on pyarrow's threads and freed on others, and mimalloc, Arrow's default pool,
    keeps freed memory committed for a while, so what it holds follows how fast memory churns, not what is live.
    Measured on bench.run's 2,000,000-row Parquet export (peak RSS of the CLI): 347-386 MiB without giving memory
    back; 331-337 MiB giving it back every 256 Ki rows, but 5-10% slower (memory given back is faulted in again
    when next allocated); 335-339 MiB with this guard, at no measurable cost, since it only acts near the peak.
    (For NDJSON, whose memory is mostly polars' and Python's, giving Arrow's back did not pay: it is not guarded.)
    """

    def __init__(self, *, growth: int) -> None:
        self.start = memory.resident_bytes()
        self.growth = growth

    def check(self) -> None:
        if self.start is None:
            return
        now = memory.resident_bytes()
        if now is not None and now - self.start > self.growth:
            pa.default_memory_pool().release_unused()  # about a millisecond


def _cut(batches: Iterable[pa.RecordBatch], max_records: int) -> Iterator[tuple[pa.RecordBatch, bool]]:
    """``batches`` cut at every multiple of ``max_records`` rows, each piece with whether a part ends with it
    (unless its size ended the part earlier: then ``_Parts.add`` cuts where the new part's limit falls)."""
    room = max_records
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            take = min(batch.num_rows - offset, room)
            yield (batch if take == batch.num_rows else batch.slice(offset, take)), take == room
            offset += take
            room = room - take or max_records


def write_parts(
    batches: Iterable[pa.RecordBatch],
    *,
    schema: pa.Schema,
    fmt: api.Format,
    transport: Transport,
    folder: str,
    run_id: str,
    plan: memory.Plan,
    on_batch: Callable[[int], None] | None = None,
    first_index: int = 0,
) -> list[PartFile]:
    """Write every batch into part files under ``folder``, starting a new part at the configured limits.

    Parts are numbered from ``first_index`` (after the parts the byte copy made). They become visible only as
    whole files (the transport's atomic write); the manifest, written later by the caller, is what commits them.
    """
    target = _Target(fmt, transport, folder, run_id, first_index, on_batch, plan)
    if fmt.type == api.OutputFormat.parquet:
        return _write(_Parts(_Parquet(schema, fmt.effective_compression, plan), target), batches)
    return _write(_Parts(_Json(fmt.effective_compression, plan), target), batches)


def _write(parts: _Parts[E], batches: Iterable[pa.RecordBatch]) -> list[PartFile]:
    """Cut, encode on the workers, and write in order (the module docstring's three stages)."""
    fmt = parts.target.fmt
    try:
        with contextlib.closing(parts.encoding.encoded(_cut(batches, fmt.effective_max_records))) as encoded:
            for piece in encoded:
                parts.add(piece)
                del piece  # written: its rows and bytes need not live until the next piece is encoded
        return parts.close()
    except BaseException as error:
        parts.abort(error)
        if isinstance(error, pa.ArrowException):
            raise SchemaError(f"cannot write a {fmt.type.value} part: {error}") from None
        raise
