"""Read-ahead keeps order, surfaces errors, and stops its thread when the consumer stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dsexport.engine.prefetch import prefetch


def test_order_is_kept() -> None:
    assert list(prefetch(iter(range(1000)), depth=3)) == list(range(1000))


def test_a_producer_error_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetch(failing(), depth=2):
            got.append(x)
    assert got == [1]


def test_stopping_early_ends_the_worker_and_bounds_read_ahead() -> None:
    produced = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    before = threading.active_count()
    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert threading.active_count() == before
    assert len(produced) <= 5 + 2 + 2  # consumed + queue depth + one in hand + one being put
