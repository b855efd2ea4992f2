"""Everything that should exist for one DatasetExport, given the Datasets and the Destination found for it.

A pure function of the resources and the time: the reconciler compares it with what exists and writes only the
difference. A missing reference is a problem to report, not an exception: the datasets that are there keep
being exported, and the flow is reconciled again as soon as the missing object appears.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dsexport import api
from dsexport.engine import schedule as schedules
from dsexport.operator import render

DEFAULT_IMAGE: Final = "dsexport:dev"


@dataclass(frozen=True)
class Problem:
    """Why a flow is not (fully) ready: a CamelCase reason and a message that says what to do."""

    reason: str
    message: str


@dataclass(frozen=True)
class Desired:
    objects: list[dict[str, Any]]
    """ConfigMap, exporter ServiceAccount, Role and RoleBinding, then the CronJobs."""
    cron_jobs: list[tuple[render.ScheduleGroup, dict[str, Any]]]
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    """What the operator was started with and every pod gets."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"


def secrets_of(*, datasets: Mapping[str, api.Dataset], destination: api.Destination) -> list[str]:
    names = {
        d.spec.source.credentials_secret_ref.name for d in datasets.values() if d.spec.source.credentials_secret_ref
    }
    if destination.spec.credentials_secret_ref:
        names.add(destination.spec.credentials_secret_ref.name)
    return sorted(names)


def desired(
    *,
    flow: api.DatasetExport,
    uid: str,
    datasets: Mapping[str, api.Dataset],
    destination: api.Destination | None,
    now: dt.datetime,
    settings: Settings,
) -> Desired:
    """The objects for ``flow``: only its found datasets are rendered; without its Destination, nothing is."""
    name = flow.metadata.name
    problems: list[Problem] = []
    if destination is None:
        problems.append(
            Problem(
                "DestinationNotFound",
                f"Destination {flow.spec.destination_ref.name!r} does not exist in namespace "
                f"{flow.metadata.namespace}; create it (nothing is exported until then)",
            )
        )
    missing = [e.name for e in flow.spec.datasets if e.name not in datasets]
    if missing:
        problems.append(
            Problem(
                "DatasetNotFound",
                f"Dataset(s) {', '.join(missing)} do not exist in namespace {flow.metadata.namespace}; "
                "create them or remove them from spec.datasets (the others are exported meanwhile)",
            )
        )
    found = [e for e in flow.spec.datasets if e.name in datasets]
    if destination is None or not found:
        return Desired(objects=[], cron_jobs=[], problems=problems)

    runnable = flow.model_copy(update={"spec": flow.spec.model_copy(update={"datasets": found})})
    used = {e.name: datasets[e.name] for e in found}
    identity = flow.spec.service_account
    objects: list[dict[str, Any]] = [
        render.flow_config_map(
            dataset_export=runnable, datasets=list(used.values()), destination=destination, owner_uid=uid
        ),
        *render.exporter_access(
            dataset_export=name,
            namespace=flow.metadata.namespace,
            owner_uid=uid,
            annotations=identity.annotations if identity else None,
        ),
    ]
    timeout = api.parse_duration_seconds(flow.spec.timeout) if flow.spec.timeout else None
    secrets = secrets_of(datasets=used, destination=destination)
    cron_jobs = []
    for group in render.schedule_groups(runnable):
        volumes, mounts = render.claim_volumes(datasets=[used[d] for d in group.datasets], destination=destination)
        cron_jobs.append(
            (
                group,
                render.cron_job(
                    dataset_export=runnable,
                    group=group,
                    owner_uid=uid,
                    image=settings.image,
                    image_pull_policy=settings.image_pull_policy,
                    secrets=secrets,
                    now=now,
                    service_account=render.exporter_account_name(name),
                    timeout_seconds=timeout,
                    volumes=volumes,
                    volume_mounts=mounts,
                    report_status=True,
                    pod_labels=identity.pod_labels if identity else None,
                    memory_budget=api.memory_budget(runnable, destination),
                ),
            )
        )
    return Desired(objects=[*objects, *(c for _, c in cron_jobs)], cron_jobs=cron_jobs, problems=problems)


def next_export(groups: list[render.ScheduleGroup], *, now: dt.datetime, suspended: bool) -> dt.datetime | None:
    """The earliest slot after ``now`` over the flow's schedules; None when suspended or none is left."""
    if suspended:
        return None
    upcoming = [s for g in groups for s in schedules.next_slots(g.schedule, after=now, count=1)]
    return min(upcoming, default=None)


def finished(groups: list[render.ScheduleGroup], *, now: dt.datetime) -> bool:
    """Every schedule's window has closed (past endDate, or the day of a ``once``) and its last slot's starting
    deadline has passed: no CronJob will fire again."""
    deadline = dt.timedelta(seconds=render.STARTING_DEADLINE_SECONDS)
    closes = [schedules.active_window(g.schedule)[1] for g in groups]
    return bool(closes) and all(c is not None and now > c + deadline for c in closes)
