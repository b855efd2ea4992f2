"""The few API calls the operator makes, each one written so that an unchanged cluster causes no write.

``ensure`` reads an object and writes (server-side apply, so fields the operator stopped setting are removed)
only when something it renders differs from what is there; ``update_status`` writes a status only when it
changed, conditional on the resourceVersion it read, and retries the whole read-modify-write on a conflict.
kopf watches and schedules; this module talks to the API server with the official client.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError
from pydantic import BaseModel

from dsexport import api
from dsexport.operator.render import LABEL_EXPORT

FIELD_MANAGER: Final = "dsexport-operator"
CONFLICT_RETRIES: Final = 8

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


class Kube:
    """One connection to the API server, shared by all handlers (the client is thread-safe)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.dynamic = DynamicClient(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.writes = 0

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Kube:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        return cls(client.ApiClient())

    def _resource(self, obj: Mapping[str, Any]) -> Any:
        return self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])

    def ensure(self, obj: Mapping[str, Any], *, namespace: str) -> bool:
        """Make ``obj`` exist as rendered; True when that took a write."""
        resource = self._resource(obj)
        name = obj["metadata"]["name"]
        try:
            existing = resource.get(name=name, namespace=namespace).to_dict()
        except NotFoundError:
            existing = None
        if existing is not None and covers(existing, obj):
            return False
        body = {**copy.deepcopy(dict(obj)), "metadata": {**obj["metadata"], "namespace": namespace}}
        resource.server_side_apply(
            body=body, name=name, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True
        )
        self.writes += 1
        log.info("%s %s/%s", "updated" if existing else "created", obj["kind"], name)
        return True

    def owned_names(self, *, api_version: str, kind: str, namespace: str, dataset_export: str) -> list[str]:
        resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
        found = resource.get(namespace=namespace, label_selector=f"{LABEL_EXPORT}={dataset_export}")
        return [item["metadata"]["name"] for item in found.to_dict().get("items", [])]

    def delete(self, *, api_version: str, kind: str, name: str, namespace: str) -> None:
        resource = self.dynamic.resources.get(api_version=api_version, kind=kind)
        try:
            resource.delete(name=name, namespace=namespace, body={"propagationPolicy": "Background"})
            self.writes += 1
        except NotFoundError:
            pass

    def terminations(self, *, namespace: str, job: str) -> dict[str, str]:
        """The termination message of each of ``job``'s pods that ended with one (pod name: message)."""
        pods = client.CoreV1Api(self.api_client).list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
        )
        found: dict[str, str] = {}
        for pod in pods.items:
            for status in pod.status.container_statuses or []:
                terminated = status.state.terminated if status.state else None
                if terminated is not None and terminated.message:
                    found[pod.metadata.name] = terminated.message
        return found

    def create_job(self, job: Mapping[str, Any], *, namespace: str) -> bool:
        """Create ``job``; False when a Job of that name exists already (this value was acted on before)."""
        try:
            self.batch.create_namespaced_job(namespace=namespace, body=dict(job))
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self.writes += 1
        return True

    def get_custom(self, *, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return found

    def patch_custom(self, *, plural: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, plural, name, dict(patch), _content_type="application/merge-patch+json"
        )
        self.writes += 1

    def update_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        model: type[S],
        mutate: Callable[[S, dict[str, Any]], None],
    ) -> S | None:
        """Read the object, let ``mutate`` change its status model in place (it also sees the object), and write
        the status if it changed, conditional on the read's resourceVersion; repeat on a conflict.

        Returns the status as written (or found unchanged); None when the object does not exist.
        """
        for _ in range(CONFLICT_RETRIES):
            obj = self.get_custom(plural=plural, namespace=namespace, name=name)
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
                self.custom.patch_namespaced_custom_object_status(
                    api.GROUP, api.VERSION, namespace, plural, name, body, _content_type="application/merge-patch+json"
                )
            except ApiException as e:
                if e.status == 409:
                    continue
                if e.status == 404:
                    return None
                raise
            self.writes += 1
            return status
        raise RuntimeError(f"{plural}/{name}: the status kept changing under {CONFLICT_RETRIES} attempts to write it")
