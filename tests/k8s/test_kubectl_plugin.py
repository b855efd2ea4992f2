"""``kubectl dsexport`` against a real API server (no operator): the annotations it sets are exactly the ones the
operator acts on, the status it prints is the status the operator writes, and what goes wrong (a missing object,
missing RBAC, no answer from the operator) reads as one line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes import client
from tests.cluster.control_plane import ControlPlane
from tests.crd_cases import DATASET, DATASET_EXPORT, DESTINATION, edited
from tests.k8s.conftest import create_namespace

from dsexport.api import GROUP, VERSION
from dsexport.api.status import DatasetExportStatus, DestinationStatus
from dsexport.cli.kubectl import main
from dsexport.operator.checks import CHECK_NOW
from dsexport.operator.reconcile import RESET, RUN_NOW

FLOW = DATASET_EXPORT["metadata"]["name"]  # marketing-daily: datasets web-events and orders
DEST = DESTINATION["metadata"]["name"]
MERGE = "application/merge-patch+json"


@pytest.fixture
def namespace(api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """A namespace holding a Dataset, a Destination and a DatasetExport (valid specs, nothing reconciles them)."""
    name = create_namespace(api, "kp")
    custom = client.CustomObjectsApi(api)
    for plural, document in [
        ("datasets", DATASET),
        ("datasets", edited(DATASET, "metadata.name", "orders")),
        ("destinations", DESTINATION),
        ("datasetexports", DATASET_EXPORT),
    ]:
        body = {**document, "metadata": {**document["metadata"], "namespace": name}}
        custom.create_namespaced_custom_object(GROUP, VERSION, name, plural, body)
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)


def plugin(kubeconfig: Path, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--kubeconfig", str(kubeconfig), "-n", namespace, *args])


def annotations_of(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, str]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return dict(obj["metadata"].get("annotations") or {})


def write_status(api: client.ApiClient, namespace: str, plural: str, name: str, status: dict[str, Any]) -> None:
    """What the operator would write, through the status subresource (the main resource ignores status)."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": status}, _content_type=MERGE
    )


def assert_clean_failure(result: Result, code: int) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)  # not an exception escaping as a traceback
    assert "Traceback" not in result.output


def test_run_now_sets_a_new_value_each_time(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    first = plugin(kubeconfig, namespace, "run-now", FLOW)
    assert first.exit_code == 0, first.output
    value = annotations_of(api, namespace, "datasetexports", FLOW)[RUN_NOW]
    assert f"{RUN_NOW}={value}" in first.stdout
    assert f"kubectl dsexport status {FLOW} -n {namespace}" in first.stdout

    second = plugin(kubeconfig, namespace, "run-now", FLOW)
    assert second.exit_code == 0, second.output
    again = annotations_of(api, namespace, "datasetexports", FLOW)[RUN_NOW]
    assert again != value  # the operator acts once per value: a second request must not look like the first
    assert len(again) == len("20261130T200501.123456Z")
    assert again.endswith("Z")


def test_reset_sets_the_datasets_and_warns_of_duplicates(
    api: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    result = plugin(kubeconfig, namespace, "reset", FLOW, "orders", "web-events", "orders")
    assert result.exit_code == 0, result.output
    assert annotations_of(api, namespace, "datasetexports", FLOW)[RESET] == "orders,web-events"
    assert "full backfill" in result.stderr
    assert "duplicates" in result.stderr


def test_reset_of_an_unknown_dataset_sets_nothing(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    result = plugin(kubeconfig, namespace, "reset", FLOW, "web-events", "clicks")
    assert_clean_failure(result, 2)
    assert "clicks not in spec.datasets" in result.stderr
    assert "web-events, orders" in result.stderr  # the valid names, so the user can correct the command
    assert RESET not in annotations_of(api, namespace, "datasetexports", FLOW)


def test_a_missing_flow_is_one_line(kubeconfig: Path, namespace: str) -> None:
    for args in (["run-now", "nope"], ["status", "nope"], ["reset", "nope", "x"]):
        result = plugin(kubeconfig, namespace, *args)
        assert_clean_failure(result, 1)
        assert result.stderr == f"error: DatasetExport nope not found in namespace {namespace}\n"
    result = plugin(kubeconfig, namespace, "check", "nope")
    assert_clean_failure(result, 1)
    assert result.stderr == f"error: Destination nope not found in namespace {namespace}\n"


STATUS = DatasetExportStatus.model_validate(
    {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Scheduled",
                "message": "2 CronJob(s) export 2 dataset(s)",
                "lastTransitionTime": "2026-11-30T20:00:00Z",
            }
        ],
        "schedule": "daily at 09:30",
        "cron": "30 9 * * *",
        "nextExportTime": "2026-12-01T09:30:00Z",
        "cronJobs": [
            {"name": "marketing-daily-a", "schedule": "30 9 * * *", "datasets": ["web-events"]},
            {"name": "marketing-daily-b", "schedule": "0 */3 * * *", "datasets": ["orders"]},
        ],
        "lastExport": {
            "job": "marketing-daily-a-29000000",
            "exportTime": "202611300930",
            "start": "2026-11-30T09:30:01Z",
            "end": "2026-11-30T09:31:12Z",
            "result": "Succeeded",
            "records": 1234567,
            "bytes": 5 * 2**20,
            "files": 2,
        },
        "datasets": [
            {
                "name": "web-events",
                "datasetId": "6a1f0c2e9d3b4e00",
                "watermark": "2026-11-30T09:15:00Z",
                "lastExportTime": "202611300930",
                "lastOutcome": "exported",
                "lastRunTime": "2026-11-30T09:31:12Z",
                "runs": 3,
                "failures": 1,
                "records": 1234567,
                "bytes": 5 * 2**20,
                "files": 2,
            }
        ],
    }
).model_dump(mode="json", by_alias=True, exclude_none=True)


def test_status_shows_each_dataset(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    write_status(api, namespace, "datasetexports", FLOW, STATUS)
    result = plugin(kubeconfig, namespace, "status", FLOW)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"DatasetExport: {namespace}/{FLOW}" in out
    assert "Ready:         True (Scheduled): 2 CronJob(s) export 2 dataset(s)" in out
    assert "daily at 09:30 (cron 30 9 * * *, UTC)" in out
    assert "Next export:   2026-12-01T09:30:00Z" in out
    assert "Job marketing-daily-a-29000000 Succeeded at 2026-11-30T09:31:12Z (1,234,567 records, 5.0 MiB" in out
    assert "marketing-daily-b (cron 0 */3 * * *): orders" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for column in ("DATASET", "WATERMARK", "LAST", "EXPORTTIME", "OUTCOME", "RUNS", "FAILURES", "BYTES", "NEXT"):
        assert column in rows["DATASET"]
    assert rows["web-events"] == [
        "web-events",
        "2026-11-30T09:15:00Z",
        "202611300930",
        "exported",
        "3",
        "1",
        "1,234,567",
        "5.0",
        "MiB",
        "2",
        "2026-12-01T09:30:00Z",
    ]
    # in spec.datasets, not exported yet: a row of dashes (and the flow's next export)
    assert rows["orders"] == ["orders", *["-"] * 8, "2026-12-01T09:30:00Z"]


def test_status_as_json_is_the_status(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    write_status(api, namespace, "datasetexports", FLOW, STATUS)
    result = plugin(kubeconfig, namespace, "status", FLOW, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == STATUS


def test_status_before_the_operator_reported(kubeconfig: Path, namespace: str) -> None:
    result = plugin(kubeconfig, namespace, "status", FLOW)
    assert result.exit_code == 0, result.output
    assert "Ready:         unknown (the operator has not reported yet)" in result.stdout
    assert "Last export:   -" in result.stdout


def test_check_sets_the_annotation(api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    result = plugin(kubeconfig, namespace, "check", DEST)
    assert result.exit_code == 0, result.output
    value = annotations_of(api, namespace, "destinations", DEST)[CHECK_NOW]
    assert f"{CHECK_NOW}={value}" in result.stdout


def test_check_wait_gives_up_when_no_operator_answers(kubeconfig: Path, namespace: str) -> None:
    started = time.monotonic()
    result = plugin(kubeconfig, namespace, "check", DEST, "--wait", "--timeout", "2")
    assert_clean_failure(result, 1)
    assert 2 <= time.monotonic() - started < 10
    assert "timed out after 2s waiting for the operator to check Destination" in result.stderr
    assert "is the operator running?" in result.stderr


@pytest.mark.parametrize(
    ("available", "reason", "message", "code"),
    [
        ("True", "CheckSucceeded", "s3://b/f: write, create-only, read, list, delete succeeded", 0),
        ("False", "CheckFailed", "delete: AccessDenied", 1),
    ],
)
def test_check_wait_prints_the_operators_answer(
    api: client.ApiClient, kubeconfig: Path, namespace: str, available: str, reason: str, message: str, code: int
) -> None:
    """The operator's part played by a thread: once the annotation appears, write a newer lastCheckTime."""
    before = DestinationStatus.model_validate({"lastCheckTime": "2026-11-30T19:00:00Z"})
    write_status(api, namespace, "destinations", DEST, before.model_dump(mode="json", by_alias=True))
    errors: list[BaseException] = []

    def operator() -> None:
        try:
            deadline = time.monotonic() + 20
            while CHECK_NOW not in annotations_of(api, namespace, "destinations", DEST):
                assert time.monotonic() < deadline, "the plugin never set the annotation"
                time.sleep(0.1)
            condition = {
                "type": "Available",
                "status": available,
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-11-30T20:00:00Z",
            }
            after = {"lastCheckTime": "2026-11-30T20:00:00Z", "conditions": [condition]}
            write_status(api, namespace, "destinations", DEST, after)
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    thread = threading.Thread(target=operator)
    thread.start()
    result = plugin(kubeconfig, namespace, "check", DEST, "--wait", "--timeout", "30")
    thread.join()
    assert not errors
    assert result.exit_code == code, result.output
    assert f"Checked at 2026-11-30T20:00:00Z: Available {available} ({reason}): {message}" in result.stdout


def _token_kubeconfig(api: client.ApiClient, admin: Path, namespace: str, path: Path) -> Path:
    """A kubeconfig for a fresh service account that no role is bound to: a user without dsexport rights."""
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}}
    token = core.create_namespaced_service_account_token("nobody", namespace, request).status.token
    kubeconfig = yaml.safe_load(admin.read_text())
    kubeconfig["users"] = [{"name": "nobody", "user": {"token": token}}]
    kubeconfig["contexts"][0]["context"]["user"] = "nobody"
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


def test_a_user_without_rights_reads_the_missing_permission(
    api: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    nobody = _token_kubeconfig(api, kubeconfig, namespace, tmp_path / "nobody.kubeconfig")
    user = f'User "system:serviceaccount:{namespace}:nobody"'
    for args, verb in [(["run-now", FLOW], "patch"), (["status", FLOW], "get"), (["check", DEST], "get")]:
        result = plugin(nobody, namespace, *args)
        assert_clean_failure(result, 1)
        assert result.stderr.startswith("error: ")
        assert f'{user} cannot {verb} resource "{"destinations" if args[0] == "check" else "datasetexports"}"' in (
            result.stderr
        )
    assert RUN_NOW not in annotations_of(api, namespace, "datasetexports", FLOW)


def _console_script() -> Path:
    script = Path(sys.executable).parent / "kubectl-dsexport"
    assert script.exists(), f"{script} is missing: install the package (pip install -e .) to create it"
    return script


def test_the_console_script_is_installed() -> None:
    out = subprocess.run([str(_console_script()), "--help"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("Usage: kubectl dsexport [OPTIONS] COMMAND [ARGS]...")
    for command in ("run-now", "reset", "status", "check"):
        assert command in out.stdout


def test_kubectl_finds_the_plugin_on_path(
    api: client.ApiClient, control_plane: ControlPlane, kubeconfig: Path, namespace: str
) -> None:
    env = {**os.environ, "PATH": f"{_console_script().parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    kubectl = str(control_plane.bin / "kubectl")
    args = [kubectl, "dsexport", "--kubeconfig", str(kubeconfig), "-n", namespace, "run-now", FLOW]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert RUN_NOW in annotations_of(api, namespace, "datasetexports", FLOW)
    listed = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=env, check=False)
    assert "kubectl-dsexport" in listed.stdout
