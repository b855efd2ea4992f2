"""A model of docs/design.md's rules for one dataset at one destination folder, written from the page alone.

The property test (``tests/guarantees/test_incremental_property.py``) feeds the same actions to the exporter and to
this model, and compares what each run commits. Nothing here imports the engine: the model is the specification
restated as code, so a rule broken in the engine shows up as a difference instead of being copied into the
expectation. Each rule below cites the sentence of design.md it restates.

Slots are exportTime folder names (``YYYYMMDDHHMM``), which sort as time does. Cursor values are plain Python
values of one type per dataset (ints for int64, timestamps and dates in their unit, str for strings): Python's
order on them is the order of the instants, days, numbers or UTF-8 strings they stand for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Cursor = Any  # int | str, comparable within one dataset


class Expect(StrEnum):
    """A run's outcome as design.md names it (``What a run reports``)."""

    exported = "exported"
    no_new_data = "no-new-data"
    already_committed = "already-committed"
    refused = "failed"  # a reset behind the latest commit: StateError, reason DestinationStateRefused


@dataclass(frozen=True)
class Row:
    id: int
    cursor: Cursor | None  # None: a null cursor
    extra: int | None  # a column some files add (schema evolution); None where null or absent


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the source folder
    mtime_ns: int
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Chain:
    """The watermark state of the current chain, as design.md defines it, in the simplest equivalent form.

    Strategy files: "The watermark is the newest modification time exported (maxModified) plus the paths exported
    within lookback of it. A file is new when it is younger than maxModified - lookback and not among those
    paths." Every path exported in the chain whose time is younger than that horizon is "within lookback" of
    maxModified (which never goes back), so "not among those paths" is "not exported before in this chain" for
    any file the horizon lets through: the model keeps every exported path.

    Strategy column: "rows whose cursor column is greater than the largest value exported so far".
    """

    max_modified_ns: int | None = None
    exported_paths: frozenset[str] = frozenset()
    max_cursor: Cursor | None = None
    # "Raising lookback widens the window as the watermark moves on, never below the window of the latest commit":
    # the oldest modification time a commit's window reached (its maxModified - lookback, or the previous one's if
    # that was later).
    window_since_ns: int | None = None


@dataclass(frozen=True)
class Commit:
    export_time: str
    ids: tuple[int, ...]  # sorted; the multiset of rows the commit must hold
    reset: bool  # "the manifest records "reset": true"
    reset_token: str | None
    mode: str
    previous: str | None  # the commit it continues (for cleaning: folders between the two are garbage)
    # The manifest's ``state`` and ``sourceFiles`` (design.md, The manifest): the watermark the next run continues
    # from, "stored exactly (timestamps as integers in their unit)", and for strategy files the files exported.
    state: Chain = Chain()
    source_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prediction:
    outcome: Expect
    commit: Commit | None = None
    chain: Chain | None = None  # the state after the commit


@dataclass
class Oracle:
    strategy: str  # files | column
    mode: str  # incremental | full
    lookback_ns: int
    files: dict[str, SourceFile] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    chain: Chain | None = None  # None before the first commit

    # ------------------------------------------------------------------------------------------- the source

    def add(self, source_file: SourceFile) -> None:
        """Source files are immutable once visible (Assumptions): a path is added once."""
        assert source_file.path not in self.files
        self.files[source_file.path] = source_file

    def rows(self) -> dict[int, Row]:
        return {r.id: r for f in self.files.values() for r in f.rows}

    @property
    def latest(self) -> Commit | None:
        return self.commits[-1] if self.commits else None

    # ---------------------------------------------------------------------------------------------- one run

    def predict(self, slot: str, *, reset: bool = False, token: str | None = None) -> Prediction:
        """What a run for exportTime ``slot`` must do now (``One run of one dataset``, step 3, Decide)."""
        latest = self.latest
        # "The slot is already committed: nothing to do (outcome already-committed) ... Running the same slot twice
        # never exports twice." This comes first, for resets too: a committed slot is never written again.
        if any(c.export_time == slot for c in self.commits):
            return Prediction(Expect.already_committed)
        applied = reset and token is not None and latest is not None and latest.reset_token == token
        # "The slot is older than the latest commit: nothing to do either ... A reset is the exception ... behind
        # the latest commit it is refused (StateError ...) unless that commit carries its reset token."
        if latest is not None and slot < latest.export_time:
            return Prediction(Expect.refused if reset and not applied else Expect.already_committed)
        # "A run asked for a reset whose token the latest commit already carries ... continues incrementally
        # instead of backfilling again. Without a token, every run given --reset backfills."
        fresh = reset and not applied
        # "mode: incremental (the first run is a full backfill)"; "mode: full exports every row on every run";
        # a reset "makes the next export of that dataset a full backfill that starts a new watermark chain".
        backfill = self.chain is None or fresh or self.mode == "full"
        chain = Chain() if backfill or self.chain is None else self.chain
        if self.strategy == "files":
            if backfill:
                chosen = list(self.files.values())
            else:
                assert chain.max_modified_ns is not None
                horizon = chain.max_modified_ns - self.lookback_ns
                if chain.window_since_ns is not None:
                    horizon = max(horizon, chain.window_since_ns)
                chosen = [f for f in self.files.values() if f.mtime_ns > horizon and f.path not in chain.exported_paths]
            if not chosen:
                # Step 4: "An incremental run that finds nothing new writes nothing ... reports no-new-data". A
                # backfill of an empty source is modelled the same way (design.md does not say).
                return Prediction(Expect.no_new_data)
            # "(A run whose new files hold zero rows does commit: the watermark moves past those files.)"
            ids = [r.id for f in chosen for r in f.rows]
            paths = tuple(sorted(f.path for f in chosen))
            newest = max(f.mtime_ns for f in chosen)
            top = newest if chain.max_modified_ns is None else max(newest, chain.max_modified_ns)
            window = top - self.lookback_ns
            after = Chain(
                max_modified_ns=top,
                exported_paths=chain.exported_paths | {f.path for f in chosen},
                window_since_ns=window if chain.window_since_ns is None else max(window, chain.window_since_ns),
            )
        else:
            if not self.files:
                return Prediction(Expect.no_new_data)
            # "rows with a null cursor are never exported" (also by a backfill, a reset or mode full).
            candidates = [r for f in self.files.values() for r in f.rows if r.cursor is not None]
            bound = chain.max_cursor
            chosen_rows = [r for r in candidates if bound is None or r.cursor > bound]
            if not backfill and not chosen_rows:
                return Prediction(Expect.no_new_data)
            # A backfill (the first export, a reset, mode full) commits even without a row: design.md says so only
            # of strategy files ("new files hold zero rows"); tests/local pins it for an all-null first export.
            ids = [r.id for r in chosen_rows]
            paths = ()
            highest = max((r.cursor for r in chosen_rows if r.cursor is not None), default=None)
            after = Chain(max_cursor=highest if highest is not None else bound)
        commit = Commit(
            export_time=slot,
            ids=tuple(sorted(ids)),
            reset=fresh,
            # "the reset's commit records it as resetToken, and every later commit of the chain carries it forward"
            reset_token=token if fresh else (latest.reset_token if latest else None),
            mode=self.mode,
            previous=latest.export_time if latest else None,
            state=after,
            source_files=paths,
        )
        return Prediction(Expect.exported, commit, after)

    def apply(self, prediction: Prediction) -> None:
        """The run committed what ``prediction`` says (the caller knows it did)."""
        assert prediction.commit is not None and prediction.chain is not None
        self.commits.append(prediction.commit)
        self.chain = prediction.chain

    # ------------------------------------------------------------------------------------------ what it says

    def chains(self) -> list[list[Commit]]:
        """The commits grouped by watermark chain: a reset starts a new one; in mode full every commit is a
        snapshot of its own."""
        out: list[list[Commit]] = []
        for c in self.commits:
            if not out or c.reset or self.mode == "full":
                out.append([])
            out[-1].append(c)
        return out

    def never_exported(self) -> set[int]:
        """Source rows no commit holds: what the documented rules lose (null cursors, files later than lookback,
        cursors at or below the watermark), for the report of a failing example."""
        held = {i for c in self.commits for i in c.ids}
        return set(self.rows()) - held
