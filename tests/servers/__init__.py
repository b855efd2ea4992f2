"""Real servers the tests run against, each a local process on a free loopback port.

Every server is a ``ProcessServer``: started with its log captured to a file, waited for with a deadline (never
a sleep), stopped by the process id the test suite itself started, and restartable on the same port and data
folder so a test can take it away in the middle of an export and bring it back. A server that fails to come up
raises with the tail of its log, so a CI failure says why.

Each destination server module also offers a ``Target``: what a Destination manifest needs to reach it, plus the
broken variants (wrong credentials, missing bucket) that the shared destination suite checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsexport import api
from dsexport.destinations import Transport, open_transport


class ServerError(RuntimeError):
    """A test server did not start; the message carries its log tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it, so parallel test runs do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the test process dies, so a killed test run leaves no servers."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _on_main_thread() -> bool:
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: only the main thread lives as long as the tests."""
    return threading.current_thread() is threading.main_thread()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class ProcessServer:
    """One server process. ``ready`` says when it serves; ``start``/``stop`` may be called repeatedly."""

    name: str
    argv: Sequence[str]
    log: Path
    ready: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = 60.0
    die_with_parent: bool = True
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stop() takes its children too
                preexec_fn=_die_with_parent if self.die_with_parent and _on_main_thread() else None,  # noqa: PLW1509 - prctl is async-signal-safe
            )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {proc.returncode} while starting; log {self.log}:\n{log_tail(self.log)}"
                )
            return self.ready()

        try:
            wait_until(up, timeout=self.start_timeout, what=f"{self.name} to serve")
        except TimeoutError as e:
            self.stop()
            raise ServerError(f"{e}; log {self.log}:\n{log_tail(self.log)}") from None

    def stop(self) -> None:
        """SIGTERM the process group we started, then SIGKILL after a grace period; never anything else."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class Target:
    """How a Destination reaches one test server, and how to break it.

    ``block`` is the backend block of the Destination spec (e.g. the ``s3:`` mapping), ``secret`` the Secret's
    stringData (None: no credentialsSecretRef), ``wrong_secret`` credentials the server refuses (None: the server
    cannot check credentials), ``missing_block`` a block naming a bucket / container / folder that does not exist.
    ``server`` is stopped and started again by the test that takes the store away mid-export.
    """

    type: str
    block: dict[str, Any]
    secret: dict[str, str] | None
    wrong_secret: dict[str, str] | None
    missing_block: dict[str, Any]
    server: ProcessServer | None
    env: dict[str, str] = field(default_factory=dict)

    def destination_spec(self, *, block: dict[str, Any] | None = None, secret: bool = True) -> dict[str, Any]:
        """The backend part of a Destination spec (type, block, credentialsSecretRef ``dest-creds``)."""
        spec: dict[str, Any] = {"type": self.type, self.type: block if block is not None else self.block}
        if secret and self.secret is not None:
            spec["credentialsSecretRef"] = {"name": SECRET_NAME}
        return spec

    def transport(self) -> Transport:
        """A transport to read back what an export wrote, made the way the exporter makes it."""
        destination = api.Destination.model_validate(
            {"kind": "Destination", "metadata": {"name": "reader"}, "spec": self.destination_spec()}
        )
        return open_transport(destination, self.secret or {})


SECRET_NAME = "dest-creds"
