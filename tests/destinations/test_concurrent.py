"""Two exporters of one dataset at once: at most one commits, and what it commits is exactly its manifest.

The deterministic harness runs two exports in threads of this process, each through a transport that counts its
operations at the destination (listings, reads, each part, the claim, the manifest, the marker, deletions) and can
hold its run before any one of them, or in the middle of writing a part. For every pair (i, j): run A is held
before its i-th operation, run B runs until it is held before its j-th, then A finishes, then B. Every
interleaving of the two runs' steps at that grain is reached this way, in both orders, whichever run wins. After
each pair the committed exports are read back through the destination (every listed file with its size and
sha256) and must hold every source row once; a later commit must leave nothing but committed files.

The randomized test in ``test_suite`` adds processes killed at random moments.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from examples import sample
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids
from tests.servers import SECRET_NAME, Target

from dsexport.api import loader
from dsexport.cli import local
from dsexport.destinations import ServerCopy, StoredObject, Transport, open_transport
from dsexport.destinations.base import Writable
from dsexport.engine import DatasetResult, ExportRequest, Outcome, export_dataset

SLOT0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)  # the helper's schedule: every 3 hours
SLOT1 = SLOT0 + dt.timedelta(hours=3)  # slot 202612010300
RUN_NOW = "202612010407"  # a run-now Job's folder, beside slot 202612010300
LATER = SLOT0 + dt.timedelta(days=1)
DEADLINE = 60.0
LOSERS = {Outcome.superseded, Outcome.already_committed, Outcome.no_new_data}


class Stepping(Transport):
    """``inner``, counting its operations and holding the run before operation ``hold_at`` until released.

    Writes go one at a time (``parallel_writes``), so a run's operations come in the same order every time.
    """

    parallel_writes = 1

    def __init__(self, inner: Transport, *, hold_at: int | None) -> None:
        self.inner = inner
        self.hold_at = hold_at
        self.steps: list[str] = []
        self.held = threading.Event()
        self.release = threading.Event()

    def _step(self, what: str) -> None:
        if len(self.steps) == self.hold_at:
            self.held.set()
            assert self.release.wait(DEADLINE), f"held before {what} for {DEADLINE} s"
        self.steps.append(what)

    def describe(self) -> str:
        return self.inner.describe()

    @contextmanager
    def _write(self, key: str) -> Iterator[Writable]:
        self._step(f"write {key}")
        with self.inner.open_write(key) as out:
            self._step(f"writing {key}")  # held here, the run has a temporary file (or an upload) under way
            yield out

    def open_write(self, key: str) -> AbstractContextManager[Writable]:
        return self._write(key)

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._step(f"put {key}")
        self.inner.put(key, data, create_only=create_only)

    def get(self, key: str) -> bytes | None:
        self._step(f"get {key}")
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        self._step(f"exists {key}")
        return self.inner.exists(key)

    def list_prefixes(self, prefix: str) -> list[str]:
        self._step(f"list {prefix}/")
        return self.inner.list_prefixes(prefix)

    def list_keys(self, prefix: str) -> Iterator[str]:
        self._step(f"list {prefix}/**")
        return self.inner.list_keys(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self._step(f"delete {len(keys)}")
        self.inner.delete(keys)

    def server_copy(self, source: StoredObject, key: str) -> ServerCopy | None:
        self._step(f"copy {key}")
        return self.inner.server_copy(source, key)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Run:
    """One export in a thread of its own, through a ``Stepping`` transport."""

    request: ExportRequest
    transport: Stepping
    result: DatasetResult | None = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="export", daemon=True)

    def _run(self) -> None:
        try:
            self.result = export_dataset(self.request, self.transport)
        except BaseException as e:
            self.error = e

    def start(self) -> None:
        """Start, and return once the run is held or has ended."""
        self.thread.start()
        while not self.transport.held.wait(0.005):
            if not self.thread.is_alive():
                return
        assert self.thread.is_alive()

    def finish(self) -> DatasetResult:
        self.transport.release.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"the run did not end within {DEADLINE} s"
        self.transport.close()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class Scene:
    """A source, a flow and a destination folder of their own, for one interleaving."""

    src: Path
    flow: Path
    folder: str
    target: Target
    next_id: int

    @classmethod
    def make(cls, tmp: Path, target: Target, *, committed_before: bool) -> Scene:
        """Two source files; with ``committed_before``, exported at slot 0, then two more that are new."""
        tmp.mkdir()
        src = tmp / "lake"
        next_id = sample.write_files(src, files=2, rows_per_file=300, seed=1, start=START)
        folder = f"c-{uuid.uuid4().hex[:12]}"
        secrets = {SECRET_NAME: target.secret} if target.secret is not None else None
        flow = flow_yaml(
            tmp, source=src, destination=target.destination_spec(), secrets=secrets, folder=folder, max_records=250
        )
        scene = cls(src, flow, folder, target, next_id)
        if committed_before:
            [base] = scene.run(SLOT0)
            assert base.outcome == Outcome.exported, base.message
            scene.add(files=2, day=1)
        return scene

    def add(self, *, files: int, day: int) -> None:
        self.next_id = sample.write_files(
            self.src,
            files=files,
            rows_per_file=300,
            seed=day,
            start=START + dt.timedelta(days=day),
            id_offset=self.next_id,
        )

    def request(self, at: dt.datetime, export_time: str | None = None) -> ExportRequest:
        [request] = local.requests(loader.load_files([self.flow]), at=at, export_time=export_time)
        return request

    def runner(self, at: dt.datetime, *, export_time: str | None = None, hold_at: int | None = None) -> Run:
        request = self.request(at, export_time)
        inner = open_transport(request.destination, self.target.secret or {})
        return Run(request, Stepping(inner, hold_at=hold_at))

    def run(self, at: dt.datetime) -> list[DatasetResult]:
        plan = local.requests(bundle := loader.load_files([self.flow]), at=at)
        return local.run(bundle, plan)


@pytest.mark.timeout(1200)  # S3: 324 interleavings of four in-process runs, about a second each
@pytest.mark.parametrize(
    ("target", "committed_before", "b_export_time"),
    [
        ("filesystem", True, None),
        ("filesystem", True, RUN_NOW),
        ("filesystem", False, None),
        ("s3", True, None),  # the object store: every pair takes about a second there
    ],
    ids=["same-slot", "run-now-beside-the-slot", "first-export", "same-slot-s3"],
    indirect=["target"],
)
def test_every_interleaving_of_two_runs_commits_once_and_exactly(
    tmp_path: Path,
    target: Target,
    monkeypatch: pytest.MonkeyPatch,
    committed_before: bool,
    b_export_time: str | None,
) -> None:
    for name, value in target.env.items():
        monkeypatch.setenv(name, value)
    solo = Scene.make(tmp_path / "solo", target, committed_before=committed_before)
    alone = solo.runner(SLOT1)
    alone.start()
    assert alone.finish().outcome == Outcome.exported
    steps = len(alone.transport.steps)
    assert any(s.startswith("write ") for s in alone.transport.steps)

    winners: Counter[str] = Counter()
    losses: Counter[Outcome] = Counter()
    pairs = 0
    for i in range(steps + 1):
        for j in range(steps + 1):
            scene = Scene.make(tmp_path / f"p{i}-{j}", target, committed_before=committed_before)
            a = scene.runner(SLOT1, hold_at=i)
            b = scene.runner(SLOT1, export_time=b_export_time, hold_at=j)
            a.start()
            b.start()
            results = {"a": a.finish(), "b": b.finish()}
            where = f"A held before step {i}, B before step {j}: " + repr(
                {k: (r.outcome, r.message) for k, r in results.items()}
            )
            exported = [k for k, r in results.items() if r.outcome == Outcome.exported]
            assert len(exported) == 1, where
            [loser] = [r for r in results.values() if r.outcome != Outcome.exported]
            assert loser.outcome in LOSERS, where
            if loser.outcome == Outcome.superseded:
                assert loser.message.startswith("another run committed exportTime"), where
            winners[exported[0]] += 1
            losses[loser.outcome] += 1
            transport = target.transport()
            assert Counter(read_committed_ids(transport, folder=scene.folder)) == Counter(source_ids(scene.src)), where
            # A later commit leaves nothing but committed files: the loser's are gone, by it or by a later run.
            scene.add(files=1, day=2)
            [later] = scene.run(LATER)
            assert later.outcome == Outcome.exported, where
            assert_only_committed_files(transport, folder=scene.folder)
            assert len(committed(transport, folder=scene.folder)) == 2 + committed_before, where
            transport.close()
            if target.type == "filesystem":
                shutil.rmtree(scene.src.parent)
            pairs += 1

    assert pairs == (steps + 1) ** 2
    assert set(winners) == {"a", "b"}, winners  # both orders were reached
    assert losses[Outcome.superseded] > 0, losses  # and runs that overlapped at the commit
    print(f"{target.type}: {pairs} interleavings of {steps}-step runs; wins {dict(winners)}; losers {dict(losses)}")
