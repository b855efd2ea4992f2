"""Measuring: interleaved timing of contestants in this process, and peak RSS of fresh CLI children."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from bench.baselines import EXPORTED, FIRST_AT, Contestant, cli, cli_result, flow_file, run_dsexport
from bench.data import MIB, parquet_paths
from dsexport.engine import sources
from dsexport.engine.memory import DEFAULT_BUDGET, Plan

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
    def cpu(self) -> float:
        """Process CPU seconds, median over repetitions."""
        return statistics.median(self.cpus)

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
    """Run every contestant ``reps`` times, interleaved; the starting contestant rotates each repetition.

    Each contestant first runs once untimed, in order: the first run in a process pays for what later runs
    reuse (lazy imports, thread pools, the allocator's first pages), and since the first contestant of the first
    repetition is always the same one (dsexport), it alone would carry that cost into its timings."""
    timings = {c.key: Timing(c) for c in contestants}
    for c in contestants:
        out = work / f"{c.key}-warm-up"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        c.prepare(out)()
        shutil.rmtree(out, ignore_errors=True)
        log(f"  warm-up  {c.label}")
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


def sha256_seconds(nbytes: int) -> float:
    """Seconds hashlib.sha256 needs for ``nbytes``, from its speed on a 256 MiB buffer."""
    buffer = np.random.default_rng(0).integers(0, 256, 256 * MIB, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    hashlib.sha256(buffer).digest()
    return (time.perf_counter() - t0) * nbytes / len(buffer)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


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
        flow = flow_file(out, source=source, fmt=fmt, compression=compression)
        os.sync()
        run = child_peak(cli(flow, FIRST_AT))
        result = cli_result(run.stdout)
        if result.outcome != EXPORTED or result.records != rows:
            raise RuntimeError(f"RSS run: unexpected result {result}")
        parts = result.files
        peaks.append(run)
        shutil.rmtree(out, ignore_errors=True)
    worst = max(peaks, key=lambda r: r.peak_mib)
    return RssResult(fmt, rows, worst.peak_mib, worst.wall, parts)


@dataclass(frozen=True)
class ArrowPeak:
    peak_mib: float
    batch_mib: float
    batch_rows: int


def arrow_peak(source: Path, work: Path) -> ArrowPeak:
    """Diagnostic: the most Arrow memory held at once during an in-process Parquet export, sampled every 20 ms,
    and the size of one decoded batch, to tell buffered batches from everything else."""
    first = next(
        sources.Source.batches(pads.dataset(parquet_paths(source)[:1], format="parquet"), plan=Plan.of(DEFAULT_BUDGET))
    )
    batch_mib, batch_rows = first.nbytes / MIB, first.num_rows
    del first
    out = work / "arrow-peak"
    shutil.rmtree(out, ignore_errors=True)
    flow = flow_file(out, source=source, fmt="parquet", compression="snappy")
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
