"""A run killed by SIGKILL before its k-th operation at the destination, for the property test.

The run goes through a transport that counts every operation (listings, reads, each part opened, each chunk
written into it, the moment before a finished part is made visible, each key deleted, each small write) and
SIGKILLs its own process before operation ``kill_at``. A process start per kill would cost a second of interpreter
and imports; so one helper process (``Killer``, this module run with ``-m``) imports the exporter once and forks a
child per killed run, which costs milliseconds. It waits for each child with a deadline (a child stuck on a lock
inherited from the fork fails the test instead of hanging it) and reports how it ended.

Nothing here ships in the product: the wrapper patches ``dsexport.cli.local.open_transport`` in the child only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dsexport import api
from dsexport.cli import local
from dsexport.destinations import ServerCopy, StoredObject, Transport, open_transport
from dsexport.destinations.base import Writable
from dsexport.engine import bytecopy
from tests.helpers import run_local

DEADLINE = 120.0  # seconds for one forked run; a run here takes milliseconds


class KillingTransport(Transport):
    """``inner``, with the process SIGKILLed before its operation number ``kill_at`` (counted from 0)."""

    def __init__(self, inner: Transport, kill_at: int) -> None:
        self.inner = inner
        self.kill_at = kill_at
        self.steps = 0
        self._lock = threading.Lock()  # parts may be written on two threads at once (parallel_writes)
        self.parallel_writes = inner.parallel_writes
        self.copies_local_files = inner.copies_local_files

    def _step(self) -> None:
        with self._lock:
            if self.steps == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            self.steps += 1

    def describe(self) -> str:
        return self.inner.describe()

    @contextmanager
    def _write(self, key: str) -> Iterator[Writable]:
        self._step()
        with self.inner.open_write(key) as out:
            yield _CountedWrites(out, self)
            self._step()  # the part is written, not yet visible under its name

    def open_write(self, key: str) -> AbstractContextManager[Writable]:
        return self._write(key)

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._step()
        self.inner.put(key, data, create_only=create_only)

    def get(self, key: str) -> bytes | None:
        self._step()
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        self._step()
        return self.inner.exists(key)

    def list_prefixes(self, prefix: str) -> list[str]:
        self._step()
        return self.inner.list_prefixes(prefix)

    def list_keys(self, prefix: str) -> Iterator[str]:
        self._step()
        return self.inner.list_keys(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:  # one at a time, so a kill may land between two deletions of one call
            self._step()
            self.inner.delete([key])

    def server_copy(self, source: StoredObject, key: str) -> ServerCopy | None:
        self._step()
        return self.inner.server_copy(source, key)

    def copy_local_file(self, source: BinaryIO, key: str) -> int | None:
        self._step()
        return self.inner.copy_local_file(source, key)

    def close(self) -> None:
        self.inner.close()


class _CountedWrites:
    def __init__(self, out: Writable, transport: KillingTransport) -> None:
        self.out = out
        self.transport = transport

    def write(self, data: bytes | memoryview, /) -> int:
        self.transport._step()
        return self.out.write(data)


@dataclass(frozen=True)
class Ended:
    """How a forked run ended: killed, or finished with ``outcome`` (and ``reason``, ``message``)."""

    killed: bool
    outcome: str | None = None
    reason: str | None = None
    message: str | None = None


class Killer:
    """A zygote: a process of its own that imported the exporter but never ran an export, and forks one child
    per killed run.

    Forking the test process itself is not safe: once an export ran in it, Polars' thread pool exists, and a
    forked child that needs it waits forever for threads the fork did not copy (seen here). The zygote never
    starts that pool, so each child starts its own; the pools of Arrow and jemalloc are fork-safe.
    """

    def __init__(self, *, min_copy_bytes: int | None = None) -> None:
        self.min_copy_bytes = min_copy_bytes  # as the test set it in its own process, for the byte copy
        root = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.prop_kill"], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def run(
        self,
        flow: Path,
        at: dt.datetime,
        *,
        kill_at: int,
        scratch: Path,
        resets: tuple[str, ...] = (),
        reset_token: str | None = None,
        export_time: str | None = None,
    ) -> Ended:
        """Run ``flow`` once in a forked child whose destination operation ``kill_at`` SIGKILLs it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {
            "flow": str(flow),
            "at": at.isoformat(),
            "kill_at": kill_at,
            "scratch": str(scratch),
            "resets": list(resets),
            "reset_token": reset_token,
            "export_time": export_time,
            "min_copy_bytes": self.min_copy_bytes,
        }
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE + 30)
        assert ready, "the zygote did not answer"
        line = self.proc.stdout.readline()
        assert line, f"the zygote ended (exit code {self.proc.poll()})"
        said = json.loads(line)
        assert "error" not in said, said["error"]
        return Ended(**said)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _fork_one(request: dict[str, Any]) -> dict[str, Any]:
    """In the zygote: fork, run the export in the child, wait for it with a deadline."""
    scratch = Path(request["scratch"])
    result_file = scratch / "killed-run.json"
    result_file.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # the child: runs one export and ends, killed or not
        code = 70
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # stdout is the zygote's answer channel

            def killing(destination: api.Destination, credentials: Mapping[str, str]) -> Transport:
                return KillingTransport(open_transport(destination, credentials), request["kill_at"])

            vars(local)["open_transport"] = killing  # what local.run opens its destination with
            if request["min_copy_bytes"] is not None:
                bytecopy.MIN_COPY_BYTES = request["min_copy_bytes"]
            [result] = run_local(
                Path(request["flow"]),
                dt.datetime.fromisoformat(request["at"]),
                resets=tuple(request["resets"]),
                reset_token=request["reset_token"],
                export_time=request["export_time"],
            )
            said = {"outcome": str(result.outcome), "reason": result.reason, "message": result.message}
            result_file.write_text(json.dumps(said))
            code = 0
        except BaseException:  # reported to the test through the file, whatever it is
            result_file.write_text(json.dumps({"error": traceback.format_exc()}))
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], DEADLINE)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"error": f"the forked run did not end in {DEADLINE} s"}
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    if os.WIFSIGNALED(status):
        if os.WTERMSIG(status) != signal.SIGKILL:
            return {"error": f"the forked run died of signal {os.WTERMSIG(status)}"}
        return {"killed": True}
    said = json.loads(result_file.read_text()) if result_file.exists() else {"error": "the run left no result"}
    if "error" in said or os.WEXITSTATUS(status) != 0:
        return {"error": said.get("error", f"exit code {os.WEXITSTATUS(status)}")}
    return {"killed": False, **said}


def _serve() -> None:
    """The zygote's loop: one JSON request a line on stdin, one JSON answer a line on stdout."""
    for line in sys.stdin:
        try:
            answer = _fork_one(json.loads(line))
        except Exception:  # the test reports it
            answer = {"error": traceback.format_exc()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
