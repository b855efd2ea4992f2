"""The chart's Grafana dashboard against a real Prometheus scraping the operator during a real export.

Prometheus (Debian's ``/usr/bin/prometheus``) scrapes ``dsexport operator`` every second, with the chart's alert
rules loaded when that file exists. The test then does what a user does: a Destination on SeaweedFS, a Dataset and
a DatasetExport, two ``dsexport.io/run-now`` exports run by the real image on the real node, and the Destination's
health check. Then every panel query and every variable query of charts/dsexport/files/dashboard.json goes to
Prometheus' HTTP API with the variables substituted as Grafana substitutes them, and each must answer with series
of this test's flow (and, for the panels whose value is known, the right value). A query with a typo, a label the
metric does not have, or a function Prometheus refuses fails here instead of showing "No data" on a user's screen.

Two runs, not one: the run duration histogram is created by the first observation, so Prometheus first sees it at
count 1 and ``increase()`` counts only later runs; the second run is what makes the p50/p90 panel a number.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests import dashboard as d
from tests.cluster.cluster import Cluster
from tests.k8s.conftest import create_namespace
from tests.k8s.test_operator import (
    _annotate,
    _condition,
    _destination,
    _get,
    _manifests,
    _pod_logs,
    _upload_lake,
    _wait_flow,
)
from tests.servers import ProcessServer, Target, free_port, seaweed, wait_until
from tests.servers.operator import local_operator

PROMETHEUS = Path("/usr/bin/prometheus")
EXPORT = "daily"  # the DatasetExport of test_operator._manifests
DATASET = "events"
DESTINATION = "store"
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
"""What Grafana would put for its interval variables: a rate window of some scrapes, the whole test as the range."""
QUERY_TIMEOUT = 120.0


@dataclass
class Operator:
    """The operator process and the port of its /metrics, which Prometheus scrapes."""

    server: ProcessServer
    metrics_port: int


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    server: ProcessServer
    port: int
    rules: list[str]
    """The names of the alerting and recording rules it was started with (empty without the chart's alerts)."""

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/PATH; the decoded answer, error answers (400 for a bad query) included."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read() or b"{}")
            answer.setdefault("status", f"http {e.code}")
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at now, as Grafana sends a stat panel's (a time series panel's last point)."""
        return self.api("query", query=expr)


@pytest.fixture(scope="module")
def store(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """SeaweedFS on the node address (reached by the pods): the destination and the source lake."""
    target = seaweed.launch(tmp_path_factory.mktemp("weed-dashboard"), host=cluster.node_ip)
    yield target
    assert target.server is not None
    target.server.stop()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, kubeconfig: Path, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """``dsexport operator`` on this machine, as in test_operator, keeping its metrics port for Prometheus."""
    assert cluster.node is not None
    port = free_port()
    server = local_operator(
        kubeconfig=kubeconfig,
        image=cluster.node.image,
        metrics_port=port,
        workdir=tmp_path_factory.mktemp("operator-dashboard"),
    )
    server.start()
    yield Operator(server=server, metrics_port=port)
    server.stop()


def _rule_groups(path: Path) -> list[dict[str, Any]]:
    """The rule groups of the chart's alerts file: a Prometheus rules file, or a PrometheusRule's ``spec``."""
    document = yaml.safe_load(path.read_text()) or {}
    groups = document.get("groups", (document.get("spec") or {}).get("groups"))
    assert isinstance(groups, list), f"{path} has no rule groups (neither groups: nor spec.groups:)"
    return groups


@pytest.fixture
def prometheus(operator: Operator, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping the operator every second, evaluating the chart's alert rules
    (when that file exists: it is written separately, and read here as it is), stopped by its pid afterwards."""
    assert PROMETHEUS.exists(), f"{PROMETHEUS} is not installed (apt-get install prometheus)"
    rules: list[str] = []
    rule_files: list[str] = []
    if d.ALERTS.exists():
        groups = _rule_groups(d.ALERTS)
        rules = [r.get("alert") or r["record"] for g in groups for r in g.get("rules", [])]
        if yaml.safe_load(d.ALERTS.read_text()).get("groups") is not None:
            rule_files.append(str(d.ALERTS))
        else:  # a PrometheusRule: Prometheus reads only the groups, so give it those (a copy, never an edit)
            copy = tmp_path / "alerts-groups.yaml"
            copy.write_text(yaml.safe_dump({"groups": groups}))
            rule_files.append(str(copy))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": "dsexport", "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = ProcessServer(
        name="prometheus",
        argv=[
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log=tmp_path / "prometheus.log",
        ready=lambda: _get(port, "/-/ready")[0] == 200,
        cwd=tmp_path,
    )
    server.start()
    yield Prometheus(server=server, port=port, rules=rules)
    server.stop()


@pytest.fixture
def namespace(api: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    name = create_namespace(api, "dash")
    yield name
    client.CoreV1Api(api).delete_namespace(name, grace_period_seconds=0)


def _vector(answer: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
    """The series of a successful instant-query answer (a scalar answer counts as one unlabelled series)."""
    data = answer.get("data") or {}
    if data.get("resultType") == "scalar":
        return [({}, float(data["result"][1]))]
    return [(item["metric"], float(item["value"][1])) for item in data.get("result", [])]


def _success_with_series(answer: dict[str, Any]) -> bool:
    return answer.get("status") == "success" and bool(_vector(answer))


@dataclass
class Check:
    """One query to Prometheus and what its answer must be; ``problem`` says what is wrong, or None when right."""

    what: str
    expr: str
    problem: Callable[[dict[str, Any]], str | None]
    last: dict[str, Any] = field(default_factory=dict)


def _wait_all(prometheus: Prometheus, checks: list[Check], diagnose: Callable[[], str]) -> None:
    """Poll every check until all are right at once (scrapes accumulate meanwhile); on timeout fail naming each one
    still wrong, with its query and last answer, so one run of the test reports every broken panel."""
    pending = list(checks)

    def all_right() -> bool:
        still = []
        for check in pending:
            check.last = prometheus.query(check.expr)
            if check.problem(check.last) is not None:
                still.append(check)
        pending[:] = still
        return not pending

    try:
        wait_until(all_right, timeout=QUERY_TIMEOUT, what="every dashboard query to answer", interval=1.0)
    except TimeoutError:
        wrong = "\n".join(
            f"- {c.what}: {c.problem(c.last)}\n  query: {c.expr}\n  answer: {json.dumps(c.last)[:600]}" for c in pending
        )
        raise AssertionError(f"{len(pending)} of {len(checks)} queries wrong:\n{wrong}\n{diagnose()}") from None


def _series_of(
    chosen: dict[str, str], check: Callable[[dict[str, str], float], bool] | None, *, any_series: bool = False
) -> Callable[[dict[str, Any]], str | None]:
    """A problem finder: the answer must be a success with series, each of the chosen selection (the values are
    regexes, as Grafana sends them: ``.*`` for All), and each passing ``check`` (or at least one, ``any_series``)."""

    def problem(answer: dict[str, Any]) -> str | None:
        if answer.get("status") != "success":
            return f"status {answer.get('status')}: {answer.get('error')}"
        series = _vector(answer)
        if not series:
            return "no series"
        for labels, _ in series:
            if any(k in labels and not re.fullmatch(chosen[k], labels[k]) for k in d.FILTERS):
                return f"a series of another selection: {labels}"
        if check is None:
            return None
        passed = [check(labels, value) for labels, value in series]
        if any(passed) if any_series else all(passed):
            return None
        return f"unexpected values: {[(labels, value) for labels, value in series]}"

    return problem


# What the panels must show once both runs and the health check are done: panel title -> refId -> check of each
# series. The rate panels are checked through their history instead (a run shows there only around it).
EXPECTED: dict[str, dict[str, Callable[[dict[str, str], float], bool]]] = {
    "Operators up": {"A": lambda labels, v: v == 1},
    "Operator version": {"A": lambda labels, v: labels["version"] == importlib.metadata.version("dsexport")},
    "Runs in range": {"A": lambda labels, v: v > 0 if labels["result"] == "succeeded" else v == 0},
    "Destinations": {"A": lambda labels, v: labels["destination"] == DESTINATION and v == 1},
    "Run duration in range (p50 / p90)": {
        "A": lambda labels, v: math.isfinite(v) and 0 < v <= 7200,
        "B": lambda labels, v: math.isfinite(v) and 0 < v <= 7200,
    },
    "Time since last success": {
        "A": lambda labels, v: 0 <= v < 3600,
        "B": lambda labels, v: v == 2 * 86_400,  # daily: overdue after two days
    },
    "Watermark lag": {"A": lambda labels, v: math.isfinite(v)},
    "Next export in": {"A": lambda labels, v: 0 < v <= 86_400},
    "Destination health": {"A": lambda labels, v: v == 1},
}
SHOWED_A_RUN = ("Runs by result", "Records exported", "Bytes written", "Files written")
"""Panels of rates: each must have shown a positive value at some point of the test (checked with a subquery)."""


@pytest.mark.timeout(1200)  # the first test of a session also starts the cluster
def test_every_dashboard_query_answers_with_the_exports_series(
    api: client.ApiClient, namespace: str, store: Target, operator: Operator, prometheus: Prometheus, tmp_path: Path
) -> None:
    dashboard = d.load()
    # Prometheus scrapes from before the flow exists, so the counters' first value is 0 and each run an increase.
    wait_until(
        lambda: _success_with_series(prometheus.query('up{job="dsexport"} == 1')),
        timeout=60,
        what="Prometheus to scrape the operator",
        interval=0.5,
    )
    _upload_lake(store, tmp_path, f"lake/{namespace}", files=2)
    _manifests(api, namespace, store, schedule={"frequency": "daily", "time": "09:30", "startDate": "2026-11-01"})
    _wait_flow(
        api,
        namespace,
        lambda f: _condition(f, "Ready").get("status") == "True",
        "the flow to be Ready",
        operator.server,
    )
    for run in (1, 2):
        _annotate(api, namespace, "dsexport.io/run-now", f"dashboard-{run}")
        flow = _wait_flow(
            api,
            namespace,
            lambda f, n=run: any(p.get("runs") == n for p in (f.get("status") or {}).get("datasets", [])),  # type: ignore[misc]
            f"run {run} to be recorded",
            operator.server,
        )
        assert flow["status"]["lastExport"]["result"] == "Succeeded", _pod_logs(api, namespace)
    wait_until(
        lambda: _condition(_destination(api, namespace), "Available").get("status") == "True",
        timeout=180,
        what="the Destination's health check to pass",
        interval=0.5,
    )

    chosen = {"namespace": namespace, "export": EXPORT, "dataset": DATASET, "datasource": "", **GRAFANA_INTERVALS}
    every = {**chosen, "namespace": ".*", "export": ".*", "dataset": ".*"}  # "All": the variables' allValue
    checks: list[Check] = []

    # The variables: label_values(SELECTOR, LABEL), as a query listing the label's values.
    selectors: dict[str, str] = {}
    for name in d.FILTERS:
        selector, label = d.label_values(d.variable_query(d.variables(dashboard)[name]))
        assert label == name
        selectors[name] = selector
        for values, what in ((chosen, "selected"), (every, "All")):

            def lists(answer: dict[str, Any], want: str = chosen[name], lbl: str = label) -> str | None:
                if answer.get("status") != "success":
                    return f"status {answer.get('status')}: {answer.get('error')}"
                found = sorted(m.get(lbl, "") for m, _ in _vector(answer))
                return None if want in found else f"{want} not among {found}"

            checks.append(
                Check(f"variable {name} ({what})", f"group by ({label}) ({d.substitute(selector, values)})", lists)
            )

    # Every panel target, with this test's flow selected (only its series, the expected values) and with All.
    queries = d.queries(dashboard)
    for query in queries:
        expected = EXPECTED.get(query.panel, {}).get(query.ref)
        checks.append(Check(query.name, d.substitute(query.expr, chosen), _series_of(chosen, expected)))
        checks.append(Check(f"{query.name} with All", d.substitute(query.expr, every), _series_of(every, None)))
        if query.panel in SHOWED_A_RUN:  # a rate shows a run only around it: it must have shown ours
            checks.append(
                Check(
                    f"{query.name} during the runs",
                    f"max_over_time(({d.substitute(query.expr, chosen)})[15m:1s])",
                    _series_of(chosen, lambda labels, v: v > 0, any_series=True),
                )
            )
    for panel, refs in EXPECTED.items():
        for ref in refs:
            assert any((q.panel, q.ref) == (panel, ref) for q in queries), f"no target {ref} in a panel {panel!r}"

    def diagnose() -> str:
        """What the operator itself exposes, to tell a dashboard bug from a missing metric."""
        status, text = _get(operator.metrics_port, "/metrics")
        ours = [line for line in text.splitlines() if namespace in line or line.startswith("dsexport_build")]
        hint = ""
        if not any(line.startswith("dsexport_run_duration_seconds_count") for line in ours):
            hint = "\nthe operator observed no run duration for this flow, though its runs were recorded"
        return f"the operator's /metrics ({status}), this flow's lines:\n" + "\n".join(ours[:60]) + hint

    _wait_all(prometheus, checks, diagnose)

    # What Grafana itself asks for a variable: /api/v1/label/LABEL/values?match[]=SELECTOR.
    for name, selector in selectors.items():
        listed = prometheus.api(f"label/{name}/values", **{"match[]": d.substitute(selector, chosen)})
        assert listed["status"] == "success" and chosen[name] in listed["data"], (name, listed)


def test_the_charts_alert_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    """Every rule of charts/dsexport/files/alerts.yaml, as Prometheus loaded it, evaluates without error."""
    if not d.ALERTS.exists():
        pytest.skip(f"{d.ALERTS} does not exist yet")
    assert prometheus.rules, f"{d.ALERTS} has no rules"
    found: dict[str, dict[str, Any]] = {}

    def all_evaluated() -> bool:
        answer = prometheus.api("rules")
        found.clear()
        for group in answer.get("data", {}).get("groups", []):
            for rule in group.get("rules", []):
                found[rule["name"]] = rule
        return all(found.get(name, {}).get("health") == "ok" for name in prometheus.rules)

    try:
        wait_until(all_evaluated, timeout=60, what="every alert rule to be evaluated", interval=0.5)
    except TimeoutError:
        bad = {n: (found.get(n, {}).get("health"), found.get(n, {}).get("lastError")) for n in prometheus.rules}
        raise AssertionError(f"rules not ok: {bad}") from None
    assert sorted(found) == sorted(set(prometheus.rules))
