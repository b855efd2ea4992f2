"""Exactly-once under SIGKILL: kill the exporter process at random moments, rerun, count every row.

The kill times are spread over the whole run (start-up, listing, writing parts, committing), and each killed
run is retried for the same slot, as a Job's retry would. After a final clean run, every source row must be in
exactly one committed export, and no uncommitted files may remain.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from pathlib import Path

import pytest
from examples import sample
from tests.helpers import START, flow_yaml
from tests.scenarios import sigkill_rounds, time_one_run

SEED = int(os.environ.get("DSEXPORT_CRASH_SEED", "20261129"))
ROUNDS = int(os.environ.get("DSEXPORT_CRASH_ROUNDS", "12"))


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
    window = time_one_run(flow_yaml(tmp_path / "cal", source=src, dest=tmp_path / "cal-dest", fmt=fmt), at)

    sigkill_rounds(flow=flow, src=src, dest=dest, at=at, window=window, rng=rng, rounds=ROUNDS, next_id=next_id)
