"""Destination backends behind one small interface; ``open_transport`` picks the one a Destination names."""

from __future__ import annotations

from collections.abc import Mapping

from dsexport import resources
from dsexport.destinations.base import AlreadyExistsError, DestinationError, Transport, join
from dsexport.destinations.filesystem import FilesystemTransport

__all__ = ["AlreadyExistsError", "DestinationError", "Transport", "join", "open_transport"]


def open_transport(destination: resources.Destination, credentials: Mapping[str, str]) -> Transport:
    """The transport for a Destination; credentials come from its Secret and are never logged."""
    spec = destination.spec
    if spec.type == resources.DestinationType.filesystem and spec.filesystem is not None:
        return FilesystemTransport(spec.filesystem.path)
    raise DestinationError(
        f"Destination/{destination.metadata.name}: type {spec.type.value} is not supported by this build yet"
    )
