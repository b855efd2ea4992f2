"""The operator's pure parts: folding finished Jobs into status once, the write-avoiding comparisons, the desired
objects when references are missing, and the exportTime of run-now Jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.unit.test_render import dataset, dataset_export, destination

from dsexport.api.status import DatasetExportStatus
from dsexport.engine import DatasetResult, Outcome, RunResult
from dsexport.engine.manifest import WatermarkRange
from dsexport.operator import desired, kube, reconcile, results

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _job(name: str, *, failed: bool = False, datasets: tuple[str, ...] = ("events", "orders")) -> dict[str, Any]:
    args = ["run", "--export", "flow"]
    for d in datasets:
        args += ["--dataset", d]
    condition = (
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the limit"}
        if failed
        else {"type": "Complete", "status": "True"}
    )
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"template": {"spec": {"containers": [{"args": args}]}}},
        "status": {
            "conditions": [condition],
            "startTime": "2026-12-01T11:59:00Z",
            "completionTime": "2026-12-01T12:00:00Z",
        },
    }


def _result(dataset_name: str, *, outcome: Outcome = Outcome.exported, records: int = 10, at: int = 0) -> str:
    r = DatasetResult(
        dataset_export="flow",
        dataset=dataset_name,
        dataset_id=dataset_name,
        outcome=outcome,
        export_time="202612011200",
        records=records,
        bytes=records * 10,
        files=1,
        watermark=WatermarkRange(strategy="files", from_=None, to=f"2026-12-01T11:0{at}:00Z"),
        message="boom" if outcome == Outcome.failed else "",
    )
    return RunResult(at=NOW + dt.timedelta(seconds=at), results=[r]).model_dump_json(by_alias=True)


def test_a_finished_job_is_folded_once_with_every_attempt_counted() -> None:
    status = DatasetExportStatus(
        pending_results={
            "flow-123-abcde": _result("events", records=10, at=1),
            "flow-123-fghij": _result("events", outcome=Outcome.already_committed, records=0, at=2),
            "flow-123-klmno": _result("orders", records=5, at=3),
            "flow-1234-abcde": _result("orders", records=99),  # another Job's pod: left alone
        }
    )
    job = results.FinishedJob.of(_job("flow-123"))
    assert job is not None
    assert results.record_job(status, job, now=NOW) is True
    assert set(status.pending_results) == {"flow-1234-abcde"}
    by_name = {d.name: d for d in status.datasets}
    assert (by_name["events"].runs, by_name["events"].records, by_name["events"].last_outcome) == (
        1,
        10,
        "already-committed",
    )
    assert by_name["events"].watermark == "2026-12-01T11:02:00Z"
    assert (by_name["orders"].records, by_name["orders"].bytes, by_name["orders"].files) == (5, 50, 1)
    assert status.last_export is not None
    assert (status.last_export.result, status.last_export.records) == ("Succeeded", 15)
    assert results.record_job(status, job, now=NOW) is False  # the second time: nothing changes
    assert by_name["events"].runs == 1


def test_a_job_that_died_without_reporting_counts_as_a_failure_of_its_datasets() -> None:
    status = DatasetExportStatus()
    job = results.FinishedJob.of(_job("flow-9", failed=True))
    assert job is not None and not job.succeeded
    results.record_job(status, job, now=NOW)
    assert [(d.name, d.runs, d.failures, d.last_outcome) for d in status.datasets] == [
        ("events", 1, 1, "failed"),
        ("orders", 1, 1, "failed"),
    ]
    assert status.last_export is not None and status.last_export.result == "Failed"
    assert "BackoffLimitExceeded" in status.last_export.message
    [condition] = status.conditions
    assert (condition.type, condition.status, condition.reason) == ("LastExportSucceeded", "False", "ExportFailed")


def test_a_result_that_does_not_parse_is_dropped_not_trusted() -> None:
    status = DatasetExportStatus(pending_results={"flow-1-abcde": '{"version": 99}'})
    job = results.FinishedJob.of(_job("flow-1", datasets=("events",)))
    assert job is not None
    results.record_job(status, job, now=NOW)
    assert status.pending_results == {}
    assert status.datasets[0].last_outcome == "failed"


def test_a_job_that_met_its_success_criteria_before_completing_has_an_end() -> None:
    """Kubernetes 1.31+ sets SuccessCriteriaMet first, completionTime later: the run's duration (a metric) is
    measured to that condition, not lost."""
    job = _job("flow-1")
    job["status"] = {
        "startTime": "2026-12-01T11:59:00Z",
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": "2026-12-01T11:59:42Z"}],
    }
    found = results.FinishedJob.of(job)
    assert found is not None and found.succeeded
    assert (found.start, found.end) == ("2026-12-01T11:59:00Z", "2026-12-01T11:59:42Z")


def test_a_running_job_is_not_finished() -> None:
    job = _job("flow-1")
    job["status"] = {"active": 1}
    assert results.FinishedJob.of(job) is None


def test_condition_transition_time_moves_only_when_the_status_changes() -> None:
    conditions: list[Any] = []
    results.set_condition(conditions, type_="Ready", ok=True, reason="A", message="", now=NOW)
    later = NOW + dt.timedelta(hours=1)
    results.set_condition(conditions, type_="Ready", ok=True, reason="B", message="x", now=later)
    assert conditions[0].last_transition_time == "2026-12-01T12:00:00Z"
    results.set_condition(conditions, type_="Ready", ok=False, reason="C", message="y", now=later)
    assert conditions[0].last_transition_time == "2026-12-01T13:00:00Z"


def test_covers_ignores_server_defaults_but_not_changes() -> None:
    desired_obj = {"spec": {"suspend": False, "containers": [{"name": "a", "args": ["x"]}]}}
    existing = {"spec": {"suspend": False, "extra": 1, "containers": [{"name": "a", "args": ["x"], "tty": False}]}}
    assert kube.covers(existing, desired_obj)
    assert not kube.covers(existing, {"spec": {"suspend": True}})
    assert not kube.covers(existing, {"spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}})
    assert not kube.covers(existing, {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}})


def test_merge_patch_removes_what_is_gone() -> None:
    old = {"a": 1, "m": {"x": 1, "y": 2}, "gone": True}
    new = {"a": 1, "m": {"x": 1}, "l": [1]}
    assert kube.merge_patch(old, new) == {"gone": None, "m": {"y": None}, "l": [1]}
    assert kube.merge_patch(new, new) == {}


def test_missing_references_render_only_what_can_run() -> None:
    flow = dataset_export()
    found = {"events": dataset("events")}
    plan = desired.desired(
        flow=flow, uid="u", datasets=found, destination=destination(), now=NOW, settings=desired.Settings()
    )
    assert [p.reason for p in plan.problems] == ["DatasetNotFound"]
    assert "orders" in plan.problems[0].message and "clicks" in plan.problems[0].message
    [(group, _)] = plan.cron_jobs
    assert group.datasets == ("events",)
    none = desired.desired(flow=flow, uid="u", datasets=found, destination=None, now=NOW, settings=desired.Settings())
    assert (none.objects, [p.reason for p in none.problems]) == ([], ["DestinationNotFound", "DatasetNotFound"])


def test_a_run_now_goes_after_the_newest_export_the_status_knows() -> None:
    assert reconcile._export_time(NOW, {}) == "202612011200"
    status = {"datasets": [{"lastExportTime": "202612011200"}, {"lastExportTime": "202611300930"}]}
    assert reconcile._export_time(NOW, status) == "202612011201"
    assert reconcile._export_time(NOW, {"datasets": [{"lastExportTime": "garbage"}]}) == "202612011200"


def test_object_paths_of_the_owned_kinds() -> None:
    def path(api_version: str, kind: str) -> str:
        return kube.object_path(api_version=api_version, kind=kind, namespace="ns", name="x")

    assert path("v1", "ConfigMap") == "/api/v1/namespaces/ns/configmaps/x"
    assert path("v1", "ServiceAccount") == "/api/v1/namespaces/ns/serviceaccounts/x"
    assert path("rbac.authorization.k8s.io/v1", "Role") == "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/x"
    assert path("rbac.authorization.k8s.io/v1", "RoleBinding").endswith("/ns/rolebindings/x")
    assert path("batch/v1", "CronJob") == "/apis/batch/v1/namespaces/ns/cronjobs/x"
