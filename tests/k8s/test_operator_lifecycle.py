"""The operator's schedule life cycle end to end: ``dsexport operator`` on the host, exporter pods on the real node.

What a user sees over a flow's life: the CronJobs say what ``dsexport schedule`` says for the same YAML; a flow
before its ``startDate`` waits suspended, one past its ``endDate`` (or a ``once`` past its day) is finished; a
dataset removed from the flow leaves the ConfigMap, the CronJobs and the status while its files stay; and a run-now
export lands at an SFTP server whose host key the pod verifies. The operator and the SeaweedFS store (destination
and source lake) are the module-scoped ones of ``test_operator``, shared by every test here.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.cluster.cluster import Cluster
from tests.helpers import assert_only_committed_files, committed, read_committed_ids
from tests.k8s import test_operator as operator_tests
from tests.k8s.test_operator import FLOWS, LAKE_SECRET, _condition, _pod_logs, _upload_lake
from tests.servers import SECRET_NAME, ProcessServer, Target, sshd, wait_until

from dsexport.api import GROUP, VERSION
from dsexport.destinations import join
from dsexport.operator import render
from dsexport.operator.pods import FLOW_KEY

# test_operator's fixtures, found by pytest in this module's namespace: the module-scoped operator and store (one of
# each for this module), and the per-test namespace.
operator = operator_tests.operator
store = operator_tests.store
namespace = operator_tests.namespace

PLURALS = {"Dataset": "datasets", "Destination": "destinations", "DatasetExport": FLOWS}
EXPORT_SECONDS = 240  # a run-now Job: pod start in the image, export, result into the status


@pytest.fixture(scope="module")
def sftp(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Path]]:
    """OpenSSH's sshd on the node address, where pods reach it; and its login folder on disk, to read back what
    the pods wrote behind the server's back."""
    workdir = tmp_path_factory.mktemp("sshd-operator")
    target = sshd.launch(workdir, host=cluster.node_ip)
    yield target, sshd.login_folder(workdir)
    assert target.server is not None
    target.server.stop()


# ------------------------------------------------------------------------------------------------------- helpers


def _lake_uri(store: Target, namespace: str, dataset: str) -> str:
    endpoint = store.block["endpoint"].removeprefix("http://")
    return (
        f"s3://{store.block['bucket']}/lake/{namespace}/{dataset}?endpoint_override={endpoint}&scheme=http"
        f"&region={store.block['region']}"
    )


def _documents(
    namespace: str,
    store: Target,
    *,
    datasets: Sequence[str],
    flows: Mapping[str, Mapping[str, Any]],
    destination: Target | None = None,
) -> list[dict[str, Any]]:
    """The YAML a user writes for ``kubectl apply`` and ``dsexport schedule`` alike: the Secrets, one Destination
    ``dest`` (on ``destination``, by default the store), Datasets whose sources are S3 prefixes of the store, and
    one DatasetExport per entry of ``flows`` (name: spec without its destinationRef)."""
    destination = destination or store
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": LAKE_SECRET}, "stringData": store.secret},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME}, "stringData": destination.secret},
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Destination",
            "metadata": {"name": "dest"},
            "spec": {**destination.destination_spec(), "folder": f"exports/{namespace}"},
        },
    ]
    for name in datasets:
        docs.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Dataset",
                "metadata": {"name": name},
                "spec": {
                    "source": {"uri": _lake_uri(store, namespace, name), "credentialsSecretRef": {"name": LAKE_SECRET}},
                    "incremental": {"strategy": "files", "lookback": "0s"},
                },
            }
        )
    for name, spec in flows.items():
        docs.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DatasetExport",
                "metadata": {"name": name},
                "spec": {"destinationRef": {"name": "dest"}, **spec},
            }
        )
    return docs


def _apply(api: client.ApiClient, namespace: str, docs: Sequence[Mapping[str, Any]]) -> None:
    """Create the documents in order, as ``kubectl apply -f`` of the same file would."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    for doc in docs:
        if doc["kind"] == "Secret":
            core.create_namespaced_secret(namespace, {"metadata": doc["metadata"], "stringData": doc["stringData"]})
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[doc["kind"]], dict(doc))


def _cli_schedule(path: Path, docs: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``dsexport schedule -f FILE -o json`` run as a user runs it, on ``docs`` written to ``path``; its rows by
    (DatasetExport, dataset)."""
    path.write_text(yaml.safe_dump_all(list(docs)))
    done = subprocess.run(
        [sys.executable, "-m", "dsexport.cli", "schedule", "-f", str(path), "-o", "json", "--count", "3"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {(row["datasetExport"], row["dataset"]): row for row in json.loads(done.stdout)}


def _flow(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, name
    )
    return found


def _wait(
    api: client.ApiClient,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    operator: ProcessServer,
    timeout: float = 120,
) -> dict[str, Any]:
    """Poll flow ``name`` until ``check`` holds; on a timeout, fail with its status, the pods and the operator's
    log tail, so a CI failure says where it stopped."""
    found: dict[str, Any] = {}

    def ok() -> bool:
        found.clear()
        found.update(_flow(api, namespace, name))
        return check(found)

    try:
        wait_until(ok, timeout=timeout, what=what, interval=0.5)
    except TimeoutError:
        log = operator.log.read_text(errors="replace")[-4000:]
        raise AssertionError(
            f"{what}; status: {json.dumps(found.get('status'), indent=1)}\npods:\n{_pod_logs(api, namespace)}\n"
            f"operator log:\n{log}"
        ) from None
    return found


def _observed(flow: Mapping[str, Any]) -> bool:
    """The operator has reconciled the flow's current spec (its Ready condition is for this generation)."""
    generation = flow["metadata"]["generation"]
    status = flow.get("status") or {}
    ready = _condition(dict(flow), "Ready")
    return bool(status.get("observedGeneration") == generation == ready.get("observedGeneration"))


def _cron_jobs(api: client.ApiClient, namespace: str, flow: str) -> dict[str, Any]:
    """The flow's CronJobs by name."""
    found = client.BatchV1Api(api).list_namespaced_cron_job(namespace, label_selector=f"{render.LABEL_EXPORT}={flow}")
    return {c.metadata.name: c for c in found.items}


def _args(cron_job: Any) -> list[str]:
    return list(cron_job.spec.job_template.spec.template.spec.containers[0].args)


def _option(args: Sequence[str], option: str) -> list[str]:
    """Every value of ``option`` in ``args`` (``--dataset a --dataset b``: [a, b])."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


def _jobs(api: client.ApiClient, namespace: str, flow: str) -> dict[str, Any]:
    found = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=f"{render.LABEL_EXPORT}={flow}")
    return {j.metadata.name: j for j in found.items}


def _annotate(api: client.ApiClient, namespace: str, flow: str, key: str, value: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, flow, {"metadata": {"annotations": {key: value}}}
    )


def _set_datasets(api: client.ApiClient, namespace: str, flow: str, entries: list[dict[str, Any]]) -> None:
    """Replace spec.datasets (a merge patch replaces a list whole), as ``kubectl apply`` of the edited file does."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, FLOWS, flow, {"spec": {"datasets": entries}}
    )


def _progress(flow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in (flow.get("status") or {}).get("datasets") or []}


def _used_by(api: client.ApiClient, namespace: str, dataset: str) -> list[str]:
    found = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", dataset)
    return list((found.get("status") or {}).get("usedBy") or [])


def _events(api: client.ApiClient, namespace: str, name: str) -> set[str]:
    """The reasons of the Events posted on object ``name``."""
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return {e.reason for e in items if e.involved_object.name == name}


def _day(days: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)).isoformat()


def _far_minute() -> int:
    """A minute of the hour at least 25 minutes from now: a schedule on it has no slot while the test runs, so the
    operator's next slot and the CLI's, computed moments apart, are the same one, and no scheduled Job fires."""
    return (dt.datetime.now(dt.UTC).minute + 30) % 60


# --------------------------------------------------------------------------------------------------------- tests


@pytest.mark.timeout(900)  # run alone, it also starts the cluster and the operator
def test_cron_jobs_match_dsexport_schedule(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """The CronJobs the operator renders (one per distinct effective schedule, a dataset's own schedule overriding
    the flow's) fire exactly when ``dsexport schedule`` says for the same YAML, and the status tells the same."""
    minute = _far_minute()
    first_hour = dt.datetime.now(dt.UTC).hour % 6  # any first slot of the day; the minute keeps slots far away
    own_hour = (dt.datetime.now(dt.UTC).hour + 12) % 24
    start, end = _day(-30), _day(60)
    flow_schedule = {
        "frequency": "hourly",
        "interval": 6,
        "time": f"{first_hour:02d}:{minute:02d}",
        "startDate": start,
        "endDate": end,
    }
    own = {"frequency": "daily", "time": f"{own_hour:02d}:{minute:02d}", "startDate": start}
    entries = [{"name": "events"}, {"name": "clicks", "schedule": own}, {"name": "views"}]
    docs = _documents(
        namespace,
        store,
        datasets=["events", "clicks", "views"],
        flows={"daily": {"datasets": entries, "schedule": flow_schedule}},
    )
    _apply(api, namespace, docs)
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: _observed(f) and len((f.get("status") or {}).get("cronJobs") or []) == 2,
        "two CronJobs in the status",
        operator,
    )
    cli = _cli_schedule(tmp_path / "flow.yaml", docs)
    assert sorted(cli) == [("daily", "clicks"), ("daily", "events"), ("daily", "views")]
    hours = ",".join(str(h) for h in range(first_hour, 24, 6))
    assert cli["daily", "events"]["cron"] == cli["daily", "views"]["cron"] == f"{minute} {hours} * * *"
    assert cli["daily", "clicks"]["cron"] == f"{minute} {own_hour} * * *"

    crons = _cron_jobs(api, namespace, "daily")
    assert len(crons) == 2, sorted(crons)
    grouped: dict[str, list[str]] = {}
    for cron in crons.values():
        args = _args(cron)
        assert _option(args, "--export") == ["daily"]
        datasets = _option(args, "--dataset")
        assert datasets, args
        grouped[cron.spec.schedule] = datasets
        for dataset in datasets:
            row = cli["daily", dataset]
            assert (cron.spec.schedule, cron.spec.time_zone) == (row["cron"], row["timeZone"]), dataset
        # Inside its window (startDate passed, endDate ahead): the CLI lists slots, and the CronJob may fire them.
        assert cron.spec.suspend is False
        assert (cron.spec.concurrency_policy, cron.spec.starting_deadline_seconds) == ("Forbid", 600)
    # The datasets on one schedule share its CronJob, in the order spec.datasets lists them.
    assert grouped == {
        cli["daily", "events"]["cron"]: ["events", "views"],
        cli["daily", "clicks"]["cron"]: ["clicks"],
    }

    status = flow["status"]
    assert _condition(flow, "Ready")["reason"] == "Scheduled"
    assert {c["name"]: (c["schedule"], c["datasets"]) for c in status["cronJobs"]} == {
        name: (cron.spec.schedule, _option(_args(cron), "--dataset")) for name, cron in crons.items()
    }
    # status.schedule and status.cron describe the flow's own schedule; nextExportTime is the earliest slot of all.
    assert status["schedule"] == f"every 6h from {first_hour:02d}:{minute:02d} UTC from {start} until {end}"
    assert status["cron"] == cli["daily", "events"]["cron"]
    assert status["nextExportTime"] == min(row["next"][0] for row in cli.values())
    assert "finished" not in status
    now = dt.datetime.now(dt.UTC)
    assert now < dt.datetime.fromisoformat(status["nextExportTime"]) <= now + dt.timedelta(hours=6)

    # clicks back on the flow's schedule: its CronJob goes (a schedule names its CronJob), the other takes it in.
    docs = [
        {**d, "spec": {**d["spec"], "datasets": [{"name": n} for n in ("events", "clicks", "views")]}}
        if d["kind"] == "DatasetExport"
        else d
        for d in docs
    ]
    _set_datasets(api, namespace, "daily", docs[-1]["spec"]["datasets"])
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: _observed(f) and len(f["status"].get("cronJobs") or []) == 1,
        "one CronJob once every dataset is on the flow's schedule",
        operator,
    )
    cli = _cli_schedule(tmp_path / "flow.yaml", docs)
    assert {row["cron"] for row in cli.values()} == {f"{minute} {hours} * * *"}
    wait_until(lambda: len(_cron_jobs(api, namespace, "daily")) == 1, timeout=30, what="the stale CronJob to go")
    [(name, cron)] = _cron_jobs(api, namespace, "daily").items()
    assert _option(_args(cron), "--dataset") == ["events", "clicks", "views"]
    assert cron.spec.schedule == cli["daily", "clicks"]["cron"]
    assert flow["status"]["cronJobs"] == [
        {"name": name, "schedule": cron.spec.schedule, "datasets": ["events", "clicks", "views"]}
    ]
    assert flow["status"]["nextExportTime"] == min(row["next"][0] for row in cli.values())


@pytest.mark.timeout(900)
def test_start_end_and_once_suspend_the_cron_jobs_outside_their_window(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """Cron has no years: the operator keeps a CronJob suspended before startDate, after endDate and after a
    ``once``, and a flow with no slot left says it is finished, as ``dsexport schedule`` says it has ended."""
    future, ended_from, ended_until, once_day = _day(30), _day(-10), _day(-2), _day(-2)
    flows = {
        "future": {
            "datasets": [{"name": "events"}],
            "schedule": {"frequency": "daily", "time": "09:30", "startDate": future},
        },
        "ended": {
            "datasets": [{"name": "events"}],
            "schedule": {"frequency": "daily", "time": "09:30", "startDate": ended_from, "endDate": ended_until},
        },
        "once": {
            "datasets": [{"name": "events"}],
            "schedule": {"frequency": "once", "time": "00:00", "startDate": once_day},
        },
    }
    docs = _documents(namespace, store, datasets=["events"], flows=flows)
    _apply(api, namespace, docs)
    found = {name: _wait(api, namespace, name, _observed, f"flow {name} to be reconciled", operator) for name in flows}
    cli = _cli_schedule(tmp_path / "flows.yaml", docs)

    # Before startDate: scheduled, its CronJob suspended until the window opens, the next slot its first one.
    flow = found["future"]
    ready = _condition(flow, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Scheduled")
    [cron] = _cron_jobs(api, namespace, "future").values()
    assert (cron.spec.schedule, cron.spec.suspend) == ("30 9 * * *", True)
    assert cron.spec.schedule == cli["future", "events"]["cron"]
    assert flow["status"]["nextExportTime"] == f"{future}T09:30:00Z" == cli["future", "events"]["next"][0]
    assert flow["status"]["schedule"] == f"daily at 09:30 UTC from {future}"
    assert "finished" not in flow["status"]

    # Past endDate (and the last slot's starting deadline): suspended, finished, no next export; the CLI agrees.
    for name, cron_line, described in (
        ("ended", "30 9 * * *", f"daily at 09:30 UTC from {ended_from} until {ended_until}"),
        ("once", f"0 0 {int(once_day[8:])} {int(once_day[5:7])} *", f"once on {once_day} at 00:00 UTC"),
    ):
        flow = found[name]
        ready = _condition(flow, "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Finished"), name
        assert flow["status"]["finished"] is True, name
        assert "nextExportTime" not in flow["status"], name
        assert (flow["status"]["cron"], flow["status"]["schedule"]) == (cron_line, described)
        [cron] = _cron_jobs(api, namespace, name).values()
        assert (cron.spec.schedule, cron.spec.suspend) == (cron_line, True), name
        assert cli[name, "events"]["cron"] == cron_line
        assert cli[name, "events"]["next"] == [], name
        assert [c["name"] for c in flow["status"]["cronJobs"]] == [cron.metadata.name]
        wait_until(
            lambda n=name: "Finished" in _events(api, namespace, n),  # type: ignore[misc]
            timeout=30,
            what=f"a Finished Event on {name}",
        )


@pytest.mark.timeout(900)
def test_a_removed_dataset_leaves_the_flow_and_its_files_stay(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """Three datasets, one on its own schedule; a run-now exports all three. Removing two of them (one shares the
    flow's CronJob, one had a CronJob of its own) takes them out of the ConfigMap, the CronJobs and the status at
    once; the next run-now exports only the one left, and what the first run committed for the others stays."""
    ids = {
        name: _upload_lake(store, tmp_path, f"lake/{namespace}/{name}", files=1, offset=i * 100_000)
        for i, name in enumerate(("events", "clicks", "views"))
    }
    hour, minute = dt.datetime.now(dt.UTC).hour, _far_minute()  # no scheduled run while the test runs
    far = f"{(hour + 12) % 24:02d}:{minute:02d}"
    own = {"frequency": "daily", "time": f"{(hour + 6) % 24:02d}:{minute:02d}", "startDate": _day(-30)}
    entries = [{"name": "events"}, {"name": "clicks"}, {"name": "views", "schedule": own}]
    docs = _documents(
        namespace,
        store,
        datasets=list(ids),
        flows={"daily": {"datasets": entries, "schedule": {"frequency": "daily", "time": far, "startDate": _day(-30)}}},
    )
    _apply(api, namespace, docs)
    _wait(
        api,
        namespace,
        "daily",
        lambda f: _observed(f) and len(f["status"].get("cronJobs") or []) == 2,
        "two CronJobs",
        operator,
    )

    # A run-now starts a Job per CronJob; both are recorded.
    _annotate(api, namespace, "daily", "dsexport.io/run-now", "first")
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: len((f.get("status") or {}).get("recordedJobs") or []) == 2,
        "both run-now Jobs to be recorded",
        operator,
        timeout=EXPORT_SECONDS,
    )
    first_jobs = set(flow["status"]["recordedJobs"])
    progress = _progress(flow)
    assert sorted(progress) == ["clicks", "events", "views"], _pod_logs(api, namespace)
    transport = store.transport()
    folder = f"exports/{namespace}"
    first_folder: dict[str, str] = {}
    for name, expected in ids.items():
        assert (progress[name]["lastOutcome"], progress[name]["runs"]) == ("exported", 1), progress[name]
        assert sorted(read_committed_ids(transport, name, folder)) == sorted(expected)
        [manifest] = committed(transport, name, folder)
        first_folder[name] = f"exportTime={manifest['exportTime']}"

    # Remove clicks (on the flow's CronJob) and views (alone on its own): both leave at once.
    _set_datasets(api, namespace, "daily", [{"name": "events"}])
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: _observed(f) and sorted(_progress(f)) == ["events"],
        "the removed datasets to leave the status",
        operator,
    )
    assert _condition(flow, "Ready")["reason"] == "Scheduled"
    wait_until(lambda: len(_cron_jobs(api, namespace, "daily")) == 1, timeout=30, what="views' CronJob to go")
    [(cron_name, cron)] = _cron_jobs(api, namespace, "daily").items()
    assert _option(_args(cron), "--dataset") == ["events"]
    assert flow["status"]["cronJobs"] == [{"name": cron_name, "schedule": cron.spec.schedule, "datasets": ["events"]}]
    config_map = client.CoreV1Api(api).read_namespaced_config_map(render.config_map_name("daily"), namespace)
    text = config_map.data[FLOW_KEY]
    assert "clicks" not in text and "views" not in text, text
    manifests = {d["kind"]: d for d in yaml.safe_load_all(text) if d["kind"] != "Dataset"}
    assert manifests["DatasetExport"]["spec"]["datasets"] == [{"name": "events"}]
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(text) if d["kind"] == "Dataset"] == ["events"]
    wait_until(
        lambda: _used_by(api, namespace, "clicks") == [] == _used_by(api, namespace, "views"),
        timeout=30,
        what="the removed Datasets' usedBy to drop the flow",
    )
    assert _used_by(api, namespace, "events") == ["daily"]

    # New files in every lake; the second run-now exports only events' (clicks' new file stays unexported).
    more = _upload_lake(store, tmp_path, f"lake/{namespace}/events", files=1, offset=300_000)
    _upload_lake(store, tmp_path, f"lake/{namespace}/clicks", files=1, offset=400_000)
    _annotate(api, namespace, "daily", "dsexport.io/run-now", "second")
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: ((f.get("status") or {}).get("lastExport") or {}).get("job") not in (None, *first_jobs),
        "the second run-now export",
        operator,
        timeout=EXPORT_SECONDS,
    )
    last = flow["status"]["lastExport"]
    assert (last["result"], last["records"]) == ("Succeeded", len(more)), _pod_logs(api, namespace)
    jobs = _jobs(api, namespace, "daily")
    assert sorted(jobs) == sorted({*first_jobs, last["job"]}), sorted(jobs)  # one Job for the one CronJob left
    assert _option(jobs[last["job"]].spec.template.spec.containers[0].args, "--dataset") == ["events"]
    progress = _progress(flow)
    assert sorted(progress) == ["events"]
    assert (progress["events"]["runs"], progress["events"]["records"]) == (2, len(ids["events"]) + len(more))
    second = f"exportTime={last['exportTime']}"
    assert second != first_folder["events"]
    assert sorted(transport.list_prefixes(join(folder, "events"))) == sorted([first_folder["events"], second])
    assert sorted(read_committed_ids(transport, "events", folder)) == sorted(ids["events"] + more)
    for name in ("clicks", "views"):  # only the first run's folder, its files intact
        assert transport.list_prefixes(join(folder, name)) == [first_folder[name]], name
        assert sorted(read_committed_ids(transport, name, folder)) == sorted(ids[name])
    for name in ids:
        assert_only_committed_files(transport, name, folder)


@pytest.mark.timeout(900)
def test_a_run_now_export_lands_at_an_sftp_server(
    api: client.ApiClient,
    namespace: str,
    store: Target,
    sftp: tuple[Target, Path],
    operator: ProcessServer,
    tmp_path: Path,
) -> None:
    """From the S3 lake to OpenSSH's sshd on the node address, the pod verifying the host key from the
    Destination's knownHosts and logging in with the password from the Secret; the files on the server's disk are
    exactly what the status reports."""
    server, root = sftp
    ids = _upload_lake(store, tmp_path, f"lake/{namespace}/events", files=2)
    docs = _documents(
        namespace,
        store,
        datasets=["events"],
        flows={"daily": {"datasets": [{"name": "events"}], "schedule": {"frequency": "daily", "startDate": _day(30)}}},
        destination=server,
    )
    assert "knownHosts" in docs[2]["spec"]["sftp"]
    _apply(api, namespace, docs)
    _wait(api, namespace, "daily", _observed, "the flow to be reconciled", operator)
    config_map = client.CoreV1Api(api).read_namespaced_config_map(render.config_map_name("daily"), namespace)
    assert (server.secret or {})["password"] not in config_map.data[FLOW_KEY]

    _annotate(api, namespace, "daily", "dsexport.io/run-now", "sftp")
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: (f.get("status") or {}).get("lastExport") is not None,
        "the run-now export to SFTP",
        operator,
        timeout=EXPORT_SECONDS,
    )
    last = flow["status"]["lastExport"]
    assert last["result"] == "Succeeded", _pod_logs(api, namespace)
    folder = f"exports/{namespace}"
    assert sorted(read_committed_ids(root, "events", folder)) == sorted(ids)  # sizes and sha256 per manifest
    assert_only_committed_files(root, "events", folder)
    [manifest] = committed(root, "events", folder)
    assert (last["records"], last["bytes"], last["files"]) == (
        manifest["records"],
        manifest["bytes"],
        len(manifest["files"]),
    )
    assert last["records"] == len(ids)
    assert last["exportTime"] == manifest["exportTime"]
    [progress] = flow["status"]["datasets"]
    assert (progress["name"], progress["runs"], progress["failures"], progress["lastOutcome"]) == (
        "events",
        1,
        0,
        "exported",
    )
    assert (progress["records"], progress["bytes"], progress["files"]) == (
        manifest["records"],
        manifest["bytes"],
        len(manifest["files"]),
    )
    assert progress["lastExportTime"] == manifest["exportTime"]
    assert progress["watermark"] == manifest["watermark"]["to"]
    # The same files through the server, as a partner reads them.
    assert sorted(read_committed_ids(server.transport(), "events", folder)) == sorted(ids)


def test_a_dataset_removed_while_its_job_runs_does_not_fail_the_others_nor_come_back(
    api: client.ApiClient, namespace: str, store: Target, operator: ProcessServer, tmp_path: Path
) -> None:
    """A dataset removed while a Job that exports it is pending: the Job must still export the datasets that stay
    (whether it also exports the removed one is the Job's business: it was started for it), and recording the Job
    must not put the removed dataset back into the status, which lists the datasets of spec.datasets."""
    ids = {
        name: _upload_lake(store, tmp_path, f"lake/{namespace}/{name}", files=1, offset=i * 100_000)
        for i, name in enumerate(("events", "clicks"))
    }
    far = f"{(dt.datetime.now(dt.UTC).hour + 12) % 24:02d}:{_far_minute():02d}"
    docs = _documents(
        namespace,
        store,
        datasets=list(ids),
        flows={
            "daily": {
                "datasets": [{"name": "events"}, {"name": "clicks"}],
                "schedule": {"frequency": "daily", "time": far, "startDate": _day(-30)},
            }
        },
    )
    _apply(api, namespace, docs)
    _wait(api, namespace, "daily", _observed, "the flow to be reconciled", operator)
    _annotate(api, namespace, "daily", "dsexport.io/run-now", "before-removal")
    wait_until(lambda: bool(_jobs(api, namespace, "daily")), timeout=60, what="the run-now Job", interval=0.2)
    _set_datasets(api, namespace, "daily", [{"name": "events"}])
    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: _observed(f) and f["status"]["cronJobs"][0]["datasets"] == ["events"],
        "the removal to be reconciled",
        operator,
    )
    if flow["status"].get("recordedJobs"):
        pytest.skip("the Job was recorded before the removal was reconciled: nothing to tell")

    flow = _wait(
        api,
        namespace,
        "daily",
        lambda f: (f.get("status") or {}).get("lastExport") is not None,
        "the Job to be recorded",
        operator,
        timeout=EXPORT_SECONDS,
    )
    # The pod reads the rewritten ConfigMap: it skips clicks (no longer in the flow) and exports events.
    assert flow["status"]["lastExport"]["result"] == "Succeeded", _pod_logs(api, namespace)
    assert sorted(read_committed_ids(store.transport(), "events", f"exports/{namespace}")) == sorted(ids["events"])
    progress = _progress(flow)
    assert sorted(progress) == ["events"], progress  # clicks is not put back, nor counted as failed
    assert (progress["events"]["runs"], progress["events"]["failures"]) == (1, 0)
