"""``dsexport operator`` as a user starts it next to ``make cluster``: on this machine, with the cluster's
kubeconfig, the exporter image already loaded on the node (never pulled)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import ProcessServer, free_port


def operator_argv(*, kubeconfig: Path, image: str, metrics_port: int, more: tuple[str, ...] = ()) -> list[str]:
    """The command line; ``more``: further options (a namespace, the webhook's address, ...)."""
    return [
        sys.executable,
        "-m",
        "dsexport.cli",
        "operator",
        "--kubeconfig",
        str(kubeconfig),
        "--image",
        image,
        "--image-pull-policy",
        "Never",
        "--metrics-address",
        f"127.0.0.1:{metrics_port}",
        *more,
    ]


def ready(port: int) -> bool:
    """Whether the operator's /readyz answers 200: it leads and its indexes are filled."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status) == 200
    except OSError:  # refused, or an HTTPError (503 while standing by or starting)
        return False


def local_operator(*, kubeconfig: Path, image: str, metrics_port: int, workdir: Path) -> ProcessServer:
    """The operator next to the cluster with its deletion webhook on a free port; ready when /readyz says so."""
    return ProcessServer(
        name="dsexport-operator",
        argv=operator_argv(
            kubeconfig=kubeconfig,
            image=image,
            metrics_port=metrics_port,
            more=("--webhook-address", f"127.0.0.1:{free_port()}"),
        ),
        log=workdir / "operator.log",
        ready=lambda: ready(metrics_port),
        cwd=workdir,
    )
