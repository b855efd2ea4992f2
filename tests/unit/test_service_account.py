"""spec.serviceAccount: workload identity for the exporter pods, rendered onto the ServiceAccount (annotations) and
the CronJobs' pod template (podLabels), and nowhere else, so changing it rewrites exactly those objects."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Mapping
from typing import Any

import pytest
from tests.unit.test_render import UID, cron_jobs, dataset, dataset_export, destination

from dsexport.api import DatasetExport
from dsexport.operator import desired, kube, render
from dsexport.operator.apiserver import ApiServer

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
IRSA = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/dsexport-marketing-daily"}
AZURE = {"azure.workload.identity/use": "true"}


def _flow(**identity: Any) -> DatasetExport:
    return dataset_export(serviceAccount=identity) if identity else dataset_export()


def _plan(flow: DatasetExport) -> desired.Desired:
    datasets = {name: dataset(name) for name in ("events", "orders", "clicks")}
    return desired.desired(
        flow=flow, uid=UID, datasets=datasets, destination=destination(), now=NOW, settings=desired.Settings()
    )


def _by_kind(plan: desired.Desired) -> dict[str, dict[str, Any]]:
    """Each object under ``Kind/name``, so two plans can be compared object by object."""
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in plan.objects}


def _changed(before: desired.Desired, after: desired.Desired) -> set[str]:
    """The objects whose rendering differs: what ``Kube.ensure`` would write (it compares these digests)."""
    old, new = _by_kind(before), _by_kind(after)
    assert set(old) == set(new)
    return {key for key in old if kube.digest(old[key]) != kube.digest(new[key])}


def test_annotations_go_on_the_service_account_only() -> None:
    account, role, binding = render.exporter_access(
        dataset_export="marketing-daily", namespace="ns", owner_uid=UID, annotations=IRSA
    )
    assert account["kind"] == "ServiceAccount" and account["metadata"]["annotations"] == IRSA
    assert account["metadata"]["labels"] == render.labels("marketing-daily", "exporter")
    assert "annotations" not in role["metadata"] and "annotations" not in binding["metadata"]


def test_without_annotations_the_service_account_has_no_annotations_key() -> None:
    """No key at all, not ``{}``: server-side apply then drops the annotations the operator set before."""
    nothing: tuple[dict[str, str] | None, ...] = (None, {})
    for none in nothing:
        account, _, _ = render.exporter_access(
            dataset_export="marketing-daily", namespace="ns", owner_uid=UID, annotations=none
        )
        assert "annotations" not in account["metadata"]


def test_pod_labels_go_on_the_pod_template_only() -> None:
    [job, _] = cron_jobs(dataset_export(), pod_labels={**AZURE, "team": "data"})
    template_labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert template_labels["azure.workload.identity/use"] == "true" and template_labels["team"] == "data"
    assert "team" not in job["metadata"]["labels"] and "team" not in job["spec"]["jobTemplate"]["metadata"]["labels"]
    [plain, _] = cron_jobs(dataset_export())
    plain_labels = plain["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert template_labels == {**plain_labels, **AZURE, "team": "data"}


def test_the_operators_own_labels_win_over_pod_labels() -> None:
    """The CRD refuses such keys; should one get through (an older CRD installed), selection still works."""
    [job, _] = cron_jobs(dataset_export(), pod_labels={render.LABEL_EXPORT: "other", "app.kubernetes.io/name": "x"})
    template_labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert template_labels[render.LABEL_EXPORT] == "marketing-daily"
    assert template_labels["app.kubernetes.io/name"] == "dsexport"


def test_run_now_jobs_carry_the_pod_labels_too() -> None:
    [job, _] = cron_jobs(dataset_export(), pod_labels=AZURE)
    owner = render.owner_reference(name="marketing-daily", uid=UID)
    run = render.run_job(cron_job=job, name="marketing-daily-x-n1", owner=owner, args=["run"])
    assert run["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"


def test_the_flow_config_map_leaves_the_identity_out() -> None:
    """The exporter does not read it; so the ConfigMap is the same with or without, and is not rewritten."""
    rendered = [
        render.flow_config_map(
            dataset_export=flow, datasets=[dataset("events")], destination=destination(), owner_uid=UID
        )
        for flow in (_flow(), _flow(annotations=IRSA, podLabels=AZURE))
    ]
    assert rendered[0] == rendered[1]
    assert "serviceAccount" not in rendered[1]["data"]["flow.yaml"]


def test_desired_passes_the_identity_through() -> None:
    objects = _by_kind(_plan(_flow(annotations=IRSA, podLabels=AZURE)))
    assert objects["ServiceAccount/marketing-daily-exporter"]["metadata"]["annotations"] == IRSA
    crons = [o for o in objects.values() if o["kind"] == "CronJob"]
    assert len(crons) == 2
    for cron in crons:
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert pod["spec"]["serviceAccountName"] == "marketing-daily-exporter"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param({}, {}, set(), id="nothing-changed"),
        pytest.param({}, {"annotations": IRSA}, {"ServiceAccount/marketing-daily-exporter"}, id="annotations-added"),
        pytest.param(
            {"annotations": IRSA},
            {"annotations": {**IRSA, "eks.amazonaws.com/sts-regional-endpoints": "true"}},
            {"ServiceAccount/marketing-daily-exporter"},
            id="annotations-changed",
        ),
        pytest.param({"annotations": IRSA}, {}, {"ServiceAccount/marketing-daily-exporter"}, id="annotations-removed"),
        pytest.param({}, {"podLabels": AZURE}, {"CronJob"}, id="pod-labels-added"),
        pytest.param(
            {"annotations": IRSA, "podLabels": AZURE}, {"annotations": IRSA, "podLabels": AZURE}, set(), id="same-again"
        ),
    ],
)
def test_a_change_rerenders_only_the_objects_it_is_on(
    before: dict[str, Any], after: dict[str, Any], expected: set[str]
) -> None:
    changed = _changed(_plan(_flow(**before)), _plan(_flow(**after)))
    # Every CronJob (one per schedule) carries the pod template; nothing else does.
    assert {"CronJob" if key.startswith("CronJob/") else key for key in changed} == expected
    if "CronJob" in expected:
        assert len(changed) == 2


class _RecordingKube(kube.Kube):
    """Kube with the API server replaced by a recorder: an apply answers with the object as applied."""

    def __init__(self) -> None:
        super().__init__(ApiServer(server="https://127.0.0.1:1", context=ssl.create_default_context()))
        self.requests: list[tuple[str, str, Any]] = []

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        self.requests.append((method, path, body))
        if method != "PATCH":
            return None
        applied: dict[str, Any] = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return applied


def _ensure_all(k: _RecordingKube, plan: desired.Desired) -> list[tuple[str, str, Any]]:
    k.requests.clear()
    for obj in plan.objects:
        k.ensure(obj, namespace="ns")
    return list(k.requests)


def _applied_kinds(requests: list[tuple[str, str, Mapping[str, Any]]]) -> list[str]:
    return [str(body["kind"]) for method, _, body in requests if method == "PATCH"]


def test_the_operator_writes_only_the_service_account_when_the_annotations_change() -> None:
    k = _RecordingKube()
    first = _ensure_all(k, _plan(_flow()))
    assert sorted(_applied_kinds(first)) == ["ConfigMap", "CronJob", "CronJob", "Role", "RoleBinding", "ServiceAccount"]
    assert _ensure_all(k, _plan(_flow())) == []  # reconciled again with nothing changed: no request at all

    added = _ensure_all(k, _plan(_flow(annotations=IRSA)))
    assert _applied_kinds(added) == ["ServiceAccount"]
    assert added[0][2]["metadata"]["annotations"] == IRSA
    assert _ensure_all(k, _plan(_flow(annotations=IRSA))) == []

    removed = _ensure_all(k, _plan(_flow()))
    assert _applied_kinds(removed) == ["ServiceAccount"]
    assert "annotations" not in removed[0][2]["metadata"]  # server-side apply removes what is no longer applied


def test_the_operator_writes_only_the_cron_jobs_when_the_pod_labels_change() -> None:
    k = _RecordingKube()
    _ensure_all(k, _plan(_flow()))
    changed = _ensure_all(k, _plan(_flow(podLabels=AZURE)))
    assert _applied_kinds(changed) == ["CronJob", "CronJob"]
    assert _ensure_all(k, _plan(_flow(podLabels=AZURE))) == []
