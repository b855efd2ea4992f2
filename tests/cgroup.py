"""A memory limit the kernel enforces, for one child process: a memory cgroup made under this process's own.

A test that claims the exporter stays within its memory budget runs it here, with the budget as the cgroup's
hard limit: using more is an OOM kill, which fails the test, rather than a number to compare afterwards. The
cgroup is a child of the one this process is in (cgroup v1's memory hierarchy or v2's unified one), so nothing
outside what the test made is touched; it is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: the child's own peak resident set (ru_maxrss)
    oom_killed: bool


def own_memory_cgroup() -> tuple[Path, bool] | None:
    """This process's memory cgroup folder and whether it is cgroup v2; None if there is none to write to."""
    lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    for _, names, path in lines:
        if "memory" in names.split(","):  # cgroup v1's memory hierarchy (also on a hybrid host)
            folder = ROOT / "memory" / path.lstrip("/")
            return (folder, False) if os.access(folder, os.W_OK) else None
    for number, _, path in lines:
        if number == "0":  # cgroup v2
            folder = ROOT / path.lstrip("/")
            enabled = (folder / "cgroup.controllers").read_text().split() if folder.exists() else []
            return (folder, True) if "memory" in enabled and os.access(folder, os.W_OK) else None
    return None


@contextlib.contextmanager
def memory_limit(limit: int) -> Iterator[Path]:
    """A new child memory cgroup limited to ``limit`` bytes (and no swap); removed afterwards."""
    found = own_memory_cgroup()
    if found is None:
        raise RuntimeError("no writable memory cgroup: this test needs one (run as root on Linux)")
    parent, v2 = found
    folder = parent / f"dsexport-test-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    try:
        if v2:
            (folder / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (folder / "memory.swap.max").write_text("0")
        else:
            (folder / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (folder / "memory.memsw.limit_in_bytes").write_text(str(limit))
        yield folder
    finally:
        deadline = time.monotonic() + 30
        while True:  # the last task may take a moment to leave after it exited
            try:
                folder.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def oom_kills(folder: Path) -> int:
    for name in ("memory.events", "memory.oom_control"):
        path = folder / name
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


# Joins the cgroup, runs the command as its child and writes that child's peak RSS (KiB) to argv[2]. A process's
# own ru_maxrss is inherited through fork and kept through exec, so that of anything forked from the (large) test
# process is wrong; a child of this small launcher has its own, exact. The launcher's ~10 MiB count in the cgroup.
_LAUNCHER = """
import os, resource, subprocess, sys
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
code = subprocess.call(sys.argv[3:])
with open(sys.argv[2], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


def run_limited(
    cmd: Sequence[str], *, limit: int, env: Mapping[str, str] | None = None, timeout: float = 600
) -> Finished:
    """``cmd`` in a cgroup of its own limited to ``limit`` bytes, through a launcher that joins it first."""
    with memory_limit(limit) as folder, tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        launcher = [sys.executable, "-c", _LAUNCHER, str(folder / "cgroup.procs"), str(peak), *cmd]
        proc = subprocess.run(
            launcher, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False
        )
        kib = int(peak.read_text()) if peak.exists() else 0
        return Finished(proc.returncode, proc.stdout, proc.stderr, kib * 1024, oom_kills(folder) > 0)
