"""A real node for the test control plane: containerd, runc, CNI, kube-scheduler and the kubelet, as local processes.

What it changes on the machine, all of it recorded in ``node.json`` and undone by ``teardown``:
- a network, claimed by creating its bridge ``dsxN`` (creation is atomic, so two clusters never share one): the
  bridge holds the node address 10.244.N.1/24 and pods get addresses in that subnet; the ``kubernetes`` Service IP
  10.96.N.1 is added to ``lo`` (the API server listens there, port 443, so pods reach it with their in-cluster
  configuration and without kube-proxy or any iptables rule), and the rest of the Service range 10.96.N.0/24 gets
  an ``unreachable`` route so that any other ClusterIP fails at once instead of following the default route out.
  Pods get no default route: they reach the node address, the Service IP and each other, nothing else, so no
  packet leaves the machine. No sysctl and no iptables rule is touched.
- cgroups: the kubelet's ``cgroupRoot`` is a folder below this process's own memory cgroup, made in every
  hierarchy, so pods are charged to the test run and stay inside its limits.
- mounts, all below ``root``: the kubelet's root folder as an rshared bind mount (volume mounts the kubelet makes in
  its private mount namespace reach containerd), and what containerd and the kubelet mount below it.

The kubelet runs in its own mount namespace where small files stand in for the /proc/sys entries it would set
(vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops), with /usr/sbin off its PATH so it
finds no iptables. containerd runs with a private configuration (no file in /etc is read or written).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.control_plane import runs_recorded
from tests.servers import ProcessServer, ServerError, free_port, log_tail, wait_until

CGROUPS = Path("/sys/fs/cgroup")
CNI_BIN = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
CATATONIT = Path("/usr/bin/catatonit")
PAUSE_IMAGE = "localhost/dsexport-pause:1"
IMAGE = f"{os.environ.get('IMAGE', 'dsexport')}:dev"
"""The product image the node gets: ``make image`` (tests/image/build.sh), which takes the same IMAGE variable."""
BUILD_IMAGE = Path(__file__).resolve().parents[1] / "image" / "build.sh"
NODE_STATE = "node.json"
OWNER = "owner.json"


class NodeError(RuntimeError):
    """The node could not be set up; the message says what to do."""


# ------------------------------------------------------------------------------------------------ the network


@dataclass(frozen=True)
class Network:
    index: int

    @property
    def bridge(self) -> str:
        return f"dsx{self.index}"

    @property
    def node_ip(self) -> str:
        return f"10.244.{self.index}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.96.{self.index}.0/24"

    @property
    def service_ip(self) -> str:
        return f"10.96.{self.index}.1"

    @property
    def node_name(self) -> str:
        return f"dsexport-node-{self.index}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise NodeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def claim_network(cluster_root: Path) -> Network:
    """The first free network: its bridge is created here, which fails if another cluster holds that index.

    A network whose cluster is dead (a test session killed with SIGKILL takes the node's processes along but leaves
    its pods' mounts, cgroups and bridge) is cleaned up and taken.
    """
    if os.geteuid() != 0:
        raise NodeError("a real node needs root (bridge, mounts, cgroups); run the Kubernetes tests as root")
    for index in range(10, 250):
        net = Network(index)
        if _ip("link", "add", net.bridge, "type", "bridge", check=False).returncode != 0:
            if not _abandoned(net):
                continue  # another live cluster's
            reclaim(net)
            if _ip("link", "add", net.bridge, "type", "bridge", check=False).returncode != 0:
                continue
        if _ip("-4", "addr", "show", "dev", "lo", "to", net.service_ip).stdout.strip():
            _ip("link", "del", net.bridge)
            continue
        shutil.rmtree(run_folder(net), ignore_errors=True)
        run_folder(net).mkdir(parents=True)
        owner = {"pid": os.getpid(), "started": _started(os.getpid()), "root": str(cluster_root)}
        (run_folder(net) / OWNER).write_text(json.dumps(owner))
        _ip("addr", "add", f"{net.node_ip}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        _ip("addr", "add", f"{net.service_ip}/32", "dev", "lo")
        _ip("route", "add", "unreachable", net.service_cidr)
        return net
    raise NodeError("no free network index in 10..249: remove leftover dsx* bridges with make cluster-down")


def run_folder(net: Network) -> Path:
    """What a network's cluster keeps outside its folder: who claimed it, the node's state, containerd's sockets
    (Unix socket paths are limited to 108 bytes; a cluster folder may be deep). Emptied at boot, with the bridges."""
    return Path("/run/dsexport") / str(net.index)


def _started(pid: int) -> str | None:
    """A process's start time in clock ticks since boot: with the pid, it names one process (pids are reused)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _abandoned(net: Network) -> bool:
    """Whether the cluster that claimed ``net`` is gone: neither its claimant nor any process it recorded runs.
    A network without a record (being claimed right now, or not ours) is never taken."""
    try:
        owner = json.loads((run_folder(net) / OWNER).read_text())
    except (OSError, ValueError):
        return False
    if owner.get("started") is not None and _started(int(owner["pid"])) == owner["started"]:
        return False
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((run_folder(net) / NODE_STATE).read_text())
        if any(runs_recorded(p) for p in state["processes"]):
            return False
    return True


def owned_by(net: Network, cluster_root: Path) -> bool:
    """Whether ``net`` is still claimed by the cluster in ``cluster_root`` (after a crash, another may hold it)."""
    try:
        return bool(json.loads((run_folder(net) / OWNER).read_text())["root"] == str(cluster_root))
    except (OSError, ValueError, KeyError):
        return False


def reclaim(net: Network) -> None:
    """Remove what a dead cluster's node left on the machine (its processes are gone: see ``_abandoned``)."""
    try:
        state = json.loads((run_folder(net) / NODE_STATE).read_text())
    except (OSError, ValueError):
        release_network(net)
        return
    teardown(state)


def release_network(net: Network) -> None:
    _ip("route", "del", "unreachable", net.service_cidr, check=False)
    _ip("addr", "del", f"{net.service_ip}/32", "dev", "lo", check=False)
    shutil.rmtree(run_folder(net), ignore_errors=True)
    with contextlib.suppress(OSError):
        run_folder(net).parent.rmdir()  # only once no other cluster uses it
    _ip("link", "del", net.bridge, check=False)  # last: the bridge is the claim


# ------------------------------------------------------------------------------------------------ cgroups


def _own_cgroup() -> str:
    """This process's memory cgroup (the hierarchy in which the machine limits the test run)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return "/"


def _hierarchies() -> list[Path]:
    return sorted(p for p in CGROUPS.iterdir() if (p / "cgroup.procs").exists())


def make_cgroup_root(name: str) -> tuple[str, list[str]]:
    """``<own memory cgroup>/name`` in every hierarchy (the kubelet refuses a cgroupRoot missing in any); returns
    it and the folders created, parents first."""
    root = f"{_own_cgroup().rstrip('/')}/{name}"
    created: list[str] = []
    for hierarchy in _hierarchies():
        folder = hierarchy
        for part in root.strip("/").split("/"):
            folder /= part
            if folder.is_dir():
                continue
            folder.mkdir()
            created.append(str(folder))
            if (folder / "cpuset.cpus").exists():  # a new cpuset starts empty: no task could run in it
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (folder / f).write_text((folder.parent / f).read_text())
    return root, created


def _cgroup_folders(root: str) -> Iterator[Path]:
    """Every folder below ``root`` in every hierarchy, deepest first."""
    for hierarchy in _hierarchies():
        top = hierarchy / root.strip("/")
        if top.is_dir():
            yield from sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))


def _cgroup_pids(root: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in _hierarchies():
        top = hierarchy / root.strip("/")
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in procs.read_text().split()}
    return pids


# ------------------------------------------------------------------------------------------------ images


def _tar_entry(tf: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = 0, mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    else:
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def write_pause_image(path: Path) -> None:
    """The pod sandbox image as a docker-archive: Debian's static catatonit as /pause (no registry has one here)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _tar_entry(tf, "pause", CATATONIT.read_bytes(), 0o755)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Entrypoint": ["/pause", "-P"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as out:
        for name, data in ((config_name, config), ("layer.tar", layer_bytes), ("manifest.json", manifest)):
            _tar_entry(out, name, data, 0o644)


def _cache() -> Path:
    return Path(os.environ.get("DSEXPORT_CACHE", Path.home() / ".cache" / "dsexport"))


def product_image_archive() -> tuple[Path, str]:
    """The image of ``make image`` as a docker-archive in the cache, keyed by its image ID; and its name.

    ``make image`` runs first (0.3 s when nothing changed), so the node never runs an image older than the code.
    """
    built = subprocess.run(["bash", str(BUILD_IMAGE)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise NodeError(f"make image failed:\n{built.stderr[-3000:]}")
    conf = _cache() / "containers"
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "CONTAINERS_CONF": str(conf / "containers.conf"),
    }
    found = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if found.returncode != 0:
        raise NodeError(f"image {IMAGE} not found: build it with make image ({found.stderr.strip()})")
    image_id = found.stdout.strip()
    archive = _cache() / "images" / f"{image_id[:16]}.tar"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        for old in archive.parent.glob("*.tar"):
            old.unlink()  # one archive at a time: images are hundreds of MiB
        tmp = archive.with_suffix(f".{os.getpid()}.tmp")  # two test runs may save at once: each its own file
        subprocess.run(
            ["podman", "save", "--quiet", "--format", "docker-archive", "-o", str(tmp), IMAGE], check=True, env=env
        )
        tmp.rename(archive)
    return archive, IMAGE if "/" in IMAGE else f"localhost/{IMAGE}"


# ------------------------------------------------------------------------------------------------ the node


@dataclass
class Node:
    """containerd, kube-scheduler and the kubelet of one node, joined to a control plane started with the
    network's Service CIDR and node name (see tests/cluster/cluster.py)."""

    root: Path
    bin: Path
    net: Network
    control_plane_root: Path
    die_with_parent: bool = True
    servers: list[ProcessServer] = field(default_factory=list)
    cgroup_root: str = ""
    created_cgroups: list[str] = field(default_factory=list)
    image: str = ""
    """The product image as pods name it (``dsexport:dev``; pods use ``imagePullPolicy: Never``)."""

    @property
    def socket(self) -> Path:
        """containerd's socket, in a short folder of its own: Unix socket paths are limited to 108 bytes and the
        cluster folder may be deep (a pytest temporary folder, a clone's .cluster)."""
        return run_folder(self.net) / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    def start(self) -> None:
        """containerd (then the images), the scheduler, the kubelet; returns once the Node is Ready."""
        for d in ("logs", "cni/net.d", "cni/ipam", "kubelet", "kubelet-pods-logs", "manifests", "plugins", "sysctl"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        containerd = shutil.which("containerd")
        if containerd is None:
            raise NodeError("containerd is not installed: run make test-servers (tests/servers/install.sh)")
        self.cgroup_root, self.created_cgroups = make_cgroup_root(self.net.node_name)
        self._write_state()
        self._write_configs()
        # the kubelet's root as an rshared mount: what the kubelet mounts there from its own mount namespace
        # (Secret and ConfigMap volumes) propagates back to this one, where containerd runs
        subprocess.run(["mount", "--bind", str(self.kubelet_root), str(self.kubelet_root)], check=True)
        subprocess.run(["mount", "--make-rshared", str(self.kubelet_root)], check=True)
        cp = self.control_plane_root
        self.servers = [
            self._server(
                "containerd",
                [containerd, "--config", str(self.root / "containerd.toml")],
                self._containerd_ready,
            ),
        ]
        try:
            self.servers[0].start()
            self._import_images()
            scheduler_port = free_port()
            self.servers.append(
                self._server(
                    "kube-scheduler",
                    [
                        str(self.bin / "kube-scheduler"),
                        f"--kubeconfig={cp / 'scheduler.kubeconfig'}",
                        f"--authentication-kubeconfig={cp / 'scheduler.kubeconfig'}",
                        f"--authorization-kubeconfig={cp / 'scheduler.kubeconfig'}",
                        "--leader-elect=false",
                        "--bind-address=127.0.0.1",
                        f"--secure-port={scheduler_port}",
                        f"--cert-dir={self.root / 'scheduler-certs'}",
                        "--profiling=false",
                    ],
                    lambda: _healthz(scheduler_port),
                )
            )
            self.servers[-1].start()
            self.servers.append(self._server("kubelet", self._kubelet_argv(), self._node_ready))
            self.servers[-1].start()
        except (ServerError, TimeoutError, subprocess.CalledProcessError):
            self.stop()
            raise
        self._write_state()

    # ------------------------------------------------------------------------------------------ configuration

    def _write_configs(self) -> None:
        r, net = self.root, self.net
        (r / "containerd.toml").write_text(
            f'''version = 2
root = "{r}/containerd/root"
state = "{r}/containerd/state"
oom_score = 0
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # root here cannot lower oom_score_adj (no CAP_SYS_RESOURCE): without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{RUNC}"
        Root = "{r}/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{r}/cni/net.d"
    max_conf_num = 1
'''
        )
        (r / "cni/net.d/10-dsexport.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": f"dsexport-{net.index}",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": net.bridge,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(r / "cni/ipam"),
                                "ranges": [[{"subnet": net.pod_cidr, "gateway": net.node_ip}]],
                                # no default route: the API server's Service IP only (the subnet is on-link)
                                "routes": [{"dst": f"{net.service_ip}/32"}],
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        cp_pki = self.control_plane_root / "pki"
        (r / "kubelet.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": net.node_ip,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": net.node_ip,
                    "healthzPort": 10248,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(cp_pki / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "imageServiceEndpoint": f"unix://{self.socket}",
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": self.cgroup_root,
                    "failCgroupV1": False,  # 1.36 refuses cgroup v1 otherwise; this machine has a hybrid layout
                    "failSwapOn": False,
                    "staticPodPath": str(r / "manifests"),
                    "podLogsDir": str(r / "kubelet-pods-logs"),
                    "volumePluginDir": str(r / "plugins"),
                    "clusterDomain": "cluster.local",
                    "resolvConf": "",  # pods get no name server: nothing to ask outside the machine
                    "rotateCertificates": False,
                    "serverTLSBootstrap": False,
                    "registerNode": True,
                    "nodeStatusReportFrequency": "1m",
                    "nodeStatusUpdateFrequency": "10s",
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "5s",
                    "maxPods": 60,
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
                    "imageGCHighThresholdPercent": 99,
                    "imageGCLowThresholdPercent": 98,
                    "shutdownGracePeriod": "0s",
                    # images are imported under several names; the default policy then refuses some of them
                    "imagePullCredentialsVerificationPolicy": "NeverVerify",
                }
            )
        )
        for name, value in (("overcommit_memory", "1"), ("panic_on_oom", "0"), ("panic", "10"), ("panic_on_oops", "1")):
            (r / "sysctl" / name).write_text(value)

    def _kubelet_argv(self) -> list[str]:
        """The kubelet in a private mount namespace with stand-in /proc/sys files and no /usr/sbin on its PATH."""
        s = self.root / "sysctl"
        script = "\n".join(
            [
                "set -e",
                "mount --make-rprivate /proc",  # what is mounted here next stays in this namespace
                f"mount --bind {s}/overcommit_memory /proc/sys/vm/overcommit_memory",
                f"mount --bind {s}/panic_on_oom /proc/sys/vm/panic_on_oom",
                f"mount --bind {s}/panic /proc/sys/kernel/panic",
                f"mount --bind {s}/panic_on_oops /proc/sys/kernel/panic_on_oops",
                "export PATH=/usr/bin:/bin",
                'exec "$@"',
            ]
        )
        return [
            "unshare",
            "--mount",
            "--propagation",
            "unchanged",
            "--",
            "bash",
            "-c",
            script,
            "kubelet",
            str(self.bin / "kubelet"),
            f"--config={self.root / 'kubelet.yaml'}",
            f"--kubeconfig={self.control_plane_root / 'kubelet.kubeconfig'}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.root / 'kubelet-pki'}",
            f"--hostname-override={self.net.node_name}",
            f"--node-ip={self.net.node_ip}",
            "--v=1",
        ]

    def _server(self, name: str, argv: list[str], ready: Any) -> ProcessServer:
        return ProcessServer(
            name=name,
            argv=argv,
            log=self.root / "logs" / f"{name}.log",
            ready=ready,
            start_timeout=120.0,
            die_with_parent=self.die_with_parent,
        )

    # ------------------------------------------------------------------------------------------ readiness

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _containerd_ready(self) -> bool:
        return self.socket.exists() and self.ctr("version").returncode == 0

    def _import_images(self) -> None:
        pause = self.root / "pause.tar"
        write_pause_image(pause)
        archive, name = product_image_archive()
        for tar in (pause, archive):
            out = self.ctr("images", "import", str(tar))
            if out.returncode != 0:
                raise NodeError(f"importing {tar} into containerd failed: {out.stderr.strip()}")
        # the short names users write (dsexport:dev, dsexport:<version>) resolve to docker.io/library/...
        self.image = name.removeprefix("localhost/")
        repository = self.image.rsplit(":", 1)[0]
        for tag in (self.image, f"{repository}:{version('dsexport')}"):
            self.ctr("images", "tag", "--force", name, f"docker.io/library/{tag}")

    def _node_ready(self) -> bool:
        out = subprocess.run(
            [
                str(self.bin / "kubectl"),
                f"--kubeconfig={self.control_plane_root / 'admin.kubeconfig'}",
                "get",
                "node",
                self.net.node_name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() == "True"

    # ------------------------------------------------------------------------------------------ teardown

    def state(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "network": self.net.index,
            "cgroup_root": self.cgroup_root,
            "created_cgroups": self.created_cgroups,
            "socket": str(self.socket),
            "processes": [
                {"name": s.name, "pid": s.proc.pid, "exe": self._exe(s.name)}
                for s in self.servers
                if s.proc is not None
            ],
        }

    def _exe(self, name: str) -> str:
        """The binary a recorded process runs (the kubelet's pid execs unshare, then bash, then the kubelet)."""
        return (shutil.which(name) or "") if name == "containerd" else str(self.bin / name)

    @property
    def state_file(self) -> Path:
        """The node's record, beside its network's claim: what teardown and reclaim undo."""
        return run_folder(self.net) / NODE_STATE

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.rename(self.state_file)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers = []
        teardown(self.state())

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{log_tail(s.log, 20)}" for s in self.servers)


def _healthz(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a self-signed certificate, loopback only
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _shim_pids(socket: str) -> list[int]:
    """containerd's shims for our socket (they outlive containerd); found by their command line."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"containerd-shim-runc-v2") and socket.encode() in argv:
                    pids.append(int(proc.name))
    return pids


def _kill(pids: set[int] | list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in this mount namespace, deepest first."""
    points = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    return sorted((m for m in points if m == str(root) or m.startswith(f"{root}/")), key=lambda m: -len(m))


def teardown(state: dict[str, Any], timeout: float = 20.0) -> list[str]:
    """Undo what a node left (its processes must be stopped already): pods' processes, containerd's shims, mounts,
    cgroups, the network. Returns what could not be removed."""
    root, cgroup_root = Path(state["root"]), state["cgroup_root"]
    problems: list[str] = []
    if cgroup_root:
        _kill(_cgroup_pids(cgroup_root))
    _kill(_shim_pids(state["socket"]))
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not _shim_pids(state["socket"]), timeout=timeout, what="containerd shims to exit")
    for mount in mounts_under(root):  # deepest first; a busy one is detached lazily (gone once its last user is)
        if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    if left := mounts_under(root):
        problems.append(f"still mounted: {', '.join(left)}")
    if cgroup_root:

        def removed() -> bool:
            for folder in _cgroup_folders(cgroup_root):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            for folder in reversed(state["created_cgroups"]):
                with contextlib.suppress(FileNotFoundError, OSError):
                    Path(folder).rmdir()
            return not any(Path(f).exists() for f in state["created_cgroups"])

        try:
            wait_until(removed, timeout=timeout, what="the node's cgroups to empty")
        except TimeoutError as e:
            problems.append(str(e))
    release_network(Network(state["network"]))
    cni_results = Path("/var/lib/cni/results")  # libcni's cache (containerd 1.6 has no setting for it)
    if cni_results.is_dir():
        for f in cni_results.glob(f"dsexport-{state['network']}-*"):
            f.unlink(missing_ok=True)
    return problems
