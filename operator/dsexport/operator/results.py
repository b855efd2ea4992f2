"""Finished export Jobs into a DatasetExport's status, each exactly once.

Exporter pods write their RunResult into ``status.pendingResults`` (keyed by pod name) before they exit. When a
Job finishes, the operator folds the results of all its pods into the per-dataset totals, removes them, and adds
the Job to ``status.recordedJobs``, all in one status write conditional on the resourceVersion it read: a crash
or a conflict between reading and writing repeats the whole fold, it never counts a Job twice. A Job whose pods
died before reporting (killed, out of memory, past its deadline) still counts, as a failure of its datasets;
one killed for going past its memory limit says so, with the budget to raise.
Pure functions of the status and the Job; the handlers do the I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from dsexport.api.status import Condition, DatasetExportStatus, DatasetProgress, LastExport
from dsexport.engine import DatasetResult, Outcome, RunResult
from dsexport.errors import StateError

RECORDED_JOBS_KEPT: Final = 200
"""Far more than the Jobs the CronJobs' history keeps, so a finished Job is always found among them."""
LAST_EXPORT_SUCCEEDED: Final = "LastExportSucceeded"
OOM_KILLED: Final = "OOMKilled"
"""The kubelet's reason for a container the kernel killed past its memory limit, and the condition's for it."""


def now_text(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FinishedJob:
    """What the operator needs of a finished Job (read from its status and its pod template's args and memory limit)."""

    name: str
    succeeded: bool
    datasets: tuple[str, ...]
    start: str | None
    end: str | None
    message: str  # the Job's Failed condition (BackoffLimitExceeded, DeadlineExceeded) for people
    memory_limit: str | None = None  # its pod template's: the memory budget it ran under
    oom_killed: bool = False  # one of its pods was (its pods' statuses say it, not the Job's)

    @property
    def failure(self) -> str:
        """Why a dataset of this Job has no result. An out-of-memory kill leaves only logs that stop mid-work, so
        it is named, with the budget to raise, rather than left to be guessed from the Job's retries."""
        if self.oom_killed:
            if self.memory_limit:
                return (
                    f"the exporter was {OOM_KILLED}: it used more than its memory budget {self.memory_limit}; "
                    "raise spec.memoryBudget (DatasetExport or Destination)"
                )
            return (
                f"the exporter was {OOM_KILLED}: its pod had no memory limit and its node ran out of memory; "
                "set spec.memoryBudget (DatasetExport or Destination)"
            )
        return self.message or "the export pod ended without reporting a result"

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> FinishedJob | None:
        """None while the Job runs."""
        status = job.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        done = conditions.get("Complete") or conditions.get("SuccessCriteriaMet")
        failed = conditions.get("Failed") or conditions.get("FailureTarget")
        if done is None and failed is None:
            return None
        container = job["spec"]["template"]["spec"]["containers"][0]
        args: list[str] = container.get("args") or []
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        datasets = tuple(args[i + 1] for i, a in enumerate(args[:-1]) if a == "--dataset")
        message = ""
        if failed is not None:
            message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".rstrip(": ")
        return cls(
            name=job["metadata"]["name"],
            succeeded=failed is None,
            datasets=datasets,
            start=status.get("startTime"),
            end=status.get("completionTime") or (done or failed or {}).get("lastTransitionTime"),
            message=message,
            memory_limit=str(limit) if limit else None,
        )


@dataclass(frozen=True)
class Termination:
    """How one of a Job's pods ended, as its container's status says."""

    message: str  # the termination message: the pod's result, or its last log lines; "" without one
    oom_killed: bool  # by the kernel, past its memory limit: it could neither report nor log why

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> Termination | None:
        """None while the pod runs, or when it ended with nothing to tell (no message, not killed). ``lastState``
        counts too: a restarted container's previous end is only there."""
        message = ""
        oom_killed = False
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (status.get("state") or {}).get("terminated") or {}
            before = (status.get("lastState") or {}).get("terminated") or {}
            text = ended.get("message")
            if isinstance(text, str) and text:
                message = text
            oom_killed = oom_killed or OOM_KILLED in (ended.get("reason"), before.get("reason"))
        return cls(message, oom_killed) if message or oom_killed else None


def with_terminations(job: FinishedJob, terminations: Mapping[str, Termination]) -> tuple[FinishedJob, dict[str, str]]:
    """``job`` told why its pods failed, and the results they left as termination messages (pod name: result).

    A pod that failed before writing a result left its last log lines instead, which say why; one killed out of
    memory left logs that stop mid-work, so the kill itself is what ``job`` is told.
    """
    reports = {pod: t.message for pod, t in terminations.items() if t.message.lstrip().startswith("{")}
    logs = [t.message for pod, t in sorted(terminations.items()) if t.message and pod not in reports]
    if any(t.oom_killed for t in terminations.values()):
        return dataclasses.replace(job, oom_killed=True), reports
    if logs:
        return dataclasses.replace(job, message=f"{job.message}; {logs[-1].strip()[-600:]}"), reports
    return job, reports


def results_of(status: DatasetExportStatus, job: str) -> tuple[list[str], list[RunResult]]:
    """The pending results written by ``job``'s pods (keys to remove, and the valid results, oldest first).

    A result that does not parse is dropped with its key: it was not written by a dsexport pod of this release,
    and trusting it could corrupt the totals.
    """
    pod = re.compile(re.escape(job) + r"-[a-z0-9]{5}")
    keys = sorted(k for k in status.pending_results if pod.fullmatch(k))
    results: list[RunResult] = []
    for key in keys:
        try:
            results.append(RunResult.parse(status.pending_results[key], origin=f"the result of pod {key}"))
        except StateError:
            continue
    return keys, sorted(results, key=lambda r: r.at)


def _progress(status: DatasetExportStatus, name: str) -> DatasetProgress:
    for entry in status.datasets:
        if entry.name == name:
            return entry
    entry = DatasetProgress(name=name)
    status.datasets.append(entry)
    return entry


def record_job(
    status: DatasetExportStatus, job: FinishedJob, *, now: dt.datetime, in_spec: Collection[str] | None = None
) -> bool:
    """Fold ``job`` into ``status`` (in place); False when it was recorded before."""
    if job.name in status.recorded_jobs:
        return False
    keys, results = results_of(status, job.name)
    for key in keys:
        del status.pending_results[key]
    # Every attempt's records count (each committed its exports); the last attempt says how a dataset ended.
    final: dict[str, DatasetResult] = {}
    sums: dict[str, list[int]] = {}
    for result in results:
        for one in result.results:
            final[one.dataset] = one
            total = sums.setdefault(one.dataset, [0, 0, 0])
            total[0] += one.records
            total[1] += one.bytes
            total[2] += one.files
    end = job.end or now_text(now)
    failed: list[str] = []
    killed = False  # a dataset has no result because the exporter ran out of memory
    export_time: str | None = None
    for name in job.datasets or tuple(final):
        if in_spec is not None and name not in in_spec:
            continue  # removed from the flow since the Job started: the status lists spec.datasets only
        entry = _progress(status, name)
        entry.runs += 1
        entry.last_run_time = end
        found = final.get(name)
        if found is None:
            entry.failures += 1
            entry.last_outcome = Outcome.failed.value
            entry.message = job.failure
            failed.append(name)
            killed = killed or job.oom_killed
            continue
        r = found
        records, size, files = sums[name]
        entry.records += records
        entry.bytes += size
        entry.files += files
        entry.dataset_id = r.dataset_id
        entry.last_outcome = r.outcome.value
        entry.message = r.message or None
        if r.watermark is not None and r.watermark.to is not None:
            entry.watermark = r.watermark.to
        if r.outcome == Outcome.exported and r.export_time:
            entry.last_export_time = r.export_time
            export_time = max(export_time or "", r.export_time)
        if r.outcome == Outcome.failed:
            entry.failures += 1
            failed.append(name)
    succeeded = job.succeeded and not failed
    totals = [sums.get(n, [0, 0, 0]) for n in job.datasets or tuple(final)]
    status.last_export = LastExport(
        job=job.name,
        export_time=export_time,
        start=job.start,
        end=end,
        result="Succeeded" if succeeded else "Failed",
        records=sum(t[0] for t in totals),
        bytes=sum(t[1] for t in totals),
        files=sum(t[2] for t in totals),
        message=_summary(job, failed, status),
    )
    status.last_export_time = end
    set_condition(
        status.conditions,
        type_=LAST_EXPORT_SUCCEEDED,
        ok=succeeded,
        reason="ExportSucceeded" if succeeded else (OOM_KILLED if killed else "ExportFailed"),
        message=status.last_export.message,
        now=now,
    )
    status.recorded_jobs = [*status.recorded_jobs, job.name][-RECORDED_JOBS_KEPT:]
    return True


def _summary(job: FinishedJob, failed: Sequence[str], status: DatasetExportStatus) -> str:
    if not failed:
        return f"{len(job.datasets)} dataset(s) exported" if job.datasets else "exported"
    first = next((d for d in status.datasets if d.name == failed[0]), None)
    why = f": {first.message}" if first and first.message else ""
    return f"{len(failed)} of {len(job.datasets) or len(failed)} dataset(s) failed ({failed[0]}{why})"[:1024]


def set_condition(
    conditions: list[Condition],
    *,
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    now: dt.datetime,
    observed_generation: int | None = None,
) -> None:
    """Set one condition in place; its lastTransitionTime moves only when its status changes."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    for i, c in enumerate(conditions):
        if c.type == type_:
            when = c.last_transition_time if c.status == status else now_text(now)
            conditions[i] = Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=when,
                observed_generation=observed_generation,
            )
            return
    conditions.append(
        Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now_text(now),
            observed_generation=observed_generation,
        )
    )
