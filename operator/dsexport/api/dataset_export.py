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
    MemoryBudget,
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


# A qualified name, as Kubernetes requires of label and annotation keys: an optional DNS-subdomain prefix and "/",
# then a name of letters, digits, "-", "_" and "."; character classes instead of backslashes keep the CEL string
# literal and the YAML readable. The second pattern bounds the parts (prefix 253, name 63), which the first cannot.
_KEY = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_KEY_SIZES = "^([^/]{1,253}/)?[^/]{1,63}$"
_KEY_RULE = f"k.matches('{_KEY}') && k.matches('{_KEY_SIZES}')"
_KEY_FORMAT = (
    "an optional DNS subdomain prefix (lower case, at most 253 characters) and '/', then a name of at most 63 "
    "letters, digits, '-', '_' or '.' that starts and ends with a letter or digit"
)
# The operator's own keys (render.labels: app.kubernetes.io/*, dsexport.io/*), and for pod labels also those
# Kubernetes sets on a Job's pods (the *.kubernetes.io and *.k8s.io prefixes are reserved for it, job-name and
# controller-uid are the Job controller's selector): a user's value there would break ownership or selection.
_RESERVED_ANNOTATION = "^(app[.]kubernetes[.]io|([^/]+[.])?dsexport[.]io)/"
_RESERVED_POD_LABEL = "^(([^/]+[.])?kubernetes[.]io|([^/]+[.])?k8s[.]io|([^/]+[.])?dsexport[.]io)/"
MAX_ANNOTATIONS = 16
MAX_ANNOTATION_VALUE = 2048
MAX_POD_LABELS = 16
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


class ServiceAccount(Spec):
    """The exporter pods' identity towards a cloud (workload identity): annotations for the ServiceAccount
    NAME-exporter the operator renders, and labels for the exporter pods, which run as that account."""

    model_config = rules(
        (
            f"!has(self.annotations) || self.annotations.all(k, {_KEY_RULE})",
            f"serviceAccount.annotations keys must be valid annotation keys: {_KEY_FORMAT}",
        ),
        (
            f"!has(self.annotations) || self.annotations.all(k, !k.matches('{_RESERVED_ANNOTATION}'))",
            "serviceAccount.annotations may not use the operator's own keys (app.kubernetes.io/*, dsexport.io/*)",
        ),
        (
            f"!has(self.podLabels) || self.podLabels.all(k, {_KEY_RULE})",
            f"serviceAccount.podLabels keys must be valid label keys: {_KEY_FORMAT}",
        ),
        (
            f"!has(self.podLabels) || self.podLabels.all(k, !k.matches('{_RESERVED_POD_LABEL}') "
            "&& k != 'job-name' && k != 'controller-uid')",
            "serviceAccount.podLabels may not use the operator's labels (app.kubernetes.io/*, dsexport.io/*) nor "
            "those Kubernetes sets on a Job's pods (*kubernetes.io/*, *k8s.io/*, job-name, controller-uid)",
        ),
    )

    annotations: Annotated[
        dict[str, Annotated[str, Field(max_length=MAX_ANNOTATION_VALUE)]],
        Field(
            max_length=MAX_ANNOTATIONS,
            description="Annotations of the ServiceAccount NAME-exporter, e.g. eks.amazonaws.com/role-arn (IRSA), "
            "iam.gke.io/gcp-service-account (GKE Workload Identity), azure.workload.identity/client-id.",
        ),
    ] = Field(default_factory=dict)
    pod_labels: Annotated[
        dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]],
        Field(
            alias="podLabels",
            max_length=MAX_POD_LABELS,
            description='Labels of the exporter pods, e.g. azure.workload.identity/use: "true" (Azure Workload '
            "Identity); the operator's own labels cannot be overridden.",
        ),
    ] = Field(default_factory=dict)


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
    memory_budget: MemoryBudget = None
    service_account: Annotated[
        ServiceAccount | None,
        Field(
            alias="serviceAccount",
            description="Workload identity of the exporter pods: annotations of their ServiceAccount, labels of "
            "the pods.",
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
