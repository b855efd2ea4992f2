"""The same guarantees on every destination: a local folder, S3 (SeaweedFS), GCS (fake-gcs-server), SFTP (OpenSSH)
and Azure Blob (Azurite), each a real server on loopback.

Exports run through the ``dsexport`` command in a child process, as in a CronJob's pod, and are read back through
the destination itself, checking every file against its manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from examples import sample
from tests.destinations.contract import count_retries
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids
from tests.scenarios import (
    PROTOCOL_KILLS,
    io_seconds,
    protocol_kill_rounds,
    run_to_end,
    sigkill_rounds,
    start_run,
    time_one_run,
)
from tests.servers import SECRET_NAME, Target, wait_until

from dsexport.cli import main
from dsexport.destinations import join

AT = dt.datetime(2026, 12, 1, 0, 30, tzinfo=dt.UTC)
FAST_FAIL = {"DSEXPORT_RETRY_DEADLINE": "4", "DSEXPORT_RETRY_ATTEMPTS": "4"}


def _flow(tmp: Path, target: Target, folder: str, src: Path, **kw: Any) -> Path:
    secrets = {SECRET_NAME: target.secret} if target.secret is not None else None
    return flow_yaml(tmp, source=src, destination=target.destination_spec(), secrets=secrets, folder=folder, **kw)


def _run_counting_attempts(
    flow: Path, at: dt.datetime, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any], str, list[BaseException]]:
    """``dsexport run -o json`` in this process (click's runner) rather than a child, so that ``count_retries``
    sees every attempt of the run: exit code, summary, stderr, and the failures retry.call judged."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    failures = count_retries(monkeypatch)
    result = CliRunner().invoke(main, ["run", "-f", str(flow), "--at", at.isoformat(), "-o", "json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}, result.stderr, failures


def _run(flow: Path, at: dt.datetime, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    with start_run(flow, at, env) as proc:
        out, err = proc.communicate(timeout=180)
    return proc.returncode, json.loads(out) if out.strip() else {}, err.decode()


@pytest.mark.parametrize(("fmt", "compression"), [("parquet", "zstd"), ("json", "gzip")])
def test_backfill_then_incremental_exports_every_row_once(
    tmp_path: Path, target: Target, folder: str, fmt: str, compression: str
) -> None:
    src = tmp_path / "lake"
    next_id = sample.write_files(src, files=3, rows_per_file=4_000, seed=1, start=START)
    flow = _flow(tmp_path, target, folder, src, fmt=fmt, compression=compression, max_records=5_000)
    reader = target.transport()

    run_to_end(flow, AT, target.env)
    first = committed(reader, folder=folder)
    assert len(first) == 1 and first[0]["records"] == 12_000 and len(first[0]["files"]) == 3

    sample.write_files(src, files=1, rows_per_file=2_500, seed=2, start=START + dt.timedelta(days=1), id_offset=next_id)
    later = AT + dt.timedelta(hours=3)
    run_to_end(flow, later, target.env)
    run_to_end(flow, later, target.env)  # a retry of a committed slot is a no-op
    manifests = committed(reader, folder=folder)
    assert [m["records"] for m in manifests] == [12_000, 2_500]
    assert Counter(read_committed_ids(reader, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(reader, folder=folder)
    suffix = ".parquet" if fmt == "parquet" else ".json.gz"
    assert all(f["path"].endswith(suffix) for m in manifests for f in m["files"])


def test_full_mode_exports_a_snapshot_every_run(tmp_path: Path, target: Target, folder: str) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=2, rows_per_file=3_000, seed=3, start=START)
    flow = _flow(tmp_path, target, folder, src, mode="full")
    run_to_end(flow, AT, target.env)
    run_to_end(flow, AT + dt.timedelta(hours=3), target.env)
    assert [m["records"] for m in committed(target.transport(), folder=folder)] == [6_000, 6_000]


def test_concurrent_runs_killed_at_random_commit_each_row_once(tmp_path: Path, target: Target, folder: str) -> None:
    """Two to four exporters of one dataset at once, in processes, some for the scheduled slot and some run-now
    Jobs beside it, each killed at a random moment or let finish: after every round no row is committed twice,
    every committed file is exactly what its manifest says, and no run fails; the losers say so."""
    rng = random.Random(f"concurrent-{target.type}")
    src = tmp_path / "lake"
    next_id = sample.write_files(src, files=3, rows_per_file=3_000, seed=1, start=START)
    flow = _flow(tmp_path, target, folder, src, max_records=2_000)
    (tmp_path / "cal").mkdir()
    window = time_one_run(_flow(tmp_path / "cal", target, f"{folder}-cal", src), AT, target.env)
    reader = target.transport()
    at, outcomes, kills = AT, Counter[str](), 0
    for round_ in range(5):
        if round_:
            next_id = sample.write_files(
                src, files=rng.randint(1, 2), rows_per_file=2_500, seed=10 + round_, start=START, id_offset=next_id
            )
        run_now = (at + dt.timedelta(minutes=rng.randint(1, 59))).strftime("%Y%m%d%H%M")
        procs = [
            start_run(flow, at, target.env, export_time=run_now if rng.random() < 0.4 else None)
            for _ in range(rng.randint(2, 4))
        ]
        started = time.monotonic()
        # Within one lone run's time (start-up included): runs side by side take longer, so most deadlines kill,
        # even when the calibration ran slower than the rounds do (a busy machine).
        kill_at = [started + rng.uniform(0.05, window) if rng.random() < 0.5 else None for _ in procs]
        for proc, deadline in zip(procs, kill_at, strict=True):
            with proc:
                try:
                    out, err = proc.communicate(
                        timeout=None if deadline is None else max(0, deadline - time.monotonic())
                    )
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    kills += 1
                    continue
            assert proc.returncode == 0, err.decode()[-3000:]
            [result] = json.loads(out)["results"]
            outcomes[result["outcome"]] += 1
            if result["outcome"] == "superseded":
                assert result["message"].startswith("another run committed exportTime"), result
        ids = Counter(read_committed_ids(reader, folder=folder))  # every listed file: size and sha256
        assert not [i for i, n in ids.items() if n > 1], f"round {round_}: a row was committed twice"
        at += dt.timedelta(hours=3)
    run_to_end(flow, at + dt.timedelta(days=1), target.env)
    assert Counter(read_committed_ids(reader, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(reader, folder=folder)
    print(f"{target.type}: {kills} kills, outcomes {dict(outcomes)}")
    assert kills and outcomes["exported"], (kills, outcomes)
    assert set(outcomes) <= {"exported", "superseded", "already-committed", "no-new-data"}, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("path", ["encode", "copy"])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, target: Target, folder: str, path: str
) -> None:
    """``copy``: source files above 1 MiB with the destination's codec, which the byte copy takes, and smaller
    ones appended, which are re-encoded in the same runs."""
    rng = random.Random(f"suite-{target.type}" + ("-copy" if path == "copy" else ""))
    src = tmp_path / "lake"
    copy = path == "copy"
    first_rows, max_records, rows = (20_000, None, (5_000, 40_000)) if copy else (15_000, 6_000, (1_000, 15_000))
    next_id = sample.write_files(src, files=3, rows_per_file=first_rows, seed=1, start=START)
    flow = _flow(tmp_path, target, folder, src, max_records=max_records)
    (tmp_path / "cal").mkdir()
    cal = _flow(tmp_path / "cal", target, f"{folder}-cal", src, max_records=max_records)
    window = io_seconds(cal, AT, target.env, trace=tmp_path / "cal-trace")
    sigkill_rounds(
        flow=flow,
        src=src,
        dest=target.transport(),
        at=AT,
        window=window,
        rng=rng,
        rounds=6,
        next_id=next_id,
        trace=tmp_path / "trace",
        env=target.env,
        folder=folder,
        rows_per_file=rows,
    )
    if copy:
        assert "copy" in {f["via"] for m in committed(target.transport(), folder=folder) for f in m["files"]}


@pytest.mark.parametrize(
    ("fmt", "strategy", "path"),
    [
        ("parquet", "files", "encode"),
        ("parquet", "column", "encode"),
        ("json", "files", "encode"),
        ("json", "column", "encode"),
        ("parquet", "files", "copy"),
    ],
    ids=["parquet-files", "parquet-column", "json-files", "json-column", "parquet-copy"],
)
def test_sigkill_at_each_step_of_the_commit_protocol_loses_and_duplicates_nothing(
    tmp_path: Path, target: Target, folder: str, fmt: str, strategy: str, path: str
) -> None:
    """Kills placed by ``tests.killpoints`` at every step of the protocol (``scenarios.PROTOCOL_KILLS``): before,
    inside and after parts, between claim, manifest and marker, before and during the removal of garbage, each
    followed by a retry of the slot or a run of a later one. ``copy``: files the byte copy takes."""
    src = tmp_path / "lake"
    copy = path == "copy"
    rows = 20_000 if copy else 3_000
    next_id = sample.write_files(src, files=3, rows_per_file=rows, seed=1, start=START)
    column = "ingested_at" if strategy == "column" else None
    max_records = None if copy else 2_000
    flow = _flow(tmp_path, target, folder, src, fmt=fmt, strategy=strategy, column=column, max_records=max_records)
    kills = PROTOCOL_KILLS
    if copy and target.type == "filesystem":  # the kernel copies a whole file (sendfile): before or after
        kills = tuple(("before:write#2", then) if point == "during:write" else (point, then) for point, then in kills)
    protocol_kill_rounds(
        flow=flow,
        src=src,
        dest=target.transport(),
        at=AT,
        next_id=next_id,
        trace=tmp_path / "trace",
        env=target.env,
        folder=folder,
        rows_per_file=rows,
        kills=kills,
    )
    if copy:
        assert {f["via"] for m in committed(target.transport(), folder=folder) for f in m["files"]} == {"copy"}


def test_byte_copy_exports_source_files_as_they_are(tmp_path: Path, target: Target, folder: str) -> None:
    """Files above 1 MiB with the destination's codec (snappy, the default) become parts of their own, byte for
    byte (their sha256 is the source file's); the small file is re-encoded after them; a later run copies the new
    file only."""
    src = tmp_path / "lake"
    next_id = sample.write_files(src, files=2, rows_per_file=20_000, seed=7, start=START)
    next_id = sample.write_files(src, files=1, rows_per_file=500, seed=8, start=START, id_offset=next_id)
    flow = _flow(tmp_path, target, folder, src)
    reader = target.transport()

    run_to_end(flow, AT, target.env)
    sample.write_files(
        src, files=1, rows_per_file=20_000, seed=9, start=START + dt.timedelta(days=1), id_offset=next_id
    )
    run_to_end(flow, AT + dt.timedelta(hours=3), target.env)

    first, second = committed(reader, folder=folder)
    assert [(f["via"], f["records"]) for f in first["files"]] == [("copy", 20_000), ("copy", 20_000), ("encode", 500)]
    assert [(f["via"], f["records"]) for f in second["files"]] == [("copy", 20_000)]
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.glob("*.parquet")}
    copies = [f for m in (first, second) for f in m["files"] if f["via"] == "copy"]
    assert [f["sha256"] for f in copies] == [hashes[f["source"]] for f in copies]
    assert Counter(read_committed_ids(reader, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(reader, folder=folder)


def test_store_gone_mid_export_fails_cleanly_and_a_later_run_succeeds(
    tmp_path: Path, target: Target, folder: str
) -> None:
    if target.server is None:
        pytest.skip("a local folder cannot go away mid-export")
    src = tmp_path / "lake"
    sample.write_files(src, files=8, rows_per_file=10_000, seed=4, start=START)
    flow = _flow(tmp_path, target, folder, src, max_records=2_000)
    reader = target.transport()
    slot = join(folder, "events")
    server = target.server
    try:
        with start_run(flow, AT, {**target.env, **FAST_FAIL}) as proc:
            # Take the store away once the run has written something, i.e. in the middle of the export.
            wait_until(
                lambda: any(True for _ in reader.list_keys(slot)) or proc.poll() is not None,
                timeout=120,
                what="the export to write its first file",
            )
            server.stop()
            started = time.monotonic()
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, f"the run must fail while the store is away: {err.decode()[-2000:]}"
        assert time.monotonic() - started < 60, "retries must be bounded in time"
        result = json.loads(out)["results"][0]
        assert result["outcome"] == "failed"
        assert "Destination/dest" in result["message"]
    finally:
        server.start()
    reader = target.transport()
    assert committed(reader, folder=folder) == [], "nothing may be committed by the failed run"
    run_to_end(flow, AT, target.env)
    assert Counter(read_committed_ids(reader, folder=folder)) == Counter(source_ids(src))
    assert_only_committed_files(reader, folder=folder)


def test_wrong_credentials_fail_fast_naming_the_destination_without_the_secret(
    tmp_path: Path, target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if target.wrong_secret is None:
        pytest.skip(f"the {target.type} test server does not check credentials")
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=100, seed=5, start=START)
    flow = flow_yaml(
        tmp_path,
        source=src,
        destination=target.destination_spec(),
        secrets={SECRET_NAME: target.wrong_secret},
        folder=folder,
    )
    code, out, err, failures = _run_counting_attempts(flow, AT, target.env, monkeypatch)  # default retry bounds
    assert code == 1
    assert len(failures) == 1, f"{len(failures)} attempts: a refused credential is permanent, sent once"
    message = json.dumps(out) + err
    assert "Destination/dest" in message
    assert "credential" in message.lower() or "password" in message.lower() or "authenticat" in message.lower()
    for value in target.wrong_secret.values():
        if len(value) >= 6:
            assert value not in message, "a secret value leaked into the output"


def test_missing_bucket_fails_fast_with_a_clear_message(
    tmp_path: Path, target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=100, seed=6, start=START)
    secrets = {SECRET_NAME: target.secret} if target.secret is not None else None
    flow = flow_yaml(
        tmp_path,
        source=src,
        destination=target.destination_spec(block=target.missing_block),
        secrets=secrets,
        folder=folder,
    )
    code, out, err, failures = _run_counting_attempts(flow, AT, target.env, monkeypatch)
    assert code == 1, err
    # Sent once; a local folder has no retry policy at all.
    assert len(failures) == (0 if target.type == "filesystem" else 1), f"{len(failures)} attempts: no retrying"
    message = json.dumps(out) + err
    assert "Destination/dest" in message
    assert "Traceback" not in err


def test_check_reports_a_healthy_destination(tmp_path: Path, target: Target, folder: str) -> None:
    flow = _flow(tmp_path, target, folder, tmp_path / "lake")
    code, report, err = _check(flow, target)
    assert code == 0, err
    assert report["ok"] is True
    assert [s["name"] for s in report["steps"]] == ["connect", "write", "create-only", "read", "list", "delete"]
    assert not any(True for _ in target.transport().list_keys(folder)), "the probe must clean up after itself"


def test_check_reports_what_fails(tmp_path: Path, target: Target, folder: str) -> None:
    secrets = {SECRET_NAME: target.wrong_secret or target.secret} if target.secret is not None else None
    flow = flow_yaml(
        tmp_path,
        source=tmp_path / "lake",
        destination=target.destination_spec(block=None if target.wrong_secret else target.missing_block),
        secrets=secrets,
        folder=folder,
    )
    code, report, err = _check(flow, target)
    assert code == 1, err
    assert report["ok"] is False
    failed = [s for s in report["steps"] if not s["ok"]]
    assert failed and "Destination/dest" in failed[0]["detail"]


def _check(flow: Path, target: Target) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dsexport.cli", "check", "-f", str(flow), "--destination", "dest", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **target.env},
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr
