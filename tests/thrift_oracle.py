"""Apache Thrift's own compact protocol driven through ``dsexport.engine.compact``'s generic form: what the
engine's hand-written codec is checked against (the engine's former codec, slow but the library's)."""

from __future__ import annotations

import uuid
from typing import Any

from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.transport.TTransport import TMemoryBuffer

from dsexport.engine import compact
from dsexport.engine.compact import BINARY, BOOL, BYTE, DOUBLE, I16, I32, I64, LIST, MAP, SET, STRUCT, UUID


def read_struct(data: bytes) -> compact.Struct:
    transport = TMemoryBuffer(bytes(data))
    out = _read_struct(TCompactProtocol(transport, string_length_limit=None, container_length_limit=None))
    assert not transport.read(len(data)), "bytes after the struct"
    return out


def _read_struct(p: Any) -> compact.Struct:
    fields: list[compact.Field] = []
    p.readStructBegin()
    while True:
        _, ttype, field_id = p.readFieldBegin()
        if ttype == 0:
            break
        fields.append(compact.Field(field_id, ttype, _read_value(p, ttype)))
        p.readFieldEnd()
    p.readStructEnd()
    return compact.Struct(fields)


def _read_value(p: Any, ttype: int) -> compact.Value:
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
        return compact.List(ttype, element_type, values)
    if ttype == MAP:
        key_type, value_type, size = p.readMapBegin()
        items = [(_read_value(p, key_type), _read_value(p, value_type)) for _ in range(size)]
        p.readMapEnd()
        return compact.Map(key_type, value_type, items)
    assert ttype == STRUCT, ttype
    return _read_struct(p)


def write_struct(value: compact.Struct) -> bytes:
    transport = TMemoryBuffer()
    _write_struct(TCompactProtocol(transport), value)
    return bytes(transport.getvalue())


def _write_struct(p: Any, value: compact.Struct) -> None:
    p.writeStructBegin(None)
    for f in value.fields:
        p.writeFieldBegin(None, f.type, f.id)
        _write_value(p, f.type, f.value)
        p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()


def _write_value(p: Any, ttype: int, value: Any) -> None:
    if ttype in (LIST, SET):
        p.writeListBegin(value.element_type, len(value.values))
        for element in value.values:
            _write_value(p, value.element_type, element)
        p.writeListEnd()
    elif ttype == MAP:
        p.writeMapBegin(value.key_type, value.value_type, len(value.items))
        for k, v in value.items:
            _write_value(p, value.key_type, k)
            _write_value(p, value.value_type, v)
        p.writeMapEnd()
    elif ttype == STRUCT:
        _write_struct(p, value)
    else:
        writer = {
            BOOL: p.writeBool,
            BYTE: p.writeByte,
            I16: p.writeI16,
            I32: p.writeI32,
            I64: p.writeI64,
            DOUBLE: p.writeDouble,
            BINARY: p.writeBinary,
            UUID: p.writeUuid,
        }[ttype]
        writer(value)
