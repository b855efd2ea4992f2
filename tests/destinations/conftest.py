"""The destination targets of the shared suite: a local folder and the four real servers, each started once.

A server is launched the first time a test asks for its target and stopped when the session ends, so the shared
suite, the transport contract and the backend files all talk to the same five stores. Every test gets its own
``folder`` inside the shared bucket / container / home, so tests never see each other's exports.

A backend file picks its one target with ``pytestmark = pytest.mark.parametrize("target", ["s3"], indirect=True)``
and gets ``server``, ``connect`` and ``transport`` from here like every other file.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.destinations.contract import NAME
from tests.servers import ProcessServer, Target

from dsexport import api
from dsexport.destinations import Transport, open_transport

LAUNCHERS = {
    "s3": "tests.servers.seaweed",
    "gcs": "tests.servers.fakegcs",
    "sftp": "tests.servers.sshd",
    "azureBlob": "tests.servers.azurite",
}
TYPES = ["filesystem", *LAUNCHERS]

Connect = Callable[..., Transport]
"""``connect(secret=None, **block)``: a transport with the target's settings, or these (see the fixture)."""


class Servers:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, Target] = {}

    def get(self, kind: str) -> Target:
        if kind not in self.running:
            module = importlib.import_module(LAUNCHERS[kind])
            self.running[kind] = module.launch(self.workdir(kind))
        return self.running[kind]

    def workdir(self, kind: str) -> Path:
        """Where ``kind``'s server keeps its data and keys, for tests that look behind the server's back."""
        return self.root / kind

    def stop(self) -> None:
        for target in self.running.values():
            if target.server is not None:
                target.server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(tmp_path_factory.mktemp("servers"))
    yield s
    s.stop()


@pytest.fixture(params=TYPES)
def target(request: pytest.FixtureRequest, servers: Servers, tmp_path: Path) -> Target:
    kind: str = request.param
    if kind == "filesystem":
        root = tmp_path / "dest"
        return Target(
            type="filesystem",
            block={"path": str(root)},
            secret=None,
            wrong_secret=None,
            missing_block={"path": "/proc/dsexport-no-such-folder"},
            server=None,
        )
    return servers.get(kind)


@pytest.fixture
def folder() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def server(target: Target) -> Iterator[ProcessServer]:
    """The target's server, for a test that stops it; running again afterwards, whatever the test did to it.

    The server is shared by the whole session, so a test that fails with it stopped must not take every later
    test down with it. Restarts happen here, on the main thread, like the test's own (see ``_on_main_thread``).
    """
    if target.server is None:
        pytest.skip("a local folder cannot go away")
    yield target.server
    target.server.start()


@pytest.fixture
def connect(target: Target) -> Iterator[Connect]:
    """Opens transports named ``contract.NAME`` to the target and closes them after the test.

    ``secret`` replaces the target's credentials (``{}``: none at all) and ``block`` overrides settings of its
    backend block, which is how the backend files build their broken or alternative configurations.
    """
    opened: list[Transport] = []

    def open_(secret: dict[str, str] | None = None, **block: Any) -> Transport:
        credentials = target.secret if secret is None else secret
        spec: dict[str, Any] = {"type": target.type, target.type: {**target.block, **block}}
        if credentials is not None:
            spec["credentialsSecretRef"] = {"name": "creds"}
        name = NAME.removeprefix("Destination/")
        destination = api.Destination.model_validate({"metadata": {"name": name}, "spec": spec})
        transport = open_transport(destination, credentials or {})
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(connect: Connect) -> Transport:
    return connect()
