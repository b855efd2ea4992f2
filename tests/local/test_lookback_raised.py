"""Raising ``lookback`` must not export a file twice (found by tests/guarantees/test_incremental_property.py).

design.md advises raising ``lookback`` when files arrive later than it. A commit remembers the paths it exported
within its own lookback only; before ``recentSinceNs``, a run with a larger lookback took files older than that
window for new, although some had been exported: their rows were committed a second time in one chain.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tests.helpers import assert_only_committed_files, committed, flow_yaml, read_committed_ids, run_local

from dsexport.engine import watermark
from dsexport.engine.manifest import FilesState
from dsexport.engine.result import Outcome
from dsexport.engine.sources import SourceFile

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
H3 = dt.timedelta(hours=3)
MINUTE_NS = 60 * 10**9
BASE_NS = 1_764_460_800 * 10**9


def write(src: Path, name: str, ids: list[int], mtime_ns: int) -> None:
    path = src / name
    pq.write_table(pa.table({"_id": pa.array(ids, pa.int64())}), path)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_raising_lookback_does_not_export_a_file_again(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    write(src, "a.parquet", [1], BASE_NS)
    flow = flow_yaml(tmp_path, source=src, dest=dest, lookback="15m")
    assert run_local(flow, T0)[0].outcome == Outcome.exported
    write(src, "b.parquet", [2], BASE_NS + 20 * MINUTE_NS)  # a.parquet leaves the 15m window: forgotten
    assert run_local(flow, T0 + H3)[0].outcome == Outcome.exported
    assert committed(dest)[-1]["state"]["recentSinceNs"] == BASE_NS + 5 * MINUTE_NS

    flow = flow_yaml(tmp_path, source=src, dest=dest, lookback="1h")  # as design.md advises for late files
    write(src, "c.parquet", [3], BASE_NS + 10 * MINUTE_NS)  # late, inside the window the last commit remembers
    [third] = run_local(flow, T0 + 2 * H3)
    assert (third.outcome, third.records) == (Outcome.exported, 1), third.message
    assert committed(dest)[-1]["sourceFiles"] == ["c.parquet"]
    assert sorted(read_committed_ids(dest)) == [1, 2, 3]

    # As the watermark moves on, the window grows to the new lookback.
    write(src, "d.parquet", [4], BASE_NS + 80 * MINUTE_NS)
    assert run_local(flow, T0 + 3 * H3)[0].outcome == Outcome.exported
    assert committed(dest)[-1]["state"]["recentSinceNs"] == BASE_NS + 20 * MINUTE_NS
    write(src, "e.parquet", [5], BASE_NS + 25 * MINUTE_NS)  # 55 minutes late: inside the raised lookback
    assert run_local(flow, T0 + 4 * H3)[0].records == 1
    assert sorted(read_committed_ids(dest)) == [1, 2, 3, 4, 5]
    assert_only_committed_files(dest)


def test_the_horizon_never_goes_below_what_the_last_commit_remembers() -> None:
    """``horizon_ns`` with a raised lookback, and the state a selection commits."""
    top = BASE_NS + 60 * MINUTE_NS
    previous = FilesState(max_modified_ns=top, max_modified="", recent={"b": top}, recent_since_ns=top - 15 * MINUTE_NS)
    assert watermark.horizon_ns(previous, 60 * MINUTE_NS) == top - 15 * MINUTE_NS
    assert watermark.horizon_ns(previous, 5 * MINUTE_NS) == top - 5 * MINUTE_NS
    # A manifest from before recentSinceNs: the lookback alone, as before.
    legacy = FilesState(max_modified_ns=top, max_modified="", recent={"b": top})
    assert watermark.horizon_ns(legacy, 60 * MINUTE_NS) == top - 60 * MINUTE_NS

    listing = [SourceFile("a", 1, top - 30 * MINUTE_NS), SourceFile("b", 1, top), SourceFile("c", 1, top - MINUTE_NS)]
    chosen = watermark.select_files(listing, previous, lookback_ns=60 * MINUTE_NS)
    assert [f.path for f in chosen.files] == ["c"]  # not "a": it may have been exported before it was forgotten
    assert chosen.state.recent_since_ns == top - 15 * MINUTE_NS
    assert chosen.state.recent == {"b": top, "c": top - MINUTE_NS}
