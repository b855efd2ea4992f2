"""Property: for any sequence of appends and runs, committed exports hold every source row exactly once."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import flow_yaml, read_committed_ids, source_ids

from dsexport.api import loader
from dsexport.cli import local
from dsexport.engine import Outcome

T0 = dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)

step = st.tuples(
    st.lists(st.integers(min_value=0, max_value=40), max_size=3),  # rows of each appended file
    st.integers(min_value=0, max_value=2),  # slots to advance before running (0: retry the same slot)
)


def append(src: Path, sizes: list[int], counters: dict[str, int]) -> None:
    """Write one file per size; ids and cursor values only ever grow, as an append-only source's do."""
    for rows in sizes:
        first = counters["id"]
        values = list(range(first, first + rows))
        counters["id"] += rows
        cursors = list(range(counters["cursor"], counters["cursor"] + rows))
        counters["cursor"] += rows
        table = pa.table(
            {
                "_id": pa.array(values, pa.int64()),
                "ingested_at": pa.array(cursors, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "payload": pa.array([{"k": str(v), "tags": [v, v + 1]} for v in values]),
            }
        )
        pq.write_table(table, src / f"f-{first:08d}-{rows}.parquet")


@settings(max_examples=25)
@given(
    steps=st.lists(step, min_size=1, max_size=6),
    strategy=st.sampled_from(["files", "column"]),
    fmt=st.sampled_from(["parquet", "json"]),
)
def test_any_sequence_of_appends_and_runs_exports_each_row_once(
    steps: list[tuple[list[int], int]], strategy: str, fmt: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src, dest = root / "lake", root / "dest"
        src.mkdir()
        column = "ingested_at" if strategy == "column" else None
        flow = flow_yaml(root, source=src, dest=dest, fmt=fmt, strategy=strategy, column=column, max_records=17)
        counters = {"id": 0, "cursor": 1_000_000}
        at = T0
        for sizes, advance in steps:
            append(src, sizes, counters)
            at += dt.timedelta(hours=3 * advance)
            bundle = loader.load_files([flow])
            [result] = local.run(bundle, local.requests(bundle, at=at))
            assert result.outcome != Outcome.failed, result.message
            committed = Counter(read_committed_ids(dest))
            assert all(n == 1 for n in committed.values()), "a row was exported twice"
            assert set(committed) <= set(source_ids(src))
        bundle = loader.load_files([flow])
        [final] = local.run(bundle, local.requests(bundle, at=at + dt.timedelta(hours=3)))
        assert final.outcome != Outcome.failed, final.message
        assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))
