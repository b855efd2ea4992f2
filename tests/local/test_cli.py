"""The dsexport command as a user meets it: exit codes, messages with field paths, JSON output."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from examples import sample
from tests.helpers import START, flow_yaml

from dsexport import api
from dsexport.api import loader
from dsexport.cli import local, main
from dsexport.engine import RunResult


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_json_summary_and_exit_status(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=2, rows_per_file=300, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")
    code, out, _ = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00Z", "-o", "json")
    assert code == 0
    summary = json.loads(out)
    [result] = summary["results"]
    assert summary["ok"] is True
    assert (result["outcome"], result["records"], result["files"], result["exportTime"]) == (
        "exported",
        600,
        1,
        "202612010900",
    )
    assert result["watermark"]["strategy"] == "files"
    assert result["bytes"] > 0


def test_run_text_summary_and_failure_exit(tmp_path: Path) -> None:
    flow = flow_yaml(tmp_path, source=tmp_path / "missing", dest=tmp_path / "dest")
    code, out, err = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00Z")
    assert code == 1
    assert "failed" in out
    assert "error: flow/events: cannot list source" in err


def test_a_run_before_the_first_slot_gets_cli_advice(tmp_path: Path) -> None:
    """The engine's message is the same in a pod; only the CLI knows the flag that changes the run's time."""
    flow = flow_yaml(tmp_path, source=tmp_path, dest=tmp_path / "dest")
    code, _, err = invoke("run", "-f", str(flow), "--at", "2026-10-01T00:00:00Z")
    assert code == 1
    assert err.strip().endswith(
        "the schedule's first slot is 2026-11-01T00:00Z; exports start there; pass --at on or after it"
    )
    code, out, _ = invoke("run", "-f", str(flow), "--at", "2026-10-01T00:00:00Z", "-o", "json")
    [result] = json.loads(out)["results"]
    assert (result["reason"], result["transient"]) == ("BeforeFirstSlot", False)
    assert "--at" not in result["message"]


def test_at_without_time_zone_is_refused(tmp_path: Path) -> None:
    flow = flow_yaml(tmp_path, source=tmp_path, dest=tmp_path / "dest")
    code, _, err = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00")
    assert code == 2
    assert "has no time zone" in err


def test_export_time_picks_the_folder_and_excludes_at(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=20, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")
    code, out, _ = invoke("run", "-f", str(flow), "--export-time", "202612011007", "-o", "json")
    assert code == 0
    [result] = json.loads(out)["results"]
    assert (result["outcome"], result["exportTime"], result["records"]) == ("exported", "202612011007", 20)
    assert (tmp_path / "dest" / "out" / "events" / "exportTime=202612011007" / "_manifest.json").is_file()

    code, out, err = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00Z", "--export-time", "202612011007")
    assert (code, out) == (2, "")
    assert "--at and --export-time both choose the exportTime folder: give one of them" in err
    for bad in ("2026120110", "202612011060", "2026-12-01T10:07", "202602301007"):
        code, _, err = invoke("run", "-f", str(flow), "--export-time", bad)
        assert code == 2, bad
        assert f"Invalid value for '--export-time': {bad!r} is not an export time: give a UTC minute" in err


def test_reset_token_needs_a_reset_and_a_valid_token(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=20, seed=1, start=START)
    dest = tmp_path / "dest"
    flow = flow_yaml(tmp_path, source=src, dest=dest)
    code, _, err = invoke("run", "-f", str(flow), "--reset-token", "r-1")
    assert code == 2 and "--reset-token identifies a reset: give the dataset to reset with --reset" in err
    code, _, err = invoke("run", "-f", str(flow), "--reset", "events", "--reset-token", "a b")
    assert code == 2 and "Invalid value for '--reset-token': 'a b' is not 1 to 64 characters" in err
    assert not dest.exists()
    args = ("run", "-f", str(flow), "--reset", "events", "--reset-token", "r-1", "-o", "json")
    code, out, _ = invoke(*args, "--export-time", "202612011007")
    assert code == 0 and json.loads(out)["results"][0]["records"] == 20
    manifest = json.loads((dest / "out" / "events" / "exportTime=202612011007" / "_manifest.json").read_text())
    assert (manifest["reset"], manifest["resetToken"]) == (True, "r-1")
    code, out, _ = invoke(*args, "--export-time", "202612011107")  # the same reset, retried in a later minute
    [again] = json.loads(out)["results"]
    assert (code, again["outcome"], again["records"]) == (0, "no-new-data", 0)


def test_unknown_export_is_refused(tmp_path: Path) -> None:
    flow = flow_yaml(tmp_path, source=tmp_path, dest=tmp_path / "dest")
    code, _, err = invoke("run", "-f", str(flow), "--export", "nope")
    assert code == 2
    assert "DatasetExport 'nope' not found" in err


def test_validate_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    flow = flow_yaml(tmp_path, source=tmp_path, dest=tmp_path / "dest")
    docs = list(yaml.safe_load_all(flow.read_text()))
    docs[0]["spec"]["incremental"] = {"strategy": "column"}
    docs[1]["spec"]["format"] = {"type": "json", "compression": "snappy"}
    docs[2]["spec"]["schedule"] = {"frequency": "daily", "interval": 6}
    docs[2]["spec"]["datasets"].append({"name": "ghost"})
    flow.write_text(yaml.safe_dump_all(docs))
    code, _, err = invoke("validate", "-f", str(flow))
    assert code == 2
    assert "Dataset/events" in err and "spec.incremental: column is required when strategy is column" in err
    assert "spec.format: compression must be one of none, snappy, gzip, zstd for parquet" in err
    assert "spec.schedule: interval is only allowed when frequency is hourly" in err
    # Reference checks run only on valid objects; the invalid DatasetExport is reported once, for its schema.
    assert err.count("DatasetExport/flow") == 1


def test_validate_reports_missing_references(tmp_path: Path) -> None:
    flow = flow_yaml(tmp_path, source=tmp_path, dest=tmp_path / "dest")
    docs = list(yaml.safe_load_all(flow.read_text()))
    docs[2]["spec"]["datasets"].append({"name": "ghost"})
    docs[1]["spec"]["credentialsSecretRef"] = {"name": "creds"}
    flow.write_text(yaml.safe_dump_all(docs))
    code, _, err = invoke("validate", "-f", str(flow))
    assert code == 2
    assert "spec.datasets[1].name: Dataset 'ghost' not found" in err
    assert "Destination/dest: credentialsSecretRef.name: Secret 'creds' not found" in err


def test_validate_ok_on_the_local_default() -> None:
    code, out, _ = invoke("validate", "-f", "examples/local/flow.yaml")
    assert code == 0
    assert out.startswith("ok: 1 Dataset(s), 2 Destination(s), 2 DatasetExport(s)")


def test_schedule_prints_cron_and_next_times() -> None:
    code, out, _ = invoke(
        "schedule",
        "-f",
        "examples/local/flow.yaml",
        "--after",
        "2026-12-01T00:00:00Z",
        "--count",
        "2",
        "-o",
        "json",
    )
    assert code == 0
    rows = {r["datasetExport"]: r for r in json.loads(out)}
    assert rows["marketing-daily"]["cron"] == "30 9 * * *"
    assert rows["marketing-daily"]["next"] == ["2026-12-01T09:30:00Z", "2026-12-02T09:30:00Z"]
    assert rows["partner-feed"]["cron"] == "0 3,9,15,21 * * *"
    assert rows["partner-feed"]["timeZone"] == "Etc/UTC"


def test_secret_values_never_reach_errors(tmp_path: Path) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "hunter2!!"}})
    )
    code, _, err = invoke("validate", "-f", str(flow))
    assert code == 2
    assert "data.k: not valid base64" in err
    assert "hunter2" not in err


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text("kind: [unclosed")
    code, _, err = invoke("validate", "-f", str(flow))
    assert code == 2
    assert "not valid YAML" in err


def _secret_volume(folder: Path, name: str, values: dict[str, str]) -> None:
    """A Secret laid out as the kubelet mounts one: files in a hidden ``..data`` folder, one link per key."""
    data = folder / name / "..2026_12_01_09_30_00.000000001"
    data.mkdir(parents=True)
    (folder / name / "..data").symlink_to(data.name)
    for key, value in values.items():
        (data / key).write_text(value)
        (folder / name / key).symlink_to(f"..data/{key}")


def test_secrets_mounted_as_files_are_used_and_never_echoed(tmp_path: Path) -> None:
    destination = {"type": "sftp", "sftp": {"host": "127.0.0.1", "port": 1, "username": "u", "knownHosts": "x"}}
    destination["credentialsSecretRef"] = {"name": "sftp-creds"}
    flow = flow_yaml(tmp_path, source=tmp_path / "lake", destination=destination, secrets={})
    code, _, err = invoke("validate", "-f", str(flow))
    assert code == 2 and "Secret 'sftp-creds' not found" in err

    mounted = tmp_path / "secrets"
    _secret_volume(mounted, "sftp-creds", {"password": "hunter2-from-a-file"})
    code, _, err = invoke("validate", "-f", str(flow), "--secrets-dir", str(mounted))
    assert (code, err) == (0, "")

    (mounted / "sftp-creds" / "..data" / "bad").write_bytes(b"\xffhunter3")
    (mounted / "sftp-creds" / "bad").symlink_to("..data/bad")
    code, _, err = invoke("validate", "-f", str(flow), "--secrets-dir", str(mounted))
    assert code == 2 and "sftp-creds/bad: not UTF-8 text" in err and "hunter" not in err


def test_result_file_holds_the_run_result(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=50, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")
    result_file = tmp_path / "termination-log"
    code, _, _ = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00Z", "--result-file", str(result_file))
    assert code == 0
    [result] = RunResult.parse(result_file.read_text(), origin=str(result_file)).results
    assert (result.outcome, result.records) == ("exported", 50)


def test_dataset_option_runs_only_those_datasets(tmp_path: Path) -> None:
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=20, seed=1, start=START)
    flow = flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")
    code, out, _ = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00Z", "--dataset", "events", "-o", "json")
    assert code == 0 and [r["dataset"] for r in json.loads(out)["results"]] == ["events"]
    code, _, err = invoke("run", "-f", str(flow), "--at", "2026-12-01T10:00:00Z", "--dataset", "nope")
    assert code == 2 and "dataset 'nope' is not in flow" in err


def test_a_pod_skips_a_dataset_that_left_the_flow_after_its_job_was_made(tmp_path: Path) -> None:
    """A Job's ``--dataset`` args are fixed when it is made; the flow it reads may have lost that dataset since.
    A pod then exports the others, and nothing at all (not every dataset) when none is left."""
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=20, seed=1, start=START)
    bundle = loader.load_files([flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")])
    at = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    with pytest.raises(loader.ManifestError, match="'gone' is not in flow"):
        local.requests(bundle, datasets=["events", "gone"], at=at)
    kept = local.requests(bundle, datasets=["events", "gone"], at=at, removed_ok=True)
    assert [r.dataset.metadata.name for r in kept] == ["events"]
    assert local.requests(bundle, datasets=["gone"], at=at, removed_ok=True) == []


def test_a_referenced_secret_without_keys_is_named_as_missing(tmp_path: Path) -> None:
    """In a pod, a Secret that does not exist is an empty folder (its volume is optional): the error names it."""
    src = tmp_path / "lake"
    sample.write_files(src, files=1, rows_per_file=20, seed=1, start=START)
    bundle = loader.load_files([flow_yaml(tmp_path, source=src, dest=tmp_path / "dest")])
    bundle.secrets["lake-creds"] = {}
    with pytest.raises(loader.ManifestError, match="Secret 'lake-creds' has no keys: it does not exist"):
        bundle.secret(api.ObjectRef(name="lake-creds"))
