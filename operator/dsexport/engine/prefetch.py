"""Work ahead on other threads, in order and bounded: the part writers encode the next pieces while this thread
decodes and writes.

pyarrow's Parquet writer and polars' NDJSON serializer release the GIL while they encode, but each keeps about one
core busy for a given piece; ``ordered_map`` runs a function over pieces on a few threads at once and hands the
results on in their original order, so what is written is the same as encoding one piece after the other. The
caller's thread meanwhile decodes the next batches (pyarrow's decoders release the GIL too), so decoding and
encoding overlap without a read-ahead thread of their own, whose queue only held more decoded batches in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, in_flight: int) -> Generator[R]:
    """Yield ``fn(item)`` for each of ``items``, in order, computed on ``workers`` threads.

    At most ``in_flight`` items (at least one) are submitted and not yet yielded, so memory stays bounded by that
    many items and their results. ``items`` is iterated on the calling thread. An error in ``items`` is raised
    after the results of the items before it, an error in ``fn`` in that item's place, so the consumer sees what a
    plain loop would have shown it, whatever the threads' timing. When the consumer stops early, or an error ends
    the loop, work not started is cancelled and work under way is waited for: nothing runs on behind the caller's
    back.
    """
    pending: deque[Future[R]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dsexport-encode") as pool:
        try:
            while True:
                try:
                    item = next(source)
                except StopIteration:
                    break
                except BaseException:
                    while pending:  # what came before the error is delivered first, as a plain loop would
                        yield pending.popleft().result()
                    raise
                pending.append(pool.submit(fn, item))
                del item  # the worker has it; holding it here too would keep it alive while we wait
                while pending and (len(pending) >= in_flight or pending[0].done()):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            close = getattr(source, "close", None)
            if callable(close):
                close()  # a generator stops now (its source file is closed), not when it is collected
