"""Scenarios shared by the filesystem guarantee tests and the per-destination suite."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def io_seconds(flow: Path, at: dt.datetime, env: Mapping[str, str] | None = None, *, trace: Path) -> Windows:
    """How long one whole run's destination I/O takes, from its first operation (and from its first part) to its
    end: the windows random kills are drawn from. Start-up before them is not worth killing in: nothing has been
    read or written yet."""
    landing = killed_run(flow, at, env, trace=trace, after_io=3600.0)
    assert landing["landed"] is None, landing
    return Windows(io=landing["io_seconds"], write=landing["write_seconds"])


@dataclass(frozen=True)
class Windows:
    io: float
    write: float


def sigkill_rounds(
    *,
    flow: Path,
    src: Path,
    dest: Path | Transport,
    at: dt.datetime,
    window: Windows,
    rng: random.Random,
    rounds: int,
    next_id: int,
    trace: Path,
    env: Mapping[str, str] | None = None,
    folder: str = "out",
    rows_per_file: tuple[int, int] = (1_000, 15_000),
) -> Counter[str]:
    """Append data, run, SIGKILL at a random moment of its destination I/O, retry or move on, ..., then check.

    Each round may append files (``rows_per_file``: the fewest and most rows of one), then runs one to three
    attempts, each killed ``uniform(0, window / 2)`` seconds after its first destination operation, or half the
    time after its first part began (``window``: ``io_seconds`` of a whole run, then of the run that ended the
    round before); after a kill the next attempt retries the slot, or half the time runs the next
    one, leaving the killed attempt's folder to be cleaned by others. Then a run finishes. After every attempt no
    row may be committed twice; at the end the committed rows must be exactly the source rows, and no uncommitted
    file may remain. Returns how many kills landed in each phase of the run (``tests.killpoints``), for the
    caller to assert on; the kills at each named step are ``protocol_kill_rounds``'.
    """
    kills = 0
    phases: Counter[str] = Counter()
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
            clock = rng.choice(["io", "write"])
            within = window.io if clock == "io" else window.write
            landing = killed_run(flow, at, env, trace=trace, after_io=rng.uniform(0, within * 0.5), clock=clock)
            if landing["landed"] is not None:
                kills += 1
                phases[landing["phase"]] += 1
                if rng.random() < 0.5:
                    at += dt.timedelta(hours=3)
            ids = read_committed_ids(dest, folder=folder)
            assert not [i for i, n in Counter(ids).items() if n > 1], "a row was committed twice"
        window = io_seconds(flow, at, env, trace=trace)  # the run that finishes: the next round's window
        at += dt.timedelta(hours=3)

    print(f"{kills} kills, by phase: {dict(phases)}")
    assert kills >= rounds // 2, f"only {kills} kills: the test did not exercise crashes"
    run_to_end(flow, at, env)  # a later slot: cleans what the last commit made garbage
    assert Counter(read_committed_ids(dest, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(dest, folder=folder)
    return phases


# Kill points inside the commit protocol, in the order one history of runs meets them, each with what the next run
# does: retry the same slot (a Job's retry) or move on to a later one (the next schedule, leaving the killed
# attempt's files behind a folder nobody retries). See ``tests.killpoints`` for the grammar.
PROTOCOL_KILLS: tuple[tuple[str, str], ...] = (
    ("before:write", "retry"),  # recovered and selected, nothing written
    ("during:write", "move"),  # a part's bytes written, the file not completed (temporary file, open upload)
    ("after:write#1", "retry"),  # one part completed
    ("after:write#2", "move"),  # two parts completed
    ("before:claim", "retry"),  # every part written, nothing committed
    ("after:claim", "move"),  # committed (the claim), the manifest not yet published
    ("after:manifest", "retry"),  # the next run publishing that claim: manifest, no _SUCCESS yet
    ("during:delete", "retry"),  # removing the leftovers the commit made garbage, half of them gone
    ("after:write#1", "retry"),  # a part of this slot's attempt, garbage once the next attempt commits
    ("after:success", "move"),  # committed and published; its folder's garbage not yet removed
    ("during:delete", "move"),  # the next run removing that garbage, half of it gone
    ("after:claim", "retry"),  # committed; the retry publishes it and finds its slot committed
    ("after:success", "retry"),  # a commit of this slot, its cleaning to do
)


def protocol_kill_rounds(
    *,
    flow: Path,
    src: Path,
    dest: Path | Transport,
    at: dt.datetime,
    next_id: int,
    trace: Path,
    env: Mapping[str, str] | None = None,
    folder: str = "out",
    rows_per_file: int = 3_000,
    kills: tuple[tuple[str, str], ...] = PROTOCOL_KILLS,
) -> None:
    """Run the history ``kills``: before each run append two files (new rows for either strategy), SIGKILL
    the run at its point, assert it landed there and that no row is committed twice, then retry or move on. Two
    clean runs end it; then every source row must be committed exactly once, and nothing else may remain.
    """
    for i, (point, then) in enumerate(kills):
        next_id = sample.write_files(
            src,
            files=2,
            rows_per_file=rows_per_file,
            seed=300 + i,
            start=START + dt.timedelta(days=i + 1),  # later cursors for the column strategy
            id_offset=next_id,
        )
        landing = killed_run(flow, at, env, trace=trace, kill=point)
        assert landing["landed"] == _numbered(point), f"kill {i} ({point}) landed elsewhere: {landing}"
        ids = read_committed_ids(dest, folder=folder)
        assert not [n for n in Counter(ids).values() if n > 1], f"a row was committed twice after kill {i} ({point})"
        if then == "move":
            at += dt.timedelta(hours=3)
    run_to_end(flow, at, env)  # the attempt that succeeds
    run_to_end(flow, at + dt.timedelta(hours=3), env)  # a later slot: removes what that commit made garbage
    assert Counter(read_committed_ids(dest, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(dest, folder=folder)


def killed_run(
    flow: Path,
    at: dt.datetime,
    env: Mapping[str, str] | None = None,
    *,
    trace: Path,
    kill: str | None = None,
    after_io: float | None = None,
    clock: str = "io",
    timeout: float = 180,
) -> dict[str, Any]:
    """``dsexport run`` under ``tests.killpoints``, killed at ``kill`` or ``after_io`` seconds into its destination
    I/O; the trace record it left (``landed`` None: it ended first, with exit code 0)."""
    trace.unlink(missing_ok=True)
    how = ["--kill", kill] if kill else ["--kill-after-io", f"{after_io}", "--clock", clock]
    cmd = [sys.executable, "-m", "tests.killpoints", "--trace", str(trace), *how, "--"]
    cmd += ["run", "-f", str(flow), "--at", at.isoformat(), "-o", "json"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}) as p:
        _, err = p.communicate(timeout=timeout)
    records = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    assert records, f"no trace: exit code {p.returncode}, {err.decode()[-2000:]}"
    landing: dict[str, Any] = records[0]
    if landing["landed"] is None:
        assert p.returncode == 0, err.decode()[-3000:]
    else:
        assert p.returncode == -signal.SIGKILL, (p.returncode, err.decode()[-2000:])
    return landing


def _numbered(point: str) -> str:
    return point if "#" in point else point + "#1"
