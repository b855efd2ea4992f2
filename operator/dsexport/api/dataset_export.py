"""DatasetExport: which datasets go to which destination, on what schedule, incremental or full."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from dsexport.api.common import (
    DATE_PATTERN,
    DURATION_PATTERN,
    NAME_PATTERN,
    TIME_PATTERN,
    ObjectRef,
    Resource,
    Spec,
    rules,
)
from dsexport.api.status import DatasetExportStatus


class Frequency(StrEnum):
    daily = "daily"
    hourly = "hourly"
    once = "once"


class Schedule(Spec):
    """When exports run, in UTC. For hourly, ``time`` is the first slot of each day."""

    model_config = rules(
        (
            "self.frequency == 'hourly' || !has(self.interval)",
            "interval is only allowed when frequency is hourly",
        ),
        ("self.frequency != 'hourly' || has(self.interval)", "interval is required when frequency is hourly"),
        ("self.frequency != 'once' || has(self.startDate)", "startDate is required when frequency is once"),
        (
            "!has(self.endDate) || !has(self.startDate) || self.endDate > self.startDate",
            "endDate must be after startDate",
        ),
    )

    frequency: Annotated[Frequency, Field(description="daily, hourly (every interval hours) or once.")]
    interval: Annotated[Literal[3, 6, 8, 9, 12] | None, Field(description="Hours between slots (hourly only).")] = None
    time: Annotated[
        str, Field(pattern=TIME_PATTERN, description="HH:MM UTC; for hourly, the first slot of each day.")
    ] = "00:00"
    start_date: Annotated[
        str | None,
        Field(alias="startDate", pattern=DATE_PATTERN, max_length=10, description="First day (UTC) with slots."),
    ] = None
    end_date: Annotated[
        str | None,
        Field(
            alias="endDate",
            pattern=DATE_PATTERN,
            max_length=10,
            description="Last day (UTC) with slots, inclusive.",
        ),
    ] = None


class DatasetEntry(Spec):
    name: Annotated[
        str,
        Field(min_length=1, max_length=253, pattern=NAME_PATTERN, description="A Dataset in this namespace."),
    ]
    schedule: Annotated[Schedule | None, Field(description="Overrides the DatasetExport's schedule.")] = None


class Mode(StrEnum):
    incremental = "incremental"
    full = "full"


class DatasetExportSpec(Spec):
    model_config = rules(
        (
            "self.datasets.all(d, self.datasets.exists_one(e, e.name == d.name))",
            "dataset names must be unique",
        ),
    )

    destination_ref: Annotated[ObjectRef, Field(alias="destinationRef")]
    datasets: Annotated[list[DatasetEntry], Field(min_length=1, max_length=100)]
    mode: Annotated[
        Mode,
        Field(description="incremental (the first run is a full backfill) or full (a snapshot every run)."),
    ] = Mode.incremental
    schedule: Schedule
    suspend: Annotated[bool, Field(description="Stop scheduling new exports; running ones finish.")] = False
    timeout: Annotated[
        str | None,
        Field(
            pattern=DURATION_PATTERN,
            max_length=32,
            description="Stop a run that takes longer than this, e.g. 2h (the Job's activeDeadlineSeconds); "
            "the next run continues from the last commit.",
        ),
    ] = None


class DatasetExport(Resource):
    kind_name = "DatasetExport"
    plural = "datasetexports"
    short_names = ("dsx",)
    printer_columns = (
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Schedule", "type": "string", "jsonPath": ".status.schedule"},
        {"name": "Last export", "type": "date", "jsonPath": ".status.lastExportTime"},
        {"name": "Next export", "type": "string", "jsonPath": ".status.nextExportTime"},
        {"name": "Destination", "type": "string", "jsonPath": ".spec.destinationRef.name", "priority": 1},
        {"name": "Result", "type": "string", "jsonPath": ".status.lastExport.result", "priority": 1},
        {"name": "Records", "type": "integer", "jsonPath": ".status.lastExport.records", "priority": 1},
        {
            "name": "Message",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
            "priority": 1,
        },
    )
    status_model = DatasetExportStatus

    kind: Literal["DatasetExport"] = "DatasetExport"
    spec: DatasetExportSpec
