"""The chart lints, renders and installs into a real API server with helm of a pinned release."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kubernetes import client
from tests.cluster.control_plane import ControlPlane

CHART = Path(__file__).resolve().parents[2] / "charts" / "dsexport"


def helm(cp: ControlPlane, *args: str) -> str:
    out = subprocess.run(
        [str(cp.bin / "helm"), "--kubeconfig", str(cp.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(cp.root), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(cp.root / "helm")},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_chart_lints(control_plane: ControlPlane) -> None:
    assert "0 chart(s) failed" in helm(control_plane, "lint", "--strict", str(CHART))


def test_chart_renders_the_generated_crds_and_least_privilege_rbac(control_plane: ControlPlane) -> None:
    docs = [d for d in yaml.safe_load_all(helm(control_plane, "template", "rel", str(CHART), "--include-crds")) if d]
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    repo_crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART.parents[1] / "crds").glob("*.yaml"))]
    assert [crds[c["metadata"]["name"]] for c in repo_crds] == repo_crds  # the very files, not a copy
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert not any("secrets" in rule["resources"] for rule in role["rules"]), "the operator must not read Secrets"
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])


def test_chart_installs(control_plane: ControlPlane, api: client.ApiClient) -> None:
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="dsexport-system")))
    helm(
        control_plane, "install", "dsexport", str(CHART), "--namespace", "dsexport-system", "--wait", "--timeout", "60s"
    )
    status = helm(control_plane, "status", "dsexport", "--namespace", "dsexport-system", "-o", "json")
    assert '"status":"deployed"' in status.replace(" ", "")
    ext = client.ApiextensionsV1Api(api)
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert {"datasets.dsexport.io", "destinations.dsexport.io", "datasetexports.dsexport.io"} <= names
    sa = client.CoreV1Api(api).read_namespaced_service_account("dsexport", "dsexport-system")
    assert sa.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
