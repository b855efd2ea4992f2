"""A whole test cluster: a private network, the control plane serving on its ``kubernetes`` Service IP, one node.

``start`` claims a network (tests/cluster/node.py), starts the control plane on ``SERVICE_IP:443`` with the
node's credentials, then the node; ``stop`` undoes all of it. ``stop_recorded`` does the same for a cluster that
``make cluster`` left running, from what it recorded in its folder.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.control_plane import ControlPlane, stop_processes
from tests.cluster.control_plane import stop_recorded as stop_control_plane
from tests.cluster.node import (
    NODE_STATE,
    Network,
    Node,
    claim_network,
    owned_by,
    release_network,
    run_folder,
    teardown,
)
from tests.servers import ServerError


@dataclass
class Cluster:
    root: Path
    bin: Path
    die_with_parent: bool = True
    net: Network | None = None
    control_plane: ControlPlane | None = None
    node: Node | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def node_ip(self) -> str:
        """Where pods reach the machine: serve test servers here for pods to use them."""
        assert self.net is not None
        return self.net.node_ip

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.net = claim_network(self.root)
        (self.root / "network.json").write_text(json.dumps({"index": self.net.index}))
        try:
            self.control_plane = ControlPlane(
                root=self.root,
                bin=self.bin,
                die_with_parent=self.die_with_parent,
                address=self.net.service_ip,
                port=443,  # the kubernetes Service's port, which the kubelet gives pods as KUBERNETES_SERVICE_PORT
                service_cidr=self.net.service_cidr,
                node_name=self.net.node_name,
            )
            self.control_plane.start()
            self.node = Node(
                root=self.root / "node",
                bin=self.bin,
                net=self.net,
                control_plane_root=self.root,
                die_with_parent=self.die_with_parent,
            )
            self.node.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        if self.net is not None:
            release_network(self.net)  # again, in case the node never got to start

    def logs(self) -> str:
        return "\n".join(x.logs() for x in (self.control_plane, self.node) if x is not None)


def stop_recorded(root: Path, timeout: float = 10.0) -> list[str]:
    """Stop a detached cluster from its records: the node's processes and what it set up, then the control plane.

    The node's part only while its network is still this cluster's: after a crash another cluster may have
    reclaimed it (tests/cluster/node.py), and then there is nothing of ours left to undo there.
    """
    stopped: list[str] = []
    try:
        net: Network | None = Network(json.loads((root / "network.json").read_text())["index"])
    except FileNotFoundError:
        net = None
    if net is not None and owned_by(net, root):
        with contextlib.suppress(FileNotFoundError):
            state = json.loads((run_folder(net) / NODE_STATE).read_text())
            stopped += stop_processes(state["processes"], timeout=timeout)
            if problems := teardown(state):
                raise ServerError("; ".join(problems))
        release_network(net)
    stopped += stop_control_plane(root, timeout=timeout)
    with contextlib.suppress(FileNotFoundError):
        (root / "network.json").unlink()
    return stopped
