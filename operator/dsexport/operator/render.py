"""What a DatasetExport becomes in the cluster: a ConfigMap with its flow and one CronJob per distinct schedule.

Pure functions of the resources and the time, so the reconciler only compares what it renders with what exists
and writes the difference (an unchanged cluster renders the same objects and causes no write). No secret value
is ever rendered: the flow names Secrets, the pods mount them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from dsexport import api
from dsexport.engine import schedule as schedules
from dsexport.operator.pods import FLOW_KEY, exporter_pod_template

LABEL_EXPORT: Final = "dsexport.io/dataset-export"
LABEL_SCHEDULE: Final = "dsexport.io/schedule"
STARTING_DEADLINE_SECONDS: Final = 600
"""A slot the CronJob controller could not start within this long (operator or control plane down) is skipped;
the next slot's run exports what it missed, since runs export everything new since the watermark."""
HISTORY_LIMIT: Final = 3
BACKOFF_LIMIT: Final = 3
NO_RETRY_ON_INVALID: Final = {
    "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "exporter", "operator": "In", "values": [2]}}]
}
"""Exit status 2 is invalid manifests or arguments: a retry fails the same way, so the Job fails at once."""
_MAX_NAME: Final = 52  # a CronJob's name leaves 11 characters for the Jobs' suffix


def labels(dataset_export: str, component: str) -> dict[str, str]:
    """The recommended labels (app.kubernetes.io/*), from one place, plus the owning DatasetExport."""
    return {
        "app.kubernetes.io/name": "dsexport",
        "app.kubernetes.io/instance": dataset_export,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "dsexport",
        "app.kubernetes.io/managed-by": "dsexport-operator",
        LABEL_EXPORT: dataset_export,
    }


def owner_reference(*, name: str, uid: str) -> dict[str, Any]:
    """The DatasetExport as controller of what it renders: deleting it deletes them (garbage collector)."""
    return {
        "apiVersion": "dsexport.io/v1alpha1",
        "kind": "DatasetExport",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _manifest(resource: api.Resource) -> dict[str, Any]:
    """The resource as the exporter reads it: apiVersion, kind, name and spec; no status, no cluster metadata."""
    document = resource.model_dump(mode="json", by_alias=True, exclude_none=True, include={"api_version", "kind"})
    spec = resource.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
    return {**document, "metadata": {"name": resource.metadata.name}, "spec": spec}


def config_map_name(dataset_export: str) -> str:
    return _name(dataset_export, "flow")


def flow_config_map(
    *,
    dataset_export: api.DatasetExport,
    datasets: Sequence[api.Dataset],
    destination: api.Destination,
    owner_uid: str,
) -> dict[str, Any]:
    """The flow as ``dsexport run`` reads it in the pod: the DatasetExport, its Datasets and its Destination.

    Without ``spec.serviceAccount``: the exporter never reads it (the cloud's webhook or metadata server acts on
    the account and the pod labels), so changing the identity rewrites the ServiceAccount or the CronJobs, not
    this ConfigMap.
    """
    spec = dataset_export.spec.model_copy(update={"service_account": None})
    runnable = dataset_export.model_copy(update={"spec": spec})
    resources: list[api.Resource] = [runnable, destination, *sorted(datasets, key=lambda d: d.metadata.name)]
    name = dataset_export.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(name),
            "labels": labels(name, "flow"),
            "ownerReferences": [owner_reference(name=name, uid=owner_uid)],
        },
        "data": {FLOW_KEY: yaml.safe_dump_all([_manifest(r) for r in resources], sort_keys=False)},
    }


@dataclass(frozen=True)
class ScheduleGroup:
    """Datasets that share one effective schedule (an entry's own schedule overrides the DatasetExport's)."""

    schedule: api.Schedule
    datasets: tuple[str, ...]

    @property
    def key(self) -> str:
        """Short and stable: names the CronJob, so a schedule change replaces it rather than editing it."""
        canonical = json.dumps(self.schedule.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def schedule_groups(dataset_export: api.DatasetExport) -> list[ScheduleGroup]:
    """One group per distinct schedule, in the order the datasets are listed."""
    grouped: dict[str, list[str]] = {}
    schedule_of: dict[str, api.Schedule] = {}
    for entry in dataset_export.spec.datasets:
        effective = entry.schedule or dataset_export.spec.schedule
        key = ScheduleGroup(effective, ()).key
        grouped.setdefault(key, []).append(entry.name)
        schedule_of[key] = effective
    return [ScheduleGroup(schedule_of[k], tuple(names)) for k, names in grouped.items()]


def in_window(schedule: api.Schedule, now: dt.datetime) -> bool:
    """Whether the CronJob may run now: from startDate's midnight until the starting deadline of the last slot."""
    opens, closes = schedules.active_window(schedule)
    if opens is not None and now < opens:
        return False
    return closes is None or now <= closes + dt.timedelta(seconds=STARTING_DEADLINE_SECONDS)


def exporter_account_name(dataset_export: str) -> str:
    return _name(dataset_export, "exporter")


def exporter_access(
    *,
    dataset_export: str,
    namespace: str,
    owner_uid: str,
    annotations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The exporter pods' identity: a ServiceAccount that may patch the status of this DatasetExport and nothing
    else, so a pod reports its complete result (a termination message holds only 4 KiB).

    ``annotations`` (``spec.serviceAccount.annotations``) go on the ServiceAccount alone: they bind it to a cloud
    identity (IRSA, GKE Workload Identity), which the Role and RoleBinding have nothing to do with. Without any,
    the metadata has no ``annotations`` key, so server-side apply removes the ones the operator set before.
    """
    name = exporter_account_name(dataset_export)
    meta = {
        "name": name,
        "labels": labels(dataset_export, "exporter"),
        "ownerReferences": [owner_reference(name=dataset_export, uid=owner_uid)],
    }
    account_meta = {**meta, "annotations": dict(sorted(annotations.items()))} if annotations else meta
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": account_meta,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [api.GROUP],
                    "resources": ["datasetexports/status"],
                    "resourceNames": [dataset_export],
                    "verbs": ["patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def claim_volumes(
    *, datasets: Sequence[api.Dataset], destination: api.Destination
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for the PersistentVolumeClaims named in the specs: a filesystem Destination's claim at
    its path (read-write), each local-path source's claim at its path (read-only)."""
    volumes: dict[str, dict[str, Any]] = {}
    mounts: list[dict[str, Any]] = []

    def volume(claim: str, *, read_only: bool) -> str:
        key = f"claim-{len(volumes)}"
        found = next((k for k, v in volumes.items() if v["persistentVolumeClaim"]["claimName"] == claim), None)
        if found is None:
            volumes[key] = {"name": key, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
            found = key
        elif not read_only:
            volumes[found]["persistentVolumeClaim"]["readOnly"] = False
        return found

    fs = destination.spec.filesystem
    if fs is not None and fs.claim_name:
        mounts.append({"name": volume(fs.claim_name, read_only=False), "mountPath": fs.path})
    for dataset in sorted(datasets, key=lambda d: d.metadata.name):
        source = dataset.spec.source
        if source.claim_name:
            path = _local_path(source.uri)
            if any(m["mountPath"] == path for m in mounts):
                continue
            name = volume(source.claim_name, read_only=True)
            mounts.append({"name": name, "mountPath": path, "readOnly": True})
    return list(volumes.values()), mounts


def memory_resources(budget: str) -> dict[str, Any]:
    """An exporter container's resources from its memory budget: requested in full, so the scheduler places the pod
    where that memory is free, and limited to it, so an exporter that outgrows the plan it made from the same
    budget is killed (and reported as OOMKilled, naming the budget) instead of starving its node's other pods."""
    return {"requests": {"memory": budget}, "limits": {"memory": budget}}


def cron_job(
    *,
    dataset_export: api.DatasetExport,
    group: ScheduleGroup,
    owner_uid: str,
    image: str,
    secrets: Sequence[str],
    now: dt.datetime,
    service_account: str | None = None,
    timeout_seconds: int | None = None,
    volumes: Sequence[Mapping[str, Any]] = (),
    volume_mounts: Sequence[Mapping[str, Any]] = (),
    report_status: bool = False,
    image_pull_policy: str = "IfNotPresent",
    pod_labels: Mapping[str, str] | None = None,
    memory_budget: str | None = None,
) -> dict[str, Any]:
    """The CronJob that runs ``group``'s datasets at their schedule's slots, suspended outside its window.

    ``memory_budget`` (``api.memory_budget``: the DatasetExport's, else its Destination's, else the default) is
    the one the exporter plans with, read from the flow's ConfigMap; as the pod's request and limit it holds the
    exporter to that plan. ``None`` sets no resources.

    ``pod_labels`` (``spec.serviceAccount.podLabels``, e.g. Azure Workload Identity's) go on the pod template
    only, under the operator's own labels: the CRD refuses those keys, and should one get through anyway, the
    operator's value wins, since its labels select and own what it renders.
    """
    name = dataset_export.metadata.name
    cron = schedules.cron_schedule(group.schedule)
    job_labels = {**labels(name, "exporter"), LABEL_SCHEDULE: group.key}
    pod_template_labels = {**dict(sorted((pod_labels or {}).items())), **job_labels}
    args = ["--export", name]
    for dataset in group.datasets:
        args += ["--dataset", dataset]
    if report_status:
        args.append("--report-status")
    template = exporter_pod_template(
        image_pull_policy=image_pull_policy,
        report_status=report_status,
        image=image,
        config_map=config_map_name(name),
        secrets=sorted(set(secrets)),
        args=args,
        service_account=service_account,
        labels=pod_template_labels,
        volumes=volumes,
        volume_mounts=volume_mounts,
        resources=memory_resources(memory_budget) if memory_budget else None,
    )
    job_spec: dict[str, Any] = {
        "backoffLimit": BACKOFF_LIMIT,
        "podFailurePolicy": NO_RETRY_ON_INVALID,
        "template": template,
    }
    if timeout_seconds is not None:
        job_spec["activeDeadlineSeconds"] = timeout_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": _name(name, group.key),
            "labels": job_labels,
            "ownerReferences": [owner_reference(name=name, uid=owner_uid)],
        },
        "spec": {
            "schedule": cron.expression,
            "timeZone": cron.time_zone,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": HISTORY_LIMIT,
            "failedJobsHistoryLimit": HISTORY_LIMIT,
            "suspend": dataset_export.spec.suspend or not in_window(group.schedule, now),
            "jobTemplate": {"metadata": {"labels": job_labels}, "spec": job_spec},
        },
    }


def run_job(*, cron_job: Mapping[str, Any], name: str, owner: Mapping[str, Any], args: Sequence[str]) -> dict[str, Any]:
    """A Job from a CronJob's template, now (``dsexport.io/run-now``, ``dsexport.io/reset``), owned by the
    DatasetExport, its exporter running with ``args``. Its name derives from the annotation's value, so acting
    on one value twice (an operator restarted half way) finds the Job there instead of running a second one."""
    template = cron_job["spec"]["jobTemplate"]
    spec = json.loads(json.dumps(template["spec"]))
    spec["template"]["spec"]["containers"][0]["args"] = list(args)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [dict(owner)],
        },
        "spec": spec,
    }


def job_name(dataset_export: str, suffix: str) -> str:
    return _name(dataset_export, suffix)


def _name(dataset_export: str, suffix: str) -> str:
    """``<DatasetExport>-<suffix>`` within a CronJob's 52 characters; a long name is cut and made unique again by
    a hash of the whole."""
    name = f"{dataset_export}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(dataset_export.encode()).hexdigest()[:6]
    return f"{dataset_export[: _MAX_NAME - len(suffix) - 8].rstrip('-.')}-{digest}-{suffix}"
