"""The kopf wiring: which watch events reconcile what. The only module that imports kopf.

Every handler is an event handler: the operator decides itself what an event means (a flow's generation not yet
observed, an annotation to act on, a referenced spec that changed), so kopf keeps no state in the objects (no
annotations, no finalizers of its own) and the operator's own status writes trigger nothing. Datasets,
Destinations, flows and the flows' CronJobs are kopf indexes, complete before any handler runs: a change of a
Dataset or a Destination reconciles exactly the flows that reference it, without listing anything, and a
referenced object that appears later is seen by its watch, not found by polling. Export Jobs are watched to
record each finished one. One clock thread, not a timer per object, reconciles a flow when time changed what it
should look like (a window opening or closing, the next slot passing) and starts Destination checks when due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import os
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import kopf
from pydantic import ValidationError

from dsexport import api
from dsexport.operator import checks, desired, render, tls
from dsexport.operator.apiserver import ApiError
from dsexport.operator.kube import Kube, version
from dsexport.operator.metrics import Metrics
from dsexport.operator.reconcile import RESET, RUN_NOW, DestinationReconciler, Event, Outcome, Reconciler
from dsexport.operator.results import now_text

TIMER_SECONDS: Final = 60.0
MANAGED: Final = {"app.kubernetes.io/managed-by": "dsexport-operator"}
FINALIZER: Final = "dsexport.io/in-use"
"""On a Dataset or Destination while a flow references it: deleting it then waits until no flow does."""
INDEXES: Final = ("_dataset_bodies", "_destination_bodies", "_flow_refs", "_cron_jobs")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Webhook:
    """The validating admission webhook: where it listens, and how the API server reaches it: at ``host`` (an
    address or name of this machine, e.g. next to ``make cluster``), or through a Service in front of the
    operator's pods (in a cluster)."""

    address: str = "0.0.0.0"  # noqa: S104 - a pod listens on its own address
    port: int = 9443
    host: str | None = None
    service: tuple[str, str] | None = None  # namespace, name
    service_port: int = 443
    pod: PodAddress | None = None
    """This replica, when the Service has no selector: the leader makes itself the Service's only endpoint."""


@dataclass(frozen=True)
class PodAddress:
    """The operator's own pod, from the downward API (``DSEXPORT_POD_IP``, ``_NAME``, ``_NAMESPACE``, ``_UID``)."""

    ip: str
    name: str
    namespace: str
    uid: str


def own_pod() -> PodAddress | None:
    """This pod as the downward API describes it (all four variables set), else None: the webhook Service then
    selects the operator's pods itself."""
    found = [os.environ.get(f"DSEXPORT_POD_{k}") for k in ("IP", "NAME", "NAMESPACE", "UID")]
    if not all(found):
        return None
    ip, name, namespace, uid = (str(v) for v in found)
    return PodAddress(ip=ip, name=name, namespace=namespace, uid=uid)


def endpoint_slice(*, service: str, port: int, pod: PodAddress) -> dict[str, Any]:
    """The webhook Service's one endpoint: this pod, the leader.

    Only the leader serves the webhook (a standby runs no kopf), yet every replica must be ready for the
    Deployment's rollouts and disruption budget; so the Service selects no pods and the leader names itself here
    once its webhook server listens. The slice is owned by the pod: when that pod goes, so does the slice, and
    the next leader writes its own (until then the webhook is unreachable, which admission ignores).
    """
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-leader",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "dsexport.io",
                **MANAGED,
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}],
        },
        "addressType": "IPv6" if ":" in pod.ip else "IPv4",
        "endpoints": [
            {
                "addresses": [pod.ip],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            }
        ],
        "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}],
    }


@dataclass(frozen=True)
class Options:
    kubeconfig: str | None = None
    settings: desired.Settings = field(default_factory=desired.Settings)
    metrics: Metrics = field(default_factory=Metrics)
    webhook: Webhook | None = None


@dataclass(frozen=True)
class Referenced:
    """A Dataset or Destination as its index holds it: the parsed model (None when invalid) and the object."""

    model: api.Dataset | api.Destination | None
    body: dict[str, Any]

    @property
    def available(self) -> dict[str, Any] | None:
        """A Destination's Available condition (which its flows mirror)."""
        conditions = (self.body.get("status") or {}).get("conditions") or []
        return next((dict(c) for c in conditions if c.get("type") == checks.AVAILABLE), None)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _one(store: Any) -> Any:
    """The single value an index holds for a key, or None."""
    for value in store or ():
        return value
    return None


def _parsed(model: type[api.Dataset] | type[api.Destination], body: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(dict(body))
    except ValidationError:
        return None


_UNUSED_ANNOTATIONS: Final = ("kubectl.kubernetes.io/last-applied-configuration",)


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of an object in memory, for every flow, Dataset and Destination: not its
    managedFields nor kubectl's copy of the whole object (most of a small object's size)."""
    plain = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations") or {}
    if any(a in annotations for a in _UNUSED_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in _UNUSED_ANNOTATIONS}
    plain["metadata"] = meta
    return plain


def _configure(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    # No handler needs kopf's bookkeeping; should one ever, it goes to annotations under a prefix of its own (the
    # status schema is structural, and kopf ignores changes under it, but must not ignore dsexport.io/run-now).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.dsexport.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.dsexport.io", key="last-handled-configuration"
    )
    settings.posting.enabled = False  # Events are posted on purpose by the handlers, not for every log line
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]


WEBHOOK_CONFIGURATION: Final = "dsexport.io"
"""The ValidatingWebhookConfiguration the operator keeps (kopf's managed mode: its webhooks are removed when the
operator stops, so deletions are then held by the finalizer instead of failing)."""


class _ServiceWebhookServer(kopf.WebhookServer):
    """kopf's server behind a Service, announced by the operator itself once it listens: its endpoint (this pod,
    see ``endpoint_slice``) first, then the webhook configuration with this server's CA bundle."""

    def __init__(
        self, *, service: tuple[str, str], service_port: int, kube: Kube, pod: PodAddress | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.service, self.service_port, self.kube, self.pod = service, service_port, kube, pod

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for config in super().__call__(fn):  # yielded once the server listens
            namespace, name = self.service
            ref = {"namespace": namespace, "name": name, "port": self.service_port}
            configuration = webhook_configuration(service=ref, ca_bundle=str(config.get("caBundle") or ""))
            try:
                if self.pod is not None:
                    slice_ = endpoint_slice(service=name, port=self.port or 9443, pod=self.pod)
                    await asyncio.to_thread(self.kube.ensure, slice_, namespace=namespace)
                await asyncio.to_thread(self.kube.apply_cluster_scoped, configuration)
            except Exception:  # not worth stopping the operator: the in-use finalizer still holds deletions
                log.exception("could not announce the webhook (deletions in use are held by the finalizer instead)")
            else:
                log.info("the webhook configuration %s calls Service %s/%s", WEBHOOK_CONFIGURATION, namespace, name)
            yield config  # kopf manages no configuration in this mode: this goes nowhere


IN_USE_PLURALS: Final = ("datasets", "destinations")


def webhook_configuration(*, service: Mapping[str, Any], ca_bundle: str) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration that refuses deleting a Dataset or Destination in use.

    In a cluster the operator writes it itself rather than in kopf's managed mode, which manages a
    MutatingWebhookConfiguration of the same name too, whatever the handlers: that needs the right to create
    mutating webhooks cluster-wide, which an operator that only validates deletions should not hold. The chart
    creates the object; the leader applies its webhooks (RBAC: patch on that one name). A Service in front of
    this path answers for each handler at ``/<handler id>``, as kopf routes them.
    """
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION},
        "webhooks": [
            {
                "name": f"{plural[:-1]}-in-use.{WEBHOOK_CONFIGURATION}",
                "clientConfig": {"service": {**service, "path": f"/{plural[:-1]}-in-use"}, "caBundle": ca_bundle},
                "rules": [
                    {
                        "apiGroups": [api.GROUP],
                        "apiVersions": [api.VERSION],
                        "operations": ["DELETE"],
                        "resources": [plural],
                        "scope": "*",
                    }
                ],
                # Not reachable (a leader hand-over): the deletion goes on, held by the in-use finalizer.
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": 10,
                "admissionReviewVersions": ["v1"],
            }
            for plural in IN_USE_PLURALS
        ],
    }


def _webhook_server(webhook: Webhook, kube: Kube) -> kopf.WebhookServer:
    if webhook.service is not None:
        namespace, name = webhook.service
        names = [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}"]
    else:
        names = [webhook.host or ("127.0.0.1" if webhook.address in ("0.0.0.0", "") else webhook.address)]  # noqa: S104
    cert = tls.self_signed(names=names)
    files = {"certfile": str(cert.cert_file), "pkeyfile": str(cert.key_file), "cadata": cert.pem}
    if webhook.service is not None:
        return _ServiceWebhookServer(
            service=webhook.service,
            service_port=webhook.service_port,
            kube=kube,
            pod=webhook.pod,
            addr=webhook.address,
            port=webhook.port,
            **files,
        )
    return kopf.WebhookServer(addr=webhook.address, port=webhook.port, host=names[0], **files)  # type: ignore[arg-type]


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own connection: the pod's service account, else the kubeconfig (``--kubeconfig`` sets KUBECONFIG).

    In a pod, the API server is where ``KUBERNETES_SERVICE_HOST``/``_PORT`` say, as client-go and the official
    client find it: kopf's default is the name kubernetes.default.svc, which needs cluster DNS to resolve (and
    fails where the pod has none, or while DNS is down), while the address always works.
    """
    found = kopf.login_with_service_account(**kwargs)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if found is not None and host and port:
        return dataclasses.replace(found, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    return found or kopf.login_with_kubeconfig(**kwargs)


def _dataset_bodies(**kwargs: Any) -> dict[Any, Any]:
    body = _plain(kwargs["body"])
    return {(kwargs["namespace"], kwargs["name"]): Referenced(_parsed(api.Dataset, body), body)}


def _destination_bodies(**kwargs: Any) -> dict[Any, Any]:
    body = _plain(kwargs["body"])
    return {(kwargs["namespace"], kwargs["name"]): Referenced(_parsed(api.Destination, body), body)}


def _flow_refs(**kwargs: Any) -> dict[Any, Any]:
    namespace, name, spec = kwargs["namespace"], kwargs["name"], kwargs["spec"]
    keys: dict[Any, Any] = {(namespace, "Dataset", d.get("name")): name for d in spec.get("datasets") or []}
    keys[(namespace, "Destination", (spec.get("destinationRef") or {}).get("name"))] = name
    return keys


def _cron_jobs(**kwargs: Any) -> dict[Any, Any]:
    """A flow's CronJobs (name, version): its reconciliation reads and lists none of them."""
    flow = (kwargs["labels"] or {}).get(render.LABEL_EXPORT)
    return {(kwargs["namespace"], flow): (kwargs["name"], version(kwargs["body"]))} if flow else {}


_PLURAL: Final = {"Dataset": "datasets", "Destination": "destinations"}
_INDEX: Final = {"Dataset": "_dataset_bodies", "Destination": "_destination_bodies"}
USERS_DELAY_SECONDS: Final = 0.5


def _fingerprint(kind: str, body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a Dataset or Destination its flows depend on: its spec (by generation) and, of a Destination, its
    Available condition. Status writes (usedBy, check times) and metadata changes leave it alone."""
    available = Referenced(None, dict(body)).available if kind == "Destination" else None
    mirrored = tuple((available or {}).get(k) for k in ("status", "reason", "message"))
    return (body["metadata"].get("uid"), body["metadata"].get("generation"), mirrored)


class _Handlers:
    """The handlers' logic, bound to one API connection; kopf passes everything as keyword arguments."""

    def __init__(
        self, kube: Kube, reconciler: Reconciler, destinations: DestinationReconciler, metrics: Metrics
    ) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.destinations = destinations
        self.metrics = metrics
        self.indexes: dict[str, Any] = {}  # kopf's live indexes, for the clock thread
        self.flows: dict[tuple[str, str], dict[str, Any]] = {}  # the latest body of every flow
        self.destination_bodies: dict[tuple[str, str], dict[str, Any]] = {}
        # What each flow's last reconciliation saw of its Datasets and Destination (None: missing)
        self.inputs: dict[tuple[str, str], dict[tuple[str, str], tuple[Any, ...] | None]] = {}
        self.warned: set[tuple[str, str, str, str]] = set()  # (kind, namespace, name, deletionTimestamp)
        self._dirty: set[tuple[str, str, str]] = set()  # Datasets and Destinations whose users to write
        self._dirty_lock = threading.Lock()
        self._dirty_set = threading.Event()
        self._written: dict[tuple[str, str, str], dict[str, Any]] = {}  # what sync_users wrote, until delivered
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self.stopping = threading.Event()

    @contextmanager
    def locked(self, key: tuple[str, str]) -> Iterator[None]:
        """One reconciliation of a flow at a time (its own events, its Datasets' and the clock may coincide)."""
        with self._guard:
            lock = self._locks[key]
        with lock:
            yield

    def observe(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        """The metrics follow every status the operator wrote or found: counters are the status's totals."""
        if outcome.status is None:
            return
        try:
            flow: api.DatasetExport | None = api.DatasetExport.model_validate(dict(body))
        except ValidationError:
            flow = None
        meta = body["metadata"]
        self.metrics.update_flow(namespace=meta["namespace"], name=meta["name"], flow=flow, status=outcome.status)

    def post(self, involved: Mapping[str, Any], events: Iterable[Event]) -> None:
        for event in events:
            self.kube.post_event(involved, type_=event.type, reason=event.reason, message=event.message)

    def reconcile_flow(self, key: tuple[str, str]) -> Outcome | None:
        """Reconcile the flow from its latest body and the indexes; None when it is gone or being deleted."""
        with self.locked(key):
            body = self.flows.get(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            namespace = key[0]
            spec = body.get("spec") or {}
            datasets = {}
            inputs: dict[tuple[str, str], tuple[Any, ...] | None] = {}
            for entry in spec.get("datasets") or []:
                found = _one(self.indexes["_dataset_bodies"].get((namespace, entry.get("name"))))
                inputs["Dataset", entry.get("name")] = _fingerprint("Dataset", found.body) if found else None
                if found is not None and found.model is not None:
                    datasets[entry["name"]] = found.model
            ref = (spec.get("destinationRef") or {}).get("name")
            found = _one(self.indexes["_destination_bodies"].get((namespace, ref)))
            inputs["Destination", str(ref)] = _fingerprint("Destination", found.body) if found else None
            destination, available = (found.model, found.available) if found is not None else (None, None)
            cron_jobs = dict(self.indexes["_cron_jobs"].get(key) or ())
            outcome = self.reconciler.flow(
                body,
                datasets=datasets,
                destination=destination,
                availability=available,
                now=_now(),
                cron_jobs=cron_jobs,
            )
            self.inputs[key] = inputs
        self.post(body, outcome.events)
        self.observe(body, outcome)
        return outcome

    def users(self, kind: str, namespace: str, name: str) -> list[str]:
        return sorted(set(self.indexes["_flow_refs"].get((namespace, kind, name)) or ()))

    def mark_users(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Have these Datasets' or Destinations' usedBy and finalizer brought up to date in a moment."""
        with self._dirty_lock:
            self._dirty.update(keys)
        self._dirty_set.set()

    def refresh_users(self, namespace: str, specs: Iterable[Mapping[str, Any]]) -> None:
        """After a flow changed or went: everything it references or referenced."""
        keys = {("Dataset", namespace, d.get("name")) for s in specs for d in s.get("datasets") or []}
        keys |= {("Destination", namespace, (s.get("destinationRef") or {}).get("name")) for s in specs}
        self.mark_users(k for k in keys if k[2])

    def flush_users(self) -> None:
        """Write what is marked, a short while after the first mark: 1,000 flows created at once that use one
        Destination cause a few writes of its usedBy, not 1,000."""
        while not self.stopping.is_set():
            self._dirty_set.wait()
            if self.stopping.wait(USERS_DELAY_SECONDS):
                return
            with self._dirty_lock:
                keys, self._dirty = sorted(self._dirty), set()
                self._dirty_set.clear()
            for key in keys:
                self.guarded(self.sync_users, key)

    def sync_users(self, key: tuple[str, str, str]) -> None:
        """A Dataset's or Destination's in-use finalizer and ``usedBy``, each written only when it differs, both
        from what its watch last delivered and from what this process wrote and has not seen delivered yet."""
        kind, namespace, name = key
        plural = _PLURAL[kind]
        found = _one(self.indexes[_INDEX[kind]].get((namespace, name)))
        if found is None:
            self._written.pop(key, None)
            return
        body, users = found.body, self.users(kind, namespace, name)
        meta, status = body["metadata"], body.get("status") or {}
        deleting = meta.get("deletionTimestamp")
        written = self._written.setdefault(key, {"uid": meta.get("uid")})
        if written["uid"] != meta.get("uid"):  # another object of that name
            written.clear()
            written["uid"] = meta.get("uid")
        if not (users and deleting):  # in use while deleted: the finalizer holds it
            present = bool(users)
            if (FINALIZER in (meta.get("finalizers") or [])) == present:
                written.pop("finalizer", None)  # delivered
            elif written.get("finalizer") != present:
                self.kube.set_finalizer(body, plural=plural, finalizer=FINALIZER, present=present)
                written["finalizer"] = present
        if deleting and not users:
            return  # the finalizer is gone: so is the object, in a moment
        unused_and_untouched = not users and not status
        if sorted(status.get("usedBy") or []) == users and (
            unused_and_untouched or status.get("observedGeneration") == meta.get("generation")
        ):
            written.pop("usedBy", None)
        elif written.get("usedBy") != (users, meta.get("generation")):
            status = {"usedBy": users, "observedGeneration": meta.get("generation")}
            self.kube.patch_status(plural=plural, namespace=namespace, name=name, status=status)
            written["usedBy"] = (users, meta.get("generation"))

    def remember_indexes(self, kwargs: Mapping[str, Any]) -> None:
        if not self.indexes:
            self.indexes = {name: kwargs[name] for name in INDEXES}

    def flow_event(self, **kwargs: Any) -> None:
        """Reconcile a flow when it needs it: at start-up, when its generation is not yet observed, or when it
        carries an annotation to act on. Its own status writes change none of these."""
        self.remember_indexes(kwargs)
        body, key = kwargs["body"], (kwargs["namespace"], kwargs["name"])
        before = self.flows.get(key)
        old_spec = (before or {}).get("spec") or {}
        if kwargs["type"] == "DELETED":
            self.flows.pop(key, None)
            self.inputs.pop(key, None)
            self.kube.forget(namespace=key[0], dataset_export=key[1])
            with self._guard:
                self._locks.pop(key, None)
            self.metrics.forget_flow(namespace=key[0], name=key[1])
            self.refresh_users(key[0], [old_spec, body.get("spec") or {}])
            return
        self.flows[key] = _plain(body)
        meta, status = body["metadata"], body.get("status") or {}
        annotations = meta.get("annotations") or {}
        needed = (
            kwargs["type"] is None
            or status.get("observedGeneration") != meta.get("generation")
            or RUN_NOW in annotations
            or RESET in annotations
        )
        if needed and self.reconcile_flow(key) is not None and old_spec != body.get("spec"):
            self.refresh_users(key[0], [body.get("spec") or {}, old_spec])

    def referenced_event(self, kind: str, kwargs: Mapping[str, Any]) -> None:
        """A Dataset or Destination event: reconcile the flows that use it when what they depend on changed, keep
        its usedBy and finalizer current, and say why its deletion waits while flows use it."""
        self.remember_indexes(kwargs)
        namespace, name, body = kwargs["namespace"], kwargs["name"], kwargs["body"]
        key = (kind, namespace, name)
        users = self.users(kind, namespace, name)
        fingerprint = None if kwargs["type"] == "DELETED" else _fingerprint(kind, body)
        if kwargs["type"] is not None:  # at start-up, every flow is reconciled by its own event
            for flow in users:  # those whose last reconciliation saw it otherwise (or not at all)
                if self.inputs.get((namespace, flow), {}).get((kind, name), ()) != fingerprint:
                    self.reconcile_flow((namespace, flow))
        if kwargs["type"] == "DELETED":
            self.warned = {w for w in self.warned if w[:3] != key}
            return
        deleting = body["metadata"].get("deletionTimestamp")
        if deleting and users and (*key, deleting) not in self.warned:
            self.warned.add((*key, deleting))
            message = (
                f"{kind} {name} is used by DatasetExport(s) {', '.join(users)}: its deletion completes once they "
                "no longer reference it (edit or delete them)"
            )
            self.post(body, [Event("Warning", "InUse", message)])
        self.mark_users([key])

    def refuse_in_use(self, **kwargs: Any) -> None:
        """Admission of a Dataset's or Destination's deletion: refused while a flow references it."""
        body = kwargs["body"]
        meta = body["metadata"]
        users = sorted(set(kwargs["_flow_refs"].get((meta["namespace"], body["kind"], meta["name"])) or ()))
        if users:
            raise kopf.AdmissionError(
                f"{body['kind']} {meta['name']} is used by DatasetExport(s) {', '.join(users)}: remove it from "
                "their spec (or delete them) first",
                code=409,
            )

    def dataset_event(self, **kwargs: Any) -> None:
        self.referenced_event("Dataset", kwargs)

    def destination_event(self, **kwargs: Any) -> None:
        key = (kwargs["namespace"], kwargs["name"])
        if kwargs["type"] == "DELETED":
            self.destination_bodies.pop(key, None)
        else:
            self.destination_bodies[key] = _plain(kwargs["body"])
        self.referenced_event("Destination", kwargs)
        if kwargs["type"] != "DELETED":
            self.check_destination(kwargs["body"])

    def check_destination(self, body: Mapping[str, Any]) -> None:
        """Start a check Job when one is due (created, changed, check-now, or the interval passed)."""
        self.post(body, self.destinations.destination(body, now=_now()).events)

    def cron_job_event(self, **kwargs: Any) -> None:
        """Someone else changed or deleted a flow's CronJob: put it back as rendered."""
        flow = (kwargs["labels"] or {}).get(render.LABEL_EXPORT)
        body, namespace = kwargs["body"], kwargs["namespace"]
        if not flow or kwargs["type"] is None:
            return
        current = None if kwargs["type"] == "DELETED" else version(body)
        if current is None or not self.kube.knows(body, namespace=namespace, version=current):
            self.reconcile_flow((namespace, flow))

    def clock(self) -> None:
        """Every flow whose schedule's clock changed something, every Destination whose check is due, and every
        usedBy and in-use finalizer checked again (no request when they are as they should be)."""
        now = _now()
        for key in list(self.flows):
            body = self.flows.get(key)
            if body is not None and self.stale(body, now):
                self.guarded(self.reconcile_flow, key)
        for body in list(self.destination_bodies.values()):
            self.guarded(self.check_destination, body)
        for (namespace, _), body in list(self.flows.items()):  # a usedBy or finalizer write that failed: again
            self.refresh_users(namespace, [body.get("spec") or {}])

    def guarded(self, fn: Any, *args: Any) -> None:
        """One object's failure is logged and retried at the next tick; it does not stop the others'."""
        try:
            fn(*args)
        except Exception:
            log.exception("the clock's reconciliation failed; it is retried in %.0f s", TIMER_SECONDS)

    @staticmethod
    def stale(body: Mapping[str, Any], now: dt.datetime) -> bool:
        """Whether time changed what the flow should look like: a window opened or closed, a slot passed
        (nextExportTime), or its last reconciliation did not finish."""
        try:
            flow = api.DatasetExport.model_validate(dict(body))
        except ValidationError:
            return False
        groups = render.schedule_groups(flow)
        status = body.get("status") or {}
        upcoming = desired.next_export(groups, now=now, suspended=flow.spec.suspend)
        expected = now_text(upcoming) if upcoming else None
        earlier = now - dt.timedelta(seconds=TIMER_SECONDS * 2)
        flipped = any(render.in_window(g.schedule, now) != render.in_window(g.schedule, earlier) for g in groups)
        unobserved = status.get("observedGeneration") != body["metadata"].get("generation")
        return flipped or unobserved or status.get("nextExportTime") != expected

    def tick(self) -> None:
        while not self.stopping.wait(TIMER_SECONDS):
            if self.indexes:
                self.clock()

    def start_clock(self, **_: Any) -> None:
        self.stopping.clear()
        threading.Thread(target=self.tick, name="dsexport-clock", daemon=True).start()
        threading.Thread(target=self.flush_users, name="dsexport-users", daemon=True).start()

    def stop_clock(self, **_: Any) -> None:
        self.stopping.set()
        self._dirty_set.set()

    def job_event(self, **kwargs: Any) -> None:
        body = kwargs["body"]
        if kwargs["type"] == "DELETED":
            return
        labels = body["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/component") == checks.COMPONENT:
            self.check_finished(body)
            return
        outcome = self.reconciler.job(body, now=_now())
        if not outcome.events or outcome.status is None:
            return
        namespace = str(body["metadata"]["namespace"])
        name = str(labels.get(render.LABEL_EXPORT))
        ref = {"apiVersion": api.API_VERSION, "kind": "DatasetExport"}
        self.post({**ref, "metadata": {"name": name, "namespace": namespace, "uid": outcome.uid}}, outcome.events)
        flow = self.flows.get((namespace, name))
        self.observe(flow or {"metadata": {"namespace": namespace, "name": name}}, outcome)
        if outcome.seconds is not None:
            self.metrics.observe_run(namespace=namespace, export=name, seconds=outcome.seconds)
        if outcome.status.last_export is not None and outcome.status.last_export.result != "Succeeded":
            # A failed run may have met a broken object (a ConfigMap deleted by hand): read them all again.
            self.kube.forget(namespace=namespace, dataset_export=name)
            self.reconcile_flow((namespace, name))
        destination = ((flow or {}).get("spec") or {}).get("destinationRef", {}).get("name")
        if outcome.destination_failure and destination:  # its flows mirror it when its status change arrives
            verdict = self.destinations.export_failed(
                namespace=namespace, name=destination, message=outcome.destination_failure, now=_now()
            )
            if verdict is not None:
                self.metrics.set_destination(namespace=namespace, name=destination, available=False)

    def check_finished(self, job: Mapping[str, Any]) -> None:
        outcome, verdict = self.destinations.check_finished(job, now=_now())
        if verdict is None:
            return
        namespace = str(job["metadata"]["namespace"])
        name = str((job["metadata"].get("labels") or {}).get(checks.LABEL_DESTINATION))
        ref = {"apiVersion": api.API_VERSION, "kind": "Destination"}
        self.post({**ref, "metadata": {"name": name, "namespace": namespace, "uid": outcome.uid}}, outcome.events)
        self.metrics.set_destination(namespace=namespace, name=name, available=verdict.available)


def unless_namespace_goes(handler: Callable[..., None]) -> Callable[..., None]:
    """``handler``, for which a write refused because its namespace is being deleted ends the matter.

    Deleting a namespace deletes what the operator made in it anyway; such a refusal (403, NamespaceTerminating)
    is logged in one line, not as a failed handler with a traceback in every namespace deletion.
    """

    @functools.wraps(handler)
    def quiet(**kwargs: Any) -> None:
        try:
            handler(**kwargs)
        except ApiError as e:
            if e.status != 403 or "NamespaceTerminating" not in e.causes:
                raise
            log.info("namespace %s is being deleted: %s left as it is", kwargs.get("namespace"), kwargs.get("name"))

    return quiet


def build(options: Options) -> kopf.OperatorRegistry:
    """A registry with every handler, bound to one API connection."""
    registry = kopf.OperatorRegistry()
    kube = Kube.connect(options.kubeconfig)
    h = _Handlers(
        kube, Reconciler(kube, options.settings), DestinationReconciler(kube, options.settings), options.metrics
    )
    group, version_, flows = api.GROUP, api.VERSION, "datasetexports"
    kopf.on.startup(registry=registry)(_configure)
    if options.webhook is not None:
        webhook = options.webhook

        def admission(**kwargs: Any) -> None:
            settings: kopf.OperatorSettings = kwargs["settings"]
            settings.admission.server = _webhook_server(webhook, kube)
            if webhook.service is None:  # on a developer's machine; in a cluster the server announces itself
                settings.admission.managed = WEBHOOK_CONFIGURATION

        kopf.on.startup(registry=registry)(admission)
        for plural in IN_USE_PLURALS:
            kopf.on.validate(
                group,
                version_,
                plural,
                operations=["DELETE"],
                ignore_failures=True,  # not reachable: the deletion goes on, held by the in-use finalizer
                id=f"{plural[:-1]}-in-use",
                registry=registry,
            )(h.refuse_in_use)
    kopf.on.startup(registry=registry)(h.start_clock)
    kopf.on.cleanup(registry=registry)(h.stop_clock)
    kopf.on.login(registry=registry)(_login)
    kopf.index(group, version_, "datasets", registry=registry)(_dataset_bodies)
    kopf.index(group, version_, "destinations", registry=registry)(_destination_bodies)
    kopf.index(group, version_, flows, registry=registry)(_flow_refs)
    kopf.index("batch", "v1", "cronjobs", labels=MANAGED, registry=registry)(_cron_jobs)
    kopf.on.event(group, version_, flows, registry=registry)(unless_namespace_goes(h.flow_event))
    kopf.on.event(group, version_, "datasets", registry=registry)(unless_namespace_goes(h.dataset_event))
    kopf.on.event(group, version_, "destinations", registry=registry)(unless_namespace_goes(h.destination_event))
    kopf.on.event("batch", "v1", "cronjobs", labels=MANAGED, registry=registry)(unless_namespace_goes(h.cron_job_event))
    kopf.on.event("batch", "v1", "jobs", labels=MANAGED, registry=registry)(unless_namespace_goes(h.job_event))
    return registry
