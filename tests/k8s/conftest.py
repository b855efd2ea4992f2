"""One real cluster per test session (control plane and a real node), shared by every test that asks for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from tests.cluster.cluster import Cluster
from tests.cluster.control_plane import ControlPlane, binaries
from tests.servers import wait_until

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


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


@pytest.fixture(scope="session")
def crds(api: client.ApiClient) -> list[str]:
    """Install every CRD in crds/ (as a user would, with kubectl apply) and wait for each to be Established."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as e:  # the chart test may have installed them already: then they must be these
            if e.status != 409:
                raise
            body["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
                body["metadata"]["name"]
            ).metadata.resource_version
            ext.replace_custom_resource_definition(body["metadata"]["name"], body)
        names.append(body["metadata"]["name"])

    def established(name: str) -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for name in names:
        wait_until(lambda n=name: established(n), timeout=30, what=f"CRD {name} Established")  # type: ignore[misc]
    return names


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
