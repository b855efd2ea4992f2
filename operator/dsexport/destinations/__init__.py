"""Destination backends behind one small interface, so the commit protocol is written once and never asks which
store it writes to; ``open_transport`` picks the one a Destination names.

Backends are imported on first use so a filesystem-only run does not pay for boto3, google-cloud-storage,
paramiko and the Azure SDK at start-up. Each backend module offers ``connect(name, block, credentials)``, and
raises DestinationError only, transient or permanent (see ``dsexport.errors``), so callers need no backend's
exception types.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from dsexport import api
from dsexport.destinations.base import (
    AlreadyExistsError,
    DestinationError,
    ServerCopy,
    StoredObject,
    Transport,
    join,
)
from dsexport.destinations.filesystem import FilesystemTransport

__all__ = [
    "AlreadyExistsError",
    "DestinationError",
    "ServerCopy",
    "StoredObject",
    "Transport",
    "join",
    "open_transport",
]

_MODULES = {
    api.DestinationType.s3: ("dsexport.destinations.s3", "s3"),
    api.DestinationType.gcs: ("dsexport.destinations.gcs", "gcs"),
    api.DestinationType.sftp: ("dsexport.destinations.sftp", "sftp"),
    api.DestinationType.azure_blob: ("dsexport.destinations.azure", "azure_blob"),
}


def open_transport(destination: api.Destination, credentials: Mapping[str, str]) -> Transport:
    """The transport for a Destination; credentials come from its Secret and are never logged."""
    spec = destination.spec
    name = f"Destination/{destination.metadata.name}"
    if spec.type == api.DestinationType.filesystem and spec.filesystem is not None:
        return FilesystemTransport(spec.filesystem.path, name=name)
    module_name, attr = _MODULES[spec.type]
    block = getattr(spec, attr)
    if block is None:
        raise DestinationError(f"{name}: type {spec.type.value} needs a {spec.type.value} block")
    module = importlib.import_module(module_name)
    transport: Transport = module.connect(name, block, credentials)
    return transport
