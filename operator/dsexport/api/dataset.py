"""Dataset: where a dataset's files live and how new data is found."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from dsexport.api.common import (
    DATASET_ID_PATTERN,
    DURATION_PATTERN,
    NAME_PATTERN,
    ObjectRef,
    Resource,
    Spec,
    rules,
)
from dsexport.api.status import DatasetStatus


class SourceFormat(StrEnum):
    parquet = "parquet"
    json = "json"
    csv = "csv"


class Strategy(StrEnum):
    files = "files"
    column = "column"


class Source(Spec):
    """Where the dataset's files live: a local path, ``file://``, ``s3://`` or ``gs://`` URI."""

    model_config = rules(
        (
            "!has(self.claimName) || !(self.uri.startsWith('s3://') || self.uri.startsWith('gs://'))",
            "claimName is for a local-path source (a path or file:// URI), not an object store",
        ),
    )

    uri: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="Folder of the dataset's files: a path, file://, s3://bucket/prefix or gs://bucket/prefix.",
        ),
    ]
    format: Annotated[SourceFormat, Field(description="File format: parquet, json (NDJSON) or csv.")] = (
        SourceFormat.parquet
    )
    credentials_secret_ref: Annotated[
        ObjectRef | None,
        Field(alias="credentialsSecretRef", description="Secret with credentials for an object-store source."),
    ] = None
    claim_name: Annotated[
        str | None,
        Field(
            alias="claimName",
            pattern=NAME_PATTERN,
            max_length=253,
            description="In a cluster: the PersistentVolumeClaim holding a local-path source, mounted read-only "
            "at the path.",
        ),
    ] = None


class Incremental(Spec):
    """How new data is found: new files since the watermark, or rows whose cursor column exceeds it."""

    model_config = rules(
        ("self.strategy != 'column' || has(self.column)", "column is required when strategy is column"),
        ("self.strategy == 'column' || !has(self.column)", "column is only allowed when strategy is column"),
    )

    strategy: Annotated[
        Strategy,
        Field(description="files: files added since the watermark; column: rows whose column exceeds it."),
    ] = Strategy.files
    column: Annotated[
        str | None,
        Field(min_length=1, max_length=256, description="Cursor column (strategy column); must only grow."),
    ] = None
    lookback: Annotated[
        str,
        Field(
            pattern=DURATION_PATTERN,
            max_length=32,
            description="Files that become visible late, within this window, are still exported once.",
        ),
    ] = "15m"


class DatasetSpec(Spec):
    dataset_id: Annotated[
        str | None,
        Field(
            alias="datasetId",
            pattern=DATASET_ID_PATTERN,
            max_length=128,
            description="The DATASET_ID folder at the destination; defaults to metadata.name.",
        ),
    ] = None
    source: Source
    incremental: Incremental = Field(default_factory=Incremental)


class Dataset(Resource):
    kind_name = "Dataset"
    plural = "datasets"
    short_names = ("dset",)
    printer_columns = (
        {"name": "Dataset ID", "type": "string", "jsonPath": ".spec.datasetId"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri"},
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.incremental.strategy"},
        {"name": "Used by", "type": "string", "jsonPath": ".status.usedBy"},
    )
    status_model = DatasetStatus

    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec

    @property
    def dataset_id(self) -> str:
        return self.spec.dataset_id or self.metadata.name
