"""The contestants: dsexport's runs and the hand-written programs it is measured against.

A contestant's ``prepare`` gets an empty folder and returns the timed call; preparing (writing a flow file) is not
timed. *Baselines* are what a user would write without dsexport (pyarrow, polars, DuckDB); *diagnostics* are
not targets: each changes one thing (dsexport's reader in the baseline's writer, fsync disabled, the encoder
alone) to show where the time goes.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from unittest import mock

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from tests.helpers import flow_yaml

from bench.data import parquet_paths
from dsexport.api import loader
from dsexport.cli import local
from dsexport.engine import jsonenc, sources, writers
from dsexport.engine.memory import DEFAULT_BUDGET, Plan

FIRST_AT = "2026-12-01T01:00:00Z"  # slot 2026-12-01T00:00 of the flow's 3-hourly schedule
LATER_AT = "2026-12-01T04:00:00Z"  # the next slot
SCHEDULE = {"frequency": "hourly", "interval": 3, "time": "00:00", "startDate": "2026-11-01"}
BATCH_SIZE = sources.BATCH_SIZE  # baselines read with the same batch size as dsexport

Role = Literal["dsexport", "baseline", "diagnostic"]


@dataclass(frozen=True)
class Output:
    files: list[Path]
    rows: int | None = None  # known by the contestant (dsexport's result); else counted after the timing


Prepare = Callable[[Path], Callable[[], Output]]


@dataclass(frozen=True)
class Contestant:
    key: str
    label: str
    role: Role
    threads: str
    prepare: Prepare  # prepare(empty folder) -> the timed call


# ------------------------------------------------------------------------------------------- dsexport runs


def flow_file(folder: Path, *, source: Path, fmt: str, compression: str, byte_copy: bool = False) -> Path:
    """The tests' flow (tests/helpers.py): Dataset ``events`` (``source``, new files within a 15m lookback),
    exported incrementally every 3 hours by DatasetExport ``flow`` to a filesystem Destination in folder/dest.

    ``byte_copy`` off by default: the bench data is snappy Parquet, which the fast path would copy, and bench.run
    measures the re-encoding path (bench.fastpath measures the copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    return flow_yaml(
        folder,
        source=source,
        dest=folder / "dest",
        fmt=fmt,
        compression=compression,
        strategy="files",
        lookback="15m",
        mode="incremental",
        schedule=SCHEDULE,
        byte_copy=byte_copy,
    )


# The outcomes the bench expects, as the engine's results and the CLI's JSON spell them.
EXPORTED, NO_NEW_DATA = "exported", "no-new-data"


@dataclass(frozen=True)
class Run:
    """What the bench needs of one dataset's result, from an in-process run or the CLI's JSON."""

    outcome: str
    records: int
    files: int
    folder: str | None


def run_dsexport(flow: Path, at: str, *, expect: str = EXPORTED) -> Run:
    """One in-process run, exactly as the CLI does it minus interpreter start-up and argument parsing.

    This and ``cli_result`` are the only places that know the engine's result type.
    """
    bundle = loader.load_files([flow])
    results = local.run(bundle, local.requests(bundle, at=dt.datetime.fromisoformat(at).astimezone(dt.UTC)))
    if len(results) != 1 or results[0].outcome != expect:
        raise RuntimeError(f"dsexport run did not end {expect}: {results!r}")
    r = results[0]
    return Run(str(r.outcome), r.records, r.files, r.folder)


def cli(flow: Path, at: str) -> list[str]:
    """``dsexport run`` of ``flow`` at ``at`` in a fresh interpreter; its result is ``cli_result(stdout)``."""
    return [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), "--at", at, "-o", "json"]


def cli_result(stdout: str) -> Run:
    r = json.loads(stdout)["results"][0]
    return Run(str(r["outcome"]), int(r["records"]), int(r["files"]), r["folder"])


def dsexport_export(source: Path, fmt: str, compression: str, *, byte_copy: bool = False) -> Prepare:
    def prepare(out: Path) -> Callable[[], Output]:
        dest = out / "dest"
        flow = flow_file(out, source=source, fmt=fmt, compression=compression, byte_copy=byte_copy)

        def run() -> Output:
            result = run_dsexport(flow, FIRST_AT)
            assert result.folder is not None
            parts = sorted(p for p in (dest / result.folder).glob("part-*"))
            return Output(parts, rows=result.records)

        return run

    return prepare


def _no_sync(_fd: int) -> None:
    return None


def without_fsync(prepare: Prepare) -> Prepare:
    """Diagnostic: the same run with os.fsync and os.fdatasync made no-ops, to isolate the cost of durability."""

    def prepare_nofsync(out: Path) -> Callable[[], Output]:
        run = prepare(out)

        def run_nofsync() -> Output:
            with mock.patch("os.fsync", _no_sync), mock.patch("os.fdatasync", _no_sync):
                return run()

        return run_nofsync

    return prepare_nofsync


def one_encoder(prepare: Prepare) -> Prepare:
    """Diagnostic: the same run with the writers encoding on one thread (the calling thread still decodes meanwhile,
    as the read-ahead thread did before the encoding became parallel), to show what more threads gain."""

    def prepare_one(out: Path) -> Callable[[], Output]:
        run = prepare(out)

        def run_one() -> Output:
            with mock.patch.object(writers, "ENCODE_WORKERS", 1):
                return run()

        return run_one

    return prepare_one


def dsexport_batches(dataset: pads.Dataset) -> Iterator[pa.RecordBatch]:
    """The batches dsexport's exporter writes: Source.batches, decoded on the calling thread."""
    return sources.Source.batches(dataset, plan=Plan.of(DEFAULT_BUDGET))


def read_settings() -> str:
    return f"scanner readahead {_n(sources.BATCH_READAHEAD, 'batch')} / {_n(sources.FRAGMENT_READAHEAD, 'file')}"


def _n(count: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{count} {noun if count == 1 else plural}"


def dsexport_threads(fmt: str) -> str:
    workers = getattr(writers, "ENCODE_WORKERS", 1)
    if fmt == "parquet":
        pieces = f"column ranges of a row group ({getattr(writers, 'RANGES_PER_WORKER', 1)} per thread), joined"
    else:
        pieces = f"slices of {getattr(writers, 'JSON_SLICE_ROWS', 0):,} rows, serialized by polars"
    return (
        f"scan: calling thread, pyarrow pool ({pa.cpu_count()}), {read_settings()}; encode: {workers} threads, "
        f"{pieces}; hash + write on a write-behind thread"
    )


# ----------------------------------------------------------------------------------------------- Parquet


def pyarrow_parquet(source: Path) -> Prepare:
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


def duckdb_parquet(source: Path) -> Prepare:
    """DuckDB's COPY to Parquet, snappy (its default codec, said anyway): it encodes row groups in parallel."""

    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.parquet"

        def run() -> Output:
            con = duckdb.connect()
            try:
                con.execute(
                    f"COPY (SELECT * FROM read_parquet('{source}/*.parquet')) TO '{target}' "
                    "(FORMAT parquet, COMPRESSION snappy)"
                )
            finally:
                con.close()
            return Output([target])

        return run

    return prepare


def polars_sink_parquet(source: Path) -> Prepare:
    """polars' streaming Parquet writer, snappy: fast, but it writes its own types (large strings and lists, maps as
    lists of structs), so dsexport cannot use it for parts that keep the source's Arrow schema."""

    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.parquet"

        def run() -> Output:
            pl.scan_parquet(str(source / "*.parquet")).sink_parquet(target, compression="snappy")
            return Output([target])

        return run

    return prepare


def dsexport_scan_parquet(source: Path) -> Prepare:
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


# ------------------------------------------------------------------------------------------------ NDJSON


def polars_sink(source: Path) -> Prepare:
    def prepare(out: Path) -> Callable[[], Output]:
        target = out / "events.json"

        def run() -> Output:
            pl.scan_parquet(str(source / "*.parquet")).sink_ndjson(target)
            return Output([target])

        return run

    return prepare


def polars_batches(source: Path) -> Prepare:
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


def duckdb_copy(source: Path) -> Prepare:
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


def dsexport_encoder_only(source: Path) -> Prepare:
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
