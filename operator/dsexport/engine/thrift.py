"""Thrift's compact protocol, read into and written from a generic form: enough to edit a Parquet footer.

Parquet's footer (``FileMetaData``) is a Thrift struct in the compact protocol. The Parquet encoder
(``rowgroups``) encodes row groups apart, each as a small file of its own, and assembles them into one file; the
assembled footer is the row groups' footers with their file offsets moved, which pyarrow cannot do (its metadata
objects are read-only). Decoding into a generic form (field id, type, value), without a schema, keeps every field,
known or not, and writing it back gives the same bytes as the Thrift library that wrote it: the compact protocol
has one encoding per value (short field headers whenever the id delta fits, short list headers below 15
elements), so ``write(read(data)) == data``, which the tests check on pyarrow's footers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Union

# Compact protocol type ids.
BOOL_TRUE: Final = 1
BOOL_FALSE: Final = 2
BYTE: Final = 3
I16: Final = 4
I32: Final = 5
I64: Final = 6
DOUBLE: Final = 7
BINARY: Final = 8
LIST: Final = 9
SET: Final = 10
MAP: Final = 11
STRUCT: Final = 12
_STOP: Final = 0
_INTEGERS: Final = (BYTE, I16, I32, I64)


@dataclass
class Field:
    """One field of a struct: its id, its compact type (a bool field's type is BOOL_TRUE) and its value."""

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
    """A list or set (``type`` LIST or SET) of elements of one compact type."""

    type: int
    element_type: int
    values: list[Value]


@dataclass
class Map:
    key_type: int
    value_type: int
    items: list[tuple[Value, Value]]


Value = Union[bool, int, bytes, Struct, List, Map]  # noqa: UP007 - a recursive alias needs the string-free form


class ThriftError(ValueError):
    """The bytes are not a compact-protocol struct (truncated, or an unknown type)."""


# --------------------------------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ThriftError("truncated")
        b = int(self.data[self.pos])
        self.pos += 1
        return b

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ThriftError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ThriftError("truncated")
        out = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return out

    def value(self, ctype: int) -> Value:
        if ctype in (BOOL_TRUE, BOOL_FALSE):  # an element of a list: one byte
            return self.byte() == BOOL_TRUE
        if ctype == BYTE:
            b = self.byte()
            return b - 256 if b > 127 else b
        if ctype in (I16, I32, I64):
            return self.zigzag()
        if ctype == DOUBLE:
            return self.raw(8)
        if ctype == BINARY:
            return self.raw(self.varint())
        if ctype in (LIST, SET):
            return self.list(ctype)
        if ctype == MAP:
            return self.map()
        if ctype == STRUCT:
            return self.struct()
        raise ThriftError(f"unknown compact type {ctype}")

    def list(self, ctype: int) -> List:
        header = self.byte()
        size, element_type = header >> 4, header & 0x0F
        if size == 15:
            size = self.varint()
        return List(ctype, element_type, [self.value(element_type) for _ in range(size)])

    def map(self) -> Map:
        size = self.varint()
        if size == 0:
            return Map(0, 0, [])
        types = self.byte()
        key_type, value_type = types >> 4, types & 0x0F
        return Map(key_type, value_type, [(self.value(key_type), self.value(value_type)) for _ in range(size)])

    def struct(self) -> Struct:
        fields: list[Field] = []
        last = 0
        while (header := self.byte()) != _STOP:
            ctype, delta = header & 0x0F, header >> 4
            field_id = last + delta if delta else self.zigzag()
            value: Value = ctype == BOOL_TRUE if ctype in (BOOL_TRUE, BOOL_FALSE) else self.value(ctype)
            fields.append(Field(field_id, BOOL_TRUE if ctype == BOOL_FALSE else ctype, value))
            last = field_id
        return Struct(fields)


def read_struct(data: bytes | memoryview) -> Struct:
    """The struct ``data`` holds, all of ``data``."""
    reader = _Reader(data)
    out = reader.struct()
    if reader.pos != len(reader.data):
        raise ThriftError(f"{len(reader.data) - reader.pos} bytes after the struct")
    return out


# --------------------------------------------------------------------------------------------------- writing


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while n > 0x7F:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def zigzag(self, n: int, bits: int) -> None:
        self.varint(((n << 1) ^ (n >> (bits - 1))) & ((1 << bits) - 1))

    def value(self, ctype: int, value: Value) -> None:
        if ctype in (BOOL_TRUE, BOOL_FALSE):
            self.out.append(BOOL_TRUE if value else BOOL_FALSE)
        elif ctype == BYTE:
            self.out += struct.pack("<b", _int(value))
        elif ctype in (I16, I32, I64):
            self.zigzag(_int(value), {I16: 16, I32: 32, I64: 64}[ctype])
        elif ctype == DOUBLE:
            self.out += _bytes(value)
        elif ctype == BINARY:
            data = _bytes(value)
            self.varint(len(data))
            self.out += data
        elif isinstance(value, List):
            self.list(value)
        elif isinstance(value, Map):
            self.map(value)
        elif isinstance(value, Struct):
            self.struct(value)
        else:
            raise ThriftError(f"cannot write {type(value).__name__} as compact type {ctype}")

    def list(self, value: List) -> None:
        size = len(value.values)
        if size < 15:
            self.out.append(size << 4 | value.element_type)
        else:
            self.out.append(0xF0 | value.element_type)
            self.varint(size)
        for element in value.values:
            self.value(value.element_type, element)

    def map(self, value: Map) -> None:
        self.varint(len(value.items))
        if value.items:
            self.out.append(value.key_type << 4 | value.value_type)
        for k, v in value.items:
            self.value(value.key_type, k)
            self.value(value.value_type, v)

    def struct(self, value: Struct) -> None:
        last = 0
        for f in value.fields:
            ctype = (BOOL_TRUE if f.value else BOOL_FALSE) if f.type in (BOOL_TRUE, BOOL_FALSE) else f.type
            delta = f.id - last
            if 0 < delta <= 15:
                self.out.append(delta << 4 | ctype)
            else:
                self.out.append(ctype)
                self.zigzag(f.id, 16)
            if ctype not in (BOOL_TRUE, BOOL_FALSE):
                self.value(ctype, f.value)
            last = f.id
        self.out.append(_STOP)


def _int(value: Value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ThriftError(f"expected an integer, got {type(value).__name__}")
    return value


def _bytes(value: Value) -> bytes:
    if not isinstance(value, bytes):
        raise ThriftError(f"expected bytes, got {type(value).__name__}")
    return value


def write_struct(value: Struct) -> bytes:
    writer = _Writer()
    writer.struct(value)
    return bytes(writer.out)
