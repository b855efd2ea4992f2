"""One DatasetExport's reconciliation and one finished Job's recording, on top of ``kube`` (no kopf here).

The handlers call these with what kopf's indexes already hold (the Datasets and Destinations, so no extra reads)
and post the Events they return. Everything is idempotent: running a step twice, or after a crash half way,
writes nothing the first run did not, and creates no second Job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from dsexport import api
from dsexport.api.status import CronJobRef, DatasetExportStatus, DestinationStatus, LastExport
from dsexport.engine import schedule as schedules
from dsexport.errors import DestinationError
from dsexport.operator import checks, render, results
from dsexport.operator import desired as desired_state
from dsexport.operator.kube import UNWATCHED, Kube

RUN_NOW: Final = "dsexport.io/run-now"
RESET: Final = "dsexport.io/reset"
READY: Final = "Ready"
DESTINATION_AVAILABLE: Final = "DestinationAvailable"
PLURAL: Final = "datasetexports"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    status: DatasetExportStatus | None = None
    uid: str | None = None  # the DatasetExport's, for the Events' involvedObject
    seconds: float | None = None  # a Job recorded now: how long it ran
    destination_failure: str | None = None  # a Job recorded now failed on the destination: why


def _export_time(now: dt.datetime, status: Mapping[str, Any]) -> str:
    """The exportTime of a Job started now: this minute, or the minute after the newest export the status knows
    of, whichever is later (a reset right after a run-now in the same minute would otherwise find its folder
    committed and do nothing)."""
    minute = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
    for entry in status.get("datasets") or []:
        last = entry.get("lastExportTime")
        if isinstance(last, str):
            try:
                minute = max(minute, schedules.parse_export_time(last) + dt.timedelta(minutes=1))
            except ValueError:
                continue
    return schedules.export_time_folder(minute)


def _token(uid: str, value: str) -> str:
    return hashlib.sha256(f"{uid}/{value}".encode()).hexdigest()[:16]


def _with_datasets(args: list[str], datasets: list[str]) -> list[str]:
    """``args`` with its ``--dataset`` options replaced by ``datasets``."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--dataset":
            skip = True
            continue
        out.append(arg)
    for name in datasets:
        out += ["--dataset", name]
    return out


class Reconciler:
    def __init__(self, kube: Kube, settings: desired_state.Settings) -> None:
        self.kube = kube
        self.settings = settings

    def flow(
        self,
        body: Mapping[str, Any],
        *,
        datasets: Mapping[str, api.Dataset],
        destination: api.Destination | None,
        now: dt.datetime,
        availability: Mapping[str, Any] | None = None,
        cron_jobs: Mapping[str, str],
    ) -> Outcome:
        """``availability``: the Destination's ``Available`` condition, which the flow mirrors. ``cron_jobs``: the
        flow's CronJobs as a watch sees them (name: version), so none is read or listed."""
        meta = body["metadata"]
        namespace, uid = meta["namespace"], meta["uid"]
        out = Outcome()
        try:
            flow = api.DatasetExport.model_validate(body)
        except ValidationError as e:
            message = f"the spec is not valid: {e.errors()[0]['msg']}"
            out.status = self._status(body, now=now, ready=(False, "InvalidSpec", message), flow=None, plan=None)
            out.events.append(Event("Warning", "InvalidSpec", message))
            return out
        plan = desired_state.desired(
            flow=flow, uid=uid, datasets=datasets, destination=destination, now=now, settings=self.settings
        )
        for obj in plan.objects:
            seen = cron_jobs.get(obj["metadata"]["name"]) if obj["kind"] == "CronJob" else UNWATCHED
            self.kube.ensure(obj, namespace=namespace, seen=seen)
        wanted = {c["metadata"]["name"] for _, c in plan.cron_jobs}
        # The watch may not have reported a CronJob this process created moments ago: those count too.
        ours = set(cron_jobs) | self.kube.applied(kind="CronJob", namespace=namespace, dataset_export=meta["name"])
        for stale in sorted(ours):
            if stale not in wanted:
                self.kube.delete(api_version="batch/v1", kind="CronJob", name=stale, namespace=namespace)
        out.events += self._annotations(flow, uid=uid, plan=plan, at=_export_time(now, body.get("status") or {}))

        if plan.problems:
            ready = (False, plan.problems[0].reason, "; ".join(p.message for p in plan.problems))
        elif flow.spec.suspend:
            ready = (True, "Suspended", "spec.suspend is true: no export is scheduled")
        elif desired_state.finished([g for g, _ in plan.cron_jobs], now=now):
            ready = (True, "Finished", "the schedule has no slot left: no export is scheduled any more")
        else:
            ready = (True, "Scheduled", f"{len(plan.cron_jobs)} CronJob(s) export {len(flow.spec.datasets)} dataset(s)")
        was: list[str | None] = []
        out.status = self._status(
            body, now=now, ready=ready, flow=flow, plan=plan, available=_mirror(destination, availability), was=was
        )
        # An Event when the Ready reason changes; not the first Scheduled of a new flow, which the status says
        # (at a thousand flows applied at once, those Events would be a tenth of all writes).
        first_scheduled = was[:1] == [None] and ready[1] == "Scheduled"
        if out.status is not None and was[:1] != [ready[1]] and not first_scheduled:
            out.events.append(Event("Normal" if ready[0] else "Warning", ready[1], ready[2]))
        return out

    def _annotations(self, flow: api.DatasetExport, *, uid: str, plan: desired_state.Desired, at: str) -> list[Event]:
        """Act on ``dsexport.io/run-now`` and ``dsexport.io/reset``, then remove them (consumed)."""
        annotations = flow.metadata.annotations
        name, namespace = flow.metadata.name, flow.metadata.namespace
        events: list[Event] = []
        consumed: dict[str, None] = {}
        owner = render.owner_reference(name=name, uid=uid)
        minute = at
        if RUN_NOW in annotations:
            token = _token(uid, "run-now/" + annotations[RUN_NOW])
            created = 0
            for group, cron in plan.cron_jobs:
                job_name = render.job_name(name, f"{group.key}-n{token[:8]}")
                container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
                args = [*container["args"], "--export-time", minute]
                job = render.run_job(cron_job=cron, name=job_name, owner=owner, args=args)
                created += self.kube.create_job(job, namespace=namespace)
            if plan.cron_jobs:
                events.append(Event("Normal", "RunNow", f"started {created} export Job(s) now (exportTime {minute})"))
            else:
                events.append(Event("Warning", "RunNowIgnored", "nothing to run: the flow is not ready"))
            consumed[RUN_NOW] = None
        if RESET in annotations:
            wanted = [n.strip() for n in annotations[RESET].split(",") if n.strip()]
            unknown = [n for n in wanted if n not in {e.name for e in flow.spec.datasets}]
            token = _token(uid, "reset/" + annotations[RESET])
            started: list[str] = []
            for group, cron in plan.cron_jobs:
                chosen = [d for d in group.datasets if d in wanted]
                if not chosen:
                    continue
                job_name = render.job_name(name, f"{group.key}-r{token[:8]}")
                container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
                args = _with_datasets(list(container["args"]), chosen)
                args += ["--export-time", minute, "--reset-token", token]
                for dataset in chosen:
                    args += ["--reset", dataset]
                job = render.run_job(cron_job=cron, name=job_name, owner=owner, args=args)
                self.kube.create_job(job, namespace=namespace)
                started += chosen
            if started:
                events.append(
                    Event("Normal", "Reset", f"full backfill of {', '.join(started)} started (exportTime {minute})")
                )
            if unknown:
                events.append(
                    Event("Warning", "ResetIgnored", f"{', '.join(unknown)} not in spec.datasets: nothing to reset")
                )
            consumed[RESET] = None
        if consumed:
            self.kube.patch_custom(
                plural=PLURAL, namespace=namespace, name=name, patch={"metadata": {"annotations": consumed}}
            )
        return events

    def _status(
        self,
        body: Mapping[str, Any],
        *,
        now: dt.datetime,
        ready: tuple[bool, str, str],
        flow: api.DatasetExport | None,
        plan: desired_state.Desired | None,
        available: tuple[bool | None, str, str] | None = None,
        was: list[str | None] | None = None,
    ) -> DatasetExportStatus | None:
        """Write the flow's status; ``was`` receives the Ready reason it had (to post an Event on a change)."""
        meta = body["metadata"]
        generation = meta.get("generation")

        def mutate(status: DatasetExportStatus, _: dict[str, Any]) -> None:
            if was is not None:
                was[:] = [next((c.reason for c in status.conditions if c.type == READY), None)]
            status.observed_generation = generation
            results.set_condition(
                status.conditions,
                type_=READY,
                ok=ready[0],
                reason=ready[1],
                message=ready[2],
                now=now,
                observed_generation=generation,
            )
            if flow is None or plan is None:
                return
            groups = [g for g, _ in plan.cron_jobs]
            status.schedule = schedules.describe(flow.spec.schedule)
            status.cron = schedules.cron_schedule(flow.spec.schedule).expression
            status.cron_jobs = [
                CronJobRef(name=c["metadata"]["name"], schedule=c["spec"]["schedule"], datasets=list(g.datasets))
                for g, c in plan.cron_jobs
            ]
            upcoming = desired_state.next_export(groups, now=now, suspended=flow.spec.suspend)
            status.next_export_time = results.now_text(upcoming) if upcoming else None
            status.finished = desired_state.finished(groups, now=now) or None
            # Datasets no longer in the flow leave the status; their files stay at the destination.
            status.datasets = [d for d in status.datasets if d.name in {e.name for e in flow.spec.datasets}]
            if available is not None:
                mirror_condition(status, available=available, now=now)  # observedGeneration is set above

        return self.kube.update_status(
            plural=PLURAL,
            namespace=meta["namespace"],
            name=meta["name"],
            model=DatasetExportStatus,
            mutate=mutate,
            current=body,
        )

    def job(self, job: Mapping[str, Any], *, now: dt.datetime) -> Outcome:
        """Record a finished export Job in its DatasetExport's status (once), with an Event for its outcome."""
        out = Outcome()
        finished = results.FinishedJob.of(job)
        flow = (job["metadata"].get("labels") or {}).get(render.LABEL_EXPORT)
        if finished is None or not flow:
            return out
        namespace = job["metadata"]["namespace"]
        current = self.kube.get_custom(plural=PLURAL, namespace=namespace, name=flow)
        known = DatasetExportStatus.model_validate((current or {}).get("status") or {})
        if current is None or finished.name in known.recorded_jobs:
            return out  # a later event of a Job already recorded (or of a flow deleted since)
        # A pod that could not write its result into the status (API server away) left it as its termination
        # message, shortened to 4 KiB if need be: better than counting the run as a failure.
        terminations = self.kube.terminations(namespace=namespace, job=finished.name)
        finished, reports = results.with_terminations(finished, terminations)
        recorded: list[bool] = []

        def mutate(status: DatasetExportStatus, obj: dict[str, Any]) -> None:
            out.uid = obj["metadata"]["uid"]
            for pod, message in reports.items():
                status.pending_results.setdefault(pod, message)
            _, found = results.results_of(status, finished.name)
            failures = [r for run in found for r in run.results if r.reason == DestinationError.reason]
            out.destination_failure = f"{failures[-1].dataset}: {failures[-1].message}" if failures else None
            in_spec = {d.get("name") for d in (obj.get("spec") or {}).get("datasets") or []}
            recorded[:] = [results.record_job(status, finished, now=now, in_spec=in_spec)]

        out.status = self.kube.update_status(
            plural=PLURAL, namespace=job["metadata"]["namespace"], name=flow, model=DatasetExportStatus, mutate=mutate
        )
        if out.status is not None and recorded and recorded[0] and out.status.last_export is not None:
            out.seconds = _duration(finished.start, finished.end)
            out.events.append(export_event(out.status.last_export))
        return out


def export_event(last: LastExport) -> Event:
    """The Event for a Job just recorded. Its reason stays ``ExportFailed`` whatever the failure (an OOMKilled
    one too), so one field selector finds every failed export; the message, the status's, says why."""
    ok = last.result == "Succeeded"
    text = f"{last.job}: {last.message}; {last.records} record(s), {last.files} file(s)"
    return Event("Normal" if ok else "Warning", "ExportSucceeded" if ok else "ExportFailed", text)


class DestinationReconciler:
    """Destination health: start check Jobs when due and record their verdicts (the flows mirror the Available
    condition when they are reconciled, which its change triggers)."""

    def __init__(self, kube: Kube, settings: desired_state.Settings) -> None:
        self.kube = kube
        self.settings = settings

    def destination(self, body: Mapping[str, Any], *, now: dt.datetime) -> Outcome:
        out = Outcome()
        reason = checks.due(body, now=now)
        if reason is None:
            return out
        meta = body["metadata"]
        try:
            destination = api.Destination.model_validate(dict(body))
        except ValidationError:
            return out  # the CRD's schema refuses such objects; nothing to check
        namespace, uid = meta["namespace"], meta["uid"]
        self.kube.ensure(checks.config_map(destination, uid=uid), namespace=namespace)
        job = checks.job(
            destination,
            uid=uid,
            generation=meta.get("generation"),
            reason=reason,
            image=self.settings.image,
            image_pull_policy=self.settings.image_pull_policy,
        )
        if self.kube.create_job(job, namespace=namespace):
            out.events.append(Event("Normal", "CheckStarted", f"checking the destination ({reason.cause})"))
        if reason.cause == "check-now":
            self.kube.patch_custom(
                plural="destinations",
                namespace=namespace,
                name=meta["name"],
                patch={"metadata": {"annotations": {checks.CHECK_NOW: None}}},
            )
        return out

    def check_finished(self, job: Mapping[str, Any], *, now: dt.datetime) -> tuple[Outcome, checks.Verdict | None]:
        """Record a finished check Job's verdict in its Destination's status, once."""
        out = Outcome()
        finished = results.FinishedJob.of(job)
        meta = job["metadata"]
        name = (meta.get("labels") or {}).get(checks.LABEL_DESTINATION)
        if finished is None or not name:
            return out, None
        namespace = meta["namespace"]
        terminations = self.kube.terminations(namespace=namespace, job=finished.name)
        verdict = checks.verdict(
            job_succeeded=finished.succeeded,
            job_message=finished.message,
            termination=next((t.message for t in terminations.values() if t.message), None),
        )
        generation = (meta.get("annotations") or {}).get(checks.ANNOTATION_GENERATION)
        changed: list[bool] = []

        def mutate(status: DestinationStatus, obj: dict[str, Any]) -> None:
            out.uid = obj["metadata"]["uid"]
            if status.last_check_job == finished.name:
                return
            changed.append(True)
            status.last_check_job = finished.name
            status.last_check_time = finished.end or results.now_text(now)
            if generation and generation.isdigit():
                status.checked_generation = int(generation)
            results.set_condition(
                status.conditions,
                type_=checks.AVAILABLE,
                ok=verdict.available,
                reason=verdict.reason,
                message=verdict.message,
                now=now,
            )

        found = self.kube.update_status(
            plural="destinations", namespace=namespace, name=name, model=DestinationStatus, mutate=mutate
        )
        if found is None or not changed:
            return out, None
        kind = "Normal" if verdict.available else "Warning"
        out.events.append(Event(kind, verdict.reason, verdict.message))
        return out, verdict

    def export_failed(self, *, namespace: str, name: str, message: str, now: dt.datetime) -> checks.Verdict | None:
        """An export that failed on the destination makes it unavailable until a check finds it working."""
        verdict = checks.Verdict(False, "ExportFailed", f"an export failed on it: {message}"[:1024])

        def mutate(status: DestinationStatus, _: dict[str, Any]) -> None:
            results.set_condition(
                status.conditions,
                type_=checks.AVAILABLE,
                ok=False,
                reason=verdict.reason,
                message=verdict.message,
                now=now,
            )

        found = self.kube.update_status(
            plural="destinations", namespace=namespace, name=name, model=DestinationStatus, mutate=mutate
        )
        return verdict if found is not None else None


def _duration(start: str | None, end: str | None) -> float | None:
    try:
        begun = dt.datetime.fromisoformat((start or "").replace("Z", "+00:00"))
        ended = dt.datetime.fromisoformat((end or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((ended - begun).total_seconds(), 0.0)


def _mirror(
    destination: api.Destination | None, availability: Mapping[str, Any] | None
) -> tuple[bool | None, str, str]:
    """The flow's DestinationAvailable condition: its Destination's Available condition, or why there is none."""
    if destination is None:
        return (False, "DestinationNotFound", "the Destination does not exist")
    if not availability:
        return (None, "NotChecked", "the destination has not been checked yet")
    ok = {"True": True, "False": False}.get(str(availability.get("status")))
    return (ok, str(availability.get("reason") or "Unknown"), str(availability.get("message") or ""))


def mirror_condition(status: DatasetExportStatus, *, available: tuple[bool | None, str, str], now: dt.datetime) -> None:
    results.set_condition(
        status.conditions,
        type_=DESTINATION_AVAILABLE,
        ok=available[0],
        reason=available[1],
        message=available[2],
        now=now,
        observed_generation=status.observed_generation,
    )
