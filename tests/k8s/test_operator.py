"""The operator end to end: ``dsexport operator`` on the host, exporter pods in the real image on the real node.

A user's manifests go in (a Secret, a Destination on SeaweedFS, a Dataset whose source is an S3 prefix on the same
store, a DatasetExport); the operator renders them into a ConfigMap, the exporter's account and a CronJob; the
annotations start Jobs; each finished Job's results reach the status exactly once and match the manifests the
export committed at the destination.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from examples import demo_cluster, sample
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families
from tests.cluster.cluster import Cluster
from tests.cluster.node import CGROUPS
from tests.helpers import START, assert_only_committed_files, committed, read_committed_ids
from tests.k8s.conftest import create_namespace
from tests.servers import SECRET_NAME, ProcessServer, Target, free_port, seaweed, wait_until
from tests.servers.operator import local_operator

from dsexport.api import GROUP, VERSION
from dsexport.operator import render
from dsexport.operator.handlers import FINALIZER, WEBHOOK_CONFIGURATION

FLOWS = "datasetexports"
LAKE_SECRET = "lake-creds"
ROWS_PER_FILE = 1_000
FILES = 3


@pytest.fixture(scope="module")
def store(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """SeaweedFS on the node address: the destination and, in the same bucket, the source lake."""
    target = seaweed.launch(tmp_path_factory.mktemp("weed-operator"), host=cluster.node_ip)
    yield target
    assert target.server is not None
    target.server.stop()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, kubeconfig: Path, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessServer]:
    """``dsexport operator`` as a user starts it next to ``make cluster``, stopped by its pid afterwards."""
    assert cluster.node is not None
    port = free_port()
    server = local_operator(
        kubeconfig=kubeconfig, image=cluster.node.image, metrics_port=port, workdir=tmp_path_factory.mktemp("operator")
    )
    server.start()
    yield server
    server.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _metrics(operator: ProcessServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on the operator's /metrics, by name and labels."""
    port = int(operator.argv[operator.argv.index("--metrics-address") + 1].rsplit(":", 1)[1])
    status, text = _get(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _s3(target: Target) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=target.block["endpoint"],
        region_name=target.block["region"],
        aws_access_key_id=(target.secret or {})["accessKeyId"],
        aws_secret_access_key=(target.secret or {})["secretAccessKey"],
        config=Config(s3={"addressing_style": "path"}),
    )


def _upload_lake(
    target: Target, tmp_path: Path, prefix: str, *, files: int, offset: int = 0, rows: int = ROWS_PER_FILE
) -> list[int]:
    """Source files under s3://BUCKET/PREFIX; returns their ids."""
    local = tmp_path / f"lake-{offset}"
    sample.write_files(local, files=files, rows_per_file=rows, seed=offset + 3, start=START, id_offset=offset)
    s3 = _s3(target)
    ids: list[int] = []
    for path in sorted(local.glob("*.parquet")):
        s3.upload_file(str(path), target.block["bucket"], f"{prefix}/{path.name}")
        ids.extend(sample_ids(path))
    return ids


def sample_ids(path: Path) -> list[int]:
    return list(pq.read_table(path, columns=["_id"]).column("_id").to_pylist())


def _manifests(api: client.ApiClient, namespace: str, target: Target, *, schedule: dict[str, Any]) -> None:
    core = client.CoreV1Api(api)
    for name in (SECRET_NAME, LAKE_SECRET):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": target.secret})
    endpoint = target.block["endpoint"].removeprefix("http://")
    custom = client.CustomObjectsApi(api)
    destination = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Destination",
        "metadata": {"name": "store"},
        "spec": {**target.destination_spec(), "folder": f"exports/{namespace}"},
    }
    dataset = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Dataset",
        "metadata": {"name": "events"},
        "spec": {
            "source": {
                "uri": f"s3://{target.block['bucket']}/lake/{namespace}?endpoint_override={endpoint}&scheme=http"
                f"&region={target.block['region']}",
                "credentialsSecretRef": {"name": LAKE_SECRET},
            },
            "incremental": {"strategy": "files", "lookback": "0s"},
        },
    }
    flow = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DatasetExport",
        "metadata": {"name": "daily"},
        "spec": {"destinationRef": {"name": "store"}, "datasets": [{"name": "events"}], "schedule": schedule},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "destinations", destination)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", dataset)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, FLOWS, flow)


def _flow(api: client.ApiClient, namespace: str, name: str = "daily") -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, name
    )
    return found


def _condition(flow: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (flow.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def _wait_flow(
    api: client.ApiClient, namespace: str, check: Callable[[dict[str, Any]], bool], what: str, operator: ProcessServer
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def ok() -> bool:
        found.update(_flow(api, namespace))
        return check(found)

    try:
        wait_until(ok, timeout=150, what=what, interval=0.5)
    except TimeoutError:
        core = client.CoreV1Api(api)
        pods = core.list_namespaced_pod(namespace).items
        for pod in pods:
            found.setdefault("pods", []).append(
                (pod.metadata.name, pod.status.phase, str(pod.status.container_statuses)[-1500:])
            )
        log = operator.log.read_text(errors="replace")[-4000:]
        raise AssertionError(
            f"{what}; status: {json.dumps(found.get('status'), indent=1)}\noperator log:\n{log}"
        ) from None
    return found


def _pod_logs(api: client.ApiClient, namespace: str) -> str:
    """For a failure message: each pod's phase and log tail."""
    core = client.CoreV1Api(api)
    out = []
    for pod in core.list_namespaced_pod(namespace).items:
        log = core.read_namespaced_pod_log(pod.metadata.name, namespace, _preload_content=False).data.decode()
        out.append(f"{pod.metadata.name} {pod.status.phase}:\n{log[-3000:]}")
    return "\n---\n".join(out)


def _annotate(api: client.ApiClient, namespace: str, key: str, value: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, "daily", {"metadata": {"annotations": {key: value}}}
    )


@pytest.fixture
def namespace(api: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    name = create_namespace(api, "op")
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)


@pytest.mark.timeout(900)  # the first test of a session also starts the cluster
def test_run_now_and_reset_reach_the_store_and_the_status_exactly_once(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    ids = _upload_lake(store, tmp_path, f"lake/{namespace}", files=FILES)
    _manifests(api, namespace, store, schedule={"frequency": "daily", "time": "09:30", "startDate": "2026-11-01"})

    flow = _wait_flow(
        api, namespace, lambda f: _condition(f, "Ready").get("status") == "True", "the flow to be Ready", operator
    )
    status = flow["status"]
    assert _condition(flow, "Ready")["reason"] == "Scheduled"
    assert status["observedGeneration"] == flow["metadata"]["generation"]
    assert status["schedule"] == "daily at 09:30 UTC from 2026-11-01"
    [cron_ref] = status["cronJobs"]
    assert cron_ref["schedule"] == status["cron"] == "30 9 * * *"
    cron = client.BatchV1Api(api).read_namespaced_cron_job(cron_ref["name"], namespace)
    assert (cron.spec.schedule, cron.spec.time_zone, cron.spec.concurrency_policy) == (
        "30 9 * * *",
        "Etc/UTC",
        "Forbid",
    )
    assert cron.spec.suspend is False
    assert cron.metadata.owner_references[0].kind == "DatasetExport"
    now = dt.datetime.now(dt.UTC)
    next_time = dt.datetime.fromisoformat(status["nextExportTime"])
    assert now < next_time <= now + dt.timedelta(days=1)
    wait_until(
        lambda: (
            client.CustomObjectsApi(api)
            .get_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")
            .get("status", {})
            .get("usedBy")
            == ["daily"]
        ),
        timeout=30,
        what="the Dataset's usedBy",
    )

    # run-now: a Job now, the annotation consumed, the result in status and an Event.
    _annotate(api, namespace, "dsexport.io/run-now", "first")
    flow = _wait_flow(
        api, namespace, lambda f: (f.get("status") or {}).get("lastExport") is not None, "the run-now export", operator
    )
    last = flow["status"]["lastExport"]
    assert last["result"] == "Succeeded", _pod_logs(api, namespace)
    assert "dsexport.io/run-now" not in (flow["metadata"].get("annotations") or {})
    transport = store.transport()
    folder = f"exports/{namespace}"
    assert sorted(read_committed_ids(transport, folder=folder)) == sorted(ids)
    assert_only_committed_files(transport, folder=folder)
    [manifest] = committed(transport, "events", folder)
    [progress] = flow["status"]["datasets"]
    assert (progress["name"], progress["runs"], progress["failures"]) == ("events", 1, 0)
    assert (progress["records"], progress["files"]) == (manifest["records"], len(manifest["files"]))
    assert progress["bytes"] == manifest["bytes"]
    assert progress["lastExportTime"] == manifest["exportTime"] == last["exportTime"]
    assert progress["watermark"] == manifest["watermark"]["to"]
    assert last["records"] == len(ids)
    assert flow["status"]["pendingResults"] == {} or "pendingResults" not in flow["status"]
    assert last["job"] in flow["status"]["recordedJobs"]
    assert _condition(flow, "LastExportSucceeded")["status"] == "True"
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    reasons = {(e.reason, e.involved_object.name) for e in events}
    assert ("RunNow", "daily") in reasons
    wait_until(
        lambda: any(
            e.reason == "ExportSucceeded" for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
        ),
        timeout=30,
        what="an ExportSucceeded Event",
    )

    samples = _metrics(operator)
    key = frozenset({"namespace": namespace, "export": "daily", "dataset": "events"}.items())
    assert samples[("dsexport_records_total", key)] == manifest["records"]
    assert samples[("dsexport_files_total", key)] == len(manifest["files"])
    assert samples[("dsexport_runs_total", key | {("result", "succeeded")})] == 1
    assert samples[("dsexport_schedule_interval_seconds", key)] == 86400
    assert ("dsexport_watermark_timestamp_seconds", key) in samples

    # New files, then a reset: a full backfill of everything, once, in a new exportTime folder.
    more = _upload_lake(store, tmp_path, f"lake/{namespace}", files=1, offset=100_000)
    first_job = last["job"]
    _annotate(api, namespace, "dsexport.io/reset", "events")
    flow = _wait_flow(
        api,
        namespace,
        lambda f: ((f.get("status") or {}).get("lastExport") or {}).get("job") not in (None, first_job),
        "the reset export",
        operator,
    )
    last = flow["status"]["lastExport"]
    assert last["result"] == "Succeeded", _pod_logs(api, namespace)
    assert last["records"] == len(ids) + len(more)
    manifests = committed(transport, "events", folder)
    assert [m["reset"] for m in manifests] == [False, True]
    assert manifests[-1]["resetToken"]
    [progress] = flow["status"]["datasets"]
    assert (progress["runs"], progress["records"]) == (2, len(ids) * 2 + len(more))
    assert "dsexport.io/reset" not in (flow["metadata"].get("annotations") or {})
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=f"{render.LABEL_EXPORT}=daily").items
    assert len(jobs) == 2, [j.metadata.name for j in jobs]  # one run-now, one reset: nothing ran twice


def test_deleting_the_flow_removes_what_it_created(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    _manifests(api, namespace, store, schedule={"frequency": "hourly", "interval": 6, "startDate": "2026-11-01"})
    _wait_flow(
        api, namespace, lambda f: _condition(f, "Ready").get("status") == "True", "the flow to be Ready", operator
    )
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    selector = f"{render.LABEL_EXPORT}=daily"
    assert len(batch.list_namespaced_cron_job(namespace, label_selector=selector).items) == 1
    assert len(core.list_namespaced_config_map(namespace, label_selector=selector).items) == 1
    custom = client.CustomObjectsApi(api)
    # Deleting a Dataset in use is refused at admission, naming the flow (a dry run asks the webhook the same).
    refusal: list[ApiException] = []

    def refused() -> bool:
        try:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events", dry_run="All")
        except ApiException as e:
            refusal[:] = [e]
            return True
        return False

    wait_until(refused, timeout=30, what="the webhook to refuse deleting the Dataset in use", interval=0.2)
    [e] = refusal
    assert e.status == 409 and "used by DatasetExport(s) daily" in str(e.body), e.body
    with pytest.raises(ApiException, match="daily"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")
    assert not custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")["metadata"].get(
        "deletionTimestamp"
    )
    # Without the webhook (not installed, or not reachable), the finalizer holds the deletion while the flow uses
    # the Dataset, and an Event says why.
    admission = client.AdmissionregistrationV1Api(api)
    admission.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION)
    wait_until(lambda: not refused(), timeout=30, what="the API server to stop calling the webhook", interval=0.2)

    def protected() -> bool:
        dataset = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")
        return FINALIZER in (dataset["metadata"].get("finalizers") or [])

    wait_until(protected, timeout=30, what="the operator's finalizer on the Dataset", interval=0.2)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")

    def in_use_event() -> bool:
        return any(e.reason == "InUse" and "daily" in e.message for e in core.list_namespaced_event(namespace).items)

    try:
        wait_until(in_use_event, timeout=60, what="an InUse Event on the Dataset", interval=0.5)
    except TimeoutError:
        dataset = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "datasets")["items"]
        raise AssertionError(f"{dataset}\n{operator.log.read_text()[-5000:]}") from None
    dataset = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")
    assert dataset["metadata"]["deletionTimestamp"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, FLOWS, "daily")

    def dataset_gone() -> bool:
        return not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "datasets")["items"]

    wait_until(dataset_gone, timeout=60, what="the Dataset's deletion to complete once unused", interval=0.5)

    def gone() -> bool:
        return not (
            batch.list_namespaced_cron_job(namespace, label_selector=selector).items
            or core.list_namespaced_config_map(namespace, label_selector=selector).items
            or core.list_namespaced_service_account(namespace, label_selector=selector).items
        )

    wait_until(gone, timeout=60, what="the flow's objects to be garbage collected")


def test_missing_dataset_is_a_condition_and_the_flow_recovers_when_it_appears(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer
) -> None:
    custom = client.CustomObjectsApi(api)
    _manifests(api, namespace, store, schedule={"frequency": "daily", "startDate": "2026-11-01"})
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", "events")
    flow = _wait_flow(
        api,
        namespace,
        lambda f: _condition(f, "Ready").get("reason") == "DatasetNotFound",
        "Ready=False DatasetNotFound",
        operator,
    )
    assert _condition(flow, "Ready")["status"] == "False"
    assert "events" in _condition(flow, "Ready")["message"]
    assert not client.BatchV1Api(api).list_namespaced_cron_job(namespace).items
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "datasets",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Dataset",
            "metadata": {"name": "events"},
            "spec": {"source": {"uri": "s3://exports/lake/none", "credentialsSecretRef": {"name": LAKE_SECRET}}},
        },
    )
    _wait_flow(
        api,
        namespace,
        lambda f: _condition(f, "Ready").get("reason") == "Scheduled",
        "the flow to recover once the Dataset exists",
        operator,
    )
    assert len(client.BatchV1Api(api).list_namespaced_cron_job(namespace).items) == 1


def _destination(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "destinations", "store"
    )
    return found


@pytest.mark.timeout(600)
def test_destination_checks_set_available_and_the_flows_mirror_it(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer
) -> None:
    _manifests(api, namespace, store, schedule={"frequency": "daily", "startDate": "2026-11-01"})

    def available(status: str) -> Callable[[], bool]:
        return lambda: _condition(_destination(api, namespace), "Available").get("status") == status

    wait_until(available("True"), timeout=120, what="the Destination to be checked Available", interval=0.5)
    destination = _destination(api, namespace)
    assert _condition(destination, "Available")["reason"] == "CheckSucceeded"
    assert destination["status"]["checkedGeneration"] == destination["metadata"]["generation"]
    first_check = destination["status"]["lastCheckTime"]
    _wait_flow(
        api,
        namespace,
        lambda f: _condition(f, "DestinationAvailable").get("status") == "True",
        "the flow to mirror the destination's availability",
        operator,
    )

    # Credentials the store refuses: a check on demand finds it, and says which step failed.
    wrong = store.wrong_secret
    assert wrong is not None
    client.CoreV1Api(api).replace_namespaced_secret(
        SECRET_NAME, namespace, {"metadata": {"name": SECRET_NAME}, "stringData": wrong}
    )
    # An export that fails on the destination makes it unavailable at once, and the flows say so.
    _annotate(api, namespace, "dsexport.io/run-now", "with-wrong-credentials")
    wait_until(
        lambda: _condition(_destination(api, namespace), "Available").get("reason") == "ExportFailed",
        timeout=240,
        what="the failed export to flip the Destination",
        interval=0.5,
    )
    _wait_flow(
        api,
        namespace,
        lambda f: _condition(f, "DestinationAvailable").get("reason") == "ExportFailed",
        "the flow to mirror the failed export",
        operator,
    )
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "destinations",
        "store",
        {"metadata": {"annotations": {"dsexport.io/check-now": "1"}}},
    )
    wait_until(
        lambda: _condition(_destination(api, namespace), "Available").get("reason") == "CheckFailed",
        timeout=120,
        what="the check to find the wrong credentials",
        interval=0.5,
    )
    destination = _destination(api, namespace)
    condition = _condition(destination, "Available")
    assert condition["reason"] == "CheckFailed"
    assert "write" in condition["message"]
    assert wrong["secretAccessKey"] not in json.dumps(destination)
    assert destination["status"]["lastCheckTime"] >= first_check
    assert "dsexport.io/check-now" not in (destination["metadata"].get("annotations") or {})
    flow = _wait_flow(
        api,
        namespace,
        lambda f: _condition(f, "DestinationAvailable").get("reason") == "CheckFailed",
        "the flow to mirror the failed check",
        operator,
    )
    assert _condition(flow, "DestinationAvailable")["reason"] == "CheckFailed"


@pytest.mark.timeout(600)
def test_the_cluster_examples_export_into_a_claimed_folder(
    api: client.ApiClient, operator: ProcessServer, tmp_path: Path
) -> None:
    """examples/cluster/ as `make demo-cluster` applies it: a local-path source and a filesystem Destination,
    each a PersistentVolumeClaim the pods mount; the committed files land in the node folder behind the claim."""
    lake, exports = tmp_path / "lake", tmp_path / "exports"
    rows = demo_cluster.prepare(lake=lake, exports=exports, rows=4_000)
    demo_cluster.apply(api, demo_cluster.documents(lake=lake, exports=exports))
    try:
        custom = client.CustomObjectsApi(api)
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            demo_cluster.NAMESPACE,
            FLOWS,
            demo_cluster.FLOW,
            {"metadata": {"annotations": {"dsexport.io/run-now": "examples"}}},
        )
        flow = demo_cluster.wait_recorded(api)
        last = flow["status"]["lastExport"]
        assert last["result"] == "Succeeded", _pod_logs(api, demo_cluster.NAMESPACE)
        assert last["records"] == rows
        folder = "marketing/exports"
        dataset_id = "experience-events"
        assert sorted(read_committed_ids(exports, dataset_id=dataset_id, folder=folder)) == sorted(
            i for path in sorted((lake / "experience_events").glob("*.parquet")) for i in sample_ids(path)
        )
        assert_only_committed_files(exports, dataset_id=dataset_id, folder=folder)
    finally:
        client.CoreV1Api(api).delete_namespace(demo_cluster.NAMESPACE)
        for pv in ("dsexport-demo-lake", "dsexport-demo-exports"):
            client.CoreV1Api(api).delete_persistent_volume(pv)


@pytest.mark.timeout(600)
def test_an_operator_killed_during_a_run_records_it_once_after_restart(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """SIGKILL while the Job runs; the Job finishes with no operator; the restarted operator finds it (listing the
    Jobs) and records it exactly once, creating no second Job for the consumed annotation."""
    ids = _upload_lake(store, tmp_path, f"lake/{namespace}", files=2)
    _manifests(api, namespace, store, schedule={"frequency": "daily", "startDate": "2026-11-01"})
    _wait_flow(api, namespace, lambda f: _condition(f, "Ready").get("status") == "True", "Ready", operator)
    batch = client.BatchV1Api(api)
    selector = f"{render.LABEL_EXPORT}=daily"
    _annotate(api, namespace, "dsexport.io/run-now", "before-the-kill")
    wait_until(
        lambda: bool(batch.list_namespaced_job(namespace, label_selector=selector).items),
        timeout=60,
        what="the run-now Job",
        interval=0.2,
    )
    assert operator.proc is not None
    os.killpg(operator.proc.pid, signal.SIGKILL)
    operator.proc.wait(timeout=10)
    operator.proc = None

    def job_done() -> bool:
        [job] = batch.list_namespaced_job(namespace, label_selector=selector).items
        return any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or [])

    wait_until(job_done, timeout=180, what="the Job to finish while the operator is down", interval=0.5)
    assert "lastExport" not in (_flow(api, namespace).get("status") or {})
    operator.start()
    flow = _wait_flow(
        api,
        namespace,
        lambda f: (f.get("status") or {}).get("lastExport") is not None,
        "the recovered record",
        operator,
    )
    assert flow["status"]["lastExport"]["result"] == "Succeeded", _pod_logs(api, namespace)
    [progress] = flow["status"]["datasets"]
    assert (progress["runs"], progress["records"]) == (1, len(ids))
    assert len(batch.list_namespaced_job(namespace, label_selector=selector).items) == 1
    assert flow["status"]["recordedJobs"].count(flow["status"]["lastExport"]["job"]) == 1


def test_suspend_suspends_the_cronjobs_and_says_so(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer
) -> None:
    _manifests(api, namespace, store, schedule={"frequency": "hourly", "interval": 3, "startDate": "2026-11-01"})
    _wait_flow(api, namespace, lambda f: _condition(f, "Ready").get("reason") == "Scheduled", "Scheduled", operator)
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, "daily", {"spec": {"suspend": True}}
    )
    flow = _wait_flow(
        api, namespace, lambda f: _condition(f, "Ready").get("reason") == "Suspended", "Suspended", operator
    )
    assert "nextExportTime" not in flow["status"]
    [cron] = client.BatchV1Api(api).list_namespaced_cron_job(namespace).items
    assert cron.spec.suspend is True
    assert cron.spec.schedule == "0 0,3,6,9,12,15,18,21 * * *"


def test_a_cron_job_deleted_or_edited_by_hand_is_put_back(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer
) -> None:
    """CronJobs are watched: the operator repairs one that someone else changed, without waiting for a resync."""
    _manifests(api, namespace, store, schedule={"frequency": "hourly", "interval": 3, "startDate": "2026-11-01"})
    _wait_flow(api, namespace, lambda f: _condition(f, "Ready").get("reason") == "Scheduled", "Scheduled", operator)
    batch = client.BatchV1Api(api)
    [cron] = batch.list_namespaced_cron_job(namespace).items
    name, schedule = cron.metadata.name, cron.spec.schedule
    batch.patch_namespaced_cron_job(name, namespace, {"spec": {"schedule": "*/5 * * * *"}})

    def schedule_is(expected: str) -> bool:
        found = batch.list_namespaced_cron_job(namespace).items
        return [(c.metadata.name, c.spec.schedule) for c in found] == [(name, expected)]

    wait_until(lambda: schedule_is(schedule), timeout=30, what="the edited CronJob put back", interval=0.2)
    batch.delete_namespaced_cron_job(name, namespace)
    wait_until(lambda: schedule_is(schedule), timeout=30, what="the deleted CronJob created again", interval=0.2)


@pytest.mark.timeout(600)
def test_a_flow_of_100_datasets_reaches_the_status_complete(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """100 results are far more than a 4 KiB termination message: the pod's status patch carries them all."""
    count = 100
    s3 = _s3(store)
    local = tmp_path / "one"
    sample.write_files(local, files=1, rows_per_file=50, seed=1, start=START)
    [file] = sorted(local.glob("*.parquet"))
    endpoint = store.block["endpoint"].removeprefix("http://")
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    for name in (SECRET_NAME, LAKE_SECRET):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": store.secret})
    names = [f"dataset-with-a-rather-long-name-{i:03d}" for i in range(count)]
    for name in names:
        s3.upload_file(str(file), store.block["bucket"], f"lake/{namespace}/{name}/{file.name}")
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "datasets",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Dataset",
                "metadata": {"name": name},
                "spec": {
                    "source": {
                        "uri": f"s3://{store.block['bucket']}/lake/{namespace}/{name}?endpoint_override={endpoint}"
                        f"&scheme=http&region={store.block['region']}",
                        "credentialsSecretRef": {"name": LAKE_SECRET},
                    },
                    "incremental": {"strategy": "files", "lookback": "0s"},
                },
            },
        )
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "destinations",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Destination",
            "metadata": {"name": "store"},
            "spec": {**store.destination_spec(), "folder": f"exports/{namespace}", "healthCheck": {"interval": "0"}},
        },
    )
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        FLOWS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DatasetExport",
            "metadata": {"name": "daily"},
            "spec": {
                "destinationRef": {"name": "store"},
                "datasets": [{"name": n} for n in names],
                "schedule": {"frequency": "daily", "startDate": "2026-11-01"},
            },
        },
    )
    _wait_flow(api, namespace, lambda f: _condition(f, "Ready").get("reason") == "Scheduled", "Scheduled", operator)
    _annotate(api, namespace, "dsexport.io/run-now", "hundred")
    flow = _wait_flow(
        api, namespace, lambda f: (f.get("status") or {}).get("lastExport") is not None, "the export of 100", operator
    )
    assert flow["status"]["lastExport"]["result"] == "Succeeded", _pod_logs(api, namespace)
    assert flow["status"]["lastExport"]["records"] == 50 * count
    progress = {d["name"]: d for d in flow["status"]["datasets"]}
    assert sorted(progress) == sorted(names)
    transport = store.transport()
    for name in names:
        [manifest] = committed(transport, name, f"exports/{namespace}")
        entry = progress[name]
        assert (entry["records"], entry["bytes"], entry["lastExportTime"]) == (
            manifest["records"],
            manifest["bytes"],
            manifest["exportTime"],
        )
    # The termination message could not have carried this: it is the compact form, with results left out.
    [pod] = core.list_namespaced_pod(namespace, label_selector=f"{render.LABEL_EXPORT}=daily").items
    message = json.loads(pod.status.container_statuses[0].state.terminated.message)
    assert message["omitted"] > 0


def test_a_missing_secret_fails_the_run_at_once_and_says_which(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """The operator cannot read Secrets, so it cannot tell that one is missing; the pod can. It starts anyway (its
    Secret volumes are optional: it is not held in ContainerCreating until the Job's deadline), says which Secret
    is not there, and fails once the Job's retries (with backoff) are spent; once the Secret exists, the next run
    exports."""
    ids = _upload_lake(store, tmp_path, f"lake/{namespace}", files=1)
    _manifests(api, namespace, store, schedule={"frequency": "daily", "time": "09:30", "startDate": "2026-11-01"})
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.delete_namespaced_secret(SECRET_NAME, namespace)  # the Destination's
    _wait_flow(api, namespace, lambda f: _condition(f, "Ready").get("status") == "True", "Ready", operator)
    _annotate(api, namespace, "dsexport.io/run-now", "without-secret")
    flow = _wait_flow(
        api, namespace, lambda f: (f.get("status") or {}).get("lastExport") is not None, "the run recorded", operator
    )
    last = flow["status"]["lastExport"]
    assert last["result"] == "Failed" and f"Secret '{SECRET_NAME}' has no keys" in last["message"], last
    failed = _condition(flow, "LastExportSucceeded")
    assert failed["status"] == "False" and SECRET_NAME in failed["message"]
    [job] = [j for j in batch.list_namespaced_job(namespace).items if j.metadata.name == last["job"]]
    assert any(c.type == "Failed" and c.status == "True" for c in job.status.conditions or [])  # not stuck pending
    events = core.list_namespaced_event(namespace).items
    assert any(e.reason == "ExportFailed" and SECRET_NAME in e.message for e in events)
    assert not committed(store.transport(), "events", f"exports/{namespace}")

    core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET_NAME}, "stringData": store.secret})
    _annotate(api, namespace, "dsexport.io/run-now", "with-secret")
    _wait_flow(
        api,
        namespace,
        lambda f: (f.get("status") or {}).get("lastExport", {}).get("result") == "Succeeded",
        "the run after the Secret was created to succeed",
        operator,
    )
    assert sorted(read_committed_ids(store.transport(), "events", f"exports/{namespace}")) == sorted(ids)


def _squeeze(cluster: Cluster, pod: Any) -> bool:
    """Lower the memory limit of ``pod``'s container, in its cgroup on the node, to a few MiB above what its
    processes hold: the exporter's next allocations exceed it and the kernel kills it, as it kills an exporter that
    outgrows its budget. The test made this cgroup (below its own): nothing else is touched. False if the container
    is not there (not started yet, or gone)."""
    assert cluster.node is not None
    statuses = pod.status.container_statuses or []
    if not statuses or not statuses[0].container_id or statuses[0].state.running is None:
        return False
    container = statuses[0].container_id.removeprefix("containerd://")
    found = list((CGROUPS / "memory" / cluster.node.cgroup_root.strip("/")).rglob(f"{container}/memory.limit_in_bytes"))
    if not found:
        return False
    [limit] = found
    stat = dict(line.split() for line in (limit.parent / "memory.stat").read_text().splitlines())
    for margin in (8, 16, 32, 64):
        try:  # the kernel reclaims page cache down to the new limit, or refuses it (EBUSY)
            limit.write_text(str(int(stat["total_rss"]) + (margin << 20)))
            return True
        except OSError:
            continue
    return False


@pytest.mark.timeout(600)
def test_an_exporter_killed_out_of_memory_is_reported_with_its_budget(
    cluster: Cluster, api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """The kernel kills each exporter pod of a run past its memory limit (the test lowers the limit under the pod,
    since the exporter itself keeps within its budget): the Job fails, and the status and an Event say OOMKilled
    and name the budget the pods ran under, with what to change."""
    _upload_lake(store, tmp_path, f"lake/{namespace}", files=20, rows=30_000)  # an export of a few seconds
    _manifests(api, namespace, store, schedule={"frequency": "daily", "startDate": "2026-11-01"})
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, "daily", {"spec": {"memoryBudget": "320Mi"}}
    )
    _wait_flow(api, namespace, lambda f: _condition(f, "Ready").get("status") == "True", "Ready", operator)
    _annotate(api, namespace, "dsexport.io/run-now", "squeezed")
    core = client.CoreV1Api(api)
    squeezed: set[str] = set()

    def recorded() -> bool:
        for pod in core.list_namespaced_pod(namespace).items:
            if pod.metadata.name not in squeezed and _squeeze(cluster, pod):
                squeezed.add(pod.metadata.name)
        return (_flow(api, namespace).get("status") or {}).get("lastExport") is not None

    # The Job retries its pods (backoffLimit) after 10, 20 and 40 s: each is squeezed in turn.
    wait_until(recorded, timeout=400, what="the out-of-memory run to be recorded", interval=0.1)
    flow = _flow(api, namespace)
    last = flow["status"]["lastExport"]
    assert last["result"] == "Failed", _pod_logs(api, namespace)
    pods = core.list_namespaced_pod(namespace).items
    assert squeezed and {p.metadata.name for p in pods} <= squeezed
    assert all(p.status.container_statuses[0].state.terminated.reason == "OOMKilled" for p in pods)
    condition = _condition(flow, "LastExportSucceeded")
    assert (condition["status"], condition["reason"]) == ("False", "OOMKilled")
    expected = "OOMKilled: it used more than its memory budget 320Mi; raise spec.memoryBudget"
    assert expected in last["message"] and expected in condition["message"]
    wait_until(
        lambda: any(expected in (e.message or "") for e in core.list_namespaced_event(namespace).items),
        timeout=30,
        what="an Event saying OOMKilled with the budget",
    )
