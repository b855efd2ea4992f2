"""A generator of experience-event data (nested structs, lists, maps, timestamps, ids) for the demo,
the benchmark and the tests: realistic shapes matter because nested columns dominate export cost."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EVENT_TYPES = [
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.purchases",
]
PAGES = ["home", "search", "product", "cart", "checkout", "account", "help"]
DEVICES = ["desktop", "mobile", "tablet"]
CURRENCIES = ["EUR", "USD", "GBP"]


def _choice(rng: np.random.Generator, values: list[str], n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(rng.integers(0, len(values), n, dtype=np.int32), values).cast(pa.string())


def events(n: int, *, seed: int, start: dt.datetime, id_offset: int = 0) -> pa.Table:
    """``n`` events with unique ``_id`` values ``id_offset .. id_offset+n-1`` (so tests can count each row)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(id_offset, id_offset + n, dtype=np.int64)
    start_us = int(start.timestamp() * 1_000_000)
    ts = start_us + np.sort(rng.integers(0, 3_600_000_000, n))
    page = rng.integers(0, len(PAGES), n)
    page_names = pa.array(np.array(PAGES, dtype=object)[page])
    urls = pc.binary_join_element_wise("https://shop.example.com/", page_names, "")
    web = pa.StructArray.from_arrays(
        [
            pa.StructArray.from_arrays([page_names, urls], ["name", "URL"]),
            pa.StructArray.from_arrays([_choice(rng, ["", "https://search.example.org/"], n)], ["URL"]),
        ],
        ["webPageDetails", "webReferrer"],
    )
    counts = rng.integers(0, 4, n).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    total = int(offsets[-1])
    items = pa.StructArray.from_arrays(
        [
            pa.array([f"SKU-{v:06d}" for v in rng.integers(0, 50_000, total)]),
            pa.array(rng.integers(1, 5, total).astype(np.int32)),
            pa.array(np.round(rng.uniform(1, 500, total), 2)),
        ],
        ["SKU", "quantity", "priceTotal"],
    )
    product_list = pa.ListArray.from_arrays(pa.array(offsets), items)
    purchase = rng.random(n) < 0.1
    order = pa.StructArray.from_arrays(
        [
            pa.array([f"ORD-{i:09d}" if p else None for i, p in zip(ids.tolist(), purchase.tolist(), strict=True)]),
            pa.array(np.where(purchase, np.round(rng.uniform(5, 900, n), 2), np.nan), from_pandas=True),
            _choice(rng, CURRENCIES, n),
        ],
        ["purchaseID", "priceTotal", "currencyCode"],
    )
    ecid = pa.array([f"{v:038d}" for v in rng.integers(0, 2**62, n, dtype=np.int64)])
    identity = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32)),
        pa.StructArray.from_arrays([ecid, pa.array(np.ones(n, dtype=bool))], ["id", "primary"]),
    )
    attributes = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
        pa.array(np.tile(np.array(["channel", "campaign"], dtype=object), n)),
        pa.array(np.stack([np.array(["web"] * n, dtype=object), np.array(PAGES, dtype=object)[page]], 1).ravel()),
    )
    return pa.table(
        {
            "_id": pa.array(ids),
            "eventType": _choice(rng, EVENT_TYPES, n),
            "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "ingested_at": pa.array(ts + 5_000_000, pa.timestamp("us", tz="UTC")),
            "identityMap": pa.StructArray.from_arrays([identity], ["ECID"]),
            "web": web,
            "device": pa.StructArray.from_arrays([_choice(rng, DEVICES, n)], ["type"]),
            "commerce": pa.StructArray.from_arrays([order], ["order"]),
            "productListItems": product_list,
            "attributes": attributes,
        }
    )


def write_files(
    folder: str | Path, *, files: int, rows_per_file: int, seed: int, start: dt.datetime, id_offset: int = 0
) -> int:
    """Write ``files`` Parquet files of fresh events; returns the next unused ``_id``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        table = events(rows_per_file, seed=seed + i, start=start + dt.timedelta(hours=i), id_offset=id_offset)
        name = f"events-{id_offset:012d}.parquet"
        tmp = out / f".{name}.tmp"
        pq.write_table(table, tmp, row_group_size=64 * 1024)
        tmp.replace(out / name)  # appear whole, as a real lake writer's files do
        id_offset += rows_per_file
    return id_offset
