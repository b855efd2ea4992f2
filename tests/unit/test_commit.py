"""The commit protocol and watermark recovery on their own: what a run reads back from the destination, and what
it refuses to trust (a damaged, foreign or misplaced manifest) or to do (write into another DatasetExport's
folder), and what it leaves alone (a slot behind the latest commit, which covers it)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from examples import sample
from tests.helpers import START, flow_yaml
from tests.helpers import run_local as run

from dsexport.destinations import join
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import Outcome, commit
from dsexport.engine import manifest as manifests
from dsexport.engine.manifest import FilesState, Manifest
from dsexport.errors import StateError

AT = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # slot 202612010000 of the helper's 3-hourly schedule
PREFIX = "out/events"
SLOT = "202612010000"


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    """A destination with one committed export of 300 rows; returns (flow file, destination root)."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=1, rows_per_file=300, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    [result] = run(flow, AT)
    assert result.outcome == Outcome.exported, result.message
    return flow, dest


def manifest_path(dest: Path, slot: str = SLOT) -> Path:
    return dest / PREFIX / f"exportTime={slot}" / "_manifest.json"


def test_read_state_returns_the_latest_commit_and_every_slot(exported: tuple[Path, Path]) -> None:
    _, dest = exported
    t = FilesystemTransport(dest)
    for leftover in ("202612010300", "202612010600"):  # killed runs: parts, no manifest
        t.put(join(PREFIX, f"exportTime={leftover}", "part-00000-x.parquet"), b"partial")
    t.put(join(PREFIX, "exportTime=202611300000", "part-00000-y.parquet"), b"older, never committed")
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert state.latest_slot == SLOT
    assert isinstance(state.latest, Manifest)
    assert state.latest.records == 300 and state.latest.dataset_export == "flow"
    assert isinstance(state.latest.state, FilesState)
    assert state.slots == ("202611300000", SLOT, "202612010300", "202612010600")


def test_read_state_of_an_empty_destination(tmp_path: Path) -> None:
    state = commit.read_state(FilesystemTransport(tmp_path), PREFIX, dataset_id="events")
    assert (state.latest, state.latest_slot, state.slots) == (None, None, ())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"version": 2, "datasetExport": "flow", "records": ', r"is not valid JSON \(Expecting value at line 1"),
        (b"\xff\xfe", "is not valid JSON"),
        (b'{"hello": "world"}', r"is not a valid dsexport manifest \(datasetExport: Field required"),
        (b"[1, 2, 3]", "is not a valid dsexport manifest"),
        (b'{"version": 9}', r"written by a newer dsexport \(manifest version 9\); upgrade dsexport"),
    ],
)
def test_a_damaged_or_foreign_manifest_is_refused_naming_its_path(
    exported: tuple[Path, Path], content: bytes, expected: str
) -> None:
    flow, dest = exported
    path = manifest_path(dest)
    path.write_bytes(content)
    with pytest.raises(StateError, match=expected) as raised:
        commit.read_state(FilesystemTransport(dest), PREFIX, dataset_id="events")
    assert f"{PREFIX}/exportTime={SLOT}/_manifest.json" in str(raised.value)
    assert raised.value.permanent

    # Through a run it is a failed result with the same message, never a traceback, and nothing is written.
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    [result] = run(flow, AT + dt.timedelta(hours=3))
    assert result.outcome == Outcome.failed
    assert result.reason == "DestinationStateRefused" and result.transient is False
    assert "_manifest.json" in result.message
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before


def test_manifest_totals_must_match_its_files(exported: tuple[Path, Path]) -> None:
    _, dest = exported
    doc = json.loads(manifest_path(dest).read_bytes())
    doc["records"] += 1
    manifest_path(dest).write_text(json.dumps(doc))
    with pytest.raises(StateError, match="records and bytes are not the sums over files"):
        commit.read_state(FilesystemTransport(dest), PREFIX, dataset_id="events")


def test_a_manifest_copied_from_another_slot_is_refused(exported: tuple[Path, Path]) -> None:
    _, dest = exported
    later = manifest_path(dest, "202612010300")
    later.parent.mkdir(parents=True)
    later.write_bytes(manifest_path(dest).read_bytes())
    with pytest.raises(StateError, match=r"describes dataset 'events' at exportTime 202612010000, not the folder"):
        commit.read_state(FilesystemTransport(dest), PREFIX, dataset_id="events")


def test_a_version_1_manifest_is_still_read_and_continued(exported: tuple[Path, Path]) -> None:
    """The first release wrote ``flow`` and version 1; its watermark must carry on, not restart a backfill."""
    flow, dest = exported
    doc = json.loads(manifest_path(dest).read_bytes())
    doc["flow"] = doc.pop("datasetExport")
    doc["version"] = 1
    manifest_path(dest).write_text(json.dumps(doc))
    state = commit.read_state(FilesystemTransport(dest), PREFIX, dataset_id="events")
    assert state.latest is not None and state.latest.dataset_export == "flow"
    [result] = run(flow, AT + dt.timedelta(hours=3))
    assert (result.outcome, result.message) == (Outcome.no_new_data, "no new files")


def test_reset_token_is_optional_and_unknown_keys_are_ignored(exported: tuple[Path, Path]) -> None:
    """``resetToken`` left out when unset keeps manifests readable by releases that predate it, as unknown keys
    (a newer minor writer's) are ignored rather than refused."""
    _, dest = exported
    doc = json.loads(manifest_path(dest).read_bytes())
    assert "resetToken" not in doc and doc["version"] == manifests.MANIFEST_VERSION == 2

    def read(document: dict[str, object]) -> Manifest:
        raw = json.dumps(document).encode()
        return manifests.parse(raw, path="m", dataset_id="events", export_time=SLOT)

    assert read({**doc, "someNewerKey": {"x": 1}}) == read(doc)
    tokened = read({**doc, "resetToken": "job-20261201.1007_a"})
    assert tokened.reset_token == "job-20261201.1007_a"
    assert json.loads(tokened.to_bytes())["resetToken"] == "job-20261201.1007_a"
    for bad in ("", "a/b", "x" * 65):
        with pytest.raises(StateError, match="resetToken: String should match pattern"):
            read({**doc, "resetToken": bad})


def test_another_dataset_exports_folder_is_refused(exported: tuple[Path, Path]) -> None:
    flow, dest = exported
    doc = json.loads(manifest_path(dest).read_bytes())
    doc["datasetExport"] = "someone-else"
    manifest_path(dest).write_text(json.dumps(doc))
    state = commit.read_state(FilesystemTransport(dest), PREFIX, dataset_id="events")
    with pytest.raises(StateError, match="already used by DatasetExport 'someone-else'"):
        commit.check_owner(state, "flow", where="here")
    commit.check_owner(state, "someone-else", where="here")
    [result] = run(flow, AT + dt.timedelta(hours=3))
    assert result.outcome == Outcome.failed and "already used by DatasetExport 'someone-else'" in result.message


def test_commits_only_move_forward(exported: tuple[Path, Path]) -> None:
    """A run behind the latest commit writes nothing and is not an error: the latest commit covers its data."""
    flow, dest = exported
    t = FilesystemTransport(dest)
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert not commit.is_behind(state, "202612010300")
    assert not commit.is_behind(state, SLOT)
    assert commit.is_behind(state, "202611302100")
    assert not commit.is_behind(commit.read_state(t, "out/nothing-yet", dataset_id="x"), "202611302100")

    # An earlier attempt of the behind slot left parts; a newer folder is being written by another run.
    behind = join(PREFIX, "exportTime=202611302100")
    t.put(join(behind, "part-00000-x.parquet"), b"killed attempt")
    newer = join(PREFIX, "exportTime=202612010300", "part-00000-y.parquet")
    t.put(newer, b"in progress")
    committed_files = sorted(t.list_keys(join(PREFIX, f"exportTime={SLOT}")))
    [result] = run(flow, AT - dt.timedelta(hours=3))
    assert (result.outcome, result.export_time, result.records) == (Outcome.already_committed, "202611302100", 0)
    assert result.message == (
        "exportTime 202611302100 is before the latest committed export 202612010000, which already covers it; "
        "a later slot exports what is new"
    )
    assert "--at" not in result.message  # engine messages give no CLI advice
    assert state.latest is not None and result.watermark == state.latest.watermark
    assert list(t.list_keys(behind)) == []  # its own leftovers, never committed, are gone
    assert t.exists(newer)  # not its folder: left alone
    assert sorted(t.list_keys(join(PREFIX, f"exportTime={SLOT}"))) == committed_files


def _successor(latest: Manifest, export_time: str, run_id: str) -> Manifest:
    """A commit after ``latest`` of no files, by the attempt ``run_id``."""
    return latest.model_copy(
        update={
            "export_time": export_time,
            "previous": latest.export_time,
            "sequence": latest.sequence + 1,
            "run_id": run_id,
            "files": [],
            "records": 0,
            "bytes": 0,
        }
    )


def test_commit_claims_the_successor_once_and_publishes_the_manifest(exported: tuple[Path, Path]) -> None:
    _, dest = exported
    t = FilesystemTransport(dest)
    latest = commit.read_state(t, PREFIX, dataset_id="events").latest
    assert latest is not None
    folder = join(PREFIX, "exportTime=202612010300")
    mine = _successor(latest, "202612010300", "a" * 16)
    commit.commit(t, PREFIX, mine)
    assert t.get(join(PREFIX, f"exportTime={SLOT}", commit.NEXT)) == mine.to_bytes()
    assert t.get(join(folder, commit.MANIFEST)) == mine.to_bytes()
    assert t.exists(join(folder, commit.SUCCESS))
    commit.commit(t, PREFIX, mine)  # a retry after a lost reply finds its own claim: done, not lost

    # Another attempt from the same commit loses, whatever its slot, and the winner is named.
    for slot in ("202612010300", "202612010600"):
        with pytest.raises(commit.Superseded) as lost:
            commit.commit(t, PREFIX, _successor(latest, slot, "b" * 16))
        assert lost.value.winner == mine
    assert not t.exists(join(PREFIX, "exportTime=202612010600", commit.MANIFEST))
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert (state.latest, state.latest_slot) == (mine, "202612010300")


def test_read_state_publishes_a_commit_whose_run_was_killed_after_claiming(exported: tuple[Path, Path]) -> None:
    _, dest = exported
    t = FilesystemTransport(dest)
    latest = commit.read_state(t, PREFIX, dataset_id="events").latest
    assert latest is not None
    claimed = _successor(latest, "202612010300", "c" * 16)
    t.put(join(PREFIX, f"exportTime={SLOT}", commit.NEXT), claimed.to_bytes())  # killed before publishing
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert (state.latest, state.latest_slot) == (claimed, "202612010300")
    folder = join(PREFIX, "exportTime=202612010300")
    assert t.get(join(folder, commit.MANIFEST)) == claimed.to_bytes()
    assert t.exists(join(folder, commit.SUCCESS))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"previous": "202611300000"}, "the commit chain is damaged"),
        ({"sequence": 7}, "the commit chain is damaged"),
        ({"exportTime": "202611300000", "previous": SLOT}, "the commit chain is damaged"),
        ({"files": [{"path": "part-00000-gone.parquet", "records": 0, "bytes": 0, "sha256": "0" * 64}]}, "not there"),
    ],
)
def test_a_claim_that_does_not_follow_the_latest_commit_is_refused(
    exported: tuple[Path, Path], change: dict[str, object], says: str
) -> None:
    _, dest = exported
    t = FilesystemTransport(dest)
    latest = commit.read_state(t, PREFIX, dataset_id="events").latest
    assert latest is not None
    claimed = Manifest.model_validate(
        {**_successor(latest, "202612010300", "d" * 16).model_dump(by_alias=True, mode="json"), **change}
    )
    t.put(join(PREFIX, f"exportTime={SLOT}", commit.NEXT), claimed.to_bytes())
    with pytest.raises(StateError, match=says) as refused:
        commit.read_state(t, PREFIX, dataset_id="events")
    assert commit.NEXT in str(refused.value) or "exportTime=202612010300" in str(refused.value)
    assert not t.exists(join(PREFIX, "exportTime=202612010300", commit.MANIFEST))


def test_clean_behind_removes_what_the_latest_commit_made_garbage_and_nothing_newer(
    exported: tuple[Path, Path],
) -> None:
    _, dest = exported
    t = FilesystemTransport(dest)
    first = commit.read_state(t, PREFIX, dataset_id="events").latest
    assert first is not None
    loser = join(PREFIX, "exportTime=202612010100", "part-00000-1111111111111111.parquet")  # lost to the commit
    killed = join(PREFIX, "exportTime=202612010300", ".part-00000-2222222222222222.parquet.tmp-1")
    live = join(PREFIX, "exportTime=202612010600", "part-00000-3333333333333333.parquet")  # after it: may be live
    older = join(PREFIX, "exportTime=202611300000", "part-00000-4444444444444444.parquet")  # before the window
    for key in (loser, killed, live, older):
        t.put(key, b"x")
    commit.commit(t, PREFIX, _successor(first, "202612010300", "e" * 16))
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert commit.clean_behind(t, PREFIX, state) == 2
    assert [t.exists(k) for k in (loser, killed, live, older)] == [False, False, True, True]
    kept = sorted(k.rsplit("/", 1)[-1] for k in t.list_keys(join(PREFIX, "exportTime=202612010300")))
    assert kept == [commit.SUCCESS, commit.MANIFEST]


def test_finish_committed_completes_the_marker_and_drops_files_it_does_not_list(exported: tuple[Path, Path]) -> None:
    _, dest = exported
    t = FilesystemTransport(dest)
    latest = commit.read_state(t, PREFIX, dataset_id="events").latest
    assert latest is not None
    folder = join(PREFIX, f"exportTime={SLOT}")
    t.delete([join(folder, commit.SUCCESS)])
    t.put(join(folder, ".part-00001-x.parquet.tmp-abc"), b"temporary")
    t.put(join(folder, "part-00000-0000000000000000.parquet"), b"a losing attempt's part")
    parts = {k for k in t.list_keys(folder) if "/part-" in k and "-0000000000000000." not in k}
    assert commit.finish_committed(t, folder, latest) == 2
    assert set(t.list_keys(folder)) == parts | {join(folder, commit.MANIFEST), join(folder, commit.SUCCESS)}


def test_clean_folder_removes_every_file_of_an_uncommitted_slot(tmp_path: Path) -> None:
    t = FilesystemTransport(tmp_path)
    folder = join(PREFIX, "exportTime=202612010300")
    for name in ("part-00000-x.parquet", ".part-00001-x.parquet.tmp-1", "sub/deeper.bin"):
        t.put(join(folder, name), b"x")
    assert commit.clean_folder(t, folder) == 3
    assert list(t.list_keys(PREFIX)) == []
