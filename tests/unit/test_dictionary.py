"""The columns of a Parquet part that get a dictionary: those whose values repeat, found in the first row group and
kept for the whole export."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tests.unit.test_rowgroups import mixed

from dsexport.api import Format
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import writers
from dsexport.engine.dictionary import FEWEST_VALUES, dictionary_columns
from dsexport.engine.memory import DEFAULT_BUDGET, Plan


def paths(schema: pa.Schema) -> list[str]:
    out = pa.BufferOutputStream()
    pq.ParquetWriter(out, schema).close()
    return [column.path for column in pq.read_metadata(pa.BufferReader(out.getvalue())).schema]


def with_dictionary(data: bytes) -> set[str]:
    """The columns whose chunks all have a dictionary page."""
    meta = pq.read_metadata(pa.BufferReader(data))
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    having = {chunk.path_in_schema for chunk in chunks if chunk.has_dictionary_page}
    lacking = {chunk.path_in_schema for chunk in chunks if not chunk.has_dictionary_page}
    return having - lacking


def written(table: pa.Table, dictionary: list[str] | bool) -> bytes:
    out = pa.BufferOutputStream()
    with pq.ParquetWriter(out, table.schema, use_dictionary=dictionary) as writer:
        writer.write_table(table)
    return bytes(out.getvalue())


REPEATING = {
    "small",  # 100 values
    "name",  # 97
    "kind",  # already a dictionary
    "day",  # 400
    "blob",  # 5
    "tags.list.element",  # 3
    "items.list.element.qty",  # 3
    "attrs.key_value.key",  # 2
    "nothing",  # no values: too few to tell, so pyarrow's default
}


def test_columns_of_repeating_values_get_a_dictionary_and_columns_of_distinct_values_do_not() -> None:
    table = mixed(5000, seed=1)
    chosen = dictionary_columns(table, paths(table.schema))
    assert isinstance(chosen, list)  # not "every column"
    assert set(chosen) == REPEATING
    # The paths are the writer's: it gives exactly those columns a dictionary. Booleans never have one.
    assert with_dictionary(written(table, chosen)) == REPEATING
    assert pq.read_table(pa.BufferReader(written(table, chosen))).equals(table)


def test_only_the_values_of_a_slice_count() -> None:
    """A map's keys and items are those of every map in the array, not only of the slice: the slice's are
    counted."""
    n = 4 * FEWEST_VALUES
    maps = pa.array(
        [[(f"unique-{i}", "v")] for i in range(n)] + [[("same", "v")] for _ in range(n)],
        pa.map_(pa.string(), pa.string()),
    )
    ids = pa.array(range(2 * n), pa.int64())
    table = pa.table({"attrs": maps, "id": ids})
    assert dictionary_columns(table.slice(0, n), paths(table.schema)) == ["attrs.key_value.value"]
    assert dictionary_columns(table.slice(n, n), paths(table.schema)) == [
        "attrs.key_value.key",
        "attrs.key_value.value",
    ]


def test_too_few_values_to_tell_keep_the_dictionary() -> None:
    table = pa.table({"id": pa.array(range(FEWEST_VALUES - 1), pa.int64())})
    assert dictionary_columns(table, ["id"]) == ["id"]
    table = pa.table({"id": pa.array(range(FEWEST_VALUES), pa.int64())})
    assert dictionary_columns(table, ["id"]) == []


def test_a_schema_whose_leaves_do_not_match_the_paths_keeps_every_dictionary() -> None:
    table = pa.table({"id": pa.array(range(FEWEST_VALUES), pa.int64())})
    assert dictionary_columns(table, ["id", "other"]) is True


def test_the_first_row_group_chooses_for_every_row_group_of_every_part(tmp_path: Path) -> None:
    """``code`` repeats in the first row group and not later; ``id`` never repeats: every row group of every part
    is encoded as the first one chose."""
    rows = 3 * writers.ROW_GROUP_ROWS
    schema = pa.schema([("id", pa.int64()), ("code", pa.string())])
    codes = [f"c{i % 10}" if i < writers.ROW_GROUP_ROWS else f"c{i}" for i in range(rows)]
    table = pa.table([pa.array(range(rows), pa.int64()), pa.array(codes)], schema=schema)
    parts = writers.write_parts(
        table.to_batches(max_chunksize=writers.ROW_GROUP_ROWS),
        schema=schema,
        fmt=Format.model_validate({"type": "parquet", "maxRecordsPerFile": 2 * writers.ROW_GROUP_ROWS}),
        transport=FilesystemTransport(tmp_path),
        folder="slot",
        run_id="r1",
        plan=Plan.of(DEFAULT_BUDGET),
    )
    assert [pq.read_metadata(tmp_path / "slot" / part.path).num_row_groups for part in parts] == [2, 1]
    for part in parts:
        data = (tmp_path / "slot" / part.path).read_bytes()
        assert with_dictionary(data) == {"code"}
    read = pa.concat_tables(pq.read_table(tmp_path / "slot" / part.path) for part in parts)
    assert read.equals(table)
