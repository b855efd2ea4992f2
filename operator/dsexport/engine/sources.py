"""Reading a Dataset's files: listing them with their modification times, and streaming record batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from dsexport import api
from dsexport.destinations import StoredObject
from dsexport.engine import partitions
from dsexport.engine.memory import MiB, Plan
from dsexport.errors import SourceError

# The most rows in a batch (fewer when rows are wide: ``memory.Plan``). Small read-ahead keeps peak memory
# bounded; throughput barely changes because decoding, not I/O, dominates on local and object-store sources alike.
BATCH_SIZE = 64 * 1024
BATCH_READAHEAD = 1
FRAGMENT_READAHEAD = 1
# A Parquet file is read through a buffered stream of this size, page by page, rather than a column chunk (which
# may hold a whole row group of millions of rows) at a time.
READ_BUFFER = 1 << 20
MIN_READ_BUFFER = 8 << 10
DEFAULT_BLOCK = 1 << 20  # Arrow's own NDJSON and CSV block
# Rows decoded to measure a Parquet row group's rows (see ``_row_bytes``).
PROBE_ROWS = 256
# A row group of at most this many batches' bytes is decoded whole by the scanner (faster), larger ones streamed.
WHOLE_ROW_GROUP = 2

log = logging.getLogger(__name__)

_EXTENSIONS: dict[api.SourceFormat, tuple[str, ...]] = {
    api.SourceFormat.parquet: (".parquet", ".parq", ".pq"),
    api.SourceFormat.json: (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz"),
    api.SourceFormat.csv: (".csv", ".csv.gz", ".tsv"),
}


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the source root, '/'-separated: stable across mounts and credentials
    size: int
    mtime_ns: int


def _filesystem(uri: str, credentials: Mapping[str, str]) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        local = uri.removeprefix("file://")
        return pafs.LocalFileSystem(), local
    try:
        if parts.scheme == "s3" and credentials:
            return pafs.S3FileSystem(**_s3_options(parts.query, credentials)), parts.netloc + parts.path
        if parts.scheme == "gs":
            return _gcs(uri, parts.query, credentials), parts.netloc + parts.path
        return pafs.FileSystem.from_uri(uri)  # type: ignore[no-any-return]
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"cannot open source {uri}: {e}", transient=_transient(e)) from None


def _query(query: str, *names: str) -> dict[str, str]:
    return {k: v for k, v in parse_qsl(query) if k in names}


def _s3_options(query: str, credentials: Mapping[str, str]) -> dict[str, Any]:
    """Keys from the Dataset's Secret; where the store is (an S3-compatible one) from the URI's query."""
    return {
        "access_key": credentials.get("accessKeyId"),
        "secret_key": credentials.get("secretAccessKey"),
        "session_token": credentials.get("sessionToken"),
        **_query(query, "endpoint_override", "region", "scheme"),
    }


def _gcs(uri: str, query: str, credentials: Mapping[str, str]) -> pafs.FileSystem:
    """Application Default Credentials (Workload Identity), or, with an ``endpoint_override``, an emulator:
    reached anonymously and over http unless the URI says ``scheme=https``."""
    if credentials:
        # pyarrow's GCS client takes no service account key, only short-lived tokens it cannot refresh.
        raise SourceError(f"cannot open source {uri}: gs:// sources take no credentials Secret; use Workload Identity")
    options = _query(query, "endpoint_override", "scheme")
    if "endpoint_override" in options:
        return pafs.GcsFileSystem(anonymous=True, **{"scheme": "http", **options})
    return pafs.GcsFileSystem(**options)


class Source:
    """One Dataset's files under a URI, in one format."""

    def __init__(self, spec: api.Source, credentials: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.fs, self.root = _filesystem(spec.uri, credentials or {})
        self.root = self.root.rstrip("/")
        self.format = spec.format
        self._identity = (credentials or {}).get("accessKeyId") or None

    def stored_object(self, file: SourceFile) -> StoredObject | None:
        """``file`` as its object store names it, for a copy inside the store; None for a local file. A gs://
        source is read by the pod's own identity (``identity`` None), an s3:// one by its Secret's key if any."""
        parts = urlsplit(self.spec.uri)
        if parts.scheme not in ("s3", "gs"):
            return None
        where = _query(parts.query, "endpoint_override", "scheme")
        host = where.get("endpoint_override")
        # An emulator behind endpoint_override is reached over http by gs:// sources (``_gcs``), https by s3://.
        default_scheme = "http" if parts.scheme == "gs" else "https"
        endpoint = f"{where.get('scheme', default_scheme)}://{host}" if host else None
        bucket, _, prefix = self.root.partition("/")
        key = f"{prefix}/{file.path}" if prefix else file.path
        return StoredObject(parts.scheme, endpoint, bucket, key, file.size, self._identity)

    def list_files(self, newer_than_ns: int | None = None) -> list[SourceFile]:
        """Data files under the root, recursively, oldest first; hidden and ``_``-prefixed names (markers, temp
        files of writers such as Spark) are skipped because they are not data or not finished.

        ``newer_than_ns`` is the run's horizon: the caller exports no file modified at or before it. With a
        declared partitioning, partitions that cannot hold such a file are then not listed at all (see
        :meth:`_walk`); the files of the partitions that are listed come back all the same, whatever their age.
        """
        extensions = _EXTENSIONS[self.format]
        prefix = len(self.root) + 1
        files = []
        for info in self._infos(newer_than_ns):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[prefix:]
            if any(part.startswith(("_", ".")) for part in rel.split("/")):
                continue
            if not rel.lower().endswith(extensions):
                continue
            files.append(SourceFile(path=rel, size=info.size, mtime_ns=info.mtime_ns))
        files.sort(key=lambda f: (f.mtime_ns, f.path))
        return files

    def _infos(self, newer_than_ns: int | None) -> Iterator[pafs.FileInfo]:
        partitioning = self.spec.partitioning
        if partitioning is None or newer_than_ns is None:
            # The first export, or no declared layout: everything, in one listing (on an object store, one
            # paginated ListObjects without a delimiter, fewer requests than a walk), held whole by pyarrow.
            return iter(self._list(self.root, recursive=True, missing_ok=False))
        return self._walk(partitions.Layout.of(partitioning), newer_than_ns)

    def _walk(self, layout: partitions.Layout, horizon_ns: int) -> Iterator[pafs.FileInfo]:
        """The files of every partition that may hold a file modified after ``horizon_ns``, level by level.

        Each folder of a partition level is listed on its own (on an object store, a delimited listing of its
        prefix): a partition whose time range, plus lateness, ends at or before the horizon is skipped with its
        whole subtree, a partition of the last level is listed recursively, and a folder whose name is not a
        partition of its level is listed fully (never dropped). Files beside partition folders are kept too.
        pyarrow's Python API returns a listing as a whole, not page by page, so what is held at once is one
        folder's listing: the partition folders of one level, or one kept partition's files.
        """
        pending = [(self.root, 0, partitions.Partition())]
        listed = pruned = 0
        while pending:
            folder, depth, parent = pending.pop()
            listed += 1
            for info in self._list(folder, recursive=False, missing_ok=depth > 0):
                if info.type != pafs.FileType.Directory:
                    yield info
                    continue
                if info.base_name.startswith(("_", ".")):
                    continue  # hidden: list_files would drop everything under it
                child = layout.child(parent, depth, info.base_name)
                if child is not None and not layout.may_hold_newer(child, horizon_ns):
                    pruned += 1
                elif child is not None and depth + 1 < layout.depth:
                    pending.append((info.path, depth + 1, child))
                else:
                    listed += 1
                    yield from self._list(info.path, recursive=True, missing_ok=True)
        log.info(  # counts only: a URI may carry credentials (s3://key:secret@bucket)
            "listed the source: %d folders, %d partitions pruned",
            listed,
            pruned,
            extra={"fields": {"phase": "list", "foldersListed": listed, "partitionsPruned": pruned}},
        )

    def _list(self, folder: str, *, recursive: bool, missing_ok: bool) -> list[pafs.FileInfo]:
        """One listing of ``folder``; a folder below the root that vanished since its parent was listed (a
        writer's temporary folder, renamed) had nothing to export."""
        selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=missing_ok)
        try:
            return self.fs.get_file_info(selector)  # type: ignore[no-any-return]
        except (FileNotFoundError, OSError) as e:
            raise SourceError(f"cannot list source {self.spec.uri}: {e}", transient=_transient(e)) from None

    def _file_format(self, paths: list[str], plan: Plan) -> pads.FileFormat:
        """The files' format. Arrow reads NDJSON and CSV in blocks that must hold whole lines, the schema from a
        file's first block: so each file's longest line is measured first (one pass over its bytes, a small cost
        next to parsing them), a line longer than the budget allows is refused, naming the file and its size,
        and the blocks are made large enough for the longest (``_text_batches`` reads rows in blocks of at least
        the batch size)."""
        if self.format == api.SourceFormat.parquet:
            return pads.ParquetFileFormat()
        longest = 0
        for path in paths:
            length = _longest_line(self.fs, path)
            if length > plan.largest_row:
                raise SourceError(
                    f"source file {path}: a line of {length / MiB:,.0f} MiB is more than a memory budget of "
                    f"{plan.budget // MiB} MiB can hold: raise memoryBudget, or write shorter lines",
                )
            longest = max(longest, length)
        block = max(DEFAULT_BLOCK, 1 << longest.bit_length())
        if self.format == api.SourceFormat.json:
            return pads.JsonFileFormat(read_options=pajson.ReadOptions(block_size=block))
        return pads.CsvFileFormat(read_options=pacsv.ReadOptions(block_size=block))

    def dataset(self, files: list[SourceFile], *, plan: Plan) -> pads.Dataset:
        """A dataset over exactly these files, so rows added while a run reads never leak into it.

        The schema unifies every file's (columns added over time, an empty file's null-typed columns,
        int32 widened to int64), instead of trusting the first file and failing or dropping columns later.
        """
        # An empty NDJSON or CSV file holds no rows (writers leave them for empty partitions), but Arrow refuses
        # it as an empty stream; it stays in the selection, so it counts as exported, and is not read.
        skip_empty = self.format in (api.SourceFormat.json, api.SourceFormat.csv)
        paths = [f"{self.root}/{f.path}" for f in files if not (skip_empty and f.size == 0)]
        try:
            factory = pads.FileSystemDatasetFactory(
                self.fs, paths, self._file_format(paths, plan), pads.FileSystemFactoryOptions()
            )
            return factory.finish(factory.inspect(promote_options="permissive"))
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"cannot read source {self.spec.uri}: {e}", transient=_transient(e)) from None

    @staticmethod
    def batches(dataset: pads.Dataset, filter_: Any = None, *, plan: Plan) -> Iterator[pa.RecordBatch]:
        """Batches in the dataset's (unified) schema, one Parquet row group (or one other file) at a time, each
        of about ``plan.batch_bytes`` decoded bytes.

        Scanning piece by piece is what bounds memory: a scanner reads ahead across files, and across row
        groups inside a file, without limit when the consumer (an encoder, an upload) is slower than the
        reader, so its peak memory grows with the data (measured in docs/benchmarks.md); piece by piece it
        stays flat at the same speed. Row groups whose statistics exclude the filter are skipped unread.
        """
        for fragment in dataset.get_fragments():
            try:
                if isinstance(fragment, pads.ParquetFileFragment):
                    yield from _parquet_batches(dataset, fragment, filter_, plan)
                else:
                    yield from _text_batches(dataset, fragment, filter_, plan)
            except (pa.ArrowException, OSError) as e:
                # A damaged file, a column whose type changed incompatibly, a store that stopped answering.
                raise SourceError(f"cannot read source file {fragment.path}: {e}", transient=_transient(e)) from None


def _parquet_batches(
    dataset: pads.Dataset, fragment: pads.ParquetFileFragment, filter_: Any, plan: Plan
) -> Iterator[pa.RecordBatch]:
    """A Parquet file's row groups (those the filter may match), each streamed page by page in batches whose
    row count follows the row group's size per row, so a row group of millions of rows or of rows of several KiB
    is never decoded whole. The dataset scanner cannot do this (it reads a row group's column chunks at once)."""
    schema = dataset.schema
    pieces = fragment.split_by_row_group(filter_, schema=schema)
    if not pieces:
        return
    # Each column is read through a buffer of its own: 1,000 columns of 1 MiB would be a gigabyte.
    buffer = max(MIN_READ_BUFFER, min(READ_BUFFER, plan.batch_bytes // max(len(schema), 1)))
    with dataset.filesystem.open_input_file(fragment.path) as handle:
        reader = pq.ParquetFile(handle, buffer_size=buffer, pre_buffer=False)
        sizes = _RowSizes(reader)
        for piece in pieces:
            [group] = piece.row_groups
            row_bytes = sizes.of(group.id, plan)
            if row_bytes > plan.largest_row:
                raise _too_large(fragment.path, reader.metadata.row_group(group.id), row_bytes, plan)
            rows = plan.rows(row_bytes=row_bytes, most=BATCH_SIZE)
            if row_bytes * group.num_rows <= WHOLE_ROW_GROUP * plan.batch_bytes:
                # Small enough to decode whole: the scanner does it on Arrow's threads, ahead of the consumer,
                # which is faster than streaming it (measured: 0.1-0.2 s of 1.4 on bench.run's Parquet export).
                yield from _piece_batches(piece, schema, filter_, rows)
                continue
            for batch in reader.iter_batches(batch_size=rows, row_groups=[group.id], use_threads=True):
                conformed = _conform(batch, schema)
                if conformed is None:  # a type the unified schema changed in a way a cast cannot follow
                    yield from _piece_batches(piece, schema, filter_, rows)
                    break
                if filter_ is not None:
                    conformed = conformed.filter(filter_)
                if conformed.num_rows:
                    yield conformed


class _RowSizes:
    """The decoded bytes per row of a Parquet file's row groups, to size their batches by.

    The footer's sizes are of the encoded pages, which for a dictionary-encoded column of strings (a few distinct
    long values) are a small fraction of the decoded values: 4 KiB strings read as 10 bytes a row. So those
    columns' first ``PROBE_ROWS`` rows of the file's first row group are decoded and measured (read again later
    with the batch size this gives: a small cost, once per file, and only for such columns), and the ratio of
    their decoded to their encoded size applies to the file's other row groups; the other columns count as the
    footer says."""

    def __init__(self, reader: pq.ParquetFile) -> None:
        self._reader = reader
        self._ratio: float | None = None  # decoded / encoded bytes of the dictionary-encoded string columns

    def of(self, group_id: int, plan: Plan) -> float:
        meta = self._reader.metadata.row_group(group_id)
        rows = max(int(meta.num_rows), 1)
        encoded = float(meta.total_byte_size) / rows
        dictionary: dict[str, float] = {}  # top-level column: its chunks' encoded bytes per row
        for i in range(meta.num_columns):
            chunk = meta.column(i)
            if chunk.physical_type == "BYTE_ARRAY" and chunk.has_dictionary_page:
                name = chunk.path_in_schema.split(".", 1)[0]
                dictionary[name] = dictionary.get(name, 0.0) + float(chunk.total_uncompressed_size) / rows
        held = sum(dictionary.values())
        if not dictionary or encoded > plan.largest_row:
            return encoded
        if self._ratio is None:
            columns = [n for n in self._reader.schema_arrow.names if n in dictionary]
            batches = self._reader.iter_batches(batch_size=PROBE_ROWS, row_groups=[group_id], columns=columns)
            probe = next(batches, None)
            decoded = float(probe.nbytes) / max(int(probe.num_rows), 1) if probe is not None else held
            self._ratio = max(1.0, decoded / held) if held else 1.0
        return encoded - held + held * self._ratio


def _too_large(path: str, group: pq.RowGroupMetaData, row_bytes: float, plan: Plan) -> SourceError:
    """Rows too large for the budget to hold even one batch of: say where, which column and how large, rather
    than be killed for running out of memory."""
    column = max(range(group.num_columns), key=lambda i: group.column(i).total_uncompressed_size)
    chunk = group.column(column)
    return SourceError(
        f"source file {path}: its rows take about {row_bytes / MiB:,.0f} MiB each decoded (column "
        f"{chunk.path_in_schema!r}: {chunk.total_uncompressed_size / max(group.num_rows, 1) / MiB:,.0f} MiB a "
        f"value), more than a memory budget of {plan.budget // MiB} MiB can hold: raise memoryBudget, or write "
        "smaller values",
    )


def _text_batches(dataset: pads.Dataset, fragment: pads.Fragment, filter_: Any, plan: Plan) -> Iterator[pa.RecordBatch]:
    """An NDJSON or CSV file's batches, read in blocks of about ``plan.batch_bytes`` of text, or of the format's
    block if larger (it holds the longest line: ``Source._file_format``)."""
    held = fragment.format.default_fragment_scan_options.read_options.block_size
    block = max(plan.batch_bytes, held)
    options: pads.FragmentScanOptions
    if isinstance(fragment.format, pads.JsonFileFormat):
        options = pads.JsonFragmentScanOptions(read_options=pajson.ReadOptions(block_size=block))
    else:
        options = pads.CsvFragmentScanOptions(read_options=pacsv.ReadOptions(block_size=block))
    # Without threads: Arrow's threaded text readers parse blocks ahead of the consumer without a bound, which for
    # blocks grown to hold long lines was the whole file (measured: a 60 MiB CSV of 3 MiB lines went past 400 MiB).
    yield from _piece_batches(fragment, dataset.schema, filter_, BATCH_SIZE, options, threads=False)


def _longest_line(filesystem: pafs.FileSystem, path: str) -> int:
    """The length in bytes of the longest line of a text file (decompressed, as the reader will see it)."""
    longest = current = 0
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(READ_BUFFER):
            lines = bytes(chunk).split(b"\n")  # split and len run in C: a pass at memory speed
            if len(lines) == 1:
                current += len(chunk)
                continue
            longest = max(longest, current + len(lines[0]), max(map(len, lines[1:-1]), default=0))
            current = len(lines[-1])
    return max(longest, current)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch | None:
    """``batch`` in the dataset's unified schema: columns in its order, missing ones null, widened types cast;
    None when a cast is not possible (then the scanner, which knows more ways, reads the row group)."""
    if batch.schema == schema:
        return batch
    arrays = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        try:
            arrays.append(column if column.type == field.type else column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _piece_batches(
    piece: pads.Fragment,
    schema: pa.Schema,
    filter_: Any,
    rows: int,
    options: pads.FragmentScanOptions | None = None,
    *,
    threads: bool = True,
) -> Iterator[pa.RecordBatch]:
    for batch in piece.to_batches(
        schema=schema,
        filter=filter_,
        batch_size=rows,
        fragment_scan_options=options,
        batch_readahead=BATCH_READAHEAD,
        fragment_readahead=FRAGMENT_READAHEAD,
        use_threads=threads,
    ):
        if batch.num_rows:
            yield batch


def _transient(error: BaseException) -> bool:
    """A network or storage hiccup may pass; a malformed file, a missing path or a refusal will not."""
    if isinstance(error, pa.ArrowException) and not isinstance(error, pa.ArrowIOError):
        return False
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError)
