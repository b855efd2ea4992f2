"""The chart as a user meets it: linted, rendered, checked by the API server, then installed on the real node.

The install runs the operator Deployment in the real image with the chart's RBAC and nothing more, exports through
it, upgrades it (a CRD change applied the documented way, two replicas with a leader), and uninstalls it. Every
API call the operator makes must succeed: a Forbidden in its log fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from examples import demo_cluster
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.cluster.cluster import Cluster
from tests.cluster.control_plane import ControlPlane
from tests.helpers import read_committed_ids
from tests.k8s.test_operator import sample_ids
from tests.servers import wait_until

from dsexport.api import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dsexport"
RELEASE = "dsexport"
NAMESPACE = "dsexport-system"
KUBE_VERSION = "1.36.3"


def helm(cp: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(cp.bin / "helm"), "--kubeconfig", str(cp.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(cp.root), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(cp.root / "helm")},
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def kubectl(cp: ControlPlane, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [str(cp.bin / "kubectl"), "--kubeconfig", str(cp.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(cp: ControlPlane, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    rendered = helm(
        cp, "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *args
    )
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


def test_chart_lints(control_plane: ControlPlane) -> None:
    assert "0 chart(s) failed" in helm(control_plane, "lint", "--strict", str(CHART)).stdout


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert package is not None
    assert chart["appVersion"] == package[1]  # the default image tag of the operator and of its export Jobs


def test_chart_renders_the_generated_crds_and_least_privilege_rbac(control_plane: ControlPlane) -> None:
    docs = render(control_plane, "--include-crds")
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    repo_crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    assert [crds[c["metadata"]["name"]] for c in repo_crds] == repo_crds  # the very files, not a copy
    for kind in ("ClusterRole", "Role"):
        for role in (d for d in docs if d["kind"] == kind):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]["name"]
                assert "secrets" not in rule["resources"], f"{role['metadata']['name']} must not grant Secrets"
    operator_role = next(d for d in docs if d["kind"] == "Role")
    assert {r for rule in operator_role["rules"] for r in rule["resources"]} == {"leases", "endpointslices"}


def test_values_are_checked_against_the_schema(control_plane: ControlPlane) -> None:
    for bad, says in [
        (("--set", "imag.tag=x"), "additional properties 'imag' not allowed"),
        (("--set", "replicaCount=0"), "minimum"),
        (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
        (("--set", "operator.logFormat=xml"), "logFormat"),
    ]:
        out = helm(control_plane, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *bad, check=False)
        assert out.returncode != 0 and says in out.stderr, (bad, out.stderr)


def test_optional_objects_follow_their_values(control_plane: ControlPlane) -> None:
    kinds = [d["kind"] for d in render(control_plane)]
    assert "PodDisruptionBudget" not in kinds  # one replica: a budget would block every drain
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    docs = render(
        control_plane,
        *("--set", "replicaCount=2", "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"),
        *("--set", "dashboard.enabled=true", "--set", "webhook.enabled=false", "--set", "userRoles.create=false"),
    )
    by_kind = {d["kind"]: d for d in docs}
    assert by_kind["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    monitor = by_kind["ServiceMonitor"]["spec"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert by_kind["PrometheusRule"]["spec"] == alerts  # the file promtool tests, verbatim
    dashboard = by_kind["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["dsexport.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )
    assert "ValidatingWebhookConfiguration" not in by_kind
    assert not any("--webhook" in a for a in by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert not any(d["metadata"]["name"].endswith("-viewer") for d in docs if d["kind"] == "ClusterRole")


def test_rendered_manifests_pass_the_api_servers_validation(control_plane: ControlPlane, crds: list[str]) -> None:
    """Every object the chart renders (the Prometheus Operator's kinds aside: no such CRDs here) is accepted by a
    server-side dry run against the pinned release's schemas, field validation strict."""
    docs = [
        d
        for d in render(control_plane, "--set", "replicaCount=2", "--set", "dashboard.enabled=true")
        if d["apiVersion"] != "monitoring.coreos.com/v1"
    ]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ClusterRole", "ConfigMap"}
    out = kubectl(
        control_plane,
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "--namespace",
        "default",
        "-f",
        "-",
        "-o",
        "name",
        stdin=yaml.safe_dump_all(
            [
                {**d, "metadata": {**d["metadata"], "namespace": "default"}} if "namespace" in d["metadata"] else d
                for d in docs
            ]
        ),
    )
    assert len(out.split()) == len(docs)


# ------------------------------------------------------------------------------------ the life cycle, for real


@pytest.fixture(scope="module")
def chart_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart with its crds link resolved, so the upgrade can change a CRD without touching the repository."""
    copy = tmp_path_factory.mktemp("chart") / "dsexport"
    shutil.copytree(CHART, copy, symlinks=False)
    return copy


def _operator_pods(api: client.ApiClient) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    return list(client.CoreV1Api(api).list_namespaced_pod(NAMESPACE, label_selector=selector).items)


def _operator_logs(api: client.ApiClient) -> str:
    core = client.CoreV1Api(api)
    return "\n".join(core.read_namespaced_pod_log(p.metadata.name, NAMESPACE) for p in _operator_pods(api))


def _assert_no_failed_api_call(api: client.ApiClient) -> None:
    logs = _operator_logs(api)
    bad = [line for line in logs.splitlines() if re.search(r"forbidden|\b403\b|Traceback|\bERROR\b", line, re.I)]
    assert not bad, "\n".join(bad[:20])


def _diagnosis(cp: ControlPlane) -> str:
    """What a person would look at when the operator does not come up: its pods, their events and logs."""
    run = [str(cp.bin / "kubectl"), "--kubeconfig", str(cp.kubeconfig), "-n", NAMESPACE]
    logs = ["logs", "--tail=40", "--all-containers", "-l", "app.kubernetes.io/component=operator"]
    found = [
        subprocess.run([*run, *args], capture_output=True, text=True, check=False)
        for args in (["describe", "pods"], logs)
    ]
    return "\n".join(f.stdout[-6000:] + f.stderr[-2000:] for f in found)


def _wait_namespace_gone(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)

    def gone() -> bool:
        return name not in [n.metadata.name for n in core.list_namespace().items]

    try:
        wait_until(gone, timeout=180, what=f"namespace {name} to go", interval=1)
    except TimeoutError as e:
        left = core.read_namespace(name).status
        pods = [(p.metadata.name, p.status.phase) for p in core.list_namespaced_pod(name).items]
        raise TimeoutError(f"{e}: {[c.message for c in left.conditions or []]}; pods {pods}") from None


def _run_now(custom: client.CustomObjectsApi, value: str) -> None:
    body = {"metadata": {"annotations": {"dsexport.io/run-now": value}}}
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, demo_cluster.NAMESPACE, "datasetexports", demo_cluster.FLOW, body
    )


def _leader(api: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api).read_namespaced_lease("dsexport-operator", NAMESPACE)
    return str(lease.spec.holder_identity or "")


@pytest.fixture(scope="module")
def installed(
    cluster: Cluster, control_plane: ControlPlane, api: client.ApiClient, chart_copy: Path
) -> Iterator[list[str]]:
    """helm install of the chart, the operator running on the node in the real image; uninstalled at the end
    whatever happened (later tests run their own operator)."""
    assert cluster.node is not None
    # An operator run outside the chart earlier in this session (test_dashboard's, on this machine) leaves the
    # webhook configurations it made, which helm would refuse to adopt: docs/kubernetes.md tells users the same.
    admission = client.AdmissionregistrationV1Api(api)
    for delete in (admission.delete_validating_webhook_configuration, admission.delete_mutating_webhook_configuration):
        try:
            delete("dsexport.io")
        except ApiException as e:
            if e.status != 404:
                raise
    client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
    repository, tag = cluster.node.image.rsplit(":", 1)
    values = ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]
    # Only the example's namespace: other tests of the session come and go in namespaces of their own.
    values += ["--set", f"operator.namespaces={{{demo_cluster.NAMESPACE}}}"]
    try:
        out = helm(
            control_plane,
            *("install", RELEASE, str(chart_copy), "-n", NAMESPACE, *values, "--wait", "--timeout", "180s"),
            check=False,
        )
        assert out.returncode == 0, f"{out.stderr}\n{_diagnosis(control_plane)}"
        yield values
    finally:
        helm(control_plane, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s", check=False)
        wait_until(lambda: not _operator_pods(api), timeout=120, what="the operator's pods to go")
        client.CoreV1Api(api).delete_namespace(NAMESPACE)


@pytest.mark.timeout(900)
def test_install_export_upgrade_uninstall_on_the_real_node(
    control_plane: ControlPlane, api: client.ApiClient, installed: list[str], chart_copy: Path, tmp_path: Path
) -> None:
    # Installed: one replica, running as the chart says, leading.
    (pod,) = _operator_pods(api)
    assert pod.status.phase == "Running"
    container = pod.spec.containers[0]
    assert container.security_context.read_only_root_filesystem and pod.spec.security_context.run_as_non_root
    assert container.security_context.capabilities.drop == ["ALL"]
    wait_until(lambda: _leader(api).startswith(pod.metadata.name), timeout=60, what="the pod to lead")

    # The webhook reaches the leader through the chart's Service: the leader named itself its endpoint.
    def leader_is_the_endpoint() -> bool:
        items = (
            client.DiscoveryV1Api(api)
            .list_namespaced_endpoint_slice(NAMESPACE, label_selector=f"kubernetes.io/service-name={RELEASE}-webhook")
            .items
        )
        return [a for s in items for e in s.endpoints or [] for a in e.addresses] == [pod.status.pod_ip]

    wait_until(leader_is_the_endpoint, timeout=60, what="the leader's EndpointSlice")

    # It exports: examples/cluster/ (a PVC source and a PVC destination), run now, recorded in the status.
    lake, exports = tmp_path / "lake", tmp_path / "exports"
    rows = demo_cluster.prepare(lake=lake, exports=exports, rows=2_000)
    demo_cluster.apply(api, demo_cluster.documents(lake=lake, exports=exports))
    custom = client.CustomObjectsApi(api)
    try:
        _run_now(custom, "helm")
        flow = demo_cluster.wait_recorded(api, timeout=240)
        assert flow["status"]["lastExport"]["result"] == "Succeeded"
        assert flow["status"]["lastExport"]["records"] == rows
        assert sorted(
            read_committed_ids(exports, dataset_id="experience-events", folder="marketing/exports")
        ) == sorted(i for path in sorted((lake / "experience_events").glob("*.parquet")) for i in sample_ids(path))

        # Deleting the Dataset in use is refused by the webhook (a dry run asks it the same).
        def refused() -> bool:
            try:
                custom.delete_namespaced_custom_object(
                    GROUP, VERSION, demo_cluster.NAMESPACE, "datasets", "experience-events", dry_run="All"
                )
            except ApiException as e:
                return e.status == 409 and f"used by DatasetExport(s) {demo_cluster.FLOW}" in str(e.body)
            return False

        wait_until(refused, timeout=60, what="the webhook to refuse deleting a Dataset in use", interval=0.5)
        _assert_no_failed_api_call(api)

        # Upgrade: a CRD change applied the documented way (helm never upgrades crds/), then two replicas.
        crd_path = chart_copy / "crds" / "dsexport.io_datasets.yaml"
        crd = yaml.safe_load(crd_path.read_text())
        columns = crd["spec"]["versions"][0].setdefault("additionalPrinterColumns", [])
        columns.append({"name": "Upgraded", "type": "string", "jsonPath": ".metadata.uid", "priority": 1})
        crd_path.write_text(yaml.safe_dump(crd))
        shown = helm(control_plane, "show", "crds", str(chart_copy)).stdout
        kubectl(control_plane, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=shown)
        live = client.ApiextensionsV1Api(api).read_custom_resource_definition("datasets.dsexport.io")
        assert "Upgraded" in [c.name for c in live.spec.versions[0].additional_printer_columns]
        helm(
            control_plane,
            *("upgrade", RELEASE, str(chart_copy), "-n", NAMESPACE, *installed, "--set", "replicaCount=2"),
            *("--wait", "--timeout", "180s"),
        )
        pods = _operator_pods(api)
        assert len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
        names = [p.metadata.name for p in pods]
        wait_until(lambda: any(_leader(api).startswith(n) for n in names), timeout=60, what="one of them to lead")
        assert (
            client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(RELEASE, NAMESPACE).spec.max_unavailable == 1
        )

        # Still working after the upgrade: a second run exports nothing new and says so.
        _run_now(custom, "helm-upgraded")

        def second_run_recorded() -> bool:
            got = custom.get_namespaced_custom_object(
                GROUP, VERSION, demo_cluster.NAMESPACE, "datasetexports", demo_cluster.FLOW
            )
            return len(got["status"].get("recordedJobs") or []) >= 2

        wait_until(second_run_recorded, timeout=240, what="the second run to be recorded", interval=1)
        _assert_no_failed_api_call(api)
    finally:
        client.CoreV1Api(api).delete_namespace(demo_cluster.NAMESPACE)
        for pv in ("dsexport-demo-lake", "dsexport-demo-exports"):
            client.CoreV1Api(api).delete_persistent_volume(pv)
        # the namespace's flows go while the operator runs: it removes its finalizers
        _wait_namespace_gone(api, demo_cluster.NAMESPACE)

    # Uninstall: everything the chart made goes (the CRDs stay, as helm does with crds/, and so does user data).
    helm(control_plane, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    wait_until(lambda: not _operator_pods(api), timeout=120, what="the operator's pods to go")
    admission = client.AdmissionregistrationV1Api(api)
    assert "dsexport.io" not in [w.metadata.name for w in admission.list_validating_webhook_configuration().items]
    assert (
        not client.RbacAuthorizationV1Api(api)
        .list_cluster_role(label_selector=f"app.kubernetes.io/instance={RELEASE}")
        .items
    )
    assert client.ApiextensionsV1Api(api).read_custom_resource_definition("datasets.dsexport.io")
