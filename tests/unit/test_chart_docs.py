"""The chart's README documents every value, and its schema knows every value (a new value cannot go unsaid)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "dsexport"
DOCUMENTED_WHOLE = {"resources", "podSecurityContext", "securityContext", "affinity", "dashboard.labels"}
"""Values documented as one object (their keys are Kubernetes' own fields)."""


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in DOCUMENTED_WHOLE:
            keys += _leaves(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_the_readme_lists_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    listed = set(re.findall(r"^\| `([A-Za-z.]+)` \|", (CHART / "README.md").read_text(), re.M))
    assert set(_leaves(values)) == listed


def test_the_schema_knows_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _leaves(values):
        node = schema
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path} is not in values.schema.json"
            node = node["properties"][part]
