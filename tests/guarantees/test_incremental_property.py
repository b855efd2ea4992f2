"""Property: whatever the source does and however runs go, each commit holds exactly what docs/design.md says.

A hypothesis state machine appends Parquet files and runs exports of one dataset to a local folder, in this process
(``tests.helpers.run_local``), and feeds the same actions to ``tests.oracle``, a model of design.md's rules that
knows nothing of the engine. The inputs are the ones the rules are about:

- files with explicit modification times (``os.utime``): ties with each other and with the watermark, at the
  lookback horizon and a nanosecond inside it, late arrivals inside and outside ``lookback`` (from 0s to 2h);
- strategy column with int64 (and int32 files, which widen), timestamps with a zone, strings and dates as cursors,
  drawn from a few values so they tie across runs, with null cursors, null-typed and missing cursor columns;
- schema evolution: files adding a nullable column (int64 or int32) or a null-typed one;
- runs of the same slot again, a later slot, an earlier one (a late scheduled run), a run-now minute folder;
- resets with and without a token (``--reset``, ``--reset-token``), ``mode: full``, Parquet and JSON output with
  parts of one to three records;
- runs SIGKILLed before a random operation at the destination (``tests.prop_kill``, a fork per kill).

After every step the commits at the destination must be the oracle's, one for one: the same exportTimes, each
holding exactly the expected rows (every file checked against its manifest entry), the values of the evolving
column as in the source, the ``reset``/``resetToken``/``mode`` the manifest records; no row twice in one
incremental chain, nothing that is not in the source; and after a run that was not killed, no folder but committed
ones, except a killed attempt's after the latest commit, which design.md says stays until the chain passes it.
The last step appends a file every rule selects and runs a later slot, after which the helper's
``assert_only_committed_files`` must hold.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from tests.helpers import assert_only_committed_files, committed, flow_yaml, run_local
from tests.oracle import Commit, Expect, Oracle, Prediction, Row, SourceFile
from tests.prop_kill import Killer

from dsexport.engine import bytecopy

T0 = dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)  # slot 202612010000 of the helper's 3-hourly schedule
WINDOW = dt.timedelta(hours=3)
CLOCK0_NS = 1_764_460_800 * 10**9  # 2025-11-30: the source writers' clock starts here
SECOND_NS = 10**9
LOOKBACKS = {"0s": 0, "1s": SECOND_NS, "15m": 15 * 60 * SECOND_NS, "2h": 2 * 3600 * SECOND_NS}
CLOCK_STEPS = (0, 1, SECOND_NS, 20 * 60 * SECOND_NS)  # ties, a nanosecond, a second, more than 15m
ROOT = ("out", "events")

# Cursor types: the Arrow type, the few values rows draw from (so they tie), and a value above all of them.
TS_BASE = 1_764_547_200
CURSORS: dict[str, tuple[pa.DataType, st.SearchStrategy[Any], Any]] = {
    "int64": (pa.int64(), st.integers(-3, 9), 10**6),
    "timestamp-us-utc": (
        pa.timestamp("us", tz="UTC"),
        st.integers(0, 9).map(lambda k: (TS_BASE + k) * 10**6),
        (TS_BASE + 10**6) * 10**6,
    ),
    "timestamp-ns-kolkata": (
        pa.timestamp("ns", tz="Asia/Kolkata"),
        st.integers(0, 9).map(lambda k: TS_BASE * 10**9 + k),
        (TS_BASE + 10**6) * 10**9,
    ),
    "timestamp-ms-offset": (
        pa.timestamp("ms", tz="+05:30"),
        st.integers(0, 9).map(lambda k: (TS_BASE + k) * 10**3),
        (TS_BASE + 10**6) * 10**3,
    ),
    "string": (pa.string(), st.text(alphabet="aBz0é", max_size=2), "\uffff\uffff"),
    "date32": (pa.date32(), st.integers(20_400, 20_409), 30_000),
}
MTIMES = ["clock", "tie_file", "tie_watermark", "horizon", "just_inside", "inside", "outside", "newer"]
CURSOR_KINDS = ["typed", "typed", "typed", "narrow", "null_typed", "absent"]  # narrow: int32 files of an int64 cursor
EXTRA_KINDS = ["absent", "absent", "int64", "int32", "null_typed"]

# A run's arguments: how its slot moves (see Exports._when), and whether it resets, with which token.
MOVES = st.sampled_from(["same", "next", "next", "skip", "behind", "run_now"])
MINUTES = st.integers(0, 179)
RESETS = st.sampled_from([False, False, False, True])
TOKENS = st.sampled_from([None, "t-1", "t-2"])

# How often the risky inputs were reached over all examples of a test run: asserted at its end, so a change that
# stops the machine from reaching them fails instead of passing vacuously.
reached: Counter[str] = Counter()
killer: list[Killer] = []  # the test's zygote for killed runs (``tests.prop_kill``)


# --------------------------------------------------------------------------------------------- the source


def _arrow(values: list[Any], type_: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(type_):
        return pa.array(values, pa.int64()).cast(type_)
    if pa.types.is_date32(type_):
        return pa.array(values, pa.int32()).cast(type_)
    return pa.array(values, type_)


def write_source_file(
    path: Path, rows: list[Row], *, cursor_type: pa.DataType, cursor_kind: str, extra_kind: str, mtime_ns: int
) -> int:
    """One Parquet file with ``rows``, its modification time set to ``mtime_ns``; returns the time the
    filesystem keeps (the one the exporter lists)."""
    columns: dict[str, pa.Array] = {"_id": pa.array([r.id for r in rows], pa.int64())}
    if cursor_kind == "null_typed":
        columns["cursor"] = pa.nulls(len(rows))
    elif cursor_kind != "absent":
        narrow = cursor_kind == "narrow" and pa.types.is_int64(cursor_type)
        columns["cursor"] = _arrow([r.cursor for r in rows], pa.int32() if narrow else cursor_type)
    if extra_kind == "null_typed":
        columns["extra"] = pa.nulls(len(rows))
    elif extra_kind != "absent":
        columns["extra"] = pa.array([r.extra for r in rows], pa.int64() if extra_kind == "int64" else pa.int32())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path.stat().st_mtime_ns


# ---------------------------------------------------------------------------------------- the destination


def commit_rows(dest: Path, manifest: dict[str, Any]) -> list[tuple[int, Any]]:
    """(``_id``, ``extra``) of every row of one commit, each file checked against its manifest entry."""
    folder = dest.joinpath(*ROOT, f"exportTime={manifest['exportTime']}")
    rows: list[tuple[int, Any]] = []
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"], entry
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry
        if entry["path"].endswith(".parquet"):
            table = pq.read_table(pa.BufferReader(data))
        elif data:
            options = pajson.ReadOptions(block_size=len(data) + 1)
            table = pajson.read_json(pa.BufferReader(data), read_options=options)
        else:
            table = pa.table({"_id": pa.array([], pa.int64())})
        assert table.num_rows == entry["records"], entry
        extra = table.column("extra").to_pylist() if "extra" in table.column_names else [None] * table.num_rows
        rows.extend(zip(table.column("_id").to_pylist(), extra, strict=True))
    return rows


def claim(dest: Path, latest: Commit | None) -> dict[str, Any] | None:
    """The claim on the commit after ``latest`` (design.md, the commit chain: ``_first.json``, or ``_next.json`` in
    the latest commit's folder), if there is one."""
    root = dest.joinpath(*ROOT)
    path = root / "_first.json" if latest is None else root / f"exportTime={latest.export_time}" / "_next.json"
    return json.loads(path.read_text()) if path.exists() else None


def folders(dest: Path) -> dict[str, set[str]]:
    """Every entry of the dataset folder: slot folders with their file names, and top-level files (as "")."""
    root = dest.joinpath(*ROOT)
    out: dict[str, set[str]] = {}
    if root.exists():
        for p in root.rglob("*"):
            if p.is_file():
                rel = p.relative_to(root).parts
                out.setdefault(rel[0] if len(rel) > 1 else "", set()).add(rel[-1])
    return out


# ------------------------------------------------------------------------------------------ the machine


class Exports(RuleBasedStateMachine):
    """One dataset, one local destination, and the oracle beside them."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="dsx-prop-"))
        self.src, self.dest = self.tmp / "lake", self.tmp / "dest"
        self.src.mkdir()
        self.oracle: Oracle | None = None
        self.flow: Path | None = None
        self.next_id = 0
        self.clock = CLOCK0_NS
        self.window = 0  # the current schedule slot: T0 + window * 3h
        self.dirty: set[str] = set()  # slots where a killed attempt that did not commit may have left files
        self.cursor: tuple[pa.DataType, st.SearchStrategy[Any], Any] = CURSORS["int64"]
        self.spec: dict[str, Any] = {}

    @initialize(
        strategy=st.sampled_from(["files", "column"]),
        mode=st.sampled_from(["incremental", "incremental", "full"]),
        fmt=st.sampled_from(["parquet", "json"]),
        lookback=st.sampled_from(sorted(LOOKBACKS)),
        cursor=st.sampled_from(sorted(CURSORS)),
        max_records=st.sampled_from([1, 2, 3, 1000]),
        data=st.data(),
    )
    def setup(
        self, strategy: str, mode: str, fmt: str, lookback: str, cursor: str, max_records: int, data: st.DataObject
    ) -> None:
        column = "cursor" if strategy == "column" else None
        self.spec = {"fmt": fmt, "strategy": strategy, "column": column, "mode": mode, "max_records": max_records}
        self.flow = flow_yaml(self.tmp, source=self.src, dest=self.dest, lookback=lookback, **self.spec)
        self.oracle = Oracle(strategy=strategy, mode=mode, lookback_ns=LOOKBACKS[lookback])
        self.cursor = CURSORS[cursor]
        # One file with the typed cursor column first, so the column is in every dataset the exporter reads.
        cursors = data.draw(st.lists(st.none() | self.cursor[1], max_size=3), label="first cursors")
        rows = [Row(self._id(), c, None) for c in cursors]
        self._add(rows, cursor_kind="typed", extra_kind="absent", mtime_ns=self.clock, sub=False)

    # ------------------------------------------------------------------------------------------- appends

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _add(self, rows: list[Row], *, cursor_kind: str, extra_kind: str, mtime_ns: int, sub: bool) -> None:
        assert self.oracle is not None
        name = f"f{len(self.oracle.files):04d}.parquet"
        rel = f"date=2026-11-30/{name}" if sub else name
        kept = write_source_file(
            self.src / rel,
            rows,
            cursor_type=self.cursor[0],
            cursor_kind=cursor_kind,
            extra_kind=extra_kind,
            mtime_ns=mtime_ns,
        )
        if cursor_kind in ("null_typed", "absent"):
            rows = [Row(r.id, None, r.extra) for r in rows]
        if extra_kind in ("absent", "null_typed"):
            rows = [Row(r.id, r.cursor, None) for r in rows]
        self.oracle.add(SourceFile(rel, kept, tuple(rows)))

    def _mtime(self, when: str, offset: int) -> int:
        """A modification time aimed at the rule ``when`` names, from the oracle's watermark where there is one."""
        assert self.oracle is not None
        chain = self.oracle.chain
        top = chain.max_modified_ns if chain is not None else None
        lookback = self.oracle.lookback_ns
        if when == "clock" or (top is None and when != "tie_file"):
            self.clock += CLOCK_STEPS[offset % len(CLOCK_STEPS)]
            return self.clock
        if when == "tie_file":
            times = sorted({f.mtime_ns for f in self.oracle.files.values()})
            return times[offset % len(times)]
        assert top is not None
        horizon = top - lookback
        return {
            "tie_watermark": top,
            "horizon": horizon,
            "just_inside": horizon + 1,
            "inside": horizon + 1 + offset % max(lookback, 1),
            "outside": horizon - 1 - offset,
            "newer": top + 1 + offset,
        }[when]

    @rule(data=st.data(), files=st.integers(1, 3))
    def append(self, data: st.DataObject, files: int) -> None:
        """New source files, each with explicit modification time, cursors and columns."""
        values = self.cursor[1]
        for _ in range(files):
            n = data.draw(st.integers(0, 4), label="rows")
            cursors = data.draw(st.lists(st.none() | values | values, min_size=n, max_size=n), label="cursors")
            extras = data.draw(st.lists(st.none() | st.integers(-5, 5), min_size=n, max_size=n), label="extra")
            rows = [Row(self._id(), c, e) for c, e in zip(cursors, extras, strict=True)]
            when = data.draw(st.sampled_from(MTIMES), label="mtime")
            offset = data.draw(st.integers(0, 3 * 3600 * SECOND_NS), label="offset")
            self._add(
                rows,
                cursor_kind=data.draw(st.sampled_from(CURSOR_KINDS), label="cursor kind"),
                extra_kind=data.draw(st.sampled_from(EXTRA_KINDS), label="extra kind"),
                mtime_ns=self._mtime(when, offset),
                sub=data.draw(st.booleans(), label="in a subfolder"),
            )
            reached[f"mtime {when}"] += 1

    @rule(lookback=st.sampled_from(sorted(LOOKBACKS)))
    def change_lookback(self, lookback: str) -> None:
        """The user edits ``lookback``, as design.md advises for files that arrive later than it ("raise
        lookback"); the next runs select with the new value."""
        assert self.oracle is not None
        self.flow = flow_yaml(self.tmp, source=self.src, dest=self.dest, lookback=lookback, **self.spec)
        if LOOKBACKS[lookback] > self.oracle.lookback_ns:
            reached["lookback raised"] += 1
        self.oracle.lookback_ns = LOOKBACKS[lookback]

    # ---------------------------------------------------------------------------------------------- runs

    def _when(self, move: str, minute: int) -> tuple[dt.datetime, str | None, str]:
        """(--at, --export-time, the exportTime folder the run must use) for a run that moves as ``move`` says."""
        if move == "next":
            self.window += 1
        elif move == "skip":
            self.window += 2
        window = self.window - 1 - minute % 3 if move == "behind" else self.window
        start = T0 + window * WINDOW
        at = start + dt.timedelta(minutes=minute)
        if move == "run_now":  # a run-now Job names its minute's folder, beside the scheduled slots
            export_time = (start + dt.timedelta(minutes=1 + minute % 179)).strftime("%Y%m%d%H%M")
            return at, export_time, export_time
        return at, None, start.strftime("%Y%m%d%H%M")

    def _check_outcome(self, prediction: Prediction, outcome: str, reason: str | None, message: str | None) -> None:
        assert self.oracle is not None
        expected = prediction.outcome
        assert outcome == str(expected), f"expected {expected}, the run said {outcome}: {message}"
        if expected == Expect.refused:
            assert reason == "DestinationStateRefused", (reason, message)
        if expected == Expect.exported:
            self.oracle.apply(prediction)
        reached[f"outcome {outcome}"] += 1

    @rule(move=MOVES, minute=MINUTES, reset=RESETS, token=TOKENS)
    def run(self, move: str, minute: int, reset: bool, token: str | None) -> None:
        """One export that runs to its end."""
        assert self.oracle is not None and self.flow is not None
        at, export_time, slot = self._when(move, minute)
        prediction = self.oracle.predict(slot, reset=reset, token=token if reset else None)
        [result] = run_local(
            self.flow,
            at,
            resets=("events",) if reset else (),
            reset_token=token if reset else None,
            export_time=export_time,
        )
        self._check_outcome(prediction, str(result.outcome), result.reason, result.message)
        self._check_destination(completed=True)

    @rule(minute=MINUTES, token=TOKENS)
    def late_reset(self, minute: int, token: str | None) -> None:
        """A reset for a slot behind the latest commit: refused unless that commit carries its token."""
        self.run("behind", minute, reset=True, token=token)

    @rule(move=MOVES, minute=MINUTES, reset=RESETS, token=TOKENS, kill_at=st.integers(0, 60))
    def killed_run(self, move: str, minute: int, reset: bool, token: str | None, kill_at: int) -> None:
        """One export SIGKILLed before its ``kill_at``-th operation at the destination (if it gets that far)."""
        assert self.oracle is not None and self.flow is not None
        at, export_time, slot = self._when(move, minute)
        prediction = self.oracle.predict(slot, reset=reset, token=token if reset else None)
        latest = self.oracle.latest
        ended = killer[0].run(
            self.flow,
            at,
            kill_at=kill_at,
            scratch=self.tmp,
            resets=("events",) if reset else (),
            reset_token=token if reset else None,
            export_time=export_time,
        )
        if not ended.killed:
            assert ended.outcome is not None
            self._check_outcome(prediction, ended.outcome, ended.reason, ended.message)
            self._check_destination(completed=True)
            return
        reached["killed"] += 1
        # design.md: "A SIGKILL anywhere leaves either a commit (its claim ...) or files that no commit can list".
        made = claim(self.dest, latest)
        if made is not None:
            assert prediction.outcome == Expect.exported, f"a run expected to end {prediction.outcome} committed"
            assert made["exportTime"] == slot, made
            self.oracle.apply(prediction)
            reached["killed after its commit point"] += 1
        elif prediction.outcome == Expect.exported:
            self.dirty.add(slot)
            reached["killed before its commit point"] += 1
        self._check_destination(completed=False)

    @rule(kill_at=st.integers(0, 40), rows=st.integers(0, 3))
    def killed_after_append(self, kill_at: int, rows: int) -> None:
        """A file newer than any, then a later slot, killed: under strategy files and mode full a run with something
        to commit, so kills land on both sides of its commit point in every test run."""
        assert self.oracle is not None
        newest = max(f.mtime_ns for f in self.oracle.files.values())
        fresh = [Row(self._id(), None, None) for _ in range(rows)]
        self._add(fresh, cursor_kind="typed", extra_kind="absent", mtime_ns=newest + SECOND_NS, sub=False)
        self.killed_run("next", 0, reset=False, token=None, kill_at=kill_at)

    # ------------------------------------------------------------------------------------------- checks

    def _check_destination(self, *, completed: bool) -> None:
        """The commits at the destination are the oracle's, and (after a run that ended) no garbage is left
        where design.md says there is none."""
        assert self.oracle is not None
        manifests = committed(self.dest)
        commits = self.oracle.commits
        published = [m["exportTime"] for m in manifests]
        expected = [c.export_time for c in commits]
        if published != expected:
            # Only a killed run's commit may be unpublished, until the next run publishes its claim.
            assert not completed, f"committed exportTimes {published}, expected {expected}"
            assert published == expected[:-1], f"committed exportTimes {published}, expected {expected}"
            previous = commits[-2] if len(commits) > 1 else None
            assert claim(self.dest, previous) is not None
        rows = self.oracle.rows()
        chain_of: dict[str, int] = {c.export_time: k for k, chain in enumerate(self.oracle.chains()) for c in chain}
        per_chain: dict[int, Counter[int]] = {}
        for manifest, commit in zip(manifests, commits, strict=False):
            held = commit_rows(self.dest, manifest)
            ids = Counter(i for i, _ in held)
            assert set(ids) <= set(rows), f"{commit.export_time} holds rows that are not in the source"
            seen = per_chain.setdefault(chain_of[commit.export_time], Counter())
            twice = {i for i in ids if seen[i] or ids[i] > 1}
            assert not twice, f"{commit.export_time}: rows {sorted(twice)} committed twice in one chain"
            seen.update(ids)
            got = sorted(ids.elements())
            missing, extra = set(commit.ids) - set(got), set(got) - set(commit.ids)
            assert got == list(commit.ids), (
                f"{commit.export_time}: rows missing {sorted(missing)}, not expected {sorted(extra)}"
            )
            for i, value in held:
                assert value == rows[i].extra, f"row {i}: extra {value!r}, the source has {rows[i].extra!r}"
            assert manifest["reset"] == commit.reset, commit
            assert manifest.get("resetToken") == commit.reset_token, commit
            assert manifest["mode"] == commit.mode, commit
            reached.update(f"part via {f.get('via')}" for f in manifest["files"])
            state = manifest["state"]
            if self.oracle.strategy == "files":
                assert state["maxModifiedNs"] == commit.state.max_modified_ns, (state, commit)
                assert state["recentSinceNs"] == commit.state.window_since_ns, (state, commit)
                assert sorted(manifest["sourceFiles"]) == list(commit.source_files), commit
            else:
                assert state.get("value") == commit.state.max_cursor, (state, commit)
        if completed:
            self._check_folders()

    def _check_folders(self) -> None:
        """Committed folders hold their manifest's files and markers only; any other folder is a killed attempt's
        after the latest commit (design.md: "Folders after the latest commit may be a live run's and are left
        alone; a killed attempt's files there go when the chain passes them")."""
        assert self.oracle is not None
        latest = self.oracle.latest
        listed = folders(self.dest)
        top = listed.pop("", set())
        assert top == ({"_first.json"} if latest else set()), top
        manifests = {f"exportTime={m['exportTime']}": m for m in committed(self.dest)}
        for name, files in listed.items():
            slot = name.removeprefix("exportTime=")
            if name not in manifests:
                assert latest is not None and slot > latest.export_time and slot in self.dirty, (
                    f"{name} is not committed and is not a killed attempt's after the latest commit: {sorted(files)}"
                )
                continue
            claim_file = set() if latest is not None and slot == latest.export_time else {"_next.json"}
            listed_files = {f["path"] for f in manifests[name]["files"]}
            assert files == listed_files | {"_manifest.json", "_SUCCESS"} | claim_file, (name, sorted(files))

    @invariant()
    def sources_unchanged(self) -> None:
        """The exporter never writes into the source."""
        if self.oracle is not None:
            on_disk = {str(p.relative_to(self.src)) for p in self.src.rglob("*.parquet")}
            assert on_disk == set(self.oracle.files)

    def teardown(self) -> None:
        """A final run that has something new under every rule and a slot after every other: it commits, and
        then the chain has passed every killed attempt's folder, so nothing but committed files may remain."""
        try:
            if self.oracle is not None and self.flow is not None:
                value = self.cursor[2]
                newest = max(f.mtime_ns for f in self.oracle.files.values())
                rows = [Row(self._id(), value, 1)]
                self._add(rows, cursor_kind="typed", extra_kind="int64", mtime_ns=newest + SECOND_NS, sub=False)
                self.window += 3
                self.run("same", 0, reset=False, token=None)
                assert self.oracle.commits[-1].export_time == (T0 + self.window * WINDOW).strftime("%Y%m%d%H%M")
                assert_only_committed_files(self.dest)
                reached["lost by the rules"] += len(self.oracle.never_exported())
                reached["examples"] += 1
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.mark.timeout(900)  # passing takes about a minute; a failure is shrunk for up to five more (hypothesis)
def test_exports_follow_the_documented_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's examples, then proof that they reached the risky inputs.

    The byte copy (``dsexport.engine.bytecopy``) takes files above 1 MiB; its threshold is lowered so that it takes
    the machine's small files too, and kills land while parts are copied two at a time.
    """
    reached.clear()
    monkeypatch.setattr(bytecopy, "MIN_COPY_BYTES", 0)
    killer.append(Killer(min_copy_bytes=0))
    try:
        run_state_machine_as_test(Exports, settings=settings(max_examples=80, stateful_step_count=30))
    finally:
        killer.pop().close()
    print(f"reached: {dict(sorted(reached.items()))}")  # with -s: what the examples exercised
    # The risky inputs were reached, not only generated: kills on both sides of the commit point, every kind of
    # modification time, refused resets, and rows the rules leave out.
    for what in ("killed before its commit point", "killed after its commit point", "outcome failed"):
        assert reached[what] > 0, (what, reached)
    assert all(reached[f"mtime {m}"] > 0 for m in MTIMES), reached
    assert reached["lost by the rules"] > 0, reached
    assert reached["part via copy"] > 0 and reached["part via encode"] > 0, reached
    assert reached["lookback raised"] > 0, reached
