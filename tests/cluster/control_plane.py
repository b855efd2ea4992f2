"""A real Kubernetes control plane as local processes: etcd, kube-apiserver and kube-controller-manager.

Everything a cluster owns lives under one folder (certificates, etcd data, logs, kubeconfig, process ids) and
every port is picked free on 127.0.0.1 at start, so parallel runs never collide and a crashed run leaves nothing
the next one reuses. Started from pytest, the processes die with the test session (PR_SET_PDEATHSIG); started by
``make cluster`` they run on until ``make cluster-down``, which stops exactly the process ids it recorded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
)


def binaries() -> Path:
    """The folder with etcd, kube-apiserver, kube-controller-manager, kubectl and helm (built once, then cached)."""
    if env := os.environ.get("DSEXPORT_K8S_BIN"):
        return Path(env)
    out = subprocess.run(["bash", str(HERE / "build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _https_get(port: int, path: str, pki: Path, *, client: str = "admin") -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _ok(port: int, path: str, pki: Path) -> bool:
    try:
        status, body = _https_get(port, path, pki)
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
    root: Path
    bin: Path
    die_with_parent: bool = True
    servers: list[ProcessServer] = field(default_factory=list)
    api_port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        """Start etcd, then the API server, then the controllers, each waited for; on failure stop what started."""
        pki, logs = self.root / "pki", self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        make_pki(
            pki,
            {
                "admin": ("dsexport-test-admin", "system:masters"),
                "controller-manager": ("system:kube-controller-manager", "system:masters"),
            },
        )
        etcd_port, peer_port, self.api_port, kcm_port = free_port(), free_port(), free_port(), free_port()
        write_kubeconfig(self.kubeconfig, self.server, pki, "admin")
        write_kubeconfig(self.root / "controller-manager.kubeconfig", self.server, pki, "controller-manager")
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
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.api_port}",
                    f"--cert-dir={self.root / 'apiserver-certs'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--authorization-mode=RBAC",
                    "--allow-privileged=true",
                    "--profiling=false",
                ],
                lambda: _ok(self.api_port, "/readyz", pki),
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
                lambda: _ok(kcm_port, "/healthz", pki),
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


def stop_recorded(root: Path, timeout: float = 20.0) -> list[str]:
    """Stop the processes a detached cluster recorded in ``root/state.json``; only those still running that binary."""
    state_file = root / "state.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    stopped: list[str] = []
    for p in reversed(state["processes"]):  # controllers first, etcd last, as a graceful shutdown needs
        pid = int(p["pid"])
        try:
            exe = Path(f"/proc/{pid}/exe").readlink()
        except OSError:
            continue  # gone already
        if exe.resolve() != Path(p["exe"]).resolve():
            continue  # the id was reused by something that is not ours
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        stopped.append(p["name"])
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: exited(pid), timeout=timeout, what=p["name"])  # noqa: B023 - used in this iteration
        if not exited(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    state_file.unlink()
    return stopped


def exited(pid: int) -> bool:
    """Exited (a zombie counts: the detached processes' parent is init, which reaps them in its own time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
