"""Partition-pruned listing of an s3:// source on SeaweedFS: after the backfill, an incremental run lists the
bucket's partition prefixes with a delimiter and only the recent partitions' objects.

The store sets modification times (now), so the lake's old partitions are uploaded now too: the backfill lists
them all anyway, and the one file written into an old partition afterwards breaks the declaration on purpose,
showing that pruning, not the watermark, is what keeps the run away from it.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from examples import sample
from tests.helpers import START, flow_yaml, read_committed_ids
from tests.helpers import run_local as run
from tests.servers import SECRET_NAME, Target, seaweed

from dsexport.destinations import Transport
from dsexport.engine import Outcome
from dsexport.engine.sources import Source

pytestmark = pytest.mark.parametrize("target", ["s3"], indirect=True)
ROWS = 50


class Lake:
    """Small Parquet files uploaded under ``prefix``, with distinct ids."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self.transport = transport
        self.prefix = prefix
        self.next_id = 0

    def upload(self, folder: str) -> list[int]:
        table = sample.events(ROWS, seed=self.next_id, start=START, id_offset=self.next_id)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.transport.put(f"{self.prefix}/{folder}/events-{self.next_id:06d}.parquet", buffer.getvalue())
        ids = list(range(self.next_id, self.next_id + ROWS))
        self.next_id += ROWS
        return ids


def test_incremental_run_lists_only_recent_partitions(
    target: Target, transport: Transport, tmp_path: Path, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert target.secret is not None
    today = dt.datetime.now(dt.UTC).date()
    days = [f"date={today - dt.timedelta(days=n)}" for n in (3, 2, 1, 0)]
    lake = Lake(transport, f"{folder}/lake/events")
    history = [i for day in days for i in lake.upload(day)]
    host = target.block["endpoint"].removeprefix("http://")
    root = f"{seaweed.BUCKET}/{folder}/lake/events"
    flow = flow_yaml(
        tmp_path,
        source=f"s3://{root}?endpoint_override={host}&scheme=http&region=us-east-1",
        source_secret=SECRET_NAME,
        dest=tmp_path / "dest",
        secrets={SECRET_NAME: target.secret},
    )
    docs = list(yaml.safe_load_all(flow.read_text()))
    docs[0]["spec"]["source"]["partitioning"] = {"key": "date", "format": "%Y-%m-%d"}
    flow.write_text(yaml.safe_dump_all(docs))
    listed: list[tuple[str, bool]] = []
    original = Source._list

    def spy(source: Source, path: str, *, recursive: bool, missing_ok: bool) -> Any:
        listed.append((os.path.relpath(path, root), recursive))
        return original(source, path, recursive=recursive, missing_ok=missing_ok)

    monkeypatch.setattr(Source, "_list", spy)
    at = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)  # picks the slot only, not the data

    [backfill] = run(flow, at)
    assert (backfill.outcome, backfill.records) == (Outcome.exported, 4 * ROWS), backfill.message
    assert listed == [(".", True)]
    listed.clear()

    new = lake.upload(days[-1])
    lake.upload(days[0])  # into a partition that ended days ago: skipped by design

    [second] = run(flow, at + dt.timedelta(hours=3))
    assert (second.outcome, second.records) == (Outcome.exported, ROWS), second.message
    assert sorted(read_committed_ids(tmp_path / "dest")) == sorted(history + new)
    assert (".", False) in listed
    assert (days[-1], True) in listed
    assert {path for path, _ in listed} <= {".", days[-2], days[-1]}  # yesterday's only just after midnight
