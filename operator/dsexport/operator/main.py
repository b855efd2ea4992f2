"""``dsexport operator``: start kopf with the handlers, cluster-wide or for some namespaces."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import kopf

from dsexport.operator import desired, handlers
from dsexport.operator.metrics import serve


def run(
    *,
    kubeconfig: str | None,
    namespaces: Sequence[str],
    image: str,
    image_pull_policy: str,
    metrics_address: str,
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
    ready = threading.Event()  # set by kopf once its indexes are filled and the watches run
    server = serve(metrics=options.metrics, address=metrics_address, ready=ready.is_set)
    try:
        kopf.run(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=True,
            ready_flag=ready,
        )
    finally:
        server.shutdown()
