"""Example documents and the invalid/valid variants of each CEL rule, shared by local and API-server tests.

The same INVALID cases run against the models (``dsexport validate``) and against a real API server, so the two
can never disagree about which documents are refused and with which message.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from dsexport.api import (
    S3,
    Dataset,
    DatasetExport,
    DatasetExportSpec,
    Destination,
    DestinationSpec,
    Format,
    Incremental,
    Partitioning,
    Schedule,
    ServiceAccount,
    Source,
)

DATASET: dict[str, Any] = yaml.safe_load(
    """
apiVersion: dsexport.io/v1alpha1
kind: Dataset
metadata: {name: web-events}
spec:
  datasetId: 6a1f0c2e9d3b4e00
  source: {uri: file:///data/lake/web_events, format: parquet, credentialsSecretRef: {name: lake-creds}}
  incremental: {strategy: files, lookback: 15m}
"""
)
DESTINATION: dict[str, Any] = yaml.safe_load(
    """
apiVersion: dsexport.io/v1alpha1
kind: Destination
metadata: {name: marketing-s3}
spec:
  type: s3
  s3: {bucket: acme-exports, region: us-east-1, endpoint: "", forcePathStyle: false}
  credentialsSecretRef: {name: s3-creds}
  folder: marketing/exports
  format: {type: parquet, compression: snappy, maxRecordsPerFile: 5000000, maxFileSize: 512Mi}
"""
)
DATASET_EXPORT: dict[str, Any] = yaml.safe_load(
    """
apiVersion: dsexport.io/v1alpha1
kind: DatasetExport
metadata: {name: marketing-daily}
spec:
  destinationRef: {name: marketing-s3}
  datasets:
    - name: web-events
    - name: orders
      schedule: {frequency: hourly, interval: 3, time: "00:00", startDate: "2026-12-01"}
  mode: incremental
  schedule: {frequency: daily, time: "09:30", startDate: "2026-12-01", endDate: "2027-06-01"}
  suspend: false
"""
)


def rules_of(model: type[BaseModel]) -> list[dict[str, str]]:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    found = extra["x-kubernetes-validations"]
    assert isinstance(found, list)
    return [{"rule": str(r["rule"]), "message": str(r["message"])} for r in found if isinstance(r, dict)]


def message(model: type[BaseModel], index: int = 0) -> str:
    return rules_of(model)[index]["message"]


def edited(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of document with the dotted path set to value (or removed, for ``...``)."""
    doc = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = doc
    for step in parents:
        node = node[int(step)] if isinstance(node, list) else node[step]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


def _with_column(strategy: str, column: str | None) -> dict[str, Any]:
    incremental: dict[str, Any] = {"strategy": strategy}
    if column is not None:
        incremental["column"] = column
    return edited(DATASET, "spec.incremental", incremental)


def _partitioned(fmt: str, key: str | None = None) -> dict[str, Any]:
    block = {"format": fmt} if key is None else {"key": key, "format": fmt}
    return edited(DATASET, "spec.source.partitioning", block)


INVALID = [
    pytest.param(
        Dataset,
        edited(edited(DATASET, "spec.source.uri", "s3://lake/web_events"), "spec.source.claimName", "lake"),
        message(Source),
        id="claim-for-an-object-store-source",
    ),
    pytest.param(
        Destination,
        edited(edited(DESTINATION, "spec.s3", ...), "spec.filesystem", {"path": "/exports"}),
        message(DestinationSpec),
        id="s3-type-with-filesystem-block",
    ),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec.filesystem", {"path": "/exports"}),
        message(DestinationSpec),
        id="two-backend-blocks",
    ),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec.s3", ...),
        message(DestinationSpec),
        id="no-backend-block",
    ),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.schedule.interval", 6),
        message(Schedule, 0),
        id="interval-with-daily",
    ),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.datasets.1.schedule.interval", ...),
        message(Schedule, 1),
        id="hourly-without-interval",
    ),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.schedule", {"frequency": "once", "time": "09:30"}),
        message(Schedule, 2),
        id="once-without-startDate",
    ),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.schedule.endDate", "2026-11-30"),
        message(Schedule, 3),
        id="endDate-before-startDate",
    ),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.schedule.endDate", "2026-12-01"),
        message(Schedule, 3),
        id="endDate-equal-to-startDate",
    ),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec.format", {"type": "json", "compression": "snappy"}),
        message(Format),
        id="snappy-with-json",
    ),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec.format", {"type": "json", "compression": "zstd"}),
        message(Format),
        id="zstd-with-json",
    ),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec.s3.kmsKeyId", "alias/exports"),
        message(S3),
        id="kmsKeyId-without-aws-kms",
    ),
    pytest.param(Dataset, _partitioned("%Y-%j"), message(Partitioning, 0), id="partitioning-unknown-directive"),
    pytest.param(Dataset, _partitioned("%Y-%d"), message(Partitioning, 1), id="partitioning-not-a-time-prefix"),
    pytest.param(Dataset, _partitioned("%Y//%m"), message(Partitioning, 2), id="partitioning-empty-level"),
    pytest.param(Dataset, _partitioned("%Y/_%m"), message(Partitioning, 3), id="partitioning-hidden-level"),
    pytest.param(
        Dataset, _partitioned("%Y/%m", key="date"), message(Partitioning, 4), id="partitioning-key-two-levels"
    ),
    pytest.param(Dataset, _with_column("column", None), message(Incremental, 0), id="column-strategy-no-column"),
    pytest.param(Dataset, _with_column("files", "updated_at"), message(Incremental, 1), id="column-with-files"),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.datasets", [{"name": "orders"}, {"name": "web-events"}, {"name": "orders"}]),
        message(DatasetExportSpec),
        id="duplicate-dataset-names",
    ),
]


def _identity(*, annotations: dict[str, str] | None = None, pod_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The design DatasetExport with a ``spec.serviceAccount`` holding what is given."""
    block: dict[str, Any] = {}
    if annotations is not None:
        block["annotations"] = annotations
    if pod_labels is not None:
        block["podLabels"] = pod_labels
    return edited(DATASET_EXPORT, "spec.serviceAccount", block)


_IRSA = {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/dsexport-marketing-daily"}

INVALID += [
    pytest.param(
        DatasetExport,
        _identity(annotations={"Example.com/x": "1"}),
        message(ServiceAccount, 0),
        id="annotation-key-upper-case-prefix",
    ),
    pytest.param(
        DatasetExport,
        _identity(annotations={"a/b/c": "1"}),
        message(ServiceAccount, 0),
        id="annotation-key-two-slashes",
    ),
    pytest.param(
        DatasetExport,
        _identity(annotations={"x" * 64: "1"}),
        message(ServiceAccount, 0),
        id="annotation-key-name-too-long",
    ),
    pytest.param(
        DatasetExport,
        _identity(annotations={"-role": "1"}),
        message(ServiceAccount, 0),
        id="annotation-key-starts-with-dash",
    ),
    pytest.param(
        DatasetExport,
        _identity(annotations={"app.kubernetes.io/instance": "other"}),
        message(ServiceAccount, 1),
        id="annotation-app-kubernetes-io",
    ),
    pytest.param(
        DatasetExport,
        _identity(annotations={"dsexport.io/run-now": "1"}),
        message(ServiceAccount, 1),
        id="annotation-dsexport-io",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"azure workload": "true"}),
        message(ServiceAccount, 2),
        id="pod-label-key-with-space",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"a" * 254 + "/use": "true"}),
        message(ServiceAccount, 2),
        id="pod-label-key-prefix-too-long",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"app.kubernetes.io/component": "x"}),
        message(ServiceAccount, 3),
        id="pod-label-app-kubernetes-io",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"dsexport.io/schedule": "x"}),
        message(ServiceAccount, 3),
        id="pod-label-dsexport-io",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"batch.kubernetes.io/job-name": "x"}),
        message(ServiceAccount, 3),
        id="pod-label-batch-kubernetes-io",
    ),
    pytest.param(
        DatasetExport, _identity(pod_labels={"job-name": "x"}), message(ServiceAccount, 3), id="pod-label-job-name"
    ),
]

INVALID_SCHEMA = [
    pytest.param(
        DatasetExport,
        _identity(annotations={f"example.com/a{i}": "1" for i in range(17)}),
        "spec.serviceAccount.annotations",
        id="too-many-annotations",
    ),
    pytest.param(
        DatasetExport,
        _identity(annotations={"example.com/a": "x" * 2049}),
        "spec.serviceAccount.annotations",
        id="annotation-value-too-long",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"team": "x" * 64}),
        "spec.serviceAccount.podLabels",
        id="pod-label-value-too-long",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"team": "data team"}),
        "spec.serviceAccount.podLabels",
        id="pod-label-value-with-space",
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={f"example.com/l{i}": "x" for i in range(17)}),
        "spec.serviceAccount.podLabels",
        id="too-many-pod-labels",
    ),
]
"""Refused by the schema (sizes, patterns) rather than by CEL: the API server names the field, pydantic its path."""


VALID = [
    pytest.param(Dataset, _partitioned("%Y-%m-%d", key="date"), id="partitioning-hive"),
    pytest.param(Dataset, _partitioned("year=%Y/month=%m/day=%d/hour=%H"), id="partitioning-folders"),
    pytest.param(Dataset, _with_column("column", "updated_at"), id="column-strategy-with-column"),
    pytest.param(Dataset, edited(DATASET, "spec.incremental", ...), id="incremental-defaulted"),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec", {"type": "filesystem", "filesystem": {"path": "/x"}}),
        id="filesystem",
    ),
    pytest.param(
        Destination,
        edited(DESTINATION, "spec.format", {"type": "json", "compression": "gzip"}),
        id="json-gzip",
    ),
    pytest.param(Destination, edited(DESTINATION, "spec.format", {"type": "json"}), id="json-default"),
    pytest.param(Destination, edited(DESTINATION, "spec.format.maxFileSize", 1048576), id="int-file-size"),
    pytest.param(
        DatasetExport,
        edited(DATASET_EXPORT, "spec.schedule", {"frequency": "once", "startDate": "2026-12-01"}),
        id="once-with-startDate",
    ),
    pytest.param(DatasetExport, edited(DATASET_EXPORT, "spec.schedule.startDate", ...), id="endDate-alone"),
    pytest.param(DatasetExport, _identity(annotations=_IRSA), id="irsa-annotation"),
    pytest.param(
        DatasetExport,
        _identity(
            annotations={"iam.gke.io/gcp-service-account": "exporter@acme.iam.gserviceaccount.com"},
            pod_labels={"azure.workload.identity/use": "true", "team": "data", "empty": ""},
        ),
        id="gke-annotation-and-azure-pod-label",
    ),
    pytest.param(
        DatasetExport, _identity(annotations={"x" * 63: "1", "a" * 253 + "/" + "b" * 63: "v" * 2048}), id="longest-keys"
    ),
    pytest.param(
        DatasetExport, _identity(annotations={f"example.com/a{i}": "1" for i in range(16)}), id="16-annotations"
    ),
    pytest.param(
        DatasetExport,
        _identity(pod_labels={"notdsexport.io/x": "1", "kubernetes.io-like/x": "1"}),
        id="lookalike-prefixes",
    ),
    pytest.param(DatasetExport, _identity(), id="empty-service-account"),
]
