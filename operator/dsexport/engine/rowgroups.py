"""Parquet row groups encoded in pieces, on several threads, and assembled into one file.

pyarrow's ``ParquetWriter`` encodes a file on the thread that calls it, one column chunk after the other, so a part
is encoded on one core however many there are. A column chunk's bytes, though, depend only on that column's
values in that row group: pages, dictionary and statistics refer to nothing else, except through the file offsets
the footer records. So the columns of a row group are cut into a few ranges (``column_ranges``), each range is
encoded, on any thread, as a one-row-group file of its own by the same writer with the same options (``encode``),
and ``Assembler`` writes the ranges' bytes one after the other behind the magic number and closes the file with
the footer a single writer would have written: the schema and metadata of an empty file of the whole schema
(``template``) and, per row group, the ranges' entries joined, their offsets moved to where the bytes now are.

The result is the file one ``ParquetWriter`` writes when given the same row groups, byte for byte (the tests
compare the two), so readers, the manifest's schema and the byte copy's comparison of Parquet types
(``writers.parquet_file_schema``) see no difference. Cutting by columns rather than encoding whole row groups at
once keeps one row group in memory at a time, as before, instead of one per thread.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from dsexport.engine import compact
from dsexport.engine.sink import WriteBehindSink

MAGIC: Final = b"PAR1"
# pyarrow's default largest row group: a longer table is written as several (the writers never pass one).
MAX_ROW_GROUP_ROWS: Final = 1024 * 1024

# Field ids in parquet.thrift. FileMetaData:
_FILE_NUM_ROWS, _FILE_ROW_GROUPS = 3, 4
# RowGroup:
_GROUP_COLUMNS, _GROUP_BYTES, _GROUP_ROWS, _GROUP_FILE_OFFSET, _GROUP_COMPRESSED, _GROUP_ORDINAL = 1, 2, 3, 5, 6, 7
# ColumnChunk: file_offset (deprecated, 0), meta_data, offset_index_offset, column_index_offset:
_CHUNK_FILE_OFFSET, _CHUNK_META, _CHUNK_OFFSET_INDEX, _CHUNK_COLUMN_INDEX = 2, 3, 4, 6
# ColumnMetaData: data_page_offset, index_page_offset, dictionary_page_offset, bloom_filter_offset.
_META_OFFSETS: Final = (9, 10, 11, 14)

WriterFactory = Callable[[pa.BufferOutputStream, pa.Schema], pq.ParquetWriter]


@dataclass(frozen=True)
class Columns:
    """Some columns of one row group, encoded and not yet placed in a file.

    ``data`` is their column chunks as the file ``encode`` wrote holds them (from offset 4, after the magic
    number); ``group`` that file's one RowGroup entry, whose offsets are relative to that file.
    """

    data: memoryview
    group: compact.Struct


def template(new_writer: WriterFactory, schema: pa.Schema) -> compact.Struct:
    """The footer of an empty file of ``schema``: a writer's footer for any rows of ``schema``, but for the row
    count and the row groups."""
    out = pa.BufferOutputStream()
    new_writer(out, schema).close()
    return _footer(memoryview(out.getvalue()).cast("B"))[0]


def column_ranges(table: pa.Table, ranges: int) -> list[tuple[int, int]]:
    """``table``'s columns cut into at most ``ranges`` runs of neighbours (``[start, stop)``) holding about as
    many bytes each, so the threads encoding them have about as much to do; one run for a table without
    columns."""
    sizes = [column.nbytes for column in table.columns]
    share = sum(sizes) / max(1, ranges)
    out: list[tuple[int, int]] = []
    start, held = 0, 0
    for i, size in enumerate(sizes):
        held += size
        if held >= share and len(out) < ranges - 1 and i + 1 < len(sizes):
            out.append((start, i + 1))
            start, held = i + 1, 0
    out.append((start, len(sizes)))
    return out


def encode(table: pa.Table, schema: pa.Schema, new_writer: WriterFactory) -> Columns:
    """``table`` (the columns of a range, at most ``MAX_ROW_GROUP_ROWS`` rows) as one row group, encoded into
    memory by a writer of ``schema`` (the part's, or its fields of the range), which refuses a table of another
    schema as a writer of the whole part would; pyarrow releases the GIL while it encodes, so several threads
    encode at once."""
    if table.num_rows > MAX_ROW_GROUP_ROWS:
        raise ValueError(f"a row group of {table.num_rows} rows is longer than {MAX_ROW_GROUP_ROWS}")
    out = pa.BufferOutputStream()
    writer = new_writer(out, schema)
    try:
        writer.write_table(table, row_group_size=max(1, table.num_rows))
    finally:
        writer.close()
    file = memoryview(out.getvalue()).cast("B")  # zero-copy: the view keeps the Arrow buffer alive
    meta, footer_start = _footer(file)
    groups = _list(meta, _FILE_ROW_GROUPS)
    if len(groups) != 1 or not isinstance(groups[0], compact.Struct):
        raise compact.ThriftError(f"expected one row group, the Parquet writer wrote {len(groups)}")
    return Columns(file[len(MAGIC) : footer_start], groups[0])


def _footer(file: memoryview) -> tuple[compact.Struct, int]:
    """A whole Parquet file's footer and where it starts."""
    size = struct.unpack_from("<i", file, len(file) - 8)[0]
    start = len(file) - 8 - size
    if bytes(file[: len(MAGIC)]) != MAGIC or bytes(file[-len(MAGIC) :]) != MAGIC or start < len(MAGIC):
        raise compact.ThriftError("the Parquet writer did not write a plain (unencrypted) file")
    return compact.read_struct(file[start : len(file) - 8]), start


class Assembler:
    """Writes one Parquet file into ``sink`` from row groups given in order; ``close`` writes the footer, the
    ``template``'s with the row count and the row groups set."""

    def __init__(self, sink: WriteBehindSink, footer: compact.Struct) -> None:
        self._sink = sink
        self._start = sink.count
        self._template = footer
        self._groups: list[compact.Value] = []
        self._rows = 0
        sink.write(MAGIC)

    def add(self, ranges: Sequence[Columns]) -> None:
        """Append one row group, given as its column ranges in column order: their bytes one after the other,
        and one footer entry for them all, with the offsets moved to where the bytes went."""
        entries = []
        for columns in ranges:
            delta = self._sink.count - self._start - len(MAGIC)  # the bytes sat at offset 4 of their own file
            entries.append(_moved(columns.group, delta))
            self._sink.write_frozen(columns.data)
        group = _joined(entries, ordinal=len(self._groups))
        self._groups.append(group)
        # The file's count is the row groups' (a writer counts no rows in a table without columns, and this
        # file must be the one it writes).
        self._rows += _int(group.get(_GROUP_ROWS))

    def close(self) -> None:
        groups = compact.List(compact.LIST, compact.STRUCT, self._groups)
        values: dict[int, compact.Value] = {_FILE_NUM_ROWS: self._rows, _FILE_ROW_GROUPS: groups}
        fields = [compact.Field(f.id, f.type, values.get(f.id, f.value)) for f in self._template.fields]
        footer = compact.write_struct(compact.Struct(fields))
        self._sink.write(footer + struct.pack("<i", len(footer)) + MAGIC)


def _list(value: compact.Struct, field_id: int) -> list[compact.Value]:
    field = value.get(field_id)
    if field is None or not isinstance(field.value, compact.List):
        raise compact.ThriftError(f"Parquet footer without field {field_id}")
    return field.value.values


def _joined(entries: list[compact.Struct], *, ordinal: int) -> compact.Struct:
    """One RowGroup entry for the ranges' entries (already moved): their column chunks in order, their sizes
    summed, the first one's offset (where the row group starts) and everything else."""
    columns: list[compact.Value] = []
    for entry in entries:
        columns += _list(entry, _GROUP_COLUMNS)
    fields = []
    for f in entries[0].fields:
        value = f.value
        if f.id == _GROUP_COLUMNS:
            value = compact.List(compact.LIST, compact.STRUCT, columns)
        elif f.id in (_GROUP_BYTES, _GROUP_COMPRESSED):
            value = sum(_int(e.get(f.id)) for e in entries)
        elif f.id == _GROUP_ORDINAL:
            # pyarrow 26 writes none in a plain file; one that did would count row groups in parquet.thrift's
            # i16, which wraps past 32,767.
            value = (ordinal + 2**15) % 2**16 - 2**15
        fields.append(compact.Field(f.id, f.type, value))
    return compact.Struct(fields)


def _int(field: compact.Field | None) -> int:
    if field is None or not isinstance(field.value, int):
        raise compact.ThriftError("malformed Parquet footer: a row group's size or row count is missing")
    return field.value


def _moved(group: compact.Struct, delta: int) -> compact.Struct:
    """A copy of the RowGroup entry ``group`` with every file offset in it moved by ``delta`` bytes."""
    fields: list[compact.Field] = []
    for f in group.fields:
        value = f.value
        if f.id == _GROUP_FILE_OFFSET:
            value = _shift(value, delta)
        elif f.id == _GROUP_COLUMNS and isinstance(value, compact.List):
            value = compact.List(value.type, value.element_type, [_moved_chunk(c, delta) for c in value.values])
        fields.append(compact.Field(f.id, f.type, value))
    return compact.Struct(fields)


def _moved_chunk(chunk: compact.Value, delta: int) -> compact.Struct:
    if not isinstance(chunk, compact.Struct):
        raise compact.ThriftError("malformed Parquet footer: a column chunk is not a struct")
    fields: list[compact.Field] = []
    for f in chunk.fields:
        value = f.value
        if f.id in (_CHUNK_FILE_OFFSET, _CHUNK_OFFSET_INDEX, _CHUNK_COLUMN_INDEX):
            value = _shift(value, delta)
        elif f.id == _CHUNK_META and isinstance(value, compact.Struct):
            value = compact.Struct(
                [
                    compact.Field(m.id, m.type, _shift(m.value, delta) if m.id in _META_OFFSETS else m.value)
                    for m in value.fields
                ]
            )
        fields.append(compact.Field(f.id, f.type, value))
    return compact.Struct(fields)


def _shift(offset: compact.Value, delta: int) -> compact.Value:
    """An absolute file offset moved by ``delta``; 0 is left alone: writers put it in deprecated, unused fields."""
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise compact.ThriftError("malformed Parquet footer: an offset is not an integer")
    return offset + delta if offset else offset
