"""Bad input and changed specs end as a failed result that says what to fix (and whether a retry could help),
never as a traceback; and the exporter's structured logs, as a pod writes them."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from examples import sample
from tests.helpers import START, flow_yaml
from tests.helpers import run_local as run

from dsexport.engine import Outcome

AT = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
LATER = AT + dt.timedelta(hours=3)


def test_a_column_whose_type_changed_incompatibly_is_a_permanent_source_failure(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()
    pq.write_table(pa.table({"_id": [1], "v": [1]}), tmp_path / "lake" / "a.parquet")
    pq.write_table(pa.table({"_id": [2], "v": ["x"]}), tmp_path / "lake" / "b.parquet")
    [result] = run(flow_yaml(tmp_path, source=tmp_path / "lake", dest=tmp_path / "dest"), AT)
    assert result.outcome == Outcome.failed
    assert (result.reason, result.transient) == ("SourceFailed", False)
    assert "Field v has incompatible types: int64 vs string" in result.message
    assert not (tmp_path / "dest").exists()


def test_changing_the_strategy_asks_for_a_reset(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=1, rows_per_file=100, seed=1, start=START)
    [first] = run(flow_yaml(tmp_path, source=src, dest=dest), AT)
    assert first.outcome == Outcome.exported
    column = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="ingested_at")
    [result] = run(column, LATER)
    assert result.outcome == Outcome.failed
    assert (result.reason, result.transient) == ("InvalidSpec", False)
    assert result.message == (
        "the committed watermark uses strategy files, the Dataset now says column: "
        "reset the dataset to start over with the new strategy"
    )


def test_a_missing_cursor_column_names_the_columns(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=100, seed=1, start=START)
    [result] = run(flow_yaml(tmp_path, source=src, dest=tmp_path / "dest", strategy="column", column="nope"), AT)
    assert result.outcome == Outcome.failed and result.reason == "InvalidSpec"
    assert result.message.startswith("cursor column 'nope' is not in the dataset (columns: _id, ")


def test_json_logs_have_one_line_per_phase_and_no_secret(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=2, rows_per_file=100, seed=1, start=START)
    secret = "s3cr3t-value-that-must-not-leak"
    flow = flow_yaml(
        tmp_path, source=src, dest=tmp_path / "dest", secrets={"lake": {"token": secret}}, source_secret="lake"
    )
    env = {**os.environ, "DSEXPORT_LOG_FORMAT": "json"}
    args = [sys.executable, "-m", "dsexport.cli", "run", "-f", str(flow), "--at", AT.isoformat(), "-o", "json"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert secret not in done.stderr + done.stdout
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["phase"] for line in lines] == ["recover", "write", "commit", "result"]
    for line in lines:
        assert (line["datasetExport"], line["dataset"], line["exportTime"]) == ("flow", "events", "202612010000")
        assert line["logger"].startswith("dsexport.") and line["level"] == "info"
    assert lines[2]["records"] == 200 and lines[2]["files"] == 1
    assert lines[3]["outcome"] == "exported"


def test_text_logs_stay_quiet_unless_verbose(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=10, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSEXPORT_LOG")}

    def dsexport(*options: str, at: dt.datetime) -> str:
        args = [sys.executable, "-m", "dsexport.cli", *options, "run", "-f", str(flow), "--at", at.isoformat()]
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=True).stderr

    assert dsexport(at=AT) == ""
    verbose = dsexport("-v", at=LATER)
    assert "INFO dsexport.engine.exporter: recover flow/events exportTime=202612010300" in verbose
    assert "phase=result" in verbose
