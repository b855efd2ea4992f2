"""The real node: kubelet, containerd and runc running the product image, as a cluster does, not a workaround.

Each test holds the harness to one promise of docs/test-cluster.md: pods run hardened in the image with Secrets
and ConfigMaps; they reach the API server with their in-cluster configuration; the API server reaches a webhook
behind a Service; pods reach the tests' servers on the node address and nothing off the machine; they are charged
to the test run's cgroup with their limits enforced; the workload controllers (Job, CronJob, Deployment, TTL,
namespace deletion) act on them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.cluster.cluster import Cluster
from tests.cluster.node import _own_cgroup
from tests.cluster.pki import serving_certificate
from tests.k8s.conftest import create_namespace
from tests.servers import wait_until

HARDENED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _container(cluster: Cluster, script: str, **extra: Any) -> dict[str, Any]:
    assert cluster.node is not None
    return {
        "name": "main",
        "image": cluster.node.image,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", script],
        "securityContext": HARDENED,
        **extra,
    }


def _pod(
    cluster: Cluster, name: str, script: str, *, spec: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [_container(cluster, script, **extra)],
            **(spec or {}),
        },
    }


def _finished(api: client.ApiClient, namespace: str, name: str, timeout: float = 60) -> Any:
    core = client.CoreV1Api(api)
    wait_until(
        lambda: core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
        timeout=timeout,
        what=f"pod {name} to finish",
    )
    return core.read_namespaced_pod(name, namespace)


def _run(api: client.ApiClient, namespace: str, pod: dict[str, Any], timeout: float = 60) -> tuple[Any, str]:
    """Create the pod, wait for it to finish; its final state and log."""
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, pod)
    done = _finished(api, namespace, pod["metadata"]["name"], timeout)
    log = core.read_namespaced_pod_log(pod["metadata"]["name"], namespace, _preload_content=False)
    return done, log.data.decode()


def _terminated(pod: Any) -> Any:
    return pod.status.container_statuses[0].state.terminated


def test_node_is_ready_on_containerd_with_the_image(cluster: Cluster, api: client.ApiClient) -> None:
    assert cluster.net is not None and cluster.node is not None
    node = client.CoreV1Api(api).read_node(cluster.net.node_name)
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert node.status.node_info.kubelet_version == "v1.36.3"
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == cluster.node_ip
    assert not node.spec.taints, "the node-lifecycle controller removes the not-ready taint"
    names = {n for image in node.status.images for n in image.names or []}
    assert {"docker.io/library/dsexport:dev", f"docker.io/library/dsexport:{version('dsexport')}"} <= names

    leases = client.CoordinationV1Api(api)
    renewals: set[Any] = set()

    def renewed_twice() -> bool:
        with contextlib.suppress(ApiException):  # the lease appears shortly after the Node
            renewals.add(leases.read_namespaced_lease(node.metadata.name, "kube-node-lease").spec.renew_time)
        return len(renewals) >= 2

    wait_until(renewed_twice, timeout=40, what="the kubelet to renew its lease", interval=0.5)


def test_pod_runs_hardened_in_the_image_with_secret_config_map_and_termination_message(
    cluster: Cluster, api: client.ApiClient, pod_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(pod_namespace, {"metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}})
    core.create_namespaced_config_map(pod_namespace, {"metadata": {"name": "flow"}, "data": {"flow.yaml": "a: 1"}})
    script = """
import json, os
try:
    open('/opt/dsexport/x', 'w')
    root = 'writable'
except OSError as e:
    root = e.strerror
found = {
    'uid': os.getuid(), 'root': root, 'secret': open('/secrets/creds/key').read(),
    'flow': open('/config/flow.yaml').read(), 'env': os.environ['FROM_SECRET'],
    'caps': [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0],
}
open('/dev/termination-log', 'w').write(json.dumps(found))
"""
    pod = _pod(
        cluster,
        "hardened",
        script,
        env=[{"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}}],
        volumeMounts=[
            {"name": "creds", "mountPath": "/secrets/creds", "readOnly": True},
            {"name": "flow", "mountPath": "/config", "readOnly": True},
        ],
        spec={
            "automountServiceAccountToken": False,
            "volumes": [
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "flow", "configMap": {"name": "flow"}},
            ],
            "securityContext": {"fsGroup": 65532},
        },
    )
    done, _ = _run(api, pod_namespace, pod)
    assert done.status.phase == "Succeeded"
    found = json.loads(_terminated(done).message)
    assert found == {
        "uid": 65532,  # the image's numeric USER
        "root": "Read-only file system",
        "secret": "s3cr3t",
        "flow": "a: 1",
        "env": "s3cr3t",
        "caps": "0000000000000000",
    }


def test_failing_container_reports_its_exit_code(cluster: Cluster, api: client.ApiClient, pod_namespace: str) -> None:
    done, log = _run(api, pod_namespace, _pod(cluster, "fails", "import sys; print('bad input'); sys.exit(3)"))
    assert done.status.phase == "Failed"
    assert _terminated(done).exit_code == 3
    assert log.strip() == "bad input"


def test_pod_uses_the_api_with_its_in_cluster_configuration(
    cluster: Cluster, api: client.ApiClient, pod_namespace: str
) -> None:
    """The service-account token, CA and KUBERNETES_SERVICE_HOST/PORT reach the API server; RBAC applies."""
    rbac = client.RbacAuthorizationV1Api(api)
    client.CoreV1Api(api).create_namespaced_service_account(pod_namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        pod_namespace,
        {"metadata": {"name": "pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
    )
    rbac.create_namespaced_role_binding(
        pod_namespace,
        {
            "metadata": {"name": "reader-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": pod_namespace}],
        },
    )
    script = """
import json, os, ssl, urllib.error, urllib.request
sa = '/var/run/secrets/kubernetes.io/serviceaccount/'
ctx = ssl.create_default_context(cafile=sa + 'ca.crt')
base = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
ns = open(sa + 'namespace').read()
def get(path):
    req = urllib.request.Request(base + path, headers={'Authorization': 'Bearer ' + open(sa + 'token').read()})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, None
status, me = get(f'/api/v1/namespaces/{ns}/pods/in-cluster')
denied, _ = get(f'/api/v1/namespaces/{ns}/secrets')
print(json.dumps({'status': status, 'uid': me['metadata']['uid'], 'secrets': denied, 'host': base}))
"""
    done, log = _run(api, pod_namespace, _pod(cluster, "in-cluster", script, spec={"serviceAccountName": "reader"}))
    assert done.status.phase == "Succeeded", log
    found = json.loads(log)
    assert found == {
        "status": 200,
        "uid": done.metadata.uid,
        "secrets": 403,
        "host": f"https://{cluster.net.service_ip}:443",  # type: ignore[union-attr]
    }


WEBHOOK = """
import json, ssl
from http.server import BaseHTTPRequestHandler, HTTPServer
class Deny(BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        name = review['request']['object']['metadata']['name']
        body = json.dumps({'apiVersion': 'admission.k8s.io/v1', 'kind': 'AdmissionReview', 'response': {
            'uid': review['request']['uid'], 'allowed': not name.startswith('deny'),
            'status': {'message': f'the test webhook refuses {name}'}}}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = HTTPServer(('0.0.0.0', 8443), Deny)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain('/tls/tls.crt', '/tls/tls.key')
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def test_api_server_calls_a_webhook_behind_a_service(
    cluster: Cluster, api: client.ApiClient, pod_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    ca, cert, key = serving_certificate([f"webhook.{pod_namespace}.svc"])
    core.create_namespaced_secret(
        pod_namespace,
        {
            "metadata": {"name": "tls"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert.decode(), "tls.key": key.decode()},
        },
    )
    pod = _pod(
        cluster,
        "webhook",
        WEBHOOK,
        volumeMounts=[{"name": "tls", "mountPath": "/tls", "readOnly": True}],
        readinessProbe={"tcpSocket": {"port": 8443}, "periodSeconds": 1},
        spec={"volumes": [{"name": "tls", "secret": {"secretName": "tls"}}]},
    )
    pod["metadata"]["labels"] = {"app": "webhook"}
    core.create_namespaced_pod(pod_namespace, pod)
    core.create_namespaced_service(
        pod_namespace,
        {
            "metadata": {"name": "webhook"},
            "spec": {"selector": {"app": "webhook"}, "ports": [{"port": 443, "targetPort": 8443}]},
        },
    )
    discovery = client.DiscoveryV1Api(api)

    def endpoint_ready() -> bool:
        slices = discovery.list_namespaced_endpoint_slice(
            pod_namespace, label_selector="kubernetes.io/service-name=webhook"
        )
        return any(e.conditions.ready for s in slices.items for e in s.endpoints or [])

    wait_until(endpoint_ready, timeout=60, what="the webhook's endpoint to be ready")
    admission = client.AdmissionregistrationV1Api(api)
    name = f"deny-{pod_namespace}"
    admission.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "deny.dsexport.io",
                    "clientConfig": {
                        "service": {"namespace": pod_namespace, "name": "webhook", "path": "/validate"},
                        "caBundle": base64.b64encode(ca).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pod_namespace}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    try:
        # the configuration takes a moment to reach the API server's admission chain: poll until it refuses
        def refused() -> bool:
            try:
                core.create_namespaced_config_map(pod_namespace, {"metadata": {"name": "deny-me"}})
            except ApiException as e:
                assert e.status == 400 and "the test webhook refuses deny-me" in e.body, e.body
                return True
            core.delete_namespaced_config_map("deny-me", pod_namespace)
            return False

        wait_until(refused, timeout=30, what="the webhook to be called", interval=0.5)
        core.create_namespaced_config_map(pod_namespace, {"metadata": {"name": "allowed"}})
    finally:
        admission.delete_validating_webhook_configuration(name)


@pytest.fixture
def node_server(cluster: Cluster) -> Iterator[tuple[str, int]]:
    """A TCP server on the node address that answers each connection with ``hello``."""

    class Hello(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"hello")

    with socketserver.ThreadingTCPServer((cluster.node_ip, 0), Hello) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield cluster.node_ip, server.server_address[1]
        server.shutdown()


def test_pods_reach_the_node_address_and_nothing_off_the_machine(
    cluster: Cluster, api: client.ApiClient, pod_namespace: str, node_server: tuple[str, int]
) -> None:
    host, port = node_server
    # the machine's own default gateway stands for "anywhere else": the pod must not even have a route there
    gateway = next(
        socket.inet_ntoa(bytes.fromhex(f[2])[::-1])
        for f in (line.split() for line in Path("/proc/net/route").read_text().splitlines()[1:])
        if f[1] == "00000000"
    )
    script = f"""
import errno, json, socket
def attempt(host, port):
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            return s.recv(5).decode()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
routes = [l.split()[1] for l in open('/proc/net/route').read().splitlines()[1:]]
print(json.dumps({{'node': attempt({host!r}, {port}), 'outside': attempt({gateway!r}, 53), 'routes': routes}}))
"""
    done, log = _run(api, pod_namespace, _pod(cluster, "net", script))
    assert done.status.phase == "Succeeded", log
    found = json.loads(log)
    assert found["node"] == "hello"
    assert found["outside"] == "ENETUNREACH"
    assert "00000000" not in found["routes"], "no default route in a pod"


def test_pods_are_charged_to_the_test_run_and_their_limits_apply(
    cluster: Cluster, api: client.ApiClient, pod_namespace: str
) -> None:
    script = "print([l.split(':', 2)[2] for l in open('/proc/self/cgroup') if ':memory:' in l][0])"
    done, log = _run(api, pod_namespace, _pod(cluster, "where", script))
    assert done.status.phase == "Succeeded", log
    assert log.strip().startswith(f"{_own_cgroup().rstrip('/')}/{cluster.net.node_name}/kubepods/")  # type: ignore[union-attr]

    hog = _pod(
        cluster,
        "hog",
        "x = bytearray(200 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')",
        resources={"limits": {"memory": "64Mi", "cpu": "500m"}},
    )
    done, log = _run(api, pod_namespace, hog)
    assert done.status.phase == "Failed"
    assert _terminated(done).reason == "OOMKilled"
    assert "survived" not in log


def test_active_deadline_fails_a_running_pod(cluster: Cluster, api: client.ApiClient, pod_namespace: str) -> None:
    pod = _pod(cluster, "slow", "import time; time.sleep(300)", spec={"activeDeadlineSeconds": 2})
    done, _ = _run(api, pod_namespace, pod)
    assert (done.status.phase, done.status.reason) == ("Failed", "DeadlineExceeded")


def _job(cluster: Cluster, name: str, script: str, **spec: Any) -> dict[str, Any]:
    template = _pod(cluster, name, script)
    template["spec"]["restartPolicy"] = "Never"
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}, **spec}}


def test_jobs_complete_or_fail_and_finished_ones_are_collected(
    cluster: Cluster, api: client.ApiClient, pod_namespace: str
) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(pod_namespace, _job(cluster, "ok", "print('done')"))
    batch.create_namespaced_job(pod_namespace, _job(cluster, "bad", "raise SystemExit(2)"))
    batch.create_namespaced_job(pod_namespace, _job(cluster, "short-lived", "pass", ttlSecondsAfterFinished=0))

    def condition(name: str) -> str | None:
        conditions = batch.read_namespaced_job(name, pod_namespace).status.conditions or []
        return next((c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)

    wait_until(lambda: condition("ok") == "Complete", timeout=60, what="job ok to complete")
    wait_until(lambda: condition("bad") == "Failed", timeout=60, what="job bad to fail")
    names = {j.metadata.name for j in batch.list_namespaced_job(pod_namespace).items}
    wait_until(
        lambda: "short-lived" not in {j.metadata.name for j in batch.list_namespaced_job(pod_namespace).items},
        timeout=60,
        what="the ttl-after-finished controller to delete the finished job",
    )
    assert {"ok", "bad"} <= names


def test_cronjob_fires_on_schedule(cluster: Cluster, api: client.ApiClient, pod_namespace: str) -> None:
    batch = client.BatchV1Api(api)
    job = _job(cluster, "tick", "print('tick')")
    batch.create_namespaced_cron_job(
        pod_namespace,
        {
            "metadata": {"name": "tick"},
            "spec": {"schedule": "* * * * *", "timeZone": "Etc/UTC", "jobTemplate": {"spec": job["spec"]}},
        },
    )

    def succeeded() -> bool:
        return any((j.status.succeeded or 0) > 0 for j in batch.list_namespaced_job(pod_namespace).items)

    wait_until(succeeded, timeout=90, what="the cronjob's first job to succeed", interval=1)


def test_deployment_becomes_available_and_namespace_deletion_stops_its_pods(
    cluster: Cluster, api: client.ApiClient
) -> None:
    namespace = create_namespace(api, "deploy")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    template = _pod(
        cluster,
        "server",
        "import time\nopen('/tmp/ready', 'w').close()\ntime.sleep(3600)",
        readinessProbe={"exec": {"command": ["python", "-c", "open('/tmp/ready')"]}, "periodSeconds": 1},
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        spec={"volumes": [{"name": "tmp", "emptyDir": {}}]},
    )
    template["spec"]["restartPolicy"] = "Always"
    template["metadata"] = {"labels": {"app": "server"}}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "server"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "server"}}, "template": template},
        },
    )
    wait_until(
        lambda: (apps.read_namespaced_deployment("server", namespace).status.available_replicas or 0) == 2,
        timeout=60,
        what="the deployment to have 2 available replicas",
    )
    core.delete_namespace(namespace)

    def gone() -> bool:
        try:
            core.read_namespace(namespace)
        except ApiException as e:
            return bool(e.status == 404)
        return False

    wait_until(gone, timeout=90, what="the namespace and its running pods to be deleted")
