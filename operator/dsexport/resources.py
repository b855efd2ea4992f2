"""The custom resources, as typed models: the one source of truth for the CRDs and for local validation.

Cross-field rules are written once, in CEL, in each model's ``x-kubernetes-validations``. The API server
evaluates them from the generated CRD; local mode evaluates the very same expressions (see ``cel_rules``), so
``kubectl apply`` and ``dsexport validate`` reject the same objects with the same message.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dsexport import cel_rules

GROUP = "dsexport.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DATE_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
TIME_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
DURATION_PATTERN = r"^([0-9]+(s|m|h|d))+$"
QUANTITY_PATTERN = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|K|M|G|T)?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
DATASET_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
FOLDER_PATTERN = r"^$|^[A-Za-z0-9_=.-]+(/[A-Za-z0-9_=.-]+)*$"


def rules(*pairs: tuple[str, str]) -> ConfigDict:
    """A model config carrying CEL rules as (expression, message) pairs, in the CRD's own vocabulary."""
    return ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]},
    )


class Spec(BaseModel):
    """Base of every spec part: unknown fields are errors (as in a structural schema) and rules are checked."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Spec:
        extra = self.model_config.get("json_schema_extra")
        if isinstance(extra, dict):
            found = extra.get("x-kubernetes-validations")
            found = found if isinstance(found, list) else []
            cel_rules.check(self, [{k: str(v) for k, v in r.items()} for r in found if isinstance(r, dict)])
        return self


class ObjectRef(Spec):
    """A reference to an object in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]


# ---------------------------------------------------------------------------------------------------- Dataset


class SourceFormat(StrEnum):
    parquet = "parquet"
    json = "json"
    csv = "csv"


class Strategy(StrEnum):
    files = "files"
    column = "column"


class Source(Spec):
    """Where the dataset's files live: a local path, ``file://``, ``s3://`` or ``gs://`` URI."""

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


# ------------------------------------------------------------------------------------------------ Destination


class DestinationType(StrEnum):
    s3 = "s3"
    gcs = "gcs"
    sftp = "sftp"
    azure_blob = "azureBlob"
    filesystem = "filesystem"


class S3(Spec):
    """Amazon S3 or an S3-compatible store. Secret keys: accessKeyId, secretAccessKey[, sessionToken]; without a
    Secret the SDK's default chain (IRSA, instance profile) is used."""

    model_config = rules(
        (
            "!has(self.kmsKeyId) || self.kmsKeyId == '' || self.serverSideEncryption == 'aws:kms'",
            "kmsKeyId needs serverSideEncryption: aws:kms",
        ),
    )

    bucket: Annotated[str, Field(min_length=3, max_length=63, description="Bucket name (no s3:// prefix).")]
    region: Annotated[str, Field(max_length=64, description="Bucket region, e.g. eu-west-1.")] = ""
    endpoint: Annotated[
        str,
        Field(max_length=2048, description="Endpoint URL of an S3-compatible store; empty for AWS."),
    ] = ""
    force_path_style: Annotated[
        bool,
        Field(alias="forcePathStyle", description="Path-style addressing (most S3-compatible stores need it)."),
    ] = False
    server_side_encryption: Annotated[
        Literal["", "AES256", "aws:kms"],
        Field(alias="serverSideEncryption", description="Server-side encryption of written objects."),
    ] = ""
    kms_key_id: Annotated[
        str,
        Field(alias="kmsKeyId", max_length=2048, description="KMS key for serverSideEncryption: aws:kms."),
    ] = ""


class Gcs(Spec):
    """Google Cloud Storage. Secret key: serviceAccountJson; without a Secret, Application Default Credentials."""

    bucket: Annotated[str, Field(min_length=3, max_length=222, description="Bucket name (no gs:// prefix).")]
    endpoint: Annotated[
        str,
        Field(max_length=2048, description="API endpoint of an emulator; empty for Google Cloud Storage."),
    ] = ""


class Sftp(Spec):
    """An SFTP server. Secret keys: password, or privateKey[, passphrase]."""

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    username: Annotated[str, Field(min_length=1, max_length=256)]
    known_hosts: Annotated[
        str,
        Field(
            alias="knownHosts",
            min_length=1,
            max_length=16384,
            description="known_hosts lines for the server (ssh-keyscan output); other host keys are refused.",
        ),
    ]


class AzureBlob(Spec):
    """Azure Blob Storage. Secret keys: connectionString, or sasToken (with accountUrl)."""

    account_url: Annotated[
        str,
        Field(alias="accountUrl", max_length=2048, description="https://ACCOUNT.blob.core.windows.net"),
    ] = ""
    container: Annotated[str, Field(min_length=3, max_length=63)]


class Filesystem(Spec):
    path: Annotated[str, Field(min_length=1, max_length=4096)]


class OutputFormat(StrEnum):
    parquet = "parquet"
    json = "json"


PARQUET_COMPRESSIONS = ("none", "snappy", "gzip", "zstd")
JSON_COMPRESSIONS = ("none", "gzip")
DEFAULT_MAX_RECORDS_PER_FILE = 5_000_000
DEFAULT_MAX_FILE_SIZE = "512Mi"


class Format(Spec):
    """The exported file format. Compression defaults to snappy for Parquet and none for JSON."""

    model_config = rules(
        (
            "!has(self.compression) || (self.type == 'parquet' ? "
            "self.compression in ['none', 'snappy', 'gzip', 'zstd'] : self.compression in ['none', 'gzip'])",
            "compression must be one of none, snappy, gzip, zstd for parquet, and none or gzip for json",
        ),
    )

    type: Annotated[OutputFormat, Field(description="parquet or json (NDJSON, one object per line).")] = (
        OutputFormat.parquet
    )
    compression: Annotated[
        Literal["none", "snappy", "gzip", "zstd"] | None,
        Field(description="parquet: none|snappy|gzip|zstd (default snappy); json: none|gzip (default none)."),
    ] = None
    max_records_per_file: Annotated[
        int | None,
        Field(
            alias="maxRecordsPerFile",
            ge=1,
            description="Start a new part file after this many records (5000000).",
        ),
    ] = None
    max_file_size: Annotated[
        Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)] | None,
        Field(
            alias="maxFileSize",
            description="Start a new part file after about this many bytes, e.g. 512Mi (the default).",
            json_schema_extra={"x-kubernetes-int-or-string": True},
        ),
    ] = None

    @property
    def effective_compression(self) -> str:
        if self.compression is not None:
            return self.compression
        return "snappy" if self.type == OutputFormat.parquet else "none"

    @property
    def effective_max_records(self) -> int:
        return self.max_records_per_file or DEFAULT_MAX_RECORDS_PER_FILE

    @property
    def effective_max_bytes(self) -> int:
        return parse_quantity(self.max_file_size if self.max_file_size is not None else DEFAULT_MAX_FILE_SIZE)


_BACKENDS = ("s3", "gcs", "sftp", "azureBlob", "filesystem")


class DestinationSpec(Spec):
    model_config = rules(
        (
            " && ".join(f"((self.type == '{b}') == has(self.{b}))" for b in _BACKENDS),
            "exactly one backend block must be set and it must match type "
            "(type: s3 needs an s3 block, type: filesystem a filesystem block, and so on)",
        ),
    )

    type: Annotated[DestinationType, Field(description="Backend; exactly the matching block must be set.")]
    s3: S3 | None = None
    gcs: Gcs | None = None
    sftp: Sftp | None = None
    azure_blob: Annotated[AzureBlob | None, Field(alias="azureBlob")] = None
    filesystem: Filesystem | None = None
    credentials_secret_ref: Annotated[
        ObjectRef | None,
        Field(alias="credentialsSecretRef", description="Secret with the backend's credentials (see docs)."),
    ] = None
    folder: Annotated[
        str,
        Field(pattern=FOLDER_PATTERN, max_length=1024, description="Folder under which DATASET_ID folders go."),
    ] = ""
    format: Format = Field(default_factory=Format)


# ---------------------------------------------------------------------------------------------- DatasetExport


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


# -------------------------------------------------------------------------------------------------- Objects


class Metadata(BaseModel):
    """The subset of ObjectMeta that dsexport reads; the rest is kept by the API server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]
    namespace: str = "default"
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None


class Resource(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[dict[str, Any], ...]] = ()

    api_version: Annotated[Literal["dsexport.io/v1alpha1"], Field(alias="apiVersion")] = "dsexport.io/v1alpha1"
    kind: str
    metadata: Metadata


class Dataset(Resource):
    kind_name = "Dataset"
    plural = "datasets"
    short_names = ("dset",)
    printer_columns = (
        {"name": "Dataset ID", "type": "string", "jsonPath": ".spec.datasetId"},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri"},
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.incremental.strategy"},
    )

    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec

    @property
    def dataset_id(self) -> str:
        return self.spec.dataset_id or self.metadata.name


class Destination(Resource):
    kind_name = "Destination"
    plural = "destinations"
    short_names = ("dest",)
    printer_columns = (
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Format", "type": "string", "jsonPath": ".spec.format.type"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    )

    kind: Literal["Destination"] = "Destination"
    spec: DestinationSpec


class DatasetExport(Resource):
    kind_name = "DatasetExport"
    plural = "datasetexports"
    short_names = ("dsx",)
    printer_columns = (
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Schedule", "type": "string", "jsonPath": ".status.schedule"},
        {"name": "Last export", "type": "date", "jsonPath": ".status.lastExportTime"},
        {"name": "Next export", "type": "date", "jsonPath": ".status.nextExportTime"},
    )

    kind: Literal["DatasetExport"] = "DatasetExport"
    spec: DatasetExportSpec


KINDS: tuple[type[Resource], ...] = (Dataset, Destination, DatasetExport)

_QUANTITY = re.compile(QUANTITY_PATTERN)
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
_UNITS["Ti"] = 2**40


def parse_quantity(value: int | str) -> int:
    """Bytes from a Kubernetes-style quantity (``512Mi``, ``1G``, ``1048576``)."""
    if isinstance(value, int):
        return value
    if not _QUANTITY.match(value):
        raise ValueError(f"not a byte quantity: {value!r} (use e.g. 512Mi or 1G)")
    digits = value.rstrip("KMGTi")
    return int(digits) * _UNITS[value[len(digits) :]]


def parse_duration_seconds(value: str) -> int:
    """Seconds from a duration such as ``15m``, ``1h30m`` or ``2d``."""
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * scale[u] for n, u in re.findall(r"([0-9]+)([smhd])", value))
