"""The chart's Grafana dashboard, checked without Grafana or Prometheus: it parses, its layout is sound, every panel
reads from the datasource variable, and every query filters by exactly the variables its metric has labels for.

The end-to-end test (tests/k8s/test_dashboard.py) runs the same queries against a real Prometheus; this one is the
cheap guard that catches a pasted panel with a fixed datasource uid, a query that forgot ``$dataset`` (the panel
would ignore the selection) or one that filters a metric by a label it does not have (the panel would be empty).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tests import dashboard as d

DOCS = d.ROOT / "docs" / "metrics.md"

_DATASET = ("namespace", "export", "dataset")
_FLOW = ("namespace", "export")
REQUIRED: dict[str, tuple[str, ...]] = {
    "dsexport_runs_total": _DATASET,
    "dsexport_records_total": _DATASET,
    "dsexport_bytes_total": _DATASET,
    "dsexport_files_total": _DATASET,
    "dsexport_last_success_timestamp_seconds": _DATASET,
    "dsexport_watermark_timestamp_seconds": _DATASET,
    "dsexport_schedule_interval_seconds": _DATASET,
    "dsexport_next_export_timestamp_seconds": _FLOW,
    "dsexport_run_duration_seconds_bucket": _FLOW,
    "dsexport_destination_available": ("namespace",),
    "dsexport_build_info": (),  # the operator is cluster-wide: no namespace, export or dataset label
}
"""The variables a query must filter each metric by: exactly the filter labels the metric carries (docs/metrics.md)."""

_METRIC = re.compile(r"\b(dsexport_\w+)\s*(?:\{(?P<selector>[^}]*)\})?")
_VARIABLE_MATCHER = re.compile(r"""(\w+)\s*=~\s*"\$\{?(\w+)\}?\"""")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return d.load()


def test_the_dashboard_is_a_current_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "dsexport"
    assert dashboard["title"] == "dsexport"
    assert dashboard["schemaVersion"] >= 39
    assert "id" not in dashboard or dashboard["id"] is None  # an id would clash with the Grafana it is imported into


def test_every_panel_has_a_unique_id_a_place_and_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    panels = d.panels(dashboard)
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "xywh"), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[x, y]!r}"
                taken[x, y] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == d.DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", d.DATASOURCE) == d.DATASOURCE, (panel["title"], target["refId"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert panel.get("description"), f"{panel['title']!r} says nothing of what it shows"


def test_the_variables_are_chained_multi_select_label_values(dashboard: dict[str, Any]) -> None:
    variables = d.variables(dashboard)
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for position, name in enumerate(d.FILTERS):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == d.DATASOURCE
        assert variable["multi"] is True and variable["includeAll"] is True, name
        selector, label = d.label_values(d.variable_query(variable))
        assert label == name
        # each one is narrowed by the ones before it, and by nothing else
        assert d.variables_in(selector) == set(d.FILTERS[:position]), name
        for matcher_label, variable_name in _VARIABLE_MATCHER.findall(selector):
            assert matcher_label == variable_name
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names.index("datasource") < names.index("namespace") < names.index("export") < names.index("dataset")


def _metrics_in(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Each metric an expression reads, with its matchers on variables (label -> variable)."""
    return [(m[1], dict(_VARIABLE_MATCHER.findall(m["selector"] or ""))) for m in _METRIC.finditer(expr)]


def test_every_query_filters_its_metrics_by_exactly_the_variables_they_have_labels_for(
    dashboard: dict[str, Any],
) -> None:
    for query in d.queries(dashboard):
        read = _metrics_in(query.expr)
        assert read, f"{query.name} reads no dsexport metric: {query.expr}"
        for metric, matchers in read:
            assert metric in REQUIRED, f"{query.name}: unknown metric {metric}"
            for label, variable in matchers.items():
                assert label == variable, f"{query.name}: {label} filtered by ${variable}"
            assert set(matchers) == set(REQUIRED[metric]), f"{query.name}: {metric} filtered by {sorted(matchers)}"
        assert d.variables_in(query.expr) <= {*d.FILTERS, "__rate_interval", "__interval", "__range"}, query.name


def test_the_matcher_check_sees_a_forgotten_variable() -> None:
    """The check above is only worth something if it notices a query that drops a filter."""
    [(metric, matchers)] = _metrics_in('rate(dsexport_records_total{namespace=~"$namespace", export=~"$export"}[5m])')
    assert metric == "dsexport_records_total"
    assert set(matchers) != set(REQUIRED[metric])


def test_every_documented_metric_has_a_panel(dashboard: dict[str, Any]) -> None:
    documented = set(re.findall(r"^\| `(dsexport_\w+)` \|", DOCS.read_text(), re.MULTILINE))
    assert "dsexport_runs_total" in documented and len(documented) >= 10
    read = {metric for q in d.queries(dashboard) for metric, _ in _metrics_in(q.expr)}
    for metric in documented:
        assert metric in read or f"{metric}_bucket" in read, f"{metric} has no panel"


def test_substitution_replaces_every_form_and_refuses_unknown_variables() -> None:
    values = {"namespace": "a", "export": "b", "__rate_interval": "1m"}
    assert d.substitute('x{namespace=~"$namespace", export=~"${export}"}[$__rate_interval]', values) == (
        'x{namespace=~"a", export=~"b"}[1m]'
    )
    assert d.substitute('x{namespace=~"${namespace:regex}"}', values) == 'x{namespace=~"a"}'
    with pytest.raises(KeyError):
        d.substitute('x{dataset=~"$dataset"}', values)


def test_the_chart_file_is_where_the_chart_embeds_it() -> None:
    expected = Path(__file__).resolve().parents[2] / "charts/dsexport/files/dashboard.json"
    assert expected == d.DASHBOARD
    assert d.DASHBOARD.read_text().endswith("\n")
