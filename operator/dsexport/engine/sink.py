"""A write-behind sink: hashing and writing happen on a second thread while the caller encodes the next batch.

SHA-256 and file writes both release the GIL, so on two cores they overlap with Parquet or JSON encoding
instead of adding to it. Small writes (Parquet page headers) are coalesced into chunks first, and at most
``QUEUE_CHUNKS`` chunks wait in memory, so memory stays bounded when the storage is slower than the encoder.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading

from dsexport.destinations.base import Writable

CHUNK = 1 << 20
QUEUE_CHUNKS = 8


class WriteBehindSink(io.RawIOBase):
    """Counts, hashes and writes bytes to ``inner``; ``finish()`` waits for the writes and returns the hash."""

    def __init__(self, inner: Writable) -> None:
        super().__init__()
        self.count = 0
        self._inner = inner
        self._digest = hashlib.sha256()
        self._pending = bytearray()
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="dsexport-write-behind", daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if isinstance(data, bytes):
            self.write_frozen(data)  # immutable: no copy needed
        else:
            self._copy(data)  # the caller may reuse its buffer as soon as write() returns
        return memoryview(data).nbytes

    def write_frozen(self, data: bytes | memoryview) -> None:
        """Like ``write``, but ``data`` of a chunk or more is queued as it is, not copied: for buffers nobody changes
        once written (``bytes``, the Parquet encoder's column chunks in an Arrow buffer, polars' NDJSON text)."""
        view = memoryview(data).cast("B")
        if len(view) < CHUNK:
            self._copy(view)  # small writes are coalesced, so the writer thread is not handed page headers
            return
        if self._error is not None:
            raise self._error
        self.count += len(view)
        self._flush_pending()
        for start in range(0, len(view), CHUNK):  # at most a chunk each, so the queue bounds memory
            self._queue.put(view[start : start + CHUNK])

    def _copy(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        self.count += len(view)
        self._pending += view
        if len(self._pending) >= CHUNK:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending:
            self._queue.put(bytes(self._pending))
            self._pending.clear()

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a dead consumer
            try:
                self._digest.update(chunk)
                self._inner.write(chunk)
            except BaseException as e:
                self._error = e

    def finish(self) -> str:
        """Flush, wait for the writer thread, re-raise its error, and return the hex SHA-256."""
        self._flush_pending()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the writer thread after a failure, discarding what is queued."""
        self._error = self._error or RuntimeError("write abandoned")
        self._queue.put(None)
        self._thread.join()
