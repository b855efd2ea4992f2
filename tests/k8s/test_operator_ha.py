"""Two ``dsexport operator`` replicas against the real control plane: the Lease lets exactly one act.

The replicas run on the host as test_operator.py runs one, each with its own ``DSEXPORT_POD_NAME``, the Lease in
the test's namespace and watching only that namespace. The one holding the Lease is ready and creates each object
once; the other is alive (``/healthz``) but not ready (``/readyz`` 503) and creates nothing. SIGKILL of the holder
hands over within 30 s of the kill (the Lease expires 15 s after its last renewal); a clean stop releases it; a
holder whose Lease was taken exits at once, non-zero.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from tests.cluster.cluster import Cluster
from tests.k8s import test_operator as single
from tests.k8s.conftest import create_namespace
from tests.servers import ProcessServer, Target, free_port, wait_until
from tests.servers.operator import operator_argv

from dsexport.api import GROUP, VERSION
from dsexport.operator import leader, main, render

store = single.store  # SeaweedFS on the node address, as the single-operator tests use it

HANDOVER_LIMIT = 30.0
"""Seconds from SIGKILL of the leader to the other replica reconciling a new flow (the requirement)."""


@pytest.fixture
def namespace(api: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    """The test's one namespace: its flows and the Lease."""
    name = create_namespace(api, "ha")
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)


class Replica:
    """One ``dsexport operator`` process, as a pod named ``pod`` would run it; started and stopped by its pid."""

    def __init__(self, pod: str, *, cluster: Cluster, kubeconfig: Path, namespace: str, workdir: Path) -> None:
        assert cluster.node is not None
        self.pod = pod
        self.port = free_port()
        self.server = ProcessServer(
            name=f"dsexport-operator {pod}",
            argv=operator_argv(
                kubeconfig=kubeconfig,
                image=cluster.node.image,
                metrics_port=self.port,
                more=("--namespace", namespace, "--lease-namespace", namespace),
            ),
            log=workdir / f"{pod}.log",
            ready=self.alive,  # a standby never gets ready: started means serving /healthz
            env={leader.POD_NAME_ENV: pod},
            cwd=workdir,
        )

    def alive(self) -> bool:
        return single._get(self.port, "/healthz")[0] == 200

    def ready(self) -> bool:
        return single._get(self.port, "/readyz")[0] == 200

    def start(self) -> None:
        self.server.start()

    def kill(self) -> None:
        """SIGKILL: no chance to release the Lease, as when a node dies."""
        proc = self.server.proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.server.proc = None

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after a grace period); the exit status, None when it was not running."""
        proc = self.server.proc
        self.server.stop()
        return None if proc is None else proc.returncode

    def log(self) -> str:
        return self.server.log.read_text(errors="replace")


def _lease(api: client.ApiClient, namespace: str) -> Any:
    return client.CoordinationV1Api(api).read_namespaced_lease(leader.LEASE_NAME, namespace)


def _holder(api: client.ApiClient, namespace: str) -> str | None:
    holder: str | None = _lease(api, namespace).spec.holder_identity
    return holder


def _the_leader(replicas: list[Replica], api: client.ApiClient, namespace: str) -> Replica:
    """Wait until exactly one replica is ready; it must be the one the Lease names."""
    found: list[Replica] = []

    def one_ready() -> bool:
        found[:] = [r for r in replicas if r.ready()]
        return len(found) == 1

    try:
        wait_until(one_ready, timeout=90, what="exactly one ready replica", interval=0.2)
    except TimeoutError:
        logs = "\n---\n".join(f"{r.pod}:\n{r.log()[-3000:]}" for r in replicas)
        raise AssertionError(f"ready: {[r.pod for r in found]}\n{logs}") from None
    [chosen] = found
    holder = _holder(api, namespace)
    assert holder is not None
    assert holder.rpartition("_")[0] == chosen.pod, (holder, chosen.pod)
    return chosen


def _create_flow(api: client.ApiClient, namespace: str, name: str) -> None:
    """Another DatasetExport of the Dataset and Destination that ``single._manifests`` created."""
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        single.FLOWS,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DatasetExport",
            "metadata": {"name": name},
            "spec": {
                "destinationRef": {"name": "store"},
                "datasets": [{"name": "events"}],
                "schedule": {"frequency": "daily", "startDate": "2026-11-01"},
            },
        },
    )


def _ready_flow(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        flow = single._flow(api, namespace, name)
    except client.ApiException:
        return False
    return single._condition(flow, "Ready").get("status") == "True"


@pytest.mark.timeout(900)  # the first test of a session also starts the cluster
def test_one_replica_acts_and_the_other_takes_over_within_30_s(
    api: client.ApiClient,
    kubeconfig: Path,
    crds: list[str],
    cluster: Cluster,
    namespace: str,
    store: Target,
    tmp_path: Path,
) -> None:
    replicas = [
        Replica(pod, cluster=cluster, kubeconfig=kubeconfig, namespace=namespace, workdir=tmp_path)
        for pod in ("dsexport-operator-a", "dsexport-operator-b")
    ]
    batch = client.BatchV1Api(api)
    selector = f"{render.LABEL_EXPORT}=daily"
    try:
        for replica in replicas:
            replica.start()
        first = _the_leader(replicas, api, namespace)
        [standby] = [r for r in replicas if r is not first]
        assert standby.alive() and not standby.ready()

        # Only the leader reconciles: one CronJob, and for a run-now one Job, not one per replica.
        single._manifests(
            api, namespace, store, schedule={"frequency": "daily", "time": "09:30", "startDate": "2026-11-01"}
        )
        single._wait_flow(
            api,
            namespace,
            lambda f: single._condition(f, "Ready").get("status") == "True",
            "the flow to be Ready",
            first.server,
        )
        assert len(batch.list_namespaced_cron_job(namespace, label_selector=selector).items) == 1
        single._annotate(api, namespace, "dsexport.io/run-now", "once")
        single._wait_flow(
            api,
            namespace,
            lambda f: "dsexport.io/run-now" not in (f["metadata"].get("annotations") or {}),
            "the run-now annotation to be consumed",
            first.server,
        )
        jobs = batch.list_namespaced_job(namespace, label_selector=selector).items
        assert len(jobs) == 1, [j.metadata.name for j in jobs]
        assert len(batch.list_namespaced_cron_job(namespace, label_selector=selector).items) == 1
        assert not standby.ready()
        assert "standing by" in standby.log()
        transitions = _lease(api, namespace).spec.lease_transitions or 0

        # SIGKILL the leader: the standby takes the Lease once it expires and reconciles a new flow.
        first.kill()
        killed = time.monotonic()
        _create_flow(api, namespace, "second")
        try:
            wait_until(
                lambda: standby.ready() and _ready_flow(api, namespace, "second"),
                timeout=HANDOVER_LIMIT + 30,
                what="the standby to take over and reconcile the new flow",
                interval=0.2,
            )
        except TimeoutError:
            raise AssertionError(f"no handover; standby log:\n{standby.log()[-4000:]}") from None
        handover = time.monotonic() - killed
        print(f"handover after SIGKILL of the leader: {handover:.1f} s")
        assert handover < HANDOVER_LIMIT, f"the handover took {handover:.1f} s"
        lease = _lease(api, namespace)
        assert lease.spec.holder_identity.rpartition("_")[0] == standby.pod
        assert (lease.spec.lease_transitions or 0) == transitions + 1
        assert len(batch.list_namespaced_job(namespace, label_selector=selector).items) == 1
        assert len(batch.list_namespaced_cron_job(namespace, label_selector=f"{render.LABEL_EXPORT}=second").items) == 1

        # The killed replica comes back as a standby (a new identity); a clean stop of the leader releases the
        # Lease instead of letting it expire, and the standby takes it.
        first.start()
        assert first.alive() and not first.ready()
        assert standby.stop() == 0
        assert "released Lease" in standby.log()
        holder = _holder(api, namespace)
        assert holder is None or holder.rpartition("_")[0] == first.pod, holder
        assert _the_leader(replicas, api, namespace) is first

        # Someone else writes the Lease (as a replica whose clock ran ahead would): the holder stops at its next
        # renewal, at once and non-zero, and leaves the Lease alone.
        client.CoordinationV1Api(api).patch_namespaced_lease(
            leader.LEASE_NAME,
            namespace,
            {
                "spec": {
                    "holderIdentity": "intruder",
                    "renewTime": leader.format_time(dt.datetime.now(dt.UTC)),
                    "leaseDurationSeconds": 60,
                }
            },
            _content_type="application/merge-patch+json",
        )
        proc = first.server.proc
        assert proc is not None
        wait_until(lambda: proc.poll() is not None, timeout=20, what="the displaced leader to exit", interval=0.2)
        assert proc.returncode == main.EXIT_LEADERSHIP_LOST, first.log()[-3000:]
        assert "lost the leadership" in first.log()
        assert _holder(api, namespace) == "intruder"
    finally:
        for replica in replicas:
            replica.stop()
