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
    assert latest(t) == claimed
    assert t.get(join(folder, commit.MANIFEST)) == claimed.to_bytes()

    # One of its files removed by hand: refused, naming the folder and the file.
    other = successor(claimed, "202612010600", "d" * 16, ["part-00000-dddddddddddddddd.parquet"])
    t.put(join(folder, commit.NEXT), other.to_bytes())
    with pytest.raises(StateError, match=r"lists files that are not there \(part-00000-dddddddddddddddd") as refused:
        latest(t)
    assert str(refused.value).startswith(f"{t.describe()}/{PREFIX}/exportTime=202612010600: ")


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
