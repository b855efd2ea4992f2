"""Exactly-once under SIGKILL: kill the exporter process at random moments, rerun, count every row.

The kill times are spread over the whole run (start-up, listing, writing parts, committing), and each killed
run is retried for the same slot, as a Job's retry would. After a final clean run, every source row must be in
exactly one committed export, and no uncommitted files may remain.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.helpers import START, committed, flow_yaml, read_committed_ids, source_ids

from dsexport import sample

SEED = int(os.environ.get("DSEXPORT_CRASH_SEED", "20261129"))
ROUNDS = int(os.environ.get("DSEXPORT_CRASH_ROUNDS", "12"))


def _start(flow: Path, at: dt.datetime) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), "--at", at.isoformat(), "-o", "json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run_to_end(flow: Path, at: dt.datetime) -> None:
    proc = _start(flow, at)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]


def _time_one_run(flow: Path, at: dt.datetime) -> float:
    started = time.monotonic()
    _run_to_end(flow, at)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "strategy"), [("parquet", "files"), ("json", "column")])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, fmt: str, strategy: str) -> None:
    rng = random.Random(f"{SEED}-{fmt}-{strategy}")
    src, dest = tmp_path / "lake", tmp_path / "dest"
    next_id = sample.write_files(src, files=4, rows_per_file=20_000, seed=1, start=START)
    column = "ingested_at" if strategy == "column" else None
    flow = flow_yaml(tmp_path, source=src, dest=dest, fmt=fmt, strategy=strategy, column=column, max_records=7_000)
    at = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.UTC)

    # Calibrate the kill window on a throwaway destination so kills land anywhere in a real run.
    (tmp_path / "cal").mkdir()
    window = _time_one_run(flow_yaml(tmp_path / "cal", source=src, dest=tmp_path / "cal-dest", fmt=fmt), at)

    kills = 0
    for round_ in range(ROUNDS):
        if rng.random() < 0.6:
            start = START + dt.timedelta(days=round_ + 1)  # later cursors for the column strategy
            next_id = sample.write_files(
                src,
                files=rng.randint(1, 2),
                rows_per_file=rng.randint(1_000, 15_000),
                seed=100 + round_,
                start=start,
                id_offset=next_id,
            )
        for _attempt in range(rng.randint(1, 3)):
            proc = _start(flow, at)
            try:
                proc.wait(timeout=rng.uniform(0.05, window * 1.1))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            else:
                assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            finally:
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            ids = read_committed_ids(dest)
            assert not [i for i, n in Counter(ids).items() if n > 1], "a row was committed twice"
        _run_to_end(flow, at)  # the retry that finally succeeds for this slot
        at += dt.timedelta(hours=3)

    assert kills >= ROUNDS // 2, f"only {kills} kills: the test did not exercise crashes"
    ids = read_committed_ids(dest)
    assert Counter(ids) == Counter(source_ids(src))
    slots = {p.name for p in (dest / "out" / "events").iterdir()}
    assert slots == {f"exportTime={m['exportTime']}" for m in committed(dest)}, "uncommitted folders remain"
    for slot in (dest / "out" / "events").iterdir():
        listed = {f["path"] for m in committed(dest) if slot.name.endswith(m["exportTime"]) for f in m["files"]}
        assert {p.name for p in slot.iterdir()} == listed | {"_manifest.json", "_SUCCESS"}
