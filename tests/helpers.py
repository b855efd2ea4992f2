"""Shared test helpers: write a flow's manifests and read back every committed export."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
import yaml

from dsexport.api import loader
from dsexport.cli import local
from dsexport.destinations import Transport, join
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import DatasetResult
from dsexport.engine.sources import Source

START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def flow_yaml(
    tmp: Path,
    *,
    source: Path | str,
    dest: Path | None = None,
    destination: dict[str, Any] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
    folder: str = "out",
    fmt: str = "parquet",
    compression: str | None = None,
    strategy: str = "files",
    column: str | None = None,
    mode: str = "incremental",
    max_records: int | None = None,
    lookback: str = "15m",
    schedule: dict[str, Any] | None = None,
    source_format: str = "parquet",
    source_secret: str | None = None,
    byte_copy: bool | None = None,
) -> Path:
    """Manifests for one Dataset ``events`` exported by DatasetExport ``flow`` to Destination ``dest``.

    ``dest`` is a local folder (a filesystem Destination); or ``destination`` gives the backend part of the spec
    (type, backend block, credentialsSecretRef) and ``secrets`` the Secrets it references, by name.
    """
    incremental: dict[str, Any] = {"strategy": strategy, "lookback": lookback}
    if column:
        incremental["column"] = column
    fmt_block: dict[str, Any] = {"type": fmt}
    if compression:
        fmt_block["compression"] = compression
    if max_records:
        fmt_block["maxRecordsPerFile"] = max_records
    if byte_copy is not None:
        fmt_block["byteCopy"] = byte_copy
    if destination is None:
        assert dest is not None, "give dest (a local folder) or destination (a backend spec)"
        destination = {"type": "filesystem", "filesystem": {"path": str(dest)}}
    source_block: dict[str, Any] = {"uri": str(source), "format": source_format}
    if source_secret:
        source_block["credentialsSecretRef"] = {"name": source_secret}
    docs = [
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "events"},
            "spec": {"source": source_block, "incremental": incremental},
        },
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "Destination",
            "metadata": {"name": "dest"},
            "spec": {**destination, "folder": folder, "format": fmt_block},
        },
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "DatasetExport",
            "metadata": {"name": "flow"},
            "spec": {
                "destinationRef": {"name": "dest"},
                "datasets": [{"name": "events"}],
                "mode": mode,
                "schedule": schedule
                or {"frequency": "hourly", "interval": 3, "time": "00:00", "startDate": "2026-11-01"},
            },
        },
    ]
    for name, values in (secrets or {}).items():
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values})
    path = tmp / "flow.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def run_local(
    flow: Path,
    at: dt.datetime,
    *,
    resets: tuple[str, ...] = (),
    reset_token: str | None = None,
    export_time: str | None = None,
) -> list[DatasetResult]:
    """Every DatasetExport in ``flow`` once, in this process, as ``dsexport run --at`` would run them
    (``export_time``: as ``--export-time``, which picks the folder instead of ``at``)."""
    bundle = loader.load_files([flow])
    plan = local.requests(bundle, at=at, resets=resets, reset_token=reset_token, export_time=export_time)
    return local.run(bundle, plan)


def _transport(dest: Path | Transport) -> Transport:
    return FilesystemTransport(str(dest)) if isinstance(dest, Path) else dest


def committed(dest: Path | Transport, dataset_id: str = "events", folder: str = "out") -> list[dict[str, Any]]:
    """Manifests of committed slot folders, oldest first (``dest``: a local folder or any destination)."""
    t = _transport(dest)
    root = join(folder, dataset_id)
    manifests = []
    for slot in sorted(t.list_prefixes(root)):
        data = t.get(join(root, slot, "_manifest.json"))
        if data is not None:
            manifests.append(json.loads(data))
    return manifests


def read_committed_ids(dest: Path | Transport, dataset_id: str = "events", folder: str = "out") -> list[int]:
    """Every ``_id`` in every committed data file, checking each file against its manifest entry."""
    t = _transport(dest)
    ids: list[int] = []
    root = join(folder, dataset_id)
    for manifest in committed(t, dataset_id, folder):
        slot = join(root, f"exportTime={manifest['exportTime']}")
        for entry in manifest["files"]:
            data = t.get(join(slot, entry["path"]))
            assert data is not None, f"{entry['path']} is in the manifest but not at the destination"
            assert len(data) == entry["bytes"]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            if entry["path"].endswith(".parquet"):
                table = pq.read_table(pa.BufferReader(data))
            else:
                text = gzip.decompress(data) if entry["path"].endswith(".gz") else data
                table = (
                    pajson.read_json(pa.BufferReader(text), read_options=pajson.ReadOptions(block_size=len(text) + 1))
                    if text
                    else pa.table({"_id": pa.array([], pa.int64())})
                )
            assert table.num_rows == entry["records"]
            ids.extend(table.column("_id").to_pylist())
    return ids


def assert_only_committed_files(dest: Path | Transport, dataset_id: str = "events", folder: str = "out") -> None:
    """Every slot folder is committed and holds exactly its manifest's files and markers, every commit but the
    latest the claim on its successor, and the dataset folder the claim on the first: no leftovers of killed or
    losing runs."""
    t = _transport(dest)
    root = join(folder, dataset_id)
    manifests = {f"exportTime={m['exportTime']}": m for m in committed(t, dataset_id, folder)}
    listed: dict[str, set[str]] = {}
    for key in t.list_keys(root):
        slot, _, name = key[len(root) + 1 :].partition("/")
        listed.setdefault(slot, set()).add(name)
    if manifests:
        assert listed.pop("_first.json", None) == {""}, "the claim on the first commit is missing"
    assert set(listed) == set(manifests), f"uncommitted folders remain: {sorted(set(listed) - set(manifests))}"
    latest = max(manifests, default=None)
    for slot, names in listed.items():
        claim = {"_next.json"} if slot != latest else set()
        assert names == {f["path"] for f in manifests[slot]["files"]} | {"_manifest.json", "_SUCCESS"} | claim, slot


def source_ids(source: Path) -> list[int]:
    ids: list[int] = []
    for f in sorted(source.rglob("*.parquet")):
        ids.extend(pq.read_table(f, columns=["_id"]).column("_id").to_pylist())
    return ids


class ListingSpy:
    """Records every folder a Source lists, relative to ``root``, and whether recursively."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.calls: list[tuple[str, bool]] = []
        original = Source._list

        def spy(source: Source, folder: str, *, recursive: bool, missing_ok: bool) -> Any:
            self.calls.append((os.path.relpath(folder, root), recursive))
            return original(source, folder, recursive=recursive, missing_ok=missing_ok)

        monkeypatch.setattr(Source, "_list", spy)


class SwappedPairs:
    """Makes the calls of a function finish out of order, without sleeping: of each pair of calls (0 and 1, 2 and
    3, ...) the second finishes first, so code that runs them on several threads must put the results back in
    order itself. Each call is to be one item of ``ending(items)``: the first of a pair waits for the second
    unless the items ran out before it. Only calls on threads named ``thread_prefix`` take part: a call on the
    thread that feeds the workers would wait for a call it has yet to make."""

    def __init__(self, *, thread_prefix: str = "") -> None:
        self.thread_prefix = thread_prefix
        self.swapped = 0  # pairs whose second call finished first
        self._changed = threading.Condition()
        self._calls = 0
        self._finished: set[int] = set()
        self._items: int | None = None  # how many items there were, once they ran out

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            if not threading.current_thread().name.startswith(self.thread_prefix):
                return fn(*args, **kwargs)
            with self._changed:
                call, self._calls = self._calls, self._calls + 1
                if call % 2 == 0:
                    second = call + 1

                    def ready() -> bool:
                        return second in self._finished or (self._items is not None and second >= self._items)

                    # A deadlock guard, not a delay: the second call comes at once unless the caller is broken.
                    if not self._changed.wait_for(ready, timeout=60):
                        raise AssertionError(f"call {second} never came")
                    self.swapped += second in self._finished
            try:
                return fn(*args, **kwargs)
            finally:
                with self._changed:
                    self._finished.add(call)
                    self._changed.notify_all()

        return wrapped

    def ending(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, counted: once they run out, a call without a second one goes ahead."""
        count = 0
        for item in items:
            count += 1
            yield item
        with self._changed:
            self._items = count
            self._changed.notify_all()
