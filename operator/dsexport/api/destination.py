"""Destination: where exports go, with which credentials, in which file format."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from dsexport.api.common import (
    DURATION_PATTERN,
    FOLDER_PATTERN,
    NAME_PATTERN,
    QUANTITY_PATTERN,
    MemoryBudget,
    ObjectRef,
    Resource,
    Spec,
    parse_quantity,
    rules,
)
from dsexport.api.status import DestinationStatus


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
    path: Annotated[str, Field(min_length=1, max_length=4096, description="The folder exports go under.")]
    claim_name: Annotated[
        str | None,
        Field(
            alias="claimName",
            pattern=NAME_PATTERN,
            max_length=253,
            description="In a cluster: the PersistentVolumeClaim mounted (read-write) at path.",
        ),
    ] = None


class HealthCheck(Spec):
    interval: Annotated[
        str,
        Field(
            pattern=r"^0$|" + DURATION_PATTERN,
            max_length=32,
            description="How often the operator checks the destination with a check Job, e.g. 1h; 0 turns it off.",
        ),
    ] = "1h"


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
    byte_copy: Annotated[
        bool,
        Field(
            alias="byteCopy",
            description="parquet: copy a Parquet source file that already has this codec and the dataset's schema "
            "as it is, its bytes streamed instead of decoded and re-encoded (its row groups and statistics kept; "
            "the manifest says which parts were copied). false re-encodes every file.",
        ),
    ] = True

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
    health_check: Annotated[HealthCheck, Field(alias="healthCheck")] = Field(default_factory=HealthCheck)
    memory_budget: MemoryBudget = None


class Destination(Resource):
    kind_name = "Destination"
    plural = "destinations"
    short_names = ("dest",)
    printer_columns = (
        {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
        {"name": "Format", "type": "string", "jsonPath": ".spec.format.type"},
        {"name": "Available", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Available")].status'},
        {"name": "Used by", "type": "string", "jsonPath": ".status.usedBy"},
        {"name": "Last check", "type": "date", "jsonPath": ".status.lastCheckTime", "priority": 1},
        {
            "name": "Message",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Available")].message',
            "priority": 1,
        },
    )
    status_model = DestinationStatus

    kind: Literal["Destination"] = "Destination"
    spec: DestinationSpec
