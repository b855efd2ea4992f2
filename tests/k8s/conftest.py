"""One real control plane per test session, shared by every test that asks for it (and started only then)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from tests.cluster.control_plane import ControlPlane, binaries
from tests.cluster.node_agent import NodeAgent


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(root=tmp_path_factory.mktemp("cluster"), bin=binaries())
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def node_agent(api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """One agent for the session, as a cluster has its kubelet all along (two would race for the same pods).

    ``python`` and ``dsexport`` resolve to this virtualenv; the image's ENTRYPOINT is ``dsexport``, so pods that
    give only ``args`` run it. The heartbeat is fast so that its test is.
    """
    python = sys.executable
    entrypoints = {"python": [python], "dsexport": [str(Path(python).with_name("dsexport"))]}
    with NodeAgent(api, tmp_path_factory.mktemp("node-agent"), heartbeat_seconds=2.0, entrypoints=entrypoints) as agent:
        yield agent
