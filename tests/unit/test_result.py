"""The run result: the versioned document a pod reports and ``dsexport run -o json`` prints."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dsexport.engine import DatasetResult, Outcome, RunResult
from dsexport.engine.manifest import WatermarkRange
from dsexport.errors import StateError

AT = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)


def exported() -> DatasetResult:
    return DatasetResult(
        dataset_export="daily",
        dataset="events",
        dataset_id="ev",
        outcome=Outcome.exported,
        export_time="202612010930",
        folder="out/ev/exportTime=202612010930",
        records=10,
        bytes=2048,
        files=1,
        watermark=WatermarkRange(strategy="files", from_=None, to="2026-12-01T09:00:00.000000000Z"),
        message="full backfill",
        seconds=1.23456,
    )


def failure(message: str, *, reason: str, transient: bool) -> DatasetResult:
    return DatasetResult(
        dataset_export="daily",
        dataset="orders",
        dataset_id="orders",
        outcome=Outcome.failed,
        message=message,
        reason=reason,
        transient=transient,
    )


def test_json_form_is_camel_case_versioned_and_round_trips() -> None:
    failed = failure("Destination/d: the store did not answer", reason="DestinationFailed", transient=True)
    report = RunResult(at=AT, results=[exported(), failed])
    doc = report.to_json_dict()
    assert (doc["version"], doc["kind"], doc["ok"], doc["at"]) == (1, "RunResult", False, "2026-12-01T09:30:00Z")
    first = doc["results"][0]
    assert first["datasetExport"] == "daily" and first["exportTime"] == "202612010930"
    assert first["watermark"] == {"strategy": "files", "from": None, "to": "2026-12-01T09:00:00.000000000Z"}
    assert first["seconds"] == 1.235
    assert doc["results"][1]["transient"] is True
    back = RunResult.parse(json.dumps(doc), origin="pod/x")
    assert back.results[1] == failed and back.results[0].watermark == exported().watermark
    assert RunResult(at=AT, results=[exported()]).ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": 2, "kind": "RunResult", "at": "2026-12-01T00:00:00Z", "results": []}', "version"),
        ('{"version": 1, "kind": "Other", "at": "2026-12-01T00:00:00Z", "results": []}', "kind"),
        ('{"version": 1, "kind": "RunResult", "at": "2026-12-01T00:00:00Z", "results": [{"outcome": "x"}]}', "results"),
        ("Traceback (most recent call last):", "document"),
    ],
)
def test_anything_else_read_back_is_refused_with_a_clear_error(text: str, expected: str) -> None:
    with pytest.raises(StateError, match=rf"^pod/x is not a dsexport RunResult version 1 \({expected}"):
        RunResult.parse(text, origin="pod/x")


def test_termination_message_is_the_whole_result_when_it_fits() -> None:
    report = RunResult(at=AT, results=[exported()])
    message = report.termination_message()
    assert RunResult.parse(message, origin="pod").to_json_dict() == report.to_json_dict()
    assert " " not in message.replace("full backfill", "")  # compact: the kubelet keeps 4 KiB


def test_termination_message_shortens_messages_then_counts_what_it_leaves_out() -> None:
    long_failure = failure("x" * 5000, reason="SourceError", transient=False)
    shortened = RunResult.parse(RunResult(at=AT, results=[long_failure]).termination_message(), origin="pod")
    assert shortened.omitted == 0 and not shortened.ok
    assert shortened.results[0].message == "x" * 160 and shortened.results[0].reason == "SourceError"

    many = RunResult(at=AT, results=[exported().model_copy(update={"dataset": f"d{i}"}) for i in range(40)])
    message = many.termination_message()
    assert len(message.encode()) <= 4096
    partial = RunResult.parse(message, origin="pod")
    assert 0 < len(partial.results) < 40
    assert partial.omitted == 40 - len(partial.results)
    assert [r.dataset for r in partial.results] == [f"d{i}" for i in range(len(partial.results))]
