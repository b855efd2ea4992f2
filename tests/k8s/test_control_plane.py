"""The control plane harness itself: parallel clusters do not collide, a killed test run leaves no process behind,
a component that fails to start is reported with its log, and make cluster / cluster-down round-trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cluster.control_plane import ControlPlane, exited
from tests.cluster.node import NODE_STATE, Network, claim_network, mounts_under, release_network, run_folder
from tests.servers import ServerError, wait_until

REPO = Path(__file__).resolve().parents[2]


def _kubectl_ready(cp_bin: Path, kubeconfig: Path) -> str:
    out = subprocess.run(
        [str(cp_bin / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_second_cluster_runs_beside_the_first(control_plane: ControlPlane, tmp_path: Path) -> None:
    second = ControlPlane(root=tmp_path / "second", bin=control_plane.bin)
    second.start()
    try:
        assert second.api_port != control_plane.api_port
        assert _kubectl_ready(second.bin, second.kubeconfig) == "ok"
        assert _kubectl_ready(control_plane.bin, control_plane.kubeconfig) == "ok"
    finally:
        second.stop()
    assert not any(s.proc for s in second.servers)


def test_a_component_that_fails_to_start_is_reported_with_its_log(control_plane: ControlPlane, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("etcd", "kube-controller-manager", "kubectl"):
        (bin_dir / name).symlink_to(control_plane.bin / name)
    broken = bin_dir / "kube-apiserver"
    broken.write_text("#!/bin/sh\necho 'E1130 invalid flag --tls-cert-file: no such file' >&2\nexit 3\n")
    broken.chmod(0o755)
    cp = ControlPlane(root=tmp_path / "cluster", bin=bin_dir)
    with pytest.raises(ServerError) as caught:
        cp.start()
    assert "kube-apiserver exited with 3" in str(caught.value)
    assert "invalid flag --tls-cert-file" in str(caught.value)
    etcd = cp.servers[0]
    assert etcd.proc is None, "etcd, started before the failure, must have been stopped"


def test_a_killed_test_run_leaves_no_component_running(control_plane: ControlPlane, tmp_path: Path) -> None:
    """SIGKILL the process that owns a cluster: the kernel takes its components down with it."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tests.cluster.control_plane import ControlPlane\n"
        "cp = ControlPlane(root=Path(sys.argv[1]), bin=Path(sys.argv[2]))\n"
        "cp.start()\n"
        "print(json.dumps([s.proc.pid for s in cp.servers]), flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "c"), str(control_plane.bin)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    ) as owner:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 3 and not any(exited(p) for p in pids)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
    wait_until(lambda: all(exited(p) for p in pids), timeout=30, what="components to die with their owner")


def test_make_cluster_and_cluster_down(control_plane: ControlPlane, tmp_path: Path) -> None:
    """``up`` leaves a Ready node running detached; ``down`` stops every process it recorded and removes the
    bridge, the Service address, the mounts and the cgroups it made."""
    env = {**os.environ, "DSEXPORT_K8S_BIN": str(control_plane.bin)}
    state = tmp_path / "state"
    up = subprocess.run(
        [sys.executable, "-m", "tests.cluster", "up", "--dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    kubeconfig = Path(up.stdout.strip())
    assert _kubectl_ready(control_plane.bin, kubeconfig) == "ok"
    nodes = subprocess.run(
        [str(control_plane.bin / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "nodes", "-o", "wide"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(nodes) == 2 and " Ready " in nodes[1] and "containerd://" in nodes[1], nodes
    net = Network(json.loads((state / "network.json").read_text())["index"])
    node = json.loads((run_folder(net) / NODE_STATE).read_text())
    pids = [p["pid"] for p in json.loads((state / "state.json").read_text())["processes"]]
    pids += [p["pid"] for p in node["processes"]]
    assert _has_address(net.service_ip) and Path(f"/sys/class/net/{net.bridge}").exists()

    subprocess.run([sys.executable, "-m", "tests.cluster", "down", "--dir", str(state)], check=True, cwd=REPO, env=env)
    wait_until(lambda: all(exited(p) for p in pids), timeout=30, what="make cluster-down to stop everything")
    assert not state.exists()
    assert not mounts_under(state)
    assert not _has_address(net.service_ip)
    assert not Path(f"/sys/class/net/{net.bridge}").exists()
    assert not [c for c in node["created_cgroups"] if Path(c).exists()]


def test_the_next_cluster_cleans_up_after_a_killed_session(control_plane: ControlPlane, tmp_path: Path) -> None:
    """A SIGKILLed session's node processes die with it, but its pods, shims, mounts, cgroups and network stay;
    the next claim of that network finds its owner dead and removes them."""
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from kubernetes import client, config\n"
        "from tests.cluster.cluster import Cluster\n"
        "from tests.servers import wait_until\n"
        "c = Cluster(root=Path(sys.argv[1]), bin=Path(sys.argv[2]))\n"
        "c.start()\n"
        "core = client.CoreV1Api(config.new_client_from_config(config_file=str(c.kubeconfig)))\n"
        "wait_until(lambda: bool(core.list_namespaced_service_account('default').items), timeout=30, what='sa')\n"
        "container = {'name': 'sleep', 'image': c.node.image, 'imagePullPolicy': 'Never', 'command': ['sleep', '1h']}\n"
        "pod = {'metadata': {'name': 'sleeper'}, 'spec': {'containers': [container]}}\n"
        "core.create_namespaced_pod('default', pod)\n"
        "running = lambda: core.read_namespaced_pod('sleeper', 'default').status.phase == 'Running'\n"
        "wait_until(running, timeout=60, what='the pod to run')\n"
        "print(json.dumps({'index': c.net.index, 'cgroups': c.node.created_cgroups}), flush=True)\n"
        "sys.stdin.read()\n"
    )
    root, log = tmp_path / "c", tmp_path / "owner.log"
    with (
        log.open("w") as err,
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), str(control_plane.bin)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
        ) as owner,
    ):
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, log.read_text()[-3000:]
        dead = json.loads(line)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
    net = Network(dead["index"])
    node = json.loads((run_folder(net) / NODE_STATE).read_text())
    wait_until(lambda: all(exited(p["pid"]) for p in node["processes"]), timeout=30, what="the node to die with it")
    left = [int(p) for f in Path(dead["cgroups"][0]).rglob("cgroup.procs") for p in f.read_text().split()]
    assert left, "the pod's process outlives the session: that is what needs cleaning up"
    assert mounts_under(root / "node")

    claimed = [claim_network(tmp_path / "next")]
    while claimed[-1].index < net.index:  # indexes below are other live clusters' (this session's)
        claimed.append(claim_network(tmp_path / "next"))
    try:
        assert claimed[-1] == net
        assert not mounts_under(root / "node")
        assert not [c for c in dead["cgroups"] if Path(c).exists()]
        assert all(exited(p) for p in left)
    finally:
        for n in claimed:
            release_network(n)


def _has_address(ip: str) -> bool:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True)
    return f" {ip}/32 " in out.stdout


def test_a_clone_in_another_folder_reuses_the_built_binaries(tmp_path: Path) -> None:
    """The cache is keyed on the pinned modules' contents, not on where the checkout is (CI clones elsewhere)."""
    here = subprocess.run(
        ["bash", str(REPO / "tests/cluster/build.sh")], capture_output=True, text=True, check=True, timeout=3600
    )
    elsewhere = tmp_path / "clone" / "tests" / "cluster"
    elsewhere.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(REPO / "tests/cluster"), str(elsewhere)], check=True)
    there = subprocess.run(
        ["bash", str(elsewhere / "build.sh")], capture_output=True, text=True, check=True, timeout=60
    )
    assert there.stdout == here.stdout
    assert "building" not in there.stderr


def test_the_node_components_come_from_the_same_pinned_release(control_plane: ControlPlane) -> None:
    def version(tool: str) -> str:
        return subprocess.run(
            [str(control_plane.bin / tool), "--version"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()

    assert version("kubelet") == version("kube-scheduler") == version("kube-apiserver") == "Kubernetes v1.36.3"
