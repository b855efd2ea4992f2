"""A local or mounted folder: temporary name, fsync, then rename, so a reader never sees a partial file."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from dsexport.destinations.base import AlreadyExistsError, DestinationError, Transport, Writable

TEMP_MARKER = ".tmp-"


class FilesystemTransport(Transport):
    def __init__(self, root: str | Path, name: str = "") -> None:
        self.root = Path(root)
        self.name = name or self.describe()

    def describe(self) -> str:
        return f"filesystem:{self.root}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """OS errors become DestinationErrors that name the Destination and its folder."""
        try:
            yield
        except OSError as e:
            what = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
            raise DestinationError(
                f"{self.name}: {what} (check that filesystem.path {self.root} exists and is writable)"
            ) from None

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DestinationError(f"{self.name}: key {key!r} escapes the destination folder")
        return path

    def _temp_for(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writable]:
        final = self._path(key)
        with self._errors():
            temp = self._temp_for(final)
        try:
            with temp.open("wb") as f:
                yield _SyncingFile(f)
                f.flush()
                os.fsync(f.fileno())
            temp.replace(final)
            _fsync_dir(final.parent)
        finally:
            temp.unlink(missing_ok=True)

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        final = self._path(key)
        with self._errors():
            temp = self._temp_for(final)
        try:
            with temp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if create_only:
                # link() refuses an existing target atomically, which rename() would silently replace.
                try:
                    os.link(temp, final)
                except FileExistsError:
                    raise AlreadyExistsError(f"{self.name}: {key} already exists") from None
            else:
                temp.replace(final)
            _fsync_dir(final.parent)
        finally:
            temp.unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_prefixes(self, prefix: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._path(prefix)) if e.is_dir())
        except FileNotFoundError:
            return []
        except OSError:
            with self._errors():
                raise

    def list_keys(self, prefix: str) -> Iterator[str]:
        root = self.root.resolve()
        for dirpath, _dirs, files in os.walk(self._path(prefix)):
            for name in files:
                yield Path(dirpath, name).relative_to(root).as_posix()

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        root = self.root.resolve()
        for parent in parents:
            if not parent.exists():
                continue
            _fsync_dir(parent)
            # Object stores have no empty folders; pruning them here keeps listings the same on every backend.
            folder = parent
            while folder != root and folder.is_relative_to(root):
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent


SYNC_EVERY = 32 << 20


class _SyncingFile:
    """Starts writing back every ``SYNC_EVERY`` bytes, so the fsync before the rename has little left to wait for.

    Writes arrive on the write-behind thread (``dsexport.engine.sink``): the disk then works while encoding goes on,
    where one large fsync at the end would stall the whole export. The writeback is only started, not waited for
    (POSIX_FADV_DONTNEED on the bytes just written: Linux queues their dirty pages for writeback and drops the
    clean ones, which an export never reads again), so neither the writer nor the disk waits for the other; where
    fadvise is missing, fdatasync does the same job, waiting.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._synced = 0  # bytes before this offset have had their writeback started
        self._unsynced = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self._f.write(data)
        self._unsynced += n
        if self._unsynced >= SYNC_EVERY:
            self._f.flush()
            _start_writeback(self._f.fileno(), self._synced, self._unsynced)
            self._synced += self._unsynced
            self._unsynced = 0
        return n


def _start_writeback(fd: int, offset: int, length: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    else:  # macOS: no fadvise
        os.fdatasync(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink durable: without it a power cut can undo the commit's visibility."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
