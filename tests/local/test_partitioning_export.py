"""End to end in local mode: a Dataset that declares its date partitioning exports exactly its new rows
incrementally while its runs list only the recent partitions, and what pruning skips by design."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml
from examples import sample
from tests.helpers import START, ListingSpy, committed, flow_yaml, read_committed_ids
from tests.helpers import run_local as run

from dsexport.engine import Outcome

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
ROWS = 100


def utc_ns(year: int, month: int, day: int, hour: int) -> int:
    return int(dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


class Lake:
    """A source of one small Parquet file per write, each into the folder a writer chose, with its mtime."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.next_id = 0

    def write(self, folder: str, mtime_ns: int) -> list[int]:
        """One file of fresh rows in ``folder``; returns their ids."""
        first = self.next_id
        self.next_id = sample.write_files(
            self.root / folder, files=1, rows_per_file=ROWS, seed=first, start=START, id_offset=first
        )
        path = self.root / folder / f"events-{first:012d}.parquet"
        os.utime(path, ns=(mtime_ns, mtime_ns))
        return list(range(first, self.next_id))


class Listings(ListingSpy):
    """Every folder the runs list, relative to the source, and whether recursively, taken run by run."""

    def take(self) -> list[tuple[str, bool]]:
        calls, self.calls = sorted(self.calls), []
        return calls


def declare(flow: Path, partitioning: dict[str, str] | None) -> Path:
    """The flow's Dataset with ``source.partitioning`` set (the shared helper writes none)."""
    docs = list(yaml.safe_load_all(flow.read_text()))
    if partitioning is not None:
        docs[0]["spec"]["source"]["partitioning"] = partitioning
    flow.write_text(yaml.safe_dump_all(docs))
    return flow


@pytest.mark.parametrize("declared", [True, False], ids=["partitioned", "undeclared"])
def test_incremental_export_lists_only_recent_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    lake, dest = Lake(tmp_path / "lake"), tmp_path / "dest"
    history = [i for day in range(26, 31) for i in lake.write(f"date=2026-11-{day}", utc_ns(2026, 11, day, 12))]
    flow = declare(
        flow_yaml(tmp_path, source=lake.root, dest=dest),
        {"key": "date", "format": "%Y-%m-%d"} if declared else None,
    )
    listings = Listings(monkeypatch, lake.root)

    [backfill] = run(flow, T0)
    assert (backfill.outcome, backfill.records) == (Outcome.exported, 5 * ROWS), backfill.message
    assert listings.take() == [(".", True)]  # the first export lists everything, in one go

    same_day = lake.write("date=2026-11-30", utc_ns(2026, 11, 30, 20))
    next_day = lake.write("date=2026-12-01", utc_ns(2026, 12, 1, 2))
    elsewhere = lake.write("reprocessed/batch-7", utc_ns(2026, 12, 1, 3))  # not a partition: listed fully
    # Breaks the declaration (written into a partition that ended days ago): with it, skipped by design.
    late = lake.write("date=2026-11-26", utc_ns(2026, 12, 1, 3))

    [second] = run(flow, T0 + dt.timedelta(hours=3))
    assert second.outcome == Outcome.exported, second.message
    exported = same_day + next_day + elsewhere + ([] if declared else late)
    assert second.records == len(exported)
    assert sorted(read_committed_ids(dest)) == sorted(history + exported)
    if declared:
        # The watermark is 2026-11-30T12:00; minus lookback (15m) it is past 2026-11-29's end plus lateness (1h).
        assert listings.take() == [
            (".", False),
            ("date=2026-11-30", True),
            ("date=2026-12-01", True),
            ("reprocessed", True),
        ]
    else:
        assert listings.take() == [(".", True)]

    [noop] = run(flow, T0 + dt.timedelta(hours=6))
    assert noop.outcome == Outcome.no_new_data, noop.message
    assert len(committed(dest)) == 2
    if declared:
        # Now past 2026-11-30 too: only the last day and the folder that is no partition are listed.
        assert listings.take() == [(".", False), ("date=2026-12-01", True), ("reprocessed", True)]


def test_nested_folders_and_lateness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain ``%Y/%m/%d`` folders, pruned a level at a time; a job that writes yesterday's folder after midnight
    is covered by a lateness longer than its delay."""
    lake, dest = Lake(tmp_path / "lake"), tmp_path / "dest"
    history = [i for m in range(1, 12) for i in lake.write(f"2026/{m:02d}/15", utc_ns(2026, m, 15, 12))]
    history += lake.write("2026/11/30", utc_ns(2026, 11, 30, 22))
    flow = declare(flow_yaml(tmp_path, source=lake.root, dest=dest), {"format": "%Y/%m/%d", "lateness": "6h"})
    listings = Listings(monkeypatch, lake.root)
    [backfill] = run(flow, T0)
    assert backfill.records == 12 * ROWS, backfill.message
    listings.take()

    yesterday = lake.write("2026/11/30", utc_ns(2026, 12, 1, 4))  # yesterday's folder, written at 04:00
    today = lake.write("2026/12/01", utc_ns(2026, 12, 1, 5))

    [second] = run(flow, T0 + dt.timedelta(hours=6))
    assert second.records == 2 * ROWS, second.message
    assert sorted(read_committed_ids(dest)) == sorted(history + yesterday + today)
    assert listings.take() == [
        (".", False),
        ("2026", False),
        ("2026/11", False),
        ("2026/11/30", True),
        ("2026/12", False),
        ("2026/12/01", True),
    ]
