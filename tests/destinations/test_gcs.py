"""What the gcs backend does beyond the transport contract, against fake-gcs-server: resumable streaming, service
account keys (taken, used, never shown), the missing bucket message, a whole export from a gs:// source to GCS,
and the byte copy of such a source inside the store (a rewrite). The contract itself (round trips, create-only,
retries, ...) is test_transport.py's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth.transport
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.destinations.conftest import Connect
from tests.destinations.contract import (
    OPERATIONS,
    Outcome,
    copied_from_the_store,
    count_retries,
    export_from_the_store,
    refusal,
    refused,
    write,
)
from tests.helpers import flow_yaml
from tests.servers import Target, fakegcs, free_port
from tests.servers.httpproxy import CountingProxy, Reply, Seen

from dsexport.api import loader
from dsexport.cli import local
from dsexport.destinations import StoredObject, gcs

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


def quiet_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch off the SDK's background lookup of bucket metadata (for its traces): it sends a request of its own,
    on a thread, at the first use of a bucket and again after every failed lookup, which would land in whichever
    operation a test is counting the requests of."""
    monkeypatch.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")


def sent(transport: gcs.GcsTransport, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(method, URL) of every HTTP request the transport sends from now on: each attempt, the SDK's own retries
    (of resumable upload chunks) included, since they all go through the client's one session."""
    session = transport._client._http
    send = session.request
    requests_: list[tuple[str, str]] = []

    def counting(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        requests_.append((method, url))
        return send(method, url, *args, **kwargs)

    monkeypatch.setattr(session, "request", counting)
    return requests_


def test_large_file_streams_as_a_resumable_upload(
    transport: gcs.GcsTransport, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests_ = sent(transport, monkeypatch)
    data = os.urandom(2 * gcs.CHUNK_SIZE + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    chunks = [url for method, url in requests_ if method == "PUT" and "upload_id=" in url]  # a session's chunks
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


def test_missing_bucket_fails_fast(connect: Connect, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """One request each, not retried: counted on the client's session, since an upload's requests are the SDK's."""
    quiet_sdk(monkeypatch)
    transport = connect(**target.missing_block)
    assert isinstance(transport, gcs.GcsTransport)
    requests_ = sent(transport, monkeypatch)
    for operation in (
        lambda: transport.list_prefixes(""),
        lambda: transport.put("x", b"1"),
        lambda: write(transport, "y", b"1"),
    ):
        before = len(requests_)
        error = refusal(operation)
        assert f"bucket {fakegcs.MISSING_BUCKET} does not exist" in str(error) and not error.transient
        assert len(requests_) - before == 1, requests_[before:]


# ------------------------------------------------------------- refused credentials, injected in front of the server
# fake-gcs-server accepts any credentials, so a counting proxy in front of it answers for a store that refuses them:
# it forwards everything else to the real server, serves the service account's token endpoint, and counts every
# request on the wire, the SDK's own retries included.

TOKEN = "ya29.dsexport-test-token-5f0e7c1a"


@pytest.fixture
def proxy(target: Target) -> Iterator[CountingProxy]:
    with CountingProxy(target.block["endpoint"]) as counting:
        yield counting


def token_endpoint(refuse: bool = False) -> Reply:
    if refuse:  # what Google answers for a deleted key, or a key of a deleted service account
        return Reply(
            400, json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
        )
    return Reply(200, json.dumps({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}).encode())


def gcs_error(status: int) -> Reply:
    message = {401: "Invalid Credentials", 403: "exporter does not have storage.objects.create access"}[status]
    errors = [{"message": message, "domain": "global", "reason": "required" if status == 401 else "forbidden"}]
    return Reply(status, json.dumps({"error": {"code": status, "message": message, "errors": errors}}).encode())


def is_token(seen: Seen) -> bool:
    return seen.path == "/token"


def is_store(seen: Seen) -> bool:
    return not is_token(seen)


PERMISSION_DENIED = f"permission denied: the service account needs {gcs.PERMISSIONS} on bucket {fakegcs.BUCKET}"
REFUSED = {
    (401, True): "credentials refused by the store at {endpoint}; check the Secret's serviceAccountJson",
    (403, True): PERMISSION_DENIED,
    (403, False): PERMISSION_DENIED,  # anonymous: what an emulator endpoint without a Secret is reached as
}


@pytest.mark.parametrize(("status", "with_key"), list(REFUSED), ids=["401", "403", "403-anonymous"])
def test_a_refusal_by_the_store_is_permanent_sent_once_and_shows_no_secret(
    connect: Connect, folder: str, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch, status: int, with_key: bool
) -> None:
    """Every operation of the commit protocol, refused by the store: a permanent DestinationError that says what to
    fix, with no key nor token in it, after one attempt: retry.call judged it once, and on the wire it was sent
    once. Only a 401 is sent again, by google-auth itself: it takes a 401 for an expired token, fetches a new one
    and resends, at most DEFAULT_MAX_REFRESH_ATTEMPTS times, at once; dsexport's retry policy adds nothing.
    The refused requests change nothing at the real server behind the proxy."""
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "10")  # a retrying regression fails in seconds, not a minute
    quiet_sdk(monkeypatch)
    key = service_account_key(f"{proxy.url}/token")
    proxy.answer = lambda _method, path: token_endpoint() if path == "/token" else None
    transport = connect({"serviceAccountJson": json.dumps(key)} if with_key else {}, endpoint=proxy.url)
    transport.put(f"{folder}/x", b"kept")  # through the proxy, to the real server
    assert [s.injected for s in proxy.seen(is_store)] == [False]

    proxy.answer = lambda _method, path: token_endpoint() if path == "/token" else gcs_error(status)
    failures = count_retries(monkeypatch)
    expected = REFUSED[status, with_key].format(endpoint=proxy.url)
    secrets = (key["private_key"].splitlines()[1], TOKEN)
    resends = google.auth.transport.DEFAULT_MAX_REFRESH_ATTEMPTS if status == 401 else 0
    for name, operation in OPERATIONS.items():
        requests_, tokens, judged = len(proxy.seen(is_store)), len(proxy.seen(is_token)), len(failures)
        error = refusal(functools.partial(operation, transport, folder), *secrets)
        assert (name, error.transient) == (name, False)
        assert expected in str(error), (name, str(error))
        assert len(proxy.seen(is_store)) - requests_ == 1 + resends, (name, proxy.seen(is_store)[requests_:])
        assert len(proxy.seen(is_token)) - tokens == (resends if with_key else 0), name
        # Uploads are sent by the SDK, outside retry.call; everything else is judged by it, once.
        assert len(failures) - judged == (0 if name.endswith("open_write") else 1), name

    proxy.answer = None
    assert transport.get(f"{folder}/x") == b"kept"
    assert list(transport.list_keys(folder)) == [f"{folder}/x"]


def test_a_key_refused_by_the_token_endpoint_is_permanent_asked_once_and_never_shown(
    connect: Connect, folder: str, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted key (or service account) is refused where the token is asked for, before the store is reached: a
    permanent failure naming the Secret, one token request per operation, no request to the store."""
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "10")
    quiet_sdk(monkeypatch)
    key = service_account_key(f"{proxy.url}/token")
    proxy.answer = lambda _method, path: token_endpoint(refuse=True) if path == "/token" else None
    transport = connect({"serviceAccountJson": json.dumps(key)}, endpoint=proxy.url)
    failures = count_retries(monkeypatch)
    for name, operation in OPERATIONS.items():
        asked, judged = len(proxy.seen(is_token)), len(failures)
        error = refusal(functools.partial(operation, transport, folder), key["private_key"].splitlines()[1])
        assert (name, error.transient) == (name, False)
        assert "credentials refused" in str(error) and "check the Secret's serviceAccountJson" in str(error), name
        assert len(proxy.seen(is_token)) - asked == 1, (name, proxy.seen(is_token)[asked:])
        assert len(failures) - judged == (0 if name.endswith("open_write") else 1), name
    assert proxy.seen(is_store) == []


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


def _stored(target: Target, key: str, size: int) -> StoredObject:
    return StoredObject("gs", target.block["endpoint"], fakegcs.BUCKET, key, size, None)


@pytest.mark.parametrize(
    ("same_store", "via"),
    [(True, "server-copy"), (False, "copy")],
    ids=["same-store-and-identity", "another-endpoint"],
)
def test_gs_source_files_are_copied_byte_for_byte(
    target: Target,
    transport: gcs.GcsTransport,
    tmp_path: Path,
    folder: str,
    monkeypatch: pytest.MonkeyPatch,
    same_store: bool,
    via: str,
) -> None:
    """From a gs:// source the byte copy makes the parts the source objects, byte for byte: inside the store (a
    rewrite: no data byte through the exporter) when the source is in the destination's store and both are read
    by the pod's own identity, else streamed through it (here: the same server under another name, which the
    exporter cannot tell is the same)."""
    quiet_sdk(monkeypatch)
    host = target.block["endpoint"].removeprefix("http://")
    if not same_store:
        host = host.replace("127.0.0.1", "localhost")
    copies = copied_from_the_store(
        transport,
        tmp_path,
        folder,
        source=f"gs://{fakegcs.BUCKET}/{folder}/lake/events?endpoint_override={host}",
        destination=target.destination_spec(),
        via=via,
    )
    for entry, _ in copies if via == "server-copy" else []:
        # The store computes MD5 and CRC32C, not SHA-256; its entity tag names the object's generation.
        assert entry["sha256"] is None
        assert entry["etag"]


def test_a_rewrite_sends_no_data_byte_and_gives_the_stores_size_and_tag(
    transport: gcs.GcsTransport, target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet_sdk(monkeypatch)
    data = os.urandom(3 << 20)
    transport.put(f"{folder}/src.bin", data)
    requests_ = sent(transport, monkeypatch)
    done = transport.server_copy(_stored(target, f"{folder}/src.bin", len(data)), f"{folder}/dst.bin")
    assert done is not None and (done.bytes, done.sha256) == (len(data), None)
    assert [method for method, url in requests_] == ["POST"] and "/rewriteTo/" in requests_[0][1]
    assert transport.get(f"{folder}/dst.bin") == data


def test_a_copy_inside_the_store_is_left_to_the_stream_when_it_cannot_be_made(
    transport: gcs.GcsTransport, target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another endpoint, store or identity: not tried (the destination's identity may not read the source); a
    source the store does not have: None too, and the stream that follows reports it as the source's problem."""
    quiet_sdk(monkeypatch)
    here = _stored(target, f"{folder}/x", 1)
    requests_ = sent(transport, monkeypatch)
    for elsewhere in (
        dataclasses.replace(here, endpoint="http://127.0.0.2:1"),
        dataclasses.replace(here, scheme="s3"),
        dataclasses.replace(here, identity="AKIA-someone"),
    ):
        assert transport.server_copy(elsewhere, f"{folder}/y") is None
    assert requests_ == []
    assert transport.server_copy(_stored(target, f"{folder}/missing", 1), f"{folder}/y") is None
    assert len(requests_) == 1  # tried once: a missing source is not worth a retry
    assert not transport.exists(f"{folder}/y")
