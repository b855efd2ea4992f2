"""The exporter in its image, in a pod on the real node, as the operator will run it.

A Job made from ``exporter_pod_template`` (the operator's own template) runs ``dsexport run`` with a read-only root,
a non-root user and no capabilities, the flow from a ConfigMap and the Destination's Secret mounted as files,
against SeaweedFS, sshd, fake-gcs-server and Azurite listening on the node address. The rows are checked exactly,
the termination message carries the RunResult, and a pod SIGKILLed at a random moment is replaced by the Job and
the export stays exact.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from examples import sample
from kubernetes import client
from tests.cluster.cluster import Cluster
from tests.cluster.node import CGROUPS
from tests.helpers import START, assert_only_committed_files, flow_yaml, read_committed_ids, source_ids
from tests.k8s.conftest import create_namespace
from tests.servers import SECRET_NAME, Target, azurite, fakegcs, seaweed, sshd, wait_until

from dsexport.api import Dataset, DatasetExport, Destination
from dsexport.engine import Outcome, RunResult
from dsexport.operator import render
from dsexport.operator.pods import CONTAINER, exporter_pod_template

AT = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def targets(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    """The destination servers on the node address, where pods reach them."""
    found = {
        "s3": seaweed.launch(tmp_path_factory.mktemp("weed-for-pods"), host=cluster.node_ip),
        "sftp": sshd.launch(tmp_path_factory.mktemp("sshd-for-pods"), host=cluster.node_ip),
        "gcs": fakegcs.launch(tmp_path_factory.mktemp("gcs-for-pods"), host=cluster.node_ip),
        "azureBlob": azurite.launch(tmp_path_factory.mktemp("azurite-for-pods"), host=cluster.node_ip),
    }
    yield found
    for target in found.values():
        assert target.server is not None
        target.server.stop()


def _lake(tmp_path: Path, *, files: int, rows: int) -> Path:
    lake = tmp_path / "lake"
    sample.write_files(lake, files=files, rows_per_file=rows, seed=5, start=START)
    lake.chmod(0o755)  # the pod's user reads it through a hostPath volume
    return lake


def _deploy(api: client.ApiClient, namespace: str, tmp_path: Path, target: Target) -> None:
    """The flow as a ConfigMap (no secret values in it) and the credentials as a Secret, as the operator does."""
    flow = flow_yaml(tmp_path, source="/data/lake", destination=target.destination_spec(), folder=namespace)
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "flow"}, "data": {"flow.yaml": flow.read_text()}}
    )
    assert "Secret" not in {d["kind"] for d in yaml.safe_load_all(flow.read_text())}
    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET_NAME}, "stringData": target.secret or {}})


def _job(cluster: Cluster, lake: Path, *, backoff: int) -> dict[str, Any]:
    assert cluster.node is not None
    template = exporter_pod_template(
        image=cluster.node.image,
        image_pull_policy="Never",
        config_map="flow",
        secrets=[SECRET_NAME],
        args=["--at", AT.isoformat()],
        labels={"app.kubernetes.io/name": "dsexport-exporter"},
        resources={"limits": {"memory": "512Mi"}},
        volumes=[{"name": "lake", "hostPath": {"path": str(lake), "type": "Directory"}}],
        volume_mounts=[{"name": "lake", "mountPath": "/data/lake", "readOnly": True}],
    )
    return {"metadata": {"name": "export"}, "spec": {"backoffLimit": backoff, "template": template}}


def _complete(api: client.ApiClient, namespace: str, timeout: float = 180) -> Any:
    batch = client.BatchV1Api(api)

    def finished() -> bool:
        conditions = batch.read_namespaced_job("export", namespace).status.conditions or []
        if any(c.type == "Failed" and c.status == "True" for c in conditions):
            core = client.CoreV1Api(api)
            logs = [
                core.read_namespaced_pod_log(p.metadata.name, namespace, _preload_content=False).data.decode()[-3000:]
                for p in _pods(api, namespace)
            ]
            raise AssertionError("the export job failed; pod logs:\n" + "\n---\n".join(logs))
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    wait_until(finished, timeout=timeout, what="the export job to complete", interval=0.5)
    return batch.read_namespaced_job("export", namespace)


def _pods(api: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="job-name=export").items)


@pytest.fixture
def namespace(api: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    name = create_namespace(api, "export")
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)


@pytest.mark.parametrize("kind", ["s3", "sftp", "gcs", "azureBlob"])
def test_export_job_in_the_image_commits_exactly_the_source_rows(
    cluster: Cluster, api: client.ApiClient, namespace: str, targets: dict[str, Target], tmp_path: Path, kind: str
) -> None:
    target = targets[kind]
    lake = _lake(tmp_path, files=3, rows=2_000)
    _deploy(api, namespace, tmp_path, target)
    client.BatchV1Api(api).create_namespaced_job(namespace, _job(cluster, lake, backoff=0))
    _complete(api, namespace)

    [pod] = _pods(api, namespace)
    status = pod.status.container_statuses[0]
    assert status.name == CONTAINER
    result = RunResult.parse(status.state.terminated.message, origin=f"pod {pod.metadata.name}")
    [dataset] = result.results
    assert (dataset.outcome, dataset.records, dataset.export_time) == (Outcome.exported, 6_000, "202612010900")
    transport = target.transport()
    assert sorted(read_committed_ids(transport, folder=namespace)) == sorted(source_ids(lake))
    assert_only_committed_files(transport, folder=namespace)
    log = client.CoreV1Api(api).read_namespaced_pod_log(pod.metadata.name, namespace, _preload_content=False)
    for value in (target.secret or {}).values():
        assert value not in log.data.decode(), "a secret value reached the log"


def _container_pids(cluster: Cluster, pod: Any) -> set[int]:
    """The processes of the pod's exporter container, found in its cgroup below the node's cgroup root."""
    assert cluster.node is not None
    container_id = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
    pids: set[int] = set()
    for procs in (CGROUPS / "memory" / cluster.node.cgroup_root.strip("/")).rglob(f"{container_id}/cgroup.procs"):
        pids |= {int(p) for p in procs.read_text().split()}
    return pids


def test_a_pod_killed_at_a_random_moment_is_retried_and_the_export_stays_exact(
    cluster: Cluster, api: client.ApiClient, namespace: str, targets: dict[str, Target], tmp_path: Path
) -> None:
    target = targets["s3"]
    lake = _lake(tmp_path, files=30, rows=30_000)  # an export of a few seconds, so the kill lands inside it
    _deploy(api, namespace, tmp_path, target)
    client.BatchV1Api(api).create_namespaced_job(namespace, _job(cluster, lake, backoff=3))

    def running() -> list[Any]:
        return [p for p in _pods(api, namespace) if p.status.phase == "Running" and p.status.container_statuses]

    wait_until(lambda: bool(running()), timeout=60, what="the first exporter pod to run", interval=0.1)
    [first] = running()
    time.sleep(random.uniform(0.0, 1.0))  # the moment of the kill, not a synchronisation
    pids = _container_pids(cluster, first)
    assert pids, "the exporter finished before it could be killed: make the lake bigger"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

    job = _complete(api, namespace)
    assert job.status.failed == 1 and job.status.succeeded == 1
    killed = client.CoreV1Api(api).read_namespaced_pod(first.metadata.name, namespace)
    assert killed.status.container_statuses[0].state.terminated.exit_code == 137
    transport = target.transport()
    assert sorted(read_committed_ids(transport, folder=namespace)) == sorted(source_ids(lake))
    assert_only_committed_files(transport, folder=namespace)


def test_a_job_from_the_rendered_cron_job_runs_the_flow_of_the_rendered_config_map(
    cluster: Cluster,
    api: client.ApiClient,
    crds: list[str],
    namespace: str,
    targets: dict[str, Target],
    tmp_path: Path,
) -> None:
    """What the operator will apply, applied by hand: the DatasetExport, its flow ConfigMap and CronJob as
    rendered; a Job made from the CronJob's template (as run-now does) exports the CronJob's datasets only."""
    assert cluster.node is not None
    target = targets["s3"]
    lake = _lake(tmp_path, files=2, rows=1_000)
    schedule = {"frequency": "daily", "time": "00:00", "startDate": "2026-11-01"}
    manifests: dict[str, list[dict[str, Any]]] = {
        "Dataset": [
            {
                "metadata": {"name": name},
                "spec": {"source": {"uri": "/data/lake"}, "incremental": {"strategy": "files"}},
            }
            for name in ("events", "other")
        ],
        "Destination": [{"metadata": {"name": "dest"}, "spec": {**target.destination_spec(), "folder": namespace}}],
        "DatasetExport": [
            {
                "metadata": {"name": "flow"},
                "spec": {
                    "destinationRef": {"name": "dest"},
                    "datasets": [
                        {"name": "events"},
                        {"name": "other", "schedule": {**schedule, "time": "12:00"}},
                    ],
                    "schedule": schedule,
                },
            }
        ],
    }
    custom = client.CustomObjectsApi(api)
    created: dict[str, list[dict[str, Any]]] = {}
    for kind, documents in manifests.items():
        for document in documents:
            body = {"apiVersion": "dsexport.io/v1alpha1", "kind": kind, **document}
            plural = {"Dataset": "datasets", "Destination": "destinations", "DatasetExport": "datasetexports"}[kind]
            created.setdefault(kind, []).append(
                custom.create_namespaced_custom_object("dsexport.io", "v1alpha1", namespace, plural, body)
            )
    export = DatasetExport.model_validate(created["DatasetExport"][0])
    uid = created["DatasetExport"][0]["metadata"]["uid"]
    config_map = render.flow_config_map(
        dataset_export=export,
        datasets=[Dataset.model_validate(d) for d in created["Dataset"]],
        destination=Destination.model_validate(created["Destination"][0]),
        owner_uid=uid,
    )
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.create_namespaced_config_map(namespace, config_map)
    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET_NAME}, "stringData": target.secret or {}})
    [group, _] = render.schedule_groups(export)
    cron_job = render.cron_job(
        dataset_export=export,
        group=group,
        owner_uid=uid,
        image=cluster.node.image,
        secrets=[SECRET_NAME],
        now=dt.datetime.now(dt.UTC),
        volumes=[{"name": "lake", "hostPath": {"path": str(lake), "type": "Directory"}}],
        volume_mounts=[{"name": "lake", "mountPath": "/data/lake", "readOnly": True}],
    )
    batch.create_namespaced_cron_job(namespace, cron_job)
    job_template = batch.read_namespaced_cron_job(cron_job["metadata"]["name"], namespace).spec.job_template
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="export", labels=job_template.metadata.labels), spec=job_template.spec
        ),
    )
    _complete(api, namespace)

    [pod] = _pods(api, namespace)
    result = RunResult.parse(pod.status.container_statuses[0].state.terminated.message, origin="the pod")
    assert [(r.dataset, r.outcome, r.records) for r in result.results] == [("events", Outcome.exported, 2_000)]
    transport = target.transport()
    assert sorted(read_committed_ids(transport, folder=namespace)) == sorted(source_ids(lake))
    assert_only_committed_files(transport, folder=namespace)
