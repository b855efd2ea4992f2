"""The azureBlob backend against Azurite: block commits, create-only puts, credentials, missing container, retries."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from tests.servers import ProcessServer, Target, azurite, wait_until

from dsexport import resources
from dsexport.destinations import AlreadyExistsError, DestinationError, azure, open_transport
from dsexport.destinations.azure import AzureBlobTransport

NAME = "Destination/partner-azure"


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = azurite.launch(tmp_path_factory.mktemp("azurite"))
    yield target
    assert target.server is not None
    target.server.stop()


@pytest.fixture
def server(target: Target) -> Iterator[ProcessServer]:
    """The server, running again after the test whatever the test did to it."""
    assert target.server is not None
    yield target.server
    target.server.start()


def connect(target: Target, secret: dict[str, str] | None = None, **block: Any) -> AzureBlobTransport:
    destination = resources.Destination.model_validate(
        {
            "metadata": {"name": "partner-azure"},
            "spec": {
                "type": "azureBlob",
                "azureBlob": {**target.block, **block},
                "credentialsSecretRef": {"name": "creds"},
            },
        }
    )
    credentials = target.secret if secret is None else secret
    assert credentials is not None
    transport = open_transport(destination, credentials)
    assert isinstance(transport, AzureBlobTransport)
    return transport


@pytest.fixture
def transport(target: Target) -> Iterator[AzureBlobTransport]:
    transport = connect(target)
    yield transport
    transport.close()


@pytest.fixture
def folder() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def refused(fn: Any, *secrets: str) -> str:
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


def _sas_signature(token: str) -> str:
    return next(part for part in token.split("&") if part.startswith("sig="))


def _write(transport: AzureBlobTransport, key: str, data: bytes) -> None:
    with transport.open_write(key) as out:
        view = memoryview(data)
        for start in range(0, len(data), 1 << 20):
            out.write(view[start : start + (1 << 20)])


def test_large_file_is_committed_from_blocks(transport: AzureBlobTransport, target: Target, folder: str) -> None:
    data = os.urandom((2 * azure.BLOCK_SIZE) + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    _write(transport, key, data)
    assert transport.get(key) == data
    assert transport.exists(key)
    assert list(transport.list_keys(folder)) == [key]
    assert target.secret is not None
    with ContainerClient.from_connection_string(target.secret["connectionString"], azurite.CONTAINER) as client:
        assert len(client.get_blob_client(key).get_block_list()[0]) == 3  # staged blocks, not one upload


def test_small_file_round_trip(transport: AzureBlobTransport, folder: str) -> None:
    _write(transport, f"{folder}/small.json", b'{"a": 1}\n')
    _write(transport, f"{folder}/empty.json", b"")
    assert transport.get(f"{folder}/small.json") == b'{"a": 1}\n'
    assert transport.get(f"{folder}/empty.json") == b""


def test_error_inside_open_write_commits_nothing(transport: AzureBlobTransport, folder: str) -> None:
    key = f"{folder}/part-00000.parquet"
    with pytest.raises(RuntimeError, match="encoder failed"), transport.open_write(key) as out:
        out.write(os.urandom(azure.BLOCK_SIZE + 1000))  # one block already staged
        raise RuntimeError("encoder failed")
    assert not transport.exists(key)
    assert transport.get(key) is None
    assert list(transport.list_keys(folder)) == []


def test_put_create_only_refuses_the_second_writer(transport: AzureBlobTransport, folder: str) -> None:
    key = f"{folder}/_manifest.json"
    transport.put(key, b"first", create_only=True)
    with pytest.raises(AlreadyExistsError) as info:
        transport.put(key, b"second", create_only=True)
    assert str(info.value).startswith(f"{NAME}: ")
    assert transport.get(key) == b"first"
    transport.put(key, b"third")  # a plain put replaces
    assert transport.get(key) == b"third"


def test_list_and_delete(transport: AzureBlobTransport, folder: str) -> None:
    keys = [f"{folder}/a/1", f"{folder}/b/2", f"{folder}/b/c/3", f"{folder}/b/.4.tmp-0123"]
    for key in keys:
        transport.put(key, key.encode())
    assert transport.list_prefixes(folder) == ["a", "b"]
    assert transport.list_prefixes(f"{folder}/b") == ["c"]
    assert transport.list_prefixes(f"{folder}/nothing") == []
    assert folder in transport.list_prefixes("")
    assert list(transport.list_keys(f"{folder}/b")) == sorted(keys[1:])
    assert list(transport.list_keys(folder)) == sorted(keys)
    transport.delete([f"{folder}/a/1", f"{folder}/b/c/3", f"{folder}/never-there"])
    assert transport.list_prefixes(folder) == ["b"]
    assert list(transport.list_keys(folder)) == sorted([keys[1], keys[3]])
    assert transport.get(f"{folder}/a/1") is None


def test_sas_token(target: Target, folder: str) -> None:
    transport = connect(target, {"sasToken": "?" + azurite.sas_token()})
    transport.put(f"{folder}/x", b"1", create_only=True)
    assert transport.get(f"{folder}/x") == b"1"
    assert "sig=" not in transport.describe()
    transport.close()
    message = refused(lambda: connect(target, {"sasToken": azurite.sas_token()}, accountUrl=""))
    assert "needs spec.azureBlob.accountUrl" in message


def test_wrong_account_key_is_refused_at_once(target: Target) -> None:
    assert target.wrong_secret is not None
    started = time.monotonic()
    message = refused(lambda: connect(target, target.wrong_secret), azurite.WRONG_KEY)
    assert time.monotonic() - started < 10  # not retried
    assert "refused the credentials" in message


def test_wrong_sas_token_is_refused(target: Target) -> None:
    token = azurite.sas_token(key=azurite.WRONG_KEY)
    message = refused(lambda: connect(target, {"sasToken": token}), _sas_signature(token))
    assert "refused the credentials" in message


def test_sas_token_without_write_permission(target: Target, folder: str) -> None:
    token = azurite.sas_token("rl")
    transport = connect(target, {"sasToken": token})  # listing is allowed
    message = refused(lambda: transport.put(f"{folder}/x", b"1"), _sas_signature(token))
    assert "AuthorizationPermissionMismatch" in message
    assert "sp=racwdl" in message


def test_bad_connection_string(target: Target) -> None:
    message = refused(lambda: connect(target, {"connectionString": "AccountKey=abc"}), "AccountKey=abc")
    assert "connectionString" in message
    assert "needs a connectionString or a sasToken" in refused(lambda: connect(target, {}))


def test_missing_container_fails_fast(target: Target) -> None:
    started = time.monotonic()
    message = refused(lambda: connect(target, **target.missing_block))
    assert time.monotonic() - started < 10
    assert f"container {azurite.MISSING_CONTAINER} does not exist" in message


def test_unreachable_service_is_retried(
    transport: AzureBlobTransport, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server goes away between two writes and comes back while the second one is being retried."""
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "30")
    transport.put(f"{folder}/before", b"1")
    failures: list[BaseException] = []
    transient = azure._transient

    def counting(e: BaseException) -> bool:
        failures.append(e)
        return transient(e)

    monkeypatch.setattr(azure, "_transient", counting)
    server.stop()
    errors: list[BaseException] = []
    data = os.urandom(azure.BLOCK_SIZE + 1000)

    def write() -> None:
        try:
            _write(transport, f"{folder}/after", data)
        except BaseException as e:
            errors.append(e)

    # The write runs on a thread and the server restarts on this one: a server dies with the thread that
    # started it (PR_SET_PDEATHSIG), so it must not be a short-lived one.
    thread = threading.Thread(target=write)
    thread.start()
    wait_until(lambda: len(failures) >= 2, timeout=30, what="the client to retry")
    server.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert transport.get(f"{folder}/after") == data
    assert transport.get(f"{folder}/before") == b"1"  # the data survived the restart


def test_service_gone_for_good_fails_within_the_deadline(
    transport: AzureBlobTransport, target: Target, server: ProcessServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "2")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    server.stop()
    started = time.monotonic()
    message = refused(lambda: transport.put(f"{folder}/x", b"1"))
    assert time.monotonic() - started < 15
    assert "retries ran out" in message
    # A transport error's text quotes the request URL, which carries a SAS token's signature.
    token = azurite.sas_token()
    with_sas = AzureBlobTransport(NAME, resources.AzureBlob.model_validate(target.block), {"sasToken": token})
    assert "retries ran out" in refused(lambda: with_sas.get(f"{folder}/x"), _sas_signature(token))
