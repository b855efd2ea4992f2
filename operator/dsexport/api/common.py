"""Shared parts of the resource models: patterns, CEL-carrying specs, object metadata, quantities.

Cross-field rules are written once, in CEL, in each model's ``x-kubernetes-validations``. The API server
evaluates them from the generated CRD; local mode evaluates the very same expressions (see ``cel``), so
``kubectl apply`` and ``dsexport validate`` reject the same objects with the same message.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dsexport.api import cel

GROUP = "dsexport.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DATE_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
TIME_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
DURATION_PATTERN = r"^([0-9]+(s|m|h|d))+$"
QUANTITY_PATTERN = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|K|M|G|T)?$"
# A memory budget in Mi or Gi, at least 256Mi (what the exporter needs to plan with): the schema says so itself.
MEMORY_BUDGET_PATTERN = r"^((25[6-9]|2[6-9][0-9]|[3-9][0-9]{2}|[1-9][0-9]{3,})Mi|[1-9][0-9]*Gi)$"
DEFAULT_MEMORY_BUDGET = "400Mi"
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
            cel.check(self, [{k: str(v) for k, v in r.items()} for r in found if isinstance(r, dict)])
        return self


class ObjectRef(Spec):
    """A reference to an object in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=NAME_PATTERN)]


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
    status_model: ClassVar[type[BaseModel]]

    api_version: Annotated[Literal["dsexport.io/v1alpha1"], Field(alias="apiVersion")] = "dsexport.io/v1alpha1"
    kind: str
    metadata: Metadata


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


MemoryBudget = Annotated[
    str | None,
    Field(
        alias="memoryBudget",
        pattern=MEMORY_BUDGET_PATTERN,
        max_length=16,
        description="The most memory an exporter process may use, in Mi or Gi, at least 256Mi (default 400Mi): the "
        "exporter plans its batches, row groups and buffers from it, and in a cluster it is the pod's memory "
        "request and limit. A DatasetExport's overrides its Destination's.",
    ),
]
