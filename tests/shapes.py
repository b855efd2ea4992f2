"""Source shapes that strain memory, as lakes written by Spark and other tools have them: the memory budget's test
cases (tests/guarantees/test_memory_budget.py) and benchmark (bench/memory.py).

Each writes one or more files holding ``_id`` 0..rows-1 (so an export can be checked row by row) into a folder,
deterministically, and returns the rows. Sizes are parameters: the tests use sizes that a run without the memory
plan could not hold under the budget, the benchmark larger ones.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

Shape = Callable[[Path, int], int]


def one_row_group(folder: Path, rows: int) -> int:
    """One Parquet file whose rows are all in a single row group, four flat columns."""
    return one_row_group_file(folder, rows, row_group_rows=rows)


def one_row_group_file(folder: Path, rows: int, *, row_group_rows: int) -> int:
    """One Parquet file of four flat columns, in row groups of ``row_group_rows``."""
    rng = np.random.default_rng(1)
    table = pa.table(
        {
            "_id": np.arange(rows),
            "value": rng.random(rows),
            "kind": rng.integers(0, 1000, rows),
            "at": np.arange(rows).astype("datetime64[ms]"),
        }
    )
    _write_parquet(folder, table, row_group_size=row_group_rows)
    return rows


def wide_rows(folder: Path, rows: int) -> int:
    """Rows of about 4 KiB (a long string each), in one row group: small on disk (they compress), large decoded."""
    rng = np.random.default_rng(2)
    tokens = [f"{rng.integers(0, 1 << 62):016x}" for _ in range(64)]
    values = pa.array(["".join(tokens[(i + j) % 64] for j in range(256)) for i in range(1000)])
    payload = values.take(pa.array(rng.integers(0, 1000, rows)))
    _write_parquet(folder, pa.table({"_id": np.arange(rows), "payload": payload}), row_group_size=rows)
    return rows


def many_columns(folder: Path, rows: int, columns: int = 1000, row_group_rows: int = 5_000) -> int:
    """1,000 columns of numbers and short strings, in row groups of ``row_group_rows`` (a reader holds a page of
    every column at once, and such a row group's column chunks are one page each: 5,000 rows make row groups of
    about 27 MiB, as a writer with a 32 MiB block size writes them)."""
    rng = np.random.default_rng(3)
    data: dict[str, pa.Array] = {"_id": pa.array(np.arange(rows))}
    for c in range(columns - 1):
        data[f"c{c:04d}"] = pa.array(rng.random(rows)) if c % 2 else pa.array(rng.integers(0, 100, rows).astype(str))
    _write_parquet(folder, pa.table(data), row_group_size=row_group_rows)
    return rows


def nested(folder: Path, rows: int) -> int:
    """Deeply nested lists and maps: list<struct<tags: list<map<string, list<int64>>>, score: double>>."""
    rng = np.random.default_rng(4)
    item = pa.struct([("tags", pa.list_(pa.map_(pa.string(), pa.list_(pa.int64())))), ("score", pa.float64())])
    values = [
        [
            {
                "tags": [[(f"k{k}", list(range(int(n) % 7))) for k in range(int(n) % 4)] for _ in range(3)],
                "score": float(n),
            }
            for n in rng.integers(0, 50, 4)
        ]
        for _ in range(min(rows, 2000))
    ]
    pattern = pa.array(values, type=pa.list_(item))
    column = pattern.take(pa.array(np.arange(rows) % len(values)))
    _write_parquet(folder, pa.table({"_id": np.arange(rows), "items": column}), row_group_size=rows)
    return rows


def long_lines_ndjson(folder: Path, rows: int, line_bytes: int = 3 << 20, every: int = 50) -> int:
    """NDJSON whose every ``every``-th line carries a string of ``line_bytes`` (beyond Arrow's default 1 MiB
    block), the others short."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "part.json").open("w") as f:
        for i in range(rows):
            text = "x" * line_bytes if i % every == 0 else f"row {i}"
            f.write(json.dumps({"_id": i, "text": text}) + "\n")
    return rows


def long_lines_csv(folder: Path, rows: int, line_bytes: int = 3 << 20, every: int = 50) -> int:
    """The same as CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "part.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["_id", "text"])
        for i in range(rows):
            out.writerow([i, "x" * line_bytes if i % every == 0 else f"row {i}"])
    return rows


def huge_value(folder: Path, value_bytes: int) -> int:
    """One row whose one value is ``value_bytes`` long (zeros: tiny on disk), beside a normal column."""
    value = pa.array([b"\0" * value_bytes], type=pa.large_binary())
    _write_parquet(folder, pa.table({"_id": [0], "blob": value}), row_group_size=1, compression="zstd")
    return 1


def _write_parquet(folder: Path, table: pa.Table, *, row_group_size: int, compression: str = "snappy") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part.parquet", row_group_size=row_group_size, compression=compression)


SHAPES: dict[str, Shape] = {
    "one-row-group": one_row_group,
    "wide-rows": wide_rows,
    "many-columns": many_columns,
    "nested": nested,
    "long-lines-ndjson": long_lines_ndjson,
    "long-lines-csv": long_lines_csv,
}
