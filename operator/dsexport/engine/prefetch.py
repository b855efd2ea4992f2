"""Read ahead on a second thread: decoding the next row group overlaps with encoding and writing this one.

Arrow's decoders release the GIL, so on two cores this recovers the parallelism that scanning one row group at a
time (which is what keeps memory flat) would otherwise lose. At most ``depth`` items wait, so memory stays
bounded when the consumer is the slow side.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


def prefetch(items: Iterator[T], *, depth: int) -> Generator[T]:
    """Yield ``items`` in order while a worker thread produces up to ``depth`` ahead; errors re-raise here."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                buffer.put(item)
                if stopped.is_set():
                    return
            buffer.put(_END)
        except BaseException as e:  # re-raised in the consumer's thread
            buffer.put(_Failed(e))

    worker = threading.Thread(target=produce, name="dsexport-prefetch", daemon=True)
    worker.start()
    try:
        while (item := buffer.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stopped.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it see `stopped`
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.05)
        worker.join()
