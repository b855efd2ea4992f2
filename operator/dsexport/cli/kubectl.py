"""``kubectl dsexport``: the kubectl plugin, so that nobody types (or mistypes) an annotation by hand.

The operator acts on annotations (``dsexport.io/run-now``, ``dsexport.io/reset``, ``dsexport.io/check-now``) and
reports in ``status``. This plugin only sets those annotations and reads that status, with the user's own
kubeconfig and RBAC: it never does anything the user could not do with kubectl, and it needs no operator-side
endpoint. kubectl finds it on PATH by its name, ``kubectl-dsexport`` (a console script of this package).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from urllib3.exceptions import HTTPError

from dsexport import api
from dsexport.api.status import Condition, DatasetExportStatus, DatasetProgress, DestinationStatus
from dsexport.cli.commands import EXIT_FAILED, EXIT_INVALID
from dsexport.cli.render import _human_bytes as human_bytes
from dsexport.operator.checks import AVAILABLE, CHECK_NOW
from dsexport.operator.reconcile import DESTINATION_AVAILABLE, READY, RESET, RUN_NOW

PROG_NAME: Final = "kubectl dsexport"
IN_CLUSTER_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POLL_SECONDS: Final = 1.0
NONE: Final = "-"

M = TypeVar("M", bound=BaseModel)

_OUTCOME_STYLE: Final = {
    "exported": "green",
    "failed": "bold red",
    "no-new-data": "cyan",
    "already-committed": "cyan",
    "superseded": "cyan",
}


@dataclass(frozen=True)
class Kind:
    """What the plugin needs of a custom resource kind: its name for people and its plural for the API."""

    name: str
    plural: str

    @classmethod
    def of(cls, resource: type[api.Resource]) -> Kind:
        return cls(name=resource.kind_name, plural=resource.plural)


FLOW: Final = Kind.of(api.DatasetExport)
DESTINATION: Final = Kind.of(api.Destination)


def _fail(message: str, *, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr and an exit code, never a traceback: the reader is a person at a terminal."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _body(e: ApiException) -> dict[str, Any]:
    """The Status object the API server sent with the error, if it sent one."""
    try:
        body = json.loads(e.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _server_message(e: ApiException) -> str:
    """The API server's own words (a 403 names the verb, resource and user), else the HTTP reason."""
    message = _body(e).get("message")
    return str(message) if message else f"{e.status} {e.reason}".strip()


@dataclass(frozen=True)
class Cluster:
    """The connection and namespace every command works in, resolved from the global options on first use."""

    custom: Any  # client.CustomObjectsApi; the kubernetes client is untyped here (see pyproject.toml)
    namespace: str
    server: str

    @contextmanager
    def errors(self, *, kind: Kind, name: str) -> Iterator[None]:
        """Turn what the API server (or the network) says into one line a user can act on."""
        try:
            yield
        except ApiException as e:
            if e.status == 404:
                details = _body(e).get("details")
                if isinstance(details, dict) and details.get("name") == name:
                    _fail(f"{kind.name} {name} not found in namespace {self.namespace}")
                _fail(
                    f"the API server at {self.server} does not serve {kind.plural}.{api.GROUP}/{api.VERSION}: "
                    "are the dsexport CRDs installed?"
                )
            _fail(_server_message(e))
        except HTTPError as e:  # MaxRetryError, after the client's retries: its reason is the last attempt's
            _fail(f"cannot reach the API server at {self.server}: {getattr(e, 'reason', None) or e}")

    def get(self, *, kind: Kind, name: str) -> dict[str, Any]:
        with self.errors(kind=kind, name=name):
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, kind.plural, name
            )
        return obj

    def annotate(self, *, kind: Kind, name: str, key: str, value: str) -> None:
        """Set one annotation with a JSON merge patch: it touches nothing else, and needs only ``patch``."""
        patch = {"metadata": {"annotations": {key: value}}}
        with self.errors(kind=kind, name=name):
            self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                self.namespace,
                kind.plural,
                name,
                patch,
                _content_type="application/merge-patch+json",
            )


@dataclass(frozen=True)
class Options:
    """The global options, kept unresolved so that ``--help`` of a command works without a cluster."""

    kubeconfig: str | None
    context: str | None
    namespace: str | None

    def connect(self) -> Cluster:
        """Like kubectl: the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``), else the pod's
        service account when the plugin runs inside the cluster."""
        try:
            api_client = config.new_client_from_config(config_file=self.kubeconfig, context=self.context)
            namespace = self.namespace or self._context_namespace()
        except ConfigException as e:
            if self.kubeconfig or self.context:
                _fail(f"cannot use the kubeconfig: {e}")
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                _fail(f"no kubeconfig ({e}) and not inside a pod: pass --kubeconfig or set KUBECONFIG")
            api_client = client.ApiClient(configuration)
            namespace = self.namespace or _in_cluster_namespace()
        server = str(api_client.configuration.host)
        return Cluster(custom=client.CustomObjectsApi(api_client), namespace=namespace, server=server)

    def _context_namespace(self) -> str:
        contexts, current = config.list_kube_config_contexts(config_file=self.kubeconfig)
        chosen = next((c for c in contexts if c.get("name") == self.context), None) if self.context else current
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
        return str(namespace) if namespace else "default"


def _in_cluster_namespace() -> str:
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _unique_value(now: dt.datetime | None = None) -> str:
    """A new annotation value: the operator acts once per distinct value, so each request needs its own."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _annotated(*, kind: Kind, name: str, key: str, value: str, namespace: str) -> None:
    """Say what changed, in kubectl's words, so the user can find it again with kubectl."""
    click.echo(f"{kind.plural}.{api.GROUP}/{name} annotated {key}={value} (namespace {namespace})")


def _cluster(ctx: click.Context) -> Cluster:
    options = ctx.find_object(Options)
    assert options is not None  # set by main
    return options.connect()


def _console() -> Console:
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a pipe or a log: do not fold the table into 80 columns
    return out


class _Plugin(click.Group):
    """Names itself ``kubectl dsexport`` in usage lines, which is how users call it."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", PROG_NAME)
        return super().main(*args, **kwargs)


@click.group(cls=_Plugin, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dsexport")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Path to the kubeconfig file to use.")
@click.option("--context", help="The name of the kubeconfig context to use.")
@click.option(
    "-n", "--namespace", help="The namespace of the objects (default: the context's namespace, else default)."
)
@click.pass_context
def main(ctx: click.Context, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Operate dsexport DatasetExports and Destinations: run now, reset, status, check.

    Each command sets the annotation the operator acts on, or reads the status it writes, with your
    kubeconfig and your RBAC permissions.
    """
    ctx.obj = Options(kubeconfig=kubeconfig, context=context, namespace=namespace)


@main.command("run-now")
@click.argument("flow")
@click.pass_context
def run_now(ctx: click.Context, flow: str) -> None:
    """Export FLOW (a DatasetExport) now, outside its schedule, without waiting for the next slot."""
    cluster = _cluster(ctx)
    value = _unique_value()
    cluster.annotate(kind=FLOW, name=flow, key=RUN_NOW, value=value)
    _annotated(kind=FLOW, name=flow, key=RUN_NOW, value=value, namespace=cluster.namespace)
    click.echo("The operator starts an export Job for each of its CronJobs now.")
    click.echo(f"Follow it with: kubectl dsexport status {flow} -n {cluster.namespace}")


@main.command()
@click.argument("flow")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def reset(ctx: click.Context, flow: str, datasets: tuple[str, ...], yes: bool) -> None:
    """Make the next export of DATASETS of FLOW a full backfill (the operator starts it right away).

    Everything is exported again from the start, so the destination receives duplicates of what it already
    holds: that is the point of a reset (a consumer lost data, or the source was rewritten).
    """
    cluster = _cluster(ctx)
    obj = cluster.get(kind=FLOW, name=flow)
    valid = [str(d.get("name")) for d in (obj.get("spec") or {}).get("datasets") or [] if isinstance(d, Mapping)]
    chosen = list(dict.fromkeys(datasets))
    unknown = [d for d in chosen if d not in valid]
    if unknown:
        _fail(
            f"{', '.join(unknown)} not in spec.datasets of {FLOW.name} {flow}; its datasets are: "
            f"{', '.join(valid) or '(none)'}",
            code=EXIT_INVALID,
        )
    click.echo(
        f"warning: the next export of {', '.join(chosen)} is a full backfill: all of their data is exported again, "
        "so the destination gets duplicates of what it already holds (by design).",
        err=True,
    )
    if not yes and sys.stdin.isatty():
        click.confirm("Reset?", abort=True, err=True)
    value = ",".join(chosen)
    cluster.annotate(kind=FLOW, name=flow, key=RESET, value=value)
    _annotated(kind=FLOW, name=flow, key=RESET, value=value, namespace=cluster.namespace)
    click.echo(f"Follow it with: kubectl dsexport status {flow} -n {cluster.namespace}")


def _validated(model: type[M], raw: Any, *, what: str) -> M:
    try:
        return model.model_validate(raw or {})
    except ValidationError as e:
        _fail(f"the status of {what} is not readable by this version of the plugin: {e.errors()[0]['msg']}")


def _condition(conditions: list[Condition], type_: str) -> str:
    found = next((c for c in conditions if c.type == type_), None)
    if found is None:
        return "unknown (the operator has not reported yet)"
    return f"{found.status} ({found.reason}){': ' + found.message if found.message else ''}"


def _header(name: str, namespace: str, status: DatasetExportStatus) -> list[str]:
    schedule = status.schedule or NONE
    if status.cron:
        schedule += f" (cron {status.cron}, UTC)"
    lines = [
        f"DatasetExport: {namespace}/{name}",
        f"Ready:         {_condition(status.conditions, READY)}",
    ]
    if any(c.type == DESTINATION_AVAILABLE for c in status.conditions):
        lines.append(f"Destination:   {_condition(status.conditions, DESTINATION_AVAILABLE)}")
    lines += [
        f"Schedule:      {schedule}",
        f"Next export:   {status.next_export_time or ('none: finished' if status.finished else NONE)}",
    ]
    last = status.last_export
    if last is None:
        lines.append(f"Last export:   {NONE}")
    else:
        when = f" at {last.end}" if last.end else ""
        totals = f"{last.records:,} records, {human_bytes(last.bytes)}, {last.files} files"
        lines.append(f"Last export:   Job {last.job} {last.result}{when} ({totals})")
        if last.message:
            lines.append(f"               {last.message}")
    if len(status.cron_jobs) > 1:  # datasets on schedules of their own: show which CronJob runs which
        for cron in status.cron_jobs:
            lines.append(f"CronJob:       {cron.name} (cron {cron.schedule}): {', '.join(cron.datasets)}")
    return lines


def _table(spec_datasets: list[str], status: DatasetExportStatus) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("DATASET", "WATERMARK", "LAST EXPORTTIME", "OUTCOME"):
        table.add_column(column, no_wrap=True)
    for column in ("RUNS", "FAILURES", "RECORDS", "BYTES", "FILES"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("NEXT EXPORT", no_wrap=True)
    progress = {d.name: d for d in status.datasets}
    names = spec_datasets + [d.name for d in status.datasets if d.name not in spec_datasets]
    for name in names:
        d: DatasetProgress | None = progress.get(name)
        if d is None:
            table.add_row(name, *[NONE] * 8, status.next_export_time or NONE)
            continue
        outcome = d.last_outcome or NONE
        style = _OUTCOME_STYLE.get(outcome, "")
        table.add_row(
            name,
            d.watermark or NONE,
            d.last_export_time or NONE,
            f"[{style}]{outcome}[/]" if style else outcome,
            str(d.runs),
            str(d.failures),
            f"{d.records:,}",
            human_bytes(d.bytes),
            str(d.files),
            status.next_export_time or NONE,
        )
    return table


@main.command()
@click.argument("flow")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def status(ctx: click.Context, flow: str, output: str) -> None:
    """Show where FLOW stands: its Ready condition, schedule, last export, and each dataset's watermark and totals."""
    cluster = _cluster(ctx)
    obj = cluster.get(kind=FLOW, name=flow)
    raw = obj.get("status") or {}
    if output == "json":
        click.echo(json.dumps(raw, indent=2, sort_keys=True))
        return
    parsed = _validated(DatasetExportStatus, raw, what=f"{FLOW.name} {flow}")
    spec_datasets = [
        str(d.get("name")) for d in (obj.get("spec") or {}).get("datasets") or [] if isinstance(d, Mapping)
    ]
    for line in _header(flow, cluster.namespace, parsed):
        click.echo(line)
    click.echo()
    _console().print(_table(spec_datasets, parsed))
    for d in parsed.datasets:
        if d.last_outcome == "failed" and d.message:
            click.echo(f"error: {d.name}: {d.message}", err=True)


@main.command()
@click.argument("destination")
@click.option("--wait", is_flag=True, help="Wait for the operator's check and print its result (exit 1 if failed).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="With --wait: give up after this many seconds.",
)
@click.pass_context
def check(ctx: click.Context, destination: str, wait: bool, timeout: float) -> None:
    """Ask the operator to check DESTINATION now rather than at its next healthCheck.interval: the check writes,
    reads, lists and deletes a probe, exactly what an export needs, and Available says which step failed."""
    cluster = _cluster(ctx)
    before = _validated(
        DestinationStatus, cluster.get(kind=DESTINATION, name=destination).get("status"), what=destination
    ).last_check_time
    value = _unique_value()
    cluster.annotate(kind=DESTINATION, name=destination, key=CHECK_NOW, value=value)
    _annotated(kind=DESTINATION, name=destination, key=CHECK_NOW, value=value, namespace=cluster.namespace)
    if not wait:
        click.echo(f"See the result with: kubectl dsexport check {destination} --wait -n {cluster.namespace}")
        return
    checked = _wait_for_check(cluster, destination=destination, before=before, timeout=timeout)
    available = next((c for c in checked.conditions if c.type == AVAILABLE), None)
    click.echo(f"Checked at {checked.last_check_time}: {AVAILABLE} {_condition(checked.conditions, AVAILABLE)}")
    if available is not None and available.status == "False":
        raise SystemExit(EXIT_FAILED)


def _wait_for_check(cluster: Cluster, *, destination: str, before: str | None, timeout: float) -> DestinationStatus:
    """Poll until ``status.lastCheckTime`` moves past ``before``: the operator's answer to this request."""
    deadline = time.monotonic() + timeout
    while True:
        current = _validated(
            DestinationStatus, cluster.get(kind=DESTINATION, name=destination).get("status"), what=destination
        )
        if current.last_check_time is not None and current.last_check_time != before:
            return current
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _fail(
                f"timed out after {timeout:g}s waiting for the operator to check {DESTINATION.name} {destination} "
                f"(status.lastCheckTime is still {before or 'unset'}): is the operator running?"
            )
        time.sleep(min(POLL_SECONDS, remaining))
