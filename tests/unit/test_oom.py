"""An exporter killed past its memory limit: read from its pods' statuses, named with its budget in the status and
the Event, where other failures keep their own messages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.unit.test_render import NOW, UID, cron_jobs, dataset_export

from dsexport.api.status import DatasetExportStatus
from dsexport.engine import DatasetResult, Outcome, RunResult
from dsexport.operator import reconcile, render, results

LOGS = '{"level": "info", "msg": "reading events"}\n{"level": "info", "msg": "writing row group 7"}'


def _job(*, budget: str | None, failed: bool = True) -> dict[str, Any]:
    """A run-now Job as the operator creates it from its CronJob, finished."""
    export = dataset_export(datasets=[{"name": "events"}, {"name": "orders"}])
    [cron] = cron_jobs(export, memory_budget=budget)
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    job = render.run_job(cron_job=cron, name="flow-now", owner=render.owner_reference(name="flow", uid=UID), args=args)
    condition = (
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the limit"}
        if failed
        else {"type": "Complete", "status": "True"}
    )
    job["metadata"]["namespace"] = "ns"
    job["status"] = {
        "conditions": [condition],
        "startTime": "2026-12-01T11:59:00Z",
        "completionTime": "2026-12-01T12:00:00Z",
    }
    return job


def _pod(*, reason: str, message: str = LOGS, restarted: bool = False) -> dict[str, Any]:
    ended = {"exitCode": 137 if reason == results.OOM_KILLED else 1, "reason": reason, "message": message}
    state = (
        {"state": {"running": {}}, "lastState": {"terminated": ended}}
        if restarted
        else {"state": {"terminated": ended}}
    )
    return {"metadata": {"name": "flow-now-abcde"}, "status": {"containerStatuses": [{"name": "exporter", **state}]}}


def _recorded(job: dict[str, Any], pods: dict[str, dict[str, Any]]) -> tuple[DatasetExportStatus, reconcile.Event]:
    """What ``Reconciler.job`` writes and posts for ``job`` whose pods ended as ``pods`` say, without the I/O."""
    finished = results.FinishedJob.of(job)
    assert finished is not None
    ended = {name: t for name, pod in pods.items() if (t := results.Termination.of(pod)) is not None}
    finished, reports = results.with_terminations(finished, ended)
    status = DatasetExportStatus(pending_results=reports)
    assert results.record_job(status, finished, now=NOW)
    assert status.last_export is not None
    return status, reconcile.export_event(status.last_export)


def _condition(status: DatasetExportStatus) -> tuple[str, str, str]:
    [c] = [c for c in status.conditions if c.type == results.LAST_EXPORT_SUCCEEDED]
    return c.status, c.reason, c.message


def test_an_oom_killed_exporter_is_named_with_its_budget_in_the_status_and_the_event() -> None:
    status, event = _recorded(_job(budget="400Mi"), {"flow-now-abcde": _pod(reason="OOMKilled")})
    said = (
        "the exporter was OOMKilled: it used more than its memory budget 400Mi; "
        "raise spec.memoryBudget (DatasetExport or Destination)"
    )
    assert [(d.name, d.last_outcome, d.message) for d in status.datasets] == [
        ("events", "failed", said),
        ("orders", "failed", said),
    ]
    assert status.last_export is not None
    assert status.last_export.message == f"2 of 2 dataset(s) failed (events: {said})"
    assert _condition(status) == ("False", "OOMKilled", status.last_export.message)
    assert (event.type, event.reason) == ("Warning", "ExportFailed")
    assert event.message == f"flow-now: 2 of 2 dataset(s) failed (events: {said}); 0 record(s), 0 file(s)"
    assert "writing row group" not in event.message  # the logs stop mid-work: they would not say why


def test_a_kill_found_in_the_last_state_counts_too() -> None:
    status, _ = _recorded(_job(budget="2Gi"), {"flow-now-abcde": _pod(reason="OOMKilled", restarted=True)})
    assert _condition(status)[1] == "OOMKilled"
    assert "memory budget 2Gi" in _condition(status)[2]


def test_a_pod_without_a_memory_limit_killed_out_of_memory_says_to_set_a_budget() -> None:
    status, _ = _recorded(_job(budget=None), {"flow-now-abcde": _pod(reason="OOMKilled")})
    assert _condition(status)[1] == "OOMKilled"
    assert "no memory limit" in _condition(status)[2] and "set spec.memoryBudget" in _condition(status)[2]


def test_other_failures_keep_the_jobs_reason_and_the_last_log_lines() -> None:
    status, event = _recorded(_job(budget="400Mi"), {"flow-now-abcde": _pod(reason="Error", message="Traceback: boom")})
    assert _condition(status)[1] == "ExportFailed"
    assert status.datasets[0].message == "BackoffLimitExceeded: Job has reached the limit; Traceback: boom"
    assert "OOMKilled" not in event.message


def test_an_attempt_killed_before_one_that_reported_is_not_the_outcome() -> None:
    result = RunResult(
        at=NOW - dt.timedelta(seconds=5),
        results=[
            DatasetResult(dataset_export="flow", dataset=name, dataset_id=name, outcome=Outcome.exported, records=3)
            for name in ("events", "orders")
        ],
    ).model_dump_json(by_alias=True)
    pods = {"flow-now-abcde": _pod(reason="OOMKilled"), "flow-now-fghij": _pod(reason="Completed", message=result)}
    status, event = _recorded(_job(budget="400Mi", failed=False), pods)
    assert _condition(status)[:2] == ("True", "ExportSucceeded")
    assert (event.type, event.reason) == ("Normal", "ExportSucceeded")
    assert all(d.message is None for d in status.datasets)


def test_a_running_pod_or_one_that_ended_silently_tells_nothing() -> None:
    running = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {"running": {}}}]}}
    silent = _pod(reason="Completed", message="")
    assert results.Termination.of(running) is None
    assert results.Termination.of(silent) is None
    assert results.Termination.of({"metadata": {"name": "p"}}) is None
