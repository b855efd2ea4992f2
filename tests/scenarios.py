"""Scenarios shared by the filesystem guarantee tests and the per-destination suite."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from examples import sample

from dsexport.destinations import Transport
from tests.helpers import START, assert_only_committed_files, read_committed_ids, source_ids


def start_run(
    flow: Path, at: dt.datetime, env: Mapping[str, str] | None = None, *, export_time: str | None = None
) -> subprocess.Popen[bytes]:
    """``dsexport run`` in its own process, as a CronJob's pod would run it (``export_time``: as a run-now Job's,
    which names its folder instead of ``at``)."""
    when = ["--export-time", export_time] if export_time else ["--at", at.isoformat()]
    cmd = [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), *when, "-o", "json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def run_to_end(flow: Path, at: dt.datetime, env: Mapping[str, str] | None = None, timeout: float = 180) -> str:
    with start_run(flow, at, env) as proc:
        out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


def time_one_run(flow: Path, at: dt.datetime, env: Mapping[str, str] | None = None) -> float:
    started = time.monotonic()
    run_to_end(flow, at, env)
    return time.monotonic() - started


def sigkill_rounds(
    *,
    flow: Path,
    src: Path,
    dest: Path | Transport,
    at: dt.datetime,
    window: float,
    rng: random.Random,
    rounds: int,
    next_id: int,
    env: Mapping[str, str] | None = None,
    folder: str = "out",
    rows_per_file: tuple[int, int] = (1_000, 15_000),
) -> None:
    """Append data, run, SIGKILL at a random moment within ``window``, retry, ..., then check every row.

    Each round may append files (``rows_per_file``: the fewest and most rows of one), then runs the slot one to
    three times with a kill at a uniformly random moment, then lets a run finish (the retry that succeeds). After
    every attempt no row may be committed twice; at the end the committed rows must be exactly the source rows,
    and no uncommitted file may remain.
    """
    kills = 0
    for round_ in range(rounds):
        if rng.random() < 0.6:
            next_id = sample.write_files(
                src,
                files=rng.randint(1, 2),
                rows_per_file=rng.randint(*rows_per_file),
                seed=100 + round_,
                start=START + dt.timedelta(days=round_ + 1),  # later cursors for the column strategy
                id_offset=next_id,
            )
        for _attempt in range(rng.randint(1, 3)):
            with start_run(flow, at, env) as proc:
                try:
                    proc.wait(timeout=rng.uniform(0.05, window * 1.1))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                else:
                    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            ids = read_committed_ids(dest, folder=folder)
            assert not [i for i, n in Counter(ids).items() if n > 1], "a row was committed twice"
        run_to_end(flow, at, env)
        at += dt.timedelta(hours=3)

    assert kills >= rounds // 2, f"only {kills} kills: the test did not exercise crashes"
    assert Counter(read_committed_ids(dest, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(dest, folder=folder)
