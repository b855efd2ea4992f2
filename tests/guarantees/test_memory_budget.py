"""The memory budget, enforced by the kernel: every shape exports exactly inside a cgroup limited to the budget.

Each case runs ``dsexport run --memory-budget 400Mi`` in a memory cgroup of its own whose hard limit is those
400 MiB (tests/cgroup.py): going over is an OOM kill and fails the test. The shapes (tests/shapes.py) are the
ones that broke the promise before the memory plan: a single row group of millions of rows, rows of 4 KiB
(several times the budget once decoded), 1,000 columns, nested lists and maps, NDJSON and CSV lines longer than
Arrow's default block. A value too large for any budget fails with a message naming the file, the column and the
size, not with an OOM kill. bench/memory.py measures the same shapes at larger sizes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests import shapes
from tests.cgroup import run_limited
from tests.helpers import committed, flow_yaml, read_committed_ids

BUDGET = "400Mi"
LIMIT = 400 << 20
AT = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
MiB = 1 << 20

CASES = [
    ("one-row-group", 3_000_000, "parquet"),
    ("one-row-group", 3_000_000, "json"),
    ("wide-rows", 120_000, "parquet"),  # about 490 MiB decoded: more than the budget
    ("wide-rows", 40_000, "json"),
    ("many-columns", 20_000, "parquet"),
    ("nested", 200_000, "parquet"),
    ("nested", 200_000, "json"),
    ("long-lines-ndjson", 300, "parquet"),
    ("long-lines-csv", 300, "json"),
]


def _export(tmp: Path, src: Path, fmt: str) -> tuple[Path, list[str]]:
    source_format = "json" if "ndjson" in src.name else "csv" if "csv" in src.name else "parquet"
    dest = tmp / "dest"
    flow = flow_yaml(
        tmp,
        source=src,
        dest=dest,
        fmt=fmt,
        compression="gzip" if fmt == "json" else None,
        source_format=source_format,
        byte_copy=False,
    )
    cmd = [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), "--at", AT.isoformat()]
    return dest, [*cmd, "--memory-budget", BUDGET, "-o", "json"]


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "rows", "fmt"), CASES, ids=[f"{s}-{f}" for s, _, f in CASES])
def test_each_shape_exports_exactly_within_the_budget(tmp_path: Path, shape: str, rows: int, fmt: str) -> None:
    src = tmp_path / f"lake-{shape}"
    written = shapes.SHAPES[shape](src, rows)
    dest, cmd = _export(tmp_path, src, fmt)

    run = run_limited(cmd, limit=LIMIT)

    assert not run.oom_killed, f"{shape} -> {fmt}: OOM-killed at the {BUDGET} limit"
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = json.loads(run.stdout)["results"]
    assert (result["outcome"], result["records"]) == ("exported", written), result
    assert Counter(read_committed_ids(dest)) == Counter(range(written))  # every file: size, sha256, rows
    print(f"{shape} -> {fmt}: peak RSS {run.peak_rss / MiB:.0f} MiB of {BUDGET}")


@pytest.mark.slow
def test_a_value_larger_than_the_budget_allows_is_refused_by_name(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    shapes.huge_value(src, 300 << 20)
    dest, cmd = _export(tmp_path, src, "parquet")

    run = run_limited(cmd, limit=LIMIT)

    assert not run.oom_killed
    assert run.returncode == 1, run.stderr[-3000:]
    [result] = json.loads(run.stdout)["results"]
    assert result["outcome"] == "failed" and result["transient"] is False, result
    message = result["message"]
    assert "part.parquet" in message and "'blob'" in message and "300 MiB a value" in message, message
    assert "memory budget of 400 MiB" in message and "raise memoryBudget" in message, message
    assert not committed(dest)


@pytest.mark.slow
def test_a_line_longer_than_the_budget_allows_is_refused_by_name(tmp_path: Path) -> None:
    src = tmp_path / "lake-long-lines-ndjson"
    shapes.long_lines_ndjson(src, 2, line_bytes=80 << 20, every=1)
    dest, cmd = _export(tmp_path, src, "parquet")

    run = run_limited(cmd, limit=LIMIT)

    assert not run.oom_killed
    assert run.returncode == 1, run.stderr[-3000:]
    [result] = json.loads(run.stdout)["results"]
    assert result["outcome"] == "failed" and result["transient"] is False, result
    message = result["message"]
    assert "part.json: a line of 80 MiB" in message and "memory budget of 400 MiB" in message, message
    assert not committed(dest)
