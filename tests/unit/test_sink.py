"""The write-behind sink: same bytes, same hash, errors surface in the caller, bounded queue."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from dsexport.engine.sink import CHUNK, WriteBehindSink


def test_bytes_and_hash_match_whatever_the_write_sizes() -> None:
    rng = random.Random(7)
    out = io.BytesIO()
    sink = WriteBehindSink(out)
    expected = bytearray()
    for _ in range(300):
        size = rng.choice([1, 17, 4096, CHUNK - 1, CHUNK, 3 * CHUNK + 5])
        data = rng.randbytes(size)
        kind = rng.choice(["bytes", "bytearray", "memoryview"])
        payload = data if kind == "bytes" else bytearray(data) if kind == "bytearray" else memoryview(data)
        assert sink.write(payload) == size
        expected += data
    digest = sink.finish()
    assert out.getvalue() == bytes(expected)
    assert digest == hashlib.sha256(expected).hexdigest()
    assert sink.count == len(expected)


def test_a_reused_caller_buffer_does_not_corrupt_queued_data() -> None:
    out = io.BytesIO()
    sink = WriteBehindSink(out)
    buffer = bytearray(b"a" * (2 * CHUNK))
    sink.write(buffer)
    buffer[:] = b"b" * (2 * CHUNK)
    sink.write(buffer)
    sink.finish()
    assert out.getvalue() == b"a" * (2 * CHUNK) + b"b" * (2 * CHUNK)


class Failing:
    def write(self, data: bytes | memoryview, /) -> int:
        raise OSError(28, "No space left on device")


def test_an_error_in_the_writer_thread_reaches_the_caller() -> None:
    sink = WriteBehindSink(Failing())
    with pytest.raises(OSError, match="No space left"):
        for _ in range(64):  # more than the queue holds: the producer must not block forever
            sink.write(b"x" * CHUNK)
        sink.finish()


def test_frozen_writes_mix_with_copied_ones_in_order() -> None:
    """write_frozen hands large immutable buffers to the writer thread without copying them: same bytes, same
    hash, same count as plain writes."""
    rng = random.Random(11)
    out = io.BytesIO()
    sink = WriteBehindSink(out)
    expected = bytearray()
    for _ in range(100):
        data = rng.randbytes(rng.choice([3, CHUNK - 1, CHUNK, 2 * CHUNK + 7]))
        if rng.random() < 0.5:
            sink.write_frozen(memoryview(data))
        else:
            sink.write(data)
        expected += data
    assert sink.finish() == hashlib.sha256(expected).hexdigest()
    assert out.getvalue() == bytes(expected)
    assert sink.count == len(expected)
