"""The gcs backend against fake-gcs-server: resumable streaming, create-only puts, listings, the messages a user
gets for a broken key or bucket, retries across an outage, and a whole export from a gs:// source to GCS."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage  # type: ignore[import-untyped]
from tests.helpers import START, assert_only_committed_files, committed, flow_yaml, read_committed_ids, source_ids
from tests.servers import ProcessServer, Target, fakegcs, free_port, wait_until

from dsexport import local, manifests, resources, sample
from dsexport.destinations import AlreadyExistsError, DestinationError, gcs, open_transport
from dsexport.exporter import DatasetResult

NAME = "Destination/partner-gcs"
MiB = 1 << 20


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = fakegcs.launch(tmp_path_factory.mktemp("fakegcs"))
    yield target
    assert target.server is not None
    target.server.stop()


@pytest.fixture
def server(target: Target) -> Iterator[ProcessServer]:
    """The server, running again after the test whatever the test did to it."""
    assert target.server is not None
    yield target.server
    target.server.start()


@pytest.fixture
def connect(target: Target) -> Iterator[Callable[..., gcs.GcsTransport]]:
    """Opens transports to the server (the target's settings, or these) and closes them after the test."""
    opened: list[gcs.GcsTransport] = []

    def open_(secret: dict[str, str] | None = None, **block: Any) -> gcs.GcsTransport:
        spec: dict[str, Any] = {"type": "gcs", "gcs": {**target.block, **block}}
        if secret is not None:
            spec["credentialsSecretRef"] = {"name": "creds"}
        destination = resources.Destination.model_validate({"metadata": {"name": "partner-gcs"}, "spec": spec})
        transport = open_transport(destination, secret or {})
        assert isinstance(transport, gcs.GcsTransport)
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(connect: Callable[..., gcs.GcsTransport]) -> gcs.GcsTransport:
    return connect()


@pytest.fixture
def folder() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def refused(fn: Callable[[], object], *secrets: str) -> str:
    """The DestinationError message of ``fn()``; no secret in it nor in any exception it chains, even hidden."""
    with pytest.raises(DestinationError) as info:
        fn()
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    text = "\n".join(f"{e!r} {e.args!r}" for e in chain)
    for secret in secrets:
        assert secret not in text
    assert info.value.__cause__ is None
    message = str(info.value)
    assert message.startswith(f"{NAME}: ")
    return message


def write(transport: gcs.GcsTransport, key: str, data: bytes) -> None:
    """As the write-behind sink does: 1 MiB memoryviews."""
    with transport.open_write(key) as out:
        view = memoryview(data)
        for start in range(0, len(data), MiB):
            out.write(view[start : start + MiB])


def service_account_key(token_uri: str) -> dict[str, str]:
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
    assert transport.exists(key)


def test_small_file_round_trip(transport: gcs.GcsTransport, folder: str) -> None:
    write(transport, f"{folder}/small.json", b'{"a": 1}\n')
    write(transport, f"{folder}/empty.json", b"")
    assert transport.get(f"{folder}/small.json") == b'{"a": 1}\n'
    assert transport.get(f"{folder}/empty.json") == b""


@pytest.mark.parametrize("size", [100, gcs.CHUNK_SIZE + 1000], ids=["buffered", "one-chunk-uploaded"])
def test_error_inside_open_write_commits_nothing(transport: gcs.GcsTransport, folder: str, size: int) -> None:
    key = f"{folder}/part-00000.parquet"
    with pytest.raises(RuntimeError, match="encoder failed"), transport.open_write(key) as out:
        out.write(os.urandom(size))
        raise RuntimeError("encoder failed")
    assert not transport.exists(key)
    assert transport.get(key) is None
    assert list(transport.list_keys(folder)) == []


def test_put_create_only_refuses_the_second_writer(transport: gcs.GcsTransport, folder: str) -> None:
    key = f"{folder}/_manifest.json"
    transport.put(key, b"first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        transport.put(key, b"second", create_only=True)
    assert str(info.value).startswith(f"{NAME}: ")
    assert transport.get(key) == b"first"
    transport.put(key, b"third")  # a plain put replaces
    assert transport.get(key) == b"third"


def test_create_only_put_whose_response_was_lost_still_succeeds(
    transport: gcs.GcsTransport, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt lands but its answer is lost; the retry finds our own bytes, which is no conflict."""
    upload = storage.Blob.upload_from_string
    lost: list[bool] = []

    def answer_lost(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = upload(self, *args, **kwargs)
        if not lost:
            lost.append(True)
            raise requests.ConnectionError("connection reset by peer")
        return response

    monkeypatch.setattr(storage.Blob, "upload_from_string", answer_lost)
    transport.put(f"{folder}/_manifest.json", b"ours", create_only=True)
    assert lost and transport.get(f"{folder}/_manifest.json") == b"ours"
    with pytest.raises(AlreadyExistsError):  # a second writer still loses
        transport.put(f"{folder}/_manifest.json", b"theirs", create_only=True)


def test_list_and_delete(transport: gcs.GcsTransport, folder: str) -> None:
    keys = [f"{folder}/a/1", f"{folder}/b/2", f"{folder}/b/c/3", f"{folder}/b/.4.tmp-0123"]
    for key in keys:
        transport.put(key, key.encode())
    assert transport.list_prefixes(folder) == ["a", "b"]
    assert transport.list_prefixes(f"{folder}/b") == ["c"]
    assert transport.list_prefixes(f"{folder}/nothing") == []
    assert folder in transport.list_prefixes("")
    assert list(transport.list_keys(f"{folder}/b")) == sorted(keys[1:])
    assert list(transport.list_keys(f"{folder}/b/c/3")) == []  # a folder, not a name prefix
    transport.delete([f"{folder}/a/1", f"{folder}/b/c/3", f"{folder}/never-there"])
    transport.delete([])
    assert transport.list_prefixes(folder) == ["b"]
    assert list(transport.list_keys(folder)) == sorted([keys[1], keys[3]])
    assert transport.exists(keys[1]) and not transport.exists(f"{folder}/a/1") and not transport.exists(folder)


def test_bad_service_account_json_is_described_not_echoed(connect: Callable[..., gcs.GcsTransport]) -> None:
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
    connect: Callable[..., gcs.GcsTransport], folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A well-formed key is taken, and used: its token endpoint (down here) is asked before the store is."""
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "1")
    key = service_account_key(f"http://127.0.0.1:{free_port()}/token")
    transport = connect({"serviceAccountJson": json.dumps(key)})
    secret_line = key["private_key"].splitlines()[1]
    message = refused(lambda: transport.put(f"{folder}/x", b"1"), secret_line)
    assert "could not get an access token, retries ran out" in message


def test_missing_bucket_fails_fast(connect: Callable[..., gcs.GcsTransport], target: Target) -> None:
    transport = connect(**target.missing_block)
    started = time.monotonic()
    for operation in (
        lambda: transport.list_prefixes(""),
        lambda: transport.put("x", b"1"),
        lambda: write(transport, "y", b"1"),
    ):
        assert f"bucket {fakegcs.MISSING_BUCKET} does not exist" in refused(operation)
    assert time.monotonic() - started < 10


def test_unreachable_store_is_retried(
    transport: gcs.GcsTransport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes away between two writes and comes back while the second one is being retried."""
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "30")
    transport.put(f"{folder}/before", b"1")  # leaves a pooled connection that the restart breaks
    failures: list[BaseException] = []
    transient = gcs._transient

    def counting(e: BaseException) -> bool:
        failures.append(e)
        return transient(e)

    monkeypatch.setattr(gcs, "_transient", counting)
    server.stop()
    errors: list[BaseException] = []

    def put() -> None:
        try:
            transport.put(f"{folder}/_manifest.json", b"after", create_only=True)
        except BaseException as e:
            errors.append(e)

    # The write runs on a thread and the server restarts on this one: a server dies with the thread that
    # started it (PR_SET_PDEATHSIG), so it must not be a short-lived one.
    thread = threading.Thread(target=put)
    thread.start()
    wait_until(lambda: len(failures) >= 2, timeout=30, what="the client to retry")
    server.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert transport.get(f"{folder}/_manifest.json") == b"after"
    assert transport.get(f"{folder}/before") == b"1"  # the data survived the restart


def test_store_gone_for_good_fails_within_the_deadline(
    transport: gcs.GcsTransport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "2")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    server.stop()
    started = time.monotonic()
    message = refused(lambda: transport.put(f"{folder}/x", b"1"))
    assert time.monotonic() - started < 15
    assert "did not answer, retries ran out" in message


def test_gs_source_exports_to_gcs_locally(
    target: Target, transport: gcs.GcsTransport, tmp_path: Path, folder: str
) -> None:
    lake = tmp_path / "lake"
    next_id = sample.write_files(lake, files=3, rows_per_file=1_500, seed=7, start=START)

    def upload_lake() -> None:
        for f in sorted(lake.glob("*.parquet")):
            if not transport.exists(f"{folder}/lake/events/{f.name}"):
                transport.put(f"{folder}/lake/events/{f.name}", f.read_bytes())

    upload_lake()
    host = target.block["endpoint"].removeprefix("http://")
    flow = flow_yaml(
        tmp_path,
        source=f"gs://{fakegcs.BUCKET}/{folder}/lake/events?endpoint_override={host}",
        destination=target.destination_spec(),
        folder=f"{folder}/out",
        max_records=2_000,
    )

    def run(at: dt.datetime) -> DatasetResult:
        bundle = manifests.load_files([flow])
        [result] = local.run(bundle, local.requests(bundle, at=at))
        return result

    at = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    first = run(at)
    assert (first.outcome, first.records, first.files) == ("exported", 4_500, 3), first.message
    assert run(at + dt.timedelta(hours=3)).outcome == "no-new-data"
    sample.write_files(lake, files=1, rows_per_file=700, seed=8, start=START + dt.timedelta(days=1), id_offset=next_id)
    upload_lake()
    third = run(at + dt.timedelta(hours=6))
    assert (third.outcome, third.records) == ("exported", 700), third.message

    assert [m["records"] for m in committed(transport, folder=f"{folder}/out")] == [4_500, 700]
    assert sorted(read_committed_ids(transport, folder=f"{folder}/out")) == sorted(source_ids(lake))
    assert_only_committed_files(transport, folder=f"{folder}/out")
