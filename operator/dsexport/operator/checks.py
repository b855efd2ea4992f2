"""Destination health: when to check a Destination, the check Job, and what its report means.

The operator never reads Secrets, so it cannot test a store itself: a Job runs ``dsexport check`` in the
exporter image with the Destination's Secret mounted, and its report comes back as the pod's termination message
(small: a few steps). A check runs when a Destination is created or changed, on ``dsexport.io/check-now``, and
every ``spec.healthCheck.interval``. Job names derive from what caused the check, so every trigger that repeats
(a timer, an event replayed after a restart) finds the Job already there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from dsexport import api
from dsexport.api.status import DestinationStatus
from dsexport.operator import render
from dsexport.operator.pods import FLOW_KEY, exporter_pod_template

CHECK_NOW: Final = "dsexport.io/check-now"
AVAILABLE: Final = "Available"
COMPONENT: Final = "check"
LABEL_DESTINATION: Final = "dsexport.io/destination"
ANNOTATION_GENERATION: Final = "dsexport.io/generation"
CHECK_DEADLINE_SECONDS: Final = 300
CHECK_TTL_SECONDS: Final = 3600


@dataclass(frozen=True)
class Due:
    """Why a check is due, and the token its Job's name derives from."""

    cause: str  # created or changed | check-now | interval
    token: str


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def due(body: Mapping[str, Any], *, now: dt.datetime) -> Due | None:
    """The check this Destination needs now, if any."""
    meta = body["metadata"]
    uid, generation = meta.get("uid", ""), meta.get("generation")
    status = DestinationStatus.model_validate(body.get("status") or {})
    annotations = meta.get("annotations") or {}

    def token(*parts: object) -> str:
        return hashlib.sha256("/".join(str(p) for p in (uid, *parts)).encode()).hexdigest()[:10]

    if CHECK_NOW in annotations:
        return Due("check-now", token("now", annotations[CHECK_NOW]))
    if status.checked_generation != generation:
        return Due("created or changed", token("generation", generation))
    interval = ((body.get("spec") or {}).get("healthCheck") or {}).get("interval", "1h")
    seconds = api.parse_duration_seconds(interval) if interval != "0" else 0
    if seconds <= 0:
        return None
    last = _parse_time(status.last_check_time)
    if last is not None and now - last < dt.timedelta(seconds=seconds):
        return None
    return Due("interval", token("interval", int(now.timestamp()) // seconds))


def _labels(destination: str) -> dict[str, str]:
    """The recommended labels and the Destination's name (not the flow label: no flow owns a check)."""
    found = {k: v for k, v in render.labels(destination, COMPONENT).items() if k != render.LABEL_EXPORT}
    return {**found, LABEL_DESTINATION: destination}


def config_map(destination: api.Destination, *, uid: str) -> dict[str, Any]:
    """The Destination alone, as ``dsexport check`` reads it (no secret values)."""
    name = destination.metadata.name
    spec = destination.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
    manifest = {"apiVersion": api.API_VERSION, "kind": "Destination", "metadata": {"name": name}, "spec": spec}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(name),
            "labels": _labels(name),
            "ownerReferences": [_owner(name, uid)],
        },
        "data": {FLOW_KEY: yaml.safe_dump(manifest, sort_keys=False)},
    }


def config_map_name(destination: str) -> str:
    return render.job_name(destination, "check")


def _owner(name: str, uid: str) -> dict[str, Any]:
    return {**render.owner_reference(name=name, uid=uid), "kind": "Destination"}


def job(
    destination: api.Destination,
    *,
    uid: str,
    generation: int | None,
    reason: Due,
    image: str,
    image_pull_policy: str,
) -> dict[str, Any]:
    name = destination.metadata.name
    secrets = [destination.spec.credentials_secret_ref.name] if destination.spec.credentials_secret_ref else []
    volumes, mounts = render.claim_volumes(datasets=[], destination=destination)
    job_labels = _labels(name)
    template = exporter_pod_template(
        image=image,
        image_pull_policy=image_pull_policy,
        config_map=config_map_name(name),
        secrets=secrets,
        args=["--destination", name],
        labels=job_labels,
        volumes=volumes,
        volume_mounts=mounts,
        command="check",
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": render.job_name(name, f"check-{reason.token}"),
            "labels": job_labels,
            "annotations": {ANNOTATION_GENERATION: str(generation), "dsexport.io/cause": reason.cause},
            "ownerReferences": [_owner(name, uid)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": CHECK_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": CHECK_TTL_SECONDS,
            "template": template,
        },
    }


class _Step(BaseModel):
    name: str
    ok: bool
    detail: str = ""


class _Report(BaseModel):
    ok: bool
    location: str = ""
    steps: list[_Step]


@dataclass(frozen=True)
class Verdict:
    available: bool
    reason: str
    message: str


def verdict(*, job_succeeded: bool, job_message: str, termination: str | None) -> Verdict:
    """What a finished check Job says about the destination; its report is validated before it is trusted."""
    if termination:
        try:
            report = _Report.model_validate(json.loads(termination))
        except (ValueError, ValidationError):
            report = None
        if report is not None:
            failed = [s for s in report.steps if not s.ok]
            if report.ok and not failed:
                steps = ", ".join(s.name for s in report.steps)
                return Verdict(True, "CheckSucceeded", f"{report.location}: {steps} succeeded".strip(": "))
            detail = "; ".join(f"{s.name}: {s.detail}" for s in failed) or "the check failed"
            return Verdict(False, "CheckFailed", detail[:1024])
        return Verdict(False, "CheckFailed", f"the check could not run: {termination.strip()[-600:]}")
    if job_succeeded:
        return Verdict(False, "CheckUnreadable", "the check Job succeeded but left no readable report")
    return Verdict(False, "CheckFailed", f"the check Job failed before reporting ({job_message or 'no reason given'})")
