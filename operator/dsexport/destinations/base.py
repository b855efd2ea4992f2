"""The storage primitives the commit protocol needs, and nothing more, so every backend can offer them.

The few helpers here are the ones every backend would otherwise write for itself, and get subtly different:
what a folder is in a listing, and how no credential value reaches a message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from dsexport.errors import AlreadyExistsError, DestinationError

__all__ = ["AlreadyExistsError", "DestinationError", "Transport", "Writable", "folder_prefix", "join", "scrub"]


class Writable(Protocol):
    """What a part writer needs from a destination file: sequential writes, nothing else."""

    def write(self, data: bytes | memoryview, /) -> int: ...


class Transport(ABC):
    """Keys are ``/``-separated paths relative to the destination's root (a folder, a bucket, a container).

    Every failure is a DestinationError naming the Destination, ``transient`` when the store did not answer (so
    the same operation may well succeed later) and permanent when something must change first (credentials, the
    bucket, permissions, the Secret).
    """

    # How many ``open_write`` blocks a caller may run at once, each on its own thread, for parts that are ready
    # together (the byte copy's). 1 unless the backend is known to be safe with it and faster for it.
    parallel_writes: int = 1

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location for messages, e.g. ``filesystem:/data/exports``."""

    @abstractmethod
    def open_write(self, key: str) -> AbstractContextManager[Writable]:
        """A file that appears under ``key`` only if the block exits without error (never half-written)."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        """Write a small object atomically; with ``create_only`` raise AlreadyExistsError if it exists."""

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
