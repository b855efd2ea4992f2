"""The commit manifest (``_manifest.json``) and the watermark state it carries, as validated models.

The manifest is both the commit point and the dataset's only memory: the next run reads its watermark back from
the destination, so a damaged, truncated or foreign file there must stop the run with a message naming the file,
never be half-trusted and never crash it. Everything read back goes through :func:`parse`.

Version 2 names the DatasetExport ``datasetExport``; version 1 (the first release) called it ``flow`` and is still
read. Keys added since do not change the version, because readers that predate them ignore unknown keys: optional
ones (``resetToken``, ``previous``) are left out when unset, and a part's ``via`` (``encode`` or ``copy``) reads
as ``encode`` when absent, which is what every part written before the byte copy was.
"""

from __future__ import annotations

import builtins
import json
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from dsexport.errors import StateError

MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
EXPORT_TIME_PATTERN = r"^[0-9]{12}$"
RESET_TOKEN_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # noqa: S105 - a pattern, not a secret


class Model(BaseModel):
    """camelCase on the wire, snake_case in code; unknown keys are ignored so a newer minor writer stays readable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class FilesState(Model):
    """Strategy ``files``: the newest modification time exported, and the paths exported within the lookback."""

    strategy: Literal["files"] = "files"
    max_modified_ns: Annotated[int, Field(ge=0)]
    max_modified: str
    recent: dict[str, int] = Field(default_factory=dict)
    # ``recent`` holds every path exported that was modified after this instant, and none before (``maxModified``
    # minus the lookback of the run that wrote it, or later): a run whose lookback was raised since must not look
    # below it, where it cannot tell exported files from others. Absent in manifests that predate it.
    recent_since_ns: Annotated[int | None, Field(exclude_if=lambda v: v is None)] = None


class ColumnState(Model):
    """Strategy ``column``: the largest cursor value exported, exact (see ``watermark``), and its Arrow type."""

    strategy: Literal["column"] = "column"
    column: str
    type: str | None = None
    value: int | float | str | bool | None = None
    display: str | None = None


WatermarkState = Annotated[FilesState | ColumnState, Field(discriminator="strategy")]


class WatermarkRange(Model):
    """What one export covers, for people: ``from`` (exclusive) and ``to`` (inclusive), as text."""

    strategy: Literal["files", "column"]
    from_: Annotated[str | None, Field(alias="from")] = None
    to: str | None = None


class PartEntry(Model):
    """A data file of the export, relative to its exportTime folder, and how it was made.

    ``via: encode``: rows decoded from the source and encoded into the part; ``via: copy``: the bytes of the source
    file ``source`` (relative to the source root), unchanged. A consumer can tell the two apart (the copy keeps the
    source's row groups and statistics) and audit a copy against its source by size and sha256. ``via:
    server-copy``: the same, copied inside the store, so no byte passed through the exporter: the part carries the
    store's entity tag (``etag``) and a sha256 only where the store computed one (Amazon S3 does).
    """

    path: Annotated[str, Field(min_length=1)]
    records: Annotated[int, Field(ge=0)]
    bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$")]
    via: Literal["encode", "copy", "server-copy"] = "encode"
    source: Annotated[str | None, Field(min_length=1, exclude_if=lambda v: v is None)] = None
    etag: Annotated[str | None, Field(min_length=1, max_length=256, exclude_if=lambda v: v is None)] = None

    @model_validator(mode="after")
    def _how_it_was_made(self) -> PartEntry:
        copied = self.via in ("copy", "server-copy")
        if copied != (self.source is not None):
            raise ValueError("a copied part names its source file, and only a copied part does")
        if (self.via == "server-copy") != (self.etag is not None):
            raise ValueError("a part copied inside the store has its entity tag, and only such a part does")
        if self.sha256 is None and self.via != "server-copy":
            raise ValueError("a part written by the exporter has its sha256")
        return self


class FileFormat(Model):
    type: Literal["parquet", "json"]
    compression: str


class SchemaField(Model):
    name: str
    type: str
    nullable: bool


class ManifestSchema(Model):
    fields: list[SchemaField]
    arrow: str  # the file schema, Arrow IPC serialised, base64


class Manifest(Model):
    version: int = MANIFEST_VERSION
    dataset_export: Annotated[
        str,
        Field(validation_alias=AliasChoices("datasetExport", "flow"), serialization_alias="datasetExport"),
    ]
    dataset: str
    dataset_id: str
    export_time: Annotated[str, Field(pattern=EXPORT_TIME_PATTERN)]
    run_id: str
    sequence: Annotated[int, Field(ge=1)]
    mode: Literal["incremental", "full"]
    backfill: bool
    reset: bool
    created_at: str
    format: FileFormat
    records: Annotated[int, Field(ge=0)]
    bytes: Annotated[int, Field(ge=0)]
    files: list[PartEntry]
    watermark: WatermarkRange
    state: WatermarkState
    schema_: Annotated[ManifestSchema, Field(alias="schema")]
    source_files: Annotated[list[str] | None, Field(exclude_if=lambda v: v is None)] = None
    # The token of the reset that started this watermark chain, carried forward by every later commit of the
    # chain, so that a retried reset is recognised as applied (see ``exporter.recover``). Absent before the first
    # reset with a token; readers that predate it ignore the key (``extra="ignore"``).
    reset_token: Annotated[str | None, Field(pattern=RESET_TOKEN_PATTERN, exclude_if=lambda v: v is None)] = None
    # The exportTime of the commit this one continues (None for the first): the link of the commit chain, whose
    # claims make at most one run commit after each commit (see ``commit``). Absent in manifests that predate it.
    previous: Annotated[str | None, Field(pattern=EXPORT_TIME_PATTERN, exclude_if=lambda v: v is None)] = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"manifest version {self.version} is not one this dsexport reads {READABLE_VERSIONS}")
        if self.records != sum(f.records for f in self.files) or self.bytes != sum(f.bytes for f in self.files):
            raise ValueError("records and bytes are not the sums over files")
        return self

    def to_bytes(self) -> builtins.bytes:
        return json.dumps(self.to_json_dict(), indent=2).encode() + b"\n"


def parse(raw: bytes, *, path: str, dataset_id: str, export_time: str | None = None) -> Manifest:
    """The manifest at ``path``, validated, and checked to belong where it was found (the dataset, and the slot
    folder: ``export_time``, None for a claim, which is not in the folder it commits)."""
    fix = (
        "it is not a manifest this dsexport can trust. If another tool wrote it, give this export another folder; "
        "if it is damaged, restore it, or remove the exportTime folder to export its rows again"
    )
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(f"{path} is not valid JSON ({_reason(e)}): {fix}") from None
    if isinstance(doc, dict) and isinstance(doc.get("version"), int) and doc["version"] > MANIFEST_VERSION:
        raise StateError(
            f"{path} was written by a newer dsexport (manifest version {doc['version']}); upgrade dsexport to read it"
        )
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'document'}: {err['msg']}" for err in e.errors()[:3]
        )
        raise StateError(f"{path} is not a valid dsexport manifest ({problems}): {fix}") from None
    if manifest.dataset_id != dataset_id or manifest.export_time != (export_time or manifest.export_time):
        raise StateError(
            f"{path} describes dataset {manifest.dataset_id!r} at exportTime {manifest.export_time}, not the folder "
            f"it is in ({dataset_id!r}, {export_time or 'any exportTime'}): {fix}"
        )
    return manifest


def _reason(e: json.JSONDecodeError | UnicodeDecodeError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return "not UTF-8 text"
