"""The incremental no-op over a large date-partitioned source, with and without a declared partitioning.

``.venv/bin/python -m bench.listing`` times a whole in-process ``dsexport run`` that finds nothing new in
1,000,000 source files spread over 1,000 ``date=YYYY-MM-DD`` partitions on a local folder, once with
``source.partitioning: {key: date, format: "%Y-%m-%d"}`` (target: under 3 s) and once without it (the baseline:
everything is listed). ``--quick`` is a smoke test on 10,000 files in 100 partitions; ``--files`` and
``--partitions`` pick other sizes; ``--write-docs`` rewrites its section of docs/benchmarks.md.

The source is generated once into ``--cache`` (default /tmp/dsexport-bench-listing) and reused while its marker
says it has the wanted shape: 1,000,000 files take a few minutes and about 1 GB of inodes and directory blocks.
Only the last partition's files are (tiny) Parquet files; the others are empty, as a no-op never opens them.
Every file's modification time lies inside its partition's day, which is what the declaration promises.

A no-op needs a committed watermark. A real backfill of 1,000,000 files would take most of an hour and is not
what is measured, so the backfill runs on a *seed* source holding hard links to the last partition's files
(same relative paths, same modification times): the manifest it commits is exactly what a backfill of the
whole source would leave as the watermark (the latest files and their paths within the lookback), since the
destination never records the source's URI. The timed runs then read the same destination through the full
source. Both variants share that destination and run interleaved, the first of each repetition alternating,
after one untimed warm-up each (the timings are for a warm dentry and inode cache).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from examples import sample

from bench import baselines as b
from bench.data import START
from bench.measure import load_average
from bench.report import DOCS_NAME, code_fingerprint, machine_facts, md_table, write_section

TARGET_SECONDS = 3.0
LAST_DAY = dt.date(2026, 11, 30)  # the newest partition; the bench's runs are at 2026-12-01 (bench.baselines)
PARTITIONING = {"key": "date", "format": "%Y-%m-%d"}
MARKER = "_bench.json"  # '_'-prefixed: dsexport skips it
DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class Shape:
    files: int
    partitions: int

    @property
    def per_partition(self) -> int:
        return self.files // self.partitions

    @property
    def name(self) -> str:
        return f"date-{self.partitions}x{self.per_partition}"

    def day(self, index: int) -> dt.date:
        """Partition ``index`` (0: the oldest) ends on LAST_DAY."""
        return LAST_DAY - dt.timedelta(days=self.partitions - 1 - index)


@dataclass
class Timings:
    label: str
    walls: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


# ------------------------------------------------------------------------------------------------- source


def _folder(day: dt.date) -> str:
    return f"date={day.isoformat()}"


def _mtime_ns(day: dt.date, i: int, per_partition: int) -> int:
    """File ``i`` of a day's ``per_partition``, spread evenly inside that UTC day."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
    return start + (2 * i + 1) * DAY_NS // (2 * per_partition)


def _tiny_parquet() -> bytes:
    buffer = io.BytesIO()
    pq.write_table(sample.events(10, seed=1, start=START), buffer)
    return buffer.getvalue()


def _write_partition(folder: Path, day: dt.date, per_partition: int, content: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(per_partition):
        fd = os.open(folder / f"part-{i:05d}.parquet", flags, 0o644)
        try:
            if content:
                os.write(fd, content)
            mtime = _mtime_ns(day, i, per_partition)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)


def source(cache: Path, shape: Shape, log: Any) -> tuple[Path, Path]:
    """The full source and its seed (the last partition, hard-linked), generated unless cached."""
    root, seed = cache / shape.name, cache / f"{shape.name}-seed"
    spec = {"files": shape.files, "partitions": shape.partitions, "last": LAST_DAY.isoformat(), "version": 1}
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == spec and seed.is_dir():
        return root, seed
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(seed, ignore_errors=True)
    started = time.perf_counter()
    content = _tiny_parquet()
    for index in range(shape.partitions):
        day = shape.day(index)
        last = index == shape.partitions - 1
        _write_partition(root / _folder(day), day, shape.per_partition, content if last else b"")
        if index % 100 == 99:
            log(f"  {index + 1:,} of {shape.partitions:,} partitions ({time.perf_counter() - started:.0f} s)")
    last_folder = _folder(LAST_DAY)
    (seed / last_folder).mkdir(parents=True)
    for path in (root / last_folder).iterdir():
        (seed / last_folder / path.name).hardlink_to(path)
    marker.write_text(json.dumps(spec))
    log(f"  generated in {time.perf_counter() - started:.0f} s")
    return root, seed


# --------------------------------------------------------------------------------------------------- runs


def flow(folder: Path, *, source: Path, dest: Path, partitioning: dict[str, str] | None) -> Path:
    """bench.baselines' flow (the tests' flow), with the source's partitioning and a shared destination."""
    path = b.flow_file(folder, source=source, fmt="parquet", compression="snappy")
    docs = list(yaml.safe_load_all(path.read_text()))
    if partitioning is not None:
        docs[0]["spec"]["source"]["partitioning"] = partitioning
    docs[1]["spec"]["filesystem"]["path"] = str(dest)
    path.write_text(yaml.safe_dump_all(docs))
    return path


class ListingLog(logging.Handler):
    """The engine's ``list`` log line: how many folders a pruned listing read and how many partitions it skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields.get("phase") == "list":
            self.fields = dict(fields)


@dataclass
class Result:
    shape: Shape
    pruned: Timings
    full: Timings
    processes: list[Timings]
    backfill_s: float
    backfill_records: int
    listing: dict[str, Any]
    load: str


def measure(shape: Shape, cache: Path, reps: int, baseline_reps: int, log: Any) -> Result:
    log(f"source: {shape.files:,} files in {shape.partitions:,} partitions under {cache}")
    root, seed = source(cache, shape, log)
    work = cache / f"work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        dest = work / "dest"
        load = load_average()
        t0 = time.perf_counter()
        backfill = b.run_dsexport(flow(work / "seed", source=seed, dest=dest, partitioning=None), b.FIRST_AT)
        backfill_s = time.perf_counter() - t0
        log(f"backfill of the seed: {backfill.records:,} rows in {backfill_s:.1f} s")
        flows = {
            "pruned": flow(work / "pruned", source=root, dest=dest, partitioning=PARTITIONING),
            "full": flow(work / "full", source=root, dest=dest, partitioning=None),
        }
        timings = {"pruned": Timings("with `partitioning` (pruned)"), "full": Timings("without (baseline)")}
        handler = ListingLog()
        logging.getLogger("dsexport.engine.sources").addHandler(handler)
        logging.getLogger("dsexport.engine.sources").setLevel(logging.INFO)
        for name in ("pruned", "full"):  # warm-up, untimed
            b.run_dsexport(flows[name], b.LATER_AT, expect=b.NO_NEW_DATA)
        for rep in range(max(reps, baseline_reps)):
            order = ["pruned", "full"] if rep % 2 == 0 else ["full", "pruned"]
            for name in order:
                if len(timings[name].walls) >= (reps if name == "pruned" else baseline_reps):
                    continue
                t0 = time.perf_counter()
                b.run_dsexport(flows[name], b.LATER_AT, expect=b.NO_NEW_DATA)
                timings[name].walls.append(time.perf_counter() - t0)
                log(f"  {name}: {timings[name].walls[-1]:.3f} s")
        cli = Timings("with `partitioning`, `dsexport run` CLI subprocess")
        imports = Timings("`python -c 'import dsexport.cli'` (for reference)")
        for _ in range(3):
            t0 = time.perf_counter()
            done = subprocess.run(b.cli(flows["pruned"], b.LATER_AT), capture_output=True, text=True, check=True)
            cli.walls.append(time.perf_counter() - t0)
            if b.cli_result(done.stdout).outcome != b.NO_NEW_DATA:
                raise RuntimeError(f"CLI no-op run exported something: {done.stdout}")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import dsexport.cli"], check=True)
            imports.walls.append(time.perf_counter() - t0)
        return Result(
            shape,
            timings["pruned"],
            timings["full"],
            [cli, imports],
            backfill_s,
            backfill.records,
            handler.fields,
            load,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- report


def render(result: Result, command: str) -> str:
    shape = result.shape
    met = result.pruned.median < TARGET_SECONDS
    rows = [
        [t.label, f"{t.best:.3f}", f"{t.median:.3f}", " ".join(f"{w:.3f}" for w in t.walls)]
        for t in (result.pruned, result.full, *result.processes)
    ]
    folders = result.listing.get("foldersListed", "?")
    pruned = result.listing.get("partitionsPruned", "?")
    lines = [
        "## Partition-pruned listing",
        "",
        f"Generated by `{command}`. Code measured: the `dsexport` package's Python files with SHA-256 prefix "
        f"`{code_fingerprint()}`.",
        "",
        f"**Incremental no-op over {shape.files:,} source files in {shape.partitions:,} date partitions** "
        f"(local folder, `date=YYYY-MM-DD/`, {shape.per_partition:,} files each; lookback 15m; partitioning "
        f'`{{key: date, format: "%Y-%m-%d"}}`, lateness 1h): in-process runs (load YAML, read the destination\'s '
        f"state, list, select), seconds. Target: median under {TARGET_SECONDS:.0f} s with pruning: "
        f"{'met' if met else 'MISSED'}. Without pruning the median is "
        f"{result.full.median / result.pruned.median:,.0f} times longer.",
        "",
        *md_table(["run", "best s", "median s", "all runs s"], rows),
        "",
        f"With pruning a run listed {folders} folders (the source root and the last partition) and skipped "
        f"{pruned} partitions unlisted; without it, one recursive listing returned all {shape.files:,} files. "
        "The CLI row is the same pruned no-op in a fresh `dsexport run` process, start-up and imports included.",
        "",
        "A smoke version (10,000 files in 100 partitions, a few seconds): `.venv/bin/python -m bench.listing "
        "--quick`; `--files` and `--partitions` scale it.",
        "",
        "**Method.** The source is generated once and cached; only the last partition holds (tiny) Parquet files, "
        "the rest are empty files, since a no-op never opens a file. Each file's modification time lies inside "
        "its partition's UTC day. The watermark comes from a backfill of a seed source holding hard links to the "
        f"last partition's {shape.per_partition:,} files, same paths and times ({result.backfill_records:,} rows, "
        f"{result.backfill_s:.1f} s, not timed against the target): the destination keeps no source URI, so the "
        "commit is the one a backfill of the whole source would leave. Both variants then run against the same "
        "destination, interleaved (the first of each repetition alternating), after one untimed warm-up each, "
        "so the dentry and inode caches are warm.",
        "",
        f"Load average at the start: {result.load}. Machine: "
        + "; ".join(f"{k} {v}" for k, v in machine_facts()[:5])
        + ".",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.listing",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--files", type=int, help="source files (default 1,000,000; --quick 10,000)")
    p.add_argument("--partitions", type=int, help="date partitions (default 1,000; --quick 100)")
    p.add_argument("--reps", type=int, default=5, help="timed runs with pruning (default 5)")
    p.add_argument("--baseline-reps", type=int, default=3, help="timed runs without pruning (default 3)")
    p.add_argument("--quick", action="store_true", help="a smoke test on small sizes")
    p.add_argument("--cache", type=Path, default=Path("/tmp/dsexport-bench-listing"), help="generated sources")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the listing section of {DOCS_NAME}")
    args = p.parse_args(argv)
    args.files = args.files or (10_000 if args.quick else 1_000_000)
    args.partitions = args.partitions or (100 if args.quick else 1_000)
    if args.partitions < 1 or args.files < args.partitions or args.files % args.partitions:
        p.error("--files must be a positive multiple of --partitions")
    if min(args.reps, args.baseline_reps) < 1:
        p.error("--reps and --baseline-reps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    shape = Shape(args.files, args.partitions)
    result = measure(shape, args.cache.resolve(), args.reps, args.baseline_reps, log)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python -m bench.listing", *(a for a in given if a != "--write-docs")])
    text = render(result, command)
    print()
    print(text)
    if args.write_docs:
        log(f"wrote {write_section('listing', text)}")
    return 0 if result.pruned.median < TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
