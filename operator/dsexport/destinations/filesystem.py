"""A local or mounted folder: temporary name, fsync, then rename, because a reader must never see a partial file
and a power cut must not undo a commit that was reported.

Every OSError of our own operations becomes a DestinationError naming the Destination, so callers handle one
type whatever the store; an error raised by the caller inside ``open_write`` passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from dsexport.destinations.base import AlreadyExistsError, DestinationError, Transport, Writable

TEMP_MARKER = ".tmp-"
_FOLDER_RACES = 3

# Transient or permanent, for an OSError: filesystem.path is often a network mount (NFS, SMB, a FUSE bucket mount),
# and there an I/O error, a timeout, a stale handle or a lost connection is the mount's server not answering, as
# with any other store: the next run may well succeed, so the operator retries. EIO on a local disk is a failing
# disk, which a retry will not mend, but the two cannot be told apart and a retry costs little, so EIO counts as
# transient. Everything else is permanent: EACCES/EPERM/EROFS (permissions, a read-only mount) and ENOENT/ENOTDIR
# (the folder is not there) need the spec or the volume fixed, and ENOSPC/EDQUOT (a full disk or quota) do not
# clear by themselves: retrying would write the same bytes into the same full disk, so a person must make room.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ENOLCK,
        errno.ENOTCONN,  # a FUSE mount whose daemon went away
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
    }
)


class FilesystemTransport(Transport):
    # Files under unique temporary names, each with its own descriptor: safe from several threads. Several at once
    # let parts' fsyncs, which wait on the disk, overlap each other and the next parts' writing: on bench.fastpath
    # (20 files of 6 MiB) four took 0.120 s (median 0.125), two 0.126 s (0.143), one 0.163 s (0.197). A copy from
    # an object store holds up to about 24 MiB of chunks (``bytecopy.COPY_CHUNK``), so four hold about 96 MiB.
    parallel_writes = 4
    copies_local_files = True

    def __init__(self, root: str | Path, *, name: str = "") -> None:
        self.root = Path(root)
        self.name = name or self.describe()
        # Folders with entries (a part renamed into place, a folder made) not yet durable: the next put makes them
        # so first, one fsync per folder instead of one per part (Transport.open_write).
        self._unsynced: set[Path] = set()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"filesystem:{self.root}"

    def _error(self, e: OSError) -> DestinationError:
        """A DestinationError that names the Destination and its folder, transient as ``TRANSIENT_ERRNOS`` says."""
        what = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
        return DestinationError(
            f"{self.name}: {what} (check that filesystem.path {self.root} exists and is writable)",
            transient=e.errno in TRANSIENT_ERRNOS,
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """OS errors of the block become DestinationErrors (see ``_error``)."""
        try:
            yield
        except OSError as e:
            raise self._error(e) from None

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DestinationError(f"{self.name}: key {key!r} escapes the destination folder")
        return path

    def _open_temp(self, path: Path) -> tuple[Path, BinaryIO]:
        """A new temporary file beside ``path``, its folder made if need be. Another writer's ``delete`` prunes a
        folder it empties, which may happen between the mkdir and the open: then both are done again."""
        temp = path.with_name(f".{path.name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")
        races = 0
        while True:
            self._make_folder(path.parent)
            try:
                return temp, temp.open("wb")
            except FileNotFoundError:
                races += 1
                if races == _FOLDER_RACES:
                    raise

    def _make_folder(self, folder: Path) -> None:
        """``folder`` and its missing parents; their entries in the folders above are made durable later."""
        missing = []
        while not folder.is_dir() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        if missing:
            missing[0].mkdir(parents=True, exist_ok=True)
            self._changed(*(f.parent for f in missing))

    def _changed(self, *folders: Path) -> None:
        with self._lock:
            self._unsynced.update(folders)

    def _sync_folders(self) -> None:
        """Make every entry written so far durable (see ``_unsynced``)."""
        with self._lock:
            folders, self._unsynced = self._unsynced, set()
        try:
            for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):  # deepest first
                if folder.is_dir():  # pruned since: its entries went with it
                    _fsync_dir(folder)
        except OSError:
            self._changed(*folders)
            raise

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Writable]:
        final = self._path(key)
        with self._errors():
            temp, f = self._open_temp(final)
        try:
            with f:
                yield _SyncingFile(f, fail=self._error)  # not under _errors: the caller's own errors pass unchanged
                with self._errors():
                    f.flush()
                    os.fsync(f.fileno())
            with self._errors():
                temp.replace(final)
            self._changed(final.parent)
        finally:
            with self._errors():
                temp.unlink(missing_ok=True)

    def copy_local_file(self, source: BinaryIO, key: str) -> int | None:
        """The kernel copies (``sendfile``, as ``shutil.copyfile`` does), so no byte passes through this process;
        then the same fsync and rename as ``open_write``."""
        final = self._path(key)
        with self._errors():
            temp, f = self._open_temp(final)
        try:
            with self._errors():
                with f:
                    copied = _kernel_copy(source, f)
                    f.flush()
                    os.fsync(f.fileno())
                temp.replace(final)
            self._changed(final.parent)
            return copied
        finally:
            with self._errors():
                temp.unlink(missing_ok=True)

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        final = self._path(key)
        with self._errors():
            self._sync_folders()  # what was written before is durable before this is
        races = 0
        while not self._put_once(key, final, data, create_only=create_only):
            # Another run cleaning this folder removed the temporary file before its rename (a marker or manifest
            # being published by two runs at once): write it again.
            races += 1
            if races == _FOLDER_RACES:
                raise DestinationError(f"{self.name}: {key}: its temporary file kept being removed by another writer")

    def _put_once(self, key: str, final: Path, data: bytes, *, create_only: bool) -> bool:
        """False if the temporary file was gone before it could be renamed."""
        with self._errors():
            temp, f = self._open_temp(final)
        try:
            with self._errors():
                with f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    if create_only:
                        # link() refuses an existing target atomically, which rename() would silently replace.
                        try:
                            os.link(temp, final)
                        except FileExistsError:
                            raise AlreadyExistsError(f"{self.name}: {key} already exists") from None
                    else:
                        temp.replace(final)
                except FileNotFoundError:
                    if temp.exists():  # not ours that went: the folder, or something stranger
                        raise
                    return False
                _fsync_dir(final.parent)
                return True
        finally:
            with self._errors():
                temp.unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(e) from None

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors():
            return path.is_file()

    def list_prefixes(self, prefix: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._path(prefix)) if e.is_dir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error(e) from None

    def list_keys(self, prefix: str) -> Iterator[str]:
        root = self.root.resolve()
        for dirpath, _dirs, files in os.walk(self._path(prefix)):
            for name in files:
                yield Path(dirpath, name).relative_to(root).as_posix()

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            with self._errors():
                path.unlink(missing_ok=True)
            parents.add(path.parent)
        root = self.root.resolve()
        for parent in parents:
            if not parent.exists():
                continue
            with self._errors():
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
_SENDFILE_MAX = 1 << 30


def _kernel_copy(source: BinaryIO, target: BinaryIO) -> int:
    """``source`` into ``target`` by ``sendfile`` where the kernel offers it between files, else through a
    buffer; the bytes copied."""
    copied = 0
    try:
        while sent := os.sendfile(target.fileno(), source.fileno(), copied, _SENDFILE_MAX):
            copied += sent
    except OSError as e:
        if copied or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP):
            raise
        source.seek(0)
        shutil.copyfileobj(source, target)
        return target.tell()
    return copied


class _SyncingFile:
    """Starts writing back every ``SYNC_EVERY`` bytes, so the fsync before the rename has little left to wait for.

    Writes arrive on the write-behind thread (``dsexport.engine.sink``): the disk then works while encoding goes on,
    where one large fsync at the end would stall the whole export. The writeback is only started, not waited for
    (POSIX_FADV_DONTNEED on the bytes just written: Linux queues their dirty pages for writeback and drops the
    clean ones, which an export never reads again), so neither the writer nor the disk waits for the other; where
    fadvise is missing, fdatasync does the same job, waiting.
    """

    def __init__(self, f: BinaryIO, *, fail: Callable[[OSError], DestinationError]) -> None:
        self._f = f
        self._fail = fail
        self._synced = 0  # bytes before this offset have had their writeback started
        self._unsynced = 0

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            n = self._f.write(data)
            self._unsynced += n
            if self._unsynced >= SYNC_EVERY:
                self._f.flush()
                _start_writeback(self._f.fileno(), self._synced, self._unsynced)
                self._synced += self._unsynced
                self._unsynced = 0
        except OSError as e:
            raise self._fail(e) from None
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
