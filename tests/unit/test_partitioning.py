"""Partition-pruned listing: what a declared format accepts, what a folder name means in time, which partitions a
run may skip, and that skipping them never changes what strategy files selects when the declaration holds."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tests.helpers import ListingSpy

from dsexport.api import Dataset, Partitioning, SourceFormat, parse_duration_seconds
from dsexport.api import Source as SourceSpec
from dsexport.engine import watermark
from dsexport.engine.manifest import FilesState
from dsexport.engine.partitions import Layout, Partition
from dsexport.engine.sources import Source
from dsexport.errors import ConfigError, SourceError

NS = 1_000_000_000
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS


def utc(*values: int) -> dt.datetime:
    """A UTC time from its leading fields (year, month, ...), the others at their first value."""
    year, month, day, hour, minute, second = (*values, *(1, 1, 1, 0, 0, 0)[len(values) :])
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)


def ns(*values: int) -> int:
    return int(utc(*values).timestamp()) * NS


def layout(fmt: str, key: str | None = None, lateness: str = "0s") -> Layout:
    return Layout.of(Partitioning(key=key, format=fmt, lateness=lateness))


def path_to(lay: Layout, *names: str) -> Partition | None:
    """The partition a chain of folder names stands for, level by level (None if one does not parse)."""
    node: Partition | None = Partition()
    for depth, name in enumerate(names):
        assert node is not None
        node = lay.child(node, depth, name)
    return node


# ------------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize(
    "document",
    [
        {"key": "date", "format": "%Y-%m-%d"},
        {"format": "%Y/%m/%d"},
        {"format": "year=%Y/month=%m/day=%d/hour=%H"},
        {"format": "%Y%m%d"},
        {"format": "%Y"},
        {"key": "ts", "format": "%Y-%m-%d %H:%M:%S"},
        {"format": "v%%%Y", "lateness": "3h30m"},
    ],
)
def test_valid_formats(document: dict[str, Any]) -> None:
    Partitioning.model_validate(document)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"format": "%Y-%j"}, "format may use only the directives %Y %m %d %H %M %S"),
        ({"format": "%Y-%m-%"}, "format may use only the directives %Y %m %d %H %M %S"),
        ({"format": "%m/%Y"}, "format must be a time prefix"),
        ({"format": "%Y-%d"}, "format must be a time prefix"),
        ({"format": "%Y/%m/%m"}, "format must be a time prefix"),
        ({"format": "date"}, "format must be a time prefix"),
        ({"format": "%%Y"}, "format must be a time prefix"),
        ({"format": "%Y//%m"}, "every folder level of format"),
        ({"format": "%Y/%m/"}, "every folder level of format"),
        ({"format": "%Y/latest/%m"}, "every folder level of format"),
        ({"format": "_%Y"}, "may not start with _ or ."),
        ({"format": "%Y/.%m"}, "may not start with _ or ."),
        ({"key": "date", "format": "%Y/%m/%d"}, "with key, format is one folder level"),
    ],
)
def test_invalid_formats_are_refused_with_a_clear_message(document: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Partitioning.model_validate(document)
    assert expected in str(caught.value)


@pytest.mark.parametrize("key", ["_date", "da/te", "date=x", ""])
def test_keys_that_would_hide_or_split_folders_are_refused(key: str) -> None:
    with pytest.raises(ValidationError):
        Partitioning.model_validate({"key": key, "format": "%Y"})


def test_a_dataset_declares_it_in_its_source() -> None:
    dataset = Dataset.model_validate(
        {
            "kind": "Dataset",
            "metadata": {"name": "events"},
            "spec": {"source": {"uri": "/lake", "partitioning": {"key": "date", "format": "%Y-%m-%d"}}},
        }
    )
    assert dataset.spec.source.partitioning == Partitioning(key="date", format="%Y-%m-%d", lateness="1h")


def test_the_engine_refuses_a_format_that_escaped_validation() -> None:
    for fmt, expected in (("%Y-%q", "unknown directive %q"), ("%Y%", "lone %"), ("%m", "not a time prefix")):
        with pytest.raises(ConfigError, match=expected):
            Layout.of(Partitioning.model_construct(key=None, format=fmt, lateness="0s"))


# ------------------------------------------------------------------------------------- names and time ranges


@pytest.mark.parametrize(
    ("fmt", "key", "names", "start", "end"),
    [
        ("%Y-%m-%d", "date", ["date=2026-12-01"], (2026, 12, 1), (2026, 12, 2)),
        ("%Y-%m-%d", "date", ["date=2026-12-31"], (2026, 12, 31), (2027, 1, 1)),
        ("%Y-%m-%d", "date", ["date=2028-02-29"], (2028, 2, 29), (2028, 3, 1)),
        ("%Y-%m-%d", "date", ["date=2026-1-5"], (2026, 1, 5), (2026, 1, 6)),
        ("%Y/%m/%d", None, ["2026"], (2026, 1, 1), (2027, 1, 1)),
        ("%Y/%m/%d", None, ["2026", "12"], (2026, 12, 1), (2027, 1, 1)),
        ("%Y/%m/%d", None, ["2026", "02", "28"], (2026, 2, 28), (2026, 3, 1)),
        ("year=%Y/month=%m", None, ["year=2026", "month=6"], (2026, 6, 1), (2026, 7, 1)),
        ("%Y%m%d%H", None, ["2026120123"], (2026, 12, 1, 23), (2026, 12, 2)),
        ("%Y-%m-%d %H:%M", "ts", ["ts=2026-12-01 10%3A05"], (2026, 12, 1, 10, 5), (2026, 12, 1, 10, 6)),
        ("%Y-%m-%d %H:%M:%S", None, ["2026-12-01 10:05:59"], (2026, 12, 1, 10, 5, 59), (2026, 12, 1, 10, 6)),
    ],
)
def test_a_partition_covers_its_whole_range(
    fmt: str, key: str | None, names: list[str], start: tuple[int, ...], end: tuple[int, ...]
) -> None:
    """A range ends where the next partition of its level starts: a day partition holds the whole day."""
    partition = path_to(layout(fmt, key), *names)
    assert partition is not None
    assert partition.start() == utc(*start)
    assert partition.end() == utc(*end)


@pytest.mark.parametrize(
    ("fmt", "key", "name"),
    [
        ("%Y-%m-%d", "date", "date=2026-13-01"),  # no month 13
        ("%Y-%m-%d", "date", "date=2026-02-30"),
        ("%Y-%m-%d", "date", "date=__HIVE_DEFAULT_PARTITION__"),
        ("%Y-%m-%d", "date", "day=2026-12-01"),  # another key
        ("%Y-%m-%d", "date", "date=2026-12-01-old"),
        ("%Y-%m-%d", "date", "date=26-12-01"),
        ("%Y-%m-%d", "date", "date=\uff12\uff10\uff12\uff16-12-01"),  # digits, but not ASCII ones
        ("%Y%m%d", None, "2026121"),  # fields next to another need all their digits
        ("%Y/%m", None, "0000"),  # no year 0
        ("%Y/%m", None, "latest"),
    ],
)
def test_names_that_name_no_partition_do_not_parse(fmt: str, key: str | None, name: str) -> None:
    assert layout(fmt, key).child(Partition(), 0, name) is None


def test_a_range_past_year_9999_is_always_kept() -> None:
    lay = layout("%Y")
    partition = path_to(lay, "9999")
    assert partition is not None
    assert lay.may_hold_newer(partition, ns(2026, 12, 1) * 1000)


@pytest.mark.parametrize("lateness", ["0s", "1h", "2d"])
def test_pruning_boundary_is_the_end_plus_lateness(lateness: str) -> None:
    """Strategy files exports files modified strictly after the horizon; files of a partition land before its end
    plus lateness. So the partition is skipped exactly when that instant is at or before the horizon."""
    lay = layout("%Y-%m-%d", "date", lateness)
    day = path_to(lay, "date=2026-12-01")
    assert day is not None
    last = ns(2026, 12, 2) + lay.lateness_ns
    assert not lay.may_hold_newer(day, last)
    assert lay.may_hold_newer(day, last - 1)
    assert not lay.may_hold_newer(day, last + DAY_NS)


# ------------------------------------------------------------------------------------------------ the walk


def make_tree(root: Path, files: dict[str, int]) -> None:
    """Files (relative path -> modification time in ns), empty: listing never reads them."""
    for rel, mtime in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, ns=(mtime, mtime))


def source(root: Path, partitioning: Partitioning | None) -> Source:
    return Source(SourceSpec(uri=str(root), format=SourceFormat.parquet, partitioning=partitioning))


DAILY = Partitioning(key="date", format="%Y-%m-%d", lateness="0s")


def test_only_recent_partitions_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {f"date=2026-11-{d:02d}/part-{i}.parquet": ns(2026, 11, d, 12 + i) for d in range(1, 31) for i in range(3)}
    make_tree(tmp_path, tree)
    spy = ListingSpy(monkeypatch, tmp_path)

    listed = source(tmp_path, DAILY).list_files(newer_than_ns=ns(2026, 11, 29, 23))

    assert [f.path for f in listed] == [f"date=2026-11-{d}/part-{i}.parquet" for d in (29, 30) for i in range(3)]
    assert sorted(spy.calls) == [(".", False), ("date=2026-11-29", True), ("date=2026-11-30", True)]


def test_nested_folders_are_pruned_level_by_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = {
        f"{y}/{m:02d}/{d:02d}/f.parquet": ns(y, m, d, 6)
        for y in (2025, 2026)
        for m in range(1, 13)
        for d in (1, 15, 28)
    }
    make_tree(tmp_path, tree)
    spy = ListingSpy(monkeypatch, tmp_path)

    listed = source(tmp_path, Partitioning(format="%Y/%m/%d", lateness="0s")).list_files(ns(2026, 12, 16))

    assert [f.path for f in listed] == ["2026/12/28/f.parquet"]
    # 2025 is skipped without listing it; of 2026 only December's days are looked at.
    assert sorted(spy.calls) == [(".", False), ("2026", False), ("2026/12", False), ("2026/12/28", True)]


def test_folders_that_do_not_parse_are_listed_fully_and_files_beside_partitions_kept(tmp_path: Path) -> None:
    old = ns(2020, 1, 1)
    tree = {
        "date=2020-01-01/old.parquet": old,
        "date=__HIVE_DEFAULT_PARTITION__/a.parquet": old,
        "date=2020-13-01/b.parquet": old,
        "backfill/deep/c.parquet": old,
        "loose.parquet": old,
        "_temporary/d.parquet": ns(2026, 12, 1),  # hidden: never data, pruned or not
        "date=2026-12-01/new.parquet": ns(2026, 12, 1, 1),
    }
    make_tree(tmp_path, tree)

    listed = {f.path for f in source(tmp_path, DAILY).list_files(newer_than_ns=ns(2026, 11, 30))}

    assert listed == set(tree) - {"date=2020-01-01/old.parquet", "_temporary/d.parquet"}


def test_without_a_declaration_or_a_horizon_everything_is_listed_in_one_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = {f"date=2026-11-{d:02d}/f.parquet": ns(2026, 11, d) for d in range(1, 6)}
    make_tree(tmp_path, tree)
    spy = ListingSpy(monkeypatch, tmp_path)

    undeclared = source(tmp_path, None).list_files(newer_than_ns=ns(2026, 11, 5))
    first_export = source(tmp_path, DAILY).list_files(newer_than_ns=None)

    assert [f.path for f in undeclared] == [f.path for f in first_export] == sorted(tree)
    assert spy.calls == [(".", True), (".", True)]


def test_a_missing_root_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot list source"):
        source(tmp_path / "nope", DAILY).list_files(newer_than_ns=0)


# ------------------------------------------------------------------------ pruning never changes the selection

FORMATS = [
    (Partitioning(key="date", format="%Y-%m-%d", lateness="0s"), "date=%Y-%m-%d"),
    (Partitioning(format="%Y/%m/%d/%H", lateness="2h"), "%Y/%m/%d/%H"),
    (Partitioning(format="year=%Y/month=%m", lateness="1d"), "year=%Y/month=%-m"),  # written without zeros
]
BASE = ns(2026, 12, 1)


_EDGE = st.integers(-3 * HOUR_NS, 3 * HOUR_NS)
BEFORE_BASE = st.one_of(  # how long before BASE: anywhere, or close to a day's or an hour's boundary
    st.integers(0, 60 * DAY_NS),
    st.builds(lambda days, edge: days * DAY_NS + edge, st.integers(1, 60), _EDGE),
    st.builds(lambda hours, edge: hours * HOUR_NS + edge // 60, st.integers(1, 60 * 24), _EDGE),
)


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, len(FORMATS) - 1),
    written=st.lists(st.tuples(BEFORE_BASE, st.one_of(st.just(1.0), st.floats(0, 1))), min_size=1, max_size=12),
    exported=BEFORE_BASE,
    lookback_s=st.sampled_from([0, 900, 86_400]),
)
def test_pruning_selects_exactly_what_a_full_listing_selects(
    which: int, written: list[tuple[int, float]], exported: int, lookback_s: int
) -> None:
    """Files written into the partition of their write time and landing within lateness of it: a run selects the
    same files from the pruned listing as from the whole one, for any watermark."""
    spec, pattern = FORMATS[which]
    lateness = parse_duration_seconds(spec.lateness) * NS
    tree = {}
    for i, (before, delay) in enumerate(written):
        wrote = BASE - before
        folder = dt.datetime.fromtimestamp(wrote // NS, dt.UTC).strftime(pattern)
        tree[f"{folder}/f{i}.parquet"] = wrote + int(delay * lateness)
    previous = FilesState(max_modified_ns=BASE - exported, max_modified="")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root, tree)
        horizon = watermark.horizon_ns(previous, lookback_s * NS)
        full = source(root, None).list_files()
        pruned = source(root, spec).list_files(newer_than_ns=horizon)
    want = watermark.select_files(full, previous, lookback_ns=lookback_s * NS).files
    got = watermark.select_files(pruned, previous, lookback_ns=lookback_s * NS).files
    assert got == want
    assert {f.path for f in pruned} <= {f.path for f in full}
