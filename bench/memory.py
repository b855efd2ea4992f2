"""Peak memory of an export by source shape, each run under a kernel-enforced limit equal to the memory budget.

Run ``.venv/bin/python -m bench.memory`` from the repository root; ``--write-docs`` rewrites its section of
docs/benchmarks.md. Each case generates one shape of tests/shapes.py at a size larger than the tests' (the
issue's own cases among them: 4,000,000 rows in one row group, 200,000 rows of 4 KiB), exports it with
``dsexport run --memory-budget 400Mi`` in a memory cgroup limited to those 400 MiB (tests/cgroup.py), and
records the CLI's peak RSS (its own, exact), the time, and whether every row was exported. An OOM kill is a
miss, not a crash of the benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import shapes
from tests.cgroup import run_limited
from tests.helpers import flow_yaml

from bench.report import code_fingerprint, command, machine_facts, md_table, write_section

MIB = 1 << 20
BUDGET = "400Mi"
LIMIT = 400 * MIB
AT = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], int]
    formats: tuple[str, ...]
    source_format: str = "parquet"


def _huge_file(folder: Path) -> int:
    """A file several times the budget on disk: 30,000,000 rows in row groups of 1,000,000."""
    return shapes.one_row_group_file(folder, 30_000_000, row_group_rows=1_000_000)


CASES = (
    Case("one row group, 4,000,000 rows", lambda f: shapes.one_row_group(f, 4_000_000), ("parquet", "json")),
    Case("rows of 4 KiB, 200,000 in one row group", lambda f: shapes.wide_rows(f, 200_000), ("parquet", "json")),
    Case("1,000 columns, 50,000 rows", lambda f: shapes.many_columns(f, 50_000), ("parquet", "json")),
    Case("nested lists and maps, 1,000,000 rows", lambda f: shapes.nested(f, 1_000_000), ("parquet", "json")),
    Case("NDJSON, 3 MiB lines", lambda f: shapes.long_lines_ndjson(f, 1_000), ("parquet",), "json"),
    Case("CSV, 3 MiB lines", lambda f: shapes.long_lines_csv(f, 1_000), ("json",), "csv"),
    Case("a file of 30,000,000 rows", _huge_file, ("parquet",)),
)


@dataclass(frozen=True)
class Row:
    case: str
    fmt: str
    disk_mib: float
    rows: int
    peak_mib: float
    seconds: float
    exported: bool
    oom: bool


def measure(case: Case, fmt: str, src: Path, rows: int, work: Path) -> Row:
    dest = work / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    flow = flow_yaml(
        work,
        source=src,
        dest=dest,
        fmt=fmt,
        compression="gzip" if fmt == "json" else None,
        source_format=case.source_format,
        byte_copy=False,
    )
    cmd = [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), "--at", AT.isoformat()]
    started = time.perf_counter()
    run = run_limited([*cmd, "--memory-budget", BUDGET, "-o", "json"], limit=LIMIT, timeout=1800)
    seconds = time.perf_counter() - started
    exported = False
    if run.returncode == 0:
        [result] = json.loads(run.stdout)["results"]
        exported = result["outcome"] == "exported" and result["records"] == rows
    disk = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / MIB
    return Row(case.name, fmt, disk, rows, run.peak_rss / MIB, seconds, exported, run.oom_killed)


def render(rows: Sequence[Row], argv: Sequence[str], code: str) -> str:
    body = [
        [
            r.case,
            r.fmt,
            f"{r.disk_mib:,.0f}",
            f"{r.peak_mib:,.0f}",
            f"{r.seconds:.1f}",
            "yes" if r.exported and not r.oom else ("OOM-killed" if r.oom else "no"),
        ]
        for r in rows
    ]
    facts = ", ".join(f"{k}: {v}" for k, v in machine_facts())
    lines = [
        "## Memory by source shape",
        "",
        f"`{command('bench.memory', argv)}`; code {code}; {facts}.",
        "",
        f"Each export ran under a memory cgroup limited to the budget ({BUDGET}), so exceeding it is an OOM kill;",
        "peak RSS is the CLI's own. Time includes the interpreter's start (about 1 s). Exported: every row, in a",
        "committed export.",
        "",
        *md_table(["shape", "output", "on disk (MiB)", "peak RSS (MiB)", "seconds", "exported"], body),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--write-docs", action="store_true", help="rewrite the memory section of docs/benchmarks.md")
    p.add_argument("--only", help="run only the cases whose name contains this")
    p.add_argument("--data-dir", type=Path, help="generate the shapes under this folder (default: a temporary one)")
    args = p.parse_args(argv)
    code = code_fingerprint()
    rows: list[Row] = []
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dsexport-bench-memory-", dir=args.data_dir) as tmp:
        for i, case in enumerate(CASES):
            if args.only and args.only not in case.name:
                continue
            src = Path(tmp) / f"src-{i}"
            count = case.make(src)
            for fmt in case.formats:
                work = Path(tmp) / f"work-{i}-{fmt}"
                work.mkdir()
                row = measure(case, fmt, src, count, work)
                rows.append(row)
                print(f"{row.case} -> {fmt}: {row.peak_mib:.0f} MiB, {row.seconds:.1f} s, exported {row.exported}")
                shutil.rmtree(work)
            shutil.rmtree(src)
    text = render(rows, argv, code)
    print(text)
    if args.write_docs:
        print(f"wrote {write_section('memory', text)}")
    return 0 if all(r.exported and not r.oom for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
