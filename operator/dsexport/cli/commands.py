"""The ``dsexport`` command: run, validate and inspect the same manifests that ``kubectl apply`` takes."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from dsexport import logs
from dsexport.api import loader
from dsexport.api.common import MEMORY_BUDGET_PATTERN
from dsexport.engine import schedule
from dsexport.engine.manifest import RESET_TOKEN_PATTERN
from dsexport.engine.result import Outcome, RunResult
from dsexport.engine.schedule import NoSlotError

EXIT_FAILED = 1
EXIT_INVALID = 2

_files_option = click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML file with Dataset, Destination, DatasetExport and Secret documents (repeatable).",
)


_secrets_option = click.option(
    "--secrets-dir",
    "secret_folders",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Folder of Secrets mounted as files, DIR/NAME/KEY, as in a pod (repeatable).",
)


def _parse_at(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 time such as 2026-12-01T09:30:00Z") from None
    if parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add Z for UTC, e.g. 2026-12-01T09:30:00Z")
    return parsed.astimezone(dt.UTC)


def _check_export_time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        schedule.parse_export_time(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an export time: give a UTC minute as YYYYMMDDHHMM, e.g. 202612011007"
        ) from None
    return value


def _check_memory_budget(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(MEMORY_BUDGET_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a memory budget: give Mi or Gi, at least 256Mi (e.g. 400Mi, 2Gi)")
    return value


def _check_reset_token(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(RESET_TOKEN_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
    return value


def _host_port(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT")
    return host or "0.0.0.0", int(port)  # noqa: S104 - the operator's choice to make, in its pod


def _load(files: Sequence[str], secret_folders: Sequence[str] = ()) -> loader.Bundle:
    try:
        return loader.load_files(files, secret_folders=secret_folders)
    except loader.ManifestError as e:
        click.echo(f"error: invalid manifests:\n{e}", err=True)
        raise SystemExit(EXIT_INVALID) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsexport")
@click.option("--verbose", "-v", is_flag=True, help="Log each export phase to stderr (DSEXPORT_LOG_FORMAT=json: JSON).")
def main(verbose: bool) -> None:
    """Export datasets to cloud storage, exactly once, on a schedule.

    Locally, `dsexport run -f flow.yaml` runs the DatasetExports in the files once; in a cluster the operator
    runs the same code from a CronJob.
    """
    logs.configure(verbose=verbose)


@main.command()
@_files_option
@click.option("--export", "exports", multiple=True, help="Run only this DatasetExport (repeatable).")
@click.option("--dataset", "datasets", multiple=True, help="Run only this dataset of the DatasetExports (repeatable).")
@click.option("--at", "at", help="Run as if at this RFC 3339 time: picks the slot, i.e. the exportTime folder.")
@click.option(
    "--export-time",
    callback=_check_export_time,
    metavar="YYYYMMDDHHMM",
    help="Write every dataset to this exportTime folder (a UTC minute) instead of the slot of --at or now.",
)
@click.option("--reset", "resets", multiple=True, help="Dataset whose next export is a full backfill.")
@click.option(
    "--reset-token",
    callback=_check_reset_token,
    metavar="TOKEN",
    help="Identifies this reset: a retry finds it applied and continues incrementally (needs --reset).",
)
@click.option(
    "--memory-budget",
    callback=_check_memory_budget,
    metavar="QUANTITY",
    help="The most memory this process may use, e.g. 400Mi or 1Gi (at least 256Mi), instead of the "
    "DatasetExports' or Destinations' memoryBudget (default 400Mi).",
)
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--result-file",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the result as compact JSON here (in a pod: /dev/termination-log, at most 4 KiB).",
)
@click.option(
    "--report-status",
    is_flag=True,
    help="In an exporter pod: also record the whole result in the status of the one --export DatasetExport.",
)
@_secrets_option
def run(
    *,
    files: tuple[str, ...],
    exports: tuple[str, ...],
    datasets: tuple[str, ...],
    at: str | None,
    export_time: str | None,
    resets: tuple[str, ...],
    reset_token: str | None,
    memory_budget: str | None,
    output: str,
    result_file: str | None,
    secret_folders: tuple[str, ...],
    report_status: bool = False,
) -> None:
    """Run the DatasetExports in FILES once and print a summary; exit 1 if any dataset failed."""
    if report_status and len(exports) != 1:
        raise click.UsageError("--report-status reports to one DatasetExport: give exactly one --export")
    if at is not None and export_time is not None:
        raise click.UsageError("--at and --export-time both choose the exportTime folder: give one of them")
    if reset_token is not None and not resets:
        raise click.UsageError("--reset-token identifies a reset: give the dataset to reset with --reset")
    from dsexport.cli import local, render  # noqa: PLC0415 - the exporter: pyarrow, polars, every store's client

    bundle = _load(files, secret_folders)
    when = _parse_at(at)
    try:
        plan = local.requests(
            bundle,
            dataset_exports=exports,
            datasets=datasets,
            at=when,
            resets=resets,
            reset_token=reset_token,
            export_time=export_time,
            removed_ok=report_status,
            memory_budget=memory_budget,
        )
    except loader.ManifestError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    console = Console(stderr=True)
    if output == "text" and console.is_terminal:
        results = render.run_with_progress(bundle, plan, console)
    else:
        results = local.run(bundle, plan)
    report = RunResult(at=when, results=results)
    if result_file:
        try:
            Path(result_file).write_text(report.termination_message())
        except OSError as e:
            click.echo(f"error: cannot write the result to {result_file}: {e.strerror}", err=True)
    if report_status:
        _report(exports[0], report)
    if output == "json":
        click.echo(json.dumps(report.to_json_dict(), indent=2))
    else:
        out = Console()
        if not out.is_terminal:
            out = Console(width=160)  # a pipe or a log: do not squeeze the table into 80 columns
        out.print(render.summary(results))
        for r in results:
            if r.outcome == Outcome.failed:
                hint = "; pass --at on or after it" if r.reason == NoSlotError.reason else ""
                click.echo(f"error: {r.dataset_export}/{r.dataset}: {r.message}{hint}", err=True)
    if not report.ok:
        raise SystemExit(EXIT_FAILED)


def _report(dataset_export: str, result: RunResult) -> None:
    """The result into the DatasetExport's status; a failure to report is logged, never turned into a failed
    export (the data is committed, and a retry would only find it so)."""
    from dsexport.operator.report import ReportError, report_result  # noqa: PLC0415 - pods only: loads the client

    try:
        report_result(dataset_export=dataset_export, result_json=json.dumps(result.to_json_dict()))
    except ReportError as e:
        click.echo(f"warning: {e}; the termination message still holds a summary", err=True)


@main.command()
@_files_option
@_secrets_option
def validate(files: tuple[str, ...], secret_folders: tuple[str, ...]) -> None:
    """Check FILES against the same rules as the CRDs (and their references); exit 2 on any problem."""
    bundle = _load(files, secret_folders)
    counts = f"{len(bundle.datasets)} Dataset(s), {len(bundle.destinations)} Destination(s), "
    click.echo(f"ok: {counts}{len(bundle.dataset_exports)} DatasetExport(s)")


@main.command()
@_files_option
@click.option("--destination", "name", required=True, help="The Destination (metadata.name) to test.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--result-file",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the report as compact JSON here (in a pod: /dev/termination-log, at most 4 KiB).",
)
@_secrets_option
def check(
    files: tuple[str, ...], name: str, output: str, secret_folders: tuple[str, ...], result_file: str | None = None
) -> None:
    """Test a destination: write, create-only, read back, list and delete a probe; exit 1 if any step fails."""
    bundle = _load(files, secret_folders)
    destination = bundle.destinations.get(name)
    if destination is None:
        known = ", ".join(sorted(bundle.destinations)) or "none"
        click.echo(f"error: no Destination named {name!r} in the files (found: {known})", err=True)
        raise SystemExit(EXIT_INVALID)
    try:
        credentials = bundle.secret(destination.spec.credentials_secret_ref)
    except loader.ManifestError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    from dsexport.engine.check import check_destination  # noqa: PLC0415 - loads every store's client

    report = check_destination(destination, credentials)
    if result_file:
        try:
            Path(result_file).write_text(report.compact_json())
        except OSError as e:
            click.echo(f"error: cannot write the report to {result_file}: {e.strerror}", err=True)
    if output == "json":
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        click.echo(f"{report.destination} {report.location}".rstrip())
        for step in report.steps:
            mark = "ok  " if step.ok else "FAIL"
            click.echo(f"  {mark} {step.name:<12} {step.seconds * 1000:7.0f} ms  {step.detail}")
        click.echo("healthy" if report.ok else "unhealthy")
    if not report.ok:
        raise SystemExit(EXIT_FAILED)


@main.command(name="schedule")
@_files_option
@click.option("--count", default=5, show_default=True, help="How many next export times to show.")
@click.option("--after", "after", help="Show export times after this RFC 3339 time (default: now).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def schedule_cmd(files: tuple[str, ...], count: int, after: str | None, output: str) -> None:
    """Print each dataset's CronJob schedule and its next export times."""
    bundle = _load(files)
    when = _parse_at(after)
    rows: list[dict[str, Any]] = []
    for name, dataset_export in sorted(bundle.dataset_exports.items()):
        for entry in dataset_export.spec.datasets:
            sched = entry.schedule or dataset_export.spec.schedule
            cron = schedule.cron_schedule(sched)
            upcoming = schedule.next_slots(sched, after=when, count=count)
            rows.append(
                {
                    "datasetExport": name,
                    "dataset": entry.name,
                    "cron": cron.expression,
                    "timeZone": cron.time_zone,
                    "next": [s.isoformat().replace("+00:00", "Z") for s in upcoming],
                }
            )
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['datasetExport']}/{row['dataset']}: cron {row['cron']!r} ({row['timeZone']})")
        for t in row["next"] or ["(no more exports: the schedule has ended)"]:
            click.echo(f"  {t}")


@main.command()
@click.option(
    "--kubeconfig", type=click.Path(dir_okay=False), help="Default: in a pod its service account, else ~/.kube/config."
)
@click.option("--namespace", "namespaces", multiple=True, help="Watch only this namespace (repeatable; default: all).")
@click.option("--image", default=f"dsexport:{version('dsexport')}", show_default=True, help="The exporter pods' image.")
@click.option(
    "--image-pull-policy",
    type=click.Choice(["Always", "IfNotPresent", "Never"]),
    default="IfNotPresent",
    show_default=True,
)
@click.option(
    "--metrics-address",
    default="0.0.0.0:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Serves /metrics (Prometheus), /healthz (liveness) and /readyz (readiness).",
)
@click.option(
    "--leader-election/--no-leader-election",
    default=True,
    show_default=True,
    help="Act only while holding the Lease dsexport-operator, so that replicas never act twice (docs/operator.md).",
)
@click.option(
    "--lease-namespace",
    metavar="NAMESPACE",
    help="Where the Lease lives. Default: the pod's namespace ($DSEXPORT_POD_NAMESPACE, else the service "
    "account's), else default.",
)
@click.option(
    "--webhook-address",
    metavar="HOST:PORT",
    callback=lambda _c, _p, v: _host_port(v),
    help="Serve the validating admission webhook here: deleting a Dataset or Destination that a flow uses is "
    "refused, naming the flows (off by default; the in-use finalizer holds such a deletion either way).",
)
@click.option(
    "--webhook-host",
    metavar="HOST",
    help="The address or name by which the API server reaches --webhook-address (default: its host; 127.0.0.1 "
    "for 0.0.0.0).",
)
@click.option(
    "--webhook-service",
    metavar="NAMESPACE/NAME[:PORT]",
    help="In a cluster: the Service in front of the operator's pods that the API server calls (port default 443). "
    "With DSEXPORT_POD_IP, _NAME, _NAMESPACE and _UID set (downward API), the leader makes itself the Service's "
    "one endpoint (an EndpointSlice NAME-leader), so a Service without a selector reaches only the leader.",
)
def operator(
    *,
    kubeconfig: str | None,
    namespaces: tuple[str, ...],
    image: str,
    image_pull_policy: str,
    metrics_address: str,
    leader_election: bool,
    lease_namespace: str | None,
    webhook_address: tuple[str, int] | None = None,
    webhook_host: str | None = None,
    webhook_service: str | None = None,
) -> None:
    """Run the operator: reconcile Datasets, Destinations and DatasetExports into CronJobs until stopped."""
    # kopf imports the official Kubernetes client whenever it is installed (for adapters the operator does not
    # use): about 45 MiB of generated models in a process that talks to the API server through its own small
    # client, dsexport.operator.apiserver. A None entry makes that import fail the way kopf expects.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from dsexport.operator.handlers import Webhook, own_pod  # noqa: PLC0415 - kopf loads only for this command
    from dsexport.operator.leader import LeadershipLostError  # noqa: PLC0415 - kopf loads only for this command
    from dsexport.operator.main import run as run_operator  # noqa: PLC0415 - kopf loads only for this command

    webhook = None
    if webhook_address is not None:
        service, service_port = None, 443
        if webhook_service:
            match = re.fullmatch(r"([a-z0-9-]+)/([a-z0-9-]+)(?::(\d+))?", webhook_service)
            if match is None:
                raise click.BadParameter("expected NAMESPACE/NAME[:PORT]", param_hint="--webhook-service")
            service, service_port = (match[1], match[2]), int(match[3] or 443)
        webhook = Webhook(
            address=webhook_address[0],
            port=webhook_address[1],
            host=webhook_host,
            service=service,
            service_port=service_port,
            pod=own_pod() if service else None,
        )
    elif webhook_host or webhook_service:
        raise click.UsageError("--webhook-host and --webhook-service need --webhook-address")

    try:
        run_operator(
            kubeconfig=kubeconfig,
            namespaces=namespaces,
            image=image,
            image_pull_policy=image_pull_policy,
            metrics_address=metrics_address,
            leader_election=leader_election,
            lease_namespace=lease_namespace,
            webhook=webhook,
        )
    except LeadershipLostError as e:  # exit non-zero: Kubernetes restarts the container, which then stands by
        click.echo(f"error: {e}", err=True)
        raise SystemExit(EXIT_FAILED) from None
