"""The storage primitives the commit protocol needs, and nothing more, so every backend can offer them.

The few helpers here are the ones every backend would otherwise write for itself, and get subtly different:
what a folder is in a listing, and how no credential value reaches a message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from dsexport.errors import AlreadyExistsError, DestinationError

__all__ = [
    "AlreadyExistsError",
    "DestinationError",
    "ServerCopy",
    "StoredObject",
    "Transport",
    "Writable",
    "folder_prefix",
    "join",
    "scrub",
]


class Writable(Protocol):
    """What a part writer needs from a destination file: sequential writes, nothing else."""

    def write(self, data: bytes | memoryview, /) -> int: ...


@dataclass(frozen=True)
class StoredObject:
    """A source file that is an object in a store, named the way the store names it: what a copy inside the store
    needs to know, and to decide whether it may (same store, same identity)."""

    scheme: str  # "s3" or "gs"
    endpoint: str | None  # e.g. "http://127.0.0.1:8333"; None: the provider's own
    bucket: str
    key: str
    size: int
    identity: str | None  # who reads the source, e.g. its access key id (not a secret); None: the ambient one


@dataclass(frozen=True)
class ServerCopy:
    """What the store says of an object it copied: its size, its entity tag, and its SHA-256 where it computes
    one (Amazon S3 does; S3-compatible stores may not)."""

    bytes: int
    etag: str
    sha256: str | None


class Transport(ABC):
    """Keys are ``/``-separated paths relative to the destination's root (a folder, a bucket, a container).

    Every failure is a DestinationError naming the Destination, ``transient`` when the store did not answer (so
    the same operation may well succeed later) and permanent when something must change first (credentials, the
    bucket, permissions, the Secret).
    """

    # How many ``open_write`` blocks a caller may run at once, each on its own thread, for parts that are ready
    # together (the byte copy's). 1 unless the backend is known to be safe with it and faster for it.
    parallel_writes: int = 1
    # Whether ``copy_local_file`` copies (else it always returns None): the byte copy then hashes the file itself.
    copies_local_files: bool = False

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location for messages, e.g. ``filesystem:/data/exports``."""

    @abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[Writable]:
        """A file that appears under ``key`` only if the block exits without error (never half-written), and is
        durable (survives a power cut) by the time a later ``put`` returns: the commit's claim is a put, so the
        parts it lists are durable before it is, and a store may batch what making them durable costs."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        """Write a small object atomically and durably; with ``create_only`` raise AlreadyExistsError if it
        exists."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of ``prefix`` (without trailing slash)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, recursively, including temporary leftovers of killed writers."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys; missing ones are not an error (a previous cleanup may have got there first)."""

    def server_copy(self, source: StoredObject, key: str) -> ServerCopy | None:
        """Copy ``source`` to ``key`` inside the store, no data bytes through this process; None when this store
        cannot (another store or identity, a source it may not read): the caller then streams the bytes. Like
        ``open_write``, ``key`` appears only complete."""
        return None

    def copy_local_file(self, source: BinaryIO, key: str) -> int | None:
        """Copy the local file open as ``source`` to ``key`` by a means faster than streaming its bytes through
        this process (the kernel's copy, on a local destination); the bytes copied, or None when this store has
        none (see ``copies_local_files``). Like ``open_write``, ``key`` appears only complete."""
        return None

    def close(self) -> None:  # noqa: B027 - most transports hold nothing to release
        """Release connections."""


def join(*parts: str) -> str:
    """Join key parts, ignoring empty ones (an empty destination folder means the root)."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def folder_prefix(prefix: str) -> str:
    """``prefix`` as an object store's listing prefix: ``a/b/``, or ``""`` for the root.

    Object stores list by name prefix, not by folder; the trailing ``/`` keeps a listing of ``a/b`` from showing
    ``a/bc``, as a folder listing would not.
    """
    folder = join(prefix)
    return f"{folder}/" if folder else ""


def scrub(text: str, *, secrets: Iterable[str]) -> str:
    """``text`` with every credential value in it replaced by ``***``.

    SDK messages may echo what was sent (a request, a header, a URL), and users paste messages into tickets, so
    whatever an SDK says goes through here before it reaches a message. Longer values go first, so a value that
    contains another (a connection string and its account key) leaves no part behind.
    """
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
