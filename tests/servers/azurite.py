"""Azurite as the real Azure Blob server, installed by ``tests/servers/install.sh`` from the pinned npm lock.

Azurite 3.35.0 is the newest release that runs on the machine's Node.js 20. It keeps its data in the workdir, so a
restart on the same port finds the container and blobs again; telemetry is off so nothing leaves the machine. It
knows one account, ``devstoreaccount1``, with a published key: fine for a loopback test server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from tests.servers import ProcessServer, ServerError, Target, free_port

PACKAGE = Path(__file__).parent / "azurite" / "package.json"
VERSION: str = json.loads(PACKAGE.read_text())["dependencies"]["azurite"]
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3Jvbmc="
CONTAINER = "exports"
MISSING_CONTAINER = "no-such-container"


def install_dir() -> Path:
    cache = Path(os.environ.get("DSEXPORT_CACHE") or Path.home() / ".cache" / "dsexport")
    return cache / f"azurite-{VERSION}"


def connection_string(port: int, key: str = ACCOUNT_KEY, host: str = "127.0.0.1") -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://{host}:{port}/{ACCOUNT};"
    )


def sas_token(permission: str = "racwdl", key: str = ACCOUNT_KEY, container: str = CONTAINER) -> str:
    """A container SAS token, as a user would paste it into the Secret's sasToken."""
    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=key,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )


def launch(workdir: Path, host: str = "127.0.0.1") -> Target:
    """Start Azurite's blob service on a free port of ``host`` (loopback; the node address for pods) with the
    container ``exports``."""
    binary = install_dir() / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise ServerError(f"Azurite {VERSION} is not installed at {binary}: run tests/servers/install.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    port = free_port()
    argv = [
        str(binary),
        "--blobHost",
        host,
        "--blobPort",
        str(port),
        "--location",
        str(workdir / "data"),
        "--skipApiVersionCheck",  # the SDK may speak a newer API version than this Azurite knows
        "--disableProductStyleUrl",  # the account is the first path segment, whatever the host
        "--disableTelemetry",
    ]

    def client() -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(
            connection_string(port, host=host), retry_total=0, connection_timeout=2, read_timeout=5
        )

    def ready() -> bool:
        """Serving requests, not just listening: each restart asks again, with a client of its own."""
        try:
            with client() as service:
                service.get_service_properties()
        except AzureError:
            return False
        return True

    server = ProcessServer(name="azurite", argv=argv, log=workdir / "azurite.log", ready=ready, cwd=workdir)
    server.start()
    with client() as service, contextlib.suppress(ResourceExistsError):
        service.create_container(CONTAINER)
    block = {"accountUrl": f"http://{host}:{port}/{ACCOUNT}", "container": CONTAINER}
    return Target(
        type="azureBlob",
        block=block,
        secret={"connectionString": connection_string(port, host=host)},
        wrong_secret={"connectionString": connection_string(port, WRONG_KEY, host)},
        missing_block={**block, "container": MISSING_CONTAINER},
        server=server,
    )
