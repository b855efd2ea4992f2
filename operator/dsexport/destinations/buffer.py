"""The in-memory part of a streamed upload, for the stores that send a file as separate parts (S3 parts, Azure
blocks), each retried whole from memory.

The sink hands over many small writes; joining them once per part copies each byte once, where appending to a
bytearray, slicing it and turning the slice into bytes copied it three times. Keeping the writes as they come is
safe only for what cannot change afterwards, so bytes, and views of bytes (the sink's slices), are kept as they
are and anything else (a bytearray the caller reuses as soon as ``write`` returns) is copied.
"""

from __future__ import annotations

__all__ = ["PartBuffer"]


class PartBuffer:
    """The bytes written since the last ``take``, as a list of immutable pieces."""

    def __init__(self) -> None:
        self._pieces: list[bytes | memoryview] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes | memoryview, /) -> None:
        immutable = isinstance(data, bytes) or (isinstance(data, memoryview) and isinstance(data.obj, bytes))
        self._pieces.append(data if immutable else bytes(data))
        self._size += len(data)

    def take(self) -> bytes:
        """The buffered bytes as one object (no copy when they are a single bytes piece), leaving it empty."""
        body = b"".join(self._pieces)
        self._pieces, self._size = [], 0
        return body
