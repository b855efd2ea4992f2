"""What only a real API server can show: the generated CRDs install and enforce their CEL rules, RBAC is on,
owner references are garbage-collected by the real controller, and the operator's reconciler (called directly,
so a race between its writes and its watches can be staged) cleans up what it created."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.cluster.control_plane import ControlPlane
from tests.crd_cases import INVALID, VALID
from tests.servers import wait_until

from dsexport import api as models
from dsexport.api import KINDS, Resource
from dsexport.operator.desired import Settings
from dsexport.operator.kube import Kube
from dsexport.operator.reconcile import Reconciler

GROUP, VERSION = "dsexport.io", "v1alpha1"


@pytest.fixture
def namespace(api: client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def test_version_is_the_pinned_release(control_plane: ControlPlane, api: client.ApiClient) -> None:
    gomod = (Path(__file__).resolve().parents[1] / "cluster/build/kube/go.mod").read_text()
    pinned = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)", gomod, re.M)
    assert pinned is not None
    assert client.VersionApi(api).get_code().git_version == pinned[1]


def test_every_generated_crd_installs(crds: list[str]) -> None:
    assert sorted(crds) == sorted(f"{k.plural}.{GROUP}" for k in KINDS)


def _create(api: client.ApiClient, namespace: str, kind: type[Resource], document: dict[str, Any]) -> None:
    body = {**document, "metadata": {**document["metadata"], "namespace": namespace}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, body)


@pytest.mark.parametrize(("kind", "document", "expected"), INVALID)
def test_api_server_rejects_with_the_cel_message(
    crds: list[str],
    api: client.ApiClient,
    namespace: str,
    kind: type[Resource],
    document: dict[str, Any],
    expected: str,
) -> None:
    with pytest.raises(ApiException) as caught:
        _create(api, namespace, kind, document)
    assert caught.value.status == 422
    assert expected in caught.value.body


@pytest.mark.parametrize(("kind", "document"), VALID)
def test_api_server_accepts_valid_variants(
    crds: list[str], api: client.ApiClient, namespace: str, kind: type[Resource], document: dict[str, Any]
) -> None:
    _create(api, namespace, kind, document)


def test_rbac_is_enforced(control_plane: ControlPlane, api: client.ApiClient, namespace: str) -> None:
    """A service account with no role bindings may not list pods: authorization is RBAC, not always-allow."""
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{namespace}:default",
                resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb="list", resource="pods"),
            )
        )
    )
    assert review.status.allowed is False


def test_owner_references_are_garbage_collected(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"a": "1"})
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[ref]))
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as e:
            return bool(e.status == 404)
        return False

    wait_until(child_gone, timeout=60, what="the garbage collector to delete the child")


def test_kubectl_of_the_same_release_talks_to_it(control_plane: ControlPlane) -> None:
    out = subprocess.run(
        [str(control_plane.bin / "kubectl"), "--kubeconfig", str(control_plane.kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "ok"


def test_a_cron_job_the_watch_has_not_reported_yet_is_still_deleted_when_its_dataset_goes_and_events_say_so(
    api: client.ApiClient, kubeconfig: Path, crds: list[str], namespace: str
) -> None:
    """The race CI once lost: the flow's CronJob is created, its Dataset is deleted before the CronJob watch
    reports the new CronJob, and the next reconciliation (with an empty CronJob index) must still remove it."""
    custom = client.CustomObjectsApi(api)
    spec = {"destinationRef": {"name": "store"}, "datasets": [{"name": "events"}], "schedule": {"frequency": "daily"}}
    flow = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "datasetexports",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatasetExport", "metadata": {"name": "daily"}, "spec": spec},
    )
    dataset = models.Dataset.model_validate(
        {"metadata": {"name": "events", "namespace": namespace}, "spec": {"source": {"uri": "file:///lake"}}}
    )
    destination = models.Destination.model_validate(
        {
            "metadata": {"name": "store", "namespace": namespace},
            "spec": {
                "type": "filesystem",
                "folder": "exports",
                "filesystem": {"path": "/exports", "claimName": "exports"},
            },
        }
    )
    reconciler = Reconciler(Kube.connect(str(kubeconfig)), Settings())  # the operator's own client
    now = dt.datetime.now(dt.UTC)
    batch = client.BatchV1Api(api)

    first = reconciler.flow(flow, datasets={"events": dataset}, destination=destination, now=now, cron_jobs={})
    assert len(batch.list_namespaced_cron_job(namespace).items) == 1
    assert first.events == []  # a new flow's first Scheduled is said by the status alone
    outcome = reconciler.flow(flow, datasets={}, destination=destination, now=now, cron_jobs={})
    assert outcome.status is not None
    assert [c.reason for c in outcome.status.conditions if c.type == "Ready"] == ["DatasetNotFound"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "DatasetNotFound")]
    assert batch.list_namespaced_cron_job(namespace).items == []
    again = reconciler.flow(flow, datasets={"events": dataset}, destination=destination, now=now, cron_jobs={})
    assert [(e.type, e.reason) for e in again.events] == [("Normal", "Scheduled")]  # recovered: that is news
