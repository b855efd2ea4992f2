"""The commit protocol at the destination: what is committed, what is garbage, and how a commit happens.

Layout: ``FOLDER/DATASET_ID/exportTime=YYYYMMDDHHMM/`` holds data files, then ``_manifest.json``, then ``_SUCCESS``
(a marker for tools that look for it). Part names carry the attempt's random run id, so two runs never write to
one name.

Several runs of one dataset may run at once (a run-now Job beside the scheduled one, a Job's replacement pod while
the old one still runs, a person running ``dsexport run``), and every one of them continues from the latest commit
it read. So the commits form a chain, and the commit point is a create-only **claim** on the latest commit's
successor: ``exportTime=L/_next.json`` for the commit after ``L`` (``_first.json`` in the dataset folder for the
first one), holding the new manifest. Whoever creates it first commits; the others find it taken and lose
(``Superseded``), whatever their slots, since they would export the same new rows again. Then the winner (or, if
it was killed, the next run to come along: ``read_state``) publishes the claim as the slot's ``_manifest.json``, so
a folder with a manifest is always committed, and a committed folder is never without its manifest for long.

Cleaning follows from the chain: an attempt can commit only as the successor of the commit it started from, so
once a commit ``H`` is made, nothing can commit into a folder at or before ``H`` any more, except the files ``H``
lists. Those other files (parts of losers, of killed attempts, temporary files) are garbage, and are removed by the
winner after its commit, or by the next run (``clean_behind``). Folders after the latest commit may belong to a
live run and are never touched, except by their own attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsexport.destinations import AlreadyExistsError, Transport, join
from dsexport.engine import manifest as manifests
from dsexport.engine.manifest import Manifest
from dsexport.errors import StateError

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
NEXT = "_next.json"
FIRST = "_first.json"
SLOT_PREFIX = "exportTime="
_MARKERS = frozenset({MANIFEST, SUCCESS, NEXT})


@dataclass(frozen=True)
class DatasetState:
    """What the destination says about one dataset, recovered from it alone."""

    latest: Manifest | None  # the latest committed manifest, None before the first export
    latest_slot: str | None
    slots: tuple[str, ...]  # every exportTime folder, oldest first


class Superseded(Exception):  # noqa: N818 - an outcome of the commit, not a failure
    """Another run committed the successor of the commit this run started from."""

    def __init__(self, winner: Manifest) -> None:
        super().__init__(f"run {winner.run_id} committed exportTime {winner.export_time} first")
        self.winner = winner


def dataset_prefix(folder: str, dataset_id: str) -> str:
    return join(folder, dataset_id)


def slot_folder(folder: str, dataset_id: str, export_time: str) -> str:
    return join(folder, dataset_id, SLOT_PREFIX + export_time)


def claim_key(prefix: str, previous: str | None) -> str:
    """Where the claim on the successor of the commit at ``previous`` (None: before the first) is created."""
    return join(prefix, FIRST) if previous is None else join(prefix, SLOT_PREFIX + previous, NEXT)


def read_state(transport: Transport, prefix: str, *, dataset_id: str) -> DatasetState:
    """Find the latest commit: the newest folder holding a manifest, then the claims after it.

    Slot folders sort by name as by time, and commits only move forward in time (``is_behind``), so the newest
    folder that holds a manifest is the latest published commit; usually that is the first folder looked at. A
    claim after it is a commit whose run was killed before publishing it: it is published here, and so on. Every
    manifest and claim is validated (see ``manifest.parse``) before anything in it is used.
    """
    slots = tuple(
        sorted(
            name.removeprefix(SLOT_PREFIX) for name in transport.list_prefixes(prefix) if name.startswith(SLOT_PREFIX)
        )
    )
    latest: Manifest | None = None
    for slot in reversed(slots):
        key = join(prefix, SLOT_PREFIX + slot, MANIFEST)
        raw = transport.get(key)
        if raw is not None:
            latest = manifests.parse(raw, path=_where(transport, key), dataset_id=dataset_id, export_time=slot)
            break
    while (claimed := read_claim(transport, prefix, latest, dataset_id=dataset_id)) is not None:
        check_files(transport, prefix, claimed)
        publish(transport, prefix, claimed)
        latest = claimed
        slots = tuple(sorted({*slots, claimed.export_time}))
    return DatasetState(latest, latest.export_time if latest else None, slots)


def read_claim(transport: Transport, prefix: str, latest: Manifest | None, *, dataset_id: str) -> Manifest | None:
    """The commit claimed after ``latest`` (None: the first), validated as its successor; None if unclaimed."""
    previous = latest.export_time if latest else None
    key = claim_key(prefix, previous)
    raw = transport.get(key)
    if raw is None:
        return None
    where = _where(transport, key)
    claimed = manifests.parse(raw, path=where, dataset_id=dataset_id)
    sequence = latest.sequence + 1 if latest else 1
    if claimed.previous != previous or claimed.sequence != sequence or (previous and claimed.export_time <= previous):
        raise StateError(
            f"{where} claims exportTime {claimed.export_time} (sequence {claimed.sequence}, after "
            f"{claimed.previous}) as the commit after {previous or 'none'} (sequence {sequence}): the commit chain is "
            "damaged; restore the file, or remove the dataset's folder to export everything again"
        )
    return claimed


def commit(transport: Transport, prefix: str, manifest: Manifest) -> None:
    """Claim the successor of ``manifest.previous`` (create-only: at most one run wins), then publish.

    A claim that exists already and holds this run's manifest is this run's own, from a write that the store did
    but whose reply was lost; any other means another run committed first.
    """
    key = claim_key(prefix, manifest.previous)
    try:
        transport.put(key, manifest.to_bytes(), create_only=True)
    except AlreadyExistsError:
        raw = transport.get(key)
        winner = (
            None if raw is None else manifests.parse(raw, path=_where(transport, key), dataset_id=manifest.dataset_id)
        )
        if winner is None or winner.run_id != manifest.run_id:
            raise Superseded(winner or manifest) from None
    publish(transport, prefix, manifest)


def check_files(transport: Transport, prefix: str, manifest: Manifest) -> None:
    """Make sure the files a claimed commit lists are there, before publishing a claim this run did not make (its
    run wrote them before claiming, so only someone removing them by hand makes them miss)."""
    folder = join(prefix, SLOT_PREFIX + manifest.export_time)
    missing = set(manifest_paths(manifest)) - {_name(k) for k in transport.list_keys(folder)}
    if missing:
        raise StateError(
            f"{_where(transport, folder)}: the commit claimed for it lists files that are not there "
            f"({', '.join(sorted(missing)[:3])}); someone removed them: remove the folder and its claim to export "
            "its rows again"
        )


def publish(transport: Transport, prefix: str, manifest: Manifest) -> None:
    """Write a claimed commit's manifest into its folder, then ``_SUCCESS``; either may be there already, written
    by another run publishing the same claim (then it holds the same bytes)."""
    folder = join(prefix, SLOT_PREFIX + manifest.export_time)
    try:
        transport.put(join(folder, MANIFEST), manifest.to_bytes(), create_only=True)
    except AlreadyExistsError:
        if transport.get(join(folder, MANIFEST)) != manifest.to_bytes():
            raise StateError(f"{_where(transport, folder)}: its manifest is not the commit claimed for it") from None
    if not transport.exists(join(folder, SUCCESS)):
        transport.put(join(folder, SUCCESS), b"")


def manifest_paths(manifest: Manifest) -> list[str]:
    return [f.path for f in manifest.files]


def clean_behind(transport: Transport, prefix: str, state: DatasetState) -> int:
    """Remove what can no longer be committed, from the folders the latest commit made garbage: those after the
    commit it continued and before it (no run can commit there any more), and its own folder but for its files.
    Earlier folders were cleaned when the commits before were made. Returns how many files went."""
    latest = state.latest
    if latest is None:
        return 0
    removed = 0
    # A manifest written before the chain (sequence above 1, no ``previous``) does not say where its window starts;
    # runs of that release cleaned eagerly, so only its own folder is left to complete.
    if latest.previous is not None or latest.sequence == 1:
        after = latest.previous or ""
        for slot in state.slots:
            if after < slot < latest.export_time:  # pragma: no mutate (the bounds hold a manifest: clean_folder)
                removed += clean_folder(transport, join(prefix, SLOT_PREFIX + slot))
    return removed + finish_committed(transport, join(prefix, SLOT_PREFIX + latest.export_time), latest)


def clean_folder(transport: Transport, folder: str) -> int:
    """Delete every file of a folder that nothing committed (a killed or losing run's parts, temporary files); a
    folder that does hold a manifest is left alone."""
    keys = list(transport.list_keys(folder))
    if any(_name(k) == MANIFEST for k in keys):
        return 0
    transport.delete(keys)
    return len(keys)


def finish_committed(transport: Transport, folder: str, manifest: Manifest) -> int:
    """Complete a committed folder: its marker if a killed run left it out, and none of the files it does not list
    (a losing or killed attempt's). Returns how many files went."""
    keep = _MARKERS | set(manifest_paths(manifest))
    keys = list(transport.list_keys(folder))
    garbage = [k for k in keys if _name(k) not in keep]
    transport.delete(garbage)
    if not any(_name(k) == SUCCESS for k in keys):
        transport.put(join(folder, SUCCESS), b"")
    return len(garbage)


def remove_attempt(transport: Transport, folder: str, run_id: str) -> int:
    """Delete this attempt's own files (parts and temporary files carry its run id) after it lost the commit."""
    mine = [k for k in transport.list_keys(folder) if f"-{run_id}." in _name(k)]
    transport.delete(mine)
    return len(mine)


def read_committed(transport: Transport, prefix: str, *, dataset_id: str, export_time: str) -> Manifest | None:
    """The manifest of the slot ``export_time``, validated; None if that slot was never committed."""
    key = join(prefix, SLOT_PREFIX + export_time, MANIFEST)
    raw = transport.get(key)
    if raw is None:
        return None
    return manifests.parse(raw, path=_where(transport, key), dataset_id=dataset_id, export_time=export_time)


def is_behind(state: DatasetState, export_time: str) -> bool:
    """Whether ``export_time`` is before the latest commit, where nothing may be committed: recovery reads the
    newest committed folder as the watermark, so a commit behind it would be ignored by every later run. The
    latest commit exported everything up to a later time, so it already covers such a run's data."""
    return state.latest_slot is not None and export_time < state.latest_slot


def check_owner(state: DatasetState, dataset_export: str, *, where: str) -> None:
    """Two DatasetExports writing one folder would share (and corrupt) one watermark."""
    if state.latest is not None and state.latest.dataset_export != dataset_export:
        raise StateError(
            f"{where}: the folder is already used by DatasetExport {state.latest.dataset_export!r}; "
            "give this export another folder or datasetId"
        )


def _name(key: str) -> str:
    """A key's last part: the file's name in its folder."""
    return key.rpartition("/")[2]


def _where(transport: Transport, key: str) -> str:
    return f"{transport.describe()}/{key}"
