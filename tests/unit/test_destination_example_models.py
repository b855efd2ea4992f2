"""examples/destinations/: each worked example parses with the product's own models, as ``dsexport validate`` and
local mode read it, and renders the identity it documents (tests/k8s/test_destination_examples.py has the API
server accept every document)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsexport import api
from dsexport.api.loader import Bundle, parse_documents
from dsexport.operator import desired

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "destinations"
FILES = ("s3-irsa.yaml", "gcs-workload-identity.yaml", "sftp-known-hosts.yaml", "azure-sas.yaml", "pvc-folder.yaml")
OTHER_KINDS = {"PersistentVolumeClaim"}
"""Kubernetes objects an example needs beside dsexport's, which local mode does not read."""


def documents(name: str) -> list[dict[str, Any]]:
    """The documents of one example, as ``kubectl apply -f`` sends them."""
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text(encoding="utf-8")) if d is not None]


def bundle(name: str) -> Bundle:
    """What local mode reads of an example: the dsexport kinds and the Secrets, references checked."""
    docs = documents(name)
    unknown = {d["kind"] for d in docs if d["apiVersion"] != api.API_VERSION and d["kind"] != "Secret"}
    assert unknown <= OTHER_KINDS, f"{name}: a kind the examples do not expect: {unknown - OTHER_KINDS}"
    read = [(f"{name}#{i + 1}", d) for i, d in enumerate(docs) if d["kind"] not in OTHER_KINDS]
    return parse_documents(read)


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
def test_each_example_parses_as_local_mode_reads_it(name: str) -> None:
    found = bundle(name)  # raises ManifestError with every problem, like dsexport validate
    assert (len(found.destinations), len(found.datasets), len(found.dataset_exports)) == (1, 1, 1)
    [flow] = found.dataset_exports.values()
    [destination] = found.destinations.values()
    assert flow.spec.destination_ref.name == destination.metadata.name
    assert all(d.metadata.namespace == "default" for d in (flow, destination))  # no namespace: kubectl -n decides


@pytest.mark.parametrize(
    ("name", "kind", "secret_keys"),
    [
        ("s3-irsa.yaml", api.DestinationType.s3, None),
        ("gcs-workload-identity.yaml", api.DestinationType.gcs, None),
        ("sftp-known-hosts.yaml", api.DestinationType.sftp, {"privateKey"}),
        ("azure-sas.yaml", api.DestinationType.azure_blob, {"sasToken"}),
        ("pvc-folder.yaml", api.DestinationType.filesystem, None),
    ],
)
def test_each_example_uses_its_backend_and_credentials(
    name: str, kind: api.DestinationType, secret_keys: set[str] | None
) -> None:
    found = bundle(name)
    [destination] = found.destinations.values()
    assert destination.spec.type == kind
    if secret_keys is None:
        assert destination.spec.credentials_secret_ref is None and not found.secrets
    else:
        assert set(found.secret(destination.spec.credentials_secret_ref)) == secret_keys


@pytest.mark.parametrize(
    ("name", "annotation"),
    [
        ("s3-irsa.yaml", "eks.amazonaws.com/role-arn"),
        ("gcs-workload-identity.yaml", "iam.gke.io/gcp-service-account"),
    ],
)
def test_workload_identity_examples_annotate_the_exporter_service_account(name: str, annotation: str) -> None:
    found = bundle(name)
    [flow] = found.dataset_exports.values()
    [destination] = found.destinations.values()
    plan = desired.desired(
        flow=flow,
        uid="0b1c2d3e-0000-4000-8000-000000000001",
        datasets=found.datasets,
        destination=destination,
        now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        settings=desired.Settings(),
    )
    assert not plan.problems
    [account] = [o for o in plan.objects if o["kind"] == "ServiceAccount"]
    assert account["metadata"]["name"] == f"{flow.metadata.name}-exporter"
    assert annotation in account["metadata"]["annotations"]
    for _, cron in plan.cron_jobs:  # the pods run as that account, mounting no Secret
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert not [v for v in pod["volumes"] if "secret" in v]


def test_sftp_trusts_only_the_listed_host_key() -> None:
    [destination] = bundle("sftp-known-hosts.yaml").destinations.values()
    assert destination.spec.sftp is not None
    [line] = destination.spec.sftp.known_hosts.strip().splitlines()
    host, key_type, key = line.split()
    assert (host, key_type) == (destination.spec.sftp.host, "ssh-ed25519") and key.startswith("AAAAC3NzaC1lZDI1NTE5")


def test_azure_keeps_the_account_url_out_of_the_secret() -> None:
    found = bundle("azure-sas.yaml")
    [destination] = found.destinations.values()
    assert destination.spec.azure_blob is not None
    assert destination.spec.azure_blob.account_url.startswith("https://")
    sas = found.secret(destination.spec.credentials_secret_ref)["sasToken"]
    permissions = dict(p.split("=", 1) for p in sas.split("&"))["sp"]
    assert set(permissions) == set("rwdl")  # what the azureBlob backend uses (docs/examples.md)


def test_claims_named_in_the_examples_are_defined_by_the_pvc_example() -> None:
    claims = {d["metadata"]["name"]: d for d in documents("pvc-folder.yaml") if d["kind"] == "PersistentVolumeClaim"}
    for name in FILES:
        found = bundle(name)
        named = {d.spec.source.claim_name for d in found.datasets.values()}
        named |= {d.spec.filesystem.claim_name for d in found.destinations.values() if d.spec.filesystem}
        assert named - {None} <= set(claims), name
    assert claims["exports"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["lake"]["spec"]["accessModes"] == ["ReadOnlyMany"]
