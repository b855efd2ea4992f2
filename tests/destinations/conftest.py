"""The destination targets of the shared suite: a local folder and the four real servers, each started once.

A server is launched the first time a test asks for its target and stopped when the session ends. Every test gets
its own ``folder`` inside the shared bucket / container / home, so tests never see each other's exports.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.servers import Target

LAUNCHERS = {
    "s3": "tests.servers.seaweed",
    "gcs": "tests.servers.fakegcs",
    "sftp": "tests.servers.sshd",
    "azureBlob": "tests.servers.azurite",
}
TYPES = ["filesystem", *LAUNCHERS]


class Servers:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, Target] = {}

    def get(self, kind: str) -> Target:
        if kind not in self.running:
            module = importlib.import_module(LAUNCHERS[kind])
            self.running[kind] = module.launch(self.root / kind)
        return self.running[kind]

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
