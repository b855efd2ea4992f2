"""Streaming record batches into rolling part files (Parquet or NDJSON), or a source file's bytes into a part of
its own (the byte copy), hashing the bytes as they go out.

Hashing on the way out (see ``sink``) costs far less than reading each file back, and it is the only way that
works the same for local files and uploads.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from dsexport import api
from dsexport.destinations import Transport, join
from dsexport.destinations.base import Writable
from dsexport.engine import jsonenc
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
    """The end of one file's chunks in the byte copy, with the hex SHA-256 of them all."""

    sha256: str


JSON_SLICE_ROWS = 16 * 1024


class _FormatWriter(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...
    def close(self) -> None: ...


ROW_GROUP_ROWS = 64 * 1024


class _ParquetPart:
    """Coalesces small batches (a lake of many small files yields them) into row groups of ``ROW_GROUP_ROWS``:
    one row group per tiny batch would make the file many times larger and slow to read."""

    def __init__(self, sink: WriteBehindSink, schema: pa.Schema, compression: str) -> None:
        self.writer = _parquet_writer(sink, schema, compression)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if not self.pending and batch.num_rows >= ROW_GROUP_ROWS:
            self.writer.write_batch(batch)
            return
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            table = pa.Table.from_batches(self.pending)
            self.writer.write_table(table, row_group_size=table.num_rows)
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _parquet_writer(sink: pa.NativeFile | io.RawIOBase, schema: pa.Schema, compression: str) -> pq.ParquetWriter:
    """The one place the Parquet writer's options are set: ``parquet_file_schema`` must see the same ones."""
    return pq.ParquetWriter(sink, schema, compression=compression, write_statistics=True)


def parquet_file_schema(schema: pa.Schema, fmt: api.Format) -> pq.ParquetSchema:
    """The Parquet schema (physical and logical types, column paths) the encoder writes for ``schema``.

    The byte copy compares a source file's against it: a file whose Arrow schema matches but whose Parquet types
    do not (INT96 timestamps, decimals stored as integers, legacy list layouts) reads back the same in Arrow,
    yet differs for other readers from the parts the encoder writes, so it is re-encoded instead.
    """
    buffer = pa.BufferOutputStream()
    _parquet_writer(buffer, schema, fmt.effective_compression).close()
    return pq.read_metadata(pa.BufferReader(buffer.getvalue())).schema


class _JsonPart:
    def __init__(self, sink: WriteBehindSink, compression: str) -> None:
        # mtime=0 keeps gzip output a function of the data alone, so a retried part has the same sha256.
        self.gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) if compression == "gzip" else None
        self.writer = jsonenc.NdjsonWriter(self.gz if self.gz is not None else sink)  # type: ignore[arg-type]

    def write(self, batch: pa.RecordBatch) -> None:
        # Nested rows expand several-fold as JSON text; slices keep the serializer's buffers small.
        for offset in range(0, batch.num_rows, JSON_SLICE_ROWS):
            self.writer.write(batch.slice(offset, JSON_SLICE_ROWS))

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


class _Part:
    """One part file being written: finish() makes it visible, abort() leaves nothing behind."""

    def __init__(self, transport: Transport, folder: str, name: str, schema: pa.Schema, fmt: api.Format) -> None:
        self.name = name
        self.records = 0
        self._target = transport.open_write(join(folder, name))
        self.sink = WriteBehindSink(self._target.__enter__())
        compression = fmt.effective_compression
        self.writer: _FormatWriter = (
            _ParquetPart(self.sink, schema, compression)
            if fmt.type == api.OutputFormat.parquet
            else _JsonPart(self.sink, compression)
        )

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write(batch)
        self.records += batch.num_rows

    def finish(self) -> PartFile:
        self.writer.close()
        digest = self.sink.finish()
        self._target.__exit__(None, None, None)
        return PartFile(self.name, self.records, self.sink.count, digest)

    def abort(self, error: BaseException) -> None:
        self.sink.abandon()
        # Close the format writer too (its footer goes nowhere: the sink refuses it), or it would try again, and
        # fail, when it is garbage-collected.
        with contextlib.suppress(Exception):
            self.writer.close()
        self._target.__exit__(type(error), error, error.__traceback__)


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

    ``pieces`` holds the file's chunks and then its ``Hashed``: whoever reads the file hashes it (a read-ahead
    thread, while this one writes), so hashing and writing overlap instead of adding up. ``origin`` is the source
    file, ``size`` its size as listed and ``records`` its rows as its footer says. A file whose length is not the
    listed size changed after it was listed, so it is no longer the file whose footer was checked: the part is
    abandoned and the run fails, transiently, since a retry lists and checks the file again.
    """
    with transport.open_write(join(folder, name)) as target:
        written, digest = _write_file(pieces, target)
        if written != size:
            raise SourceError(
                f"source file {origin} changed while it was exported ({written} bytes, listed with {size}); "
                "source files must not change once visible",
                transient=True,
            )
    return PartFile(name, records, written, digest, via="copy", source=origin)


def _write_file(pieces: Iterator[bytes | Hashed], target: Writable) -> tuple[int, str]:
    """The chunks of one file into ``target``, up to its ``Hashed``: the bytes written and their SHA-256."""
    written = 0
    for piece in pieces:
        if isinstance(piece, Hashed):
            return written, piece.sha256
        target.write(piece)
        written += len(piece)
    raise RuntimeError("the byte copy's chunks ended inside a file")  # a bug in the caller, not a data problem


def write_parts(
    batches: Iterable[pa.RecordBatch],
    *,
    schema: pa.Schema,
    fmt: api.Format,
    transport: Transport,
    folder: str,
    run_id: str,
    on_batch: Callable[[int], None] | None = None,
    first_index: int = 0,
) -> list[PartFile]:
    """Write every batch into part files under ``folder``, starting a new part at the configured limits.

    Parts are numbered from ``first_index`` (after the parts the byte copy made). They become visible only as
    whole files (the transport's atomic write); the manifest, written later by the caller, is what commits them.
    """
    max_records = fmt.effective_max_records
    max_bytes = fmt.effective_max_bytes
    parts: list[PartFile] = []
    part: _Part | None = None
    try:
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                if part is None:
                    name = part_name(first_index + len(parts), run_id, fmt)
                    part = _Part(transport, folder, name, schema, fmt)
                take = min(batch.num_rows - offset, max_records - part.records)
                part.write(batch if take == batch.num_rows else batch.slice(offset, take))
                offset += take
                if on_batch is not None:
                    on_batch(take)
                if part.records >= max_records or part.sink.count >= max_bytes:
                    parts.append(part.finish())
                    part = None
        if part is not None:
            parts.append(part.finish())
            part = None
    except BaseException as error:
        if part is not None:
            part.abort(error)
        if isinstance(error, pa.ArrowException):
            raise SchemaError(f"cannot write a {fmt.type.value} part: {error}") from None
        raise
    return parts
