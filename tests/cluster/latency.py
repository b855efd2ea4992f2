"""``python -m tests.cluster.latency [--kubeconfig K] [--pods N]``: pod start latency on the node of ``make cluster``.

Creates pods in the product image (``python -c pass``), one at a time and then N at once, and prints how long from
creation until the API server showed each one started (phase Running or later) and Succeeded, polling every
20 ms (the kubelet's own timestamps have one-second resolution). Measures the harness, for docs/test-cluster.md;
nothing asserts on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests.servers import wait_until


def _pod(name: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "command": ["python", "-c", "pass"]}
            ],
        },
    }


def _measure(core: client.CoreV1Api, namespace: str, image: str, count: int) -> list[tuple[float, float]]:
    """(seconds to container start, seconds to Succeeded seen) for ``count`` pods created together."""
    names = [f"p-{uuid.uuid4().hex[:6]}" for _ in range(count)]
    created = {}
    for name in names:
        created[name] = time.time()
        core.create_namespaced_pod(namespace, _pod(name, image))
    started: dict[str, float] = {}
    done: dict[str, float] = {}

    def all_done() -> bool:
        now = time.time()
        for pod in core.list_namespaced_pod(namespace).items:
            name, phase = pod.metadata.name, pod.status.phase
            if name in created and phase in ("Running", "Succeeded"):
                started.setdefault(name, now)
            if name in created and phase == "Succeeded":
                done.setdefault(name, now)
        return len(done) == count

    wait_until(all_done, timeout=120, what=f"{count} pods to succeed", interval=0.02)
    for name in names:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    return [(started[name] - created[name], done[name] - created[name]) for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.latency")
    parser.add_argument("--kubeconfig", type=Path, default=Path(".cluster/admin.kubeconfig"))
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--image", default="dsexport:dev")
    args = parser.parse_args(argv)
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(args.kubeconfig)))
    namespace = f"latency-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_until(
        lambda: bool(core.list_namespaced_service_account(namespace).items), timeout=30, what="the default account"
    )
    try:
        singles = [_measure(core, namespace, args.image, 1)[0] for _ in range(5)]
        batch = _measure(core, namespace, args.image, args.pods)
    finally:
        core.delete_namespace(namespace)
    for label, rows in (("one pod at a time", singles), (f"{args.pods} pods at once", batch)):
        starts, dones = [r[0] for r in rows], [r[1] for r in rows]
        print(
            f"{label}: started after {statistics.median(starts):.2f} s median "
            f"({', '.join(f'{s:.2f}' for s in starts)}); Succeeded seen after {statistics.median(dones):.2f} s "
            f"median, last {max(dones):.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
