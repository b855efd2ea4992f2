"""Arrow record batches -> NDJSON, fast and lossless.

JSON holds strings, numbers, booleans, null, arrays and objects.  Every Arrow type outside that set is
converted by :func:`encode_batch` before serialization (full table with examples: docs/json-encoding.md):

===========================================  ===============================================================
Arrow type                                   JSON encoding
===========================================  ===============================================================
timestamp (any unit, any tz, or naive)       string, ISO-8601 UTC, ``"2024-03-01T12:00:00.123Z"``; fraction
                                             digits follow the unit (s: none, ms: 3, us: 6, ns: 9); naive
                                             values are taken as UTC, tz-aware ones are written in UTC
date32 / date64                              string ``"YYYY-MM-DD"``
time32 / time64                              string ``"HH:MM:SS[.fff]"`` (fraction digits follow the unit)
decimal32/64/128/256                         string, exact plain digits, ``scale`` fraction digits:
                                             ``"-12.3400"``, ``"0.0000000001"`` (never ``"1E-10"``)
binary / large_binary / binary_view /        string, standard base64 with padding
fixed_size_binary
map<k, v>                                    array of ``{"key": k, "value": v}`` objects (keeps entry order
                                             and non-string keys)
duration                                     integer count in the duration's own unit
dictionary<i, v>                             encoded like ``v`` (the decoded value)
float16/32/64                                number; NaN, +Inf and -Inf become null (JSON has no such
                                             numbers); float16 is widened to float32
arrow.uuid extension                         string ``"0b5c...-...."`` (canonical lower-case form)
run_end_encoded<r, v>, other extensions      encoded like the decoded ``v`` / the storage type
list / large_list / fixed_size_list /        array, elements encoded recursively
list_view / large_list_view
struct                                       object, fields encoded recursively, order kept
int*, uint* (incl. int64/uint64), bool,      unchanged (int64/uint64 stay exact JSON numbers)
string types, null
===========================================  ===============================================================

Nulls are preserved at every level (null structs, lists, maps, map values, elements).  Temporal values must
lie in years 0000-9999 (the range RFC 3339 can express) and times within one day; anything else raises
:class:`~dsexport.errors.SchemaError` instead of writing a string no reader could parse.  Unions and intervals
are rejected with a SchemaError naming the column.

Conversions are vectorized with pyarrow compute kernels and buffer-level array construction; only the
per-schema planning is Python.  A schema that needs no conversion is detected once (cached) and its batches
pass through untouched.
"""

from __future__ import annotations

import binascii
import concurrent.futures
import functools
import os
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO, Final, cast

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dsexport.errors import SchemaError

__all__ = ["NdjsonWriter", "encode_batch", "json_schema", "ndjson_chunks"]

# Encoded strings use 64-bit offsets so a large batch of long values (base64 grows data by 4/3) cannot
# overflow the 2 GiB limit of 32-bit string offsets.
_STR: Final = pa.large_string()
_BIN: Final = pa.large_binary()

_PER_SECOND: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z in seconds since the epoch; in days for dates.
_MIN_SECOND: Final = -62_167_219_200
_END_SECOND: Final = 253_402_300_800
_MIN_DAY: Final = -719_528
_END_DAY: Final = 2_932_897
_SECONDS_PER_DAY: Final = 86_400
_MS_PER_DAY: Final = 86_400_000

_B64_PADS: Final = pa.array([b"", b"\0\0", b"\0"], _BIN)
_EMPTY_BIN: Final = pa.scalar(b"", _BIN)
_EMPTY_STR: Final = pa.scalar("", _STR)
_MINUS: Final = pa.scalar("-", _STR)


# --------------------------------------------------------------------------------------------- type level


def _is_plain(t: pa.DataType) -> bool:
    """Leaf types JSON (and polars) hold as they are."""
    return bool(
        pa.types.is_null(t)
        or pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
    )


def _is_plain_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


@functools.lru_cache(maxsize=1024)
def _needs(t: pa.DataType) -> bool:
    """Whether arrays of type ``t`` must be converted (their type or their values change)."""
    if _is_plain(t):
        return False
    if pa.types.is_struct(t):
        return any(_needs(t.field(i).type) for i in range(t.num_fields))
    if _is_plain_list(t):
        return _needs(t.value_type)
    _enc_type(t)  # raises SchemaError for types without a JSON encoding
    return True  # floats (NaN -> null) and every type that changes


def _enc_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type arrays of type ``t`` have after encoding (``t`` itself when nothing changes)."""
    if _is_plain(t):
        return t
    if pa.types.is_struct(t):
        if not _needs(t):
            return t
        return pa.struct([_enc_field(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_list(t) or pa.types.is_list_view(t):
        return pa.list_(_enc_field(t.value_field)) if _needs(t.value_type) or pa.types.is_list_view(t) else t
    if pa.types.is_large_list(t) or pa.types.is_large_list_view(t):
        keep = pa.types.is_large_list(t) and not _needs(t.value_type)
        return t if keep else pa.large_list(_enc_field(t.value_field))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_enc_field(t.value_field), t.list_size) if _needs(t.value_type) else t
    if pa.types.is_map(t):
        entry = pa.struct(
            [
                _enc_field(t.key_field).with_name("key"),
                _enc_field(t.item_field).with_name("value"),
            ]
        )
        return pa.list_(pa.field("entries", entry, nullable=False))
    if pa.types.is_floating(t):
        return pa.float32() if pa.types.is_float16(t) else t
    if (
        pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_time(t)
        or pa.types.is_decimal(t)
        or _is_binary_like(t)
    ):
        return _STR
    if pa.types.is_duration(t):
        return pa.int64()
    if pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t):
        return _enc_type(t.value_type)
    if _is_uuid(t):
        return _STR
    if isinstance(t, pa.BaseExtensionType):
        return _enc_type(t.storage_type)
    raise SchemaError(f"Arrow type {t} has no JSON encoding")


def _is_uuid(t: pa.DataType) -> bool:
    return isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.uuid"


def _is_binary_like(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _enc_field(f: pa.Field) -> pa.Field:
    if not _needs(f.type):
        return f
    t = _enc_type(f.type)
    # NaN/Inf become null, so a float field becomes nullable even if it was declared non-null.
    return pa.field(f.name, t, nullable=f.nullable or pa.types.is_floating(t), metadata=f.metadata)


class _SchemaKey:
    """Cache key: pyarrow's ``==``/``hash`` ignore field metadata, which the encoded schema carries over."""

    __slots__ = ("_hash", "schema")

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self._hash = hash(schema)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SchemaKey) and bool(self.schema.equals(other.schema, check_metadata=True))


def _column_needs(f: pa.Field) -> bool:
    try:
        return _needs(f.type)
    except SchemaError as e:
        raise SchemaError(
            f"column {f.name!r} has Arrow type {f.type}, which JSON cannot represent ({e}); export this dataset as "
            "Parquet, or leave the column out of the source"
        ) from None


def _plan(schema: pa.Schema) -> tuple[pa.Schema, tuple[bool, ...]] | None:
    """Per schema: the encoded schema and which columns to convert; None when nothing changes."""
    return _plan_for(_SchemaKey(schema))


@functools.lru_cache(maxsize=256)
def _plan_for(key: _SchemaKey) -> tuple[pa.Schema, tuple[bool, ...]] | None:
    schema = key.schema
    needs = tuple(_column_needs(f) for f in schema)
    if not any(needs):
        return None
    fields = [_enc_field(f) for f in schema]
    return pa.schema(fields, metadata=schema.metadata), needs


def json_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of ``encode_batch(batch)`` for any batch with schema ``schema``.

    Raises SchemaError naming the column if it has a type without JSON encoding (union, interval).
    """
    plan = _plan(schema)
    return schema if plan is None else plan[0]


# -------------------------------------------------------------------------------------------- array level


def encode_batch(batch: pa.RecordBatch, *, column_parallel: bool = True) -> pa.RecordBatch:
    """Convert every column to JSON-representable Arrow types (see the module docstring).

    Returns ``batch`` itself when its schema needs no conversion.  Raises SchemaError for types without a
    JSON encoding and for temporal values outside the encodable range.  Large batches with
    several columns to convert are converted column-parallel on a small thread pool (the compute kernels
    release the GIL), unless ``column_parallel`` is false: a caller that already encodes several batches at
    once on threads of its own (the part writers) gains nothing from more threads but their hand-offs.
    """
    plan = _plan(batch.schema)
    if plan is None:
        return batch
    schema, needs = plan
    types = [f.type for f in schema]
    columns = list(batch.columns)
    todo = [i for i, need in enumerate(needs) if need]
    names = batch.schema.names
    parallel = column_parallel and len(todo) > 1 and batch.num_rows >= _PARALLEL_MIN_ROWS
    executor = _executor() if parallel else None
    if executor is None:
        for i in todo:
            columns[i] = _encode(columns[i], types[i], names[i])
    else:
        futures = [executor.submit(_encode, columns[i], types[i], names[i]) for i in todo[1:]]
        first = todo[0]
        try:
            columns[first] = _encode(columns[first], types[first], names[first])
        finally:
            concurrent.futures.wait(futures)  # never leave work running behind an exception
        for i, future in zip(todo[1:], futures, strict=True):
            columns[i] = future.result()
    return pa.RecordBatch.from_arrays(columns, schema=schema)


_PARALLEL_MIN_ROWS: Final = 16_384
_executor_lock = threading.Lock()
_executor_state: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor | None:
    """The shared column-encoding pool (None on a single CPU); recreated in a forked child."""
    global _executor_state  # noqa: PLW0603 - lazily created process-wide pool
    workers = min(4, os.cpu_count() or 1)
    if workers < 2:
        return None
    with _executor_lock:
        if _executor_state is None or _executor_state[0] != os.getpid():
            pool = concurrent.futures.ThreadPoolExecutor(workers - 1, thread_name_prefix="dsexport-jsonenc")
            _executor_state = (os.getpid(), pool)
        return _executor_state[1]


def _encode(arr: pa.Array, out_type: pa.DataType, path: str) -> pa.Array:
    """``arr`` converted to ``out_type`` (its ``_enc_type``, taken from the cached schema plan)."""
    t = arr.type
    if not _needs(t):
        return _compact(arr)  # an unconverted part of a converted column, e.g. a list inside a struct
    if pa.types.is_floating(t):
        return _encode_float(arr)
    if pa.types.is_timestamp(t):
        return _encode_timestamp(arr, path)
    if pa.types.is_date(t):
        return _encode_date(arr, path)
    if pa.types.is_time(t):
        return _encode_time(arr, path)
    if pa.types.is_decimal(t):
        return _encode_decimal(arr)
    if _is_binary_like(t):
        return _encode_base64(arr)
    if pa.types.is_duration(t):
        return arr.view(pa.int64())
    if pa.types.is_dictionary(t):
        return _encode_dictionary(arr, out_type, path)
    if pa.types.is_run_end_encoded(t):
        return _encode(pc.run_end_decode(arr), out_type, path)
    if _is_uuid(t):
        return _encode_uuid(arr)
    if isinstance(t, pa.BaseExtensionType):
        return _encode(arr.storage, out_type, path)
    if pa.types.is_struct(t):
        return _encode_struct(arr, out_type, path)
    if pa.types.is_fixed_size_list(t):
        return _rebuild_fixed_size_list(arr, out_type, lambda values: _encode(values, out_type.value_type, f"{path}[]"))
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return _encode_list_view(arr, out_type, path)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        return _encode_list_or_map(arr, out_type, path)
    raise SchemaError(f"{path}: Arrow type {t} has no JSON encoding")  # unreachable: _needs() validated


def _validity(arr: pa.Array) -> pa.Buffer | None:
    """The validity bitmap of ``arr`` starting at bit 0 (None when there are no nulls)."""
    if arr.null_count == 0:
        return None
    if arr.offset == 0:
        return arr.buffers()[0]
    return pc.is_valid(arr).buffers()[1]  # a fresh bitmap, offset 0


def _check_range(ints: pa.Array, lo: int, end: int, path: str, what: str) -> None:
    """Raise SchemaError unless every non-null value v satisfies lo <= v < end."""
    bounds = pc.min_max(ints)
    vmin, vmax = bounds["min"].as_py(), bounds["max"].as_py()
    if vmin is not None and (vmin < lo or vmax >= end):
        bad = vmin if vmin < lo else vmax
        raise SchemaError(f"{path}: {what} value {bad} ({ints.type} storage) is outside the JSON-encodable range")


def _encode_float(arr: pa.Array) -> pa.Array:
    if pa.types.is_float16(arr.type):
        arr = arr.cast(pa.float32())
    finite = pc.is_finite(arr)
    if pc.all(finite).as_py() is not False:  # nulls are skipped; None means all null
        return arr
    return pc.if_else(finite, arr, pa.scalar(None, arr.type))


def _encode_timestamp(arr: pa.Array, path: str) -> pa.Array:
    unit = arr.type.unit
    per_second = _PER_SECOND[unit]
    _check_range(arr.view(pa.int64()), _MIN_SECOND * per_second, _END_SECOND * per_second, path, "timestamp")
    # The storage of a tz-aware timestamp is already UTC; dropping the tz is a zero-copy reinterpretation.
    # (pyarrow.compute.strftime would format tz-aware values in their local time, and is ~20x slower.)
    text = arr.view(pa.timestamp(unit)).cast(_STR)  # "YYYY-MM-DD HH:MM:SS[.fff]" (4-digit years)
    text = pc.binary_replace_slice(text, start=10, stop=11, replacement="T")
    # a slice starting past the end appends; cheaper than binary_join_element_wise(text, "Z")
    return pc.binary_replace_slice(text, start=sys.maxsize, stop=sys.maxsize, replacement="Z")


def _encode_date(arr: pa.Array, path: str) -> pa.Array:
    if pa.types.is_date64(arr.type):
        _check_range(arr.view(pa.int64()), _MIN_DAY * _MS_PER_DAY, _END_DAY * _MS_PER_DAY, path, "date64")
        try:
            arr = arr.cast(pa.date32())  # safe cast: rejects date64 values that are not whole days
        except pa.ArrowInvalid as exc:
            raise SchemaError(f"{path}: date64 value is not a whole number of days: {exc}") from None
    else:
        _check_range(arr.view(pa.int32()), _MIN_DAY, _END_DAY, path, "date32")
    return arr.cast(_STR)


def _encode_time(arr: pa.Array, path: str) -> pa.Array:
    t = arr.type
    storage = pa.int32() if pa.types.is_time32(t) else pa.int64()
    _check_range(arr.view(storage), 0, _SECONDS_PER_DAY * _PER_SECOND[t.unit], path, "time")
    return arr.cast(_STR)


_DECIMAL_OF_WIDTH: Final = {32: pa.decimal32, 64: pa.decimal64, 128: pa.decimal128, 256: pa.decimal256}


def _encode_decimal(arr: pa.Array) -> pa.Array:
    """Plain decimal notation with exactly ``scale`` fraction digits, e.g. "-0.0000000001", "1.50".

    A plain cast to string switches to scientific notation ("-1E-10", "0E-10") for small values, so the
    unscaled integer is formatted instead (same storage viewed with scale 0) and the point inserted.
    """
    t = arr.type
    scale = t.scale
    text = arr.view(_DECIMAL_OF_WIDTH[t.bit_width](t.precision, 0)).cast(_STR)
    if scale == 0:
        return text
    if scale < 0:  # value = unscaled * 10**-scale
        zeros = pa.scalar("0" * -scale, _STR)
        return pc.if_else(pc.equal(text, "0"), text, pc.binary_join_element_wise(text, zeros, _EMPTY_STR))
    negative = pc.starts_with(text, "-")
    magnitude = pc.utf8_ltrim(text, characters="-")
    padded = pc.utf8_lpad(magnitude, width=scale + 1, padding="0")  # at least one digit before the point
    plain = pc.binary_replace_slice(padded, start=-scale, stop=-scale, replacement=".")
    if pc.any(negative).as_py() is not True:
        return plain
    return pc.if_else(negative, pc.binary_join_element_wise(_MINUS, plain, _EMPTY_STR), plain)


def _encode_base64(arr: pa.Array) -> pa.Array:
    """Standard base64 (with padding) of each value, vectorized.

    Each value is zero-padded to a multiple of 3 bytes so the concatenation of all values encodes in one
    C call with every value's text at offset (byte offset / 3 * 4); then the 1 or 2 characters produced by
    zero padding are replaced by "=" to match per-value base64.
    """
    if not pa.types.is_large_binary(arr.type):
        arr = arr.cast(_BIN)
    n = len(arr)
    lengths = pc.binary_length(arr)
    rem = pc.subtract(lengths, pc.multiply(pc.divide(lengths, 3), 3))  # length % 3, null for nulls
    padded = pc.binary_join_element_wise(arr, _B64_PADS.take(rem), _EMPTY_BIN)
    _, offsets_buf, data_buf = padded.buffers()
    offsets = pa.Array.from_buffers(pa.int64(), n + 1, [None, offsets_buf], 0, padded.offset)
    first, last = offsets[0].as_py(), offsets[n].as_py()
    text = binascii.b2a_base64(memoryview(data_buf)[first:last], newline=False) if last > first else b""
    text_offsets = pc.multiply(pc.divide(pc.subtract(offsets, first), 3), 4)
    encoded = pa.Array.from_buffers(
        _STR,
        n,
        [_validity(arr), _offsets_buffer(text_offsets), pa.py_buffer(text)],
        arr.null_count,
    )
    if pc.all(pc.equal(rem, 0)).as_py() is not False:
        return encoded
    two = pc.binary_replace_slice(encoded, start=-2, stop=sys.maxsize, replacement="==")
    one = pc.binary_replace_slice(encoded, start=-1, stop=sys.maxsize, replacement="=")
    return pc.choose(rem, encoded, two, one)


def _encode_uuid(arr: pa.Array) -> pa.Array:
    """arrow.uuid (fixed_size_binary(16)) -> canonical "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"."""
    storage = arr.storage
    n = len(storage)
    data = storage.buffers()[1]
    hex_digits = binascii.hexlify(memoryview(data)[storage.offset * 16 : (storage.offset + n) * 16])
    hex_array = pa.Array.from_buffers(
        pa.binary(32), n, [_validity(storage), pa.py_buffer(hex_digits)], storage.null_count
    )
    text = hex_array.cast(_BIN).view(_STR)
    for position in (8, 13, 18, 23):
        text = pc.binary_replace_slice(text, start=position, stop=position, replacement="-")
    return text


def _offsets_buffer(offsets: pa.Array) -> pa.Buffer:
    """The data buffer of an int32/int64 array, starting at its first logical element."""
    width = offsets.type.bit_width // 8
    return offsets.buffers()[1].slice(offsets.offset * width, len(offsets) * width)


def _encode_dictionary(arr: pa.Array, out_type: pa.DataType, path: str) -> pa.Array:
    if len(arr.dictionary) <= len(arr):  # encode each distinct value once
        return _encode(arr.dictionary, out_type, path).take(arr.indices)
    return _encode(arr.dictionary_decode(), out_type, path)


def _encode_struct(arr: pa.Array, out_type: pa.DataType, path: str) -> pa.Array:
    children = [
        _encode(arr.field(i), out_type.field(i).type, f"{path}.{out_type.field(i).name}")
        for i in range(out_type.num_fields)
    ]
    return pa.Array.from_buffers(out_type, len(arr), [_validity(arr)], arr.null_count, 0, children=children)


def _rebuild_fixed_size_list(arr: pa.Array, out_type: pa.DataType, convert: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """A fixed_size_list rebuilt as ``out_type`` with child ``convert(referenced values)``."""
    size = arr.type.list_size
    values = arr.values.slice(arr.offset * size, len(arr) * size)  # .values ignores the array offset
    return pa.Array.from_buffers(out_type, len(arr), [_validity(arr)], arr.null_count, 0, children=[convert(values)])


def _encode_list_or_map(arr: pa.Array, out_type: pa.DataType, path: str) -> pa.Array:
    """list, large_list and map (a map is a list of key/value structs)."""
    item_type = out_type.value_type
    if not pa.types.is_map(arr.type):
        return _rebuild_list(
            arr, out_type, lambda start, n: _encode(arr.values.slice(start, n), item_type, f"{path}[]")
        )

    def entries(start: int, n: int) -> pa.Array:
        keys = _encode(arr.keys.slice(start, n), item_type.field(0).type, f"{path}.key")
        items = _encode(arr.items.slice(start, n), item_type.field(1).type, f"{path}.value")
        return pa.Array.from_buffers(item_type, n, [None], 0, 0, children=[keys, items])

    return _rebuild_list(arr, out_type, entries)


def _rebuild_list(arr: pa.Array, out_type: pa.DataType, child: Callable[[int, int], pa.Array]) -> pa.Array:
    """A list/large_list/map rebuilt as ``out_type`` with child ``child(start, n)``.

    ``[start, start + n)`` is the range of the child the (possibly sliced) array refers to.  The child
    of a sliced list array still spans the whole original child; converting (or handing to polars) only
    the referenced range keeps the work proportional to the slice.
    """
    offsets = arr.offsets  # len + 1 positions into the unsliced child
    start, end = offsets[0].as_py(), offsets[len(arr)].as_py()
    new_child = child(start, end - start)
    if start != 0:
        offsets = pc.subtract(offsets, pa.scalar(start, offsets.type))
    return pa.Array.from_buffers(
        out_type,
        len(arr),
        [_validity(arr), _offsets_buffer(offsets)],
        arr.null_count,
        0,
        children=[new_child],
    )


def _encode_list_view(arr: pa.Array, out_type: pa.DataType, path: str) -> pa.Array:
    """list_view / large_list_view -> list / large_list (views may overlap or be out of order)."""
    offset_type = pa.int64() if pa.types.is_large_list_view(arr.type) else pa.int32()
    sizes = pc.if_else(arr.is_valid(), arr.sizes, 0).cast(offset_type)  # null lists hold no elements
    ends = pc.cumulative_sum(sizes)
    offsets = pa.concat_arrays([pa.array([0], offset_type), ends])
    child = _encode(arr.flatten(), out_type.value_type, f"{path}[]")  # values of the non-null lists, in order
    return pa.Array.from_buffers(
        out_type,
        len(arr),
        [_validity(arr), _offsets_buffer(offsets)],
        arr.null_count,
        0,
        children=[child],
    )


@functools.lru_cache(maxsize=1024)
def _has_list(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return any(_has_list(t.field(i).type) for i in range(t.num_fields))
    return _is_plain_list(t)


def _compact(arr: pa.Array) -> pa.Array:
    """``arr`` (of a type needing no conversion) with every list child cut to the range it refers to.

    Zero-copy apart from rebasing offsets.  Without this, polars converts the whole shared child of a
    sliced list array for every batch (``Table.to_batches()`` yields such slices), which is quadratic.
    """
    t = arr.type
    if not _has_list(t):
        return arr
    if pa.types.is_struct(t):
        children = [_compact(arr.field(i)) for i in range(t.num_fields)]
        return pa.Array.from_buffers(t, len(arr), [_validity(arr)], arr.null_count, 0, children=children)
    if pa.types.is_fixed_size_list(t):
        return _rebuild_fixed_size_list(arr, t, _compact)
    return _rebuild_list(arr, t, lambda start, n: _compact(arr.values.slice(start, n)))


# ----------------------------------------------------------------------------------------------- writer


class NdjsonWriter:
    """Append NDJSON (one JSON object per row, ``\\n``-terminated, columns in schema order) to ``sink``.

    Batches are converted with :func:`encode_batch` (``column_parallel`` is passed on) and serialized by
    polars.  ``close()`` flushes but does not close ``sink``; the caller owns it.
    """

    def __init__(self, sink: BinaryIO, *, column_parallel: bool = True) -> None:
        self._sink = sink
        self._closed = False
        self._column_parallel = column_parallel
        self.rows_written = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._closed:
            raise ValueError("NdjsonWriter is closed")
        rows = batch.num_rows
        if rows == 0:
            return
        encoded = encode_batch(batch, column_parallel=self._column_parallel)
        to_compact = _uncompacted_columns(batch.schema)
        if to_compact:
            columns = list(encoded.columns)
            for i in to_compact:
                columns[i] = _compact(columns[i])
            encoded = pa.RecordBatch.from_arrays(columns, schema=encoded.schema)
        if encoded.num_columns == 0:
            # polars turns a batch without columns into a 0-row frame; each row is the empty object.
            self._sink.write(b"{}\n" * rows)
        else:
            _check_unique_names(encoded.schema)
            cast("pl.DataFrame", pl.from_arrow(encoded)).write_ndjson(self._sink)
        self.rows_written += rows

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sink.flush()

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Chunks:
    """A write-only sink that keeps what it is given, as given: polars hands over ``bytes`` of its own, which are
    kept without a copy."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.chunks.append(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def flush(self) -> None:
        return None


def ndjson_chunks(batch: pa.RecordBatch) -> list[bytes]:
    """The NDJSON text of ``batch``, exactly what ``NdjsonWriter.write(batch)`` writes, in the chunks the
    serializer produced: the writers encode several batches at once on threads of their own this way (so not
    column-parallel as well), and write the text of each in order."""
    chunks = _Chunks()
    NdjsonWriter(cast("BinaryIO", chunks), column_parallel=False).write(batch)
    return chunks.chunks


@functools.lru_cache(maxsize=256)
def _uncompacted_columns(schema: pa.Schema) -> tuple[int, ...]:
    """Columns containing lists that encode_batch passes through as they are (converted ones are compact)."""
    return tuple(i for i, f in enumerate(schema) if _has_list(f.type) and not _needs(f.type))


@functools.lru_cache(maxsize=256)
def _check_unique_names(schema: pa.Schema) -> None:
    """JSON objects need unique keys (and polars refuses duplicates); check columns and struct fields."""

    def check(names: list[str], where: str) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise SchemaError(f"duplicate field name {name!r} in {where}; JSON object keys must be unique")
            seen.add(name)

    def walk(t: pa.DataType, where: str) -> None:
        if pa.types.is_struct(t):
            check([t.field(i).name for i in range(t.num_fields)], where)
            for i in range(t.num_fields):
                walk(t.field(i).type, f"{where}.{t.field(i).name}")
        elif _is_plain_list(t):
            walk(t.value_type, f"{where}[]")

    check(schema.names, "the batch schema")
    for f in schema:
        walk(f.type, f.name)
