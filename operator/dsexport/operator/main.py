"""``dsexport operator``: start kopf with the handlers, cluster-wide or for some namespaces."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import kopf

from dsexport.operator import desired, handlers


def run(
    *,
    kubeconfig: str | None,
    namespaces: Sequence[str],
    image: str,
    image_pull_policy: str,
    health_address: str,
) -> None:
    """Run until interrupted. The API connection comes from ``kubeconfig``, else the pod's service account, else
    the user's kubeconfig; kopf logs in the same way."""
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # for kopf's login, which reads no option
    options = handlers.Options(
        kubeconfig=kubeconfig, settings=desired.Settings(image=image, image_pull_policy=image_pull_policy)
    )
    registry = handlers.build(options)
    kopf.run(
        registry=registry,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True,
        liveness_endpoint=f"http://{health_address}/healthz",
    )
