"""One real cluster per test session (control plane and a real node), shared by every test that asks for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from tests.cluster.cluster import Cluster
from tests.cluster.control_plane import ControlPlane, binaries
from tests.servers import wait_until


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(root=tmp_path_factory.mktemp("cluster"), bin=binaries())
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def control_plane(cluster: Cluster) -> ControlPlane:
    assert cluster.control_plane is not None
    return cluster.control_plane


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


def create_namespace(api: client.ApiClient, prefix: str = "t") -> str:
    """A fresh namespace, returned once its default service account exists (pods are refused before that)."""
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})

    def has_default_sa() -> bool:
        return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items)

    wait_until(has_default_sa, timeout=30, what=f"the default service account of {name}")
    return name


@pytest.fixture
def pod_namespace(api: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    """A namespace for pods on the real node; deleted afterwards without waiting."""
    name = create_namespace(api, "pods")
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)
