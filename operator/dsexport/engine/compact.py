"""A Thrift struct in the compact protocol read into a generic form and written back: enough to edit a Parquet
footer.

Parquet's footer (``FileMetaData``) is a Thrift struct in the compact protocol. The Parquet encoder
(``rowgroups``) encodes row groups apart, each as a small file of its own, and assembles them into one file; the
assembled footer is the row groups' footers with their file offsets moved, which pyarrow cannot do (its metadata
objects are read-only). Decoding into a generic form (field id, type, value), without a schema, keeps every field,
known or not, so a field added to parquet.thrift after this was written is carried over, not dropped.

The encoding itself is Apache Thrift's (``TCompactProtocol``, its primitives driven by the walk below), not ours:
the walk decides only which primitive comes next. The compact protocol has one encoding per value (a short field
header whenever the id delta is 1 to 15, a short list header below 15 elements), and Thrift writes the one the
C++ library under pyarrow writes, so ``write_struct(read_struct(data)) == data``, which the tests check on
pyarrow's footers. The library's C extension (``fastbinary``) only walks generated structs, so this runs on its
pure-Python protocol; a footer takes about a millisecond per row group, once per part and once per encoded range.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, Union

from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TType
from thrift.transport.TTransport import TMemoryBuffer, TTransportException

# Thrift's type ids (``TType``), which the generic form keeps: the compact protocol's own ids differ, and bools
# have two of them (the value is in the type), which the protocol handles.
BOOL: Final[int] = TType.BOOL
BYTE: Final[int] = TType.BYTE
I16: Final[int] = TType.I16
I32: Final[int] = TType.I32
I64: Final[int] = TType.I64
DOUBLE: Final[int] = TType.DOUBLE
BINARY: Final[int] = TType.STRING
STRUCT: Final[int] = TType.STRUCT
MAP: Final[int] = TType.MAP
SET: Final[int] = TType.SET
LIST: Final[int] = TType.LIST
UUID: Final[int] = TType.UUID
_STOP: Final[int] = TType.STOP


@dataclass
class Field:
    """One field of a struct: its id, its Thrift type and its value."""

    id: int
    type: int
    value: Value


@dataclass
class Struct:
    fields: list[Field]

    def get(self, field_id: int) -> Field | None:
        return next((f for f in self.fields if f.id == field_id), None)


@dataclass
class List:
    """A list or set (``type`` LIST or SET) of elements of one Thrift type."""

    type: int
    element_type: int
    values: list[Value]


@dataclass
class Map:
    """``key_type`` and ``value_type`` are STOP (0) for an empty map, whose encoding has no types."""

    key_type: int
    value_type: int
    items: list[tuple[Value, Value]]


Value = Union[bool, int, float, bytes, uuid.UUID, Struct, List, Map]  # noqa: UP007 - recursive: no `|` at runtime


class ThriftError(ValueError):
    """The bytes are not one compact-protocol struct (truncated, an unknown type, bytes after it)."""


# --------------------------------------------------------------------------------------------------- reading


def read_struct(data: bytes | memoryview) -> Struct:
    """The struct ``data`` holds, all of ``data``."""
    transport = TMemoryBuffer(bytes(data))
    # No length limits: the footers read here are pyarrow's, and its schema metadata can be megabytes.
    protocol = TCompactProtocol(transport, string_length_limit=None, container_length_limit=None)
    try:
        out = _read_struct(protocol)
    except (EOFError, KeyError, TProtocolException, TTransportException) as e:
        # EOFError: truncated; KeyError: a type id the protocol does not know.
        raise ThriftError(f"not a compact-protocol struct: {type(e).__name__} {e}") from e
    if rest := len(transport.read(len(data))):
        raise ThriftError(f"{rest} bytes after the struct")
    return out


def _read_struct(p: Any) -> Struct:
    fields: list[Field] = []
    p.readStructBegin()
    while True:
        _, ttype, field_id = p.readFieldBegin()
        if ttype == _STOP:
            break
        fields.append(Field(field_id, ttype, _read_value(p, ttype)))
        p.readFieldEnd()
    p.readStructEnd()
    return Struct(fields)


def _read_value(p: Any, ttype: int) -> Value:
    if ttype == BOOL:
        return bool(p.readBool())
    if ttype == BYTE:
        return int(p.readByte())
    if ttype in (I16, I32, I64):
        return int(p.readI64())  # the same zigzag varint for all three
    if ttype == DOUBLE:
        return float(p.readDouble())
    if ttype == BINARY:
        return bytes(p.readBinary())
    if ttype == UUID:
        return uuid.UUID(bytes=p.readUuid().bytes)
    if ttype in (LIST, SET):
        element_type, size = p.readListBegin()
        values = [_read_value(p, element_type) for _ in range(size)]
        p.readListEnd()
        return List(ttype, element_type, values)
    if ttype == MAP:
        key_type, value_type, size = p.readMapBegin()
        items = [(_read_value(p, key_type), _read_value(p, value_type)) for _ in range(size)]
        p.readMapEnd()
        return Map(key_type, value_type, items)
    if ttype == STRUCT:
        return _read_struct(p)
    raise ThriftError(f"unknown Thrift type {ttype}")


# --------------------------------------------------------------------------------------------------- writing


def write_struct(value: Struct) -> bytes:
    transport = TMemoryBuffer()
    _write_struct(TCompactProtocol(transport), value)
    return bytes(transport.getvalue())


def _write_struct(p: Any, value: Struct) -> None:
    p.writeStructBegin(None)
    for f in value.fields:
        p.writeFieldBegin(None, f.type, f.id)
        _write_value(p, f.type, f.value)
        p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def _write_value(p: Any, ttype: int, value: Value) -> None:
    if ttype == BOOL and isinstance(value, bool):
        p.writeBool(value)
    elif ttype == BYTE:
        p.writeByte(_int(value))
    elif ttype == I16:
        p.writeI16(_int(value))
    elif ttype == I32:
        p.writeI32(_int(value))
    elif ttype == I64:
        p.writeI64(_int(value))
    elif ttype == DOUBLE and isinstance(value, float):
        p.writeDouble(value)
    elif ttype == BINARY and isinstance(value, bytes):
        p.writeBinary(value)
    elif ttype == UUID and isinstance(value, uuid.UUID):
        p.writeUuid(value)
    elif ttype in (LIST, SET) and isinstance(value, List):
        p.writeListBegin(value.element_type, len(value.values))
        for element in value.values:
            _write_value(p, value.element_type, element)
        p.writeListEnd()
    elif ttype == MAP and isinstance(value, Map):
        p.writeMapBegin(value.key_type, value.value_type, len(value.items))
        for k, v in value.items:
            _write_value(p, value.key_type, k)
            _write_value(p, value.value_type, v)
        p.writeMapEnd()
    elif ttype == STRUCT and isinstance(value, Struct):
        _write_struct(p, value)
    else:
        raise ThriftError(f"cannot write {type(value).__name__} as Thrift type {ttype}")


def _int(value: Value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ThriftError(f"expected an integer, got {type(value).__name__}")
    return value
