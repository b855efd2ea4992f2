"""What a run reports: per dataset, what happened; as a whole, a versioned document.

This is the contract between an exporter pod and the operator (which turns it into status, Events and metrics)
as well as what ``dsexport run -o json`` prints, so it is a model with a version: the operator must be able to
tell a result it understands from one written by another release, and reject anything else.
"""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import Field, ValidationError, field_serializer

from dsexport.engine.manifest import Model, WatermarkRange
from dsexport.errors import StateError

RESULT_VERSION: Final = 1
TERMINATION_MESSAGE_LIMIT: Final = 4096
"""What the kubelet keeps of a container's termination message."""
_SHORT_MESSAGE: Final = 160


class Outcome(StrEnum):
    exported = "exported"
    no_new_data = "no-new-data"
    already_committed = "already-committed"
    superseded = "superseded"  # another run committed first, from the same watermark (see engine.commit)
    failed = "failed"
    suspended = "suspended"


class DatasetResult(Model):
    """One dataset's export in one run."""

    dataset_export: str  # the DatasetExport's name
    dataset: str  # the Dataset's name
    dataset_id: str
    outcome: Outcome
    export_time: str | None = None
    folder: str | None = None
    records: Annotated[int, Field(ge=0)] = 0
    bytes: Annotated[int, Field(ge=0)] = 0
    files: Annotated[int, Field(ge=0)] = 0
    watermark: WatermarkRange | None = None
    message: str = ""
    # For a failure: a CamelCase cause (see dsexport.errors) and whether the same run may succeed later.
    reason: str | None = None
    transient: bool | None = None
    seconds: Annotated[float, Field(ge=0)] = 0.0

    @field_serializer("seconds")
    def _round_seconds(self, value: float) -> float:
        return round(value, 3)


class RunResult(Model):
    """Every dataset a run handled, in order; ``ok`` is false when any failed."""

    version: Literal[1] = RESULT_VERSION
    kind: Literal["RunResult"] = "RunResult"
    at: dt.datetime
    results: list[DatasetResult]
    # Results left out of a termination message that could not hold them all (0: the list is complete).
    omitted: Annotated[int, Field(ge=0)] = 0

    @property
    def ok(self) -> bool:
        return all(r.outcome != Outcome.failed for r in self.results)

    def to_json_dict(self) -> dict[str, Any]:
        return {**super().to_json_dict(), "ok": self.ok}

    def termination_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """Compact JSON of at most ``limit`` bytes, for the operator to read from the pod's status.

        When everything does not fit, messages are shortened first (failures keep their reason and transience),
        then the last results are left out and counted in ``omitted``: the document stays valid and says what
        it lacks, rather than being cut mid-way by the kubelet.
        """

        def dump(result: RunResult) -> str:
            return json.dumps(result.to_json_dict(), separators=(",", ":"))

        text = dump(self)
        if len(text.encode()) <= limit:
            return text
        short = [
            r.model_copy(update={"message": r.message[:_SHORT_MESSAGE]}) if len(r.message) > _SHORT_MESSAGE else r
            for r in self.results
        ]
        kept = len(short)
        while True:
            candidate = self.model_copy(update={"results": short[:kept], "omitted": len(short) - kept})
            text = dump(candidate)
            if len(text.encode()) <= limit or kept == 0:
                return text
            kept -= 1

    @classmethod
    def parse(cls, raw: str | bytes, *, origin: str) -> RunResult:
        """A result read back (from a pod's termination message, a log), validated before it is trusted."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise StateError(
                f"{origin} is not a dsexport RunResult version {RESULT_VERSION} ({where}: {first['msg']})"
            ) from None
