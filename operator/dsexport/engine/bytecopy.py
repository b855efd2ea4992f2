"""The byte-copy fast path: a Parquet source file that already is what the encoder would write becomes a part as
it is, its bytes streamed (and hashed) instead of decoded and encoded again.

Re-encoding such a file spends CPU to write the same rows in the same format; copying costs what moving the bytes
costs. A file is copied only where a consumer could not tell its part from the encoder's, apart from row groups and
statistics:

- every row of it is exported (strategy ``files``: the ``column`` strategy filters rows and tracks a maximum);
- the source and the destination format are Parquet, and every column chunk has the destination's codec;
- its Arrow schema is the dataset's, the one the manifest records for every part (the encoder adds, drops or
  converts no column, so the dataset's schema is what it writes);
- its Parquet types are the ones the encoder writes for that schema (``writers.parquet_file_schema``): INT96
  timestamps, decimals stored as integers or legacy list layouts read back the same in Arrow, but not in every
  reader, so those files are re-encoded;
- it fits in one part (``maxRecordsPerFile``, ``maxFileSize``), and is not small (``MIN_COPY_BYTES``): one part per
  small file would turn a lake of small files into as many small parts, each with its own upload or fsync, where
  re-encoding coalesces them into few.

The decision is per file: the files that fail a condition are re-encoded together, as before, into the parts that
follow the copies, so one odd file does not cost the rest their fast path.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dsexport import api
from dsexport.destinations import ServerCopy, StoredObject, Transport, join
from dsexport.engine import writers
from dsexport.engine.sources import SourceFile
from dsexport.engine.writers import Hashed, PartFile
from dsexport.errors import SourceError

MIN_COPY_BYTES = 1 << 20
# A copied file moves in chunks, each read once and then both hashed (on a thread of its own) and written (on the
# copying thread), so the three overlap; hashing, the most CPU of the three, releases the GIL on chunks this
# large. Few large chunks: each costs a read, a write and two queue hand-offs of Python. At most COPY_AHEAD chunks
# wait for the writer and HASH_AHEAD for the hasher (mostly the same chunks), so memory stays flat whatever the file
# sizes: about (COPY_AHEAD + 3) chunks per file being copied. An object store is read through a buffer of
# OBJECT_STORE_READ, since each read there is a request of its own.
COPY_CHUNK = 4 << 20
COPY_AHEAD = 3
HASH_AHEAD = 3
OBJECT_STORE_READ = 8 << 20

# Destination compression -> the codec name in a Parquet footer.
_CODECS = {"none": "UNCOMPRESSED", "snappy": "SNAPPY", "gzip": "GZIP", "zstd": "ZSTD"}


@dataclass(frozen=True)
class CopyFile:
    """A source file to copy: where its filesystem has it, how it was listed, and its rows (from its footer)."""

    path: str
    listed: SourceFile
    records: int


class Plan:
    """Which files are copied, decided file by file as the copies start (``copies``), and the dataset of the
    others, to re-encode (``encode``, once every file is decided).

    Deciding as the copying goes lets the first copies start while later footers are read, instead of after every
    footer (about 4 ms of a 115 ms byte-copy run on the bench data).
    """

    def __init__(
        self,
        dataset: pads.Dataset,
        files: Sequence[SourceFile],
        *,
        root: str,
        fmt: api.Format,
        source_format: api.SourceFormat,
        rows_filtered: bool,
    ) -> None:
        self._dataset = dataset
        self._files = files
        self._root = root
        self._fmt = fmt
        self._refusal = _run_refusal(dataset, fmt=fmt, source_format=source_format, rows_filtered=rows_filtered)
        self._others: list[pads.Fragment] = []
        self._copied = 0
        self._decided = False
        # Why files are re-encoded, by reason, for the write phase's log line.
        self.reasons: Counter[str] = Counter()

    def copies(self) -> Iterator[CopyFile]:
        """The files to copy, in order, each decided from its listing and its footer as it is taken. The footer
        is read through a fragment of its own, so the dataset does not keep every file's metadata for the rest of
        the run."""
        if self._refusal is not None:
            self.reasons[self._refusal] += len(self._files)
            self._decided = True
            return
        dataset = self._dataset
        assert isinstance(dataset, pads.FileSystemDataset)  # _run_refusal
        expected = writers.parquet_file_schema(dataset.schema, self._fmt)
        listed = {f"{self._root}/{f.path}": f for f in self._files}
        for fragment in dataset.get_fragments():
            source = listed.get(fragment.path)
            # A fragment that matches no listed file is not one this module can reason about: the encoder reads it.
            verdict = (
                "unlisted"
                if source is None
                else _verdict(dataset, fragment.path, source, expected=expected, fmt=self._fmt)
            )
            if isinstance(verdict, str):
                self._others.append(fragment)
                self.reasons[verdict] += 1
            else:
                assert source is not None
                self._copied += 1
                yield CopyFile(fragment.path, source, verdict)
        self._decided = True

    @property
    def encode(self) -> pads.Dataset | None:
        """The files not copied, as one dataset (None when there are none), once ``copies`` has taken every file."""
        if not self._decided:
            raise RuntimeError("the files to re-encode are known once every file to copy has been taken")
        if not self._copied:
            return self._dataset
        if not self._others:
            return None
        dataset = self._dataset
        assert isinstance(dataset, pads.FileSystemDataset)
        return pads.FileSystemDataset(self._others, dataset.schema, dataset.format, dataset.filesystem)

    def log_fields(self) -> dict[str, object]:
        reasons = ",".join(f"{k}:{n}" for k, n in sorted(self.reasons.items()))
        return {"copiedFiles": self._copied, "encodedFiles": sum(self.reasons.values()), "encodeReasons": reasons}


def _run_refusal(
    dataset: pads.Dataset, *, fmt: api.Format, source_format: api.SourceFormat, rows_filtered: bool
) -> str | None:
    """Why no file of this run can be copied, if none can."""
    if not fmt.byte_copy:
        return "disabled"
    if source_format != api.SourceFormat.parquet or fmt.type != api.OutputFormat.parquet:
        return "format"
    if rows_filtered:
        return "rowFilter"
    if not isinstance(dataset, pads.FileSystemDataset) or not isinstance(dataset.format, pads.ParquetFileFormat):
        return "dataset"
    return None


def _verdict(
    dataset: pads.FileSystemDataset, path: str, listed: SourceFile, *, expected: pq.ParquetSchema, fmt: api.Format
) -> int | str:
    """The file's record count if it can be copied, else the reason it is re-encoded (a word for the log).

    A footer that cannot be read is left to the encoder, which reports it as it always has (a damaged file, a
    store that stopped answering), so the fast path adds no failure of its own.
    """
    if listed.size < MIN_COPY_BYTES:
        return "small"
    if listed.size > fmt.effective_max_bytes:
        return "maxFileSize"
    try:
        fragment = dataset.format.make_fragment(path, dataset.filesystem, file_size=listed.size)
        metadata = fragment.metadata
        schema = fragment.physical_schema
    except (pa.ArrowException, OSError):
        return "unreadable"
    records = int(metadata.num_rows)
    if records == 0:
        return "empty"  # re-encoding writes no part for it, and a copy would be a part without rows
    if records > fmt.effective_max_records:
        return "maxRecordsPerFile"
    if records != sum(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)):
        return "unreadable"
    if not schema.equals(dataset.schema):
        return "schema"
    if not _same_parquet_types(metadata.schema, expected):
        return "parquetTypes"
    if not _all_chunks_use(metadata, _CODECS[fmt.effective_compression]):
        return "codec"
    return records


def _same_parquet_types(found: pq.ParquetSchema, expected: pq.ParquetSchema) -> bool:
    """Same leaf columns: types, logical types, repetition, levels, and paths (which ``equals`` leaves out)."""
    if not found.equals(expected):
        return False
    return all(found.column(i).path == expected.column(i).path for i in range(len(expected)))


def _all_chunks_use(metadata: pq.FileMetaData, codec: str) -> bool:
    """Every column chunk of every row group compressed with ``codec``: writers may compress columns differently."""
    for r in range(metadata.num_row_groups):
        group = metadata.row_group(r)
        if any(group.column(c).compression != codec for c in range(group.num_columns)):
            return False
    return True


def copy_parts(
    copies: Iterable[CopyFile],
    *,
    dataset: pads.Dataset,
    fmt: api.Format,
    transport: Transport,
    folder: str,
    run_id: str,
    on_records: Callable[[int], None] | None = None,
    stored: Callable[[SourceFile], StoredObject | None] = lambda _: None,
) -> list[PartFile]:
    """Each file of ``copies`` into a part of its own, numbered from 0 in order; the next file is taken from
    ``copies`` when a copy can start.

    For each file a reader thread reads it (from ``dataset``'s filesystem, local or an object store) in
    ``COPY_CHUNK`` chunks, a hash thread hashes them and the copying thread writes them through the transport, so
    the three overlap; a few chunks wait (``COPY_AHEAD``, ``HASH_AHEAD``), so memory stays flat whatever the file
    sizes. Up to the transport's
    ``parallel_writes`` files are copied at once. After a failure no new file is started, the ones under way
    finish, and the first failure (in file order) is raised: parts already written are leftovers that the next
    run of the slot removes, as with any failed run.

    A file that is an object in the destination's own store (``stored``), readable by the destination's
    identity, is copied inside the store instead (``Transport.server_copy``): no data byte passes through here.
    """
    assert isinstance(dataset, pads.FileSystemDataset)
    filesystem = dataset.filesystem

    def copy(index: int, item: CopyFile) -> PartFile:
        name = writers.part_name(index, run_id, fmt)
        source = stored(item.listed)
        done = None if source is None else transport.server_copy(source, join(folder, name))
        if done is not None:
            return _copied_in_store(done, item, transport=transport, folder=folder, name=name)
        if isinstance(filesystem, pafs.LocalFileSystem) and transport.copies_local_files:
            return _copied_by_kernel(item, transport=transport, folder=folder, name=name)
        with _FileReader(filesystem, item) as reader:
            return writers.copy_part(
                reader.pieces(),
                origin=item.listed.path,
                size=item.listed.size,
                records=item.records,
                transport=transport,
                folder=folder,
                name=name,
            )

    workers = max(1, transport.parallel_writes)
    parts: list[PartFile] = []
    # Threads start with the first copy: a run that copies nothing starts none.
    with ThreadPoolExecutor(workers, thread_name_prefix="dsexport-copy") as pool:
        in_flight: deque[tuple[Future[PartFile], CopyFile]] = deque()
        try:
            for index, item in enumerate(copies):
                if len(in_flight) == workers:
                    parts.append(_done(*in_flight.popleft(), on_records))
                in_flight.append((pool.submit(copy, index, item), item))
            while in_flight:
                parts.append(_done(*in_flight.popleft(), on_records))
        finally:
            for future, _ in in_flight:  # after a failure: let the parts under way finish, start no other
                future.cancel()
            wait([future for future, _ in in_flight])
    return parts


def _copied_in_store(done: ServerCopy, item: CopyFile, *, transport: Transport, folder: str, name: str) -> PartFile:
    """The part the store copied; one whose size is not the listed size was copied from a file that changed after
    its footer was checked, so it is removed and the run fails, transiently (as the byte stream does)."""
    if done.bytes != item.listed.size:
        transport.delete([join(folder, name)])
        raise SourceError(
            f"source file {item.listed.path} changed while it was exported ({done.bytes} bytes, listed with "
            f"{item.listed.size}); source files must not change once visible",
            transient=True,
        )
    return PartFile(
        name, item.records, done.bytes, done.sha256, via="server-copy", source=item.listed.path, etag=done.etag
    )


def _copied_by_kernel(item: CopyFile, *, transport: Transport, folder: str, name: str) -> PartFile:
    """A local file copied by the kernel to a local destination (``Transport.copy_local_file``) while another
    thread hashes it from the page cache, mapped, not read: the two overlap on two cores, and no byte is copied
    through Python, which brings the byte copy close to ``cp``. As with the stream, a file whose size is not the
    listed size changed since its footer was checked: the part is removed and the run fails, transiently."""
    hashed: list[str | OSError | ValueError] = []

    def hash_file(source: BinaryIO) -> None:
        try:
            with mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                hashed.append(hashlib.sha256(mapped).hexdigest())
        except (OSError, ValueError) as e:  # ValueError: a file emptied since it was listed
            hashed.append(e)

    try:
        with open(item.path, "rb") as source:  # noqa: PTH123 - one descriptor, for the kernel's copy and the map
            hasher = threading.Thread(target=hash_file, args=(source,), name="dsexport-copy-hash", daemon=True)
            hasher.start()
            try:
                copied = transport.copy_local_file(source, join(folder, name))
            finally:
                hasher.join()
    except OSError as e:
        raise _read_error(item.listed, e) from None
    [digest] = hashed
    if isinstance(digest, OSError):
        transport.delete([join(folder, name)])
        raise _read_error(item.listed, digest)
    if copied != item.listed.size or not isinstance(digest, str):
        transport.delete([join(folder, name)])
        raise SourceError(
            f"source file {item.listed.path} changed while it was exported ({copied} bytes, listed with "
            f"{item.listed.size}); source files must not change once visible",
            transient=True,
        )
    return PartFile(name, item.records, copied, digest, via="copy", source=item.listed.path)


def _done(future: Future[PartFile], item: CopyFile, on_records: Callable[[int], None] | None) -> PartFile:
    part = future.result()
    if on_records is not None:
        on_records(item.records)
    return part


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _FileReader:
    """Reads one file on a thread of its own, started at once, at most ``COPY_AHEAD`` chunks ahead of the writer,
    and hashes it on another, at most ``HASH_AHEAD`` chunks behind the reader; ``pieces()`` yields the chunks and
    then the file's ``Hashed``, and re-raises the reader's error.

    Hashing on its own thread lets the writer write (and then flush the part to storage) without waiting for the
    hash: on two cores, SHA-256 costs more CPU than reading and writing the same bytes together.
    """

    def __init__(self, filesystem: pafs.FileSystem, item: CopyFile) -> None:
        self._filesystem = filesystem
        self._item = item
        self._queue: queue.Queue[bytes | Hashed | _Failed] = queue.Queue(maxsize=COPY_AHEAD)
        self._to_hash: queue.Queue[bytes | None] = queue.Queue(maxsize=HASH_AHEAD)
        self._digest = hashlib.sha256()
        self._stopped = threading.Event()
        self._hasher = threading.Thread(target=self._hash, name="dsexport-copy-hash", daemon=True)
        self._reader = threading.Thread(target=self._read, name="dsexport-copy-read", daemon=True)
        self._hasher.start()
        self._reader.start()

    def _read(self) -> None:
        try:
            # compression=None: the default guesses a codec from the name and would decompress a .gz file.
            local = isinstance(self._filesystem, pafs.LocalFileSystem)
            buffer = None if local else OBJECT_STORE_READ
            with self._filesystem.open_input_stream(self._item.path, compression=None, buffer_size=buffer) as stream:
                while not self._stopped.is_set() and (chunk := stream.read(COPY_CHUNK)):
                    self._to_hash.put(chunk)
                    self._queue.put(chunk)
            self._queue.put(Hashed(self._sha256))
        except (pa.ArrowException, OSError) as e:
            self._queue.put(_Failed(_read_error(self._item.listed, e)))
        except BaseException as e:  # re-raised in the writer's thread
            self._queue.put(_Failed(e))
        finally:
            self._to_hash.put(None)

    def _hash(self) -> None:
        while (chunk := self._to_hash.get()) is not None:
            self._digest.update(chunk)

    def _sha256(self) -> str:
        """The file's SHA-256, once the hasher has taken every chunk read (the reader ended with the file)."""
        self._hasher.join()
        return self._digest.hexdigest()

    def pieces(self) -> Iterator[bytes | Hashed]:
        while True:
            piece = self._queue.get()
            if isinstance(piece, _Failed):
                raise piece.error
            yield piece
            if isinstance(piece, Hashed):
                return

    def close(self) -> None:
        """Stop reading (a no-op once the file is read) and wait for both threads."""
        self._stopped.set()
        while self._reader.is_alive():  # unblock a reader waiting on a full queue, then let it see `stopped`
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._reader.join()
        self._hasher.join()  # the reader's last act was to tell it to stop

    def __enter__(self) -> _FileReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read_error(listed: SourceFile, error: BaseException) -> SourceError:
    """As the encoder's reads report it (``sources``): a store that stopped answering may come back, a missing or
    forbidden file will not."""
    transient = isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError)
    return SourceError(f"cannot read source file {listed.path}: {error}", transient=transient)
