"""What the gcs backend does beyond the transport contract, against fake-gcs-server: resumable streaming, service
account keys (taken, used, never shown), the missing bucket message, and a whole export from a gs:// source to
GCS. The contract itself (round trips, create-only, retries, ...) is test_transport.py's."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.destinations.conftest import Connect
from tests.destinations.contract import Outcome, export_from_the_store, refused, write
from tests.helpers import flow_yaml
from tests.servers import Target, fakegcs, free_port

from dsexport.api import loader
from dsexport.cli import local
from dsexport.destinations import gcs

pytestmark = pytest.mark.parametrize("target", ["gcs"], indirect=True)


def service_account_key(token_uri: str) -> dict[str, str]:
    """A well-formed key of a service account that does not exist: enough for the client to ask ``token_uri``."""
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "type": "service_account",
        "project_id": "dsexport-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem.decode(),
        "client_email": "exporter@dsexport-test.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }


def test_large_file_streams_as_a_resumable_upload(
    transport: gcs.GcsTransport, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = transport._client._http  # the HTTP session every request of the transport goes through
    send = session.request
    chunks: list[str] = []

    def counting(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method == "PUT" and "upload_id=" in url:  # a chunk of a resumable upload session
            chunks.append(url)
        return send(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", counting)
    data = os.urandom(2 * gcs.CHUNK_SIZE + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    assert len(chunks) == 3  # two full chunks while writing, the rest when the block exits
    assert transport.get(key) == data


def test_bad_service_account_json_is_described_not_echoed(connect: Connect) -> None:
    private = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    not_json = '{"type": "service_account", "private_key": "' + private  # cut short, as a bad paste is
    assert "not valid JSON" in refused(lambda: connect({"serviceAccountJson": not_json}), "MIIEvQIBAD")
    user = json.dumps({"type": "authorized_user", "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty"})
    assert "not a service account key" in refused(
        lambda: connect({"serviceAccountJson": user}), "d-FL95Q19q7MQmFpd7hHD0Ty"
    )
    broken = json.dumps({**service_account_key("http://127.0.0.1:1/token"), "private_key": private})
    assert "not a usable service account key" in refused(lambda: connect({"serviceAccountJson": broken}), "MIIEvQIBAD")


def test_service_account_key_is_used_and_never_shown(
    connect: Connect, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A well-formed key is taken, and used: its token endpoint (down here) is asked before the store is."""
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "1")
    key = service_account_key(f"http://127.0.0.1:{free_port()}/token")
    transport = connect({"serviceAccountJson": json.dumps(key)})
    secret_line = key["private_key"].splitlines()[1]
    message = refused(lambda: transport.put(f"{folder}/x", b"1"), secret_line)
    assert "could not get an access token, retries ran out" in message


def test_missing_bucket_fails_fast(connect: Connect, target: Target) -> None:
    transport = connect(**target.missing_block)
    started = time.monotonic()
    for operation in (
        lambda: transport.list_prefixes(""),
        lambda: transport.put("x", b"1"),
        lambda: write(transport, "y", b"1"),
    ):
        assert f"bucket {fakegcs.MISSING_BUCKET} does not exist" in refused(operation)
    assert time.monotonic() - started < 10


def test_gs_source_exports_to_gcs_locally(
    target: Target, transport: gcs.GcsTransport, tmp_path: Path, folder: str
) -> None:
    host = target.block["endpoint"].removeprefix("http://")
    flow = flow_yaml(
        tmp_path,
        source=f"gs://{fakegcs.BUCKET}/{folder}/lake/events?endpoint_override={host}",
        destination=target.destination_spec(),
        folder=f"{folder}/out",
        max_records=2_000,
    )

    def run(at: dt.datetime) -> Outcome:
        bundle = loader.load_files([flow])
        [result] = local.run(bundle, local.requests(bundle, at=at))
        return result.outcome, result.records, result.files, result.message

    export_from_the_store(transport, folder, tmp_path, seed=7, run=run)
