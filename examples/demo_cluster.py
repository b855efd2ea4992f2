"""`make demo-cluster`: the operator loop on the local cluster of `make cluster`, in about a minute.

Starts `dsexport operator` on this machine against the cluster's kubeconfig, applies examples/cluster/ (the two
node folders behind its PersistentVolumes point into demo-output/cluster/), asks for an export now with the
kubectl plugin's annotation, waits for the status to record it, then shows `kubectl get dsx -o wide`, the status,
the files in the export folder and the operator's metrics. The cluster stays up (`make cluster-down` stops it).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, utils

from examples import sample

EXAMPLES = Path(__file__).resolve().parent / "cluster"
OUT = Path("demo-output") / "cluster"
NAMESPACE = "dsexport-demo"
FLOW = "marketing-daily"
START = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def documents(*, lake: Path, exports: Path) -> list[dict[str, Any]]:
    """examples/cluster/ with the PersistentVolumes' node folders pointed at ``lake`` and ``exports``."""
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    folders = {"dsexport-demo-lake": lake, "dsexport-demo-exports": exports}
    for doc in docs:
        if doc["kind"] == "PersistentVolume":
            doc["spec"]["hostPath"]["path"] = str(folders[doc["metadata"]["name"]].resolve())
    return docs


def prepare(*, lake: Path, exports: Path, rows: int = 20_000) -> int:
    """Sample events in ``lake``/experience_events; an ``exports`` folder the pods' user (65532) may write."""
    shutil.rmtree(lake, ignore_errors=True)
    shutil.rmtree(exports, ignore_errors=True)
    sample.write_files(lake / "experience_events", files=2, rows_per_file=rows // 2, seed=7, start=START)
    for folder in (lake, lake / "experience_events"):
        folder.chmod(0o755)
    exports.mkdir(parents=True)
    exports.chmod(0o777)  # a hostPath volume gets no fsGroup: the demo folder is world-writable instead
    return rows


def apply(api: client.ApiClient, docs: list[dict[str, Any]]) -> None:
    """Create every document (PersistentVolumes and the namespace first, as listed)."""
    custom = client.CustomObjectsApi(api)
    for doc in docs:
        if doc["apiVersion"].startswith("dsexport.io/"):
            plural = {"Dataset": "datasets", "Destination": "destinations", "DatasetExport": "datasetexports"}
            group, version = doc["apiVersion"].split("/")
            custom.create_namespaced_custom_object(
                group, version, doc["metadata"]["namespace"], plural[doc["kind"]], doc
            )
        else:
            utils.create_from_dict(api, doc)


def wait_recorded(api: client.ApiClient, *, timeout: float = 180) -> dict[str, Any]:
    """The flow, once a finished export Job is in its status."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while True:
        flow: dict[str, Any] = custom.get_namespaced_custom_object(
            "dsexport.io", "v1alpha1", NAMESPACE, "datasetexports", FLOW
        )
        if (flow.get("status") or {}).get("lastExport"):
            return flow
        if time.monotonic() > deadline:
            raise TimeoutError(f"no export recorded within {timeout:.0f} s: {flow.get('status')}")
        time.sleep(0.5)


@contextmanager
def operator(kubeconfig: Path, *, log: Path, port: int, webhook_port: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "dsexport.cli", "operator", "--kubeconfig", str(kubeconfig)]
    argv += ["--image", "dsexport:dev", "--image-pull-policy", "Never", "--metrics-address", f"127.0.0.1:{port}"]
    argv += ["--webhook-address", f"127.0.0.1:{webhook_port}"]  # deleting a Dataset in use is refused
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def kubectl(kubectl_bin: str, kubeconfig: Path, *args: str) -> None:
    print("$ kubectl " + " ".join(args), flush=True)
    subprocess.run([kubectl_bin, "--kubeconfig", str(kubeconfig), *args], check=False)


def main() -> None:
    kubeconfig = Path(".cluster/admin.kubeconfig").resolve()
    if not kubeconfig.is_file():
        sys.exit("no cluster: run make cluster first (make demo-cluster does)")
    kubectl_bin = os.environ.get("KUBECTL", "kubectl")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    lake, exports = OUT / "lake", OUT / "exports"
    OUT.mkdir(parents=True, exist_ok=True)
    kubectl(kubectl_bin, kubeconfig, "apply", "-f", "crds/")
    # The operator first: it removes its finalizers when an earlier demo's namespace is deleted below.
    with operator(kubeconfig, log=OUT / "operator.log", port=18080, webhook_port=18443):
        step("Sample data on the node: 20,000 experience events in demo-output/cluster/lake")
        _clean(api)
        prepare(lake=lake, exports=exports)
        step("examples/cluster/ (node folders as PersistentVolumes, claims, Dataset, Destination, DatasetExport)")
        apply(api, documents(lake=lake, exports=exports))
        step("dsexport operator is running (log: demo-output/cluster/operator.log); export now")
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "dsexport.io",
            "v1alpha1",
            NAMESPACE,
            "datasetexports",
            FLOW,
            {"metadata": {"annotations": {"dsexport.io/run-now": dt.datetime.now(dt.UTC).isoformat()}}},
        )
        print("$ kubectl dsexport run-now marketing-daily -n dsexport-demo   (sets dsexport.io/run-now)")
        wait_recorded(api)
        step("kubectl get")
        kubectl(kubectl_bin, kubeconfig, "get", "dsx,dset,dest,cronjobs,jobs", "-n", NAMESPACE, "-o", "wide")
        step("The status")
        kubectl(kubectl_bin, kubeconfig, "get", "dsx", FLOW, "-n", NAMESPACE, "-o", "jsonpath={.status}")
        print()
        step("The files, in the claimed folder on the node")
        for path in sorted(exports.rglob("*")):
            if path.is_file():
                print(f"  {path.relative_to(exports)}  ({path.stat().st_size:,} bytes)")
        step("Metrics (http://127.0.0.1:18080/metrics)")
        with urllib.request.urlopen("http://127.0.0.1:18080/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("dsexport_") and "bucket" not in line:
                    print("  " + line)
    print("\nThe cluster is still up: make cluster-down stops it.")


def _clean(api: client.ApiClient) -> None:
    """What an earlier demo left: its namespace and the two PersistentVolumes."""
    core = client.CoreV1Api(api)
    if _exists(api):
        core.delete_namespace(NAMESPACE)
        _wait_gone(api)
    for pv in ("dsexport-demo-lake", "dsexport-demo-exports"):
        try:
            core.delete_persistent_volume(pv)
        except client.ApiException as e:
            if e.status != 404:
                raise


def _exists(api: client.ApiClient) -> bool:
    return any(n.metadata.name == NAMESPACE for n in client.CoreV1Api(api).list_namespace().items)


def _wait_gone(api: client.ApiClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _exists(api):
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {NAMESPACE} is still terminating")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
