"""The custom resources as typed models: the one source of truth for the CRDs, local validation and the docs.

One module per kind (``dataset``, ``destination``, ``dataset_export``) over shared types (``common``); ``cel``
evaluates the CRDs' CEL rules locally, ``loader`` reads applied YAML, ``crdgen`` and ``refdoc`` generate the CRDs
and the reference. Everything a caller needs is re-exported here, so ``api.Dataset`` names the model wherever it
lives. This layer imports nothing of the engine, the destinations or the CLI.
"""

from dsexport.api.common import (
    API_VERSION,
    DEFAULT_MEMORY_BUDGET,
    GROUP,
    VERSION,
    Metadata,
    ObjectRef,
    Resource,
    Spec,
    parse_duration_seconds,
    parse_quantity,
)
from dsexport.api.dataset import Dataset, DatasetSpec, Incremental, Partitioning, Source, SourceFormat, Strategy
from dsexport.api.dataset_export import (
    DatasetEntry,
    DatasetExport,
    DatasetExportSpec,
    Frequency,
    Mode,
    Schedule,
    ServiceAccount,
)
from dsexport.api.destination import (
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_RECORDS_PER_FILE,
    JSON_COMPRESSIONS,
    PARQUET_COMPRESSIONS,
    S3,
    AzureBlob,
    Destination,
    DestinationSpec,
    DestinationType,
    Filesystem,
    Format,
    Gcs,
    OutputFormat,
    Sftp,
)

KINDS: tuple[type[Resource], ...] = (Dataset, Destination, DatasetExport)

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_FILE_SIZE",
    "DEFAULT_MAX_RECORDS_PER_FILE",
    "DEFAULT_MEMORY_BUDGET",
    "GROUP",
    "JSON_COMPRESSIONS",
    "KINDS",
    "PARQUET_COMPRESSIONS",
    "S3",
    "VERSION",
    "AzureBlob",
    "Dataset",
    "DatasetEntry",
    "DatasetExport",
    "DatasetExportSpec",
    "DatasetSpec",
    "Destination",
    "DestinationSpec",
    "DestinationType",
    "Filesystem",
    "Format",
    "Frequency",
    "Gcs",
    "Incremental",
    "Metadata",
    "Mode",
    "ObjectRef",
    "OutputFormat",
    "Partitioning",
    "Resource",
    "Schedule",
    "ServiceAccount",
    "Sftp",
    "Source",
    "SourceFormat",
    "Spec",
    "Strategy",
    "memory_budget",
    "parse_duration_seconds",
    "parse_quantity",
]


def memory_budget(dataset_export: DatasetExport, destination: Destination) -> str:
    """The memory budget a run of ``dataset_export`` has: its own, else its Destination's, else the default."""
    return dataset_export.spec.memory_budget or destination.spec.memory_budget or DEFAULT_MEMORY_BUDGET
