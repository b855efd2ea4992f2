"""``dsexport operator`` as a user starts it next to ``make cluster``: on this machine, with the cluster's
kubeconfig, the exporter image already loaded on the node (never pulled)."""

from __future__ import annotations

import sys
from pathlib import Path


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
