"""examples/destinations/ on a real API server: every document of every example is accepted by a server-side dry
run (``dryRun=All``: admission, the generated CRDs' schemas and CEL rules, nothing stored) in a fresh namespace,
and comes back with every field it set, so no field of an example is silently pruned by a schema that lacks it
(``spec.serviceAccount`` with an older CRD would be). The limits of ``spec.serviceAccount`` that are schema, not
CEL, are refused here too (the CEL ones run in test_api_server.py with the other INVALID cases)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.crd_cases import INVALID_SCHEMA
from tests.k8s.conftest import create_namespace
from tests.unit.test_destination_example_models import FILES, documents

from dsexport import api as models
from dsexport.operator.kube import covers

DRY_RUN = "All"


@pytest.fixture
def namespace(api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """A fresh namespace, the CRDs installed; deleted afterwards without waiting."""
    name = create_namespace(api, "examples")
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)


def _dry_run_create(api: client.ApiClient, namespace: str, document: dict[str, Any]) -> dict[str, Any]:
    """Create ``document`` in ``namespace`` with ``dryRun=All``; the object as the server would have stored it."""
    plurals = {k.kind_name: k.plural for k in models.KINDS}
    kind = document["kind"]
    if document["apiVersion"] == models.API_VERSION:
        found: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
            models.GROUP, models.VERSION, namespace, plurals[kind], document, dry_run=DRY_RUN
        )
        return found
    core = client.CoreV1Api(api)
    create: dict[str, Callable[..., Any]] = {
        "Secret": core.create_namespaced_secret,
        "PersistentVolumeClaim": core.create_namespaced_persistent_volume_claim,
    }
    assert kind in create, f"no dry-run create for {kind}: add it here"
    created = create[kind](namespace, document, dry_run=DRY_RUN)
    out: dict[str, Any] = api.sanitize_for_serialization(created)
    return out


@pytest.mark.parametrize("name", FILES)
def test_every_document_of_the_example_is_accepted(api: client.ApiClient, namespace: str, name: str) -> None:
    problems = []
    for document in documents(name):
        where = f"{name}: {document['kind']}/{document['metadata']['name']}"
        try:
            stored = _dry_run_create(api, namespace, document)
        except ApiException as e:
            problems.append(f"{where}: refused ({e.status}): {e.body}")
            continue
        assert stored["metadata"]["namespace"] == namespace, where
        if document["kind"] == "Secret":  # stringData is write-only: it comes back as data
            assert set(stored["data"]) == set(document["stringData"]), where
            sent = {k: v for k, v in document.items() if k != "stringData"}
        else:
            sent = document
        assert covers(stored, sent), f"{where}: the server dropped or changed a field: {stored}"
    assert not problems, "\n".join(problems)
    # A dry run stores nothing.
    stored_flows = client.CustomObjectsApi(api).list_namespaced_custom_object(
        models.GROUP, models.VERSION, namespace, "datasetexports"
    )
    assert stored_flows["items"] == []


@pytest.mark.parametrize(("kind", "document", "field"), INVALID_SCHEMA)
def test_api_server_refuses_what_the_schema_limits(
    api: client.ApiClient, namespace: str, kind: type[models.Resource], document: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as caught:
        _dry_run_create(api, namespace, document)
    assert caught.value.status == 422
    assert field in caught.value.body
