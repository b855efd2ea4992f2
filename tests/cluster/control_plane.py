"""A real Kubernetes control plane as local processes: etcd, kube-apiserver and kube-controller-manager.

Everything a cluster owns lives under one folder (certificates, etcd data, logs, kubeconfig, process ids) and
every port is picked free on 127.0.0.1 at start, so parallel runs never collide and a crashed run leaves nothing
the next one reuses. Started from pytest, the processes die with the test session (PR_SET_PDEATHSIG); started by
``make cluster`` they run on until ``make cluster-down``, which stops exactly the process ids it recorded.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import signal
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.pki import make_pki
from tests.servers import ProcessServer, ServerError, free_port, log_tail, wait_until

HERE = Path(__file__).resolve().parent
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    # what a node and its workloads need
    "deployment-controller",
    "replicaset-controller",
    "node-lifecycle-controller",  # removes the not-ready taint every new Node starts with
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "ttl-after-finished-controller",
    "endpointslice-controller",
    "clusterrole-aggregation-controller",  # so that view, edit and admin aggregate the product's roles
    # PersistentVolumeClaims: a filesystem Destination or a local-path source is a claim the pod mounts
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)


def binaries() -> Path:
    """The folder with etcd, kube-apiserver, kube-controller-manager, kubectl and helm (built once, then cached)."""
    if env := os.environ.get("DSEXPORT_K8S_BIN"):
        return Path(env)
    out = subprocess.run(["bash", str(HERE / "build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _https_get(host: str, port: int, path: str, pki: Path, *, client: str = "admin") -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _ok(host: str, port: int, path: str, pki: Path) -> bool:
    try:
        status, body = _https_get(host, port, path, pki)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and body.strip() == "ok"


def _etcd_healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return '"health":"true"' in conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "dsexport-test",
                        "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(pki / f"{user}.crt"),
                            "client-key": str(pki / f"{user}.key"),
                        },
                    }
                ],
                "contexts": [{"name": "dsexport-test", "context": {"cluster": "dsexport-test", "user": user}}],
                "current-context": "dsexport-test",
            }
        )
    )
    path.chmod(0o600)


@dataclass
class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager; with ``node_name``, also the credentials a node needs.

    The API server listens on ``address``:``port`` (a free port on 127.0.0.1 by default). A cluster with a node
    serves on its ``kubernetes`` Service IP, port 443, so that pods reach it with their in-cluster configuration
    and no proxy (see tests/cluster/node.py).
    """

    root: Path
    bin: Path
    die_with_parent: bool = True
    address: str = "127.0.0.1"
    port: int = 0
    service_cidr: str = "10.0.0.0/24"
    node_name: str | None = None
    servers: list[ProcessServer] = field(default_factory=list)
    api_port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    def start(self) -> None:
        """Start etcd, then the API server, then the controllers, each waited for; on failure stop what started."""
        pki, logs = self.pki, self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        clients: dict[str, tuple[str, str | None]] = {
            "admin": ("dsexport-test-admin", "system:masters"),
            "controller-manager": ("system:kube-controller-manager", "system:masters"),
            "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
        }
        if self.node_name:
            clients |= {
                "kubelet": (f"system:node:{self.node_name}", "system:nodes"),
                "scheduler": ("system:kube-scheduler", None),
            }
        service_ip = str(next(ipaddress.ip_network(self.service_cidr).hosts()))
        make_pki(pki, clients, ips=sorted({self.address, service_ip}))
        etcd_port, peer_port, kcm_port = free_port(), free_port(), free_port()
        self.api_port = self.port or free_port()
        for user in clients:
            if user != "apiserver-kubelet-client":
                write_kubeconfig(self.root / f"{user}.kubeconfig", self.server, pki, user)
        etcd = f"http://127.0.0.1:{etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self.servers = [
            self._server(
                "etcd",
                [
                    "--name=default",
                    f"--data-dir={self.root / 'etcd'}",
                    f"--listen-client-urls={etcd}",
                    f"--advertise-client-urls={etcd}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=default={peer}",
                    "--unsafe-no-fsync",  # a test cluster trades durability for speed
                    "--log-level=warn",
                ],
                lambda: _etcd_healthy(etcd_port),
            ),
            self._server(
                "kube-apiserver",
                [
                    f"--etcd-servers={etcd}",
                    f"--bind-address={self.address}",
                    f"--advertise-address={self.address}",
                    f"--secure-port={self.api_port}",
                    f"--cert-dir={self.root / 'apiserver-certs'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--service-cluster-ip-range={self.service_cidr}",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                    "--kubelet-preferred-address-types=InternalIP,Hostname",
                    # webhooks behind a Service are called at the pod's address (there is no kube-proxy), their
                    # certificate still checked against NAME.NAMESPACE.svc
                    "--enable-aggregator-routing=true",
                    "--allow-privileged=true",
                    "--profiling=false",
                ],
                lambda: _ok(self.address, self.api_port, "/readyz", pki),
            ),
            self._server(
                "kube-controller-manager",
                [
                    f"--kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                    f"--authentication-kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                    f"--authorization-kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                    f"--controllers={','.join(CONTROLLERS)}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    "--use-service-account-credentials=false",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    "--profiling=false",
                ],
                lambda: _ok("127.0.0.1", kcm_port, "/healthz", pki),
            ),
        ]
        try:
            for server in self.servers:
                server.start()
        except (ServerError, TimeoutError):
            self.stop()
            raise
        self._write_state()

    def _server(self, name: str, args: list[str], ready: Callable[[], bool]) -> ProcessServer:
        return ProcessServer(
            name=name,
            argv=[str(self.bin / name), *args],
            log=self.root / "logs" / f"{name}.log",
            ready=ready,
            start_timeout=120.0,
            die_with_parent=self.die_with_parent,
        )

    def _write_state(self) -> None:
        """Record what ``stop_recorded`` may kill: process ids with the binary each one runs."""
        state = {
            "kubeconfig": str(self.kubeconfig),
            "processes": [
                {"name": s.name, "pid": s.proc.pid, "exe": str(self.bin / s.name)} for s in self.servers if s.proc
            ],
        }
        (self.root / "state.json").write_text(json.dumps(state, indent=2))

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "state.json").unlink()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{log_tail(s.log, 20)}" for s in self.servers)


def stop_recorded(root: Path, timeout: float = 10.0) -> list[str]:
    """Stop the processes a detached cluster recorded in ``root/state.json``; only those still running that binary."""
    state_file = root / "state.json"
    if not state_file.exists():
        return []
    stopped = stop_processes(json.loads(state_file.read_text())["processes"], timeout=timeout)
    state_file.unlink()
    return stopped


def runs_recorded(process: dict[str, Any]) -> bool:
    """Whether a recorded ``{pid, exe}`` still runs that binary (pids are reused)."""
    try:
        return Path(f"/proc/{process['pid']}/exe").readlink().resolve() == Path(process["exe"]).resolve()
    except OSError:
        return False


def stop_processes(processes: list[dict[str, Any]], *, timeout: float) -> list[str]:
    """SIGTERM each recorded process group, last started first, then SIGKILL after ``timeout``; a pid that now runs
    another binary is not ours any more and is left alone."""
    stopped: list[str] = []
    for p in reversed(processes):  # controllers first, etcd last, as a graceful shutdown needs
        pid = int(p["pid"])
        if not runs_recorded(p):
            continue  # gone already, or the id was reused by something that is not ours
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        stopped.append(p["name"])
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: exited(pid), timeout=timeout, what=p["name"])  # noqa: B023 - used in this iteration
        if not exited(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    return stopped


def exited(pid: int) -> bool:
    """Exited (a zombie counts: the detached processes' parent is init, which reaps them in its own time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
