"""dsexport benchmarks: export speed against hand-written baselines, peak memory, and the incremental no-op.

Run ``.venv/bin/python bench/run.py`` (``make bench``); ``--quick`` is a smoke test on small data, and
``--write-docs`` rewrites docs/benchmarks.md with the results. Nothing else is written into the repository:
generated data and every output go to a temporary folder on the local disk (or ``--data-dir``).

Method, in short: every contestant of a comparison runs in this process, in the same session, interleaved
(the order rotates each repetition), into a fresh output folder, with the source files warm in the page cache
and ``os.sync()`` between runs so nobody pays for another's dirty pages. Peak RSS is measured in a fresh child
process per measurement. See docs/benchmarks.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import duckdb
import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml
from examples import sample

import dsexport
from dsexport.api import loader
from dsexport.cli import local
from dsexport.engine import jsonenc, sources, writers
from dsexport.engine.exporter import DatasetResult, Outcome

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
FIRST_AT = "2026-12-01T01:00:00Z"  # slot 2026-12-01T00:00 of the flow's 3-hourly schedule
LATER_AT = "2026-12-01T04:00:00Z"  # the next slot
BATCH_SIZE = sources.BATCH_SIZE  # baselines read with the same batch size as dsexport
MIB = 1024 * 1024

# Targets from the issue.
PARQUET_MAX_RATIO = 1.15
NDJSON_MAX_RATIO = 1.30
RSS_MAX_MIB = 400.0
RSS_MAX_GROWTH = 1.25
NOOP_MAX_SECONDS = 3.0

Role = Literal["dsexport", "baseline", "diagnostic"]


# ------------------------------------------------------------------------------------------------ inputs


def flow_yaml(folder: Path, *, source: Path, dest: Path, fmt: str, compression: str) -> Path:
    """A Dataset, a filesystem Destination and a DatasetExport, as tests/helpers.py writes them."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "events"},
            "spec": {
                "source": {"uri": str(source), "format": "parquet"},
                "incremental": {"strategy": "files", "lookback": "15m"},
            },
        },
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "Destination",
            "metadata": {"name": "dest"},
            "spec": {
                "type": "filesystem",
                "filesystem": {"path": str(dest)},
                "folder": "out",
                "format": {"type": fmt, "compression": compression},
            },
        },
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "DatasetExport",
            "metadata": {"name": "flow"},
            "spec": {
                "destinationRef": {"name": "dest"},
                "datasets": [{"name": "events"}],
                "mode": "incremental",
                "schedule": {"frequency": "hourly", "interval": 3, "time": "00:00", "startDate": "2026-11-01"},
            },
        },
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flow.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def _parse_at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).astimezone(dt.UTC)


def _cached(folder: Path, spec: dict[str, Any]) -> bool:
    marker = folder / "_bench.json"
    return marker.exists() and json.loads(marker.read_text()) == spec


def _mark(folder: Path, spec: dict[str, Any]) -> None:
    (folder / "_bench.json").write_text(json.dumps(spec))  # '_'-prefixed: dsexport skips it


def events_source(data: Path, rows: int, rows_per_file: int, *, base: Path | None = None) -> Path:
    """``rows`` generated events in files of ``rows_per_file`` (sample.write_files, seed 1).

    A larger set reuses a smaller one's files (hard links, same ids and seeds) and generates only the rest.
    """
    folder = data / f"events-{rows}-{rows_per_file}"
    spec = {"rows": rows, "rows_per_file": rows_per_file, "seed": 1, "generator": "examples.sample.write_files"}
    if _cached(folder, spec):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = max(1, rows // rows_per_file)
    have = 0
    if base is not None:
        for path in sorted(base.glob("*.parquet"))[:files]:
            try:
                (folder / path.name).hardlink_to(path)
            except OSError:
                shutil.copy2(path, folder / path.name)
            have += 1
    sample.write_files(
        folder,
        files=files - have,
        rows_per_file=rows_per_file,
        seed=1 + have,
        start=START + dt.timedelta(hours=have),
        id_offset=have * rows_per_file,
    )
    _mark(folder, spec)
    return folder


def small_files_source(data: Path, files: int, rows_per_file: int = 10) -> Path:
    """``files`` small Parquet files (distinct ids), modified one minute apart over the last ``files`` minutes,
    like a lake that has been collecting small files for days."""
    folder = data / f"small-{files}x{rows_per_file}"
    spec = {"files": files, "rows_per_file": rows_per_file, "seed": 7}
    if _cached(folder, spec):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = sample.events(files * rows_per_file, seed=7, start=START)
    now = time.time_ns()
    for i in range(files):
        path = folder / f"events-{i:06d}.parquet"
        pq.write_table(table.slice(i * rows_per_file, rows_per_file), path)
        mtime = now - (files - i) * 60 * 1_000_000_000
        os.utime(path, ns=(mtime, mtime))
    _mark(folder, spec)
    return folder


def warm(folder: Path) -> None:
    """Read every file once so all contestants start with the source in the page cache."""
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as f:
                while f.read(16 * MIB):
                    pass


def parquet_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.parquet"))


# ------------------------------------------------------------------------------------------- contestants


@dataclass(frozen=True)
class Output:
    files: list[Path]
    rows: int | None = None  # known by the contestant (dsexport's result); else counted after the timing


@dataclass(frozen=True)
class Contestant:
    key: str
    label: str
    role: Role
    threads: str
    # prepare(empty folder) -> the timed call; preparation (writing a flow file) is not timed.
    prepare: Callable[[Path], Callable[[], Output]]


def run_dsexport(flow: Path, at: str, *, expect: Outcome = Outcome.exported) -> DatasetResult:
    """One in-process run, exactly as the CLI does it minus interpreter start-up and argument parsing."""
    bundle = loader.load_files([flow])
    results = local.run(bundle, local.requests(bundle, at=_parse_at(at)))
    if len(results) != 1 or results[0].outcome != expect:
        raise RuntimeError(f"dsexport run did not end {expect.value}: {[r.as_json() for r in results]}")
    return results[0]


def dsexport_export(source: Path, fmt: str, compression: str) -> Callable[[Path], Callable[[], Output]]:
    def prepare(out: Path) -> Callable[[], Output]:
        dest = out / "dest"
        flow = flow_yaml(out, source=source, dest=dest, fmt=fmt, compression=compression)

        def run() -> Output:
            result = run_dsexport(flow, FIRST_AT)
            assert result.folder is not None
            parts = sorted(p for p in (dest / result.folder).glob("part-*"))
            return Output(parts, rows=result.records)

        return run

    return prepare


def _no_sync(_fd: int) -> None:
    return None


def without_fsync(prepare: Callable[[Path], Callable[[], Output]]) -> Callable[[Path], Callable[[], Output]]:
    """Diagnostic: the same run with os.fsync and os.fdatasync made no-ops, to isolate the cost of durability."""

    def prepare_nofsync(out: Path) -> Callable[[], Output]:
        run = prepare(out)

        def run_nofsync() -> Output:
            with mock.patch("os.fsync", _no_sync), mock.patch("os.fdatasync", _no_sync):
                return run()

        return run_nofsync

    return prepare_nofsync


def pyarrow_parquet(source: Path) -> Callable[[Path], Callable[[], Output]]:
    """What a user would hand-write: a dataset scanner's batches into one ParquetWriter, snappy."""

    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.parquet"

        def run() -> Output:
            dataset = pads.dataset(str(source), format="parquet")
            scanner = dataset.scanner(batch_size=BATCH_SIZE, use_threads=True)
            with pq.ParquetWriter(target, dataset.schema, compression="snappy") as writer:
                for batch in scanner.to_batches():
                    writer.write_batch(batch)
            return Output([target])

        return run

    return prepare


def _read_ahead() -> tuple[Callable[..., Iterator[pa.RecordBatch]], int] | None:
    """exporter's read-ahead thread around Source.batches (dsexport.prefetch), if this version has one."""
    try:
        module = importlib.import_module("dsexport.engine.prefetch")
        depth = int(importlib.import_module("dsexport.engine.exporter").PREFETCH_BATCHES)
    except (ImportError, AttributeError):
        return None
    return module.prefetch, depth


def dsexport_batches(dataset: pads.Dataset) -> Iterator[pa.RecordBatch]:
    """The batches dsexport's exporter writes: Source.batches, behind its read-ahead thread if it has one."""
    batches = sources.Source.batches(dataset)
    ahead = _read_ahead()
    return batches if ahead is None else ahead[0](batches, depth=ahead[1])


def _read_settings() -> str:
    ahead = _read_ahead()
    thread = f", read-ahead thread of {_n(ahead[1], 'batch')}" if ahead else ""
    return (
        f"scanner readahead {_n(sources.BATCH_READAHEAD, 'batch')} / {_n(sources.FRAGMENT_READAHEAD, 'file')}{thread}"
    )


def _n(count: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{count} {noun if count == 1 else plural}"


def dsexport_scan_parquet(source: Path) -> Callable[[Path], Callable[[], Output]]:
    """Diagnostic: dsexport's own scan (sources.Source.batches, whatever it does) into a plain ParquetWriter:
    the baseline's writer with dsexport's reader, without the transport."""

    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.parquet"

        def run() -> Output:
            dataset = pads.dataset(parquet_paths(source), format="parquet")
            with pq.ParquetWriter(target, dataset.schema, compression="snappy") as writer:
                for batch in dsexport_batches(dataset):
                    writer.write_batch(batch)
            return Output([target])

        return run

    return prepare


def polars_sink(source: Path) -> Callable[[Path], Callable[[], Output]]:
    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.json"

        def run() -> Output:
            pl.scan_parquet(str(source / "*.parquet")).sink_ndjson(target)
            return Output([target])

        return run

    return prepare


def polars_batches(source: Path) -> Callable[[Path], Callable[[], Output]]:
    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.json"

        def run() -> Output:
            scanner = pads.dataset(str(source), format="parquet").scanner(batch_size=BATCH_SIZE, use_threads=True)
            with target.open("wb") as f:
                for batch in scanner.to_batches():
                    pl.from_arrow(batch).write_ndjson(f)  # type: ignore[union-attr]
            return Output([target])

        return run

    return prepare


def duckdb_copy(source: Path) -> Callable[[Path], Callable[[], Output]]:
    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.json"

        def run() -> Output:
            con = duckdb.connect()
            try:
                con.execute(f"COPY (SELECT * FROM read_parquet('{source}/*.parquet')) TO '{target}' (FORMAT json)")
            finally:
                con.close()
            return Output([target])

        return run

    return prepare


def dsexport_encoder_only(source: Path) -> Callable[[Path], Callable[[], Output]]:
    """Diagnostic: dsexport's scan and NDJSON encoder (in the slices writers.py hands it, if it slices) into one
    plain file; no transport (temp file, hashing, fsync, rename), no parts, no manifest."""
    slice_rows: int = getattr(writers, "JSON_SLICE_ROWS", 0) or BATCH_SIZE

    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.json"

        def run() -> Output:
            dataset = pads.dataset(parquet_paths(source), format="parquet")
            with target.open("wb") as f:
                writer = jsonenc.NdjsonWriter(f)
                for batch in dsexport_batches(dataset):
                    for offset in range(0, batch.num_rows, slice_rows):
                        writer.write(batch.slice(offset, slice_rows))
                writer.close()
            return Output([target])

        return run

    return prepare


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    contestant: Contestant
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    out_bytes: int = 0
    out_files: int = 0
    rows: int = 0

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def cores(self) -> float:
        """Average cores busy (process CPU time / wall time), median over repetitions."""
        return statistics.median(c / w for c, w in zip(self.cpus, self.walls, strict=True))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    lines = 0
    with path.open("rb") as f:
        while chunk := f.read(16 * MIB):
            lines += chunk.count(b"\n")
    return lines


def interleaved(
    contestants: Sequence[Contestant], *, reps: int, work: Path, expect_rows: int, log: Callable[[str], None]
) -> dict[str, Timing]:
    """Run every contestant ``reps`` times, interleaved; the starting contestant rotates each repetition."""
    timings = {c.key: Timing(c) for c in contestants}
    for rep in range(reps):
        order = list(contestants[rep % len(contestants) :]) + list(contestants[: rep % len(contestants)])
        for c in order:
            out = work / f"{c.key}-{rep}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            run = c.prepare(out)
            gc.collect()
            os.sync()
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            output = run()
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            t = timings[c.key]
            t.walls.append(wall)
            t.cpus.append(cpu)
            t.out_files = len(output.files)
            t.out_bytes = sum(p.stat().st_size for p in output.files)
            if rep == 0:  # correctness check once per contestant, outside the timing
                t.rows = output.rows if output.rows is not None else sum(count_rows(p) for p in output.files)
                if t.rows != expect_rows:
                    raise RuntimeError(f"{c.label}: wrote {t.rows:,} rows, expected {expect_rows:,}")
            log(f"  rep {rep + 1}/{reps}  {c.label:<48} {wall:7.2f} s  (cpu {cpu:6.2f} s)")
            shutil.rmtree(out, ignore_errors=True)
    os.sync()
    return timings


def fastest(timings: dict[str, Timing], role: Role) -> Timing:
    return min((t for t in timings.values() if t.contestant.role == role), key=lambda t: t.best)


# --------------------------------------------------------------------------------------------- peak RSS

# A tiny launcher per measurement: ru_maxrss of RUSAGE_CHILDREN after wait is the child's exact peak. The
# launcher is needed because a child spawned straight from this (large) process inherits this process's
# high-water mark: Linux keeps the pre-exec peak of a vfork()ed child in its ru_maxrss.
_LAUNCHER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True)
wall = time.perf_counter() - t
print(json.dumps({"rc": p.returncode, "wall": wall,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stdout": p.stdout.decode(errors="replace"), "stderr": p.stderr.decode(errors="replace")[-4000:]}))
"""


@dataclass(frozen=True)
class ChildRun:
    peak_mib: float
    wall: float
    stdout: str


def child_peak(argv: Sequence[str]) -> ChildRun:
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    if report["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {report['rc']}: {report['stderr']}")
    return ChildRun(report["maxrss_kib"] / 1024, report["wall"], report["stdout"])


def cli(flow: Path, at: str) -> list[str]:
    return [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), "--at", at, "-o", "json"]


@dataclass(frozen=True)
class RssResult:
    fmt: str
    rows: int
    peak_mib: float
    wall: float
    parts: int


def rss_export(source: Path, rows: int, fmt: str, compression: str, work: Path, reps: int) -> RssResult:
    """Peak RSS of the CLI exporting ``source``; the highest of ``reps`` fresh children."""
    peaks: list[ChildRun] = []
    parts = 0
    for rep in range(reps):
        out = work / f"rss-{fmt}-{rows}-{rep}"
        shutil.rmtree(out, ignore_errors=True)
        flow = flow_yaml(out, source=source, dest=out / "dest", fmt=fmt, compression=compression)
        os.sync()
        run = child_peak(cli(flow, FIRST_AT))
        result = json.loads(run.stdout)["results"][0]
        if result["outcome"] != "exported" or result["records"] != rows:
            raise RuntimeError(f"RSS run: unexpected result {result}")
        parts = result["files"]
        peaks.append(run)
        shutil.rmtree(out, ignore_errors=True)
    worst = max(peaks, key=lambda r: r.peak_mib)
    return RssResult(fmt, rows, worst.peak_mib, worst.wall, parts)


# ------------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class Row:
    name: str
    dsexport: str
    baseline: str
    ratio: str
    target: str
    passed: bool | None  # None: for information only

    @property
    def verdict(self) -> str:
        return "info" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass
class Report:
    args: argparse.Namespace
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # markdown lines
    notes: list[str] = field(default_factory=list)  # markdown paragraphs about missed targets
    loads: list[str] = field(default_factory=list)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    code: tuple[str, str] = ("", "")  # code_fingerprint() at the start and at the end
    seconds: float = 0.0


HEADERS = ("benchmark", "dsexport", "baseline", "ratio", "target", "result")


def _cells(row: Row) -> tuple[str, ...]:
    return (row.name, row.dsexport, row.baseline, row.ratio, row.target, row.verdict)


def text_table(rows: Sequence[Row]) -> str:
    cells = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(HEADERS))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return lines


def timing_details(title: str, timings: dict[str, Timing]) -> list[str]:
    body = [
        [
            t.contestant.label,
            t.contestant.role,
            f"{t.best:.2f}",
            f"{t.median:.2f}",
            " ".join(f"{w:.2f}" for w in t.walls),
            f"{statistics.median(t.cpus):.2f}",
            f"{t.cores:.2f}",
            f"{t.out_bytes / MIB:,.0f} MiB in {t.out_files}",
            t.contestant.threads,
        ]
        for t in timings.values()
    ]
    header = ["contestant", "role", "best s", "median s", "all runs s", "CPU s", "cores", "output", "threads"]
    return [f"**{title}**", "", *md_table(header, body), ""]


def machine_facts() -> list[tuple[str, str]]:
    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return [
        ("nproc", f"{len(os.sched_getaffinity(0))} ({cpu_model})"),
        ("RAM", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("pyarrow", pa.__version__),
        ("polars", pl.__version__),
        ("duckdb", duckdb.__version__),
        ("numpy", np.__version__),
        (
            "threads",
            f"pyarrow cpu {pa.cpu_count()}, io {pa.io_thread_count()}; polars {pl.thread_pool_size()}; "
            f"duckdb {_duckdb_threads()}",
        ),
    ]


def _duckdb_threads() -> str:
    con = duckdb.connect()
    try:
        row = con.execute("SELECT current_setting('threads')").fetchone()
        return str(row[0]) if row else "?"
    finally:
        con.close()


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def code_fingerprint() -> str:
    """SHA-256 (first 12 hex digits) of the dsexport package's Python files: which code was measured."""
    digest = hashlib.sha256()
    root = Path(dsexport.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def command(args: Sequence[str]) -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(REPO)
    return " ".join([str(exe), "bench/run.py", *args])


MEANING = """\
**What the numbers mean.** *dsexport* and *baseline* are wall-clock seconds of the best of the interleaved
repetitions (the median and every run are under Details); *ratio* is dsexport / baseline, so 1.10 means
dsexport takes 10% longer than the hand-written program. dsexport's time is a whole in-process run: loading the
YAML, reading the destination's state, listing the source, writing part files through a temporary name while
hashing them (SHA-256), fsync and rename, then the manifest and `_SUCCESS`. The baselines do only the data work:
they neither hash nor fsync, and do not survive a crash, so the ratio is the price of exactly-once plus any
inefficiency. The NDJSON baselines also write slightly different JSON (timestamps as `+00:00`/`+00` offsets
instead of `Z`, maps as objects instead of `[{"key", "value"}]` arrays). Peak RSS is the maximum resident set
of the `dsexport run` CLI process, interpreter and libraries included; "flat" means the 5N run needs at most
25% more than the N run, i.e. memory does not grow with the data. The no-op is a whole second run of an
incremental export over 10,000 already-exported files: it reads the latest manifest, lists the source and
finds nothing new. Rows marked *diagnostic* under Details are not targets: they isolate where the time goes."""

METHOD = """\
**Method.** Source data is `examples.sample.write_files` (nested experience events: structs, lists of
structs, a map, timestamps), 100,000-row files with 65,536-row row groups, on the local disk and warm in the
page cache. All contestants of one comparison run in one process, interleaved, the first of each repetition
rotating; each writes into a fresh folder, `os.sync()` runs (untimed) before each run so nobody pays for
another's dirty pages, and outputs are deleted after each run. Baselines read with the same batch size as
dsexport (65,536 rows). Every contestant's row count is checked once. *cores* is process CPU time / wall time.
Peak RSS: each measurement is a fresh `python -m dsexport.cli run ... -o json` child, started by a tiny
launcher that reads `getrusage(RUSAGE_CHILDREN).ru_maxrss` after waiting for it (spawning the CLI straight
from the benchmark process would report the benchmark's own size: Linux carries a vfork()ed child's pre-exec
high-water mark into its ru_maxrss). The machine is shared with other work; the load average is recorded per
section, and best-of-N is used because interference only ever adds time."""


def render_docs(report: Report, argv: Sequence[str]) -> str:
    rows_md = md_table(HEADERS, [_cells(r) for r in report.rows])
    machine = md_table(["fact", "value"], machine_facts())
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run.py` on {report.started:%Y-%m-%d %H:%M} UTC in {report.seconds / 60:.1f} min; "
        "re-run the command below to refresh this page rather than editing it.",
        "",
        *(
            ["**--quick run: small sizes, a smoke test; the numbers are not representative.**", ""]
            if report.args.quick
            else []
        ),
        "## Results",
        "",
        *rows_md,
        "",
        MEANING,
        "",
    ]
    if report.notes:
        parts += ["## Missed targets and caveats", "", *[n + "\n" for n in report.notes]]
    parts += ["## Details", "", *report.details, METHOD, ""]
    parts += ["Load average at the start of each section: " + "; ".join(report.loads) + ".", ""]
    start_code, end_code = report.code
    changed = "" if start_code == end_code else f" (**changed during the run**: {end_code} at the end)"
    parts += [
        f"Code measured: the `dsexport` package's Python files with SHA-256 prefix `{start_code}`{changed}.",
        "",
    ]
    parts += ["## Machine", "", *machine, ""]
    parts += ["## Command", "", "```sh", command(argv), "```", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- sections


def _threads_dsexport(fmt: str) -> str:
    writer = "ParquetWriter encodes on the calling thread" if fmt == "parquet" else "polars pool serializes"
    behind = "; hash + write on a write-behind thread" if importlib.util.find_spec("dsexport.engine.sink") else ""
    return f"scan: pyarrow pool ({pa.cpu_count()}), {_read_settings()}; {writer}{behind}"


def bench_parquet(source: Path, rows: int, work: Path, report: Report, log: Callable[[str], None]) -> None:
    report.loads.append(f"Parquet {_load()}")
    export = dsexport_export(source, "parquet", "snappy")
    contestants = [
        Contestant("dsexport", "dsexport Parquet export", "dsexport", _threads_dsexport("parquet"), export),
        Contestant(
            "pyarrow",
            "pyarrow scanner -> ParquetWriter",
            "baseline",
            f"scan: pyarrow pool ({pa.cpu_count()}), default readahead; write on the calling thread",
            pyarrow_parquet(source),
        ),
    ]
    if report.args.diagnostics:
        contestants += [
            Contestant(
                "dsexport-scan",
                "dsexport's scan -> ParquetWriter into a plain file",
                "diagnostic",
                "dsexport's read path (Source.batches and read-ahead), the baseline's writer",
                dsexport_scan_parquet(source),
            ),
            Contestant(
                "dsexport-nofsync", "dsexport Parquet export, fsync disabled", "diagnostic", "", without_fsync(export)
            ),
        ]
    log(f"Parquet export of {rows:,} rows")
    timings = interleaved(contestants, reps=report.args.reps, work=work, expect_rows=rows, log=log)
    ds, base = timings["dsexport"], fastest(timings, "baseline")
    ratio = ds.best / base.best
    report.rows.append(
        Row(
            f"Parquet export, {rows:,} rows (s)",
            f"{ds.best:.2f}",
            f"{base.best:.2f} ({base.contestant.key})",
            f"{ratio:.2f} (median {ds.median / base.median:.2f})",
            f"<= {PARQUET_MAX_RATIO:.2f}",
            ratio <= PARQUET_MAX_RATIO,
        )
    )
    report.details += timing_details(f"Parquet export, {rows:,} rows, snappy", timings)
    where = _parquet_breakdown(timings)
    if where:
        report.details += [where, ""]
    if ratio > PARQUET_MAX_RATIO:
        report.notes.append(
            f"**Parquet export ({ratio:.2f}x, target {PARQUET_MAX_RATIO:.2f}).** dsexport {ds.best:.2f} s against "
            f"{base.best:.2f} s for {base.contestant.label}. {where}"
        )


def _cpu(t: Timing) -> float:
    return statistics.median(t.cpus)


ROUGH = (
    "(wall: differences of best times; CPU: of medians; on a shared 2-core machine these are rough, "
    "a few tenths of a second either way)"
)


def _parquet_breakdown(timings: dict[str, Timing]) -> str:
    if "dsexport-scan" not in timings:
        return ""
    ds, nofsync, scan, base = (timings[k] for k in ("dsexport", "dsexport-nofsync", "dsexport-scan", "pyarrow"))
    return (
        f"*Where dsexport's Parquet time goes* {ROUGH}: waiting for fsync {ds.best - nofsync.best:+.2f} s "
        f"(dsexport {ds.best:.2f} s, fsync disabled {nofsync.best:.2f} s); the transport and part writer "
        f"(temporary file, write-behind SHA-256, rename, manifest) {nofsync.best - scan.best:+.2f} s wall, "
        f"{_cpu(nofsync) - _cpu(scan):+.2f} s CPU (dsexport's scan into a plain ParquetWriter {scan.best:.2f} s); "
        f"dsexport's scan strategy against the baseline's whole-dataset scanner {scan.best - base.best:+.2f} s "
        f"wall, {_cpu(scan) - _cpu(base):+.2f} s CPU (baseline {base.best:.2f} s){_overlap(scan, base)}."
    )


def _overlap(slow: Timing, fast: Timing) -> str:
    """A remark when ``slow`` takes more wall time for no more CPU: work that ran in parallel no longer does."""
    if slow.best - fast.best > 0.2 and _cpu(slow) <= _cpu(fast):
        return (
            "; more wall time for no more CPU means lost overlap: decoding no longer runs ahead while the writer works"
        )
    return ""


def bench_ndjson(source: Path, rows: int, work: Path, report: Report, log: Callable[[str], None]) -> None:
    report.loads.append(f"NDJSON {_load()}")
    export = dsexport_export(source, "json", "none")
    contestants = [
        Contestant("dsexport", "dsexport NDJSON export", "dsexport", _threads_dsexport("json"), export),
        Contestant(
            "polars-sink",
            "polars scan_parquet().sink_ndjson()",
            "baseline",
            f"polars streaming engine, pool of {pl.thread_pool_size()}",
            polars_sink(source),
        ),
        Contestant(
            "polars-batches",
            "pyarrow batches -> polars write_ndjson",
            "baseline",
            f"scan: pyarrow pool ({pa.cpu_count()}); serialize: polars pool ({pl.thread_pool_size()})",
            polars_batches(source),
        ),
        Contestant(
            "duckdb",
            "DuckDB COPY ... (FORMAT json)",
            "baseline",
            f"duckdb threads={_duckdb_threads()} (default: all cores)",
            duckdb_copy(source),
        ),
    ]
    if report.args.diagnostics:
        contestants += [
            Contestant(
                "dsexport-nofsync", "dsexport NDJSON export, fsync disabled", "diagnostic", "", without_fsync(export)
            ),
            Contestant(
                "encoder-only",
                "dsexport scan + NdjsonWriter into a plain file",
                "diagnostic",
                "as dsexport, without the transport",
                dsexport_encoder_only(source),
            ),
        ]
    log(f"NDJSON export of {rows:,} rows")
    timings = interleaved(contestants, reps=report.args.reps, work=work, expect_rows=rows, log=log)
    ds, base = timings["dsexport"], fastest(timings, "baseline")
    ratio = ds.best / base.best
    report.rows.append(
        Row(
            f"NDJSON export, {rows:,} rows (s)",
            f"{ds.best:.2f}",
            f"{base.best:.2f} ({base.contestant.key})",
            f"{ratio:.2f} (median {ds.median / base.median:.2f})",
            f"<= {NDJSON_MAX_RATIO:.2f}",
            ratio <= NDJSON_MAX_RATIO,
        )
    )
    report.details += timing_details(f"NDJSON export, {rows:,} rows, no compression", timings)
    sha = sha256_seconds(ds.out_bytes)
    report.details += [
        f"SHA-256 of dsexport's {ds.out_bytes / MIB:,.0f} MiB NDJSON output alone takes {sha:.2f} s on one core "
        f"here (measured on an in-memory buffer); dsexport wrote {ds.out_files} part file(s).",
        "",
    ]
    where = _ndjson_breakdown(timings, sha)
    if where:
        report.details += [where, ""]
    if ratio > NDJSON_MAX_RATIO:
        report.notes.append(
            f"**NDJSON export ({ratio:.2f}x, target {NDJSON_MAX_RATIO:.2f}).** dsexport {ds.best:.2f} s against "
            f"{base.best:.2f} s for {base.contestant.label} (median CPU {_cpu(ds):.2f} s against "
            f"{_cpu(base):.2f} s). {where}"
        )


def sha256_seconds(nbytes: int) -> float:
    """Seconds hashlib.sha256 needs for ``nbytes``, from its speed on a 256 MiB buffer."""
    buffer = np.random.default_rng(0).integers(0, 256, 256 * MIB, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    hashlib.sha256(buffer).digest()
    return (time.perf_counter() - t0) * nbytes / len(buffer)


def _ndjson_breakdown(timings: dict[str, Timing], sha: float) -> str:
    if "encoder-only" not in timings:
        return ""
    ds, nofsync, enc, batches, sink = (
        timings[k] for k in ("dsexport", "dsexport-nofsync", "encoder-only", "polars-batches", "polars-sink")
    )
    return (
        f"*Where dsexport's NDJSON time goes* {ROUGH}: waiting for fsync {ds.best - nofsync.best:+.2f} s "
        f"(dsexport {ds.best:.2f} s, fsync disabled {nofsync.best:.2f} s); the transport and part rolling "
        f"(temporary file, write-behind SHA-256 of about {sha:.2f} s CPU, rename, manifest) "
        f"{nofsync.best - enc.best:+.2f} s wall, {_cpu(nofsync) - _cpu(enc):+.2f} s CPU (dsexport's scan and "
        f"encoder into a plain file {enc.best:.2f} s); dsexport's scan, jsonenc conversions and slicing against "
        f"the same pyarrow -> polars pipeline without them {enc.best - batches.best:+.2f} s wall, "
        f"{_cpu(enc) - _cpu(batches):+.2f} s CPU ({batches.contestant.label} {batches.best:.2f} s"
        f"{_overlap(enc, batches)}); and that "
        f"pipeline against polars' own streaming reader and writer {batches.best - sink.best:+.2f} s "
        f"({sink.contestant.label} {sink.best:.2f} s)."
    )


@dataclass(frozen=True)
class ArrowPeak:
    peak_mib: float
    batch_mib: float
    batch_rows: int


def arrow_peak(source: Path, work: Path) -> ArrowPeak:
    """Diagnostic: the most Arrow memory held at once during an in-process Parquet export, sampled every 20 ms,
    and the size of one decoded batch, to tell buffered batches from everything else."""
    first = next(sources.Source.batches(pads.dataset(parquet_paths(source)[:1], format="parquet")))
    batch_mib, batch_rows = first.nbytes / MIB, first.num_rows
    del first
    out = work / "arrow-peak"
    shutil.rmtree(out, ignore_errors=True)
    flow = flow_yaml(out, source=source, dest=out / "dest", fmt="parquet", compression="snappy")
    peak = 0
    done = threading.Event()

    def sample_pool() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, pa.total_allocated_bytes())

    sampler = threading.Thread(target=sample_pool)
    sampler.start()
    try:
        run_dsexport(flow, FIRST_AT)
    finally:
        done.set()
        sampler.join()
    shutil.rmtree(out, ignore_errors=True)
    return ArrowPeak(peak / MIB, batch_mib, batch_rows)


def bench_rss(
    small: Path,
    big: Path,
    wide: Path,
    rows: int,
    factor: int,
    work: Path,
    report: Report,
    log: Callable[[str], None],
) -> None:
    """Peak RSS at N and factor*N rows (the targets), then N rows in two large files (information: whether the
    bound depends on how the source is cut into files)."""
    report.loads.append(f"RSS {_load()}")
    floor = child_peak([sys.executable, "-c", "import dsexport.cli"]).peak_mib
    held = arrow_peak(small, work) if report.args.diagnostics else None
    held_text = (
        f" During an in-process {rows:,}-row Parquet export the Arrow memory pool peaked at "
        f"{held.peak_mib:,.0f} MiB, about {held.peak_mib / held.batch_mib:.0f} decoded batches of "
        f"{held.batch_mib:.1f} MiB ({held.batch_rows:,} rows) held at once (dsexport's settings: "
        f"{_read_settings()})."
        if held is not None
        else ""
    )
    body: list[list[str]] = []
    missed: list[str] = []
    for fmt, compression, label in (("parquet", "snappy", "Parquet"), ("json", "none", "NDJSON")):
        results = []
        for source, n in ((small, rows), (big, rows * factor)):
            log(f"Peak RSS, {label} export of {n:,} rows (CLI child)")
            r = rss_export(source, n, fmt, compression, work, report.args.rss_reps)
            log(f"  {r.peak_mib:7.1f} MiB  ({r.wall:.1f} s, {r.parts} part file(s))")
            results.append(r)
            body.append([f"{label}, {n:,} rows", f"{r.peak_mib:.1f}", f"{r.wall:.1f}", str(r.parts)])
        n_run, big_run = results
        growth = big_run.peak_mib / n_run.peak_mib
        report.rows.append(
            Row(
                f"Peak RSS, {label} (MiB): N={rows:,} / {factor}N",
                f"{n_run.peak_mib:.0f} / {big_run.peak_mib:.0f}",
                "-",
                f"{growth:.2f} ({factor}N/N)",
                f"<= {RSS_MAX_MIB:.0f} MiB, <= {RSS_MAX_GROWTH:.2f}",
                max(n_run.peak_mib, big_run.peak_mib) <= RSS_MAX_MIB and growth <= RSS_MAX_GROWTH,
            )
        )
        if max(n_run.peak_mib, big_run.peak_mib) > RSS_MAX_MIB or growth > RSS_MAX_GROWTH:
            missed.append(
                f"{label} {n_run.peak_mib:.0f} MiB at {rows:,} rows and {big_run.peak_mib:.0f} MiB at "
                f"{rows * factor:,} rows ({growth:.2f}x)"
            )
    wide_peaks: list[float] = []
    wide_files = len(parquet_paths(wide))
    for fmt, compression, label in (("parquet", "snappy", "Parquet"), ("json", "none", "NDJSON")):
        log(f"Peak RSS, {label} export of {rows:,} rows in {wide_files} files (CLI child)")
        r = rss_export(wide, rows, fmt, compression, work, report.args.rss_reps)
        log(f"  {r.peak_mib:7.1f} MiB  ({r.wall:.1f} s, {r.parts} part file(s))")
        wide_peaks.append(r.peak_mib)
        body.append(
            [f"{label}, {rows:,} rows in {wide_files} files", f"{r.peak_mib:.1f}", f"{r.wall:.1f}", str(r.parts)]
        )
    report.rows.append(
        Row(
            f"Peak RSS, N rows in {wide_files} files (MiB): Parquet / NDJSON",
            " / ".join(f"{p:.0f}" for p in wide_peaks),
            "-",
            "-",
            "info",
            None,
        )
    )
    if max(wide_peaks) > RSS_MAX_MIB:
        report.notes.append(
            f"**Peak RSS with large source files** (information, not a target of the issue): the same {rows:,} rows "
            f"cut into {wide_files} files of {rows // wide_files:,} rows need "
            + " / ".join(f"{p:.0f}" for p in wide_peaks)
            + " MiB (Parquet / NDJSON) instead of "
            + f"{body[0][1]} / {body[2][1]} MiB with {rows // len(parquet_paths(small)):,}-row files"
            + (
                ": the peak follows the size of one decoded source file, so the "
                f"{RSS_MAX_MIB:.0f} MiB bound does not hold for lakes with large files."
                if max(wide_peaks) > RSS_MAX_GROWTH * max(float(body[0][1]), float(body[2][1]))
                else "; the peak hardly depends on file size, but it is near or above the target."
            )
        )
    if missed:
        report.notes.append(
            f"**Peak RSS** (target {RSS_MAX_MIB:.0f} MiB and at most {RSS_MAX_GROWTH:.2f}x from N to {factor}N): "
            + "; ".join(missed)
            + f". Importing the CLI alone takes {floor:.0f} MiB."
            + held_text
        )
    report.details += [
        "**Peak RSS of `dsexport run` (CLI child process)**",
        "",
        *md_table(["export", "peak RSS MiB", "wall s (incl. start-up)", "part files"], body),
        "",
        f"Importing `dsexport.cli` alone (python + pyarrow + polars + pydantic + rich) peaks at {floor:.0f} MiB; "
        "that is the floor of every number above." + held_text,
        "",
    ]


def bench_noop(source: Path, files: int, work: Path, report: Report, log: Callable[[str], None]) -> None:
    report.loads.append(f"no-op {_load()}")
    out = work / "noop"
    shutil.rmtree(out, ignore_errors=True)
    flow = flow_yaml(out, source=source, dest=out / "dest", fmt="parquet", compression="snappy")
    log(f"Incremental no-op: backfill of {files:,} small files first (not timed)")
    t0 = time.perf_counter()
    backfill = run_dsexport(flow, FIRST_AT)
    backfill_s = time.perf_counter() - t0
    manifest = next((out / "dest").rglob("_manifest.json"))
    part_meta = [pq.ParquetFile(p).metadata for p in sorted((out / "dest").rglob("part-*.parquet"))]
    row_groups = sum(m.num_row_groups for m in part_meta)
    part_bytes = sum(p.stat().st_size for p in (out / "dest").rglob("part-*.parquet"))
    in_process: list[float] = []
    for _ in range(report.args.reps):
        t0 = time.perf_counter()
        run_dsexport(flow, LATER_AT, expect=Outcome.no_new_data)
        in_process.append(time.perf_counter() - t0)
    via_cli: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        done = subprocess.run(cli(flow, LATER_AT), capture_output=True, text=True, check=True)
        via_cli.append(time.perf_counter() - t0)
        if json.loads(done.stdout)["results"][0]["outcome"] != Outcome.no_new_data.value:
            raise RuntimeError(f"CLI no-op run exported something: {done.stdout}")
    imports: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dsexport.cli"], check=True)
        imports.append(time.perf_counter() - t0)
    best, cli_best = min(in_process), min(via_cli)
    log(f"  in-process {best:.3f} s, CLI {cli_best:.2f} s (import alone {min(imports):.2f} s)")
    report.rows.append(
        Row(
            f"Incremental no-op, {files:,} files, in-process (s)",
            f"{best:.3f}",
            "-",
            "-",
            f"< {NOOP_MAX_SECONDS:.0f} s",
            best < NOOP_MAX_SECONDS,
        )
    )
    report.rows.append(
        Row(
            f"Incremental no-op, {files:,} files, CLI subprocess (s)",
            f"{cli_best:.2f}",
            f"{min(imports):.2f} (import only)",
            f"{cli_best / min(imports):.2f}",
            "info",
            None,
        )
    )
    report.details += [
        f"**Incremental no-op over {files:,} files** (modified one minute apart; lookback 15m)",
        "",
        *md_table(
            ["run", "best s", "median s", "all runs s"],
            [
                [name, f"{min(v):.3f}", f"{statistics.median(v):.3f}", " ".join(f"{x:.3f}" for x in v)]
                for name, v in (
                    ("in-process (load YAML, plan, run)", in_process),
                    ("`dsexport run` CLI subprocess", via_cli),
                    ("`python -c 'import dsexport.cli'`", imports),
                )
            ],
        ),
        "",
        f"The backfill that precedes it (not timed against the target) exported {backfill.records:,} rows from "
        f"{files:,} files in {backfill_s:.1f} s into {len(part_meta)} part file(s) of {part_bytes / MIB:,.1f} MiB "
        f"with {row_groups:,} row groups (one per source batch); its manifest is "
        f"{manifest.stat().st_size / 1024:,.0f} KiB.",
        "",
    ]
    if best >= NOOP_MAX_SECONDS:
        report.notes.append(f"**Incremental no-op.** {best:.2f} s in-process for {files:,} files.")
    shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, help="rows N for the timings and the RSS base (default 2,000,000)")
    p.add_argument("--rows-per-file", type=int, help="rows per generated source file (default 100,000)")
    p.add_argument("--reps", type=int, help="repetitions of each timing (default 5; at least 3)")
    p.add_argument("--rss-factor", type=int, default=5, help="the larger RSS run has this many times N rows")
    p.add_argument("--rss-reps", type=int, default=1, help="fresh child processes per RSS measurement")
    p.add_argument("--noop-files", type=int, help="small source files for the no-op run (default 10,000)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not representative")
    p.add_argument("--only", action="append", choices=["parquet", "ndjson", "rss", "noop"], help="repeatable")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false", help="skip diagnostic runs")
    p.add_argument("--data-dir", type=Path, help="keep generated sources here and reuse them (e.g. bench/.data)")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite {DOCS.relative_to(REPO)}")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    defaults = (
        {"rows": 200_000, "rows_per_file": 20_000, "reps": 3, "noop_files": 500}
        if args.quick
        else {"rows": 2_000_000, "rows_per_file": 100_000, "reps": 5, "noop_files": 10_000}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.reps < 3:
        p.error("--reps must be at least 3")
    if args.rows % args.rows_per_file:
        p.error("--rows must be a multiple of --rows-per-file")
    return args


@contextlib.contextmanager
def data_folder(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="dsexport-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    report = Report(args)
    start_code = code_fingerprint()
    wanted = set(args.only or ["parquet", "ndjson", "rss", "noop"])
    t_start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {message}", flush=True)

    with data_folder(args.data_dir) as data:
        work = data / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        log(f"data in {data}; machine: " + ", ".join(f"{k} {v}" for k, v in machine_facts()[:2]))
        log(f"generating {args.rows:,} events ({args.rows // args.rows_per_file} files)")
        small = events_source(data, args.rows, args.rows_per_file)
        warm(small)
        if "parquet" in wanted:
            bench_parquet(small, args.rows, work, report, log)
        if "ndjson" in wanted:
            bench_ndjson(small, args.rows, work, report, log)
        if "rss" in wanted:
            big_rows = args.rows * args.rss_factor
            log(f"generating {big_rows:,} events for the RSS run")
            big = events_source(data, big_rows, args.rows_per_file, base=small)
            log(f"generating {args.rows:,} events in 2 files")
            wide = events_source(data, args.rows, args.rows // 2)
            bench_rss(small, big, wide, args.rows, args.rss_factor, work, report, log)
        if "noop" in wanted:
            log(f"generating {args.noop_files:,} small files")
            noop_source = small_files_source(data, args.noop_files)
            bench_noop(noop_source, args.noop_files, work, report, log)
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - t_start
    report.code = (start_code, code_fingerprint())
    if report.code[0] != report.code[1]:
        print("warning: the dsexport sources changed during the run; the numbers mix two versions")

    print()
    if args.quick:
        print("--quick: small sizes, a smoke test; the numbers are not representative.\n")
    print(text_table(report.rows))
    for note in report.notes:
        print("\n" + note.replace("**", ""))
    print(f"\n{report.seconds / 60:.1f} min; load average now {_load()}")
    if args.write_docs:
        text = render_docs(report, argv)
        # bench/upload.py owns the section between these markers: carry it over rather than erase it.
        old = DOCS.read_text() if DOCS.exists() else ""
        begin, end = old.find("<!-- upload:begin -->"), old.find("<!-- upload:end -->")
        if 0 <= begin < end:
            text = text.rstrip("\n") + "\n\n" + old[begin : end + len("<!-- upload:end -->")] + "\n"
        DOCS.write_text(text)
        print(f"wrote {DOCS.relative_to(REPO)}")
    missed = any(r.passed is False for r in report.rows)
    return 1 if (missed and args.fail_on_miss) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
