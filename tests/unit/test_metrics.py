"""The operator's metrics: counters rebuilt from status (exact across restarts), the gauges derived from status and
spec, and the HTTP server with health and readiness, read back with prometheus_client's own parsers."""

from __future__ import annotations

import importlib.metadata
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from dsexport.api import DatasetExport
from dsexport.api.status import DatasetExportStatus, DatasetProgress, LastExport
from dsexport.operator import metrics as m

NS = "team-a"


def _flow(name: str = "flow", **spec: Any) -> DatasetExport:
    return DatasetExport.model_validate(
        {
            "kind": "DatasetExport",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "destinationRef": {"name": "s3"},
                "datasets": [
                    {"name": "events"},
                    {"name": "clicks", "schedule": {"frequency": "hourly", "interval": 6, "time": "03:00"}},
                    {"name": "backfill", "schedule": {"frequency": "once", "startDate": "2026-12-01"}},
                ],
                "schedule": {"frequency": "daily", "time": "09:30"},
                **spec,
            },
        }
    )


def _status(*datasets: DatasetProgress, next_export: str | None = "2026-12-02T09:30:00Z") -> DatasetExportStatus:
    return DatasetExportStatus(
        datasets=list(datasets),
        next_export_time=next_export,
        last_export=LastExport(job="flow-29012345", export_time="202612010930", result="Succeeded"),
        recorded_jobs=["flow-29012345"],
    )


def _events(**changes: Any) -> DatasetProgress:
    values: dict[str, Any] = {
        "name": "events",
        "runs": 7,
        "failures": 2,
        "records": 1500,
        "bytes": 98765,
        "files": 9,
        "watermark": "2026-11-30T19:45:01.123456789Z",
        "last_outcome": "exported",
        "last_run_time": "2026-12-01T09:31:00Z",
    }
    values.update(changes)
    return DatasetProgress(**values)


def _samples(text: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    decoded = text.decode() if isinstance(text, bytes) else text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(decoded)
        for s in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _counters(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[Any, float]:
    names = ("dsexport_runs_total", "dsexport_records_total", "dsexport_bytes_total", "dsexport_files_total")
    return {k: v for k, v in samples.items() if k[0] in names}


def _fed(status: DatasetExportStatus, flow: DatasetExport | None = None) -> m.Metrics:
    metrics = m.Metrics()
    metrics.update_flow(namespace=NS, name="flow", flow=flow, status=status)
    return metrics


# ------------------------------------------------------------------------------------------------- counters


def test_counters_are_the_status_totals_and_seeing_a_status_again_counts_nothing() -> None:
    status = _status(_events())
    metrics = _fed(status)
    first = _samples(metrics.render())
    d = {"namespace": NS, "export": "flow", "dataset": "events"}
    assert _value(first, "dsexport_records_total", **d) == 1500
    assert _value(first, "dsexport_bytes_total", **d) == 98765
    assert _value(first, "dsexport_files_total", **d) == 9
    assert _value(first, "dsexport_runs_total", **d, result="failed") == 2
    assert _value(first, "dsexport_runs_total", **d, result="succeeded") == 5

    metrics.update_flow(namespace=NS, name="flow", flow=None, status=status)
    metrics.update_flow(namespace=NS, name="flow", flow=None, status=status.model_copy(deep=True))
    assert _counters(_samples(metrics.render())) == _counters(first)


def test_a_restarted_operator_resumes_the_same_counter_values() -> None:
    status = _status(_events(), _events(name="orders", runs=3, failures=0, records=42))
    before = _counters(_samples(_fed(status, _flow()).render()))
    # The restarted operator reads the status back from the API server.
    reread = DatasetExportStatus.model_validate(status.model_dump(by_alias=True))
    after = _counters(_samples(_fed(reread, _flow()).render()))
    assert after == before
    orders = {"namespace": NS, "export": "flow", "dataset": "orders"}
    assert _value(after, "dsexport_records_total", **orders) == 42
    assert _value(after, "dsexport_runs_total", **orders, result="succeeded") == 3
    assert not [k for k in _samples(_fed(status).render()) if k[0].startswith("dsexport_runs_created")]


def test_counters_follow_the_status_as_jobs_are_recorded() -> None:
    metrics = _fed(_status(_events()))
    metrics.update_flow(
        namespace=NS, name="flow", flow=None, status=_status(_events(runs=8, failures=3, records=1600, files=10))
    )
    s = _samples(metrics.render())
    d = {"namespace": NS, "export": "flow", "dataset": "events"}
    assert (
        _value(s, "dsexport_runs_total", **d, result="succeeded"),
        _value(s, "dsexport_runs_total", **d, result="failed"),
    ) == (5, 3)
    assert (_value(s, "dsexport_records_total", **d), _value(s, "dsexport_files_total", **d)) == (1600, 10)


def test_datasets_of_the_spec_that_never_ran_start_at_zero() -> None:
    s = _samples(_fed(_status(_events()), _flow()).render())
    d = {"namespace": NS, "export": "flow", "dataset": "clicks"}
    assert _value(s, "dsexport_runs_total", **d, result="succeeded") == 0
    assert _value(s, "dsexport_records_total", **d) == 0
    assert _value(s, "dsexport_last_success_timestamp_seconds", **d) is None


def test_no_label_carries_a_per_run_value() -> None:
    text = _fed(_status(_events()), _flow()).render().decode()
    assert "flow-29012345" not in text
    assert "202612010930" not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= {"namespace", "export", "dataset", "result", "destination", "version", "le"}


def test_registering_twice_in_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    m.Metrics(registry)
    with pytest.raises(ValueError, match="dsexport_runs"):
        m.Metrics(registry)


# --------------------------------------------------------------------------------------------------- gauges


def test_last_success_is_the_last_run_time_unless_that_run_failed() -> None:
    d = {"namespace": NS, "export": "flow", "dataset": "events"}
    metrics = _fed(_status(_events(last_outcome="no-new-data", last_run_time="2026-12-01T09:31:00Z")))
    success = 1_796_117_460.0  # 2026-12-01T09:31:00Z
    assert _value(_samples(metrics.render()), "dsexport_last_success_timestamp_seconds", **d) == success

    failed = _status(_events(last_outcome="failed", last_run_time="2026-12-02T09:31:00Z"))
    metrics.update_flow(namespace=NS, name="flow", flow=None, status=failed)
    assert _value(_samples(metrics.render()), "dsexport_last_success_timestamp_seconds", **d) == success

    # A fresh start whose last run failed knows of no success.
    assert _value(_samples(_fed(failed).render()), "dsexport_last_success_timestamp_seconds", **d) is None

    metrics.update_flow(
        namespace=NS, name="flow", flow=None, status=_status(_events(last_run_time="2026-12-03T09:31:00Z"))
    )
    assert _value(_samples(metrics.render()), "dsexport_last_success_timestamp_seconds", **d) == success + 2 * 86400


@pytest.mark.parametrize(
    ("watermark", "expected"),
    [
        ("2026-11-30T19:45:01.123456789Z", 1_796_067_901.123456789),
        ("2026-11-30T19:45:01Z", 1_796_067_901.0),
        ("2026-11-30 20:45:01.5+01:00", 1_796_067_901.5),  # a timezone-aware column cursor
        ("12345", None),  # a cursor that is not a time
        ("2026-11-30 19:45:01", None),  # no offset: not an instant
        (None, None),
    ],
)
def test_the_watermark_is_exposed_when_it_is_a_time(watermark: str | None, expected: float | None) -> None:
    s = _samples(_fed(_status(_events(watermark=watermark))).render())
    value = _value(s, "dsexport_watermark_timestamp_seconds", namespace=NS, export="flow", dataset="events")
    assert value == (pytest.approx(expected, abs=1e-6) if expected is not None else None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("1970-01-01T00:00:00.000000001z", 1e-9),
        ("1970-01-01t01:00:00+01:00", 0.0),
        ("1969-12-31T23:00:00-01:00", 0.0),
        ("2016-12-31T23:59:60Z", 1_483_228_800.0),  # a leap second
        ("2026-02-30T00:00:00Z", None),
        ("2026-12-01T24:00:00Z", None),
        ("2026-12-01", None),
        ("2026-12-01T00:00:00+25:00", None),
        ("", None),
    ],
)
def test_timestamp_parsing(text: str, expected: float | None) -> None:
    assert m.timestamp_seconds(text) == (pytest.approx(expected, abs=1e-9) if expected is not None else None)


def test_the_schedule_interval_of_each_dataset_overrides_the_flows() -> None:
    s = _samples(_fed(_status(_events()), _flow()).render())
    labels = {"namespace": NS, "export": "flow"}
    assert _value(s, "dsexport_schedule_interval_seconds", **labels, dataset="events") == 86400
    assert _value(s, "dsexport_schedule_interval_seconds", **labels, dataset="clicks") == 6 * 3600
    assert _value(s, "dsexport_schedule_interval_seconds", **labels, dataset="backfill") is None  # once

    hourly = _flow(schedule={"frequency": "hourly", "interval": 12, "time": "00:00"})
    s = _samples(_fed(_status(_events()), hourly).render())
    assert _value(s, "dsexport_schedule_interval_seconds", **labels, dataset="events") == 12 * 3600
    assert _value(s, "dsexport_schedule_interval_seconds", **labels, dataset="clicks") == 6 * 3600

    unknown_spec = _samples(_fed(_status(_events())).render())
    assert not [k for k in unknown_spec if k[0] == "dsexport_schedule_interval_seconds"]


def test_the_next_export_time_when_there_is_one() -> None:
    s = _samples(_fed(_status(_events())).render())
    assert _value(s, "dsexport_next_export_timestamp_seconds", namespace=NS, export="flow") == 1_796_203_800.0
    s = _samples(_fed(_status(_events(), next_export=None)).render())
    assert _value(s, "dsexport_next_export_timestamp_seconds", namespace=NS, export="flow") is None


def test_destination_availability_and_unknown() -> None:
    metrics = m.Metrics()
    metrics.set_destination(namespace=NS, name="s3", available=True)
    metrics.set_destination(namespace=NS, name="sftp", available=False)
    s = _samples(metrics.render())
    assert _value(s, "dsexport_destination_available", namespace=NS, destination="s3") == 1
    assert _value(s, "dsexport_destination_available", namespace=NS, destination="sftp") == 0
    metrics.set_destination(namespace=NS, name="s3", available=None)
    metrics.forget_destination(namespace=NS, name="sftp")
    assert not [k for k in _samples(metrics.render()) if k[0] == "dsexport_destination_available"]


def test_run_durations_in_export_sized_buckets() -> None:
    metrics = m.Metrics()
    for seconds in (0.5, 42.0, 5000.0, -1.0):
        metrics.observe_run(namespace=NS, export="flow", seconds=seconds)
    s = _samples(metrics.render())
    flow = {"namespace": NS, "export": "flow"}
    assert _value(s, "dsexport_run_duration_seconds_count", **flow) == 4
    assert _value(s, "dsexport_run_duration_seconds_sum", **flow) == 5042.5
    assert _value(s, "dsexport_run_duration_seconds_bucket", **flow, le="1.0") == 2  # 0.5 and -1 (as 0)
    assert _value(s, "dsexport_run_duration_seconds_bucket", **flow, le="60.0") == 3
    assert _value(s, "dsexport_run_duration_seconds_bucket", **flow, le="3600.0") == 3
    assert _value(s, "dsexport_run_duration_seconds_bucket", **flow, le="7200.0") == 4
    les = sorted(float(dict(k[1])["le"]) for k in s if k[0] == "dsexport_run_duration_seconds_bucket")
    assert les == [*m.RUN_DURATION_BUCKETS, float("inf")]


def test_forgetting_a_flow_removes_its_series() -> None:
    metrics = _fed(_status(_events()), _flow())
    metrics.update_flow(namespace=NS, name="other", flow=None, status=_status(_events()))
    metrics.observe_run(namespace=NS, export="flow", seconds=3)
    metrics.forget_flow(namespace=NS, name="flow")
    metrics.forget_flow(namespace=NS, name="never-seen")
    left = {dict(k[1]).get("export") for k in _samples(metrics.render())} - {None}
    assert left == {"other"}


def test_build_info() -> None:
    s = _samples(m.Metrics().render())
    assert _value(s, "dsexport_build_info", version=importlib.metadata.version("dsexport")) == 1


def test_updates_from_many_threads_while_scraping() -> None:
    metrics = m.Metrics()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for n in range(50):
                metrics.update_flow(namespace=NS, name=f"f{i}", flow=None, status=_status(_events(runs=n, failures=0)))
                metrics.observe_run(namespace=NS, export=f"f{i}", seconds=n)
                metrics.render()
        except BaseException as e:  # pragma: no cover - only on a failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = _samples(metrics.render())
    assert [
        _value(s, "dsexport_runs_total", namespace=NS, export=f"f{i}", dataset="events", result="succeeded")
        for i in range(4)
    ] == [49] * 4


# ---------------------------------------------------------------------------------------------- HTTP server

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an environment's proxy


def _get(url: str, accept: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read()


@pytest.fixture
def ready() -> list[bool]:
    return [False]


@pytest.fixture
def server(ready: list[bool]) -> Iterator[tuple[m.MetricsServer, m.Metrics]]:
    metrics = _fed(_status(_events()), _flow())
    handle = m.serve(metrics=metrics, address="127.0.0.1:0", ready=lambda: ready[0])
    try:
        yield handle, metrics
    finally:
        handle.shutdown()


def test_metrics_over_http(server: tuple[m.MetricsServer, m.Metrics]) -> None:
    handle, metrics = server
    assert handle.port != 0
    assert handle.address == f"127.0.0.1:{handle.port}"
    code, content_type, body = _get(f"http://{handle.address}/metrics")
    assert (code, content_type.split(";")[0]) == (200, "text/plain")
    s = _samples(body)
    d = {"namespace": NS, "export": "flow", "dataset": "events"}
    assert _value(s, "dsexport_records_total", **d) == 1500
    metrics.update_flow(namespace=NS, name="flow", flow=None, status=_status(_events(records=1700)))
    assert _value(_samples(_get(f"http://{handle.address}/metrics")[2]), "dsexport_records_total", **d) == 1700


def test_openmetrics_when_asked_for(server: tuple[m.MetricsServer, m.Metrics]) -> None:
    handle, _ = server
    code, content_type, body = _get(f"http://{handle.address}/metrics", accept="application/openmetrics-text")
    assert (code, content_type.split(";")[0]) == (200, "application/openmetrics-text")
    families = openmetrics_families(body.decode())  # type: ignore[no-untyped-call]  # untyped in 0.26
    runs = next(f for f in families if f.name == "dsexport_runs")
    assert runs.type == "counter"
    assert {s.labels["result"]: s.value for s in runs.samples if s.labels["dataset"] == "events"} == {
        "succeeded": 5,
        "failed": 2,
    }


def test_health_and_readiness(server: tuple[m.MetricsServer, m.Metrics], ready: list[bool]) -> None:
    handle, _ = server
    assert _get(f"http://{handle.address}/healthz")[::2] == (200, b"ok\n")
    assert _get(f"http://{handle.address}/readyz")[0] == 503
    ready[0] = True
    assert _get(f"http://{handle.address}/readyz")[::2] == (200, b"ok\n")
    assert _get(f"http://{handle.address}/nothing")[0] == 404


def test_a_failing_readiness_check_is_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("no connection to the API server")

    handle = m.serve(metrics=m.Metrics(), address="127.0.0.1:0", ready=broken)
    try:
        assert _get(f"http://{handle.address}/readyz")[0] == 503
        assert _get(f"http://{handle.address}/healthz")[0] == 200
    finally:
        handle.shutdown()


def test_shutdown_stops_serving() -> None:
    handle = m.serve(metrics=m.Metrics(), address="127.0.0.1:0", ready=lambda: True)
    url = f"http://{handle.address}/healthz"
    assert _get(url)[0] == 200
    handle.shutdown()
    handle.shutdown()  # a second call does nothing
    with pytest.raises(urllib.error.URLError):
        _get(url)


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_serving_on_ipv6() -> None:
    handle = m.serve(metrics=m.Metrics(), address="[::1]:0", ready=lambda: True)
    try:
        assert handle.address == f"[::1]:{handle.port}"
        assert _get(f"http://{handle.address}/readyz")[0] == 200
    finally:
        handle.shutdown()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080, socket.AF_INET)),
        (":9090", ("", 9090, socket.AF_INET)),
        ("localhost:0", ("localhost", 0, socket.AF_INET)),
        ("[::1]:8080", ("::1", 8080, socket.AF_INET6)),
        ("[::]:65535", ("::", 65535, socket.AF_INET6)),
    ],
)
def test_listen_addresses(address: str, expected: tuple[str, int, socket.AddressFamily]) -> None:
    assert m.parse_address(address) == expected


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("8080", "expected HOST:PORT"),
        ("::1:8080", "in brackets"),
        ("[::1]", "expected \\[IPV6\\]:PORT"),
        ("[nope]:80", "not an IPv6 address"),
        ("127.0.0.1:", "the port must be"),
        ("127.0.0.1:http", "the port must be"),
        ("127.0.0.1:65536", "the port must be"),
        ("bad host:80", "not a host name"),
    ],
)
def test_bad_listen_addresses(address: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        m.parse_address(address)
