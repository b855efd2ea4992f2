"""What the azureBlob backend does beyond the transport contract, against Azurite: block commits, connection
string versus SAS token, wrong keys, missing permissions and the missing container. The contract itself (round
trips, create-only, retries, ...) is test_transport.py's."""

from __future__ import annotations

import os

import pytest
from azure.storage.blob import ContainerClient
from tests.destinations.conftest import Connect
from tests.destinations.contract import NAME, count_retries, refused, refused_once, write
from tests.servers import Target, azurite, free_port

from dsexport import api
from dsexport.destinations import azure
from dsexport.destinations.azure import AzureBlobTransport

pytestmark = pytest.mark.parametrize("target", ["azureBlob"], indirect=True)


def _sas_signature(token: str) -> str:
    return next(part for part in token.split("&") if part.startswith("sig="))


def test_large_file_is_committed_from_blocks(transport: AzureBlobTransport, target: Target, folder: str) -> None:
    data = os.urandom((2 * azure.BLOCK_SIZE) + 12345)
    key = f"{folder}/ds/exportTime=202612010000/part-00000.parquet"
    write(transport, key, data)
    assert target.secret is not None
    with ContainerClient.from_connection_string(target.secret["connectionString"], azurite.CONTAINER) as client:
        assert len(client.get_blob_client(key).get_block_list()[0]) == 3  # staged blocks, not one upload


def test_sas_token(connect: Connect, folder: str) -> None:
    transport = connect({"sasToken": "?" + azurite.sas_token()})
    transport.put(f"{folder}/x", b"1", create_only=True)
    assert transport.get(f"{folder}/x") == b"1"
    assert "sig=" not in transport.describe()
    message = refused(lambda: connect({"sasToken": azurite.sas_token()}, accountUrl=""))
    assert "needs spec.azureBlob.accountUrl" in message


def test_wrong_account_key_is_refused_at_once(
    connect: Connect, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert target.wrong_secret is not None
    failures = count_retries(monkeypatch)
    message = str(refused_once(failures, lambda: connect(target.wrong_secret), azurite.WRONG_KEY))  # not retried
    assert "refused the credentials" in message


def test_wrong_sas_token_is_refused(connect: Connect) -> None:
    token = azurite.sas_token(key=azurite.WRONG_KEY)
    message = refused(lambda: connect({"sasToken": token}), _sas_signature(token))
    assert "refused the credentials" in message


def test_sas_token_without_write_permission(connect: Connect, folder: str) -> None:
    token = azurite.sas_token("rl")
    transport = connect({"sasToken": token})  # listing is allowed
    message = refused(lambda: transport.put(f"{folder}/x", b"1"), _sas_signature(token))
    assert "AuthorizationPermissionMismatch" in message
    assert "sp=racwdl" in message


def test_unreachable_service_does_not_quote_the_sas_signature(
    target: Target, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport error's text quotes the request URL, which carries a SAS token's signature."""
    monkeypatch.setenv("DSEXPORT_RETRY_DEADLINE", "2")
    monkeypatch.setenv("DSEXPORT_RETRY_ATTEMPTS", "100")
    nobody = {**target.block, "accountUrl": f"http://127.0.0.1:{free_port()}/{azurite.ACCOUNT}"}
    token = azurite.sas_token()
    with_sas = AzureBlobTransport(NAME, api.AzureBlob.model_validate(nobody), {"sasToken": token})
    assert "retries ran out" in refused(lambda: with_sas.get(f"{folder}/x"), _sas_signature(token))


def test_bad_connection_string(connect: Connect) -> None:
    message = refused(lambda: connect({"connectionString": "AccountKey=abc"}), "AccountKey=abc")
    assert "connectionString" in message
    assert "needs a connectionString or a sasToken" in refused(lambda: connect({}))


def test_missing_container_fails_fast(connect: Connect, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = count_retries(monkeypatch)
    message = str(refused_once(failures, lambda: connect(**target.missing_block)))
    assert f"container {azurite.MISSING_CONTAINER} does not exist" in message
