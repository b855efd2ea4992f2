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


# A format's pieces, as RE2 (the API server's CEL) and Python regular expressions alike: a literal character of
# one folder level, and the directives a partition folder can carry (each a fixed field of a UTC time).
_LITERAL = "([^%/]|%%)"
_DIRECTIVE = "%[YmdHMS]"
_LEVEL = f"{_LITERAL}*{_DIRECTIVE}({_LITERAL}|{_DIRECTIVE})*"
_ANY = "([^%]|%%)*"
_TIME_PREFIX = f"{_ANY}%Y({_ANY}%m({_ANY}%d({_ANY}%H({_ANY}%M({_ANY}%S)?)?)?)?)?{_ANY}"


class Partitioning(Spec):
    """How the source's folders split it by the time data was written, so an incremental run of strategy files
    lists only the partitions that can hold new files instead of the whole history.

    Hive style is ``{key: date, format: "%Y-%m-%d"}`` for ``date=2026-12-01/`` folders; plain folders give only a
    format, one level per ``/``: ``{format: "%Y/%m/%d"}`` for ``2026/12/01/``, or ``year=%Y/month=%m/day=%d``.
    """

    model_config = rules(
        (
            "self.format.matches('^([^%]|%[YmdHMS%])*$')",
            "format may use only the directives %Y %m %d %H %M %S, and %% for a literal %",
        ),
        (
            f"self.format.matches('^{_TIME_PREFIX}$')",
            "format must be a time prefix: %Y, then optionally %m, %d, %H, %M and %S in this order, each at most "
            "once (e.g. %Y-%m-%d, %Y/%m/%d/%H)",
        ),
        (
            f"self.format.matches('^{_LEVEL}(/{_LEVEL})*$')",
            "every folder level of format (separated by single slashes, none at either end) needs a directive",
        ),
        (
            "!self.format.matches('(^|/)[_.]')",
            "a folder level of format may not start with _ or . (such folders are hidden and never listed)",
        ),
        (
            "!has(self.key) || !self.format.contains('/')",
            "with key, format is one folder level (key=value, hive style); for several levels write them all in "
            "format, e.g. year=%Y/month=%m/day=%d",
        ),
    )

    key: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
            max_length=128,
            description="Hive-style partition key: folders are named key=value, the value written with format. "
            "Leave it out for plain folders.",
        ),
    ] = None
    format: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            description="strftime format of the partition folders, in UTC: %Y, then optionally %m %d %H %M %S in "
            "this order; one folder level per '/'. Numbers may lack their leading zero (month=1) where a "
            "separator follows.",
        ),
    ]
    lateness: Annotated[
        str,
        Field(
            pattern=DURATION_PATTERN,
            max_length=32,
            description="How long after a partition's time range ends files may still land in it (uploads that "
            "finish late, a job that writes the previous hour's or day's partition); older partitions are not "
            "listed.",
        ),
    ] = "1h"


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
    partitioning: Annotated[
        Partitioning | None,
        Field(
            description="The folders' time partitioning, if any: strategy files then lists only partitions that can "
            "hold files newer than the watermark minus lookback. Without it, every run lists the whole source.",
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
