"""The byte-copy fast path against dsexport's re-encoding path and against a plain file copy of the same bytes.

Run ``.venv/bin/python -m bench.fastpath`` from the repository root; ``--write-docs`` rewrites its section of
docs/benchmarks.md. The method is bench.run's: the same generated data (bench.data, 100,000-row files of sample
events, snappy: the destination's default codec, so every file qualifies), all contestants in this process,
interleaved with the first rotating, each into a fresh folder, the source warm in the page cache and ``os.sync()``
between runs (bench.measure.interleaved); peak RSS in a fresh CLI child (bench.measure.child_peak).

Contestants: dsexport with the fast path (a whole in-process run: YAML, state, listing, footers, copying with
SHA-256, fsync and rename per part, manifest); the same run with the fast path switched off
(``byteCopy: false``), i.e. the re-encoding path on the same data; and ``shutil.copyfile`` of every source file,
each fsynced, which is what moving these bytes costs at the least. Targets, from issue 12: the fast path at least
5x faster than re-encoding, within 1.2x of the plain copy, and under 200 MiB peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.baselines import FIRST_AT, Contestant, Output, Prepare, cli, cli_result, dsexport_export, flow_file
from bench.data import MIB, data_folder, events_source, parquet_paths, warm
from bench.measure import Timing, child_peak, interleaved, load_average, sha256_seconds
from bench.report import DOCS_NAME, Row, code_fingerprint, command, machine_facts, md_table, text_table, write_section
from dsexport.destinations.filesystem import FilesystemTransport

MIN_SPEEDUP = 5.0  # re-encoding / fast path
MAX_COPY_RATIO = 1.2  # fast path / plain copy
MAX_RSS_MIB = 200.0


# ------------------------------------------------------------------------------------------- contestants


def plain_copy(source: Path) -> Prepare:
    """``shutil.copyfile`` of every source file, each fsynced, then the folder: the bytes moved, made durable."""

    def prepare(out: Path) -> Callable[[], Output]:
        def run() -> Output:
            targets = []
            for path in parquet_paths(source):
                target = out / Path(path).name
                shutil.copyfile(path, target)
                _fsync(target)
                targets.append(target)
            _fsync(out)
            return Output(targets)

        return run

    return prepare


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def contestants(source: Path) -> list[Contestant]:
    export = dsexport_export(source, "parquet", "snappy", byte_copy=True)
    return [
        Contestant(
            "fastpath",
            "dsexport, byte-copy fast path",
            "dsexport",
            "per file a reader thread reads, a hash thread hashes, the caller writes; "
            f"{FilesystemTransport.parallel_writes} parts at once (filesystem transport)",
            export,
        ),
        Contestant(
            "reencode",
            "dsexport, re-encoding path (fast path off)",
            "baseline",
            "the Parquet export of bench.run",
            dsexport_export(source, "parquet", "snappy"),
        ),
        Contestant("copyfile", "shutil.copyfile + fsync per file", "baseline", "one thread", plain_copy(source)),
    ]


# ------------------------------------------------------------------------------------------- checks


def check_paths(source: Path, work: Path) -> str:
    """One untimed run of each dsexport contestant: the fast path must have copied every file (each part the
    source file's bytes), the re-encoding path copied none. Also warms both code paths."""
    expected = sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in parquet_paths(source))
    export, encode = (dsexport_export(source, "parquet", "snappy", byte_copy=on) for on in (True, False))
    for key, prepare, via in (("check-copy", export, "copy"), ("check-encode", encode, "encode")):
        out = work / key
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        prepare(out)()
        manifest = json.loads(next(out.rglob("_manifest.json")).read_text())
        vias = {f["via"] for f in manifest["files"]}
        if vias != {via}:
            raise RuntimeError(f"{key}: parts were made by {sorted(vias)}, expected {via} only")
        if via == "copy" and sorted(f["sha256"] for f in manifest["files"]) != expected:
            raise RuntimeError("the fast path's parts are not the source files' bytes")
        shutil.rmtree(out, ignore_errors=True)
    return f"{len(expected)} files, every part copied byte for byte (sha256 equal to the source file's)"


@dataclass(frozen=True)
class Rss:
    peaks_mib: list[float]
    floor_mib: float
    parts: int


def rss_fastpath(source: Path, rows: int, work: Path, reps: int) -> Rss:
    """Peak RSS of ``dsexport run`` taking the fast path, in fresh CLI children; the floor is importing the CLI."""
    peaks = []
    parts = 0
    for rep in range(reps):
        out = work / f"rss-{rep}"
        shutil.rmtree(out, ignore_errors=True)
        flow = flow_file(out, source=source, fmt="parquet", compression="snappy", byte_copy=True)
        os.sync()
        run = child_peak(cli(flow, FIRST_AT))
        result = cli_result(run.stdout)
        manifest = json.loads(next(out.rglob("_manifest.json")).read_text())
        if result.records != rows or {f["via"] for f in manifest["files"]} != {"copy"}:
            raise RuntimeError(f"RSS run did not copy every file: {result}")
        parts = result.files
        peaks.append(run.peak_mib)
        shutil.rmtree(out, ignore_errors=True)
    floor = child_peak([sys.executable, "-c", "import dsexport.cli"]).peak_mib
    return Rss(peaks, floor, parts)


# ------------------------------------------------------------------------------------------- report


@dataclass
class Results:
    args: argparse.Namespace
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # markdown paragraphs about missed targets
    loads: list[str] = field(default_factory=list)
    seconds: float = 0.0
    code: tuple[str, str] = ("", "")


def _ratio(slow: Timing, fast: Timing) -> tuple[float, float]:
    """slow / fast, of the medians and of the best runs."""
    return slow.median / fast.median, slow.best / fast.best


def add_timings(results: Results, timings: dict[str, Timing], source_mib: float) -> None:
    fast, encode, copy = timings["fastpath"], timings["reencode"], timings["copyfile"]
    speedup, speedup_best = _ratio(encode, fast)
    over_copy, over_copy_best = _ratio(fast, copy)
    rows = results.args.rows
    results.rows += [
        Row(
            f"Fast path vs re-encoding, {rows:,} rows (median s)",
            f"{fast.median:.3f}",
            f"{encode.median:.3f} (re-encoding)",
            f"{speedup:.1f}x faster (best {speedup_best:.1f}x)",
            f">= {MIN_SPEEDUP:.0f}x",
            speedup >= MIN_SPEEDUP,
        ),
        Row(
            f"Fast path vs copyfile + fsync, {source_mib:,.0f} MiB (median s)",
            f"{fast.median:.3f}",
            f"{copy.median:.3f} (copyfile)",
            f"{over_copy:.2f} (best {over_copy_best:.2f})",
            f"<= {MAX_COPY_RATIO:.1f}",
            over_copy <= MAX_COPY_RATIO,
        ),
    ]
    results.details += details(f"{rows:,} rows in {source_mib:,.0f} MiB of Parquet (snappy)", timings)
    sha = sha256_seconds(int(source_mib * MIB))
    cpu = (
        f"SHA-256 of the {source_mib:,.0f} MiB alone takes {sha:.3f} s on one core here (an in-memory buffer): "
        f"{sha / copy.median:.0%} of the plain copy's median time. The fast path needs {fast.cpu:.3f} s of CPU "
        f"where the plain copy needs {copy.cpu:.3f} s, so the ratio between them grows with the machine's load."
    )
    results.details += [cpu, ""]
    if over_copy > MAX_COPY_RATIO:
        results.notes.append(
            f"**Fast path vs plain copy ({over_copy:.2f}x of medians, best {over_copy_best:.2f}x; target "
            f"{MAX_COPY_RATIO:.1f}x).** {cpu} The copy is in-kernel and neither hashes, renames nor commits; the "
            "fast path hashes every byte (the manifest's sha256) on hash threads while the parts are written, "
            "several at a time, and adds a whole run's fixed work (YAML, the destination's state, the listing, every "
            "file's footer read twice: once by the dataset, once by the fast path's checks, the latter while the "
            "first files are copied; the manifest)."
        )


def details(title: str, timings: dict[str, Timing]) -> list[str]:
    """Every contestant's runs, in milliseconds' precision: the fast path and the copy take a tenth of a second."""
    body = [
        [
            t.contestant.label,
            f"{t.best:.3f}",
            f"{t.median:.3f}",
            " ".join(f"{w:.3f}" for w in t.walls),
            f"{t.cpu:.3f}",
            f"{t.cores:.2f}",
            f"{t.out_bytes / MIB:,.0f} MiB in {t.out_files}",
            t.contestant.threads,
        ]
        for t in timings.values()
    ]
    header = ["contestant", "best s", "median s", "all runs s (in order)", "CPU s", "cores", "output", "threads"]
    return [f"**{title}**", "", *md_table(header, body), ""]


def add_rss(results: Results, rss: Rss) -> None:
    peak = max(rss.peaks_mib)
    results.rows.append(
        Row(
            "Peak RSS of the fast path, CLI child (MiB)",
            f"{peak:.0f}",
            f"{rss.floor_mib:.0f} (import dsexport.cli)",
            "-",
            f"< {MAX_RSS_MIB:.0f} MiB",
            peak < MAX_RSS_MIB,
        )
    )
    results.details += [
        f"**Peak RSS**: `dsexport run` of the same data in a fresh child, {len(rss.peaks_mib)} run(s): "
        + ", ".join(f"{p:.1f}" for p in rss.peaks_mib)
        + f" MiB, {rss.parts} parts; importing `dsexport.cli` alone peaks at {rss.floor_mib:.1f} MiB.",
        "",
    ]


MEANING = """\
**What the numbers mean.** Seconds are wall-clock; the verdict uses medians of the interleaved repetitions, and
the ratio of the best runs is given too (interference on a shared machine only ever adds time). The fast path's
time is a whole in-process `dsexport run`: loading the YAML, reading the destination's state, listing the source,
reading every file's footer (codec, schema, row count), then per file a reader thread reading, a hash thread
hashing (SHA-256) while the part is written through a temporary name, fsynced and renamed (the folder fsynced too), then
the manifest and `_SUCCESS`. The re-encoding path is the same run with the fast path off: every row decoded and
encoded again. The plain copy moves the same bytes with `shutil.copyfile` (in-kernel) and fsyncs each file, but
neither hashes nor renames nor writes a manifest. Peak RSS is the resident high-water mark of the CLI process,
interpreter and libraries included."""


def render(results: Results, argv: Sequence[str]) -> str:
    start_code, end_code = results.code
    changed = "" if start_code == end_code else f" (**changed during the run**: {end_code} at the end)"
    return "\n".join(
        [
            "## Byte-copy fast path",
            "",
            f"Generated by `python -m bench.fastpath` on {results.started:%Y-%m-%d %H:%M} UTC in "
            f"{results.seconds / 60:.1f} min; re-run the command below to refresh this section rather than editing "
            "it.",
            "",
            *(["**--quick run: small sizes; the numbers are not representative.**", ""] if results.args.quick else []),
            "### Results",
            "",
            *md_table(
                ("benchmark", "fast path", "baseline", "ratio", "target", "result"),
                [(r.name, r.dsexport, r.baseline, r.ratio, r.target, r.verdict) for r in results.rows],
            ),
            "",
            MEANING,
            "",
            *(["### Missed targets and caveats", "", *[n + "\n" for n in results.notes]] if results.notes else []),
            "### Details",
            "",
            *results.details,
            "Load average at the start of each section: " + "; ".join(results.loads) + ".",
            "",
            f"Code measured: the `dsexport` package's Python files with SHA-256 prefix `{start_code}`{changed}.",
            "",
            "### Machine",
            "",
            *md_table(["fact", "value"], machine_facts()),
            "",
            "### Command",
            "",
            "```sh",
            command("bench.fastpath", argv),
            "```",
            "",
        ]
    )


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.fastpath", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, help="rows of source data (default 2,000,000)")
    p.add_argument("--rows-per-file", type=int, help="rows per source file (default 100,000)")
    p.add_argument("--reps", type=int, help="repetitions of each contestant (default 9; at least 3)")
    p.add_argument("--rss-reps", type=int, default=1, help="fresh CLI children for the peak RSS")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not representative")
    p.add_argument("--data-dir", type=Path, help="keep generated sources here and reuse them (e.g. bench/.data)")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the fast path section of {DOCS_NAME}")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    defaults = (
        {"rows": 400_000, "rows_per_file": 40_000, "reps": 3}
        if args.quick
        else {"rows": 2_000_000, "rows_per_file": 100_000, "reps": 9}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.reps < 3:
        p.error("--reps must be at least 3")
    if args.rows % args.rows_per_file:
        p.error("--rows must be a multiple of --rows-per-file")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    results = Results(args)
    start_code = code_fingerprint()
    t_start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {message}", flush=True)

    with data_folder(args.data_dir) as data:
        work = data / "work-fastpath"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        log(f"data in {data}; generating {args.rows:,} events ({args.rows // args.rows_per_file} files)")
        source = events_source(data, args.rows, args.rows_per_file)
        source_mib = sum(Path(p).stat().st_size for p in parquet_paths(source)) / MIB
        warm(source)
        log(f"checking the paths: {check_paths(source, work)}")
        results.loads.append(f"timings {load_average()}")
        log(f"timing {args.reps} interleaved repetitions")
        timings = interleaved(contestants(source), reps=args.reps, work=work, expect_rows=args.rows, log=log)
        add_timings(results, timings, source_mib)
        results.loads.append(f"RSS {load_average()}")
        log("peak RSS of the fast path (CLI child)")
        add_rss(results, rss_fastpath(source, args.rows, work, args.rss_reps))
        results.loads.append(f"end {load_average()}")
        shutil.rmtree(work, ignore_errors=True)
    results.seconds = time.perf_counter() - t_start
    results.code = (start_code, code_fingerprint())

    print()
    print(text_table(results.rows))
    for note in results.notes:
        print("\n" + note.replace("**", ""))
    for line in results.details:
        print(line)
    print("load average: " + "; ".join(results.loads))
    if args.write_docs:
        print(f"wrote {write_section('fastpath', render(results, argv))}")
    missed = any(r.passed is False for r in results.rows)
    return 1 if (missed and args.fail_on_miss) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
