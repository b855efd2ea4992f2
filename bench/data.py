"""Source data for the benchmarks: generated Parquet files, cached between runs in a data folder."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from examples import sample

START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
MIB = 1024 * 1024
MARKER = "_bench.json"  # '_'-prefixed: dsexport skips it


@contextlib.contextmanager
def data_folder(path: Path | None) -> Iterator[Path]:
    """``path`` (created, kept, its sources reused), or a temporary folder deleted afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="dsexport-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached(folder: Path, spec: dict[str, Any]) -> bool:
    marker = folder / MARKER
    return marker.exists() and json.loads(marker.read_text()) == spec


def _mark(folder: Path, spec: dict[str, Any]) -> None:
    (folder / MARKER).write_text(json.dumps(spec))


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
