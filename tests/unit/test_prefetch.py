"""Work ahead (ordered_map): order kept whatever the threads' timing, bounded, errors where a plain loop would
raise them, and no thread left running when the consumer stops early."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from dsexport.engine.prefetch import ordered_map


def test_order_is_kept_whatever_the_timing() -> None:
    rng = random.Random(3)
    delays = [rng.random() / 500 for _ in range(300)]

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    assert list(ordered_map(slow_square, range(300), workers=4, in_flight=5)) == [i * i for i in range(300)]


def test_at_most_ahead_plus_one_items_are_in_flight() -> None:
    lock = threading.Lock()
    taken = 0
    done = 0
    most = 0

    def items() -> Iterator[int]:
        nonlocal taken, most
        for i in range(200):
            with lock:
                taken += 1
                most = max(most, taken - done)
            yield i

    def work(i: int) -> int:
        time.sleep(0.0005)
        return i

    for _ in ordered_map(work, items(), workers=3, in_flight=3):
        with lock:
            done += 1
    assert most <= 3 + 1  # submitted and not yet yielded, plus the one being taken from the source


def test_a_source_error_comes_after_the_results_before_it() -> None:
    def failing() -> Iterator[int]:
        yield from range(5)
        raise OSError("disk gone")

    got: list[int] = []
    with pytest.raises(OSError, match="disk gone"):
        for x in ordered_map(lambda i: i, failing(), workers=2, in_flight=9):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_an_error_in_the_function_is_raised_in_its_place() -> None:
    def work(i: int) -> int:
        if i == 7:
            raise ValueError("bad row")
        return i

    got: list[int] = []
    with pytest.raises(ValueError, match="bad row"):
        for x in ordered_map(work, range(100), workers=3, in_flight=4):
            got.append(x)
    assert got == list(range(7))


def test_stopping_early_ends_the_threads_and_closes_the_source() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        n = 0
        try:
            while True:
                produced.append(n)
                yield n
                n += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = ordered_map(lambda i: i, endless(), workers=2, in_flight=3)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed.is_set()
    assert threading.active_count() == before
    assert len(produced) <= 5 + 3
