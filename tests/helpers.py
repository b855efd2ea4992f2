"""Shared test helpers: write a flow's manifests and read back every committed export."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import yaml

START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def flow_yaml(
    tmp: Path,
    *,
    source: Path,
    dest: Path,
    fmt: str = "parquet",
    compression: str | None = None,
    strategy: str = "files",
    column: str | None = None,
    mode: str = "incremental",
    max_records: int | None = None,
    lookback: str = "15m",
    schedule: dict[str, Any] | None = None,
    source_format: str = "parquet",
) -> Path:
    incremental: dict[str, Any] = {"strategy": strategy, "lookback": lookback}
    if column:
        incremental["column"] = column
    fmt_block: dict[str, Any] = {"type": fmt}
    if compression:
        fmt_block["compression"] = compression
    if max_records:
        fmt_block["maxRecordsPerFile"] = max_records
    docs = [
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "events"},
            "spec": {"source": {"uri": str(source), "format": source_format}, "incremental": incremental},
        },
        {
            "apiVersion": "dsexport.io/v1alpha1",
            "kind": "Destination",
            "metadata": {"name": "dest"},
            "spec": {
                "type": "filesystem",
                "filesystem": {"path": str(dest)},
                "folder": "out",
                "format": fmt_block,
            },
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
    path = tmp / "flow.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def committed(dest: Path, dataset_id: str = "events", folder: str = "out") -> list[dict[str, Any]]:
    """Manifests of committed slot folders, oldest first."""
    root = dest / folder / dataset_id
    if not root.exists():
        return []
    return [json.loads(m.read_text()) for m in sorted(root.glob("exportTime=*/_manifest.json"))]


def read_committed_ids(dest: Path, dataset_id: str = "events", folder: str = "out") -> list[int]:
    """Every ``_id`` in every committed data file, checking each file against its manifest entry."""
    ids: list[int] = []
    root = dest / folder / dataset_id
    for manifest in committed(dest, dataset_id, folder):
        slot = root / f"exportTime={manifest['exportTime']}"
        for entry in manifest["files"]:
            data = (slot / entry["path"]).read_bytes()
            assert len(data) == entry["bytes"]
            if entry["path"].endswith(".parquet"):
                table = pq.read_table(pa.BufferReader(data))
            else:
                text = gzip.decompress(data) if entry["path"].endswith(".gz") else data
                table = pajson.read_json(pa.BufferReader(text)) if text else pa.table({"_id": pa.array([], pa.int64())})
            assert table.num_rows == entry["records"]
            ids.extend(table.column("_id").to_pylist())
    return ids


def source_ids(source: Path) -> list[int]:
    ids: list[int] = []
    for f in sorted(source.rglob("*.parquet")):
        ids.extend(pq.read_table(f, columns=["_id"]).column("_id").to_pylist())
    return ids
