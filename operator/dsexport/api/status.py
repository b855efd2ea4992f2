"""The status of each resource, written by the operator (and, for its own results, by the exporter pod).

Models like the specs, so the CRDs carry a structural status schema (no preserve-unknown-fields) generated from
the same source, and the operator validates what it reads back before trusting it. Field names follow the
Kubernetes API conventions: ``observedGeneration``, ``conditions`` with CamelCase reasons, RFC 3339 times.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

TIME_FORMAT: Final = "date-time"
MAX_PENDING_RESULT: Final = 262_144
"""A pod's RunResult as JSON: 100 datasets with long messages fit with room to spare."""


class StatusModel(BaseModel):
    """Status parts: camelCase on the wire; unknown keys ignored, so a status from a newer release stays readable."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _time(description: str) -> object:
    return Field(description=description, json_schema_extra={"format": TIME_FORMAT})


class Condition(StatusModel):
    """A metav1.Condition."""

    type: Annotated[str, Field(max_length=316, description="Ready, DestinationAvailable, LastExportSucceeded, ...")]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024, description="CamelCase, for machines.")]
    message: Annotated[str, Field(max_length=32768, description="For people: what is wrong and what to do.")] = ""
    last_transition_time: Annotated[str, Field(alias="lastTransitionTime"), _time("When status last changed.")]
    observed_generation: Annotated[int | None, Field(alias="observedGeneration")] = None


_CONDITIONS_LIST: Final[JsonDict] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
_CONDITIONS_DOC: Final = "The latest observation of each condition type."


class Totals(StatusModel):
    runs: int = 0
    failures: int = 0
    records: int = 0
    bytes: int = 0
    files: int = 0


class DatasetProgress(Totals):
    """One dataset of a DatasetExport: where its watermark stands and what its runs did."""

    name: str
    dataset_id: Annotated[str | None, Field(alias="datasetId")] = None
    watermark: Annotated[str | None, Field(description="The committed watermark: the newest data exported.")] = None
    last_export_time: Annotated[
        str | None, Field(alias="lastExportTime", description="The exportTime folder of the last commit.")
    ] = None
    last_outcome: Annotated[
        str | None,
        Field(alias="lastOutcome", description="exported, no-new-data, already-committed, superseded or failed."),
    ] = None
    last_run_time: Annotated[str | None, Field(alias="lastRunTime"), _time("When the last run ended.")] = None
    message: str | None = None


class LastExport(StatusModel):
    """The most recent export Job that finished."""

    job: str
    export_time: Annotated[str | None, Field(alias="exportTime")] = None
    start: Annotated[str | None, _time("When the Job started.")] = None
    end: Annotated[str | None, _time("When the Job finished.")] = None
    result: Annotated[str, Field(description="Succeeded or Failed.")]
    records: int = 0
    bytes: int = 0
    files: int = 0
    message: str = ""


class CronJobRef(StatusModel):
    name: str
    schedule: Annotated[str, Field(description="The cron expression, in timeZone Etc/UTC.")]
    datasets: list[str] = Field(default_factory=list)


class DatasetExportStatus(StatusModel):
    observed_generation: Annotated[int | None, Field(alias="observedGeneration")] = None
    conditions: list[Condition] = Field(
        default_factory=list, description=_CONDITIONS_DOC, json_schema_extra=_CONDITIONS_LIST
    )
    schedule: Annotated[str | None, Field(description="The flow's schedule, for people.")] = None
    cron: Annotated[str | None, Field(description="The flow's schedule as a cron expression (UTC).")] = None
    next_export_time: Annotated[str | None, Field(alias="nextExportTime"), _time("The next scheduled slot.")] = None
    last_export_time: Annotated[str | None, Field(alias="lastExportTime"), _time("When the last export ended.")] = None
    finished: Annotated[
        bool | None, Field(description="True once no slot is left (past endDate, or frequency once after its run).")
    ] = None
    cron_jobs: Annotated[list[CronJobRef], Field(alias="cronJobs")] = Field(default_factory=list)
    last_export: Annotated[LastExport | None, Field(alias="lastExport")] = None
    datasets: list[DatasetProgress] = Field(default_factory=list)
    pending_results: Annotated[
        dict[str, Annotated[str, Field(max_length=MAX_PENDING_RESULT)]],
        Field(
            alias="pendingResults",
            description="Written by exporter pods (pod name: RunResult JSON); the operator folds them into the "
            "datasets' totals when the Job finishes and removes them.",
        ),
    ] = Field(default_factory=dict)
    recorded_jobs: Annotated[
        list[str],
        Field(alias="recordedJobs", description="Jobs already counted (the most recent), so none counts twice."),
    ] = Field(default_factory=list)
    handled_run_now: Annotated[
        str | None, Field(alias="handledRunNow", description="The last dsexport.io/run-now value acted on.")
    ] = None
    handled_reset: Annotated[
        str | None, Field(alias="handledReset", description="The last dsexport.io/reset value acted on.")
    ] = None


class DatasetStatus(StatusModel):
    observed_generation: Annotated[int | None, Field(alias="observedGeneration")] = None
    used_by: Annotated[list[str], Field(alias="usedBy", description="DatasetExports that export it.")] = Field(
        default_factory=list
    )
    conditions: list[Condition] = Field(
        default_factory=list, description=_CONDITIONS_DOC, json_schema_extra=_CONDITIONS_LIST
    )


class DestinationStatus(StatusModel):
    observed_generation: Annotated[int | None, Field(alias="observedGeneration")] = None
    used_by: Annotated[list[str], Field(alias="usedBy", description="DatasetExports that export to it.")] = Field(
        default_factory=list
    )
    conditions: list[Condition] = Field(
        default_factory=list, description=_CONDITIONS_DOC, json_schema_extra=_CONDITIONS_LIST
    )
    last_check_time: Annotated[str | None, Field(alias="lastCheckTime"), _time("When it was last checked.")] = None
    checked_generation: Annotated[
        int | None, Field(alias="checkedGeneration", description="The generation the last check tested.")
    ] = None
    last_check_job: Annotated[str | None, Field(alias="lastCheckJob", description="The last check Job recorded.")] = (
        None
    )
