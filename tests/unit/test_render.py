"""What the operator renders for a DatasetExport: the flow ConfigMap and one CronJob per distinct schedule."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from dsexport import api
from dsexport.api import Dataset, DatasetExport, Destination
from dsexport.api.loader import parse_documents
from dsexport.engine import schedule as schedules
from dsexport.operator import render

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
UID = "0b1c2d3e-0000-4000-8000-000000000001"


def dataset(name: str) -> Dataset:
    return Dataset.model_validate(
        {
            "kind": "Dataset",
            "metadata": {"name": name, "uid": "x", "resourceVersion": "7"},
            "spec": {
                "source": {"uri": "s3://lake/" + name, "credentialsSecretRef": {"name": "lake-creds"}},
                "incremental": {"strategy": "files", "lookback": "15m"},
            },
        }
    )


def destination(**spec: Any) -> Destination:
    return Destination.model_validate(
        {
            "kind": "Destination",
            "metadata": {"name": "s3"},
            "spec": {
                "type": "s3",
                "s3": {"bucket": "exports", "region": "us-east-1"},
                "credentialsSecretRef": {"name": "s3-creds"},
                "folder": "out",
                "format": {"type": "parquet"},
                **spec,
            },
        }
    )


def dataset_export(name: str = "marketing-daily", **spec: Any) -> DatasetExport:
    return DatasetExport.model_validate(
        {
            "kind": "DatasetExport",
            "metadata": {"name": name},
            "spec": {
                "destinationRef": {"name": "s3"},
                "datasets": [
                    {"name": "events"},
                    {"name": "orders"},
                    {
                        "name": "clicks",
                        "schedule": {"frequency": "hourly", "interval": 6, "time": "03:00", "startDate": "2026-11-01"},
                    },
                ],
                "schedule": {"frequency": "daily", "time": "09:30", "startDate": "2026-11-01"},
                **spec,
            },
        }
    )


def cron_jobs(export: DatasetExport, now: dt.datetime = NOW, **extra: Any) -> list[dict[str, Any]]:
    return [
        render.cron_job(
            dataset_export=export,
            group=group,
            owner_uid=UID,
            image="dsexport:0.1.0",
            secrets=["s3-creds", "lake-creds"],
            now=now,
            **extra,
        )
        for group in render.schedule_groups(export)
    ]


def test_the_flow_config_map_is_what_dsexport_run_reads_and_holds_no_secret() -> None:
    export = dataset_export()
    config_map = render.flow_config_map(
        dataset_export=export,
        datasets=[dataset("orders"), dataset("events"), dataset("clicks")],
        destination=destination(),
        owner_uid=UID,
    )
    text = config_map["data"]["flow.yaml"]
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["DatasetExport", "Destination", "Dataset", "Dataset", "Dataset"]
    assert all(set(d) == {"apiVersion", "kind", "metadata", "spec"} for d in docs)
    assert docs[2]["metadata"] == {"name": "clicks"}  # no uid, resourceVersion or status from the cluster
    secrets = {"s3-creds": {"accessKeyId": "a", "secretAccessKey": "b"}, "lake-creds": {}}
    bundle = parse_documents([(f"cm#{i}", d) for i, d in enumerate(docs)], secrets=secrets)
    assert bundle.dataset_exports["marketing-daily"] == export
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == UID
    assert config_map["metadata"]["labels"]["app.kubernetes.io/instance"] == "marketing-daily"


def test_one_cron_job_per_distinct_schedule_running_exactly_its_datasets() -> None:
    export = dataset_export()
    first, second = cron_jobs(export)
    assert first["metadata"]["name"] != second["metadata"]["name"]
    args = [job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] for job in (first, second)]
    assert args[0][-6:] == ["--export", "marketing-daily", "--dataset", "events", "--dataset", "orders"]
    assert args[1][-4:] == ["--export", "marketing-daily", "--dataset", "clicks"]
    for job, group in zip((first, second), render.schedule_groups(export), strict=True):
        cron = schedules.cron_schedule(group.schedule)
        spec = job["spec"]
        assert (spec["schedule"], spec["timeZone"]) == (cron.expression, "Etc/UTC")
        assert spec["concurrencyPolicy"] == "Forbid" and spec["suspend"] is False
        assert spec["startingDeadlineSeconds"] > 0 and spec["jobTemplate"]["spec"]["backoffLimit"] > 0
    assert first["spec"]["schedule"] == "30 9 * * *" and second["spec"]["schedule"] == "0 3,9,15,21 * * *"


def test_rendering_is_stable_so_an_unchanged_cluster_causes_no_write() -> None:
    assert cron_jobs(dataset_export()) == cron_jobs(dataset_export())


def test_a_schedule_change_renames_only_its_cron_job() -> None:
    before = [j["metadata"]["name"] for j in cron_jobs(dataset_export())]
    changed = dataset_export(schedule={"frequency": "daily", "time": "10:00", "startDate": "2026-11-01"})
    after = [j["metadata"]["name"] for j in cron_jobs(changed)]
    assert before[0] != after[0] and before[1] == after[1]


def test_cron_jobs_are_suspended_outside_their_window_and_by_spec_suspend() -> None:
    window = {"frequency": "daily", "time": "09:30", "startDate": "2026-12-05", "endDate": "2026-12-10"}
    export = dataset_export(schedule=window, datasets=[{"name": "events"}])
    suspended = {
        when: cron_jobs(export, dt.datetime.fromisoformat(when))[0]["spec"]["suspend"]
        for when in ("2026-12-04T23:59:00+00:00", "2026-12-05T00:00:00+00:00", "2026-12-10T09:39:00+00:00")
    } | {"after": cron_jobs(export, dt.datetime(2026, 12, 10, 9, 41, tzinfo=dt.UTC))[0]["spec"]["suspend"]}
    assert suspended == {
        "2026-12-04T23:59:00+00:00": True,
        "2026-12-05T00:00:00+00:00": False,
        "2026-12-10T09:39:00+00:00": False,  # the last slot may still start within the starting deadline
        "after": True,
    }
    assert cron_jobs(dataset_export(suspend=True))[0]["spec"]["suspend"] is True


def test_timeout_is_the_jobs_active_deadline() -> None:
    [job, _] = cron_jobs(dataset_export(), timeout_seconds=3600)
    assert job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 3600


def test_long_names_fit_and_stay_unique() -> None:
    names = {
        job["metadata"]["name"] for prefix in ("a" * 60, "a" * 61) for job in cron_jobs(dataset_export(name=prefix))
    }
    assert len(names) == 4 and all(len(n) <= 52 for n in names)
    assert len(render.config_map_name("a" * 250)) <= 52


@pytest.mark.parametrize(
    ("on_export", "on_destination", "budget"),
    [("2Gi", "1Gi", "2Gi"), (None, "1536Mi", "1536Mi"), (None, None, api.DEFAULT_MEMORY_BUDGET)],
)
def test_exporter_pods_request_and_are_limited_to_the_budget_the_exporter_plans_with(
    on_export: str | None, on_destination: str | None, budget: str
) -> None:
    export = dataset_export(**({"memoryBudget": on_export} if on_export else {}))
    target = destination(**({"memoryBudget": on_destination} if on_destination else {}))
    jobs = cron_jobs(export, memory_budget=api.memory_budget(export, target))
    run_now = render.run_job(cron_job=jobs[0], name="now", owner={}, args=["run"])
    expected = {"requests": {"memory": budget}, "limits": {"memory": budget}}
    for template in [j["spec"]["jobTemplate"]["spec"]["template"] for j in jobs] + [run_now["spec"]["template"]]:
        assert template["spec"]["containers"][0]["resources"] == expected


def test_without_a_budget_the_exporter_pod_has_no_resources() -> None:
    for job in cron_jobs(dataset_export()):
        assert "resources" not in job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
