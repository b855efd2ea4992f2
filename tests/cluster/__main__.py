"""``python -m tests.cluster up|down [--dir DIR]``: the cluster of ``make cluster`` / ``make cluster-down``.

``up`` replaces whatever an earlier (maybe crashed) ``up`` left in DIR, starts the control plane and the node
detached, waits until the node is Ready and prints the kubeconfig path; ``down`` stops exactly the processes
``up`` recorded and removes the network, mounts and cgroups it set up. ``down --dir`` also cleans up after a test
session that was killed (its cluster folder is under pytest's temporary folder).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tests.cluster.cluster import Cluster, stop_recorded
from tests.cluster.control_plane import binaries
from tests.cluster.node import NodeError, mounts_under
from tests.servers import ServerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state folder (default .cluster)")
    args = parser.parse_args(argv)
    root: Path = args.dir.resolve()
    try:
        stopped = stop_recorded(root)
    except ServerError as e:
        print(f"could not remove everything the cluster in {root} set up: {e}", file=sys.stderr)
        return 1
    if mounts := mounts_under(root):  # never delete through a mount (a pod's volume, a container's root)
        print(f"still mounted below {root}: {', '.join(mounts)}", file=sys.stderr)
        return 1
    if args.command == "down":
        print(f"stopped {', '.join(stopped)}" if stopped else "no cluster was running", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        return 0
    shutil.rmtree(root, ignore_errors=True)
    started = time.monotonic()
    bin_dir = binaries()
    built = time.monotonic()
    cluster = Cluster(root=root, bin=bin_dir, die_with_parent=False)
    try:
        cluster.start()
    except (ServerError, TimeoutError, NodeError) as e:
        print(f"cluster did not start: {e}", file=sys.stderr)
        return 1
    ready = time.monotonic()
    print(
        f"control plane and node {cluster.net and cluster.net.node_name} ready in {ready - built:.1f} s "
        f"(binaries {built - started:.1f} s); pods reach this machine at {cluster.node_ip}; "
        f"kubectl of the same release: {bin_dir / 'kubectl'}; stop it with make cluster-down",
        file=sys.stderr,
    )
    print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
