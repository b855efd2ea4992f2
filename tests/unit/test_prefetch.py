"""Work ahead (ordered_map): order kept whatever the threads' timing, bounded, errors where a plain loop would
raise them, and no thread left running when the consumer stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from tests.helpers import SwappedPairs

from dsexport.engine.prefetch import ordered_map


def test_order_is_kept_however_the_results_come_in() -> None:
    """Of each pair of items the second finishes first, yet the results come out in order."""
    swapped = SwappedPairs()
    square = swapped.wrap(lambda i: i * i)
    assert list(ordered_map(square, swapped.ending(range(300)), workers=4, in_flight=5)) == [i * i for i in range(300)]
    assert swapped.swapped == 150


def test_at_most_in_flight_items_are_taken_and_not_yet_handed_on() -> None:
    """Each call returns only once the pipeline is full (or the source is done), so the bound is what stops the
    source from being read further, not the speed of the work."""
    in_flight = 3
    changed = threading.Condition()
    taken = done = most = 0
    ended = False

    def items() -> Iterator[int]:
        nonlocal taken, most, ended
        for i in range(200):
            with changed:
                taken += 1
                most = max(most, taken - done)
                changed.notify_all()
            yield i
        with changed:
            ended = True
            changed.notify_all()

    def work(i: int) -> int:
        with changed:
            assert changed.wait_for(lambda: taken - done >= in_flight or ended, timeout=60)
        return i

    for _ in ordered_map(work, items(), workers=3, in_flight=in_flight):
        with changed:
            done += 1
            changed.notify_all()
    assert most == in_flight


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
