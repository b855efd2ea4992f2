"""One export losing the race to another run from the same watermark, found untested by mutation testing
(docs/mutation.md): the run that did not commit says who did, leaves the winner's commit as it is and removes its
own files, whether it lost at the claim or failed on the way."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import _GeneratorContextManager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from examples import sample
from tests.helpers import START, committed, flow_yaml, read_committed_ids
from tests.helpers import run_local as run

from dsexport.api import loader
from dsexport.cli import local
from dsexport.destinations.base import Writable
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import DatasetResult, Outcome, commit, export_dataset, jsonenc
from dsexport.errors import DestinationError

AT = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # slot 202612010000 of the helper's 3-hourly schedule
LOSER_SLOT = "202612010600"


class RacedTransport(FilesystemTransport):
    """A destination on which another run, ``rival``, commits just before this run does ``when``."""

    def __init__(self, root: Path, rival: Callable[[], None], when: str, *, fail: bool = False) -> None:
        super().__init__(root)
        self.rival, self.when, self.fail = rival, when, fail

    def _race(self, what: str) -> None:
        if self.when == what:
            self.when = ""
            self.rival()
            if self.fail:
                raise DestinationError("the store went away", transient=True)

    def open_write(self, key: str) -> _GeneratorContextManager[Writable, None, None]:
        self._race("write")
        return super().open_write(key)

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        if key.endswith(commit.NEXT):
            self._race("claim")
        super().put(key, data, create_only=create_only)


class UndeletingTransport(RacedTransport):
    """As RacedTransport, on a store that fails to delete."""

    def delete(self, keys: Iterable[str]) -> None:
        if list(keys):
            raise DestinationError("delete refused")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A first commit, then new source files for two runs to race on; returns (flow, source, destination)."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=1, rows_per_file=300, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    [first] = run(flow, AT)
    assert first.outcome == Outcome.exported
    sample.write_files(src / "more", files=1, rows_per_file=200, seed=2, start=START, id_offset=300)
    yield flow, src, dest


def race(flow: Path, dest: Path, when: str, *, fail: bool = False) -> tuple[DatasetResult, list[DatasetResult]]:
    """This run (slot 06:00) against a rival (slot 03:00) that commits first; returns both results."""
    rival: list[DatasetResult] = []
    bundle = loader.load_files([flow])
    [request] = local.requests(bundle, at=AT + dt.timedelta(hours=6))
    transport = RacedTransport(dest, lambda: rival.extend(run(flow, AT + dt.timedelta(hours=3))), when, fail=fail)
    return export_dataset(request, transport), rival


@pytest.mark.parametrize("when", ["claim", "write"])
def test_a_run_that_loses_the_race_says_who_won_and_removes_its_files(
    setup: tuple[Path, Path, Path], when: str
) -> None:
    flow, _, dest = setup
    result, [rival] = race(flow, dest, when, fail=when == "write")
    assert rival.outcome == Outcome.exported and rival.records == 200
    assert result.outcome == Outcome.superseded
    assert (result.export_time, result.folder, result.records) == (LOSER_SLOT, f"out/events/exportTime={LOSER_SLOT}", 0)
    assert result.message == (
        "another run committed exportTime 202612010300 first, from the same watermark; it exports what this run "
        "would have, and this run removed its files"
    )
    assert result.watermark == rival.watermark
    assert [m["exportTime"] for m in committed(dest)] == ["202612010000", "202612010300"]
    assert read_committed_ids(dest) == list(range(500))
    assert list(FilesystemTransport(dest).list_keys(f"out/events/exportTime={LOSER_SLOT}")) == []


def test_a_run_that_fails_with_nobody_else_committing_fails(setup: tuple[Path, Path, Path]) -> None:
    flow, _, dest = setup
    bundle = loader.load_files([flow])
    [request] = local.requests(bundle, at=AT + dt.timedelta(hours=6))
    result = export_dataset(request, RacedTransport(dest, lambda: None, "write", fail=True))
    assert (result.outcome, result.reason, result.transient) == (Outcome.failed, "DestinationFailed", True)
    assert result.message == "the store went away"
    assert (result.export_time, result.folder) == (LOSER_SLOT, f"out/events/exportTime={LOSER_SLOT}")
    assert [m["exportTime"] for m in committed(dest)] == ["202612010000"]


def test_a_strategy_change_is_refused_until_the_dataset_is_reset(setup: tuple[Path, Path, Path]) -> None:
    flow, src, dest = setup
    flow_yaml(flow.parent, source=src, dest=dest, strategy="column", column="_id")  # rewrites flow.yaml
    [result] = run(flow, AT + dt.timedelta(hours=3))
    assert (result.outcome, result.reason) == (Outcome.failed, "InvalidSpec")
    assert result.message == (
        "the committed watermark uses strategy files, the Dataset now says column: reset the dataset to start over "
        "with the new strategy"
    )


def phases(records: list[logging.LogRecord]) -> list[dict[str, object]]:
    return [r.fields for r in records if r.name == "dsexport.engine.exporter"]  # type: ignore[attr-defined]


def test_each_phase_logs_one_line_with_its_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=2, rows_per_file=150, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    stray = dest / "out/events/exportTime=202611300000/part-00000-ffffffffffffffff.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"a killed run's part, before the first commit")
    caplog.set_level(logging.INFO, logger="dsexport.engine.exporter")
    [result] = run(flow, AT)
    where = {"datasetExport": "flow", "dataset": "events", "exportTime": "202612010000"}
    logged = phases(caplog.records)
    assert [f["phase"] for f in logged] == ["recover", "write", "commit", "clean", "result"]
    assert logged[0] == {"phase": "recover", **where, "latest": None, "removedFiles": 0}
    assert {k: logged[1][k] for k in ("phase", *where, "files", "records")} == {
        "phase": "write",
        **where,
        "files": result.files,
        "records": 300,
    }
    assert logged[2] == {"phase": "commit", **where, "records": 300, "bytes": result.bytes, "files": result.files}
    assert logged[3] == {"phase": "clean", **where, "removedFiles": 1}
    assert (logged[4]["outcome"], logged[4]["records"]) == ("exported", 300)
    assert caplog.records[2].getMessage() == "commit flow/events exportTime=202612010000"

    caplog.clear()
    [again] = run(flow, AT)
    assert again.outcome == Outcome.already_committed
    assert phases(caplog.records)[0] == {
        "phase": "recover",
        **where,
        "latest": "202612010000",
        "committed": True,
        "removedFiles": 0,
    }
    caplog.clear()
    [behind] = run(flow, AT - dt.timedelta(hours=3))
    assert behind.outcome == Outcome.already_committed
    assert phases(caplog.records)[0] == {
        "phase": "recover",
        **where,
        "exportTime": "202611302100",
        "latest": "202612010000",
        "behind": True,
        "removedFiles": 0,
    }


def test_progress_and_time_taken_are_reported(setup: tuple[Path, Path, Path]) -> None:
    flow, _, dest = setup
    bundle = loader.load_files([flow])
    [request] = local.requests(bundle, at=AT + dt.timedelta(hours=6))
    counted: list[int] = []
    result = export_dataset(request, FilesystemTransport(dest), on_records=counted.append)
    assert result.outcome == Outcome.exported and sum(counted) == result.records == 200
    assert 0 < result.seconds < 60


def test_a_requested_export_time_picks_the_folder(setup: tuple[Path, Path, Path]) -> None:
    flow, _, dest = setup
    [result] = run(flow, AT + dt.timedelta(hours=6), export_time="202612010427")
    assert (result.outcome, result.export_time) == (Outcome.exported, "202612010427")
    assert [m["exportTime"] for m in committed(dest)] == ["202612010000", "202612010427"]
    [bad] = run(flow, AT + dt.timedelta(hours=6), export_time="tomorrow")
    assert bad.outcome == Outcome.failed and bad.export_time is None
    assert bad.message.startswith("the requested export time is invalid: ")


def test_a_reset_takes_effect_once_per_token(setup: tuple[Path, Path, Path]) -> None:
    flow, _, dest = setup
    [reset] = run(flow, AT + dt.timedelta(hours=3), resets=("events",), reset_token="job-1")
    assert (reset.outcome, reset.message, reset.records) == (Outcome.exported, "full backfill (reset)", 500)
    [retried] = run(flow, AT + dt.timedelta(hours=6), resets=("events",), reset_token="job-1")
    assert (retried.outcome, retried.message) == (Outcome.no_new_data, "no new files")
    [behind] = run(flow, AT, resets=("events",), reset_token="job-1")
    assert behind.outcome == Outcome.already_committed  # its own reset, already applied by a later slot
    [refused] = run(flow, AT - dt.timedelta(hours=3), resets=("events",), reset_token="job-2")
    assert (refused.outcome, refused.reason) == (Outcome.failed, "DestinationStateRefused")
    assert refused.message.endswith(
        "exportTime 202611302100 is before the latest committed export 202612010300, where the reset cannot be "
        "committed: reset again at a later exportTime"
    )
    [bad] = run(flow, AT + dt.timedelta(hours=6), resets=("events",), reset_token="a/b")
    assert bad.message == "reset token 'a/b' is not 1 to 64 characters of A-Z a-z 0-9 . _ -"
    assert [(m["exportTime"], m.get("resetToken")) for m in committed(dest)] == [
        ("202612010000", None),
        ("202612010300", "job-1"),
    ]


def test_a_folder_of_another_dataset_export_is_refused_naming_the_destination(setup: tuple[Path, Path, Path]) -> None:
    flow, _, dest = setup
    flow.write_text(flow.read_text().replace("name: flow", "name: other"))
    [result] = run(flow, AT + dt.timedelta(hours=3))
    assert result.outcome == Outcome.failed
    assert result.message.startswith(f"filesystem:{dest}/out/events: the folder is already used by DatasetExport")


def test_strategy_column_exports_the_rows_above_the_cursor_once(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=1, rows_per_file=300, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="_id")
    [first] = run(flow, AT)
    assert (first.outcome, first.records, first.message) == (Outcome.exported, 300, "full backfill")
    assert first.watermark is not None and (first.watermark.from_, first.watermark.to) == (None, "299")

    [nothing] = run(flow, AT + dt.timedelta(hours=3))
    assert (nothing.outcome, nothing.message) == (Outcome.no_new_data, "no new rows")
    assert nothing.watermark is not None and (nothing.watermark.from_, nothing.watermark.to) == ("299", "299")

    # Rows above the cursor, in a new file and in an old one rewritten (strategy column reads every file).
    sample.write_files(src, files=1, rows_per_file=400, seed=2, start=START, id_offset=200)
    [more] = run(flow, AT + dt.timedelta(hours=6))
    assert (more.outcome, more.records, more.message) == (Outcome.exported, 300, "incremental")
    assert more.watermark is not None and (more.watermark.from_, more.watermark.to) == ("299", "599")
    manifests = committed(dest)
    assert [m["state"]["value"] for m in manifests] == [299, 599]
    assert "sourceFiles" not in manifests[1] and manifests[0]["backfill"] and not manifests[1]["backfill"]
    assert read_committed_ids(dest) == list(range(600))


def test_an_empty_source_has_nothing_to_export(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    src.mkdir()
    for strategy, column in (("files", None), ("column", "_id")):
        flow = flow_yaml(tmp_path, source=src, dest=dest, strategy=strategy, column=column)
        [result] = run(flow, AT)
        assert (result.outcome, result.message) == (Outcome.no_new_data, f"no source files under {src}")
        assert result.watermark is None


def test_a_run_that_lost_and_cannot_remove_its_files_leaves_them_to_a_later_run(
    setup: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    flow, _, dest = setup
    rival: list[DatasetResult] = []
    bundle = loader.load_files([flow])
    [request] = local.requests(bundle, at=AT + dt.timedelta(hours=6))
    transport = UndeletingTransport(dest, lambda: rival.extend(run(flow, AT + dt.timedelta(hours=3))), "claim")
    caplog.set_level(logging.INFO, logger="dsexport.engine.exporter")
    result = export_dataset(request, transport)
    assert result.outcome == Outcome.superseded
    assert result.message == (
        "another run committed exportTime 202612010300 first, from the same watermark; it exports what this run "
        "would have, and a later run removes this run's files"
    )
    [lost] = [f for f in phases(caplog.records) if f["phase"] == "superseded"]
    [winner] = [m for m in committed(dest) if m["exportTime"] == "202612010300"]
    assert lost == {
        "phase": "superseded",
        "datasetExport": "flow",
        "dataset": "events",
        "exportTime": LOSER_SLOT,
        "winner": winner["runId"],
        "winnerExportTime": "202612010300",
        "removedFiles": -1,
    }
    assert list(FilesystemTransport(dest).list_keys(f"out/events/exportTime={LOSER_SLOT}"))  # left for later


def test_the_result_line_is_a_warning_only_when_the_export_failed(
    setup: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    flow, _, _ = setup
    caplog.set_level(logging.INFO, logger="dsexport.engine.exporter")
    run(flow, AT + dt.timedelta(hours=3))
    [line] = [r for r in caplog.records if r.fields["phase"] == "result"]  # type: ignore[attr-defined]
    assert (line.levelno, line.getMessage()) == (logging.INFO, "exported flow/events: incremental")
    assert "watermark" not in line.fields and line.fields["records"] == 200  # type: ignore[attr-defined]
    caplog.clear()
    flow.write_text(flow.read_text().replace("name: flow", "name: other"))
    run(flow, AT + dt.timedelta(hours=6))
    [line] = [r for r in caplog.records if r.fields["phase"] == "result"]  # type: ignore[attr-defined]
    assert line.levelno == logging.WARNING and line.getMessage().startswith("failed other/events: filesystem:")


def test_cleaning_that_fails_after_the_commit_is_left_to_the_next_run(
    setup: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    flow, _, dest = setup
    stray = dest / "out/events/exportTime=202612010100/part-00000-ffffffffffffffff.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"a losing run's part")
    bundle = loader.load_files([flow])
    [request] = local.requests(bundle, at=AT + dt.timedelta(hours=3))
    with caplog.at_level(logging.WARNING, logger="dsexport.engine.exporter"):
        result = export_dataset(request, UndeletingTransport(dest, lambda: None, ""))
    assert result.outcome == Outcome.exported
    assert "cleaning after the commit failed, the next run does it: delete refused" in caplog.messages
    assert stray.exists()


def test_the_manifest_records_when_in_utc_the_files_read_and_the_schema_written(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    flow, src, dest = setup
    run(flow, AT + dt.timedelta(hours=3))
    manifest = committed(dest)[-1]
    created = dt.datetime.strptime(manifest["createdAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - created).total_seconds()) < 120
    assert manifest["sourceFiles"] == ["more/events-000000000300.parquet"]
    fields = {f["name"]: f["type"] for f in manifest["schema"]["fields"]}
    assert fields["_id"] == "int64"

    # NDJSON parts: the schema of the JSON text (jsonenc.json_schema), not the source's.
    json_dest = tmp_path / "json"
    (tmp_path / "jf").mkdir()
    json_flow = flow_yaml(tmp_path / "jf", source=src, dest=json_dest, fmt="json")
    run(json_flow, AT)
    [json_manifest] = committed(json_dest)
    source_schema = pq.read_schema(src / "events-000000000000.parquet")
    expected = jsonenc.json_schema(source_schema)
    assert [(f["name"], f["type"]) for f in json_manifest["schema"]["fields"]] == [
        (f.name, str(f.type)) for f in expected
    ]
    assert expected != source_schema


def test_a_full_snapshot_and_a_reset_applied_earlier_say_so(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    flow, src, dest = setup
    [reset] = run(flow, AT + dt.timedelta(hours=3), resets=("events",), reset_token="job-1")
    assert reset.message == "full backfill (reset)"
    sample.write_files(src / "later", files=1, rows_per_file=50, seed=3, start=START, id_offset=500)
    [after] = run(flow, AT + dt.timedelta(hours=6), resets=("events",), reset_token="job-1")
    assert (after.outcome, after.records) == (Outcome.exported, 50)
    assert after.message == "incremental (the reset was already applied)"
    assert committed(dest)[-1]["resetToken"] == "job-1"  # carried forward

    (tmp_path / "full").mkdir()
    full = flow_yaml(tmp_path / "full", source=src, dest=tmp_path / "full-dest", mode="full")
    [snapshot] = run(full, AT)
    assert (snapshot.outcome, snapshot.message, snapshot.records) == (Outcome.exported, "full snapshot", 550)


def test_rerunning_an_older_committed_slot_completes_it_and_says_it_is_committed(
    setup: tuple[Path, Path, Path],
) -> None:
    flow, _, dest = setup
    [later] = run(flow, AT + dt.timedelta(hours=3))
    assert later.outcome == Outcome.exported
    stray = dest / "out/events/exportTime=202612010000/part-00000-ffffffffffffffff.parquet"
    stray.write_bytes(b"a losing run's part")
    [again] = run(flow, AT)
    assert again.outcome == Outcome.already_committed
    assert again.message == "exportTime 202612010000 is already committed; a later slot exports what is new"
    assert again.watermark == later.watermark
    assert not stray.exists()


def test_a_strategy_change_from_column_is_refused_too(tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=1, rows_per_file=10, seed=1, start=START)
    run(flow_yaml(tmp_path, source=src, dest=dest, strategy="column", column="_id"), AT)
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), AT + dt.timedelta(hours=3))
    assert result.message == (
        "the committed watermark uses strategy column, the Dataset now says files: reset the dataset to start over "
        "with the new strategy"
    )


def test_nothing_new_reports_the_watermark_it_stays_at(setup: tuple[Path, Path, Path]) -> None:
    flow, _, _ = setup
    [first_again] = run(flow, AT + dt.timedelta(hours=3))
    [nothing] = run(flow, AT + dt.timedelta(hours=6))
    assert (nothing.outcome, nothing.message) == (Outcome.no_new_data, "no new files")
    assert nothing.watermark is not None and first_again.watermark is not None
    assert nothing.watermark.from_ == nothing.watermark.to == first_again.watermark.to
