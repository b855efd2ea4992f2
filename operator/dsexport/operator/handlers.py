"""The kopf wiring: which watch events reconcile what. The only module that imports kopf.

Datasets, Destinations and DatasetExports are indexed in memory, so a change of a Dataset or a Destination
reconciles exactly the flows that reference it, without listing anything; a referenced object that appears later
is seen by its watch, not found by polling. Export Jobs are watched to record each finished one in its flow's
status. A light timer per flow only checks the clock (a schedule's window opening or closing, the next slot) and
reconciles when that changed something.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import kopf
from pydantic import ValidationError

from dsexport import api
from dsexport.api.status import DatasetStatus, DestinationStatus
from dsexport.operator import checks, desired, render
from dsexport.operator.kube import Kube
from dsexport.operator.metrics import Metrics
from dsexport.operator.reconcile import DestinationReconciler, Event, Outcome, Reconciler
from dsexport.operator.results import now_text

TIMER_SECONDS: Final = 60.0
RETRY_SECONDS: Final = 10.0
PROTECT_RETRY_SECONDS: Final = 10.0
MANAGED: Final = {"app.kubernetes.io/managed-by": "dsexport-operator"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    kubeconfig: str | None = None
    settings: desired.Settings = field(default_factory=desired.Settings)
    metrics: Metrics = field(default_factory=Metrics)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _one(store: Any) -> Any:
    """The single value an index holds for a key, or None."""
    for value in store or ():
        return value
    return None


def _dataset(body: Mapping[str, Any]) -> api.Dataset | None:
    try:
        return api.Dataset.model_validate(dict(body))
    except ValidationError:
        return None


def _destination(body: Mapping[str, Any]) -> api.Destination | None:
    try:
        return api.Destination.model_validate(dict(body))
    except ValidationError:
        return None


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}


def _configure(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    # The status schema is structural: kopf keeps its bookkeeping in annotations instead of status.kopf, under
    # a prefix of its own (kopf ignores changes to annotations under it, and must not ignore dsexport.io/run-now).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.dsexport.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.dsexport.io", key="last-handled-configuration"
    )
    settings.posting.loggers = False  # Events are posted on purpose, not for every log line
    settings.persistence.finalizer = "dsexport.io/operator"  # the timers' (kopf stops them on deletion)
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own connection: the pod's service account, else the kubeconfig (``--kubeconfig`` sets KUBECONFIG)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _dataset_bodies(**kwargs: Any) -> dict[Any, Any]:
    return {(kwargs["namespace"], kwargs["name"]): _dataset(kwargs["body"])}


def _destination_bodies(**kwargs: Any) -> dict[Any, Any]:
    """The Destination and its Available condition (which its flows mirror)."""
    body = kwargs["body"]
    conditions = (body.get("status") or {}).get("conditions") or []
    available = next((dict(c) for c in conditions if c.get("type") == checks.AVAILABLE), None)
    return {(kwargs["namespace"], kwargs["name"]): (_destination(body), available)}


def _flow_refs(**kwargs: Any) -> dict[Any, Any]:
    namespace, name, spec = kwargs["namespace"], kwargs["name"], kwargs["spec"]
    keys: dict[Any, Any] = {(namespace, "Dataset", d.get("name")): name for d in spec.get("datasets") or []}
    keys[(namespace, "Destination", (spec.get("destinationRef") or {}).get("name"))] = name
    return keys


def _flow_bodies(**kwargs: Any) -> dict[Any, Any]:
    return {(kwargs["namespace"], kwargs["name"]): _plain(kwargs["body"])}


_USERS: Final = {"Dataset": ("datasets", DatasetStatus), "Destination": ("destinations", DestinationStatus)}


class _Handlers:
    """The handlers' logic, bound to one API connection; kopf passes everything as keyword arguments."""

    def __init__(
        self, kube: Kube, reconciler: Reconciler, destinations: DestinationReconciler, metrics: Metrics
    ) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.destinations = destinations
        self.metrics = metrics

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

    @staticmethod
    def post(body: Mapping[str, Any], events: Iterable[Event]) -> None:
        for event in events:
            kopf.event(
                dict(body),  # type: ignore[arg-type]
                type=event.type,
                reason=event.reason,
                message=event.message[:1024],
            )

    def reconcile_flow(self, body: Mapping[str, Any], indexes: Mapping[str, Any]) -> Outcome:
        namespace = body["metadata"]["namespace"]
        spec = body.get("spec") or {}
        datasets = {}
        for entry in spec.get("datasets") or []:
            found = _one(indexes["_dataset_bodies"].get((namespace, entry.get("name"))))
            if found is not None:
                datasets[entry["name"]] = found
        ref = (spec.get("destinationRef") or {}).get("name")
        destination, available = _one(indexes["_destination_bodies"].get((namespace, ref))) or (None, None)
        outcome = self.reconciler.flow(
            body, datasets=datasets, destination=destination, availability=available, now=_now()
        )
        self.post(body, outcome.events)
        self.observe(body, outcome)
        return outcome

    def used_by(self, *, kind: str, namespace: str, name: str, refs: Any) -> None:
        """A Dataset's or Destination's ``usedBy``: the flows that reference it (written only when it changed)."""
        plural, model = _USERS[kind]
        users = sorted(set(refs.get((namespace, kind, name)) or ()))

        def mutate(status: Any, obj: dict[str, Any]) -> None:
            status.used_by = users
            status.observed_generation = obj["metadata"].get("generation")

        self.kube.update_status(plural=plural, namespace=namespace, name=name, model=model, mutate=mutate)

    def refresh_users(self, namespace: str, specs: Iterable[Mapping[str, Any]], refs: Any) -> None:
        datasets = {d.get("name") for s in specs for d in s.get("datasets") or []}
        destinations = {(s.get("destinationRef") or {}).get("name") for s in specs}
        for name in sorted(n for n in datasets if n):
            self.used_by(kind="Dataset", namespace=namespace, name=name, refs=refs)
        for name in sorted(n for n in destinations if n):
            self.used_by(kind="Destination", namespace=namespace, name=name, refs=refs)

    def flow_changed(self, **kwargs: Any) -> None:
        body = kwargs["body"]
        self.reconcile_flow(body, kwargs)
        specs = [body.get("spec") or {}, (kwargs.get("old") or {}).get("spec") or {}]
        self.refresh_users(body["metadata"]["namespace"], specs, kwargs["_flow_refs"])

    def flow_deleted(self, **kwargs: Any) -> None:
        body = kwargs["body"]
        self.metrics.forget_flow(namespace=body["metadata"]["namespace"], name=body["metadata"]["name"])
        self.refresh_users(body["metadata"]["namespace"], [body.get("spec") or {}], kwargs["_flow_refs"])

    def clock(self, **kwargs: Any) -> None:
        """Reconcile only when time changed what the flow should look like: a window opened or closed, a slot
        passed (nextExportTime), or the last reconciliation did not finish."""
        body = kwargs["body"]
        try:
            flow = api.DatasetExport.model_validate(dict(body))
        except ValidationError:
            return
        now = _now()
        groups = render.schedule_groups(flow)
        status = body.get("status") or {}
        upcoming = desired.next_export(groups, now=now, suspended=flow.spec.suspend)
        expected = now_text(upcoming) if upcoming else None
        earlier = now - dt.timedelta(seconds=TIMER_SECONDS * 2)
        flipped = any(render.in_window(g.schedule, now) != render.in_window(g.schedule, earlier) for g in groups)
        stale = status.get("observedGeneration") != body["metadata"].get("generation")
        if flipped or stale or status.get("nextExportTime") != expected:
            self.reconcile_flow(body, kwargs)

    def referenced_changed(self, kind: str, kwargs: Mapping[str, Any]) -> None:
        """A Dataset or Destination event: reconcile the flows that use it, and keep its usedBy current."""
        namespace, name, refs = kwargs["namespace"], kwargs["name"], kwargs["_flow_refs"]
        if kwargs["type"] is None:  # the initial listing: every flow is resumed anyway
            if refs.get((namespace, kind, name)):
                self.used_by(kind=kind, namespace=namespace, name=name, refs=refs)
            return
        for flow in sorted(set(refs.get((namespace, kind, name)) or ())):
            body = _one(kwargs["_flow_bodies"].get((namespace, flow)))
            if body is not None:
                self.reconcile_flow(body, kwargs)
        if kwargs["type"] != "DELETED":
            self.used_by(kind=kind, namespace=namespace, name=name, refs=refs)

    def protect(self, **kwargs: Any) -> None:
        """Deleting a Dataset or Destination that a flow uses waits (kopf keeps its finalizer) until no flow uses
        it any more: the flows go on exporting meanwhile, and the user is told which flows to change."""
        body = kwargs["body"]
        namespace, name, kind = kwargs["namespace"], kwargs["name"], body["kind"]
        users = sorted(set(kwargs["_flow_refs"].get((namespace, kind, name)) or ()))
        if not users:
            return
        message = (
            f"{kind} {name} is used by DatasetExport(s) {', '.join(users)}: its deletion completes once they no "
            "longer reference it (edit or delete them)"
        )
        if kwargs.get("retry", 0) == 0:
            self.post(body, [Event("Warning", "InUse", message)])
        raise kopf.TemporaryError(message, delay=PROTECT_RETRY_SECONDS)

    def dataset_event(self, **kwargs: Any) -> None:
        self.referenced_changed("Dataset", kwargs)

    def destination_event(self, **kwargs: Any) -> None:
        self.referenced_changed("Destination", kwargs)
        if kwargs["type"] != "DELETED":
            self.check_destination(**kwargs)

    def check_destination(self, **kwargs: Any) -> None:
        """Start a check Job when one is due (created, changed, check-now, or the interval passed)."""
        body = kwargs["body"]
        self.post(body, self.destinations.destination(body, now=_now()).events)

    def job_event(self, **kwargs: Any) -> None:
        body = kwargs["body"]
        if kwargs["type"] == "DELETED":
            return
        labels = body["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/component") == checks.COMPONENT:
            self.check_finished(body, kwargs["_flow_refs"])
            return
        outcome = self.reconciler.job(body, now=_now())
        if not outcome.events or outcome.status is None:
            return
        namespace = str(body["metadata"]["namespace"])
        name = str(labels.get(render.LABEL_EXPORT))
        ref = {"apiVersion": api.API_VERSION, "kind": "DatasetExport"}
        self.post({**ref, "metadata": {"name": name, "namespace": namespace, "uid": outcome.uid}}, outcome.events)
        spec = _one(kwargs["_flow_bodies"].get((namespace, name)))
        self.observe(spec or {"metadata": {"namespace": namespace, "name": name}}, outcome)
        if outcome.seconds is not None:
            self.metrics.observe_run(namespace=namespace, export=name, seconds=outcome.seconds)
        destination = ((spec or {}).get("spec") or {}).get("destinationRef", {}).get("name")
        if outcome.destination_failure and destination:
            verdict = self.destinations.export_failed(
                namespace=namespace, name=destination, message=outcome.destination_failure, now=_now()
            )
            if verdict is not None:
                self.metrics.set_destination(namespace=namespace, name=destination, available=False)
                refs = kwargs["_flow_refs"].get((namespace, "Destination", destination)) or ()
                self.destinations.mirror(namespace=namespace, flows=sorted(set(refs)), verdict=verdict, now=_now())

    def check_finished(self, job: Mapping[str, Any], refs: Any) -> None:
        outcome, verdict = self.destinations.check_finished(job, now=_now())
        if verdict is None:
            return
        namespace = str(job["metadata"]["namespace"])
        name = str((job["metadata"].get("labels") or {}).get(checks.LABEL_DESTINATION))
        ref = {"apiVersion": api.API_VERSION, "kind": "Destination"}
        self.post({**ref, "metadata": {"name": name, "namespace": namespace, "uid": outcome.uid}}, outcome.events)
        self.metrics.set_destination(namespace=namespace, name=name, available=verdict.available)
        flows = sorted(set(refs.get((namespace, "Destination", name)) or ()))
        self.destinations.mirror(namespace=namespace, flows=flows, verdict=verdict, now=_now())


def build(options: Options) -> kopf.OperatorRegistry:
    """A registry with every handler, bound to one API connection."""
    registry = kopf.OperatorRegistry()
    kube = Kube.connect(options.kubeconfig)
    h = _Handlers(
        kube, Reconciler(kube, options.settings), DestinationReconciler(kube, options.settings), options.metrics
    )
    group, version, flows = api.GROUP, api.VERSION, "datasetexports"
    kopf.on.startup(registry=registry)(_configure)
    kopf.on.login(registry=registry)(_login)
    kopf.index(group, version, "datasets", registry=registry)(_dataset_bodies)
    kopf.index(group, version, "destinations", registry=registry)(_destination_bodies)
    kopf.index(group, version, flows, registry=registry)(_flow_refs)
    kopf.index(group, version, flows, registry=registry)(_flow_bodies)
    for on in (kopf.on.resume, kopf.on.create, kopf.on.update):
        on(group, version, flows, registry=registry, backoff=RETRY_SECONDS)(h.flow_changed)
    kopf.on.delete(group, version, flows, registry=registry, optional=True)(h.flow_deleted)
    kopf.timer(group, version, flows, registry=registry, interval=TIMER_SECONDS, idle=TIMER_SECONDS)(h.clock)
    kopf.on.event(group, version, "datasets", registry=registry)(h.dataset_event)
    for plural in ("datasets", "destinations"):
        kopf.on.delete(group, version, plural, registry=registry, id="protect")(h.protect)
    kopf.on.event(group, version, "destinations", registry=registry)(h.destination_event)
    kopf.timer(group, version, "destinations", registry=registry, interval=TIMER_SECONDS, idle=TIMER_SECONDS)(
        h.check_destination
    )
    kopf.on.event("batch", "v1", "jobs", labels=MANAGED, registry=registry)(h.job_event)
    return registry
