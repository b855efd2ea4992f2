"""The product's image as users run it: built by `make image`, non-root with a read-only root and no
capabilities, and exporting exactly the source rows from inside the container.

Containers run with ``--network=none`` (an export to a mounted folder needs no network, and podman's default
network would add a bridge and iptables chains to the host) and podman's private configuration from
tests/image/build.sh, so nothing outside the test's own folders is touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from examples import sample
from tests.helpers import START, flow_yaml, read_committed_ids, source_ids

REPO = Path(__file__).resolve().parents[2]
UID = 65532
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
HARDENED = ["--network=none", "--read-only", f"--user={UID}", "--cap-drop=ALL", "--security-opt=no-new-privileges"]


def podman_env() -> dict[str, str]:
    cache = Path(os.environ.get("DSEXPORT_CACHE") or Path.home() / ".cache" / "dsexport")
    return {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(cache / "containers" / "storage.conf"),
        "CONTAINERS_CONF": str(cache / "containers" / "containers.conf"),
    }


def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """The image ID of dsexport:dev (built by make image before pytest; a no-op here unless inputs changed)."""
    built = subprocess.run(
        ["bash", str(REPO / "tests/image/build.sh")], capture_output=True, text=True, timeout=1800, check=False
    )
    assert built.returncode == 0, built.stderr[-3000:]
    yield built.stdout.strip()


def test_make_image_is_cached_and_tags_the_version(image: str) -> None:
    again = subprocess.run(
        ["bash", str(REPO / "tests/image/build.sh")], capture_output=True, text=True, timeout=120, check=True
    )
    assert again.stdout.strip() == image
    assert "building" not in again.stderr
    tagged = podman("image", "inspect", "--format", "{{.Id}}", f"dsexport:{VERSION}")
    assert tagged.stdout.strip() == image


def test_the_image_runs_as_a_numeric_non_root_user_with_oci_labels(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["dsexport"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "dsexport"
    assert labels["org.opencontainers.image.version"] == VERSION
    ran = podman("run", "--rm", *HARDENED, image, "--version")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("dsexport, version ")
    code = "import getpass, os; print(os.getuid(), getpass.getuser())"  # kopf asks for the user's name
    whoami = podman("run", "--rm", *HARDENED, "--entrypoint", "python3", image, "-c", code)
    assert whoami.stdout.split() == [str(UID), "nonroot"], whoami.stderr
    pinned = dict(p.split("==") for p in labels["io.dsexport.python-packages"].split(","))
    assert pinned["pyarrow"] and pinned["kopf"]  # the runtime requirements, for scanners and people
    assert len(pinned) == len(re.findall(r"^[A-Za-z0-9_.-]+==", (REPO / "requirements/runtime.txt").read_text(), re.M))


def test_an_export_inside_the_hardened_container_commits_exactly_the_source_rows(image: str, tmp_path: Path) -> None:
    src, dest = tmp_path / "lake", tmp_path / "dest"
    sample.write_files(src, files=3, rows_per_file=1_000, seed=3, start=START)
    dest.mkdir()
    os.chown(dest, UID, UID)  # the container's user writes here, nowhere else
    # The flow names the paths as the container sees them.
    flow = flow_yaml(tmp_path, source="/data/lake", dest=Path("/data/dest"))
    at = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC).isoformat()
    mounts = [
        f"--volume={src}:/data/lake:ro",
        f"--volume={dest}:/data/dest",
        f"--volume={flow}:/config/flow.yaml:ro",
    ]
    ran = podman("run", "--rm", *HARDENED, *mounts, image, "run", "-f", "/config/flow.yaml", "--at", at, "-o", "json")
    assert ran.returncode == 0, ran.stderr[-3000:]
    [result] = json.loads(ran.stdout)["results"]
    assert (result["outcome"], result["records"]) == ("exported", 3_000)
    assert sorted(read_committed_ids(dest)) == sorted(source_ids(src))
