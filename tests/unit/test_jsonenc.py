"""Tests for dsexport.jsonenc: Arrow -> NDJSON encoding (see docs/json-encoding.md)."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import pathlib
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dsexport.engine import jsonenc
from dsexport.engine.jsonenc import NdjsonWriter, encode_batch, json_schema
from dsexport.errors import SchemaError

UNITS = ["s", "ms", "us", "ns"]
PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
EPOCH = dt.datetime(1970, 1, 1)  # naive on purpose: arithmetic only


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in output")


def ndjson_bytes(*batches: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    writer = NdjsonWriter(sink)
    for batch in batches:
        writer.write(batch)
    writer.close()
    return sink.getvalue()


def ndjson_rows(*batches: pa.RecordBatch) -> list[dict[str, Any]]:
    """Write the batches and parse the output strictly, line by line."""
    data = ndjson_bytes(*batches)
    assert data == b"" or data.endswith(b"\n")
    # split on b"\n" only: str.splitlines() would also split on U+2028 etc. inside strings
    lines = data.split(b"\n")[:-1]
    rows = [json.loads(line, parse_constant=_reject_constant) for line in lines]
    assert all(isinstance(row, dict) for row in rows)
    return rows


def column_values(arr: pa.Array, name: str = "c") -> list[Any]:
    batch = pa.record_batch([arr], names=[name])
    rows = ndjson_rows(batch)
    assert len(rows) == len(arr)
    assert all(list(row) == [name] for row in rows)
    encoded = encode_batch(batch)
    encoded.validate(full=True)
    assert encoded.schema == json_schema(batch.schema)
    return [row[name] for row in rows]


def encode_array(arr: pa.Array) -> pa.Array:
    """encode_batch on a one-column batch (small, so always on the calling thread)."""
    return encode_batch(pa.record_batch([arr], names=["c"])).column(0)


def iso_utc(value: int, unit: str) -> str:
    """Reference encoding of a timestamp storage value, independent of pyarrow's formatting."""
    seconds, frac = divmod(value, PER_SECOND[unit])
    d = EPOCH + dt.timedelta(seconds=seconds)
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    if DIGITS[unit]:
        text += f".{frac:0{DIGITS[unit]}d}"
    return text + "Z"


# --------------------------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize("unit", UNITS)
def test_naive_timestamp_is_utc_with_unit_digits(unit: str) -> None:
    instant = 1_709_214_306_123_456_789  # 2024-02-29T13:45:06.123456789Z in ns
    value = instant // (1_000_000_000 // PER_SECOND[unit])
    fraction = "123456789"[: DIGITS[unit]]
    expected = "2024-02-29T13:45:06" + (f".{fraction}" if fraction else "") + "Z"
    zero = "1970-01-01T00:00:00" + ("." + "0" * DIGITS[unit] if DIGITS[unit] else "") + "Z"
    before = "1969-12-31T23:59:59" + ("." + "9" * DIGITS[unit] if DIGITS[unit] else "") + "Z"
    got = column_values(pa.array([value, None, 0, -1], pa.timestamp(unit)))
    assert got == [expected, None, zero, before]


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("tz", ["Europe/Paris", "America/New_York", "Asia/Kolkata", "+05:30", "UTC"])
def test_tz_aware_timestamp_is_converted_to_utc(unit: str, tz: str) -> None:
    zone = ZoneInfo("Asia/Kolkata") if tz == "+05:30" else ZoneInfo(tz)
    summer = dt.datetime(2024, 7, 1, 12, 30, 15, tzinfo=zone)
    winter = dt.datetime(2024, 1, 15, 0, 5, 0, tzinfo=zone)
    arr = pa.array([summer, None, winter], pa.timestamp(unit, tz))
    frac = "." + "0" * DIGITS[unit] if DIGITS[unit] else ""

    def utc(value: dt.datetime) -> str:
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"

    assert column_values(arr) == [utc(summer), None, utc(winter)]


def test_paris_timestamp_is_written_in_utc_not_local_time() -> None:
    paris = dt.datetime(2024, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))  # CEST = UTC+2
    arr = pa.array([paris], pa.timestamp("ms", "Europe/Paris"))
    assert column_values(arr) == ["2024-07-01T10:00:00.000Z"]


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_timestamp_range_limits(unit: str) -> None:
    first = -62_167_219_200 * PER_SECOND[unit]  # 0000-01-01T00:00:00Z
    last = 253_402_300_800 * PER_SECOND[unit] - 1  # 9999-12-31T23:59:59.999...Z
    frac_zero = "." + "0" * DIGITS[unit] if DIGITS[unit] else ""
    frac_nine = "." + "9" * DIGITS[unit] if DIGITS[unit] else ""
    got = column_values(pa.array([first, last], pa.timestamp(unit)))
    assert got == [f"0000-01-01T00:00:00{frac_zero}Z", f"9999-12-31T23:59:59{frac_nine}Z"]
    for bad in (first - 1, last + 1):
        with pytest.raises(SchemaError, match="outside the JSON-encodable range"):
            encode_batch(pa.record_batch([pa.array([0, bad], pa.timestamp(unit))], names=["c"]))


# ------------------------------------------------------------------------------------------ dates, times


def test_dates() -> None:
    days = [dt.date(2024, 2, 29), None, dt.date(1969, 12, 31), dt.date(1, 1, 1), dt.date(9999, 12, 31)]
    expected = ["2024-02-29", None, "1969-12-31", "0001-01-01", "9999-12-31"]
    assert column_values(pa.array(days, pa.date32())) == expected
    assert column_values(pa.array(days, pa.date64())) == expected


def test_date_out_of_range_or_not_whole_day_raises() -> None:
    with pytest.raises(SchemaError, match="outside the JSON-encodable range"):
        encode_batch(pa.record_batch([pa.array([2_932_897], pa.date32())], names=["c"]))
    with pytest.raises(SchemaError, match="whole number of days"):
        encode_batch(pa.record_batch([pa.array([86_400_000 + 1], pa.date64())], names=["c"]))


@pytest.mark.parametrize(
    ("arrow_type", "expected", "midnight"),
    [
        (pa.time32("s"), "13:45:06", "00:00:00"),
        (pa.time32("ms"), "13:45:06.123", "00:00:00.000"),
        (pa.time64("us"), "13:45:06.123456", "00:00:00.000000"),
        (pa.time64("ns"), "13:45:06.123456000", "00:00:00.000000000"),
    ],
)
def test_times(arrow_type: pa.DataType, expected: str, midnight: str) -> None:
    arr = pa.array([dt.time(13, 45, 6, 123456), None, dt.time(0, 0)], arrow_type)
    assert column_values(arr) == [expected, None, midnight]


def test_time_outside_one_day_raises() -> None:
    with pytest.raises(SchemaError, match="outside the JSON-encodable range"):
        encode_batch(pa.record_batch([pa.array([86_400], pa.time32("s"))], names=["c"]))


# -------------------------------------------------------------------------------------- decimals, numbers


def test_decimals_keep_every_digit() -> None:
    d128 = [
        decimal.Decimal("1234567890123456789012345678.9012345678"),
        None,
        decimal.Decimal("-0.0000000001"),
        decimal.Decimal("0"),
    ]
    assert column_values(pa.array(d128, pa.decimal128(38, 10))) == [
        "1234567890123456789012345678.9012345678",
        None,
        "-0.0000000001",
        "0.0000000000",
    ]
    big = "9" * 56 + "." + "1234567890" * 2  # 76 digits
    values = [decimal.Decimal(big), decimal.Decimal("-" + big)]
    assert column_values(pa.array(values, pa.decimal256(76, 20))) == [big, "-" + big]
    assert column_values(pa.array([decimal.Decimal("-12.34")], pa.decimal32(6, 2))) == ["-12.34"]
    assert column_values(pa.array([decimal.Decimal("123456789012.345")], pa.decimal64(18, 3))) == ["123456789012.345"]


@pytest.mark.parametrize("float_type", [pa.float64(), pa.float32(), pa.float16()])
def test_nan_and_infinity_become_null(float_type: pa.DataType) -> None:
    arr = pa.array([1.5, math.nan, math.inf, -math.inf, None, -2.25], float_type)
    assert column_values(arr) == [1.5, None, None, None, None, -2.25]
    # encode_batch itself nulls them (not only the polars serializer), e.g. for other writers
    encoded = encode_batch(pa.record_batch([arr], names=["c"])).column(0)
    assert encoded.to_pylist() == [1.5, None, None, None, None, -2.25]
    assert encoded.null_count == 4


def test_non_null_float_field_becomes_nullable() -> None:
    schema = pa.schema([pa.field("f", pa.float64(), nullable=False), pa.field("i", pa.int64(), nullable=False)])
    out = json_schema(schema)
    assert out.field("f").nullable
    assert not out.field("i").nullable


def test_float64_values_round_trip_exactly() -> None:
    values = [0.1, 1 / 3, 1e300, 5e-324, -0.0, 2.0**53 + 2, 123456789.125]
    got = column_values(pa.array(values, pa.float64()))
    assert got == values
    assert math.copysign(1.0, got[4]) == -1.0


def test_int64_and_uint64_stay_exact_numbers() -> None:
    got = column_values(pa.array([2**63 - 1, -(2**63), None], pa.int64()))
    assert got == [2**63 - 1, -(2**63), None]
    assert column_values(pa.array([2**64 - 1, 0], pa.uint64())) == [2**64 - 1, 0]


@pytest.mark.parametrize("unit", UNITS)
def test_duration_is_count_in_its_unit(unit: str) -> None:
    assert column_values(pa.array([5, None, -3], pa.duration(unit))) == [5, None, -3]
    assert json_schema(pa.schema([("d", pa.duration(unit))])).field("d").type == pa.int64()


# ------------------------------------------------------------------------------------------------ binary


BINARY_VALUES = [b"", b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", bytes(range(256)), None, b"\xff\xfe"]


@pytest.mark.parametrize("arrow_type", [pa.binary(), pa.large_binary(), pa.binary_view()])
def test_binary_is_padded_standard_base64(arrow_type: pa.DataType) -> None:
    got = column_values(pa.array(BINARY_VALUES, arrow_type))
    assert got[:7] == ["", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"]  # RFC 4648 vectors
    for text, raw in zip(got, BINARY_VALUES, strict=True):
        if raw is None:
            assert text is None
        else:
            assert base64.b64decode(text, validate=True) == raw
            assert text == base64.b64encode(raw).decode()


@pytest.mark.parametrize("width", [1, 2, 3, 4, 16])
def test_fixed_size_binary_base64(width: int) -> None:
    raw = [bytes((i * 7 + j) % 256 for j in range(width)) for i in range(5)]
    values: list[bytes | None] = [*raw[:2], None, *raw[2:]]
    got = column_values(pa.array(values, pa.binary(width)))
    assert got == [None if v is None else base64.b64encode(v).decode() for v in values]


@given(
    values=st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=40),
    start=st.integers(0, 40),
    length=st.integers(0, 40),
)
@settings(max_examples=150, deadline=None)
def test_base64_matches_python_on_sliced_arrays(values: list[bytes | None], start: int, length: int) -> None:
    arr = pa.array(values, pa.binary()).slice(min(start, len(values)), length)
    expected = [None if v is None else base64.b64encode(v).decode() for v in arr.to_pylist()]
    assert encode_array(arr).to_pylist() == expected
    assert column_values(arr) == expected


# --------------------------------------------------------------------------------------------------- maps


def test_map_becomes_key_value_list() -> None:
    arr = pa.array(
        [[("b", 1), ("a", None)], None, [], [("a", 3)]],
        pa.map_(pa.string(), pa.int64()),
    )
    assert column_values(arr) == [
        [{"key": "b", "value": 1}, {"key": "a", "value": None}],
        None,
        [],
        [{"key": "a", "value": 3}],
    ]


def test_map_with_non_string_keys_and_converted_values_keeps_order() -> None:
    t = dt.datetime(2024, 5, 6, 7, 8, 9)  # naive: a timestamp without tz
    arr = pa.array(
        [[(30, t), (-1, None), (7, t)], [(2, None)]],
        pa.map_(pa.int32(), pa.timestamp("s")),
    )
    assert column_values(arr) == [
        [
            {"key": 30, "value": "2024-05-06T07:08:09Z"},
            {"key": -1, "value": None},
            {"key": 7, "value": "2024-05-06T07:08:09Z"},
        ],
        [{"key": 2, "value": None}],
    ]
    out_type = json_schema(pa.schema([("m", arr.type)])).field("m").type
    assert pa.types.is_list(out_type)
    assert [f.name for f in out_type.value_type] == ["key", "value"]


# ----------------------------------------------------------------------------------------- nested & nulls


def test_nested_list_of_structs_with_timestamps_and_nulls_everywhere() -> None:
    paris = ZoneInfo("Europe/Paris")
    event = pa.struct([("at", pa.timestamp("ms", "Europe/Paris")), ("tags", pa.list_(pa.string()))])
    rows = [
        [{"at": dt.datetime(2024, 1, 1, 1, 0, tzinfo=paris), "tags": ["x", None]}, None, {"at": None}],
        None,
        [],
        [None],
        [{"at": dt.datetime(2023, 7, 1, 9, 30, 0, 250000, tzinfo=paris), "tags": []}],
    ]
    got = column_values(pa.array(rows, pa.list_(event)))
    assert got == [
        [{"at": "2024-01-01T00:00:00.000Z", "tags": ["x", None]}, None, {"at": None, "tags": None}],
        None,
        [],
        [None],
        [{"at": "2023-07-01T07:30:00.250Z", "tags": []}],
    ]


def test_nulls_at_every_level_of_structs_and_lists() -> None:
    inner = pa.struct([("d", pa.date32()), ("xs", pa.large_list(pa.binary()))])
    outer = pa.struct([("inner", inner), ("n", pa.int64())])
    rows = [
        {"inner": {"d": dt.date(2020, 1, 2), "xs": [b"a", None]}, "n": 1},
        {"inner": {"d": None, "xs": None}, "n": None},
        {"inner": None, "n": 3},
        None,
        {"inner": {"d": dt.date(2020, 1, 3), "xs": []}, "n": 5},
    ]
    assert column_values(pa.array(rows, outer)) == [
        {"inner": {"d": "2020-01-02", "xs": ["YQ==", None]}, "n": 1},
        {"inner": {"d": None, "xs": None}, "n": None},
        {"inner": None, "n": 3},
        None,
        {"inner": {"d": "2020-01-03", "xs": []}, "n": 5},
    ]


def test_fixed_size_list_of_timestamps() -> None:
    arr = pa.array([[0, 1], None, [2, None]], pa.list_(pa.timestamp("s"), 2))
    assert column_values(arr) == [
        ["1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z"],
        None,
        ["1970-01-01T00:00:02Z", None],
    ]


def test_list_view_and_run_end_encoded() -> None:
    lv = pa.array([[1, 2], None, [], [3]], pa.large_list_view(pa.int64()))
    assert column_values(lv) == [[1, 2], None, [], [3]]
    ree = pa.RunEndEncodedArray.from_arrays([2, 3, 5], pa.array([dt.date(2020, 1, 1), None, dt.date(1999, 9, 9)]))
    assert column_values(ree) == ["2020-01-01", "2020-01-01", None, "1999-09-09", "1999-09-09"]


def test_extension_types() -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    arr = pa.array([ids[0].bytes, None, *(u.bytes for u in ids[1:])], pa.uuid())
    expected = [str(ids[0]), None, *(str(u) for u in ids[1:])]
    assert column_values(arr) == expected
    assert column_values(arr.slice(1)) == expected[1:]
    assert column_values(pa.array(['{"a": [1]}', None], pa.json_())) == ['{"a": [1]}', None]


def test_dictionary_is_decoded() -> None:
    strings = pa.array(["b", None, "a", "b"]).dictionary_encode()
    assert column_values(strings) == ["b", None, "a", "b"]
    stamps = pa.DictionaryArray.from_arrays(
        pa.array([1, 0, None, 1], pa.int8()), pa.array([0, 86_400], pa.timestamp("s", "Europe/Paris"))
    )
    assert column_values(stamps) == ["1970-01-02T00:00:00Z", "1970-01-01T00:00:00Z", None, "1970-01-02T00:00:00Z"]
    # a dictionary larger than the array is decoded first
    big = pa.DictionaryArray.from_arrays(pa.array([2], pa.int32()), pa.array([1.0, 2.0, math.nan]))
    assert column_values(big) == [None]


def test_strings_are_not_mangled() -> None:
    values = ['quote " backslash \\ slash /', "line\nbreak\ttab\r", "\x00\x01\x1f\x7f", "\u2028\u2029\x85", "é😀中", ""]
    assert column_values(pa.array([*values, None])) == [*values, None]
    assert column_values(pa.array(values, pa.large_string())) == values
    assert column_values(pa.array(values, pa.string_view())) == values


def test_odd_column_names_are_escaped() -> None:
    batch = pa.record_batch([pa.array([1])], names=['we"ird\nname\\'])
    assert ndjson_rows(batch) == [{'we"ird\nname\\': 1}]


# ------------------------------------------------------------------------------------- schema, fast path


def test_batch_needing_no_conversion_is_returned_unchanged() -> None:
    batch = pa.record_batch(
        {
            "i": pa.array([1, None], pa.int64()),
            "s": pa.array(["a", None]),
            "b": pa.array([True, None]),
            "l": pa.array([[1], None], pa.list_(pa.int32())),
            "st": pa.array([{"x": "y", "z": [1]}, None]),
        }
    )
    assert encode_batch(batch) is batch
    assert json_schema(batch.schema) is batch.schema


def test_conversion_plan_is_cached_per_schema() -> None:
    batch = pa.record_batch({"t": pa.array([0], pa.timestamp("s"))})
    encode_batch(batch)
    before = jsonenc._plan_for.cache_info()
    for _ in range(3):
        encode_batch(pa.record_batch({"t": pa.array([1], pa.timestamp("s"))}))
    after = jsonenc._plan_for.cache_info()
    assert after.hits == before.hits + 3
    assert after.misses == before.misses


def test_schemas_differing_only_in_metadata_keep_their_own_metadata() -> None:
    def schema(tag: str, schema_tag: str) -> pa.Schema:
        inner = pa.field("t", pa.timestamp("s"), metadata={"tag": tag})
        fields = [pa.field("s", pa.struct([inner]), metadata={"tag": tag}), pa.field("d", pa.date32())]
        return pa.schema(fields, metadata={"tag": schema_tag})

    # pyarrow's == and hash() ignore field metadata, so a naive cache would mix these up
    for tag, schema_tag in (("one", "x"), ("two", "x"), ("two", "y")):
        out = json_schema(schema(tag, schema_tag))
        assert out.metadata == {b"tag": schema_tag.encode()}
        assert out.field("s").metadata == {b"tag": tag.encode()}
        assert out.field("s").type.field("t").metadata == {b"tag": tag.encode()}
        encoded = encode_batch(pa.RecordBatch.from_pylist([{"s": {"t": 0}, "d": None}], schema=schema(tag, schema_tag)))
        assert encoded.schema.field("s").metadata == {b"tag": tag.encode()}


def test_json_schema_matches_encoded_batches() -> None:
    batch = pa.record_batch(
        {
            "ts": pa.array([0, None], pa.timestamp("ns", "Europe/Paris")),
            "m": pa.array([[("k", 1.5)], None], pa.map_(pa.string(), pa.float32())),
            "l": pa.array([[b"x"], None], pa.list_(pa.field("el", pa.binary(), nullable=False))),
            "st": pa.array(
                [{"d": decimal.Decimal("1.25"), "u": 2**64 - 1}, None],
                pa.struct([("d", pa.decimal128(5, 2)), ("u", pa.uint64())]),
            ),
            "dict": pa.array(["a", "b"]).dictionary_encode(),
        },
        metadata={b"k": b"v"},
    )
    out = json_schema(batch.schema)
    assert encode_batch(batch).schema == out
    assert out.metadata == {b"k": b"v"}
    assert out.field("ts").type == pa.large_string()
    assert out.field("dict").type == pa.string()


def test_unsupported_types_raise_a_schema_error_naming_the_column() -> None:
    union = pa.union([pa.field("a", pa.int32())], mode="dense")
    with pytest.raises(SchemaError, match=r"column 'u' has Arrow type dense_union.*no JSON encoding") as raised:
        json_schema(pa.schema([("ok", pa.int64()), ("u", union)]))
    assert raised.value.permanent
    with pytest.raises(SchemaError, match=r"column 's' has Arrow type struct<i: month_day_nano_interval>"):
        json_schema(pa.schema([("s", pa.struct([("i", pa.month_day_nano_interval())]))]))


# --------------------------------------------------------------------------------------------- the writer


def test_writer_appends_rows_in_column_order() -> None:
    sink = io.BytesIO()
    sink.write(b"HEADER\n")
    batch = pa.record_batch({"z": [1, 2], "a": ["x", "y"], "m": [dt.date(2020, 1, 1), None]})
    writer = NdjsonWriter(sink)
    writer.write(batch)
    writer.write(batch.slice(1))
    writer.close()
    assert not sink.closed
    lines = sink.getvalue().split(b"\n")
    assert lines[0] == b"HEADER"
    assert lines[-1] == b""
    rows = [json.loads(line) for line in lines[1:-1]]
    assert rows == [
        {"z": 1, "a": "x", "m": "2020-01-01"},
        {"z": 2, "a": "y", "m": None},
        {"z": 2, "a": "y", "m": None},
    ]
    assert all(list(row) == ["z", "a", "m"] for row in rows)
    assert writer.rows_written == 3


def test_writer_on_a_real_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "out.ndjson"
    batch = pa.record_batch({"t": pa.array([1_000], pa.timestamp("ms", "UTC"))})
    with path.open("wb") as f:
        f.write(b"#")
        with NdjsonWriter(f) as writer:
            writer.write(batch)
            writer.write(batch)
        f.write(b"#")
    assert path.read_bytes() == b'#{"t":"1970-01-01T00:00:01.000Z"}\n{"t":"1970-01-01T00:00:01.000Z"}\n#'


def test_writer_rejects_writes_after_close() -> None:
    writer = NdjsonWriter(io.BytesIO())
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(pa.record_batch({"a": [1]}))


def test_batch_without_columns_writes_empty_objects() -> None:
    batch = pa.record_batch({"a": [1, 2, 3]}).select([])
    assert ndjson_bytes(batch) == b"{}\n{}\n{}\n"
    assert ndjson_bytes(pa.record_batch({"a": pa.array([], pa.int64())})) == b""


def test_duplicate_names_are_rejected() -> None:
    dup_columns = pa.record_batch([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(SchemaError, match="duplicate field name 'a'"):
        ndjson_bytes(dup_columns)
    dup_fields = pa.StructArray.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"])
    with pytest.raises(SchemaError, match="duplicate field name 'x'"):
        ndjson_bytes(pa.record_batch([dup_fields], names=["s"]))


def test_sliced_batches_give_the_same_rows_as_the_whole_table() -> None:
    n = 1000
    table = pa.table(
        {
            "l": pa.array([[str(i)] * (i % 4) if i % 5 else None for i in range(n)], pa.list_(pa.string())),
            "m": pa.array([[(i, i * 1.5)] if i % 3 else None for i in range(n)], pa.map_(pa.int64(), pa.float64())),
            "s": pa.array(
                [{"t": i * 1000, "xs": [i] * (i % 3)} if i % 7 else None for i in range(n)],
                pa.struct([("t", pa.timestamp("ms")), ("xs", pa.list_(pa.int64()))]),
            ),
            "f": pa.array([[i, i + 1] if i % 2 else None for i in range(n)], pa.list_(pa.int16(), 2)),
        }
    )
    whole = ndjson_rows(*table.combine_chunks().to_batches())
    sliced = table.to_batches(max_chunksize=97)
    assert any(b.column(0).offset > 0 for b in sliced)
    assert ndjson_rows(*sliced) == whole
    assert len(whole) == n
    assert whole[1] == {
        "l": ["1"],
        "m": [{"key": 1, "value": 1.5}],
        "s": {"t": "1970-01-01T00:00:01.000Z", "xs": [1]},
        "f": [1, 2],
    }
    for batch in sliced:
        encode_batch(batch).validate(full=True)


def test_sliced_list_children_are_compacted_for_polars() -> None:
    table = pa.table({"l": pa.array([[i] * 3 for i in range(100)], pa.list_(pa.int64()))})
    batch = table.to_batches(max_chunksize=10)[5]
    compacted = jsonenc._compact(batch.column(0))
    assert compacted.to_pylist() == batch.column(0).to_pylist()
    assert len(compacted.values) == 30  # not the 300 of the shared child
    compacted.validate(full=True)


# ------------------------------------------------------------------------------------------ property test


TIMEZONES = [None, "UTC", "Europe/Paris", "America/Sao_Paulo", "+05:30"]
TS_MIN = -62_135_596_800  # 0001-01-01 (Python's datetime cannot express year 0)
TS_END = 253_402_300_800


@st.composite
def leaf_types(draw: st.DrawFn) -> pa.DataType:
    kind = draw(st.sampled_from(["int64", "int32", "uint64", "string", "timestamp", "float64", "binary"]))
    if kind == "timestamp":
        return pa.timestamp(draw(st.sampled_from(UNITS)), draw(st.sampled_from(TIMEZONES)))
    return {
        "int64": pa.int64(),
        "int32": pa.int32(),
        "uint64": pa.uint64(),
        "string": pa.string(),
        "float64": pa.float64(),
        "binary": pa.binary(),
    }[kind]


def nested_types() -> st.SearchStrategy[pa.DataType]:
    def extend(children: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
        names = st.lists(st.sampled_from(["a", "b", "c", "d", "é"]), min_size=1, max_size=3, unique=True)
        structs = st.builds(
            lambda ns, ts: pa.struct([pa.field(n, t) for n, t in zip(ns, ts, strict=False)]),
            names,
            st.lists(children, min_size=3, max_size=3),
        )
        return st.one_of(
            children.map(pa.list_),
            children.map(pa.large_list),
            structs,
            children.map(lambda t: pa.map_(pa.int32(), t)),
        )

    return st.recursive(leaf_types(), extend, max_leaves=6)


def values_of(t: pa.DataType) -> st.SearchStrategy[Any]:
    """(arrow input value, expected JSON value) pairs for type t."""
    pair: st.SearchStrategy[tuple[Any, Any]]
    if pa.types.is_timestamp(t):
        per = PER_SECOND[t.unit]
        lo, hi = max(TS_MIN * per, -(2**63) + 1), min(TS_END * per - 1, 2**63 - 1)
        value = st.one_of(st.integers(lo, hi), st.integers(-10 * per, 10 * per))
        pair = value.map(lambda v: (v, iso_utc(v, t.unit)))
    elif pa.types.is_integer(t):
        info = {pa.int64(): (-(2**63), 2**63 - 1), pa.int32(): (-(2**31), 2**31 - 1), pa.uint64(): (0, 2**64 - 1)}
        pair = st.integers(*info[t]).map(lambda v: (v, v))
    elif pa.types.is_string(t):
        pair = st.text(st.characters(exclude_categories=["Cs"]), max_size=8).map(lambda v: (v, v))
    elif pa.types.is_floating(t):
        pair = st.floats(allow_nan=True, allow_infinity=True).map(lambda v: (v, v if math.isfinite(v) else None))
    elif pa.types.is_binary(t):
        pair = st.binary(max_size=10).map(lambda v: (v, base64.b64encode(v).decode()))
    elif pa.types.is_map(t):
        entries = st.lists(st.tuples(st.integers(-5, 5), values_of(t.item_type)), max_size=3)
        pair = entries.map(lambda es: ([(k, v[0]) for k, v in es], [{"key": k, "value": v[1]} for k, v in es]))
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        pair = st.lists(values_of(t.value_type), max_size=3).map(lambda vs: ([v[0] for v in vs], [v[1] for v in vs]))
    elif pa.types.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        pair = st.tuples(*(values_of(f.type) for f in fields)).map(
            lambda vs: (
                {f.name: v[0] for f, v in zip(fields, vs, strict=True)},
                {f.name: v[1] for f, v in zip(fields, vs, strict=True)},
            )
        )
    else:
        raise AssertionError(t)
    return st.one_of(st.just((None, None)), pair)


@st.composite
def tables(draw: st.DrawFn) -> tuple[pa.Table, list[dict[str, Any]]]:
    types = draw(st.lists(nested_types(), min_size=1, max_size=4))
    n = draw(st.integers(0, 12))
    names = [f"c{i}" for i in range(len(types))]
    columns, expected_columns = [], []
    for t in types:
        pairs = draw(st.lists(values_of(t), min_size=n, max_size=n))
        columns.append(pa.array([p[0] for p in pairs], t))
        expected_columns.append([p[1] for p in pairs])
    table = pa.table(columns, names=names)
    expected = [{name: col[i] for name, col in zip(names, expected_columns, strict=True)} for i in range(n)]
    return table, expected


@pytest.mark.slow
@given(data=tables(), chunk=st.integers(1, 5))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_nested_tables_round_trip(data: tuple[pa.Table, list[dict[str, Any]]], chunk: int) -> None:
    table, expected = data
    batches = table.to_batches(max_chunksize=chunk)  # slices sharing buffers, like a streamed export
    rows = ndjson_rows(*batches)
    assert len(rows) == table.num_rows
    assert rows == expected
    for batch in batches:
        encoded = encode_batch(batch)
        encoded.validate(full=True)
        assert encoded.schema == json_schema(batch.schema)


@given(
    digits=st.integers(-(10**38) + 1, 10**38 - 1) | st.integers(-1000, 1000),
    scale=st.integers(-5, 38),
)
@settings(max_examples=300, deadline=None)
def test_decimal_plain_notation_matches_python(digits: int, scale: int) -> None:
    # pyarrow builds a negative-scale decimal from its integer value, which must fit in 128 bits.
    assume(abs(digits) * 10 ** max(0, -scale) < 2**127)
    value = decimal.Decimal(f"{digits}E{-scale}")  # exact, no context rounding
    (text,) = encode_array(pa.array([value], pa.decimal128(38, scale))).to_pylist()
    sign, magnitude = ("-" if digits < 0 else ""), str(abs(digits))
    if scale > 0:
        magnitude = magnitude.rjust(scale + 1, "0")
        expected = f"{sign}{magnitude[:-scale]}.{magnitude[-scale:]}"
    else:
        expected = str(digits * 10**-scale)
    assert text == expected
    assert decimal.Decimal(text) == value


def test_large_batches_are_encoded_column_parallel_with_the_same_result() -> None:
    n = jsonenc._PARALLEL_MIN_ROWS + 5
    batch = pa.record_batch(
        {
            "a": pa.array(range(n), pa.timestamp("s", "Europe/Paris")),
            "i": pa.array(range(n), pa.int64()),
            "b": pa.array(range(n), pa.date32()),
            "c": pa.array([{"t": i} for i in range(n)], pa.struct([("t", pa.time32("s"))])),
        }
    )
    encoded = encode_batch(batch)
    assert encoded.column("i").buffers()[1].address == batch.column("i").buffers()[1].address  # untouched
    assert encoded.column("a")[n - 1].as_py() == iso_utc(n - 1, "s")
    assert encoded.column("b")[n - 1].as_py() == (dt.date(1970, 1, 1) + dt.timedelta(days=n - 1)).isoformat()
    assert encoded.column("c")[3].as_py() == {"t": "00:00:03"}
    for name in ("a", "b", "c"):
        assert encoded.column(name).equals(encode_array(batch.column(name)))
    # an error in a column converted on a worker thread reaches the caller
    bad = batch.set_column(2, "b", pa.array([*range(n - 1), 3_000_000], pa.date32()))
    with pytest.raises(SchemaError, match=r"^b: date32 value 3000000"):
        encode_batch(bad)
