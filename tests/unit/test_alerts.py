"""The Prometheus alert rules (charts/dsexport/files/alerts.yaml) are valid and behave as their unit tests say.

promtool checks the file and runs tests/monitoring/alerts_test.yaml, which proves for each alert when it fires and
when it does not. The checks here guard what promtool cannot: that every alert has such a test (a new alert without
one fails here), that the rules read only metrics the operator exposes (a misspelt name makes an alert silent, or
``absent()`` fire forever, and promtool accepts both), and that each alert carries what the on-call person needs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = Path("charts/dsexport/files/alerts.yaml")
TESTS = Path("tests/monitoring/alerts_test.yaml")
METRICS_DOC = ROOT / "docs" / "metrics.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path. A missing promtool fails rather than skips: a skipped test would let untested rules ship."""
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run `make test-servers`")
    return path


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool from the repository's root, the working directory the documented commands use."""
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def _rules() -> list[dict[str, Any]]:
    """The alerting rules of the file, read as Prometheus reads it (plain YAML, no Helm rendering)."""
    document = yaml.safe_load((ROOT / ALERTS).read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _alert_tests() -> Iterator[dict[str, Any]]:
    """Every alert_rule_test case of the promtool test file, over all its test groups."""
    document = yaml.safe_load((ROOT / TESTS).read_text())
    for group in document["tests"]:
        yield from group.get("alert_rule_test", [])


def test_promtool_accepts_the_rule_file(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_alerts_fire_and_stay_quiet_as_their_tests_say(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_file_is_one_plain_group() -> None:
    """The chart embeds the file verbatim, so it must be a rule file as such, with no Helm template in it."""
    text = (ROOT / ALERTS).read_text()
    document = yaml.safe_load(text)
    assert [group["name"] for group in document["groups"]] == ["dsexport"]
    templates = set(re.findall(r"\{\{-?\s*([^}]*?)\s*-?\}\}", text))
    helm = {t for t in templates if not re.match(r"\$(labels\.\w+|value)\b", t)}
    assert not helm, f"only Prometheus' {{{{ $labels.x }}}} and {{{{ $value }}}} may be templated: {sorted(helm)}"


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    cases = list(_alert_tests())
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - fired == set(), f"alerts without a case in {TESTS} expecting them to fire"
    assert alerts - quiet == set(), f"alerts without a case in {TESTS} expecting them not to fire"
    assert (fired | quiet) - alerts == set(), "test cases for alerts that the rule file does not define"


def test_rules_read_only_documented_metrics() -> None:
    documented = set(re.findall(r"^\| `(dsexport_\w+)` \|", METRICS_DOC.read_text(), flags=re.MULTILINE))
    assert "dsexport_build_info" in documented
    for rule in _rules():
        used = set(re.findall(r"\bdsexport_\w+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= documented, f"{rule['alert']} reads metrics that are not exposed: {sorted(used - documented)}"


def test_every_alert_says_where_what_and_what_to_do() -> None:
    for rule in _rules():
        name = rule["alert"]
        assert name.startswith("Dsexport"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "kubectl " in rule["annotations"]["description"], f"{name} does not say what to run"
        by = set(re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]))
        for labels in by:
            for label in (label.strip() for label in labels.split(",")):
                if label in {"namespace", "export", "dataset", "destination"}:
                    assert f"$labels.{label}" in text, f"{name} does not name its {label}"
