"""Parquet row groups encoded in column ranges and assembled: the same bytes as one ParquetWriter writes, for
every type the encoder takes; and the Thrift codec under it gives back the bytes it read."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import random
import struct
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests import thrift_oracle

from dsexport.engine import compact, rowgroups
from dsexport.engine.sink import WriteBehindSink


def _writer(compression: str = "snappy") -> rowgroups.WriterFactory:
    def new(out: pa.BufferOutputStream, schema: pa.Schema) -> pq.ParquetWriter:
        return pq.ParquetWriter(out, schema, compression=compression, write_statistics=True)

    return new


def mixed(n: int, seed: int) -> pa.Table:
    """Every kind of column the encoder meets: nested lists of structs, maps, dictionaries, decimals, binary,
    timestamps with and without a zone, nulls at every level, a column without values."""
    rng = random.Random(seed)
    maybe = [None if rng.random() < 0.1 else i for i in range(n)]
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "small": pa.array([None if v is None else v % 100 for v in maybe], pa.int8()),
            "price": pa.array([None if v is None else v / 7 for v in maybe], pa.float64()),
            "name": pa.array([None if v is None else f"name-{v % 97}" for v in maybe]),
            "kind": pa.array([["a", "b", "c"][i % 3] for i in range(n)]).dictionary_encode(),
            "at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in range(n)]),
            "naive": pa.array(
                [dt.datetime(2026, 1, 1) + dt.timedelta(minutes=m) for m in range(n)], pa.timestamp("ms")
            ),
            "day": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=i % 400) for i in range(n)]),
            "amount": pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(12, 2)),
            "blob": pa.array([bytes([i % 256]) * (i % 5) for i in range(n)], pa.binary()),
            "tags": pa.array([None if i % 11 == 0 else [f"t{j}" for j in range(i % 4)] for i in range(n)]),
            "items": pa.array(
                [[{"sku": f"S{i}-{j}", "qty": j} for j in range(i % 3)] for i in range(n)],
                pa.list_(pa.struct([("sku", pa.string()), ("qty", pa.int32())])),
            ),
            "attrs": pa.array([[("k", str(i)), ("n", None)] for i in range(n)], pa.map_(pa.string(), pa.string())),
            "nothing": pa.nulls(n),
        }
    )


def serial(groups: list[pa.Table], schema: pa.Schema, compression: str = "snappy") -> bytes:
    out = pa.BufferOutputStream()
    with _writer(compression)(out, schema) as writer:
        for table in groups:
            writer.write_table(table, row_group_size=table.num_rows)
    return bytes(out.getvalue())


def assembled(groups: list[pa.Table], schema: pa.Schema, ranges: int, compression: str = "snappy") -> bytes:
    out = io.BytesIO()
    sink = WriteBehindSink(out)
    assembler = rowgroups.Assembler(sink, rowgroups.template(_writer(compression), schema))
    for table in groups:
        assembler.add(
            [
                rowgroups.encode(
                    table.select(range(start, stop)),
                    pa.schema([schema.field(i) for i in range(start, stop)]),
                    _writer(compression),
                )
                for start, stop in rowgroups.column_ranges(table, ranges)
            ]
        )
    assembler.close()
    sink.finish()
    return out.getvalue()


@pytest.mark.parametrize("ranges", [1, 2, 3, 5, 100])
@pytest.mark.parametrize("compression", ["snappy", "zstd", "none"])
def test_assembled_file_is_byte_for_byte_what_one_writer_writes(ranges: int, compression: str) -> None:
    table = mixed(3000, seed=ranges)
    groups = [table.slice(0, 1000), table.slice(1000, 1), table.slice(1001, 1999)]
    expected = serial(groups, table.schema, compression)
    got = assembled(groups, table.schema, ranges, compression)
    assert got == expected
    read = pq.read_table(pa.BufferReader(got))
    assert read.equals(table)
    assert [pq.ParquetFile(pa.BufferReader(got)).metadata.row_group(i).num_rows for i in range(3)] == [1000, 1, 1999]


def test_a_table_without_columns_is_written_as_one_writer_writes_it() -> None:
    """(Which counts no rows: pyarrow 26 records 0 rows for row groups without columns.)"""
    table = pa.table({"a": range(10)}).select([])
    groups = [table.slice(0, 4), table.slice(4, 6)]
    assert assembled(groups, table.schema, 3) == serial(groups, table.schema)


def test_column_ranges_cover_every_column_once_in_order() -> None:
    table = mixed(50, seed=1)
    for wanted in range(1, 20):
        ranges = rowgroups.column_ranges(table, wanted)
        assert len(ranges) <= wanted
        assert [c for start, stop in ranges for c in range(start, stop)] == list(range(table.num_columns))
        assert all(stop > start for start, stop in ranges)


def test_rows_of_another_schema_are_refused() -> None:
    """As one writer of the whole file would: the footer's schema must be the data's."""
    table = pa.table({"a": pa.array(["x", "y"])})
    with pytest.raises(ValueError, match="does not match"):
        rowgroups.encode(table, pa.schema([("a", pa.null())]), _writer())


def test_a_row_group_longer_than_the_writer_allows_is_refused() -> None:
    table = pa.table({"a": pa.nulls(rowgroups.MAX_ROW_GROUP_ROWS + 1, pa.int8())})
    with pytest.raises(ValueError, match="longer than"):
        rowgroups.encode(table, table.schema, _writer())


# ----------------------------------------------------------------------------------------------------- thrift


def _footer(data: bytes) -> bytes:
    size = struct.unpack("<i", data[-8:-4])[0]
    return data[-8 - size : -8]


@pytest.mark.parametrize("seed", range(4))
def test_thrift_gives_back_the_footer_bytes_it_read(seed: int) -> None:
    table = mixed(500 + seed * 300, seed=seed)
    data = serial([table.slice(0, 100), table.slice(100)], table.schema)
    footer = _footer(data)
    assert compact.read_struct(footer) == thrift_oracle.read_struct(footer)
    assert compact.write_struct(compact.read_struct(footer)) == footer


def test_thrift_round_trips_every_compact_type() -> None:
    inner = compact.Struct([compact.Field(1, compact.I32, -5), compact.Field(40, compact.BINARY, b"far id")])
    value = compact.Struct(
        [
            compact.Field(1, compact.BOOL, True),
            compact.Field(2, compact.BOOL, False),
            compact.Field(3, compact.BYTE, -7),
            compact.Field(4, compact.I16, -300),
            compact.Field(5, compact.I32, 2**31 - 1),
            compact.Field(6, compact.I64, -(2**63)),
            compact.Field(7, compact.DOUBLE, 1.5),
            compact.Field(30, compact.BINARY, b"\x00\xff" * 100),
            compact.Field(31, compact.LIST, compact.List(compact.LIST, compact.I64, list(range(-20, 20)))),
            compact.Field(32, compact.SET, compact.List(compact.SET, compact.BOOL, [True, False, True])),
            compact.Field(33, compact.MAP, compact.Map(compact.BINARY, compact.STRUCT, [(b"k", inner)])),
            compact.Field(34, compact.MAP, compact.Map(0, 0, [])),
            compact.Field(37, compact.UUID, uuid.UUID(int=2**127 + 5)),
            compact.Field(35, compact.STRUCT, inner),
            compact.Field(36, compact.LIST, compact.List(compact.LIST, compact.STRUCT, [inner] * 3)),
        ]
    )
    data = compact.write_struct(value)
    assert data == thrift_oracle.write_struct(value)
    assert compact.read_struct(data) == value
    assert compact.write_struct(compact.read_struct(data)) == data


_SCALARS: dict[int, st.SearchStrategy[compact.Value]] = {
    compact.BOOL: st.booleans(),
    compact.BYTE: st.integers(-(2**7), 2**7 - 1),
    compact.I16: st.integers(-(2**15), 2**15 - 1),
    compact.I32: st.integers(-(2**31), 2**31 - 1),
    compact.I64: st.integers(-(2**63), 2**63 - 1),
    compact.DOUBLE: st.floats(allow_nan=False),
    compact.BINARY: st.binary(max_size=20),
    compact.UUID: st.uuids(),
}
_TYPES = [*_SCALARS, compact.STRUCT, compact.LIST, compact.SET, compact.MAP]


def _values(ttype: int, depth: int) -> st.SearchStrategy[compact.Value]:
    if ttype in _SCALARS:
        return _SCALARS[ttype]
    if depth <= 0:
        return st.just(_empty(ttype))
    if ttype == compact.STRUCT:
        return _structs(depth - 1)
    kinds = st.sampled_from(_TYPES)
    if ttype in (compact.LIST, compact.SET):
        return kinds.flatmap(
            lambda e: st.lists(_values(e, depth - 1), max_size=20).map(lambda v: compact.List(ttype, e, v))
        )
    pairs = st.tuples(kinds, kinds).flatmap(
        lambda kv: st.lists(
            st.tuples(_values(kv[0], depth - 1), _values(kv[1], depth - 1)), min_size=1, max_size=4
        ).map(lambda items: compact.Map(kv[0], kv[1], items))
    )
    return st.one_of(st.just(compact.Map(0, 0, [])), pairs)


def _empty(ttype: int) -> compact.Value:
    if ttype == compact.STRUCT:
        return compact.Struct([])
    if ttype == compact.MAP:
        return compact.Map(0, 0, [])
    return compact.List(ttype, compact.I32, [])


def _field(field_id: int, ttype: int, depth: int) -> st.SearchStrategy[compact.Field]:
    return _values(ttype, depth).map(lambda value: compact.Field(field_id, ttype, value))


def _structs(depth: int) -> st.SearchStrategy[compact.Struct]:
    specs = st.lists(st.tuples(st.integers(-(2**15), 2**15 - 1), st.sampled_from(_TYPES)), max_size=8)
    fields = specs.flatmap(lambda spec: st.tuples(*[_field(i, t, depth) for i, t in spec]))
    return fields.map(lambda each: compact.Struct(list(each)))


def _small_ids(depth: int) -> st.SearchStrategy[compact.Struct]:
    """Increasing ids 1 to 16 apart, as real structs have: the short field header up to 15, the long one past."""
    return _structs(depth).flatmap(
        lambda s: st.lists(st.integers(1, 16), min_size=len(s.fields), max_size=len(s.fields)).map(
            lambda steps: compact.Struct(
                [compact.Field(sum(steps[: n + 1]), f.type, f.value) for n, f in enumerate(s.fields)]
            )
        )
    )


@settings(max_examples=300, deadline=None)
@given(st.one_of(_structs(3), _small_ids(3)))
def test_thrift_codec_writes_and_reads_what_apache_thrift_does(value: compact.Struct) -> None:
    data = compact.write_struct(value)
    assert data == thrift_oracle.write_struct(value)
    assert compact.read_struct(data) == thrift_oracle.read_struct(data) == value


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"\x15",  # a field without its value
        b"\x18\x05ab",  # a binary shorter than its length
        b"\x1e\x00",  # an unknown type
        b"\x1d\x00",  # a UUID cut short
        b"\x17\x00\x00",  # a double cut short
        b"\x19\x3c\x00",  # a list cut short
        b"\x15\x02\x00\x00",  # bytes after the struct
        b"\x1c" * 5000,  # nested deeper than Python recurses
    ],
)
def test_thrift_refuses_bytes_that_are_not_one_struct(data: bytes) -> None:
    with pytest.raises(compact.ThriftError):
        compact.read_struct(data)
