"""The commit protocol at the destination: what is committed, what is a leftover, and how a commit happens.

Layout: ``FOLDER/DATASET_ID/exportTime=YYYYMMDDHHMM/`` holds data files, then ``_manifest.json`` (the commit
point: written once, create-only, after every data file), then ``_SUCCESS`` (a marker for tools that look for
it). A folder without a manifest is never committed; its files are leftovers of a killed run.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsexport.destinations import Transport, join
from dsexport.engine import manifest as manifests
from dsexport.engine.manifest import Manifest
from dsexport.errors import StateError

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
SLOT_PREFIX = "exportTime="


@dataclass(frozen=True)
class DatasetState:
    """What the destination says about one dataset, recovered from it alone."""

    latest: Manifest | None  # the latest committed manifest, None before the first export
    latest_slot: str | None
    uncommitted: tuple[str, ...]  # slot folders newer than the latest commit that hold no manifest


def dataset_prefix(folder: str, dataset_id: str) -> str:
    return join(folder, dataset_id)


def slot_folder(folder: str, dataset_id: str, export_time: str) -> str:
    return join(folder, dataset_id, SLOT_PREFIX + export_time)


def read_state(transport: Transport, prefix: str, *, dataset_id: str) -> DatasetState:
    """Find the latest committed export by walking slot folders from the newest.

    Slot folders sort by name as by time. Commits only move forward in time (``is_behind``), so the newest
    folder that holds a manifest carries the current watermark; usually that is the first folder looked at. The
    manifest is validated (see ``manifest.parse``) before anything in it is used.
    """
    slots = sorted(
        (name.removeprefix(SLOT_PREFIX) for name in transport.list_prefixes(prefix) if name.startswith(SLOT_PREFIX)),
        reverse=True,
    )
    uncommitted: list[str] = []
    for slot in slots:
        key = join(prefix, SLOT_PREFIX + slot, MANIFEST)
        raw = transport.get(key)
        if raw is not None:
            where = f"{transport.describe()}/{key}"
            latest = manifests.parse(raw, path=where, dataset_id=dataset_id, export_time=slot)
            return DatasetState(latest, slot, tuple(uncommitted))
        uncommitted.append(slot)
    return DatasetState(None, None, tuple(uncommitted))


def is_committed(transport: Transport, folder: str) -> bool:
    return transport.exists(join(folder, MANIFEST))


def clean_folder(transport: Transport, folder: str) -> int:
    """Delete every file of an uncommitted slot folder (a killed run's parts and temporary files)."""
    keys = list(transport.list_keys(folder))
    transport.delete(keys)
    return len(keys)


def finish_committed(transport: Transport, folder: str) -> None:
    """Complete a commit that a killed run left between manifest and marker, and drop its temporary files."""
    leftovers = [k for k in transport.list_keys(folder) if k.rsplit("/", 1)[-1].startswith(".")]
    transport.delete(leftovers)
    if not transport.exists(join(folder, SUCCESS)):
        transport.put(join(folder, SUCCESS), b"")


def commit(transport: Transport, folder: str, manifest: Manifest) -> None:
    """Write the manifest (create-only: a concurrent writer that committed first wins), then ``_SUCCESS``."""
    transport.put(join(folder, MANIFEST), manifest.to_bytes(), create_only=True)
    transport.put(join(folder, SUCCESS), b"")


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
