"""Exactly-once under SIGKILL: kill the exporter process at random moments, rerun, count every row.

The kill times are drawn from the run's destination I/O (``tests.killpoints`` starts the clock at its first
operation: recovering state, writing parts, committing, cleaning), not from the interpreter's start-up, where a kill
proves nothing. After a kill the next attempt retries the slot, as a Job's retry would, or runs a later one, as the
next schedule would. After a final clean run, every source row must be in exactly one committed export, and no
uncommitted files may remain. Kills at each named step of the protocol are in ``test_suite`` (every destination).

The byte copy (``dsexport.engine.bytecopy``) takes source files above 1 MiB whose codec and schema match: the
``parquet-copy`` case has such files, and smaller ones that are re-encoded in the same runs. Copying is quick next
to the CLI's start-up, so a second test aims its kills at the moment parts are being written.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from examples import sample
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids
from tests.scenarios import io_seconds, run_to_end, sigkill_rounds, start_run

SEED = int(os.environ.get("DSEXPORT_CRASH_SEED", "20261129"))
ROUNDS = int(os.environ.get("DSEXPORT_CRASH_ROUNDS", "12"))
COPIED_ROWS = 20_000  # about 1.3 MB of sample events a file: copied, not re-encoded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "strategy", "max_records", "rows"),
    [
        ("parquet", "files", 7_000, (1_000, 15_000)),
        ("json", "column", 7_000, (1_000, 15_000)),
        ("parquet", "files", None, (5_000, 40_000)),  # the byte copy, and re-encoding of the smaller files
    ],
    ids=["parquet-files", "json-column", "parquet-copy"],
)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, fmt: str, strategy: str, max_records: int | None, rows: tuple[int, int]
) -> None:
    rng = random.Random(f"{SEED}-{fmt}-{strategy}" + ("" if max_records else "-copy"))
    src, dest = tmp_path / "lake", tmp_path / "dest"
    next_id = sample.write_files(src, files=4, rows_per_file=COPIED_ROWS, seed=1, start=START)
    column = "ingested_at" if strategy == "column" else None
    flow = flow_yaml(
        tmp_path, source=src, dest=dest, fmt=fmt, strategy=strategy, column=column, max_records=max_records
    )
    at = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.UTC)

    # Calibrate the kill window on a throwaway destination so kills land anywhere in a real run.
    (tmp_path / "cal").mkdir()
    cal = flow_yaml(tmp_path / "cal", source=src, dest=tmp_path / "cal-dest", fmt=fmt, max_records=max_records)
    window = io_seconds(cal, at, trace=tmp_path / "cal-trace")

    phases = sigkill_rounds(
        flow=flow,
        src=src,
        dest=dest,
        at=at,
        window=window,
        rng=rng,
        rounds=ROUNDS,
        next_id=next_id,
        trace=tmp_path / "trace",
        rows_per_file=rows,
    )
    assert phases["write"] + phases["commit"] + phases["clean"], f"no kill landed after a part began: {phases}"
    if max_records is None:
        vias = Counter(f["via"] for m in committed(dest) for f in m["files"])
        assert vias["copy"] >= 4 and vias["encode"] >= 1, vias


@pytest.mark.slow
def test_sigkill_while_parts_are_copied_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Each attempt is killed at a random moment after its first part file appears, i.e. while the byte copy
    (and the re-encoding of the small files after it) writes."""
    rng = random.Random(f"{SEED}-while-copying")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    next_id = sample.write_files(src, files=16, rows_per_file=COPIED_ROWS, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    at = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.UTC)
    kills = mid_write = 0
    rounds = max(3, ROUNDS // 2)
    for round_ in range(rounds):
        if round_:
            later = START + dt.timedelta(days=round_)
            big, small = rng.randint(2, 8), rng.randint(0, 2)
            next_id = sample.write_files(
                src, files=big, rows_per_file=COPIED_ROWS, seed=100 + round_, start=later, id_offset=next_id
            )
            next_id = sample.write_files(
                src, files=small, rows_per_file=2_000, seed=200 + round_, start=later, id_offset=next_id
            )
        for _attempt in range(rng.randint(1, 3)):
            with start_run(flow, at) as proc:
                killed = _kill_after_a_part_appears(proc, dest, within=rng.uniform(0, 0.15))
            kills += killed
            mid_write += killed and bool(_uncommitted_parts(dest))
            ids = read_committed_ids(dest)
            assert not [i for i, n in Counter(ids).items() if n > 1], "a row was committed twice"
        run_to_end(flow, at)
        assert {f["via"] for f in committed(dest)[-1]["files"]} >= {"copy"}
        at += dt.timedelta(hours=3)

    assert kills >= rounds // 2, f"only {kills} kills: the test did not exercise crashes"
    assert mid_write >= 1, "no kill left written parts behind: none landed while parts were written"
    assert Counter(read_committed_ids(dest)) == Counter(source_ids(src))
    assert_only_committed_files(dest)


def _uncommitted_parts(dest: Path) -> list[Path]:
    """Part files, finished or temporary, in slot folders without a manifest: what a killed run left."""
    slots = (dest / "out" / "events").glob("exportTime=*")
    return [p for slot in slots if not (slot / "_manifest.json").exists() for p in slot.glob("*part-*")]


def _kill_after_a_part_appears(proc: subprocess.Popen[bytes], dest: Path, *, within: float) -> int:
    """SIGKILL ``proc`` ``within`` seconds after a part file (or its temporary file) it writes appears; 1 if it was
    killed, 0 if it ended first."""
    before = set(dest.rglob("*part-*"))
    deadline = time.monotonic() + 120
    while proc.poll() is None and not set(dest.rglob("*part-*")) - before:
        assert time.monotonic() < deadline, "the run wrote no part in 120 s"
        time.sleep(0.001)
    time.sleep(within)
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        return 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return 1
