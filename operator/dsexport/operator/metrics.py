"""Prometheus metrics of the operator, and the small HTTP server that exposes them with health and readiness.

The export counters are not counted here: they are rebuilt from each DatasetExport's status, whose per-dataset
totals are exact (a finished Job is folded in once, in a conditional write to the API server; see ``results``).
A custom collector exposes the latest status seen of each flow, so an operator restart resumes the same values
instead of starting from zero, and a Job is never counted twice however often its status is seen. Only the run
duration histogram lives in memory and restarts from zero with the process (Prometheus' ``rate()`` handles the
reset). Labels carry names (namespace, export, dataset, destination), never per-run values, so the number of
series stays that of the resources.

A plain module: the kopf handlers call ``Metrics`` from their worker threads (guarded by one lock) and ``serve``
runs the HTTP server in a daemon thread. See docs/metrics.md for each metric and example alerts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import ipaddress
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dsexport import api
from dsexport.api.status import DatasetExportStatus

log = logging.getLogger(__name__)

RUN_DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
"""Seconds: from a run with nothing new to export to one near a two-hour timeout."""
FAILED: Final = "failed"
"""The ``lastOutcome`` of a dataset whose last run failed (engine.Outcome.failed)."""

_FLOW_LABELS: Final = ("namespace", "export")
_DATASET_LABELS: Final = ("namespace", "export", "dataset")
_DAY: Final = 86_400.0
_HOUR: Final = 3_600.0

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def timestamp_seconds(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 date-time; None when ``text`` is not one.

    Any number of fractional digits is accepted (the files strategy writes nanoseconds, which ``datetime`` cannot
    parse), as is a space for the ``T`` (how a column cursor of a timezone-aware timestamp reads). A time without
    an offset is not an instant (its zone is unknown), so it is None like any other non-time value.
    """
    if text is None:
        return None
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    leap = second == 60  # 23:59:60: a leap second, one second past :59
    try:
        offset = dt.timedelta(0)
        if match[9] is not None:
            offset = dt.timedelta(hours=int(match[10]), minutes=int(match[11]))
            offset = -offset if match[9] == "-" else offset
        zone = dt.timezone(offset)
        whole = dt.datetime(year, month, day, hour, minute, second - int(leap), tzinfo=zone)
    except ValueError:  # a day 31 of a 30-day month, an hour 24, an offset of 24h or more
        return None
    fraction = int(match[7][:9].ljust(9, "0")) / 1e9 if match[7] else 0.0
    return (whole - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(seconds=1) + int(leap) + fraction


def interval_seconds(schedule: api.Schedule) -> float | None:
    """The time between two slots of ``schedule``; None for ``once`` (there is no next slot)."""
    if schedule.frequency == api.Frequency.daily:
        return _DAY
    if schedule.frequency == api.Frequency.hourly and schedule.interval is not None:
        return schedule.interval * _HOUR
    return None


@dataclasses.dataclass(frozen=True)
class _Dataset:
    """One dataset's series, copied out of the status (which the handlers go on changing in place)."""

    name: str
    runs: int = 0
    failures: int = 0
    records: int = 0
    bytes: int = 0
    files: int = 0
    last_success: float | None = None
    watermark: float | None = None
    interval: float | None = None


@dataclasses.dataclass(frozen=True)
class _Flow:
    datasets: tuple[_Dataset, ...]
    next_export: float | None


def _version() -> str:
    try:
        return importlib.metadata.version("dsexport")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The operator's metrics: the latest status of each DatasetExport, destination availability, run durations.

    Every method is thread-safe. A registry of its own by default, so that instances (and tests) are independent;
    pass ``prometheus_client.REGISTRY`` to expose them next to the default process metrics.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.version = _version()
        self._lock = threading.Lock()
        self._flows: dict[tuple[str, str], _Flow] = {}
        self._destinations: dict[tuple[str, str], bool] = {}
        self._collector = _StatusCollector(self)
        self.registry.register(self._collector)
        self._durations = Histogram(
            "dsexport_run_duration_seconds",
            "How long export Jobs ran, start to finish, by DatasetExport (in memory: restarts from zero with "
            "the operator).",
            labelnames=_FLOW_LABELS,
            buckets=RUN_DURATION_BUCKETS,
            registry=self.registry,
        )

    def update_flow(
        self, *, namespace: str, name: str, flow: api.DatasetExport | None, status: DatasetExportStatus
    ) -> None:
        """Take ``status`` as the DatasetExport's current state (idempotent: the same status, the same values).

        ``flow`` gives the schedule interval of each dataset (its own schedule, else the flow's); None when the
        spec is not known (the interval series are then left out).
        """
        intervals: dict[str, float | None] = {}
        if flow is not None:
            for spec_entry in flow.spec.datasets:
                intervals[spec_entry.name] = interval_seconds(spec_entry.schedule or flow.spec.schedule)
        found: list[_Dataset] = []
        listed: set[str] = set()
        for entry in status.datasets:
            if entry.name in listed:
                continue  # one series per dataset, whatever the status holds
            listed.add(entry.name)
            success = None
            if entry.last_outcome is not None and entry.last_outcome != FAILED:
                success = timestamp_seconds(entry.last_run_time)
            found.append(
                _Dataset(
                    name=entry.name,
                    runs=max(entry.runs, 0),
                    failures=min(max(entry.failures, 0), max(entry.runs, 0)),
                    records=max(entry.records, 0),
                    bytes=max(entry.bytes, 0),
                    files=max(entry.files, 0),
                    last_success=success,
                    watermark=timestamp_seconds(entry.watermark),
                    interval=intervals.get(entry.name),
                )
            )
        # Datasets of the spec that have not run yet: their counters start at zero, so the first run is an increase.
        found += [_Dataset(name=n, interval=i) for n, i in intervals.items() if n not in listed]
        next_export = timestamp_seconds(status.next_export_time)
        with self._lock:
            previous = self._flows.get((namespace, name))
            known = {d.name: d.last_success for d in previous.datasets} if previous else {}
            # A failed last run says nothing of when the last success was: keep the one seen before, if any.
            datasets = tuple(
                d if d.last_success is not None else dataclasses.replace(d, last_success=known.get(d.name))
                for d in found
            )
            self._flows[namespace, name] = _Flow(datasets=datasets, next_export=next_export)

    def forget_flow(self, *, namespace: str, name: str) -> None:
        """Drop every series of a deleted DatasetExport (its run durations too)."""
        with self._lock:
            self._flows.pop((namespace, name), None)
            self._durations.remove(namespace, name)

    def set_destination(self, *, namespace: str, name: str, available: bool | None) -> None:
        """The latest health check of a Destination; None (not checked yet, unknown) leaves its series out."""
        with self._lock:
            if available is None:
                self._destinations.pop((namespace, name), None)
            else:
                self._destinations[namespace, name] = available

    def forget_destination(self, *, namespace: str, name: str) -> None:
        """Drop the series of a deleted Destination."""
        with self._lock:
            self._destinations.pop((namespace, name), None)

    def observe_run(self, *, namespace: str, export: str, seconds: float) -> None:
        """One finished export Job's duration; call it once per Job (when its result is recorded in status).

        A negative duration (clocks of different nodes) counts as zero.
        """
        with self._lock:
            self._durations.labels(namespace, export).observe(max(seconds, 0.0))

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def _snapshot(self) -> tuple[dict[tuple[str, str], _Flow], dict[tuple[str, str], bool]]:
        """A consistent copy of what the collector exposes (the entries are immutable)."""
        with self._lock:
            return dict(self._flows), dict(self._destinations)


class _StatusCollector(Collector):
    """The metrics rebuilt from the latest status of each flow, at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        """The names, so that registering twice in one registry fails instead of exposing everything twice."""
        return list(_families(self._metrics.version, {}, {}))

    def collect(self) -> Iterable[Metric]:
        flows, destinations = self._metrics._snapshot()
        return list(_families(self._metrics.version, flows, destinations))


def _families(
    version: str, flows: Mapping[tuple[str, str], _Flow], destinations: Mapping[tuple[str, str], bool]
) -> Iterator[Metric]:
    runs = CounterMetricFamily(
        "dsexport_runs",
        "Runs of each dataset by result (succeeded or failed), from the DatasetExport's status.",
        labels=(*_DATASET_LABELS, "result"),
    )
    records = CounterMetricFamily(
        "dsexport_records", "Records exported, from the DatasetExport's status.", labels=_DATASET_LABELS
    )
    size = CounterMetricFamily(
        "dsexport_bytes", "Bytes written to the destination, from the DatasetExport's status.", labels=_DATASET_LABELS
    )
    files = CounterMetricFamily(
        "dsexport_files", "Files written to the destination, from the DatasetExport's status.", labels=_DATASET_LABELS
    )
    success = GaugeMetricFamily(
        "dsexport_last_success_timestamp_seconds",
        "When the last run of the dataset that did not fail ended (exported, no new data, committed or superseded).",
        labels=_DATASET_LABELS,
    )
    watermark = GaugeMetricFamily(
        "dsexport_watermark_timestamp_seconds",
        "The dataset's committed watermark, when it is a time: the newest data exported.",
        labels=_DATASET_LABELS,
    )
    interval = GaugeMetricFamily(
        "dsexport_schedule_interval_seconds",
        "Seconds between the dataset's scheduled slots (its own schedule, else the flow's); absent for once.",
        labels=_DATASET_LABELS,
    )
    next_export = GaugeMetricFamily(
        "dsexport_next_export_timestamp_seconds",
        "The flow's next scheduled slot; absent when suspended or no slot is left.",
        labels=_FLOW_LABELS,
    )
    available = GaugeMetricFamily(
        "dsexport_destination_available",
        "1 when the Destination's last health check passed, 0 when it failed; absent when unknown.",
        labels=("namespace", "destination"),
    )
    build = GaugeMetricFamily("dsexport_build_info", "The dsexport version running, always 1.", labels=("version",))
    build.add_metric([version], 1)
    for (namespace, export), flow in sorted(flows.items()):
        if flow.next_export is not None:
            next_export.add_metric([namespace, export], flow.next_export)
        for d in flow.datasets:
            labels = [namespace, export, d.name]
            runs.add_metric([*labels, "succeeded"], d.runs - d.failures)
            runs.add_metric([*labels, "failed"], d.failures)
            records.add_metric(labels, d.records)
            size.add_metric(labels, d.bytes)
            files.add_metric(labels, d.files)
            for family, value in ((success, d.last_success), (watermark, d.watermark), (interval, d.interval)):
                if value is not None:
                    family.add_metric(labels, value)
    for (namespace, name), up in sorted(destinations.items()):
        available.add_metric([namespace, name], 1 if up else 0)
    yield from (runs, records, size, files, success, watermark, interval, next_export, available, build)


# ---------------------------------------------------------------------------------------------------- HTTP server


def parse_address(address: str) -> tuple[str, int, socket.AddressFamily]:
    """``HOST:PORT`` (``[IPv6]:PORT`` for IPv6, an empty HOST for every IPv4 interface) into a host, a port and
    the address family to bind with."""
    text = address.strip()
    bracketed = re.fullmatch(r"\[([^\[\]]*)\]:([^:]*)", text)
    if bracketed is not None:
        host, port_text = bracketed[1], bracketed[2]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid listen address {address!r}: {host!r} is not an IPv6 address") from None
        family = socket.AF_INET6
    elif text.startswith("["):
        raise ValueError(f"invalid listen address {address!r}: expected [IPV6]:PORT, e.g. [::1]:8080")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"invalid listen address {address!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
        if ":" in host or "[" in host or "]" in host:
            raise ValueError(f"invalid listen address {address!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
        if host and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ValueError(f"invalid listen address {address!r}: {host!r} is not a host name or IPv4 address")
        family = socket.AF_INET
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {address!r}: the port must be 0 to 65535, got {port_text!r}")
    return host, int(port_text), family


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        family: socket.AddressFamily,
        metrics: Metrics,
        ready: Callable[[], bool],
    ) -> None:
        self.address_family = family
        self.metrics = metrics
        self.ready = ready
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN, which can wait on DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                body = encoder(self.server.metrics.registry)
            except Exception:
                log.exception("rendering the metrics failed")
                self._reply(500, b"rendering the metrics failed\n")
                return
            self._reply(200, body, content_type)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            try:
                ready = bool(self.server.ready())
            except Exception:
                log.exception("the readiness check failed")
                ready = False
            if ready:
                self._reply(200, b"ok\n")
            else:
                self._reply(503, b"not ready\n")
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s: %s", self.address_string(), format % args)


class MetricsServer:
    """The running server: where it listens, and ``shutdown``."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._stopped = False
        self._lock = threading.Lock()
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @property
    def address(self) -> str:
        """``HOST:PORT`` as bound (the real port when 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving and close the socket; later calls do nothing."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(*, metrics: Metrics, address: str, ready: Callable[[], bool]) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` (200 while the process serves) and ``/readyz`` (200 when ``ready()``,
    else 503) on ``address`` (``HOST:PORT``; port 0 picks a free one, see ``MetricsServer.port``) from a daemon
    thread. Raises ValueError for a malformed address, OSError when it cannot be bound."""
    host, port, family = parse_address(address)
    server = _Server((host, port), family=family, metrics=metrics, ready=ready)
    thread = threading.Thread(target=server.serve_forever, name="dsexport-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
