"""``dsexport operator``: start kopf with the handlers, cluster-wide or for some namespaces.

With leader election (the default), a replica first waits to hold the Lease (see ``leader``); only the holder
runs kopf, so two replicas never create the same objects twice. While it waits, ``/healthz`` answers 200 (the
process is fine) and ``/readyz`` 503 (it is not the one acting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Final

import kopf

from dsexport import logs
from dsexport.operator import desired, handlers, leader
from dsexport.operator.metrics import serve

log = logging.getLogger(__name__)

EXIT_LEADERSHIP_LOST: Final = 1
"""The exit status when the Lease was lost: non-zero, so that Kubernetes restarts the container as a standby."""


def run(
    *,
    kubeconfig: str | None,
    namespaces: Sequence[str],
    image: str,
    image_pull_policy: str,
    metrics_address: str,
    leader_election: bool = True,
    lease_namespace: str | None = None,
    webhook: handlers.Webhook | None = None,
) -> None:
    """Run until interrupted. The API connection comes from ``kubeconfig``, else the pod's service account, else
    the user's kubeconfig; kopf logs in the same way.

    With ``leader_election``, kopf starts only once this process holds the Lease ``dsexport-operator`` in
    ``lease_namespace`` (default: the pod's namespace), and stops as soon as it loses it; that raises
    ``leader.LeadershipLostError``. SIGTERM or SIGINT while waiting for the Lease returns at once.
    """
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if logs.LEVEL_ENV not in os.environ:  # who leads, and when that changes, belongs in an operator's log
        for name in (leader.__name__, __name__):
            logging.getLogger(name).setLevel(logging.INFO)
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # for kopf's login, which reads no option
    options = handlers.Options(
        kubeconfig=kubeconfig,
        settings=desired.Settings(image=image, image_pull_policy=image_pull_policy),
        webhook=webhook,
    )
    registry = handlers.build(options)
    identity = leader.default_identity()
    elector = (
        leader.LeaderElector(
            leader.connect(kubeconfig),
            namespace=lease_namespace or leader.default_namespace(),
            identity=identity,
        )
        if leader_election
        else None
    )
    kopf_ready = threading.Event()  # set by kopf once its indexes are filled and the watches run

    def ready() -> bool:
        return kopf_ready.is_set() and (elector is None or elector.is_leader)

    server = serve(metrics=options.metrics, address=metrics_address, ready=ready)
    try:
        with _signals_interrupt():
            if elector is not None and not elector.acquire():
                return
            with asyncio.Runner() as runner:
                loop = runner.get_loop()
                # Set from the renewal thread through the loop. Not a threading.Event: kopf would wait on that in
                # an executor thread, which the loop's shutdown joins, so a stop by SIGTERM would hang on it.
                stop = asyncio.Event()
                if elector is not None:
                    elector.start_renewing(on_lost=_threadsafe(loop, stop.set), on_expired=_exit_lost)
                kopf.run(
                    loop=loop,
                    registry=registry,
                    clusterwide=not namespaces,
                    namespaces=list(namespaces),
                    standalone=True,
                    # kopf's default asks the password database for the user, which fails for a uid it lacks
                    # (a pod's runAsUser); it is the same identity as the Lease's, for the logs.
                    identity=identity,  # type: ignore[arg-type]  # kopf's NewType of str, not exported
                    stop_flag=stop,
                    ready_flag=kopf_ready,
                )
    except _Interrupted as e:
        log.info("stopped by %s", e)
    finally:
        if elector is not None:
            elector.release()
        server.shutdown()
    if elector is not None and elector.lost:
        raise leader.LeadershipLostError(
            f"lost the Lease {elector.namespace}/{elector.name}; restart to stand by for it again"
        )


class _Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """SIGTERM or SIGINT before kopf took the signals over (while standing by, or starting)."""


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While waiting for the Lease, SIGTERM and SIGINT end the wait as an exception, so the ``finally`` blocks run
    (release a Lease won in that instant, stop the metrics server) and the process exits 0 rather than being
    killed. kopf replaces these handlers with its own graceful ones when it starts; the previous ones come back
    afterwards."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works on the main thread only
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
    """``callback`` run in ``loop`` when called from another thread (the Lease's renewal thread); nothing once
    the loop is closed (kopf has already stopped)."""

    def call() -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    return call


def _exit_lost() -> None:
    """The Lease expired and kopf has not stopped yet: end the process now, whatever it is doing, because a
    standby may act from this moment on."""
    os._exit(EXIT_LEADERSHIP_LOST)
