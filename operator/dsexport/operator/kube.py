"""The few API calls the operator makes, each one written so that an unchanged cluster causes no write.

``ensure`` writes an object (server-side apply, so fields the operator stopped setting are removed) only when
something it renders differs from what is there, and reads it only when it cannot tell: an object it applied or
checked is remembered with its version and the digest of what was rendered, so a flow reconciled again with
nothing changed costs no request at all. ``update_status`` writes a status only when it changed, conditional on
the resourceVersion it read (or was given), and retries the whole read-modify-write on a conflict. kopf watches
and schedules; this module talks to the API server through ``apiserver``.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from pydantic import BaseModel
from urllib3.exceptions import HTTPError

from dsexport import api
from dsexport.operator import apiserver, results
from dsexport.operator.apiserver import ApiError, ApiServer
from dsexport.operator.render import LABEL_EXPORT

FIELD_MANAGER: Final = "dsexport-operator"
CONFLICT_RETRIES: Final = 8
RESYNC_SECONDS: Final = 3600.0
"""How long an object the operator does not watch is trusted to be as it was applied or read; after that the next
reconciliation reads it again (so an edit or deletion by hand is repaired within about this long)."""
MERGE_PATCH: Final = "application/merge-patch+json"
UNWATCHED: Final = "unwatched"
"""``ensure``'s ``seen`` when no watch reports the object's version (``None``: the watch knows it is absent)."""

log = logging.getLogger(__name__)
S = TypeVar("S", bound=BaseModel)


def covers(existing: Any, desired: Any) -> bool:
    """Whether ``existing`` already has every field ``desired`` sets (the API server adds defaults, never
    removes what was set, so a subset test tells "up to date" from "needs a write")."""
    if isinstance(desired, Mapping):
        return isinstance(existing, Mapping) and all(
            k in existing and covers(existing[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(existing, list) and len(existing) == len(desired) and all(map(covers, existing, desired))
    return bool(existing == desired)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: removed keys become null."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif before != value or key not in old:
            patch[key] = value
    return patch


def object_path(*, api_version: str, kind: str, namespace: str, name: str) -> str:
    """The REST path of a namespaced object of the kinds the operator owns (ConfigMap, ServiceAccount, Role,
    RoleBinding, CronJob: each one's plural is its lower-cased kind plus s)."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{kind.lower()}s/{name}"


def custom_path(*, plural: str, namespace: str, name: str) -> str:
    """The REST path of a dsexport.io object."""
    return f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{plural}/{name}"


def digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def version(obj: Mapping[str, Any]) -> str:
    """What changes when someone else changes the object: its generation where it has one (a CronJob: not bumped
    by status updates), else its resourceVersion."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"r{meta.get('resourceVersion')}"


@dataclass(frozen=True)
class _Known:
    version: str
    digest: str
    until: float  # monotonic time after which an unwatched object is read again
    owner: str | None  # the DatasetExport it was rendered for


class Kube:
    """One connection to the API server, shared by all handlers (the client is thread-safe)."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.writes = 0
        self._known: dict[tuple[str, str, str], _Known] = {}
        self._owned: dict[tuple[str, str | None], set[tuple[str, str, str]]] = {}  # (namespace, flow): keys
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Kube:
        return cls(apiserver.connect(kubeconfig))

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One request, its reply parsed as plain JSON; None for 404."""
        try:
            return self.server.request(method, path, body=body, query=query or [], content_type=content_type)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def ensure(self, obj: Mapping[str, Any], *, namespace: str, seen: str | None = UNWATCHED) -> bool:
        """Make ``obj`` exist as rendered; True when that took a write request.

        ``seen``: the object's version as a watch last reported it, ``None`` when the watch knows it does not exist,
        ``UNWATCHED`` when no watch covers it (then what was applied or read is trusted for ``RESYNC_SECONDS``).
        """
        key = (str(obj["kind"]), namespace, str(obj["metadata"]["name"]))
        wanted = digest(obj)
        with self._lock:
            known = self._known.get(key)
        if known is not None and known.digest == wanted:
            if seen == UNWATCHED and time.monotonic() < known.until:
                return False
            if seen == known.version:
                return False
        existing: dict[str, Any] | None = None
        name = obj["metadata"]["name"]
        path = object_path(api_version=obj["apiVersion"], kind=obj["kind"], namespace=namespace, name=name)
        # Read only to verify what this process applied or read before (expired, or a watch saw another version);
        # an object never seen, or rendered differently now, is applied at once: one request, not two, and an
        # apply that changes nothing is not persisted.
        if known is not None and known.digest == wanted:
            existing = self._request("GET", path)
        if existing is not None and covers(existing, obj):
            self._remember(key, existing, wanted)
            return False
        body = {**copy.deepcopy(dict(obj)), "metadata": {**obj["metadata"], "namespace": namespace}}
        applied = self._request(
            "PATCH",
            path,
            body=body,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )
        if applied is None:  # the namespace is going away
            raise ApiError(status=404, reason="NotFound", message=f"{obj['kind']} {name}: not found while applying it")
        self.writes += 1
        self._remember(key, applied, wanted)
        log.info("applied %s/%s", obj["kind"], name)
        return True

    def apply_cluster_scoped(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply of a cluster-scoped object of a named API group (written rarely: once per leader)."""
        path = f"/apis/{obj['apiVersion']}/{str(obj['kind']).lower()}s/{obj['metadata']['name']}"
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        self._request("PATCH", path, body=dict(obj), query=query, content_type="application/apply-patch+yaml")
        self.writes += 1

    def _remember(self, key: tuple[str, str, str], obj: Mapping[str, Any], wanted: str) -> None:
        until = time.monotonic() + RESYNC_SECONDS * random.uniform(0.75, 1.0)  # noqa: S311 - spreads the reads
        with self._lock:
            owner = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_EXPORT)
            self._known[key] = _Known(version(obj), wanted, until, owner)
            self._owned.setdefault((key[1], owner), set()).add(key)

    def forget(self, *, namespace: str, dataset_export: str) -> None:
        """Read a flow's objects again at their next ``ensure``: something (a failed run) says one may be broken."""
        with self._lock:
            for key in self._owned.pop((namespace, dataset_export), set()):
                self._known.pop(key, None)

    def knows(self, obj: Mapping[str, Any], *, namespace: str, version: str) -> bool:
        """Whether ``obj`` at ``version`` is what this operator last applied or checked (its own write's event)."""
        with self._lock:
            known = self._known.get((str(obj["kind"]), namespace, str(obj["metadata"]["name"])))
        return known is not None and known.version == version

    def applied(self, *, kind: str, namespace: str, dataset_export: str) -> set[str]:
        """The names of ``kind`` this process applied for a flow: a watch may not have reported them yet."""
        with self._lock:
            return {k[2] for k in self._owned.get((namespace, dataset_export), ()) if k[0] == kind}

    def delete(self, *, api_version: str, kind: str, name: str, namespace: str) -> None:
        with self._lock:
            known = self._known.pop((kind, namespace, name), None)
            if known is not None:
                self._owned.get((namespace, known.owner), set()).discard((kind, namespace, name))
        path = object_path(api_version=api_version, kind=kind, namespace=namespace, name=name)
        if self._request("DELETE", path, body={"propagationPolicy": "Background"}) is not None:
            self.writes += 1

    def terminations(self, *, namespace: str, job: str) -> dict[str, results.Termination]:
        """How each of ``job``'s pods that ended with a message, or out of memory, ended (pod name: termination)."""
        selector = [("labelSelector", f"batch.kubernetes.io/job-name={job}")]
        pods = self._request("GET", f"/api/v1/namespaces/{namespace}/pods", query=selector)
        found: dict[str, results.Termination] = {}
        for pod in (pods or {}).get("items") or []:
            ended = results.Termination.of(pod)
            if ended is not None:
                found[pod["metadata"]["name"]] = ended
        return found

    def create_job(self, job: Mapping[str, Any], *, namespace: str) -> bool:
        """Create ``job``; False when a Job of that name exists already (this value was acted on before)."""
        try:
            self.server.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=dict(job))
        except ApiError as e:
            if e.status == 409:
                return False
            raise
        self.writes += 1
        return True

    def get_custom(self, *, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._request("GET", custom_path(plural=plural, namespace=namespace, name=name))

    def patch_custom(self, *, plural: str, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        path = custom_path(plural=plural, namespace=namespace, name=name)
        patched = self.server.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)
        self.writes += 1
        return patched

    def update_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        model: type[S],
        mutate: Callable[[S, dict[str, Any]], None],
        current: Mapping[str, Any] | None = None,
    ) -> S | None:
        """Read the object, let ``mutate`` change its status model in place (it also sees the object), and write
        the status if it changed, conditional on the read's resourceVersion; repeat on a conflict.

        ``current``: the object as a watch event just delivered it, used instead of the first read (if it is
        stale, the conditional write fails and the loop reads). Returns the status as written (or found
        unchanged); None when the object does not exist.
        """
        given = dict(current) if current and (current.get("metadata") or {}).get("resourceVersion") else None
        for _ in range(CONFLICT_RETRIES):
            obj, given = given or self.get_custom(plural=plural, namespace=namespace, name=name), None
            if obj is None:
                return None
            raw = obj.get("status") or {}
            status = model.model_validate(raw)
            before = status.model_dump(mode="json", by_alias=True, exclude_none=True)
            mutate(status, obj)
            after = status.model_dump(mode="json", by_alias=True, exclude_none=True)
            if after == before:
                return status
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": merge_patch(raw, after),
            }
            try:
                path = custom_path(plural=plural, namespace=namespace, name=name) + "/status"
                self.server.request("PATCH", path, body=body, content_type=MERGE_PATCH)
            except ApiError as e:
                if e.status == 409:
                    continue
                if e.status == 404:
                    return None
                raise
            self.writes += 1
            return status
        raise RuntimeError(f"{plural}/{name}: the status kept changing under {CONFLICT_RETRIES} attempts to write it")

    def set_finalizer(
        self, obj: Mapping[str, Any], *, plural: str, finalizer: str, present: bool
    ) -> dict[str, Any] | None:
        """Add or remove ``finalizer`` on a dsexport.io object, conditional on its resourceVersion (other
        controllers' finalizers are kept); a stale ``obj`` is read again. The object as written, None if there
        was nothing to do (or it is gone)."""
        for _ in range(CONFLICT_RETRIES):
            meta = obj["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            if (finalizer in finalizers) == present:
                return None
            finalizers = [*finalizers, finalizer] if present else [f for f in finalizers if f != finalizer]
            patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
            try:
                return self.patch_custom(plural=plural, namespace=meta["namespace"], name=meta["name"], patch=patch)
            except ApiError as e:
                if e.status == 404:
                    return None
                if e.status != 409:
                    raise
            found = self.get_custom(plural=plural, namespace=meta["namespace"], name=meta["name"])
            if found is None:
                return None
            obj = found
        raise RuntimeError(f"{plural}/{obj['metadata']['name']}: its finalizers kept changing")

    def patch_status(self, *, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge ``status`` into a dsexport.io object's status, unconditionally: for fields only this operator
        writes. False when the object is gone."""
        try:
            path = custom_path(plural=plural, namespace=namespace, name=name) + "/status"
            self.server.request("PATCH", path, body={"status": dict(status)}, content_type=MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        self.writes += 1
        return True

    def post_event(self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (apiVersion, kind and metadata name, namespace, uid). An Event that
        cannot be posted is logged: it must not fail the reconciliation it reports on."""
        meta = involved["metadata"]
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": os.environ.get("DSEXPORT_POD_NAME") or os.uname().nodename,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.server.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=body)
        except (ApiError, HTTPError) as e:
            log.warning("could not post Event %s on %s %s: %s", reason, involved.get("kind"), meta["name"], e)
            return
        self.writes += 1
