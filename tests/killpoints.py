"""Kill ``dsexport run`` at a chosen point of its destination I/O: a launcher of the tests, nothing in the product.

    python -m tests.killpoints --kill after:claim --trace T -- run -f flow.yaml --at ... -o json
    python -m tests.killpoints --kill-after-io 0.04 --trace T -- run ...

The CLI runs as a CronJob's pod runs it, but every transport it opens is wrapped in ``Killing``, which names each
destination operation by what it does to the commit protocol (``write`` a part, ``claim`` the successor,
``manifest``, ``success``, ``delete`` leftovers, ``list``, ``get``, ``exists``) and SIGKILLs its own process:

- ``--kill WHEN:KIND[#N]``: at the N-th operation of that kind (default 1), ``before`` it starts, ``after`` it
  returned, or ``during`` it: a part with every byte written but not yet completed (a temporary file not renamed,
  an upload not finished), or a deletion with half its files gone;
- ``--kill-after-io S``: S seconds after the first destination operation began (``--clock write``: after the first
  part began), wherever the run then is.

Before dying it appends a JSON line to the trace file (``landed``: the point, ``phase``: recover, write, commit or
clean, ``ops``: every operation so far), so a test asserts where its kills landed instead of hoping. A run that
ends without reaching its kill point appends ``{"landed": null}`` with how long its I/O took (``io_seconds``,
``write_seconds``: the windows random kills are drawn from). The kill is SIGKILL: no ``finally``, no
``atexit``, exactly what a node failure or an OOM kill leaves behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dsexport import api
from dsexport.cli import local
from dsexport.cli.commands import main as dsexport
from dsexport.destinations import ServerCopy, StoredObject, Transport, open_transport
from dsexport.destinations.base import Writable

KINDS = ("list", "get", "exists", "write", "claim", "manifest", "success", "put", "delete")
PHASES = ("recover", "write", "commit", "clean")
# Where a run is, by the operation it last began: reading state (and selecting, encoding the first part), writing
# parts, committing (claiming, or publishing a claim: its manifest and marker), cleaning (removing garbage).
_PHASE_OF = {"write": "write", "claim": "commit", "manifest": "commit", "success": "commit", "delete": "clean"}
_SPEC = re.compile(r"(before|during|after):([a-z]+)(?:#([0-9]+))?")


@dataclass(frozen=True)
class KillPoint:
    when: str  # before, during, after
    kind: str
    nth: int

    @classmethod
    def parse(cls, spec: str) -> KillPoint:
        m = _SPEC.fullmatch(spec)
        if not m or m[2] not in KINDS or (m[1] == "during" and m[2] not in ("write", "delete")):
            raise SystemExit(f"--kill {spec!r}: expected before|after:KIND[#N] or during:write|delete[#N]")
        return cls(m[1], m[2], int(m[3] or 1))

    def __str__(self) -> str:
        return f"{self.when}:{self.kind}#{self.nth}"


def kind_of(key: str, *, put: bool) -> str:
    """What writing ``key`` does in the commit protocol (engine/commit.py names the files)."""
    name = key.rsplit("/", 1)[-1]
    if name in ("_next.json", "_first.json"):
        return "claim"
    if name == "_manifest.json":
        return "manifest"
    if name == "_SUCCESS":
        return "success"
    return "put" if put else "write"


class Killer:
    """Counts the run's destination operations (all its transports, all threads) and kills at the chosen one."""

    def __init__(self, *, trace: Path, point: KillPoint | None, after_io: float | None, clock: str = "io") -> None:
        self.trace = trace
        self.point = point
        self.after_io = after_io
        self.ops: list[str] = []
        self.counts: dict[str, int] = {}
        self.phase = PHASES[0]
        self.lock = threading.RLock()
        self.clock = clock
        self.io_began: float | None = None  # time.monotonic() of the first operation
        self.writes_began: float | None = None  # and of the first part written
        self.done = False  # the run ended: no kill any more

    def start(self, kind: str, key: str) -> int:
        """Record an operation about to start; returns its number among its kind (1-based)."""
        with self.lock:
            now = time.monotonic()
            if self.io_began is None:
                self.io_began = now
            if self.writes_began is None and kind == "write":
                self.writes_began = now
            clock = self.io_began if self.clock == "io" else self.writes_began
            if clock == now and self.after_io is not None:
                timer = threading.Timer(self.after_io, self.kill, kwargs={"landed": f"random:{self.after_io:.4f}"})
                timer.daemon = True
                timer.start()
            self.counts[kind] = n = self.counts.get(kind, 0) + 1
            self.ops.append(f"{kind} {key}")
            self.phase = _PHASE_OF.get(kind, self.phase)
        self.maybe_kill("before", kind, n)
        return n

    def maybe_kill(self, when: str, kind: str, n: int) -> None:
        if when == "after" and kind == "success":
            with self.lock:
                self.phase = "clean"  # committed and published: what is left is removing garbage
        p = self.point
        if p is not None and (p.when, p.kind, p.nth) == (when, kind, n):
            self.kill(landed=str(p))

    def kill(self, *, landed: str) -> None:
        with self.lock:
            if self.done:  # the timer fired after the run ended: it ended first
                return
            self._append({"landed": landed, "phase": self.phase, "last": self.ops[-1:], "ops": self.ops})
            os.kill(os.getpid(), signal.SIGKILL)

    def ended(self) -> None:
        """The run ended before its kill point: say so, and how long its destination I/O took (the window that
        ``--kill-after-io`` draws from)."""
        with self.lock:
            self.done = True
            now = time.monotonic()
            seconds = {
                f"{name}_seconds": now - began if began is not None else 0.0
                for name, began in (("io", self.io_began), ("write", self.writes_began))
            }
            self._append({"landed": None, "phase": self.phase, "ops": self.ops, **seconds})

    def _append(self, record: dict[str, object]) -> None:
        with self.trace.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Killing(Transport):
    """``inner``, with each operation reported to ``killer`` before it starts and after it returns."""

    def __init__(self, inner: Transport, killer: Killer) -> None:
        self.inner = inner
        self.killer = killer
        self.parallel_writes = inner.parallel_writes
        self.copies_local_files = inner.copies_local_files

    def describe(self) -> str:
        return self.inner.describe()

    @contextmanager
    def _write(self, key: str) -> Iterator[Writable]:
        k = self.killer
        n = k.start("write", key)
        with self.inner.open_write(key) as out:
            yield out
            k.maybe_kill("during", "write", n)  # every byte written, the file not yet completed
        k.maybe_kill("after", "write", n)

    def open_write(self, key: str) -> AbstractContextManager[Writable]:
        return self._write(key)

    def copy_local_file(self, source: BinaryIO, key: str) -> int | None:
        n = self.killer.start("write", key)
        copied = self.inner.copy_local_file(source, key)
        self.killer.maybe_kill("after", "write", n)
        return copied

    def server_copy(self, source: StoredObject, key: str) -> ServerCopy | None:
        n = self.killer.start("write", key)
        copied = self.inner.server_copy(source, key)
        self.killer.maybe_kill("after", "write", n)
        return copied

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        kind = kind_of(key, put=True)
        n = self.killer.start(kind, key)
        self.inner.put(key, data, create_only=create_only)
        self.killer.maybe_kill("after", kind, n)

    def get(self, key: str) -> bytes | None:
        n = self.killer.start("get", key)
        got = self.inner.get(key)
        self.killer.maybe_kill("after", "get", n)
        return got

    def exists(self, key: str) -> bool:
        n = self.killer.start("exists", key)
        there = self.inner.exists(key)
        self.killer.maybe_kill("after", "exists", n)
        return there

    def list_prefixes(self, prefix: str) -> list[str]:
        n = self.killer.start("list", prefix + "/")
        names = self.inner.list_prefixes(prefix)
        self.killer.maybe_kill("after", "list", n)
        return names

    def list_keys(self, prefix: str) -> Iterator[str]:
        n = self.killer.start("list", prefix + "/**")
        keys = list(self.inner.list_keys(prefix))
        self.killer.maybe_kill("after", "list", n)
        return iter(keys)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:  # nothing to clean is not an operation at the store
            self.inner.delete(keys)
            return
        k = self.killer
        n = k.start("delete", f"{len(keys)} files")
        half = max(1, len(keys) // 2)
        self.inner.delete(keys[:half])
        k.maybe_kill("during", "delete", n)
        self.inner.delete(keys[half:])
        k.maybe_kill("after", "delete", n)

    def close(self) -> None:
        self.inner.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.killpoints")
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--kill", type=KillPoint.parse)
    parser.add_argument("--kill-after-io", type=float)
    parser.add_argument("--clock", choices=("io", "write"), default="io")
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    killer = Killer(trace=args.trace, point=args.kill, after_io=args.kill_after_io, clock=args.clock)

    def open_killing(destination: api.Destination, credentials: Mapping[str, str]) -> Transport:
        return Killing(open_transport(destination, credentials), killer)

    local.open_transport = open_killing  # type: ignore[attr-defined]
    try:
        dsexport.main(args=cli, prog_name="dsexport")  # exits with the CLI's own code
    finally:
        killer.ended()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
