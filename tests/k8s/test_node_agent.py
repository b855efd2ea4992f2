"""The test node agent against the real control plane.

The operator's end-to-end tests trust the agent to behave like a kubelet towards the API server and the real Job,
CronJob, garbage-collector and namespace controllers; these tests hold it to that, one behaviour each.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.cluster.node_agent import NodeAgent
from tests.servers import wait_until

PY = sys.executable


def _create_namespace(api: client.ApiClient) -> str:
    """A fresh namespace, returned once its default service account exists (pods are refused before that)."""
    core = client.CoreV1Api(api)
    name = f"na-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_until(lambda: _exists(core.read_namespaced_service_account, "default", name), timeout=30, what="default SA")
    return name


@pytest.fixture
def namespace(api: client.ApiClient, node_agent: NodeAgent) -> Iterator[str]:
    name = _create_namespace(api)
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def _exists(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "any-image:1", "command": [PY, "-c", script], **spec.pop("container", {})}
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def _wait_phase(api: client.ApiClient, namespace: str, name: str, *phases: str, timeout: float = 30) -> Any:
    core = client.CoreV1Api(api)
    wait_until(
        lambda: core.read_namespaced_pod(name, namespace).status.phase in phases,
        timeout=timeout,
        what=f"pod {name} to be {' or '.join(phases)}",
    )
    return core.read_namespaced_pod(name, namespace)


def _pids(agent: NodeAgent, pod: Any) -> list[int]:
    """The pids a test script printed as ``pid=N`` lines into its container log."""
    log = agent.workdir / "pods" / pod.metadata.uid / "main.log"
    return [int(pid) for pid in re.findall(r"pid=(\d+)", log.read_text())] if log.exists() else []


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


SLEEPER = (
    "import os, signal, subprocess, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # only SIGKILL after the grace period ends it
    "child = subprocess.Popen(['sleep', '600'])\n"
    "print(f'pid={os.getpid()}', f'pid={child.pid}', flush=True)\n"
    "time.sleep(600)\n"
)


def test_node_is_registered_ready_and_heartbeats(node_agent: NodeAgent, api: client.ApiClient) -> None:
    node = client.CoreV1Api(api).read_node(node_agent.node_name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert node.status.node_info.kubelet_version == client.VersionApi(api).get_code().git_version
    assert {"cpu", "memory", "pods"} <= set(node.status.allocatable) <= set(node.status.capacity)
    leases = client.CoordinationV1Api(api)
    lease = leases.read_namespaced_lease(node_agent.node_name, "kube-node-lease")
    assert lease.spec.holder_identity == node_agent.node_name
    assert lease.metadata.owner_references[0].uid == node.metadata.uid
    wait_until(
        lambda: (
            leases.read_namespaced_lease(node_agent.node_name, "kube-node-lease").spec.renew_time
            > lease.spec.renew_time
        ),
        timeout=15,
        what="the lease to be renewed",
    )
    heartbeat = ready.last_heartbeat_time
    wait_until(
        lambda: (
            next(
                c.last_heartbeat_time
                for c in client.CoreV1Api(api).read_node(node_agent.node_name).status.conditions
                if c.type == "Ready"
            )
            > heartbeat
        ),
        timeout=15,
        what="a fresh Ready heartbeat",
    )


def test_pod_gets_env_and_volumes_and_reports_its_termination_message(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"user": "alice", "token": "s3cr3t"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "flow.yaml": "exports: 1\n"}}
    )
    script = (
        "import os, stat\n"
        "e = os.environ\n"
        "token = open('/var/run/creds/auth/token').read()\n"
        "mode = oct(stat.S_IMODE(os.stat('/var/run/creds/auth/token').st_mode))\n"
        "flow = open('/etc/dsexport/flow.yaml').read().strip()\n"
        "parts = [e['USER'], e['MODE'], e['GREETING'], e['CFG_mode'], e['NODE'], e['IP'], e['DSEXPORT_NODE_AGENT']]\n"
        "parts += [token, mode, flow, str('OPTIONAL' in e), os.path.basename(os.getcwd()), '$(MODE)', '$$(MODE)']\n"
        "print('writing the message', flush=True)\n"
        "open('/dev/termination-log', 'w').write('|'.join(parts))\n"
    )
    pod = _pod(
        "reader",
        script,
        container={
            "env": [
                {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "GREETING", "value": "$(USER)@$(POD)"},
                {
                    "name": "OPTIONAL",
                    "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}},
                },
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "volumeMounts": [
                {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
                {"name": "settings", "mountPath": "/etc/dsexport/flow.yaml", "subPath": "flow.yaml"},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
            "workingDir": "/scratch",
        },
        volumes=[
            {"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "token", "path": "auth/token"}]}},
            {"name": "settings", "configMap": {"name": "settings", "defaultMode": 0o440}},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    pod["spec"]["volumes"][0]["secret"]["defaultMode"] = 0o400
    core.create_namespaced_pod(namespace, pod)

    done = _wait_phase(api, namespace, "reader", "Succeeded", "Failed")

    terminated = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", terminated
    expected = "alice|fast|alice@reader|fast|dsexport-test-node|127.0.0.1|1"
    assert terminated.message == expected + "|s3cr3t|0o400|exports: 1|False|scratch|fast|$(MODE)"
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at <= terminated.finished_at
    assert done.spec.node_name == node_agent.node_name
    assert (done.status.pod_ip, done.status.host_ip) == ("127.0.0.1", "127.0.0.1")
    conditions = {c.type: c.status for c in done.status.conditions}
    assert conditions == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "False", "Ready": "False"}
    log = node_agent.workdir / "pods" / done.metadata.uid / "main.log"
    assert log.read_text() == "writing the message\n"


def test_running_pod_reports_running_and_ready(node_agent: NodeAgent, api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).create_namespaced_pod(namespace, _pod("runner", SLEEPER))
    pod = _wait_phase(api, namespace, "runner", "Running")
    status = pod.status.container_statuses[0]
    assert status.ready and status.started and status.state.running.started_at
    assert status.container_id.startswith("nodeagent://")
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    assert pod.status.pod_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("import sys; print('step 1', flush=True); print('boom', file=sys.stderr); sys.exit(3)", "step 1\nboom"),
        ("import sys; open('/dev/termination-log', 'w').write('bad input'); sys.exit(3)", "bad input"),
    ],
    ids=["log-tail", "message-file"],
)
def test_failing_command_fails_the_pod_with_its_exit_code_and_message(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str, script: str, message: str
) -> None:
    pod = _pod("failing", script, container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    done = _wait_phase(api, namespace, "failing", "Succeeded", "Failed")
    terminated = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Failed"
    assert (terminated.exit_code, terminated.reason, terminated.message) == (3, "Error", message)


def test_missing_executable_fails_the_pod(node_agent: NodeAgent, api: client.ApiClient, namespace: str) -> None:
    pod = _pod("no-exe", "", container={"command": ["/nonexistent/program"]})
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    done = _wait_phase(api, namespace, "no-exe", "Succeeded", "Failed")
    terminated = done.status.container_statuses[0].state.terminated
    assert (done.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 128, "StartError")


def test_init_containers_run_first_and_share_an_empty_dir(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    def step(name: str, script: str) -> dict[str, Any]:
        mounts = [{"name": "work", "mountPath": "/shared"}]
        return {"name": name, "image": "python:3.11", "args": ["-c", script], "volumeMounts": mounts}

    pod = {
        "metadata": {"name": "steps"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                step("first", "open('/shared/log', 'a').write('first,')"),
                step("second", "open('/shared/log', 'a').write('second,')"),
            ],
            "containers": [
                step("main", "open('/dev/termination-log', 'w').write(open('/shared/log').read() + 'main')")
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    done = _wait_phase(api, namespace, "steps", "Succeeded", "Failed")
    assert done.status.phase == "Succeeded", done.status
    assert done.status.container_statuses[0].state.terminated.message == "first,second,main"
    assert [s.state.terminated.reason for s in done.status.init_container_statuses] == ["Completed", "Completed"]


def test_failing_init_container_fails_the_pod_before_its_containers_run(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    pod = _pod("init-fails", "print('never')", initContainers=[{"name": "setup", "image": "x", "command": ["false"]}])
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    done = _wait_phase(api, namespace, "init-fails", "Succeeded", "Failed")
    assert done.status.phase == "Failed"
    assert done.status.init_container_statuses[0].state.terminated.exit_code == 1
    assert done.status.container_statuses[0].state.waiting.reason == "PodInitializing"


@pytest.mark.parametrize(
    ("container", "volumes", "reason", "message"),
    [
        (
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x"}}}]},
            [],
            "CreateContainerConfigError",
            'secret "nope" not found',
        ),
        (
            {"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
            [{"name": "cfg", "configMap": {"name": "nope"}}],
            "FailedMount",
            'configmap "nope" not found',
        ),
        (
            {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "FailedMount",
            "not supported by the node agent",
        ),
    ],
    ids=["missing-secret", "missing-configmap-volume", "unsupported-volume"],
)
def test_pod_that_cannot_start_fails_with_a_clear_reason(
    node_agent: NodeAgent,
    api: client.ApiClient,
    namespace: str,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    reason: str,
    message: str,
) -> None:
    client.CoreV1Api(api).create_namespaced_pod(namespace, _pod("broken", "", container=container, volumes=volumes))
    done = _wait_phase(api, namespace, "broken", "Succeeded", "Failed")
    assert (done.status.phase, done.status.reason) == ("Failed", reason)
    assert message in done.status.message
    assert done.status.container_statuses[0].state.waiting.reason in (reason, "ContainerCreating")


def test_image_entrypoint_runs_when_only_args_are_given(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    container = {"name": "main", "image": "docker.io/library/python:3.11-slim", "args": ["-c", "print('hello')"]}
    pod = {"metadata": {"name": "entry"}, "spec": {"restartPolicy": "Never", "containers": [container]}}
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    assert _wait_phase(api, namespace, "entry", "Succeeded", "Failed").status.phase == "Succeeded"


def test_active_deadline_kills_and_fails_the_pod(node_agent: NodeAgent, api: client.ApiClient, namespace: str) -> None:
    pod = _pod("slow", SLEEPER, activeDeadlineSeconds=1, terminationGracePeriodSeconds=1)
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    done = _wait_phase(api, namespace, "slow", "Succeeded", "Failed")
    assert (done.status.phase, done.status.reason) == ("Failed", "DeadlineExceeded")
    assert done.status.container_statuses[0].state.terminated.exit_code == 137  # SIGTERM ignored, so SIGKILL
    assert all(_gone(pid) for pid in _pids(node_agent, done))


def test_deleting_a_running_pod_kills_its_processes_and_removes_it(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, _pod("sleeper", SLEEPER, terminationGracePeriodSeconds=30))
    running = _wait_phase(api, namespace, "sleeper", "Running")
    wait_until(lambda: len(_pids(node_agent, running)) == 2, timeout=10, what="the sleeper to print its pids")
    pids = _pids(node_agent, running)
    assert not any(_gone(pid) for pid in pids)
    started = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)  # the default grace period, which the agent caps
    wait_until(lambda: not _exists(core.read_namespaced_pod, "sleeper", namespace), timeout=20, what="pod gone")
    assert time.monotonic() - started < 10
    assert all(_gone(pid) for pid in pids)


def test_deleting_a_namespace_cleans_up_its_running_pods(node_agent: NodeAgent, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    namespace = _create_namespace(api)
    core.create_namespaced_pod(namespace, _pod("sleeper", SLEEPER))
    running = _wait_phase(api, namespace, "sleeper", "Running")
    wait_until(lambda: len(_pids(node_agent, running)) == 2, timeout=10, what="the sleeper to print its pids")
    core.delete_namespace(namespace)
    wait_until(lambda: not _exists(core.read_namespace, namespace), timeout=90, what="the namespace to be deleted")
    assert all(_gone(pid) for pid in _pids(node_agent, running))


def _job_spec(script: str) -> dict[str, Any]:
    return {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "x", "command": [PY, "-c", script]}],
            }
        },
    }


def _succeeded(api: client.ApiClient, namespace: str, name: str) -> bool:
    return (client.BatchV1Api(api).read_namespaced_job(name, namespace).status.succeeded or 0) == 1


def test_job_completes_through_the_job_controller(node_agent: NodeAgent, api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, {"metadata": {"name": "export"}, "spec": _job_spec("print('exported')")})
    wait_until(lambda: _succeeded(api, namespace, "export"), timeout=60, what="the job to succeed")
    job = batch.read_namespaced_job("export", namespace)
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="job-name=export").items
    assert [p.status.phase for p in pods] == ["Succeeded"]


def test_failing_job_fails_through_the_job_controller(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, {"metadata": {"name": "broken"}, "spec": _job_spec("raise SystemExit(4)")})

    def failed() -> bool:
        conditions = batch.read_namespaced_job("broken", namespace).status.conditions or []
        return any(c.type == "Failed" and c.status == "True" for c in conditions)

    wait_until(failed, timeout=60, what="the job to fail")
    assert batch.read_namespaced_job("broken", namespace).status.failed == 1


def _cronjob(name: str, schedule: str, *, suspend: bool) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": name}}, "spec": _job_spec("print('exported')")}
    return {"metadata": {"name": name}, "spec": {"schedule": schedule, "suspend": suspend, "jobTemplate": template}}


def test_cronjob_run_by_hand_completes_and_is_collected_with_it(
    node_agent: NodeAgent, api: client.ApiClient, namespace: str
) -> None:
    """What ``kubectl create job --from=cronjob/NAME`` does: a Job from the jobTemplate, owned by the CronJob."""
    batch = client.BatchV1Api(api)
    cronjob = batch.create_namespaced_cron_job(namespace, _cronjob("nightly", "0 3 * * *", suspend=True))
    template = cronjob.spec.job_template
    owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": cronjob.metadata.uid}
    job = {
        "metadata": {
            "name": "nightly-manual",
            "labels": template.metadata.labels,
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "ownerReferences": [{**owner, "controller": True}],
        },
        "spec": api.sanitize_for_serialization(template.spec),
    }
    batch.create_namespaced_job(namespace, job)
    wait_until(lambda: _succeeded(api, namespace, "nightly-manual"), timeout=60, what="the manual job to succeed")

    batch.delete_namespaced_cron_job("nightly", namespace, propagation_policy="Background")
    core = client.CoreV1Api(api)
    wait_until(
        lambda: not core.list_namespaced_pod(namespace, label_selector="job-name=nightly-manual").items,
        timeout=60,
        what="the garbage collector to remove the job and its pod",
    )


@pytest.mark.slow
def test_cronjob_controller_fires_on_schedule(node_agent: NodeAgent, api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    cronjob = batch.create_namespaced_cron_job(namespace, _cronjob("minutely", "* * * * *", suspend=False))

    def a_scheduled_job_succeeded() -> bool:
        jobs = batch.list_namespaced_job(namespace).items
        return any(
            (job.status.succeeded or 0) == 1
            and any(ref.uid == cronjob.metadata.uid for ref in job.metadata.owner_references or [])
            for job in jobs
        )

    wait_until(a_scheduled_job_succeeded, timeout=75, what="the cronjob controller to run a job", interval=0.5)


def test_stop_is_prompt_and_kills_the_pod_processes(api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    """A second agent on a node of its own (the pod names it, so the session agent leaves it alone). An agent started
    after it fails the pod it left Running, since its processes are gone."""
    core = client.CoreV1Api(api)
    node = "dsexport-test-node-2"
    with NodeAgent(api, tmp_path, node_name=node) as agent:
        core.create_namespaced_pod(namespace, _pod("sleeper", SLEEPER, nodeName=node))
        running = _wait_phase(api, namespace, "sleeper", "Running")
        wait_until(lambda: len(_pids(agent, running)) == 2, timeout=10, what="the sleeper to print its pids")
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert all(_gone(pid) for pid in _pids(agent, running))

    with NodeAgent(api, tmp_path, node_name=node):
        failed = _wait_phase(api, namespace, "sleeper", "Failed")
        assert failed.status.reason == "NodeAgentRestarted"
        core.delete_namespaced_pod("sleeper", namespace)
        wait_until(lambda: not _exists(core.read_namespaced_pod, "sleeper", namespace), timeout=20, what="pod gone")
    core.delete_node(node)
