"""docs/benchmarks.md, and the tables and facts that go into it: the only code that reads or writes that page.

The page has one section per benchmark, each written by it and left as it is by the others: ``run`` (bench.run:
from the title to its command) and, after it, ``upload`` (bench.upload), ``fastpath`` (bench.fastpath),
``servercopy`` (bench.servercopy), ``listing`` (bench.listing) and ``operator`` (bench.operator), each kept
between markers such as ``<!-- upload:begin -->`` and ``<!-- upload:end -->``. Each benchmark renders its
markdown and calls ``write_section``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import polars as pl
import psutil
import pyarrow as pa

import dsexport
from bench.data import MIB

if TYPE_CHECKING:  # bench.upload writes here too, without importing what bench.run measures with
    from bench.measure import Timing

REPO = Path(__file__).resolve().parent.parent
DOCS_NAME = "docs/benchmarks.md"
DOCS = REPO / DOCS_NAME
SECTIONS = ("run", "upload", "fastpath", "servercopy", "listing", "memory", "operator-history", "operator")
"""In page order; all but the first between markers. ``operator-history`` is written by hand (repeated runs of
bench.operator across changes); no benchmark rewrites it."""
TITLE = "# Benchmarks"

# ------------------------------------------------------------------------------------------------ the page


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _read_sections() -> dict[str, str]:
    """docs/benchmarks.md's sections by name, each without its markers or surrounding blank lines."""
    text = DOCS.read_text() if DOCS.exists() else ""
    sections: dict[str, str] = {}
    for name in SECTIONS[1:]:
        begin, end = _markers(name)
        start, stop = text.find(begin), text.find(end)
        if 0 <= start < stop:
            sections[name] = text[start + len(begin) : stop].strip("\n")
            text = text[:start] + text[stop + len(end) :]
    sections[SECTIONS[0]] = text.strip("\n")
    return sections


def write_section(name: str, markdown: str) -> str:
    """Replace section ``name`` of docs/benchmarks.md with ``markdown``, keeping the other sections as they
    are; a page without a ``run`` section starts with just its title. Returns the page's repository path."""
    if name not in SECTIONS:
        raise ValueError(f"no section {name!r} in {DOCS_NAME}; there are {', '.join(SECTIONS)}")
    sections = _read_sections()
    sections[name] = markdown.strip("\n")
    parts = [sections[SECTIONS[0]] or TITLE]
    for other in SECTIONS[1:]:
        if other in sections:
            begin, end = _markers(other)
            parts.append(f"{begin}\n{sections[other]}\n{end}")
    DOCS.write_text("\n\n".join(parts) + "\n")
    return DOCS_NAME


def command(module: str, args: Sequence[str]) -> str:
    """The command line that ran ``module`` with ``args``, for the page: how to refresh it."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(REPO)
    return " ".join([str(exe), "-m", module, *args])


# ----------------------------------------------------------------------------------- the bench.run section


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
            f"{t.cpu:.2f}",
            f"{t.cores:.2f}",
            f"{t.out_bytes / MIB:,.0f} MiB in {t.out_files}",
            t.contestant.threads,
        ]
        for t in timings.values()
    ]
    header = ["contestant", "role", "best s", "median s", "all runs s", "CPU s", "cores", "output", "threads"]
    return [f"**{title}**", "", *md_table(header, body), ""]


ROUGH = (
    "(wall: differences of best times; CPU: of medians; on a shared 2-core machine these are rough, "
    "a few tenths of a second either way)"
)


def parquet_breakdown(timings: dict[str, Timing]) -> str:
    """Where dsexport's Parquet time goes, from the diagnostics; empty without them."""
    if "dsexport-scan" not in timings:
        return ""
    ds, one, nofsync, scan, base = (
        timings[k] for k in ("dsexport", "dsexport-one", "dsexport-nofsync", "dsexport-scan", "pyarrow")
    )
    return (
        f"*Where dsexport's Parquet time goes* {ROUGH}: waiting for fsync {ds.best - nofsync.best:+.2f} s "
        f"(dsexport {ds.best:.2f} s, fsync disabled {nofsync.best:.2f} s); encoding on one thread instead of "
        f"several {one.best - ds.best:+.2f} s wall, {one.cpu - ds.cpu:+.2f} s CPU (dsexport on one thread "
        f"{one.best:.2f} s); on one thread, the part writer (column ranges encoded apart and joined, temporary "
        f"file, write-behind SHA-256, rename, manifest) against one plain ParquetWriter of dsexport's scan "
        f"{one.best - scan.best:+.2f} s wall, {one.cpu - scan.cpu:+.2f} s CPU ({scan.best:.2f} s); dsexport's scan "
        f"against the baseline's whole-dataset scanner {scan.best - base.best:+.2f} s wall, "
        f"{scan.cpu - base.cpu:+.2f} s CPU ({base.contestant.label} {base.best:.2f} s){_overlap(scan, base)}."
    )


def ndjson_breakdown(timings: dict[str, Timing], sha: float) -> str:
    """Where dsexport's NDJSON time goes, from the diagnostics; empty without them."""
    if "encoder-only" not in timings:
        return ""
    ds, one, nofsync, enc, batches, sink = (
        timings[k]
        for k in ("dsexport", "dsexport-one", "dsexport-nofsync", "encoder-only", "polars-batches", "polars-sink")
    )
    return (
        f"*Where dsexport's NDJSON time goes* {ROUGH}: waiting for fsync {ds.best - nofsync.best:+.2f} s "
        f"(dsexport {ds.best:.2f} s, fsync disabled {nofsync.best:.2f} s); encoding on one thread instead of "
        f"several {one.best - ds.best:+.2f} s wall, {one.cpu - ds.cpu:+.2f} s CPU (dsexport on one thread "
        f"{one.best:.2f} s); on one thread, the transport and part rolling (temporary file, write-behind SHA-256 "
        f"of about {sha:.2f} s CPU, rename, manifest) {one.best - enc.best:+.2f} s wall, {one.cpu - enc.cpu:+.2f} s "
        f"CPU (dsexport's scan and encoder into a plain file {enc.best:.2f} s); dsexport's jsonenc conversions and "
        f"slicing against the same pyarrow -> polars pipeline without them {enc.best - batches.best:+.2f} s wall, "
        f"{enc.cpu - batches.cpu:+.2f} s CPU ({batches.contestant.label} {batches.best:.2f} s"
        f"{_overlap(enc, batches)}); and that pipeline against polars' own streaming reader and writer "
        f"{batches.best - sink.best:+.2f} s ({sink.contestant.label} {sink.best:.2f} s)."
    )


def _overlap(slow: Timing, fast: Timing) -> str:
    """A remark when ``slow`` takes more wall time for no more CPU: work that ran in parallel no longer does."""
    if slow.best - fast.best > 0.2 and slow.cpu <= fast.cpu:
        return (
            "; more wall time for no more CPU means lost overlap: decoding no longer runs ahead while the writer works"
        )
    return ""


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
            f"duckdb {duckdb_threads()}",
        ),
    ]


def duckdb_threads() -> str:
    con = duckdb.connect()
    try:
        row = con.execute("SELECT current_setting('threads')").fetchone()
        return str(row[0]) if row else "?"
    finally:
        con.close()


def code_fingerprint() -> str:
    """SHA-256 (first 12 hex digits) of the dsexport package's Python files: which code was measured."""
    digest = hashlib.sha256()
    root = Path(dsexport.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


MEANING = """\
**What the numbers mean.** *dsexport* and *baseline* are wall-clock seconds of the best of the interleaved
repetitions, with their median (every run is under Details); *ratio* is dsexport / baseline, so 1.10 means
dsexport takes 10% longer than the hand-written program; a speed target is met when the ratio of the bests and
the ratio of the medians both are within it. Parquet is measured against DuckDB's `COPY ... (FORMAT parquet)`,
NDJSON against polars' `sink_ndjson`; the other baselines are for comparison. dsexport's time is a whole
in-process run: loading the YAML, reading the destination's state, listing the source, writing part files
through a temporary name while
hashing them (SHA-256), fsync and rename, then the manifest and `_SUCCESS`. The baselines do only the data work:
they neither hash nor fsync, and do not survive a crash, so the ratio is the price of exactly-once plus any
inefficiency. The NDJSON baselines also write slightly different JSON (timestamps as `+00:00`/`+00` offsets
instead of `Z`, maps as objects instead of `[{"key", "value"}]` arrays). Peak RSS is the maximum resident set
of the `dsexport run` CLI process, interpreter and libraries included; "flat" means the 5N run needs at most
25% more than the N run, i.e. memory does not grow with the data. The no-op is a whole second run of an
incremental export over 10,000 already-exported files: it reads the latest manifest, lists the source and
finds nothing new. Rows marked *diagnostic* under Details are not targets: they isolate where the time goes."""

METHOD = """\
**Method.** Source data is `examples.sample.write_files` (nested experience events: structs, lists of structs,
a map, timestamps), 100,000-row files with 65,536-row row groups, on the local disk and warm in the page
cache. All contestants of one comparison run in one process, each once untimed first (the first run in a
process pays for lazy imports, thread pools and the allocator's first pages, which would otherwise land on
whichever contestant starts), then interleaved, the first of each repetition rotating; each writes into a
fresh folder, `os.sync()` runs (untimed) before each run so nobody pays for another's dirty pages, and outputs
are deleted after each run. Baselines read with the same batch size as dsexport (65,536 rows). Every
contestant's row count is checked once. *cores* is process CPU time / wall time. Peak RSS: each measurement is
a fresh `python -m dsexport.cli run ... -o json` child, started by a tiny launcher that reads
`getrusage(RUSAGE_CHILDREN).ru_maxrss` after waiting for it (spawning the CLI straight from the benchmark
process would report the benchmark's own size: Linux carries a vfork()ed child's pre-exec high-water mark into
its ru_maxrss). The machine is shared with other work; the load average is recorded per section, and best-of-N
is used because interference only ever adds time."""


def render_run(report: Report, argv: Sequence[str]) -> str:
    """The ``run`` section: the whole page but the upload section."""
    rows_md = md_table(HEADERS, [_cells(r) for r in report.rows])
    machine = md_table(["fact", "value"], machine_facts())
    parts = [
        TITLE,
        "",
        f"Generated by `python -m bench.run` on {report.started:%Y-%m-%d %H:%M} UTC in "
        f"{report.seconds / 60:.1f} min; re-run the command below to refresh this page rather than editing it.",
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
    parts += ["## Command", "", "```sh", command("bench.run", argv), "```", ""]
    return "\n".join(parts)
