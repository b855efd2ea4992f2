"""Which columns of a Parquet part get a dictionary: those whose values repeat.

pyarrow dictionary-encodes every column unless told otherwise, and drops a column chunk's dictionary only once it
outgrows a page (1 MiB). A column of mostly distinct values under that size (ids, timestamps, prices) keeps its
dictionary, so the file holds each value once in the dictionary plus an index per row, more than the values
alone, and building the dictionary costs time. Measured on 600,000 rows of the bench data written by one
ParquetWriter, choosing per column as below took 0.42 s of CPU instead of 0.52 s and wrote 30.3 MiB instead of
34.3; bench.run's Parquet part went from 114 to 101 MiB (docs/benchmarks.md). parquet-mr and DuckDB choose per
column chunk too.

The choice is made once, from an export's first row group, on the thread that cuts the row groups, and holds for
the rest of the export: every row group of a part is then encoded with the same options, so the same batches
still give the same bytes whatever the threads' timing. It changes how values are encoded, never what is read
back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

# A column whose non-null values are more than this share distinct is written plain: its dictionary would hold
# most of its values once more, and its indices (log2 of the distinct count bits each) save little.
MOST_DISTINCT: Final = 0.5
# Fewer values than this say too little about a column (a short first run of an incremental export): such a
# column keeps its dictionary, pyarrow's default.
FEWEST_VALUES: Final = 1024


class _UnknownTypeError(Exception):
    """A type whose Parquet columns this module does not know how to find: keep pyarrow's default."""


def dictionary_columns(table: pa.Table, paths: Sequence[str]) -> list[str] | bool:
    """The column paths (as in the Parquet schema, in its order: ``paths``) of ``table``'s leaf columns to
    dictionary-encode, for ``ParquetWriter(use_dictionary=...)``; ``True`` (every column) when ``table``'s leaves
    cannot be matched with ``paths``."""
    try:
        leaves = [_leaves(column) for column in table.columns]
    except _UnknownTypeError:
        return True
    columns = [leaf for column in leaves for leaf in column]
    if len(columns) != len(paths):
        return True
    return [path for path, chunks in zip(paths, columns, strict=True) if _repeats(chunks)]


def _leaves(column: pa.ChunkedArray) -> list[list[pa.Array]]:
    """``column``'s leaf arrays in Parquet's column order, each as its chunks."""
    per_chunk = [list(_chunk_leaves(chunk)) for chunk in column.chunks]
    if not per_chunk:
        return [[] for _ in _chunk_leaves(pa.array([], type=column.type))]
    return [list(chunks) for chunks in zip(*per_chunk, strict=True)]


def _chunk_leaves(array: pa.Array) -> Iterator[pa.Array]:
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    kind = array.type
    if pa.types.is_struct(kind):
        for child in array.flatten():  # with the struct's nulls and slice applied
            yield from _chunk_leaves(child)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        yield from _chunk_leaves(array.flatten())
    elif pa.types.is_map(kind):  # its keys and items are of every map, not only of the slice
        offsets = array.offsets
        start = offsets[0].as_py() if len(offsets) else 0
        stop = offsets[-1].as_py() if len(offsets) else 0
        yield from _chunk_leaves(array.keys.slice(start, stop - start))
        yield from _chunk_leaves(array.items.slice(start, stop - start))
    elif pa.types.is_nested(kind):  # unions, list views: not written by this writer or not known here
        raise _UnknownTypeError(str(kind))
    else:
        yield array


def _repeats(chunks: list[pa.Array]) -> bool:
    if any(pa.types.is_dictionary(chunk.type) for chunk in chunks):
        return True  # already a dictionary: pyarrow writes it as one
    values = sum(len(chunk) - chunk.null_count for chunk in chunks)
    if values < FEWEST_VALUES:
        return True
    try:
        distinct = pc.count_distinct(pa.chunked_array(chunks), mode="only_valid").as_py()
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return True
    return bool(distinct <= MOST_DISTINCT * values)
