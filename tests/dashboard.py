"""The Grafana dashboard shipped in the chart, read the way Grafana reads it: its panel queries and its variables.

Shared by the structural unit test (tests/unit/test_dashboard_json.py) and the end-to-end test against a real
Prometheus (tests/k8s/test_dashboard.py), so both walk exactly the same queries and substitute variables the
same way Grafana does before a query reaches Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "dsexport" / "files" / "dashboard.json"
ALERTS = ROOT / "charts" / "dsexport" / "files" / "alerts.yaml"

FILTERS = ("namespace", "export", "dataset")
"""The template variables that filter the panels, in their chaining order; each is also the label it filters."""

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
"""What every panel and target must name as its datasource: the dashboard's datasource variable."""

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Query:
    """One target of one panel: what Grafana sends to Prometheus, before the variables are substituted."""

    panel: str
    ref: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        """How a failure names it: the panel's title and the target's refId, as in Grafana's editor."""
        return f"{self.panel!r} {self.ref}"


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON, as the chart ships it."""
    found: dict[str, Any] = json.loads(path.read_text())
    return found


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included (Grafana keeps them under the row's ``panels``)."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every target of every panel, hidden ones included (a hidden query still has to work when shown)."""
    return [
        Query(
            panel=panel["title"],
            ref=target["refId"],
            expr=target["expr"],
            instant=bool(target.get("instant")) and not target.get("range"),
        )
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The template variables by name."""
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def variable_query(variable: Mapping[str, Any]) -> str:
    """A query variable's query text; Grafana stores it as a string or, from the query editor, as an object."""
    query = variable.get("query")
    if isinstance(query, Mapping):
        return str(query["query"])
    return str(query)


def label_values(query: str) -> tuple[str, str]:
    """``label_values(SELECTOR, LABEL)`` split into the selector and the label; ValueError for any other form."""
    match = _LABEL_VALUES.fullmatch(query)
    if match is None:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return match["selector"], match["label"]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every ``$name`` / ``${name}`` / ``${name:format}`` replaced from ``values``.

    A variable missing from ``values`` raises KeyError: a query naming a variable the caller did not think of
    (a typo, a variable the dashboard does not define) must fail rather than reach Prometheus half substituted.
    """

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return values[name]

    return _VARIABLE.sub(one, expr)


def variables_in(expr: str) -> set[str]:
    """The names of the variables ``expr`` uses."""
    return {m[1] or m[2] for m in _VARIABLE.finditer(expr)}
