"""SeaweedFS as the real S3 server: ``weed mini`` runs master, volume, filer and S3 gateway in one process.

Every port it listens on is a free loopback port chosen here (its defaults are fixed numbers, and gRPC ports
default to HTTP port + 10000, which may be taken), telemetry is off so no traffic leaves the machine, and an
identities file makes it check signatures. Buckets are never created on the fly (``-s3.autoCreateBucket=false``):
a write to a missing bucket must fail as it would on AWS.

Quirks worth knowing: weed also opens gRPC Unix sockets ``/tmp/seaweedfs-*-grpc-<port>.sock`` (not configurable);
it saves its flags to ``data/mini.options`` and reads them back on a restart; and a folder emptied by deletes stays
in delimiter listings (CommonPrefixes) until its background cleanup runs, where S3 drops it at once.
"""

from __future__ import annotations

import json
import socket
import sysconfig
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

from tests.servers import ProcessServer, Target, free_port

BUCKET = "exports"
MISSING_BUCKET = "no-such-bucket"
REGION = "us-east-1"
ACCESS_KEY = "dsexport-test"
SECRET_KEY = "dsexport-test-secret-4f1c2b9a"  # a test-only identity of a loopback server
WEED = Path(sysconfig.get_path("scripts")) / "weed"

# weed mini's listeners, each given a port so none falls back to a fixed default.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
GRPC_OFFSET = 10_000  # weed's gRPC port = HTTP port + 10000 unless told otherwise


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> dict[str, int]:
    """Distinct free ports for every listener. The admin pair is chosen together: mini's maintenance worker dials
    the admin server at admin.port + 10000 whatever admin.port.grpc says."""
    ports: dict[str, int] = {}
    for flag in _PORT_FLAGS:
        while (port := free_port()) in ports.values():
            pass
        ports[flag] = port
    while True:
        port = free_port()
        grpc = port + GRPC_OFFSET
        if grpc <= 65_535 and not {port, grpc} & set(ports.values()) and _bindable(grpc):
            return ports | {"admin.port": port, "admin.port.grpc": grpc}


def launch(workdir: Path, host: str = "127.0.0.1") -> Target:
    """Start SeaweedFS in ``workdir`` with bucket ``exports`` and one identity allowed everything, listening on
    ``host`` (loopback; the node address for pods)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "dsexport",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    ports = _ports()
    endpoint = f"http://{host}:{ports['s3.port']}"
    argv = [
        str(WEED),
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.config={identities}",
        f"-bucket={BUCKET}",
        "-s3.autoCreateBucket=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them with the rest of this server.
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, connect_timeout=1),
    )

    def ready() -> bool:
        # Serving S3, identities loaded and the bucket created: a signed HEAD of the bucket succeeds.
        try:
            client.head_bucket(Bucket=BUCKET)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False
        finally:
            client.close()  # no pooled connection outlives the check (the client opens a new one next time)
        return True

    server = ProcessServer(name="seaweedfs", argv=argv, log=workdir / "weed.log", ready=ready, cwd=workdir)
    server.start()
    block = {"bucket": BUCKET, "endpoint": endpoint, "forcePathStyle": True, "region": REGION}
    return Target(
        type="s3",
        block=block,
        secret={"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY},
        wrong_secret={"accessKeyId": ACCESS_KEY, "secretAccessKey": "not-the-secret-8d02e1"},
        missing_block={**block, "bucket": MISSING_BUCKET},
        server=server,
    )
