"""The commit protocol at the edges test_commit.py leaves out, found by mutation testing (docs/mutation.md): what a
committed folder keeps, what an error names, and a claim that vanishes or lists files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from examples import sample
from tests.helpers import START, flow_yaml
from tests.helpers import run_local as run

from dsexport.destinations import AlreadyExistsError, join
from dsexport.destinations.filesystem import FilesystemTransport
from dsexport.engine import Outcome, commit
from dsexport.engine.manifest import Manifest
from dsexport.errors import StateError

AT = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # slot 202612010000 of the helper's 3-hourly schedule
PREFIX = "out/events"
SLOT = "202612010000"
NEXT_SLOT = "202612010300"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination with one committed export of 300 rows in two parts."""
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=2, rows_per_file=150, seed=1, start=START)
    [result] = run(flow_yaml(tmp_path, source=src, dest=dest), AT)
    assert result.outcome == Outcome.exported, result.message
    return dest


def latest(t: FilesystemTransport) -> Manifest:
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert state.latest is not None
    return state.latest


def successor(previous: Manifest, export_time: str, run_id: str, files: Sequence[str] = ()) -> Manifest:
    """A commit after ``previous`` by the attempt ``run_id`` listing ``files`` (one record and byte each)."""
    entries = [{"path": f, "records": 1, "bytes": 1, "sha256": "0" * 64} for f in files]
    return Manifest.model_validate(
        {
            **previous.model_dump(by_alias=True, mode="json"),
            "exportTime": export_time,
            "previous": previous.export_time,
            "sequence": previous.sequence + 1,
            "runId": run_id,
            "files": entries,
            "records": len(entries),
            "bytes": len(entries),
        }
    )


def test_superseded_names_the_run_and_slot_that_won(dest: Path) -> None:
    winner = latest(FilesystemTransport(dest))
    assert str(commit.Superseded(winner)) == f"run {winner.run_id} committed exportTime {SLOT} first"


def test_a_claim_that_vanishes_before_it_is_read_loses_the_commit(dest: Path) -> None:
    """The create-only write says the claim is taken, but it is gone when read: another run held it, so this run
    has not committed and publishes nothing."""

    class Vanishing(FilesystemTransport):
        def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
            if create_only:
                raise AlreadyExistsError(key)
            super().put(key, data, create_only=create_only)

        def get(self, key: str) -> bytes | None:
            return None if key.endswith(commit.NEXT) else super().get(key)

    mine = successor(latest(FilesystemTransport(dest)), NEXT_SLOT, "a" * 16)
    with pytest.raises(commit.Superseded) as lost:
        commit.commit(Vanishing(dest), PREFIX, mine)
    assert lost.value.winner == mine
    assert list(FilesystemTransport(dest).list_keys(join(PREFIX, f"exportTime={NEXT_SLOT}"))) == []


def test_a_damaged_claim_met_while_committing_is_refused_naming_it(dest: Path) -> None:
    t = FilesystemTransport(dest)
    mine = successor(latest(t), NEXT_SLOT, "a" * 16)
    t.put(join(PREFIX, f"exportTime={SLOT}", commit.NEXT), b"{not json")
    with pytest.raises(StateError, match="is not valid JSON") as refused:
        commit.commit(t, PREFIX, mine)
    assert f"{t.describe()}/{PREFIX}/exportTime={SLOT}/{commit.NEXT} is not valid JSON" in str(refused.value)


def test_a_killed_runs_claim_is_published_when_its_files_are_there(dest: Path) -> None:
    t = FilesystemTransport(dest)
    folder = join(PREFIX, f"exportTime={NEXT_SLOT}")
    names = ["part-00000-cccccccccccccccc.parquet", "part-00001-cccccccccccccccc.parquet"]
    for name in names:
        t.put(join(folder, name), b"x")
    claimed = successor(latest(t), NEXT_SLOT, "c" * 16, names)
    t.put(join(PREFIX, f"exportTime={SLOT}", commit.NEXT), claimed.to_bytes())
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert (state.latest, state.latest_slot, state.slots) == (claimed, NEXT_SLOT, (SLOT, NEXT_SLOT))
    assert t.get(join(folder, commit.MANIFEST)) == claimed.to_bytes()

    # Files removed by hand: refused, naming the folder and (the first three of) the files.
    gone = [f"part-0000{i}-dddddddddddddddd.parquet" for i in range(5)]
    t.put(join(PREFIX, "exportTime=202612010600", gone[4]), b"x")
    other = successor(claimed, "202612010600", "d" * 16, gone[1:] + gone[:1])
    t.put(join(folder, commit.NEXT), other.to_bytes())
    with pytest.raises(StateError) as refused:
        latest(t)
    assert str(refused.value) == (
        f"{t.describe()}/{PREFIX}/exportTime=202612010600: the commit claimed for it lists files that are not there "
        f"({gone[0]}, {gone[1]}, {gone[2]}); someone removed them: remove the folder and its claim to export its "
        "rows again"
    )
    assert not t.exists(join(PREFIX, "exportTime=202612010600", commit.MANIFEST))


def test_the_destination_layout() -> None:
    """docs/design.md: FOLDER/DATASET_ID/exportTime=YYYYMMDDHHMM/, the first claim in the dataset's folder."""
    assert commit.dataset_prefix("exports/daily", "events") == "exports/daily/events"
    assert commit.slot_folder("exports/daily", "events", SLOT) == f"exports/daily/events/exportTime={SLOT}"
    assert commit.claim_key("exports/daily/events", None) == "exports/daily/events/_first.json"
    assert commit.claim_key("exports/daily/events", SLOT) == f"exports/daily/events/exportTime={SLOT}/_next.json"


def test_a_folder_holding_another_manifest_is_not_published_over(dest: Path) -> None:
    t = FilesystemTransport(dest)
    claimed = successor(latest(t), NEXT_SLOT, "a" * 16)
    there = successor(latest(t), NEXT_SLOT, "b" * 16)
    folder = join(PREFIX, f"exportTime={NEXT_SLOT}")
    t.put(join(folder, commit.MANIFEST), there.to_bytes())
    with pytest.raises(StateError) as refused:
        commit.publish(t, PREFIX, claimed)
    assert str(refused.value) == f"{t.describe()}/{folder}: its manifest is not the commit claimed for it"
    assert t.get(join(folder, commit.MANIFEST)) == there.to_bytes()
    assert not t.exists(join(folder, commit.SUCCESS))
    commit.publish(t, PREFIX, there)  # the same commit published again: done
    assert t.get(join(folder, commit.SUCCESS)) == b""


def test_a_retried_commit_leaves_the_published_files_as_they_are(dest: Path) -> None:
    """A retry after a lost reply finds its own claim and manifest: it rewrites neither, nor the empty marker that
    tools watch for."""
    t = FilesystemTransport(dest)
    mine = successor(latest(t), NEXT_SLOT, "a" * 16)
    commit.commit(t, PREFIX, mine)
    folder = dest / PREFIX / f"exportTime={NEXT_SLOT}"
    marker = folder / commit.SUCCESS
    assert marker.read_bytes() == b""
    before = {p.name: p.stat().st_ino for p in folder.iterdir()}
    commit.commit(t, PREFIX, mine)
    assert {p.name: p.stat().st_ino for p in folder.iterdir()} == before


def test_clean_behind_an_empty_destination_removes_nothing(tmp_path: Path) -> None:
    state = commit.read_state(FilesystemTransport(tmp_path), PREFIX, dataset_id="events")
    assert commit.clean_behind(FilesystemTransport(tmp_path), PREFIX, state) == 0


def test_the_first_commit_makes_every_earlier_folder_garbage(dest: Path) -> None:
    t = FilesystemTransport(dest)
    garbage = [
        join(PREFIX, f"exportTime={s}", "part-00000-ffffffffffffffff.parquet") for s in ("202611290000", "202611300000")
    ]
    for key in garbage:
        t.put(key, b"x")
    state = commit.read_state(t, PREFIX, dataset_id="events")
    assert state.latest is not None and state.latest.sequence == 1
    assert commit.clean_behind(t, PREFIX, state) == 2
    assert not any(t.exists(k) for k in garbage)


def test_a_commit_from_before_the_chain_only_completes_its_own_folder(dest: Path) -> None:
    """A manifest of a release before the commit chain (sequence above 1, no previous) does not say where its
    window starts, so folders before it are left alone."""
    t = FilesystemTransport(dest)
    legacy = latest(t).model_copy(update={"sequence": 3, "previous": None})
    earlier = join(PREFIX, "exportTime=202611300000", "part-00000-ffffffffffffffff.parquet")
    stray = join(PREFIX, f"exportTime={SLOT}", "part-00000-ffffffffffffffff.parquet")
    for key in (earlier, stray):
        t.put(key, b"x")
    state = commit.DatasetState(legacy, SLOT, ("202611300000", SLOT))
    assert commit.clean_behind(t, PREFIX, state) == 1
    assert t.exists(earlier) and not t.exists(stray)


def test_clean_folder_leaves_a_committed_folder_alone(dest: Path) -> None:
    t = FilesystemTransport(dest)
    folder = join(PREFIX, f"exportTime={SLOT}")
    before = sorted(t.list_keys(folder))
    assert commit.clean_folder(t, folder) == 0
    assert sorted(t.list_keys(folder)) == before


def test_read_committed_reads_a_slots_manifest_and_checks_it_belongs_there(dest: Path) -> None:
    t = FilesystemTransport(dest)
    committed = latest(t)
    assert commit.read_committed(t, PREFIX, dataset_id="events", export_time=SLOT) == committed
    assert commit.read_committed(t, PREFIX, dataset_id="events", export_time=NEXT_SLOT) is None

    # A manifest copied into another slot's folder does not commit that slot.
    copied = join(PREFIX, "exportTime=202611302100", commit.MANIFEST)
    t.put(copied, committed.to_bytes())
    with pytest.raises(StateError, match=f"{t.describe()}/{copied} describes dataset 'events' at exportTime {SLOT}"):
        commit.read_committed(t, PREFIX, dataset_id="events", export_time="202611302100")


def test_remove_attempt_removes_only_that_attempts_files(tmp_path: Path) -> None:
    t = FilesystemTransport(tmp_path)
    folder = join(PREFIX, f"exportTime={SLOT}")
    mine = ["part-00000-aaaaaaaaaaaaaaaa.parquet", ".part-00001-aaaaaaaaaaaaaaaa.parquet.tmp-1"]
    others = ["part-00000-bbbbbbbbbbbbbbbb.parquet", "part-00000-aaaaaaaaaaaaaaaab.parquet", "aaaaaaaaaaaaaaaa.txt"]
    for name in mine + others:
        t.put(join(folder, name), b"x")
    assert commit.remove_attempt(t, folder, "a" * 16) == 2
    assert sorted(k.rsplit("/", 1)[-1] for k in t.list_keys(folder)) == sorted(others)


def test_a_damaged_claim_met_while_reading_the_state_is_refused_naming_it(dest: Path) -> None:
    t = FilesystemTransport(dest)
    claim = join(PREFIX, f"exportTime={SLOT}", commit.NEXT)
    t.put(claim, b"[]")
    with pytest.raises(StateError) as refused:
        commit.read_state(t, PREFIX, dataset_id="events")
    assert str(refused.value).startswith(f"{t.describe()}/{claim} is not a valid dsexport manifest")


def test_finish_committed_restores_an_empty_marker(dest: Path) -> None:
    t = FilesystemTransport(dest)
    folder = join(PREFIX, f"exportTime={SLOT}")
    t.delete([join(folder, commit.SUCCESS)])
    assert commit.finish_committed(t, folder, latest(t)) == 0
    assert t.get(join(folder, commit.SUCCESS)) == b""


def test_another_dataset_exports_folder_is_refused_saying_what_to_do(dest: Path) -> None:
    state = commit.read_state(FilesystemTransport(dest), PREFIX, dataset_id="events")
    with pytest.raises(StateError) as refused:
        commit.check_owner(state, "other", where="there")
    assert str(refused.value) == (
        "there: the folder is already used by DatasetExport 'flow'; give this export another folder or datasetId"
    )


def test_the_first_claim_of_a_dataset_is_published_and_must_be_sequence_1(dest: Path, tmp_path: Path) -> None:
    first = latest(FilesystemTransport(dest)).model_copy(update={"files": [], "records": 0, "bytes": 0})
    fresh = FilesystemTransport(tmp_path / "fresh")
    fresh.put(join(PREFIX, commit.FIRST), first.to_bytes())  # its run was killed after claiming
    assert latest(fresh) == first

    second = FilesystemTransport(tmp_path / "second")
    second.put(join(PREFIX, commit.FIRST), first.model_copy(update={"sequence": 2}).to_bytes())
    with pytest.raises(StateError) as refused:
        latest(second)
    assert str(refused.value) == (
        f"{second.describe()}/{PREFIX}/{commit.FIRST} claims exportTime {SLOT} (sequence 2, after None) as the "
        "commit after none (sequence 1): the commit chain is damaged; restore the file, or remove the dataset's "
        "folder to export everything again"
    )


def test_a_claim_of_the_slot_it_follows_is_refused(dest: Path) -> None:
    t = FilesystemTransport(dest)
    again = successor(latest(t), SLOT, "a" * 16)
    t.put(join(PREFIX, f"exportTime={SLOT}", commit.NEXT), again.to_bytes())
    with pytest.raises(StateError, match=f"claims exportTime {SLOT} .* as the commit after {SLOT} .*damaged"):
        latest(t)
